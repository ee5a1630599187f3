//! The IamGroup method's I/O, as the operator does it: a group's members, removing one.
use super::rules::{IamGroupError, target};
use crate::contract::GrantTarget;
use crate::grant::{GrantError, Held};
use crate::policy::arn;

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
        // A requester the role no longer maps stands for nobody: nothing to account for.
        let Ok(user) = crate::policy::decide::principal_for(role, &request.spec.requester) else {
            return Ok(Vec::new());
        };
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
