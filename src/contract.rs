//! The messages exchanged with the state machine (`deploy/aws/aws-jit.yaml`), as Rust
//! types. `deploy/aws/README.md` is the prose of the same contract and
//! `tests/e2e/statemachine.rs` pins it against the real definition; change all three
//! together. Field names follow the original aws-jit (`requester_arn`,
//! `requester_name`, `reason`, `approver_name`).
use serde::{Deserialize, Serialize};

/// Identity of the AccessRequest an execution carries.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RequestIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// The execution's input, built by the controller from an AccessRequest and its role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ExecutionInput {
    pub requester_arn: String,
    pub requester_name: String,
    pub reason: String,
    #[serde(default)]
    pub ticket: String,
    pub role_arn: String,
    pub method: String,
    /// FIFO message group of the work items: one per target role.
    pub work_group: String,
    pub duration_seconds: u64,
    pub approval_timeout_seconds: u64,
    pub request: RequestIdentity,
    /// The target role's name (the last segment of `role_arn`), for the state machine's
    /// own IAM calls on it.
    #[serde(default)]
    pub role_name: String,
    /// The session name the grant requires (`ar-<uid>`, [`crate::grant::trust_policy::session::session_name`]).
    #[serde(default)]
    pub session_name: String,
    /// The `sts:SourceIdentity` the grant requires ([`crate::grant::trust_policy::session::source_identity`]).
    #[serde(default)]
    pub source_identity: String,
    /// The inline deny policy on the role that ends this grant's sessions
    /// ([`crate::grant::trust_policy::session::policy_name`]).
    #[serde(default)]
    pub session_policy_name: String,
    /// A scheduled request's `startAt` (RFC 3339, whole seconds); empty otherwise.
    /// Informational (for Slack): the controller answers the approval no earlier.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub start_at: String,
    /// A break-glass request (granted without approvals): Slack says so loudly.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
}

/// A task on the request queue: an approval to decide, or a hold to end early.
// Parsed once per message and handled at once: the size of a variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RequestTask {
    Approval {
        task_token: String,
        execution_arn: String,
        input: ExecutionInput,
    },
    Hold {
        task_token: String,
        /// When the execution entered this hold (`$$.State.EnteredTime`): a later hold
        /// of the same execution (after an extension) always has a later one.
        #[serde(default)]
        entered_at: String,
        execution_arn: String,
        input: ExecutionInput,
        #[serde(default)]
        approval: serde_json::Value,
        grant: GrantOutput,
    },
}

/// A task on the work queue: grant or revoke, for the trust-policy worker.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkTask {
    Grant {
        task_token: String,
        execution_arn: String,
        input: ExecutionInput,
        #[serde(default)]
        approval: serde_json::Value,
    },
    /// Move the request's statement to a later expiry (an approved extension; the
    /// execution has moved the sessions' deny first).
    Extend {
        task_token: String,
        execution_arn: String,
        input: ExecutionInput,
        extend: ExtendTo,
    },
    Revoke {
        task_token: String,
        execution_arn: String,
        input: ExecutionInput,
        reason: RevokeReason,
        #[serde(default)]
        grant: Option<GrantOutput>,
    },
}

/// Why a revoke runs.
/// What an extension moves a grant to, as the controller answered the hold with it
/// (`$.hold.extend` in the execution).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct ExtendTo {
    /// The extension's id (`status.extensions[].id`).
    pub id: String,
    /// The new expiry (RFC 3339, whole seconds).
    pub expires_at: String,
}

/// The worker's answer to an `extend` work item: the statement's new expiry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ExtendOutput {
    pub expires_at: String,
    pub statement_id: String,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    Expired,
    Revoked,
    GrantFailed,
}

/// The operator's answer to an approval task (the seed's `send_success` message).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ApprovalOutput {
    /// Comma-separated approvers, as the original aws-jit's single `approver_name`.
    pub approver_name: String,
    pub approvers: Vec<String>,
    pub requester_arn: String,
    /// When the access ends (approval time + duration, whole seconds, `…Z`): the state
    /// machine writes the sessions' deny with it before the grant, and the grant's trust
    /// statement ends at the same instant.
    #[serde(default)]
    pub expires_at: String,
    /// What is granted, from Kubernetes at the moment of approval. For the methods the
    /// state machine performs itself (IdentityCenter, IamGroup) this is the only source
    /// of what it acts on: the execution's input is written by whoever started it.
    /// Absent in answers from before it existed: TrustPolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantTarget>,
}

/// What the state machine grants (`approval.grant`), by method.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "method")]
pub enum GrantTarget {
    /// The trust-policy worker grants; it takes what it grants from Kubernetes itself.
    TrustPolicy {},
    /// An account assignment of `permission_set_arn` to the Identity Center user whose
    /// `user_attribute_path` (`userName` or `emails.value`) is `user`, in each account.
    IdentityCenter {
        instance_arn: String,
        identity_store_id: String,
        permission_set_arn: String,
        account_ids: Vec<String>,
        user_attribute_path: String,
        user: String,
    },
    /// A membership of the IAM group `group_name` for the IAM user `user_name`.
    IamGroup {
        group_name: String,
        user_name: String,
    },
}

/// The cause of a `Denied` failure (sent as a JSON string).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DenialCause {
    pub approver_name: String,
    pub requester_arn: String,
    #[serde(default)]
    pub comment: String,
}

/// What a grant made (`$.grant` of the execution): the worker's answer for
/// TrustPolicy, the state machine's own record for the other methods. The revoke takes
/// away exactly this.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct GrantOutput {
    pub granted_at: String,
    pub expires_at: String,
    /// TrustPolicy: the statement's `Sid`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub statement_id: String,
    /// The method (absent: TrustPolicy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// IdentityCenter: the instance, permission set and accounts assigned, and the
    /// identity store's ID of the user they are assigned to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance_arn: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub permission_set_arn: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub account_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_id: String,
    /// IamGroup: the group and the user added to it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_name: String,
}

/// A security finding the operator puts on the alert queue for the relay to post
/// loudly: a tampered execution, a refused forged task, drift it removed. Not a step of
/// an execution: `event` is always `"security"`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SecurityAlert {
    /// Always [`SecurityAlert::EVENT`].
    pub event: String,
    /// What was found, CamelCase (`ExecutionTampered`, `ForeignExecution`,
    /// `DriftRemoved`, ...).
    pub kind: String,
    /// The request concerned, if any.
    #[serde(default)]
    pub request: Option<RequestIdentity>,
    /// What happened and what was done, for a person.
    pub message: String,
}

impl SecurityAlert {
    pub const EVENT: &'static str = "security";
}

/// Task failure error names the state machine catches.
pub mod errors {
    pub const DENIED: &str = "Denied";
    pub const CANCELLED: &str = "Cancelled";
    pub const GRANT_FAILED: &str = "GrantFailed";
    pub const REVOKE_FAILED: &str = "RevokeFailed";
    /// The worker could not, or would not, move a grant's expiry.
    pub const EXTEND_FAILED: &str = "ExtendFailed";
}

/// Where an execution is, as `DescribeExecution` says.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecutionState {
    Running,
    Succeeded {
        outcome: Option<Outcome>,
        output: serde_json::Value,
    },
    Failed {
        error: String,
        cause: String,
    },
    /// Timed out or aborted (stopped) from outside the flow.
    Ended {
        status: String,
    },
}

/// How a SUCCEEDED execution ended (`output.outcome`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Expired,
    Revoked,
    Denied,
    Cancelled,
    ApprovalTimedOut,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> serde_json::Value {
        serde_json::json!({
            "requester_arn": "arn:aws:iam::123456789012:user/alice",
            "requester_name": "alice", "reason": "fix", "ticket": "",
            "role_arn": "arn:aws:iam::123456789012:role/admin", "method": "TrustPolicy",
            "work_group": "123456789012/admin", "duration_seconds": 60,
            "approval_timeout_seconds": 60,
            "request": {"namespace": "a", "name": "b", "uid": "c"}
        })
    }

    #[test]
    fn request_tasks_parse_by_type() {
        let approval = serde_json::json!({"type": "approval", "task_token": "t",
            "execution_arn": "arn:x", "input": input()});
        assert!(matches!(
            serde_json::from_value::<RequestTask>(approval),
            Ok(RequestTask::Approval { .. })
        ));
        let hold = serde_json::json!({"type": "hold", "task_token": "t", "execution_arn": "arn:x",
            "input": input(), "approval": {},
            "grant": {"granted_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-01T01:00:00Z", "statement_id": "AwsJitc"}});
        assert!(matches!(
            serde_json::from_value::<RequestTask>(hold),
            Ok(RequestTask::Hold { .. })
        ));
        let unknown = serde_json::json!({"type": "bribe", "task_token": "t"});
        assert!(serde_json::from_value::<RequestTask>(unknown).is_err());
    }

    #[test]
    fn grant_targets_are_tagged_by_method() {
        let ic = GrantTarget::IdentityCenter {
            instance_arn: "arn:aws:sso:::instance/ssoins-1".into(),
            identity_store_id: "d-1".into(),
            permission_set_arn: "arn:aws:sso:::permissionSet/ssoins-1/ps-1".into(),
            account_ids: vec!["111111111111".into()],
            user_attribute_path: "userName".into(),
            user: "alice".into(),
        };
        let json = serde_json::to_value(&ic).unwrap();
        assert_eq!(json["method"], "IdentityCenter");
        assert_eq!(json["account_ids"][0], "111111111111");
        assert_eq!(
            serde_json::to_value(GrantTarget::TrustPolicy {}).unwrap(),
            serde_json::json!({"method": "TrustPolicy"})
        );
        // An answer from before targets existed still reads.
        let old: ApprovalOutput = serde_json::from_value(serde_json::json!({
            "approver_name": "carol", "approvers": ["carol"], "requester_arn": "x"}))
        .unwrap();
        assert_eq!(old.grant, None);
        let group: GrantOutput = serde_json::from_value(serde_json::json!({
            "method": "IamGroup", "granted_at": "a", "expires_at": "b",
            "group_name": "admins", "user_name": "alice"}))
        .unwrap();
        assert_eq!(group.statement_id, "");
        assert_eq!(group.group_name, "admins");
    }

    #[test]
    fn revoke_after_a_failed_grant_has_no_grant() {
        let revoke = serde_json::json!({"type": "revoke", "task_token": "t", "execution_arn": "arn:x",
            "input": input(), "reason": "grant_failed", "error": {"Error": "GrantFailed"}});
        match serde_json::from_value::<WorkTask>(revoke) {
            Ok(WorkTask::Revoke { reason, grant, .. }) => {
                assert_eq!(reason, RevokeReason::GrantFailed);
                assert!(grant.is_none());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
