//! Pure decisions about messages that come from AWS: does a task on the request queue,
//! or a grant on the work queue, belong to an execution the operator started for an
//! approved AccessRequest? Anyone in the AWS account who can `StartExecution`, or send
//! to a queue, can write such a message; so a message only ever says *which* request,
//! and what may be granted comes from Kubernetes alone (the request, its votes, its
//! AccessRole). [`crate::aws::authority`] does the reading; this module decides.
//!
//! The checks, in order:
//! 1. The execution ARN is the one the controller starts for the request: the
//!    deterministic name `ar-<uid>` of the configured state machine.
//! 2. The request exists with that uid, and its `status.executionArn` records exactly
//!    that ARN (the controller records it only after it started the execution itself, or
//!    adopted one whose input was exactly what it would have sent).
//! 3. For a grant, in addition: the request is not ended, not being deleted, not
//!    revoked; it is still valid against its AccessRole as it is now (the same
//!    validation the controller ran at the start, account scope included); the votes,
//!    counted again against that role, approve it; and what the message asks for (role,
//!    principal, duration, ...) is exactly what Kubernetes derives. The grant is then
//!    made from Kubernetes' answer, never from the message.
use crate::contract::ExecutionInput;
use crate::crd::{AccessRequest, AccessRole, Phase};
use crate::policy::decide::{self, Rejection, Tally};

/// Why a message from AWS is not acted on. The `Display` text goes to the task's failure
/// cause, the log, and a Warning Event on the request it names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "execution {claimed} is not the execution aws-jit starts for request uid {uid} \
         ({expected})"
    )]
    ForeignExecution {
        claimed: String,
        expected: String,
        uid: String,
    },
    #[error("no AccessRequest {namespace}/{name} with uid {uid} exists")]
    NoSuchRequest {
        namespace: String,
        name: String,
        uid: String,
    },
    /// The controller has not recorded an execution yet. Not final: the controller
    /// records it right after it starts the execution, so the message is tried again.
    #[error("the request has not recorded its execution yet")]
    NotYetRecorded,
    #[error("the request records execution {recorded}, not {claimed}")]
    NotRecorded { recorded: String, claimed: String },
    #[error("the request is {0:?}: nothing more is granted for it")]
    Ended(Phase),
    #[error("the request is being deleted")]
    Deleting,
    #[error("the request's access was revoked by {0} before it was granted")]
    Revoked(String),
    #[error("the request is no longer valid against its AccessRole: {0}")]
    Invalid(Rejection),
    #[error("the request's votes, counted against its AccessRole now, do not approve it: {0}")]
    NotApproved(String),
    #[error("the work item asks for something Kubernetes did not approve: {fields} differ")]
    Mismatch { fields: String },
    #[error("the extension is not what Kubernetes approved: {0}")]
    Extension(String),
    /// The controller records an approved extension right after it answers the hold:
    /// not final, the work item is tried again (its task's timeout bounds the tries).
    #[error("the extension is not recorded yet: {0}")]
    ExtensionNotYetRecorded(String),
}

/// Refuses an identity no AccessRequest can have: a namespace or name that is not a
/// DNS-1123 name, or a uid that is not a UUID. Checked before anything is looked up, so
/// a forged message cannot make a lookup fail in a way that looks transient.
pub fn check_identity(identity: &crate::contract::RequestIdentity) -> Result<(), Refusal> {
    let dns_label = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    let uuid = |s: &str| {
        s.len() == 36
            && s.char_indices().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => c == '-',
                _ => c.is_ascii_hexdigit(),
            })
    };
    if dns_label(&identity.namespace, 63) && dns_label(&identity.name, 253) && uuid(&identity.uid) {
        Ok(())
    } else {
        Err(Refusal::NoSuchRequest {
            namespace: identity.namespace.clone(),
            name: identity.name.clone(),
            uid: identity.uid.clone(),
        })
    }
}

impl Refusal {
    /// Whether the same message may be accepted later (only [`Refusal::NotYetRecorded`]).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Refusal::NotYetRecorded | Refusal::ExtensionNotYetRecorded(_)
        )
    }

    /// CamelCase reason for Events and the metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::ForeignExecution { .. } => "ForeignExecution",
            Refusal::NoSuchRequest { .. } => "NoSuchRequest",
            Refusal::NotYetRecorded => "NotYetRecorded",
            Refusal::NotRecorded { .. } => "UnrecordedExecution",
            Refusal::Ended(_) => "RequestEnded",
            Refusal::Deleting => "RequestDeleting",
            Refusal::Revoked(_) => "RequestRevoked",
            Refusal::Invalid(_) => "RequestInvalid",
            Refusal::NotApproved(_) => "NotApproved",
            Refusal::Mismatch { .. } => "InputMismatch",
            Refusal::Extension(_) => "ExtensionNotApproved",
            Refusal::ExtensionNotYetRecorded(_) => "ExtensionNotYetRecorded",
        }
    }

    /// True when the message claimed something it had no right to (worth a loud report),
    /// as opposed to a legitimate message that arrives too late or too early.
    pub fn is_forgery(&self) -> bool {
        matches!(
            self,
            Refusal::ForeignExecution { .. }
                | Refusal::NotRecorded { .. }
                | Refusal::Mismatch { .. }
                | Refusal::Extension(_)
        )
    }
}

/// Checks 1 and 2: the task's execution is the one the controller started for
/// `request` (`expected` is the ARN of `ar-<uid>` on the configured state machine).
pub fn check_execution(
    request: Option<&AccessRequest>,
    identity: &crate::contract::RequestIdentity,
    expected: &str,
    claimed: &str,
) -> Result<(), Refusal> {
    if claimed != expected {
        return Err(Refusal::ForeignExecution {
            claimed: claimed.to_owned(),
            expected: expected.to_owned(),
            uid: identity.uid.clone(),
        });
    }
    let request = request
        .filter(|r| r.metadata.uid.as_deref() == Some(identity.uid.as_str()))
        .ok_or_else(|| Refusal::NoSuchRequest {
            namespace: identity.namespace.clone(),
            name: identity.name.clone(),
            uid: identity.uid.clone(),
        })?;
    let status = request.status.as_ref();
    match status.and_then(|s| s.execution_arn.as_deref()) {
        // Ended without ever recording one (rejected, or its execution name was taken by
        // someone else): no task will ever be its own.
        None if status.and_then(|s| s.phase).is_some_and(Phase::is_terminal) => {
            Err(Refusal::NotRecorded {
                recorded: "no execution".into(),
                claimed: claimed.to_owned(),
            })
        }
        None => Err(Refusal::NotYetRecorded),
        Some(recorded) if recorded == claimed => Ok(()),
        Some(recorded) => Err(Refusal::NotRecorded {
            recorded: recorded.to_owned(),
            claimed: claimed.to_owned(),
        }),
    }
}

/// All checks for a grant work item. Returns what may be granted: the input Kubernetes
/// derives for the request now, which the worker uses instead of the message's.
pub fn check_grant(
    request: Option<&AccessRequest>,
    role: Option<&AccessRole>,
    scope: &decide::Scope,
    expected_execution: &str,
    claimed_execution: &str,
    claimed: &ExecutionInput,
) -> Result<ExecutionInput, Refusal> {
    check_execution(
        request,
        &claimed.request,
        expected_execution,
        claimed_execution,
    )?;
    // check_execution found it.
    let Some(request) = request else {
        return Err(Refusal::NotYetRecorded);
    };
    let status = request.status.clone().unwrap_or_default();
    if let Some(phase) = status.phase.filter(|p| p.is_terminal()) {
        return Err(Refusal::Ended(phase));
    }
    if request.metadata.deletion_timestamp.is_some() {
        return Err(Refusal::Deleting);
    }
    let revocations = status.revocations.clone().unwrap_or_default();
    if let Some(revocation) =
        decide::effective_revocation(role, &request.spec.requester, &revocations)
    {
        return Err(Refusal::Revoked(revocation.requested_by.clone()));
    }
    let planned = decide::plan_in(request, role, scope).map_err(Refusal::Invalid)?;
    // plan_in refused a missing role.
    let Some(role) = role else {
        return Err(Refusal::Invalid(Rejection::UnknownRole(
            request.spec.role.clone(),
        )));
    };
    if let Some(start) = decide::scheduled_start(request, jiff::Timestamp::now()) {
        return Err(Refusal::NotApproved(format!(
            "scheduled to start at {start}: nothing is granted before"
        )));
    }
    match decide::decision(role, request).0 {
        Tally::Approved { .. } => {}
        Tally::Pending { have, need } => {
            return Err(Refusal::NotApproved(format!("{have} of {need} approvals")));
        }
        Tally::Denied { by, .. } => {
            return Err(Refusal::NotApproved(format!("denied by {by}")));
        }
    }
    let fields = differing_fields(&planned, claimed);
    if !fields.is_empty() {
        return Err(Refusal::Mismatch {
            fields: fields.join(", "),
        });
    }
    Ok(planned)
}

/// Whether an extension work item may move the grant of `claimed` to `until`: the grant
/// itself still stands ([`check_grant`]), and the extension `id` is approved to exactly
/// `until` by Kubernetes alone ([`crate::policy::extension::verify`]).
#[allow(clippy::too_many_arguments)]
pub fn check_extension(
    request: Option<&AccessRequest>,
    role: Option<&AccessRole>,
    scope: &decide::Scope,
    expected_execution: &str,
    claimed_execution: &str,
    claimed: &ExecutionInput,
    id: &str,
    until: jiff::Timestamp,
) -> Result<ExecutionInput, Refusal> {
    let planned = check_grant(
        request,
        role,
        scope,
        expected_execution,
        claimed_execution,
        claimed,
    )?;
    let (Some(request), Some(role)) = (request, role) else {
        return Err(Refusal::NotYetRecorded);
    };
    crate::policy::extension::verify(role, request, id, until).map_err(|e| match e {
        crate::policy::extension::Unverified::NotYetRecorded(why) => {
            Refusal::ExtensionNotYetRecorded(why)
        }
        crate::policy::extension::Unverified::Refused(why) => Refusal::Extension(why),
    })?;
    Ok(planned)
}

/// The fields of the execution input in which `claimed` differs from `planned`: every
/// field, compared as JSON, so a field added to the input later is checked too (the
/// state machine acts on its input itself: the deny's role and policy name, the session).
fn differing_fields(planned: &ExecutionInput, claimed: &ExecutionInput) -> Vec<String> {
    let as_map = |input: &ExecutionInput| match serde_json::to_value(input) {
        Ok(serde_json::Value::Object(map)) => Some(map),
        _ => None,
    };
    let (Some(planned), Some(claimed)) = (as_map(planned), as_map(claimed)) else {
        // Never equal by default: what cannot be compared differs.
        return vec!["<unserializable>".to_owned()];
    };
    let mut keys: Vec<&String> = planned.keys().chain(claimed.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| planned.get(*k) != claimed.get(*k))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SM: &str = "arn:aws:states:us-east-1:123456789012:stateMachine:aws-jit-access";
    const UID: &str = "0b5f7a4e-9c1d-4e2b-8f3a-1d2c3b4a5f6e";

    fn expected() -> String {
        format!("arn:aws:states:us-east-1:123456789012:execution:aws-jit-access:ar-{UID}")
    }

    fn scope() -> decide::Scope {
        decide::Scope::new(["123456789012".to_string()])
    }

    fn role() -> AccessRole {
        serde_json::from_value(json!({
            "apiVersion": "aws-jit.io/v1alpha1", "kind": "AccessRole",
            "metadata": {"name": "prod-admin"},
            "spec": {
                "roleArn": "arn:aws:iam::123456789012:role/jit/prod-admin",
                "approvalsRequired": 1,
                "approvers": [{"user": "carol"}, {"user": "dave"}],
                "requesters": [{"user": "alice"}],
                "principal": {"template": "arn:aws:iam::123456789012:user/{username}"}
            }
        }))
        .unwrap()
    }

    fn request(status: serde_json::Value) -> AccessRequest {
        serde_json::from_value(json!({
            "apiVersion": "aws-jit.io/v1alpha1", "kind": "AccessRequest",
            "metadata": {"name": "fix", "namespace": "team", "uid": UID},
            "spec": {"role": "prod-admin", "requester": "alice", "duration": "30m", "reason": "INC-1"},
            "status": status
        }))
        .unwrap()
    }

    fn approved() -> serde_json::Value {
        json!({"phase": "AwaitingApproval", "executionArn": expected(),
               "approvals": [{"approver": "carol", "decision": "Approve"}]})
    }

    fn input_for(r: &AccessRequest) -> ExecutionInput {
        decide::plan_in(r, Some(&role()), &scope()).unwrap()
    }

    fn grant(
        r: &AccessRequest,
        claimed_arn: &str,
        claimed: &ExecutionInput,
    ) -> Result<ExecutionInput, Refusal> {
        check_grant(
            Some(r),
            Some(&role()),
            &scope(),
            &expected(),
            claimed_arn,
            claimed,
        )
    }

    #[test]
    fn identities_no_request_can_have_are_refused_before_any_lookup() {
        let ok = crate::contract::RequestIdentity {
            namespace: "team-a".into(),
            name: "fix.prod-1".into(),
            uid: UID.into(),
        };
        assert_eq!(check_identity(&ok), Ok(()));
        for (ns, name, uid) in [
            ("team-a", "", UID),
            ("", "fix", UID),
            ("team-a", "x?watch=true", UID),
            ("team-a", "../secrets", UID),
            ("Team", "fix", UID),
            ("team-a", "fix", "u"),
            ("team-a", "fix", "0b5f7a4e-9c1d-4e2b-8f3a-1d2c3b4a5f6Z"),
        ] {
            let id = crate::contract::RequestIdentity {
                namespace: ns.into(),
                name: name.into(),
                uid: uid.into(),
            };
            assert!(check_identity(&id).is_err(), "{ns:?} {name:?} {uid:?}");
        }
    }

    #[test]
    fn an_approved_request_of_its_own_execution_is_granted_what_kubernetes_says() {
        let r = request(approved());
        let input = input_for(&r);
        assert_eq!(grant(&r, &expected(), &input), Ok(input));
        assert!(SM.contains("stateMachine"));
    }

    #[test]
    fn another_execution_naming_the_request_gets_nothing() {
        let r = request(approved());
        let input = input_for(&r);
        let other = expected().replace(&format!("ar-{UID}"), "attacker-run");
        let err = grant(&r, &other, &input).unwrap_err();
        assert_eq!(err.reason(), "ForeignExecution");
        assert!(err.is_forgery());
    }

    #[test]
    fn a_request_that_recorded_no_or_another_execution_gets_nothing() {
        let mut status = approved();
        status["executionArn"] = serde_json::Value::Null;
        let r = request(status.clone());
        let input = input_for(&r);
        assert_eq!(grant(&r, &expected(), &input), Err(Refusal::NotYetRecorded));
        assert!(Refusal::NotYetRecorded.is_transient());
        // Ended without one (its name was squatted): final, not "not yet".
        status["phase"] = json!("Failed");
        let r = request(status);
        assert_eq!(
            check_execution(Some(&r), &input.request, &expected(), &expected())
                .unwrap_err()
                .reason(),
            "UnrecordedExecution"
        );

        let mut status = approved();
        status["executionArn"] = json!("arn:aws:states:us-east-1:123456789012:execution:x:y");
        let r = request(status);
        assert_eq!(
            grant(&r, &expected(), &input).unwrap_err().reason(),
            "UnrecordedExecution"
        );
    }

    #[test]
    fn a_message_that_asks_for_more_than_was_approved_gets_nothing() {
        let r = request(approved());
        let honest = input_for(&r);
        let mut cases = Vec::new();
        let mut longer = honest.clone();
        longer.duration_seconds = 43_200;
        cases.push((longer, "duration_seconds"));
        let mut someone_else = honest.clone();
        someone_else.requester_arn = "arn:aws:iam::123456789012:user/mallory".into();
        cases.push((someone_else, "requester_arn"));
        let mut other_role = honest.clone();
        other_role.role_arn = "arn:aws:iam::123456789012:role/jit/billing-admin".into();
        cases.push((other_role, "role_arn"));
        // The state machine writes the sessions' deny from its input: a session name or
        // policy other than the request's would leave the grant's sessions unended.
        let mut other_session = honest.clone();
        other_session.session_name = "ar-someone-else".into();
        cases.push((other_session, "session_name"));
        let mut other_policy = honest.clone();
        other_policy.session_policy_name = "AwsJit-x".into();
        cases.push((other_policy, "session_policy_name"));
        let mut other_identity = honest.clone();
        other_identity.source_identity = "bob".into();
        cases.push((other_identity, "source_identity"));
        let mut other_role_name = honest.clone();
        other_role_name.role_name = "billing-admin".into();
        cases.push((other_role_name, "role_name"));
        for (claimed, field) in cases {
            match grant(&r, &expected(), &claimed) {
                Err(Refusal::Mismatch { fields }) => assert!(fields.contains(field), "{fields}"),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn votes_are_counted_again_against_the_role() {
        let r = request(
            json!({"phase": "AwaitingApproval", "executionArn": expected(),
            "approvals": []}),
        );
        let input = input_for(&r);
        assert_eq!(
            grant(&r, &expected(), &input).unwrap_err().reason(),
            "NotApproved"
        );
        // Self-approval and non-approvers do not count.
        let r = request(json!({"phase": "Approved", "executionArn": expected(),
            "approvals": [{"approver": "alice", "decision": "Approve"},
                          {"approver": "mallory", "decision": "Approve"}]}));
        assert_eq!(
            grant(&r, &expected(), &input).unwrap_err().reason(),
            "NotApproved"
        );
        // A valid Deny after the approval stops the grant.
        let r = request(json!({"phase": "Approved", "executionArn": expected(),
            "approvals": [{"approver": "carol", "decision": "Approve"},
                          {"approver": "dave", "decision": "Deny"}]}));
        assert_eq!(
            grant(&r, &expected(), &input),
            Err(Refusal::NotApproved("denied by dave".into()))
        );
    }

    #[test]
    fn ended_deleted_or_revoked_requests_get_nothing() {
        let r = request(approved());
        let input = input_for(&r);
        for phase in ["Expired", "Denied", "Rejected", "Revoked", "Failed"] {
            let mut status = approved();
            status["phase"] = json!(phase);
            let ended = request(status);
            assert_eq!(
                grant(&ended, &expected(), &input).unwrap_err().reason(),
                "RequestEnded"
            );
        }
        let mut deleting = r.clone();
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        assert_eq!(
            grant(&deleting, &expected(), &input),
            Err(Refusal::Deleting)
        );
        let mut status = approved();
        status["revocations"] = json!([{"requestedBy": "alice"}]);
        let revoked = request(status);
        assert_eq!(
            grant(&revoked, &expected(), &input),
            Err(Refusal::Revoked("alice".into()))
        );
        // The first entry with a say counts, wherever it stands in the list.
        let mut status = approved();
        status["revocations"] = json!([{"requestedBy": "mallory"}, {"requestedBy": "alice"}]);
        assert_eq!(
            grant(&request(status), &expected(), &input),
            Err(Refusal::Revoked("alice".into()))
        );
        // A revocation by someone with no say does not block the grant.
        let mut status = approved();
        status["revocations"] = json!([{"requestedBy": "mallory"}]);
        let ignored = request(status);
        assert!(grant(&ignored, &expected(), &input).is_ok());
    }

    #[test]
    fn a_role_changed_since_the_start_is_judged_as_it_is_now() {
        let r = request(approved());
        let input = input_for(&r);
        let mut narrowed = role();
        narrowed.spec.max_duration = "10m".into();
        let err = check_grant(
            Some(&r),
            Some(&narrowed),
            &scope(),
            &expected(),
            &expected(),
            &input,
        )
        .unwrap_err();
        assert_eq!(err.reason(), "RequestInvalid");
        let err =
            check_grant(Some(&r), None, &scope(), &expected(), &expected(), &input).unwrap_err();
        assert_eq!(err.reason(), "RequestInvalid");
        // A role in an account the operator does not serve.
        let other = decide::Scope::new(["210987654321".to_string()]);
        let err = check_grant(
            Some(&r),
            Some(&role()),
            &other,
            &expected(),
            &expected(),
            &input,
        )
        .unwrap_err();
        assert_eq!(err.reason(), "RequestInvalid");
    }

    #[test]
    fn a_request_recreated_under_the_same_name_is_another_request() {
        let r = request(approved());
        let input = input_for(&r);
        let mut recreated = r.clone();
        recreated.metadata.uid = Some("7d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6".into());
        let err = check_grant(
            Some(&recreated),
            Some(&role()),
            &scope(),
            &expected(),
            &expected(),
            &input,
        )
        .unwrap_err();
        assert_eq!(err.reason(), "NoSuchRequest");
        let err = check_grant(
            None,
            Some(&role()),
            &scope(),
            &expected(),
            &expected(),
            &input,
        )
        .unwrap_err();
        assert_eq!(err.reason(), "NoSuchRequest");
    }
}
