//! Pure decisions of the controller, without I/O: is a request valid against its role,
//! what execution does it start, have its approvals met the role's rule, and what
//! phase and conditions does an execution's state mean. Everything here is unit-tested
//! without a cluster.
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::contract::{ExecutionInput, Outcome, RequestIdentity};
use crate::crd::{
    AccessRequest, AccessRole, Approval, Decision, GrantMethod, Phase, Revocation, Subject,
};
use crate::sfn::ExecutionState;

/// Why a request is refused before anything touches AWS. The `Display` text goes to
/// status.message and the Event; `reason()` is the condition reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("AccessRole {0:?} does not exist")]
    UnknownRole(String),
    #[error(
        "AccessRole {role:?} grants with method {method:?}, which this operator does not implement yet"
    )]
    MethodNotSupported { role: String, method: String },
    #[error(
        "{requester} is not allowed to request AccessRole {role:?} (not listed in its requesters{group})"
    )]
    NotEligible {
        requester: String,
        role: String,
        group: String,
    },
    #[error("duration {duration:?} exceeds AccessRole {role:?}'s maxDuration {max}")]
    TooLong {
        duration: String,
        max: String,
        role: String,
    },
    #[error("{field} {value:?} is not a positive duration: {why}")]
    BadDuration {
        field: &'static str,
        value: String,
        why: String,
    },
    #[error("AccessRole {0:?} requires a reason")]
    ReasonRequired(String),
    #[error("no AWS principal for {requester}: {why}")]
    NoPrincipal { requester: String, why: String },
    #[error("roleArn {0:?} is not an IAM role ARN")]
    BadRoleArn(String),
    #[error("the request has no uid or namespace yet")]
    Incomplete,
}

impl Rejection {
    /// CamelCase reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::UnknownRole(_) => "UnknownRole",
            Rejection::MethodNotSupported { .. } => "MethodNotSupported",
            Rejection::NotEligible { .. } => "NotEligible",
            Rejection::TooLong { .. } => "DurationTooLong",
            Rejection::BadDuration { .. } => "InvalidDuration",
            Rejection::ReasonRequired(_) => "ReasonRequired",
            Rejection::NoPrincipal { .. } => "NoPrincipal",
            Rejection::BadRoleArn(_) => "InvalidRoleArn",
            Rejection::Incomplete => "Incomplete",
        }
    }
}

/// A positive Go duration (`30m`, `1h30m`).
pub fn parse_duration(field: &'static str, value: &str) -> Result<Duration, Rejection> {
    let bad = |why: String| Rejection::BadDuration {
        field,
        value: value.to_string(),
        why,
    };
    let parsed: kube::core::Duration = value
        .parse()
        .map_err(|e: kube::core::duration::ParseError| bad(e.to_string()))?;
    if parsed.is_negative() {
        return Err(bad("negative".into()));
    }
    let d = Duration::from(parsed);
    if d.is_zero() {
        return Err(bad("zero".into()));
    }
    Ok(d)
}

fn lists(subjects: &[Subject], user: &str, group: Option<&str>) -> bool {
    subjects.iter().any(|s| {
        s.user.as_deref() == Some(user) || (group.is_some() && s.group.as_deref() == group)
    })
}

/// The AWS principal a Kubernetes user maps to: an explicit `users` entry, else the
/// template with `{username}` replaced. The result must be one IAM principal.
pub fn principal_for(role: &AccessRole, username: &str) -> Result<String, Rejection> {
    let mapping = &role.spec.principal;
    let arn = match (mapping.users.get(username), &mapping.template) {
        (Some(arn), _) => arn.clone(),
        (None, Some(template)) => template.replace("{username}", username),
        (None, None) => {
            return Err(Rejection::NoPrincipal {
                requester: username.to_string(),
                why: "the AccessRole maps no principal for this user".into(),
            });
        }
    };
    crate::trust_policy::validate_principal(&arn).map_err(|_| Rejection::NoPrincipal {
        requester: username.to_string(),
        why: format!("{arn:?} is not a valid IAM principal ARN"),
    })?;
    Ok(arn)
}

/// `<account>/<role name>`: one FIFO message group per target role.
pub fn work_group(role_arn: &str) -> Result<String, Rejection> {
    crate::arn::role(role_arn)
        .map(|(account, name)| format!("{account}/{name}"))
        .ok_or_else(|| Rejection::BadRoleArn(role_arn.to_string()))
}

/// Validates a request against its role and, if it may go ahead, builds the
/// execution's input.
pub fn plan(
    request: &AccessRequest,
    role: Option<&AccessRole>,
) -> Result<ExecutionInput, Rejection> {
    let spec = &request.spec;
    let role = role.ok_or_else(|| Rejection::UnknownRole(spec.role.clone()))?;
    let role_name = spec.role.clone();
    if role.spec.method != GrantMethod::TrustPolicy {
        return Err(Rejection::MethodNotSupported {
            role: role_name,
            method: format!("{:?}", role.spec.method),
        });
    }
    if !lists(
        &role.spec.requesters,
        &spec.requester,
        spec.requester_group.as_deref(),
    ) {
        return Err(Rejection::NotEligible {
            requester: spec.requester.clone(),
            role: role_name,
            group: spec
                .requester_group
                .as_ref()
                .map(|g| format!(", nor is group {g:?}"))
                .unwrap_or_default(),
        });
    }
    let max = parse_duration("maxDuration", &role.spec.max_duration)?;
    let duration_text = spec
        .duration
        .clone()
        .unwrap_or_else(|| role.spec.default_duration.clone());
    let field = if spec.duration.is_some() {
        "duration"
    } else {
        "defaultDuration"
    };
    let duration = parse_duration(field, &duration_text)?;
    if duration > max {
        return Err(Rejection::TooLong {
            duration: duration_text,
            max: role.spec.max_duration.clone(),
            role: role_name,
        });
    }
    let approval_timeout = parse_duration("approvalTimeout", &role.spec.approval_timeout)?;
    if role.spec.require_reason && spec.reason.trim().is_empty() {
        return Err(Rejection::ReasonRequired(role_name));
    }
    let requester_arn = principal_for(role, &spec.requester)?;
    let work_group = work_group(&role.spec.role_arn)?;
    let (Some(namespace), Some(uid)) = (
        request.metadata.namespace.clone(),
        request.metadata.uid.clone(),
    ) else {
        return Err(Rejection::Incomplete);
    };
    Ok(ExecutionInput {
        requester_arn,
        requester_name: spec.requester.clone(),
        reason: spec.reason.clone(),
        ticket: spec.ticket.clone().unwrap_or_default(),
        role_arn: role.spec.role_arn.clone(),
        method: "TrustPolicy".into(),
        work_group,
        duration_seconds: duration.as_secs().max(1),
        approval_timeout_seconds: approval_timeout.as_secs().max(1),
        request: RequestIdentity {
            namespace,
            name: request.metadata.name.clone().unwrap_or_default(),
            uid,
        },
    })
}

/// Where the approvals of a request stand against its role's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tally {
    Pending { have: usize, need: usize },
    Approved { approvers: Vec<String> },
    Denied { by: String, comment: String },
}

/// A vote the controller does not count, and why (reported as an Event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    pub approver: String,
    pub why: String,
}

/// Counts the valid votes: each person once, never the requester, only approvers the
/// role lists (by user, or by the group the vote was cast as, which admission checked
/// against the voter's real groups). One valid Deny denies. An approver named
/// `slack:<ID>` (how older releases recorded a Slack click through a group entry) is a
/// Slack account, not a person: it is not counted, because it could be the requester or
/// someone who also votes under their own name.
pub fn tally(role: &AccessRole, requester: &str, approvals: &[Approval]) -> (Tally, Vec<Ignored>) {
    let need = usize::try_from(role.spec.approvals_required.max(1)).unwrap_or(1);
    let mut approvers: Vec<String> = Vec::new();
    let mut ignored = Vec::new();
    for vote in approvals {
        let why = if vote.approver.starts_with("slack:") {
            Some("a Slack account, not a Kubernetes user: map it with a SlackIdentity")
        } else if vote.approver == requester {
            Some("the requester cannot decide on their own request")
        } else if !lists(&role.spec.approvers, &vote.approver, vote.group.as_deref()) {
            Some("not an approver of this AccessRole")
        } else if approvers.contains(&vote.approver) {
            Some("already voted")
        } else {
            None
        };
        if let Some(why) = why {
            ignored.push(Ignored {
                approver: vote.approver.clone(),
                why: why.into(),
            });
            continue;
        }
        if vote.decision == Decision::Deny {
            return (
                Tally::Denied {
                    by: vote.approver.clone(),
                    comment: vote.comment.clone().unwrap_or_default(),
                },
                ignored,
            );
        }
        approvers.push(vote.approver.clone());
    }
    if approvers.len() >= need {
        (Tally::Approved { approvers }, ignored)
    } else {
        (
            Tally::Pending {
                have: approvers.len(),
                need,
            },
            ignored,
        )
    }
}

/// Whether a revocation may end access early: the requester, or an approver of the
/// role (by user, or by the group claimed, which admission checked). Admins delete the
/// request instead.
pub fn may_revoke(role: Option<&AccessRole>, requester: &str, revocation: &Revocation) -> bool {
    revocation.requested_by == requester
        || role.is_some_and(|r| {
            lists(
                &r.spec.approvers,
                &revocation.requested_by,
                revocation.group.as_deref(),
            )
        })
}

/// The phase and message an ended execution means.
pub fn phase_of(state: &ExecutionState) -> Option<(Phase, String)> {
    Some(match state {
        ExecutionState::Running => return None,
        ExecutionState::Succeeded { outcome, .. } => match outcome {
            Some(Outcome::Expired) => (Phase::Expired, "access expired and was revoked".into()),
            Some(Outcome::Revoked) => (Phase::Revoked, "access was ended early and revoked".into()),
            Some(Outcome::Denied) => (Phase::Denied, "the request was denied".into()),
            Some(Outcome::Cancelled) => (
                Phase::Revoked,
                "cancelled before a decision (withdrawn, deleted, or drained at uninstall)".into(),
            ),
            Some(Outcome::ApprovalTimedOut) => (
                Phase::Expired,
                "nobody decided within the AccessRole's approvalTimeout".into(),
            ),
            None => (
                Phase::Failed,
                "the execution ended without an outcome".into(),
            ),
        },
        ExecutionState::Failed { error, cause } => (
            Phase::Failed,
            match error.as_str() {
                crate::contract::errors::GRANT_FAILED => {
                    format!("the grant failed (nothing is granted): {cause}")
                }
                crate::contract::errors::REVOKE_FAILED => {
                    format!("the revoke failed; AWS still ends access at expiresAt: {cause}")
                }
                _ => format!("the execution failed: {error}: {cause}"),
            },
        ),
        ExecutionState::Ended { status } => (
            Phase::Failed,
            format!("the execution ended with status {status}"),
        ),
    })
}

/// Sets a condition, keeping `lastTransitionTime` when its status does not change
/// (cert-manager's convention; so do `kubectl wait`, Argo CD and Flux expect).
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) {
    let status = if status { "True" } else { "False" };
    let existing = conditions.iter_mut().find(|c| c.type_ == type_);
    match existing {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now.clone();
            }
            c.status = status.into();
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: generation,
            last_transition_time: now.clone(),
        }),
    }
}

/// The conditions of a phase: `Ready` (true while access is usable), `Approved`,
/// `Granted`, and kstatus's `Reconciling` (in progress) / `Stalled` (needs a human).
pub fn conditions_for(
    existing: &[Condition],
    phase: Phase,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut c = existing.to_vec();
    let reason = format!("{phase:?}");
    let ready = phase == Phase::Active;
    set_condition(&mut c, "Ready", ready, &reason, message, generation, now);
    let approved = matches!(
        phase,
        Phase::Approved | Phase::Active | Phase::Expired | Phase::Revoked
    ) && existing_or(&c, "Approved", phase);
    set_condition(
        &mut c, "Approved", approved, &reason, message, generation, now,
    );
    set_condition(&mut c, "Granted", ready, &reason, message, generation, now);
    let in_progress = matches!(
        phase,
        Phase::Pending | Phase::AwaitingApproval | Phase::Approved
    );
    set_condition(
        &mut c,
        "Reconciling",
        in_progress,
        &reason,
        message,
        generation,
        now,
    );
    let stalled = matches!(phase, Phase::Rejected | Phase::Failed);
    set_condition(
        &mut c, "Stalled", stalled, &reason, message, generation, now,
    );
    c
}

/// Expired/Revoked after an approval keep `Approved=True`; an approval that timed out
/// (Expired without ever being approved) does not.
fn existing_or(c: &[Condition], type_: &str, phase: Phase) -> bool {
    match phase {
        Phase::Approved | Phase::Active => true,
        _ => c.iter().any(|x| x.type_ == type_ && x.status == "True"),
    }
}

#[cfg(test)]
mod tests;
