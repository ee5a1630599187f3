//! Extending an active grant, on the real stack: the expiry moves in AWS itself (the
//! trust statement, the sessions' deny, the execution's hold), only as the AccessRole
//! allows, only at the requester's ask and with the approvers' votes; a second request
//! for a role already held is refused with a pointer to `extend`.
use std::time::Duration;

use aws_jit::crd::{AccessRequest, ExtensionPhase, Phase};
use jiff::Timestamp;
use serde_json::{Value, json};

use crate::controller::Env;
use crate::support::kube::User;
use crate::support::wait::eventually;
use crate::support::{refused, stack, succeeded};

const WAIT: Duration = Duration::from_secs(60);

impl Env {
    /// `as_user` asks to extend `name` by `by` (extension `id`).
    fn extend(
        &self,
        as_user: User,
        name: &str,
        id: &str,
        by: &str,
        reason: &str,
    ) -> std::process::Output {
        let patch = json!([{"op": "add", "path": "/status/extensions/-",
            "value": {"id": id, "requestedBy": as_user.name(), "by": by, "reason": reason}}]);
        stack()
            .kube
            .patch_status(as_user, &self.ns, name, "json", &patch.to_string())
    }

    /// `as_user` votes `decision` on extension `id` of `name`, in `approver`'s name.
    fn vote_extension(
        &self,
        as_user: User,
        approver: &str,
        name: &str,
        id: &str,
        decision: &str,
    ) -> std::process::Output {
        let patch = json!([{"op": "add", "path": "/status/extensionApprovals/-",
            "value": {"extension": id, "approver": approver, "decision": decision}}]);
        stack()
            .kube
            .patch_status(as_user, &self.ns, name, "json", &patch.to_string())
    }

    /// Waits until extension `id` of `name` has `phase`; returns the request.
    async fn wait_extension(&self, name: &str, id: &str, phase: ExtensionPhase) -> AccessRequest {
        let api = self.requests();
        eventually(
            &format!("extension {id} of {name} to be {phase:?}"),
            WAIT,
            || {
                let api = api.clone();
                async move {
                    let r = api.get(name).await.map_err(|e| e.to_string())?;
                    let outcome = r
                        .status
                        .as_ref()
                        .and_then(|s| s.extension_outcomes.as_ref())
                        .and_then(|o| o.iter().find(|o| o.id == id).cloned());
                    match outcome {
                        Some(o) if o.phase == phase => Ok(r),
                        other => Err(format!("{other:?}")),
                    }
                }
            },
        )
        .await
    }

    /// The expiry of the request's only trust statement.
    async fn statement_expiry(&self) -> Timestamp {
        let grants = aws_jit::grant::trust_policy::document::grants(&self.trust_policy().await);
        assert_eq!(grants.len(), 1, "{grants:?}");
        grants[0].expires_at
    }

    /// The request's sessions' deny, as IAM has it.
    async fn session_deny(&self, r: &AccessRequest) -> Value {
        let uid = r.metadata.uid.clone().expect("uid");
        let out = aws_sdk_iam::Client::new(&self.sdk)
            .get_role_policy()
            .role_name(&self.iam_role_name)
            .policy_name(aws_jit::grant::trust_policy::session::policy_name(&uid))
            .send()
            .await
            .expect("the sessions' deny");
        aws_jit::grant::trust_policy::document::decode_json(out.policy_document()).expect("JSON")
    }
}

fn outcome(r: &AccessRequest, id: &str) -> aws_jit::crd::ExtensionOutcome {
    r.status
        .as_ref()
        .and_then(|s| s.extension_outcomes.as_ref())
        .and_then(|o| o.iter().find(|o| o.id == id).cloned())
        .expect("an outcome")
}

fn expires(r: &AccessRequest) -> Timestamp {
    r.status
        .as_ref()
        .and_then(|s| s.expires_at.as_ref())
        .expect("expiresAt")
        .0
}

fn deny_until(r: &AccessRequest, until: Timestamp) -> Value {
    let uid = r.metadata.uid.clone().expect("uid");
    aws_jit::grant::trust_policy::session::deny_document(
        &format!("ar-{uid}"),
        &until.to_string(),
        false,
    )
}

#[tokio::test]
async fn an_approved_extension_moves_the_expiry_in_aws_and_access_ends_then() {
    let env = Env::new(
        "ext-moves",
        "  maxDuration: 5m\n  defaultDuration: 1m\n  extension: {maxExtensions: 2}\n",
    )
    .await;
    // Long enough that the ask comes well before extension::LAST_CALL.
    env.request(User::Alice, "longer", "  duration: 75s\n");
    env.wait_phase("longer", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "longer", "Approve");
    let active = env.wait_phase("longer", Phase::Active).await;
    let first = expires(&active);
    assert_eq!(env.statement_expiry().await, first);

    succeeded(&env.extend(User::Alice, "longer", "1", "30s", "still fixing"));
    // It waits for its own vote: the request's approval does not count.
    env.wait_message(
        "longer",
        &format!("access granted until {first}; extension 1 waits for approval (0 of 1)"),
    )
    .await;
    succeeded(&env.vote_extension(User::Dave, "dave", "longer", "1", "Approve"));
    let r = env
        .wait_extension("longer", "1", ExtensionPhase::Extended)
        .await;
    let until = first
        .checked_add(jiff::SignedDuration::from_secs(30))
        .expect("time");
    let recorded = outcome(&r, "1");
    assert_eq!(recorded.approved_by, vec!["dave".to_string()]);
    assert_eq!(recorded.expires_at.map(|t| t.0), Some(until));
    // In AWS: the statement and the sessions' deny say the new expiry; status too.
    assert_eq!(env.statement_expiry().await, until);
    assert_eq!(env.session_deny(&r).await, deny_until(&r, until));
    eventually("status.expiresAt to move", WAIT, || async {
        let r = env
            .requests()
            .get("longer")
            .await
            .map_err(|e| e.to_string())?;
        if expires(&r) == until {
            Ok(())
        } else {
            Err(expires(&r).to_string())
        }
    })
    .await;
    // The hold moved with it: access ends at the new expiry, not the first one (a hold
    // left as it was would have revoked some 30 s earlier).
    let r = env
        .wait_phase_within("longer", Phase::Expired, Duration::from_secs(180))
        .await;
    let revoked = r.status.and_then(|s| s.revoked_at).expect("revokedAt").0;
    assert!(
        revoked >= until,
        "revoked at {revoked}, before the new expiry {until}"
    );
    assert!(aws_jit::grant::trust_policy::document::grants(&env.trust_policy().await).is_empty());
}

#[tokio::test]
async fn extensions_past_their_bounds_are_refused_and_nothing_moves() {
    let env = Env::new(
        "ext-bounds",
        "  maxDuration: 2h\n  extension: {maxExtensions: 1, approvalsRequired: 0}\n",
    )
    .await;
    env.request(User::Alice, "bounded", "  duration: 1h\n");
    env.wait_phase("bounded", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "bounded", "Approve");
    let active = env.wait_phase("bounded", Phase::Active).await;
    let first = expires(&active);

    // Past maxDuration counted from the grant: refused, with how much is left.
    succeeded(&env.extend(User::Alice, "bounded", "1", "90m", "more"));
    let r = env
        .wait_extension("bounded", "1", ExtensionPhase::Refused)
        .await;
    let message = outcome(&r, "1").message;
    assert!(
        message.contains("past maxDuration (2h)") && message.contains("at most"),
        "{message}"
    );
    crate::attacks::wait_warning(&env, "bounded", "ExtensionPastMaxDuration").await;
    assert_eq!(env.statement_expiry().await, first);

    // Within bounds and the role needs no approval: granted at once, by the rule.
    succeeded(&env.extend(User::Alice, "bounded", "2", "30m", "more"));
    let r = env
        .wait_extension("bounded", "2", ExtensionPhase::Extended)
        .await;
    let until = first
        .checked_add(jiff::SignedDuration::from_mins(30))
        .expect("time");
    assert_eq!(
        outcome(&r, "2").approved_by,
        vec![aws_jit::policy::extension::NO_APPROVAL_NEEDED.to_string()]
    );
    assert_eq!(env.statement_expiry().await, until);
    assert_eq!(env.session_deny(&r).await, deny_until(&r, until));

    // One extension is all the role allows.
    succeeded(&env.extend(User::Alice, "bounded", "3", "1m", "more"));
    let r = env
        .wait_extension("bounded", "3", ExtensionPhase::Refused)
        .await;
    assert!(outcome(&r, "3").message.contains("the most AccessRole"));
    crate::attacks::wait_warning(&env, "bounded", "TooManyExtensions").await;
    assert_eq!(env.statement_expiry().await, until);
    assert_eq!(env.session_deny(&r).await, deny_until(&r, until));
}

#[tokio::test]
async fn only_the_requester_extends_and_only_approvers_vote_on_an_extension() {
    let env = Env::new("ext-who", "  maxDuration: 4h\n  extension: {}\n").await;
    env.request(User::Alice, "mine", "  duration: 1h\n");
    env.wait_phase("mine", Phase::AwaitingApproval).await;
    // Not before access is Active.
    refused(
        &env.extend(User::Alice, "mine", "1", "30m", "early"),
        "only while access is Active",
    );
    env.vote(User::Carol, "mine", "Approve");
    let active = env.wait_phase("mine", Phase::Active).await;
    let first = expires(&active);
    // An approver cannot extend someone else's access, in either name.
    refused(
        &env.extend(User::Carol, "mine", "1", "30m", "for alice"),
        "only the requester (alice)",
    );
    let patch = json!([{"op": "add", "path": "/status/extensions/-",
        "value": {"id": "1", "requestedBy": "alice", "by": "30m", "reason": "as alice"}}]);
    refused(
        &stack()
            .kube
            .patch_status(User::Carol, &env.ns, "mine", "json", &patch.to_string()),
        "requestedBy must be \"carol\"",
    );
    // A vote cast before the ask (ids are predictable) would count for whatever comes.
    refused(
        &env.vote_extension(User::Carol, "carol", "mine", "1", "Approve"),
        "must name one already asked for",
    );
    // The apiserver refuses a malformed ask.
    refused(
        &env.extend(User::Alice, "mine", "1", "soon", "x"),
        "positive Go duration",
    );
    succeeded(&env.extend(User::Alice, "mine", "1", "30m", "still fixing"));
    // An ask is never changed afterwards (a longer one slipped under the votes).
    let patch = json!([{"op": "replace", "path": "/status/extensions/0/by", "value": "3h"}]);
    refused(
        &stack()
            .kube
            .patch_status(User::Alice, &env.ns, "mine", "json", &patch.to_string()),
        "status.extensions is append-only",
    );
    // Nobody approves their own extension, votes in another's name, or writes outcomes.
    refused(
        &env.vote_extension(User::Alice, "alice", "mine", "1", "Approve"),
        "extension of your own AccessRequest",
    );
    refused(
        &env.vote_extension(User::Dave, "carol", "mine", "1", "Approve"),
        "approver must be \"dave\"",
    );
    let patch = json!([{"op": "add", "path": "/status/extensionOutcomes",
        "value": [{"id": "1", "phase": "Extending", "expiresAt": "2099-01-01T00:00:00Z"}]}]);
    refused(
        &stack()
            .kube
            .patch_status(User::Alice, &env.ns, "mine", "json", &patch.to_string()),
        "only the aws-jit operator may change",
    );
    // Bob is no approver: his vote is recorded and not counted.
    succeeded(&env.vote_extension(User::Bob, "bob", "mine", "1", "Approve"));
    crate::attacks::wait_warning(&env, "mine", "VoteIgnored").await;
    env.wait_message(
        "mine",
        &format!("access granted until {first}; extension 1 waits for approval (0 of 1)"),
    )
    .await;
    assert_eq!(env.statement_expiry().await, first);
    // A Deny by an approver denies it; nothing moves.
    succeeded(&env.vote_extension(User::Dave, "dave", "mine", "1", "Deny"));
    let r = env
        .wait_extension("mine", "1", ExtensionPhase::Denied)
        .await;
    assert!(outcome(&r, "1").message.contains("denied by dave"));
    assert_eq!(env.statement_expiry().await, first);
    assert_eq!(expires(&r), first);
    // Decided: no vote on it is taken any more.
    refused(
        &env.vote_extension(User::Carol, "carol", "mine", "1", "Approve"),
        "not yet decided",
    );
}

#[tokio::test]
async fn a_role_without_an_extension_policy_extends_nothing() {
    let env = Env::new("ext-none", "").await;
    env.request(User::Alice, "fixed", "  duration: 1h\n");
    env.wait_phase("fixed", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "fixed", "Approve");
    let active = env.wait_phase("fixed", Phase::Active).await;
    succeeded(&env.extend(User::Alice, "fixed", "1", "30m", "more"));
    // Even with an approver's vote.
    succeeded(&env.vote_extension(User::Carol, "carol", "fixed", "1", "Approve"));
    let r = env
        .wait_extension("fixed", "1", ExtensionPhase::Refused)
        .await;
    assert!(outcome(&r, "1").message.contains("allows no extensions"));
    crate::attacks::wait_warning(&env, "fixed", "ExtensionNotAllowed").await;
    assert_eq!(env.statement_expiry().await, expires(&active));
}

#[tokio::test]
async fn a_forged_extend_work_item_moves_nothing() {
    let env = Env::new("ext-forged", "  extension: {}\n").await;
    env.request(User::Alice, "target", "  duration: 1h\n");
    env.wait_phase("target", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "target", "Approve");
    let active = env.wait_phase("target", Phase::Active).await;
    let first = expires(&active);
    // A plain AWS caller with sqs:SendMessage on the work queue asks the worker to move
    // the real execution's statement a day on: no extension was asked or approved.
    let exec = env.execution("target").await;
    let input: Value = serde_json::from_str(exec.input().expect("input")).expect("JSON");
    let body = json!({
        "type": "extend",
        "task_token": "forged-token",
        "execution_arn": exec.execution_arn(),
        "input": input,
        "extend": {"id": "1", "expires_at": first.checked_add(jiff::SignedDuration::from_hours(24)).expect("time").to_string()},
    });
    aws_sdk_sqs::Client::new(&env.sdk)
        .send_message()
        .queue_url(&env.aws.work_queue_url)
        .message_group_id(input["work_group"].as_str().expect("work_group"))
        .message_deduplication_id("forged-extend")
        .message_body(body.to_string())
        .send()
        .await
        .expect("send");
    let note = crate::attacks::wait_warning(&env, "target", "ExtensionNotApproved").await;
    assert!(note.contains("no extension"), "{note}");
    assert_eq!(env.statement_expiry().await, first);
    let r = env.requests().get("target").await.expect("request");
    assert_eq!(env.session_deny(&r).await, deny_until(&r, first));
    assert_eq!(expires(&r), first);
}

#[tokio::test]
async fn a_second_request_for_a_role_already_held_is_refused_with_a_pointer_to_extend() {
    let env = Env::new("ext-overlap", "  extension: {}\n").await;
    env.request(User::Alice, "first", "  duration: 1h\n");
    env.wait_phase("first", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "first", "Approve");
    env.wait_phase("first", Phase::Active).await;
    env.request(User::Alice, "second", "  duration: 1h\n");
    let r = env.wait_phase("second", Phase::Rejected).await;
    let message = r.status.and_then(|s| s.message).unwrap_or_default();
    assert!(
        message.contains("already has AccessRequest") && message.contains("kubectl jit extend"),
        "{message}"
    );
    crate::attacks::wait_warning(&env, "second", "OverlapsOpenRequest").await;
    assert_eq!(
        aws_jit::grant::trust_policy::document::grants(&env.trust_policy().await).len(),
        1
    );
    assert_eq!(env.executions_started().await, 1);
}

#[tokio::test]
async fn an_extension_that_cannot_be_made_keeps_the_earlier_expiry() {
    let env = Env::new("ext-fails", "  extension: {approvalsRequired: 0}\n").await;
    env.request(User::Alice, "gone", "  duration: 1h\n");
    env.wait_phase("gone", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "gone", "Approve");
    let active = env.wait_phase("gone", Phase::Active).await;
    let first = expires(&active);
    // Someone removes the statement by hand: there is nothing to extend.
    aws_sdk_iam::Client::new(&env.sdk)
        .update_assume_role_policy()
        .role_name(&env.iam_role_name)
        .policy_document(crate::controller::BASE_TRUST_POLICY)
        .send()
        .await
        .expect("update trust policy");
    succeeded(&env.extend(User::Alice, "gone", "1", "30m", "more"));
    let r = env
        .wait_extension("gone", "1", ExtensionPhase::Failed)
        .await;
    let message = outcome(&r, "1").message;
    assert!(
        message.contains(&format!("access still ends at {first}")),
        "{message}"
    );
    crate::attacks::wait_warning(&env, "gone", "ExtensionFailed").await;
    // The deny the execution moved first is put back; the request keeps its expiry.
    assert_eq!(env.session_deny(&r).await, deny_until(&r, first));
    assert_eq!(expires(&r), first);
    assert_eq!(r.status.as_ref().and_then(|s| s.phase), Some(Phase::Active));
    assert!(aws_jit::grant::trust_policy::document::grants(&env.trust_policy().await).is_empty());
}

#[tokio::test]
async fn an_older_hold_delivered_again_after_an_extension_does_not_swallow_a_revoke() {
    use k8s_openapi::api::core::v1::Secret;
    let env = Env::new("ext-stale", "  extension: {approvalsRequired: 0}\n").await;
    env.request(User::Alice, "stale", "  duration: 10m\n");
    env.wait_phase("stale", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "stale", "Approve");
    let active = env.wait_phase("stale", Phase::Active).await;
    let uid = active.metadata.uid.clone().expect("uid");
    let secrets: kube::Api<Secret> =
        kube::Api::namespaced(stack().kube.client(User::Admin).await, "aws-jit-system");
    let token_data = |s: &Secret, key: &str| {
        s.data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default()
    };
    let before = secrets
        .get(&format!("aws-jit-task-{uid}"))
        .await
        .expect("token Secret");
    let (old_token, old_entered) = (
        token_data(&before, "hold-token"),
        token_data(&before, "hold-entered"),
    );
    assert!(!old_token.is_empty() && !old_entered.is_empty());
    succeeded(&env.extend(User::Alice, "stale", "1", "1m", "more"));
    env.wait_extension("stale", "1", ExtensionPhase::Extended)
        .await;
    // The first hold's message comes again (its delete was lost), as SQS may deliver it.
    let exec = env.execution("stale").await;
    let input: Value = serde_json::from_str(exec.input().expect("input")).expect("JSON");
    let body = json!({
        "type": "hold", "task_token": old_token, "entered_at": old_entered,
        "execution_arn": exec.execution_arn(), "input": input, "approval": {},
        "grant": {"granted_at": "2026-01-01T00:00:00Z", "expires_at": expires(&active).to_string()},
    });
    aws_sdk_sqs::Client::new(&env.sdk)
        .send_message()
        .queue_url(&env.aws.request_queue_url)
        .message_body(body.to_string())
        .send()
        .await
        .expect("send");
    crate::attacks::request_queue_settled(&env).await;
    let after = secrets
        .get(&format!("aws-jit-task-{uid}"))
        .await
        .expect("token Secret");
    assert_ne!(
        token_data(&after, "hold-token"),
        old_token,
        "the newer hold stays"
    );
    // A revoke ends access now, not at the extended expiry.
    env.revoke(User::Alice, "stale", "done");
    env.wait_phase("stale", Phase::Revoked).await;
    assert!(aws_jit::grant::trust_policy::document::grants(&env.trust_policy().await).is_empty());
}
