//! The IdentityCenter method's rules, pure: which user a requester is, and what the
//! approval answer tells the state machine to assign.
use crate::contract::GrantTarget;
use crate::crd::IdentityCenterTarget;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityCenterError {
    #[error(
        "{user:?} is not an Identity Center user name or email (1-128 characters, no spaces, not an ARN)"
    )]
    BadUser { user: String },
    #[error("no permission set named {name:?} in Identity Center instance {instance}")]
    UnknownPermissionSet { name: String, instance: String },
    #[error("cannot list the permission sets of {instance}: {message}")]
    Lookup { instance: String, message: String },
    #[error(
        "the operator has no Identity Center client (permission set {name:?} is a name; use its ARN, or give the operator sso:ListPermissionSets)"
    )]
    NoClient { name: String },
}

/// Checks the Identity Center user a requester maps to: a user name or email, as
/// `identitystore:GetUserId` looks it up (exactly, so no wildcard can match another).
pub fn user_for(mapped: &str) -> Result<String, IdentityCenterError> {
    let ok = !mapped.is_empty()
        && mapped.chars().count() <= 128
        && !mapped.starts_with("arn:")
        && !mapped
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ':');
    if ok {
        Ok(mapped.to_owned())
    } else {
        Err(IdentityCenterError::BadUser {
            user: mapped.to_owned(),
        })
    }
}

/// Whether the role names its permission set by ARN (else by name).
pub fn is_permission_set_arn(permission_set: &str) -> bool {
    permission_set.starts_with("arn:")
}

/// What the state machine assigns: the role's permission set (by ARN) to `user`, in
/// each of the role's accounts.
pub fn target(spec: &IdentityCenterTarget, permission_set_arn: &str, user: &str) -> GrantTarget {
    GrantTarget::IdentityCenter {
        instance_arn: spec.instance_arn.clone(),
        identity_store_id: spec.identity_store_id.clone(),
        permission_set_arn: permission_set_arn.to_owned(),
        account_ids: spec.account_ids.clone(),
        user_attribute_path: spec.user_attribute.path().to_owned(),
        user: user.to_owned(),
    }
}

/// What a person reads about a grant of `spec`: where to sign in.
pub fn describe(spec: &IdentityCenterTarget) -> String {
    format!(
        "permission set {} in account{} {}",
        spec.permission_set,
        if spec.account_ids.len() == 1 { "" } else { "s" },
        spec.account_ids.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::UserAttribute;

    fn spec() -> IdentityCenterTarget {
        IdentityCenterTarget {
            instance_arn: "arn:aws:sso:::instance/ssoins-1234567890abcdef".into(),
            identity_store_id: "d-1234567890".into(),
            permission_set: "AdminAccess".into(),
            account_ids: vec!["111111111111".into(), "222222222222".into()],
            user_attribute: UserAttribute::Email,
        }
    }

    #[test]
    fn users_are_names_or_emails_never_arns_or_patterns() {
        assert_eq!(
            user_for("alice@example.com"),
            Ok("alice@example.com".into())
        );
        assert_eq!(user_for("alice"), Ok("alice".into()));
        for bad in [
            "",
            "arn:aws:iam::123456789012:user/alice",
            "alice smith",
            "a:b",
            "tab\there",
            &"x".repeat(129),
        ] {
            assert!(user_for(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_target_carries_the_roles_fields_and_the_resolved_arn() {
        let arn = "arn:aws:sso:::permissionSet/ssoins-1234567890abcdef/ps-0123456789abcdef";
        match target(&spec(), arn, "alice@example.com") {
            GrantTarget::IdentityCenter {
                permission_set_arn,
                account_ids,
                user_attribute_path,
                user,
                ..
            } => {
                assert_eq!(permission_set_arn, arn);
                assert_eq!(account_ids, vec!["111111111111", "222222222222"]);
                assert_eq!(user_attribute_path, "emails.value");
                assert_eq!(user, "alice@example.com");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            describe(&spec()),
            "permission set AdminAccess in accounts 111111111111, 222222222222"
        );
    }
}
