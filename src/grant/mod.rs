//! Grant methods: how approved access is made and taken away in AWS, one module per
//! method, and the drift [`sweeper`] that removes what no approved request accounts for.
//!
//! - [`trust_policy`]: a statement in the target role's trust policy, written by the
//!   operator's FIFO worker (edits of one document must not race), with an expiry AWS
//!   enforces in the statement itself.
//! - [`identity_center`]: an account assignment of a permission set; [`iam_group`]: a
//!   membership of an IAM group. The state machine makes and removes these itself, on
//!   what the approval answer names, so they end even with the cluster gone.
//!
//! What the operator does with a method after the fact (the drift sweep, and ending a
//! grant whose execution was stopped) goes through one interface, [`GrantMethod`]: list
//! what exists on a role's targets, say what a request accounts for, remove the rest.
//! The trust policy's sweep keeps its own path in [`sweeper`]: its removal is a
//! read-modify-write of one document, judged again under the role's lock.
pub mod iam_group;
pub mod identity_center;
pub mod sweeper;
pub mod trust_policy;

use std::future::Future;

use crate::crd::{AccessRequest, AccessRole};

/// One grant as it exists in AWS (an assignment, a membership): what a method lists,
/// what a request accounts for, what is removed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Held {
    /// An Identity Center account assignment.
    Assignment {
        instance_arn: String,
        permission_set_arn: String,
        account_id: String,
        /// `USER` or `GROUP`.
        principal_type: String,
        principal_id: String,
    },
    /// A member of an IAM group.
    Membership {
        group_name: String,
        user_name: String,
    },
}

impl Held {
    /// For a person (logs, Events, Slack).
    pub fn describe(&self) -> String {
        match self {
            Held::Assignment {
                permission_set_arn,
                account_id,
                principal_type,
                principal_id,
                ..
            } => format!(
                "the assignment of permission set {permission_set_arn} in account {account_id} \
                 to {} {principal_id}",
                principal_type.to_lowercase()
            ),
            Held::Membership {
                group_name,
                user_name,
            } => format!("the membership of IAM user {user_name} in group {group_name}"),
        }
    }

    /// What a grant recorded it made (`status.grant`), for its method; none for another.
    pub fn recorded(
        record: &crate::crd::GrantRecord,
        method: crate::crd::GrantMethod,
    ) -> Vec<Held> {
        if crate::crd::GrantMethod::parse(&record.method) != Some(method) {
            return Vec::new();
        }
        match method {
            crate::crd::GrantMethod::IdentityCenter => record
                .account_ids
                .iter()
                .map(|account| Held::Assignment {
                    instance_arn: record.instance_arn.clone(),
                    permission_set_arn: record.permission_set_arn.clone(),
                    account_id: account.clone(),
                    principal_type: "USER".into(),
                    principal_id: record.user_id.clone(),
                })
                .collect(),
            crate::crd::GrantMethod::IamGroup => vec![Held::Membership {
                group_name: record.group_name.clone(),
                user_name: record.user_name.clone(),
            }],
            crate::crd::GrantMethod::TrustPolicy => Vec::new(),
        }
    }

    /// The metric kind of `aws_jit_drift_removed_total{kind}`.
    pub fn kind(&self) -> &'static str {
        match self {
            Held::Assignment { .. } => "assignment",
            Held::Membership { .. } => "membership",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("{call}: {message}")]
    Aws { call: &'static str, message: String },
    #[error("{0}")]
    Target(String),
}

impl GrantError {
    pub fn aws<E: std::error::Error + 'static>(call: &'static str, e: E) -> Self {
        GrantError::Aws {
            call,
            message: aws_sdk_iam::error::DisplayErrorContext(e).to_string(),
        }
    }
}

/// What the operator does with a grant method the state machine performs.
pub trait GrantMethod: Send + Sync {
    /// Which method this is.
    fn method(&self) -> crate::crd::GrantMethod;

    /// Whether AWS ends each grant at its expiry on its own (a condition in the grant);
    /// false: an execution ends it (the flow's revoke, and the session cleanup started
    /// before the grant), and the drift sweep is the backstop.
    fn expiry_enforced_by_aws(&self) -> bool;

    /// What exists in AWS on the targets `role` names.
    fn held(&self, role: &AccessRole)
    -> impl Future<Output = Result<Vec<Held>, GrantError>> + Send;

    /// What an approved `request` of `role` would make, from Kubernetes and the
    /// method's directory (never from the execution's input). Callers ask
    /// [`accounted_for`], which prefers what the grant recorded it made.
    fn accounted(
        &self,
        role: &AccessRole,
        request: &AccessRequest,
    ) -> impl Future<Output = Result<Vec<Held>, GrantError>> + Send;

    /// Removes `held` (idempotent: already gone is done). Whether it was there.
    fn remove(&self, held: &Held) -> impl Future<Output = Result<bool, GrantError>> + Send;
}

/// What `request` accounts for in `method`: what its grant recorded it made
/// (`status.grant`), whatever its AccessRole says by now; before any record (or with its
/// role gone, nothing), what the role says it would make.
pub async fn accounted_for<M: GrantMethod>(
    method: &M,
    role: Option<&AccessRole>,
    request: &AccessRequest,
) -> Result<Vec<Held>, GrantError> {
    let recorded = request
        .status
        .as_ref()
        .and_then(|s| s.grant.as_ref())
        .map(|r| Held::recorded(r, method.method()))
        .unwrap_or_default();
    match role {
        _ if !recorded.is_empty() => Ok(recorded),
        Some(role) => method.accounted(role, request).await,
        None => Ok(Vec::new()),
    }
}
