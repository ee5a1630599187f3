//! The IamGroup method's rules, pure: which IAM user a requester is, and what the
//! approval answer tells the state machine to add to the group.
use crate::contract::GrantTarget;
use crate::crd::IamGroupTarget;
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
