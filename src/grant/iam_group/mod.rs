//! The `IamGroup` grant method: the requester's IAM user joins an IAM group for the
//! grant's duration.
//!
//! The state machine adds and removes the membership itself (`aws-sdk:iam:addUserToGroup`
//! / `removeUserFromGroup`), acting only on the [`GrantTarget`] of the operator's
//! approval answer. The operator's part: map the requester to an IAM user of the group's
//! account ([`user_for`]) and build the target ([`target`]).
//!
//! Removal takes the group's rights from the user's own keys at once (after IAM
//! propagation); role sessions the user assumed with those rights live on until they
//! expire (see `docs/security.md`).
use crate::contract::GrantTarget;
use crate::crd::IamGroupTarget;
use crate::grant::{GrantError, Held};
use crate::policy::arn;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IamGroupError {
    #[error("{0:?} is not an IAM group ARN")]
    BadGroup(String),
    #[error("{0:?} is not an IAM user ARN (IAM groups hold IAM users only)")]
    NotAUser(String),
    #[error(
        "IAM user {user} is in account {user_account}, the group {group} in {group_account}: a group holds only its own account's users"
    )]
    OtherAccount {
        user: String,
        user_account: String,
        group: String,
        group_account: String,
    },
}

/// The IAM user a requester maps to, which must be in the group's account.
pub fn user_for(spec: &IamGroupTarget, user_arn: &str) -> Result<String, IamGroupError> {
    let (group_account, _) = arn::group(&spec.group_arn)
        .ok_or_else(|| IamGroupError::BadGroup(spec.group_arn.clone()))?;
    let (user_account, _) =
        arn::user(user_arn).ok_or_else(|| IamGroupError::NotAUser(user_arn.to_owned()))?;
    if user_account != group_account {
        return Err(IamGroupError::OtherAccount {
            user: user_arn.to_owned(),
            user_account: user_account.to_owned(),
            group: spec.group_arn.clone(),
            group_account: group_account.to_owned(),
        });
    }
    Ok(user_arn.to_owned())
}

/// What the state machine does: add the user of `user_arn` to the role's group.
pub fn target(spec: &IamGroupTarget, user_arn: &str) -> Result<GrantTarget, IamGroupError> {
    let (_, group_name) = arn::group(&spec.group_arn)
        .ok_or_else(|| IamGroupError::BadGroup(spec.group_arn.clone()))?;
    let (_, user_name) =
        arn::user(user_arn).ok_or_else(|| IamGroupError::NotAUser(user_arn.to_owned()))?;
    Ok(GrantTarget::IamGroup {
        group_name: group_name.to_owned(),
        user_name: user_name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> IamGroupTarget {
        IamGroupTarget {
            group_arn: "arn:aws:iam::123456789012:group/ops/admins".into(),
        }
    }

    #[test]
    fn users_are_iam_users_of_the_groups_account() {
        assert!(user_for(&spec(), "arn:aws:iam::123456789012:user/people/alice").is_ok());
        assert!(matches!(
            user_for(&spec(), "arn:aws:iam::123456789012:role/alice"),
            Err(IamGroupError::NotAUser(_))
        ));
        assert!(matches!(
            user_for(&spec(), "arn:aws:iam::210987654321:user/alice"),
            Err(IamGroupError::OtherAccount { .. })
        ));
        assert!(user_for(&spec(), "arn:aws:iam::123456789012:user/*").is_err());
    }

    #[test]
    fn the_target_names_group_and_user_without_paths() {
        assert_eq!(
            target(&spec(), "arn:aws:iam::123456789012:user/people/alice"),
            Ok(GrantTarget::IamGroup {
                group_name: "admins".into(),
                user_name: "alice".into()
            })
        );
    }
}

/// The operator's side of the method in AWS: the members of a role's group, and
/// removing one (the drift sweep; a grant whose execution was stopped). It never adds.
#[derive(Debug)]
pub struct IamGroupGrants {
    pub iam: aws_sdk_iam::Client,
}

impl crate::grant::GrantMethod for IamGroupGrants {
    fn method(&self) -> crate::crd::GrantMethod {
        crate::crd::GrantMethod::IamGroup
    }

    fn expiry_enforced_by_aws(&self) -> bool {
        false
    }

    async fn held(&self, role: &crate::crd::AccessRole) -> Result<Vec<Held>, GrantError> {
        let Some(spec) = role.spec.iam_group.as_ref() else {
            return Ok(Vec::new());
        };
        let (_, group_name) = arn::group(&spec.group_arn).ok_or_else(|| {
            GrantError::Target(IamGroupError::BadGroup(spec.group_arn.clone()).to_string())
        })?;
        let mut held = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .iam
                .get_group()
                .group_name(group_name)
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| GrantError::aws("iam:GetGroup", e))?;
            for user in page.users() {
                held.push(Held::Membership {
                    group_name: group_name.to_owned(),
                    user_name: user.user_name().to_owned(),
                });
            }
            match page.marker() {
                Some(m) if page.is_truncated() && !m.is_empty() => marker = Some(m.to_owned()),
                _ => break,
            }
        }
        held.sort();
        Ok(held)
    }

    async fn accounted(
        &self,
        role: &crate::crd::AccessRole,
        request: &crate::crd::AccessRequest,
    ) -> Result<Vec<Held>, GrantError> {
        let Some(spec) = role.spec.iam_group.as_ref() else {
            return Ok(Vec::new());
        };
        let user = crate::policy::decide::principal_for(role, &request.spec.requester)
            .map_err(|e| GrantError::Target(e.to_string()))?;
        match target(spec, &user).map_err(|e| GrantError::Target(e.to_string()))? {
            GrantTarget::IamGroup {
                group_name,
                user_name,
            } => Ok(vec![Held::Membership {
                group_name,
                user_name,
            }]),
            _ => Ok(Vec::new()),
        }
    }

    async fn remove(&self, held: &Held) -> Result<bool, GrantError> {
        let Held::Membership {
            group_name,
            user_name,
        } = held
        else {
            return Err(GrantError::Target(format!(
                "not a membership: {}",
                held.describe()
            )));
        };
        match self
            .iam
            .remove_user_from_group()
            .group_name(group_name)
            .user_name(user_name)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_no_such_entity_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(GrantError::aws("iam:RemoveUserFromGroup", e)),
        }
    }
}
