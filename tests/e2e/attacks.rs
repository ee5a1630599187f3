//! Attacks on the real stack, one test each, as the users who would try them: a plain
//! AWS caller in the account (who can start executions of the state machine or send to
//! its queues, but holds no approval), a requester, an approver. Each asserts the attack
//! is refused and that nothing was granted: the managed role's trust policy is what AWS
//! enforces, so that is what is read.
use std::time::Duration;

use aws_jit::crd::{AccessRequest, Phase};
use aws_jit::faults::points;
use aws_sdk_sqs::types::QueueAttributeName;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

use crate::controller::{ACCOUNT, Env};
use crate::support::aws::take_messages;
use crate::support::kube::User;
use crate::support::wait::eventually;
use crate::support::{stack, succeeded};

const WAIT: Duration = Duration::from_secs(60);
const MALLORY: &str = "arn:aws:iam::123456789012:user/mallory";
const ALICE: &str = "arn:aws:iam::123456789012:user/alice";

/// The principals aws-jit's statements in the managed role's trust policy name.
async fn granted(env: &Env) -> Vec<String> {
    aws_jit::grant::trust_policy::document::grants(&env.trust_policy().await)
        .into_iter()
        .map(|g| g.principal)
        .collect()
}

/// The input the controller gave the request's execution (what an AWS caller with
/// `states:DescribeExecution` can read, or rebuild from the request).
async fn real_input(env: &Env, name: &str) -> Value {
    let exec = env.execution(name).await;
    serde_json::from_str(exec.input().expect("input")).expect("JSON input")
}

async fn start_foreign(env: &Env, name: &str, input: &Value) -> String {
    aws_sdk_sfn::Client::new(&env.sdk)
        .start_execution()
        .state_machine_arn(&env.aws.state_machine_arn)
        .name(name)
        .input(input.to_string())
        .send()
        .await
        .expect("a plain AWS caller starts an execution")
        .execution_arn()
        .to_string()
}

async fn execution_status(env: &Env, arn: &str) -> (String, String) {
    let out = aws_sdk_sfn::Client::new(&env.sdk)
        .describe_execution()
        .execution_arn(arn)
        .send()
        .await
        .expect("describe execution");
    let output: Value = out
        .output()
        .and_then(|o| serde_json::from_str(o).ok())
        .unwrap_or_default();
    (
        out.status().as_str().to_string(),
        output["outcome"].as_str().unwrap_or_default().to_string(),
    )
}

/// Waits until the execution `arn` is no longer running; returns (status, outcome).
async fn ended(env: &Env, arn: &str) -> (String, String) {
    eventually(&format!("{arn} to end"), WAIT, || async move {
        let s = execution_status(env, arn).await;
        if s.0 == "RUNNING" { Err(s.0) } else { Ok(s) }
    })
    .await
}

/// The Warning Events on request `name` with `reason`.
pub async fn warnings(env: &Env, name: &str, reason: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(stack().kube.client(User::Admin).await, &env.ns);
    let list = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .expect("list events");
    list.items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reason))
        .map(|e| e.message.unwrap_or_default())
        .collect()
}

pub async fn wait_warning(env: &Env, name: &str, reason: &str) -> String {
    eventually(
        &format!("a {reason} Warning Event on {name}"),
        WAIT,
        || async move {
            warnings(env, name, reason)
                .await
                .into_iter()
                .next()
                .ok_or_else(|| "none yet".to_string())
        },
    )
    .await
}

/// Waits for the operator's security finding `kind` about request `name` on the alert
/// queue (taking the queue's messages as it goes: no relay runs here).
async fn wait_security_alert(
    env: &Env,
    kind: &str,
    name: &str,
) -> aws_jit::contract::SecurityAlert {
    let sqs = aws_sdk_sqs::Client::new(&env.sdk);
    let url = env.aws.alert_queue_url.clone();
    let seen = std::cell::RefCell::new(Vec::<aws_jit::contract::SecurityAlert>::new());
    eventually(
        &format!("a {kind} security alert about {name}"),
        WAIT,
        || async {
            for body in take_messages(&sqs, &url).await? {
                if let Ok(a) = serde_json::from_str::<aws_jit::contract::SecurityAlert>(&body)
                    && a.event == aws_jit::contract::SecurityAlert::EVENT
                {
                    seen.borrow_mut().push(a);
                }
            }
            seen.borrow()
                .iter()
                .find(|a| a.kind == kind && a.request.as_ref().is_some_and(|r| r.name == name))
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "{:?}",
                        seen.borrow().iter().map(|a| &a.kind).collect::<Vec<_>>()
                    )
                })
        },
    )
    .await
}

/// Waits until the work queue holds nothing (every item received and settled).
async fn work_queue_settled(env: &Env) {
    queue_settled(env, &env.aws.work_queue_url).await
}

/// Waits until the request queue holds nothing (every task received and settled).
pub async fn request_queue_settled(env: &Env) {
    queue_settled(env, &env.aws.request_queue_url).await
}

async fn queue_settled(env: &Env, url: &str) {
    let sqs = aws_sdk_sqs::Client::new(&env.sdk);
    let url = url.to_owned();
    eventually(&format!("{url} to be empty"), WAIT, || {
        let (sqs, url) = (sqs.clone(), url.clone());
        async move {
            let attrs = sqs
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                .send()
                .await
                .map_err(|e| format!("{e:?}"))?;
            let n: usize = attrs
                .attributes()
                .map(|a| {
                    a.values()
                        .filter_map(|v| v.parse::<usize>().ok())
                        .sum::<usize>()
                })
                .unwrap_or(1);
            if n == 0 {
                Ok(())
            } else {
                Err(format!("{n} messages"))
            }
        }
    })
    .await;
}

/// A plain AWS caller copies a pending request's identity into an execution of their
/// own (their principal, 12 hours) and waits for the real approval to come. Before the
/// fix the consumer stored the foreign execution's token in the request's place, so
/// carol's approval went to it and the worker granted mallory what its input said.
#[tokio::test]
async fn a_foreign_execution_riding_a_real_approval_gets_nothing() {
    let env = Env::new("atk-ride", "").await;
    env.request(User::Alice, "ridden", "  duration: 2m\n");
    env.wait_phase("ridden", Phase::AwaitingApproval).await;
    let mut forged = real_input(&env, "ridden").await;
    forged["requester_arn"] = json!(MALLORY);
    forged["duration_seconds"] = json!(43_200);
    let foreign = start_foreign(&env, "mallory-rides", &forged).await;
    // The foreign execution is refused (its approval task, by the consumer) or stopped
    // (by the drift sweeper, when a sweep finds it first); either reports it on ridden.
    let warning = wait_warning(&env, "ridden", "ForeignExecution").await;
    assert!(warning.contains(&foreign), "{warning}");
    let alert = wait_security_alert(&env, "ForeignExecution", "ridden").await;
    assert!(alert.message.contains(&foreign), "{}", alert.message);
    // Answered Cancelled by the consumer, or stopped by the drift sweeper first (moto
    // 5.2.5 may end a stopped, waiting execution FAILED instead of ABORTED).
    let (state, _) = ended(&env, &foreign).await;
    assert!(
        ["SUCCEEDED", "ABORTED", "FAILED"].contains(&state.as_str()),
        "{state}"
    );
    env.vote(User::Carol, "ridden", "Approve");
    env.wait_phase("ridden", Phase::Active).await;
    assert_eq!(granted(&env).await, vec![ALICE.to_string()]);
}

/// A plain AWS caller with `sqs:SendMessage` on the work queue writes grant items by
/// hand: one for no request at all, one naming a live approved request's real execution
/// but another principal, one asking that request's grant for 12 hours. None grants.
#[tokio::test]
async fn hand_written_grant_items_grant_nothing() {
    let env = Env::new("atk-forge", "").await;
    let sqs = aws_sdk_sqs::Client::new(&env.sdk);
    let role_arn = format!("arn:aws:iam::{ACCOUNT}:role/jit/{}", env.iam_role_name);
    let send = |body: Value, dedup: &str| {
        let (sqs, url, dedup) = (
            sqs.clone(),
            env.aws.work_queue_url.clone(),
            dedup.to_string(),
        );
        let group = format!("{ACCOUNT}/{}", env.iam_role_name);
        async move {
            sqs.send_message()
                .queue_url(url)
                .message_group_id(group)
                .message_deduplication_id(dedup)
                .message_body(body.to_string())
                .send()
                .await
                .expect("a plain AWS caller sends to the work queue");
        }
    };
    let input = |uid: &str, name: &str, principal: &str, seconds: u64| {
        json!({
            "requester_arn": principal, "requester_name": "mallory", "reason": "x",
            "ticket": "", "role_arn": role_arn, "method": "TrustPolicy",
            "work_group": format!("{ACCOUNT}/{}", env.iam_role_name),
            "duration_seconds": seconds, "approval_timeout_seconds": 60,
            "request": {"namespace": env.ns, "name": name, "uid": uid}
        })
    };
    // 1. No execution, no request.
    send(
        json!({"type": "grant", "task_token": "forged", "input":
            input("0b5f7a4e-9c1d-4e2b-8f3a-1d2c3b4a5f6e", "nobody", MALLORY, 3600),
            "execution_arn": format!("arn:aws:states:us-east-1:{ACCOUNT}:execution:x:forged")}),
        "forged-1",
    )
    .await;
    work_queue_settled(&env).await;
    assert!(
        granted(&env).await.is_empty(),
        "a forged grant with no request"
    );

    // 2 and 3. Alice's request, recorded and waiting for approval: items naming its real
    // execution, one for another principal, one for 12 hours, sent before anyone
    // approved (nothing else stands in their way then).
    env.request(User::Alice, "target", "  duration: 2m\n");
    env.wait_phase("target", Phase::AwaitingApproval).await;
    let real = real_input(&env, "target").await;
    let uid = real["request"]["uid"].as_str().expect("uid").to_string();
    let execution_arn = env
        .requests()
        .get("target")
        .await
        .expect("get")
        .status
        .and_then(|s| s.execution_arn)
        .expect("executionArn");
    let mut other_principal = real.clone();
    other_principal["requester_arn"] = json!(MALLORY);
    let mut longer = real.clone();
    longer["duration_seconds"] = json!(43_200);
    for (i, forged) in [other_principal.clone(), longer.clone(), real.clone()]
        .into_iter()
        .enumerate()
    {
        send(
            json!({"type": "grant", "task_token": "forged", "input": forged,
                   "execution_arn": execution_arn}),
            &format!("forged-{uid}-{i}"),
        )
        .await;
    }
    work_queue_settled(&env).await;
    assert!(
        granted(&env).await.is_empty(),
        "nothing is granted before approval, whatever the item says"
    );
    wait_warning(&env, "target", "NotApproved").await;

    // 4. After carol approves: the real grant is alice's, for the approved 2 minutes;
    // forged items changing the principal or the duration are refused.
    env.vote(User::Carol, "target", "Approve");
    let active = env.wait_phase("target", Phase::Active).await;
    let expires = active
        .status
        .and_then(|s| s.expires_at)
        .expect("expiresAt")
        .0;
    assert!(
        expires <= jiff::Timestamp::now() + jiff::SignedDuration::from_secs(125),
        "{expires}"
    );
    for (i, forged) in [other_principal, longer].into_iter().enumerate() {
        send(
            json!({"type": "grant", "task_token": "forged", "input": forged,
                   "execution_arn": execution_arn}),
            &format!("forged-after-{uid}-{i}"),
        )
        .await;
    }
    work_queue_settled(&env).await;
    assert_eq!(granted(&env).await, vec![ALICE.to_string()]);
    let warning = wait_warning(&env, "target", "InputMismatch").await;
    assert!(
        warning.contains("requester_arn") || warning.contains("duration_seconds"),
        "{warning}"
    );
}

/// A plain AWS caller reads a new request's uid and starts `ar-<uid>` first, with input
/// of their own, before the operator gets to it. The request must end `Failed` as
/// tampered, nothing granted, whatever the approvers do.
#[tokio::test]
async fn a_squatted_execution_name_fails_the_request_and_grants_nothing() {
    let mut env = Env::new("atk-squat", "").await;
    env.kill_operator();
    env.request(User::Alice, "squatted", "  duration: 2m\n");
    let r: AccessRequest = env.requests().get("squatted").await.expect("get");
    let uid = r.metadata.uid.clone().expect("uid");
    let forged = json!({
        "requester_arn": MALLORY, "requester_name": "alice", "reason": "e2e", "ticket": "",
        "role_arn": format!("arn:aws:iam::{ACCOUNT}:role/jit/{}", env.iam_role_name),
        "method": "TrustPolicy", "work_group": format!("{ACCOUNT}/{}", env.iam_role_name),
        "duration_seconds": 43_200, "approval_timeout_seconds": 3600,
        "request": {"namespace": env.ns, "name": "squatted", "uid": uid}
    });
    let foreign = start_foreign(&env, &format!("ar-{uid}"), &forged).await;
    // And a second request squatted with exactly the input aws-jit would send, plus one
    // field of the attacker's own: not adopted either.
    env.request(User::Alice, "squatted-extra", "  duration: 2m\n");
    let extra_req: AccessRequest = env.requests().get("squatted-extra").await.expect("get");
    let role: aws_jit::crd::AccessRole = Api::all(env.kube.clone())
        .get(&env.access_role)
        .await
        .expect("role");
    let planned = aws_jit::policy::decide::plan_in(
        &extra_req,
        Some(&role),
        &aws_jit::policy::decide::Scope::new([ACCOUNT.to_string()]),
    )
    .expect("valid");
    let mut with_extra = serde_json::to_value(&planned).expect("JSON");
    with_extra["next_state_reads_this"] = json!("attacker's");
    let extra_uid = extra_req.metadata.uid.clone().expect("uid");
    start_foreign(&env, &format!("ar-{extra_uid}"), &with_extra).await;
    env.start_operator();
    let extra = env.wait_phase("squatted-extra", Phase::Failed).await;
    assert!(
        extra.status.is_some_and(|s| s
            .conditions
            .iter()
            .any(|c| c.type_ == "Tampered" && c.status == "True")),
        "an input with an extra field is not what aws-jit would send"
    );
    let failed = env.wait_phase("squatted", Phase::Failed).await;
    let status = failed.status.expect("status");
    assert!(
        status.execution_arn.is_none(),
        "the foreign execution is not recorded"
    );
    let tampered = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Tampered")
        .expect("a Tampered condition");
    assert_eq!(tampered.status, "True");
    wait_warning(&env, "squatted", "ExecutionTampered").await;
    let alert = wait_security_alert(&env, "ExecutionTampered", "squatted").await;
    assert!(
        alert.message.contains("nothing is granted"),
        "{}",
        alert.message
    );
    // The foreign execution is stopped (moto leaves a token-waiting one RUNNING until
    // its task is answered; the consumer refuses and answers it).
    let (state, _) = ended(&env, &foreign).await;
    assert_ne!(state, "RUNNING");
    // Approving changes nothing.
    env.vote(User::Carol, "squatted", "Approve");
    work_queue_settled(&env).await;
    assert!(granted(&env).await.is_empty());
    assert_eq!(
        env.requests()
            .get("squatted")
            .await
            .expect("get")
            .status
            .and_then(|s| s.phase),
        Some(Phase::Failed)
    );
}

/// An AccessRole naming a role in an account the operator does not serve is refused
/// (the worker edits roles by name in its own account, so it would have edited the
/// same-named role here); so is a requester mapped to an STS session principal, whose
/// name anyone who may assume the role chooses.
#[tokio::test]
async fn roles_in_other_accounts_and_session_principals_are_refused() {
    let env = Env::new("atk-scope", "").await;
    let other = format!("{}-other", env.access_role);
    let yaml = format!(
        "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRole\nmetadata:\n  name: {other}\nspec:\n\
         \x20 roleArn: arn:aws:iam::210987654321:role/jit/{role}\n\
         \x20 approvers: [{{user: carol}}]\n  requesters: [{{user: alice}}]\n\
         \x20 principal: {{template: 'arn:aws:iam::{ACCOUNT}:user/{{username}}'}}\n\
         ---\napiVersion: aws-jit.io/v1alpha1\nkind: AccessRole\nmetadata:\n  name: {other}-sts\nspec:\n\
         \x20 roleArn: arn:aws:iam::{ACCOUNT}:role/jit/{role}\n\
         \x20 approvers: [{{user: carol}}]\n  requesters: [{{user: alice}}]\n\
         \x20 principal: {{template: 'arn:aws:sts::{ACCOUNT}:assumed-role/Dev/{{username}}'}}\n",
        role = env.iam_role_name,
    );
    succeeded(
        &stack()
            .kube
            .kubectl_stdin(User::Admin, &["apply", "-f", "-"], &yaml),
    );
    for (name, role, needle) in [
        ("cross-account", other.clone(), "210987654321"),
        ("session", format!("{other}-sts"), "STS session principal"),
    ] {
        let yaml = format!(
            "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRequest\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
             spec:\n  role: {role}\n  requester: alice\n  reason: e2e\n",
            ns = env.ns
        );
        succeeded(
            &stack()
                .kube
                .kubectl_stdin(User::Alice, &["create", "-f", "-"], &yaml),
        );
        let r = env.wait_phase(name, Phase::Rejected).await;
        let message = r.status.and_then(|s| s.message).unwrap_or_default();
        assert!(message.contains(needle), "{name}: {message}");
        assert!(
            r.metadata.uid.is_some()
                && env
                    .requests()
                    .get(name)
                    .await
                    .expect("get")
                    .status
                    .and_then(|s| s.execution_arn)
                    .is_none(),
            "{name}: no execution started"
        );
    }
    assert!(granted(&env).await.is_empty());
}

/// The requester withdraws a request before it is decided: it is cancelled, and a later
/// approval grants nothing (before, the grant happened and was then revoked).
#[tokio::test]
async fn a_revocation_before_approval_cancels_the_request() {
    let env = Env::new("atk-withdraw", "").await;
    env.request(User::Alice, "withdrawn", "  duration: 2m\n");
    env.wait_phase("withdrawn", Phase::AwaitingApproval).await;
    env.revoke(User::Alice, "withdrawn", "not needed any more");
    let r = env.wait_phase("withdrawn", Phase::Revoked).await;
    assert!(
        r.status.and_then(|s| s.granted_at).is_none(),
        "never granted"
    );
    assert_eq!(
        env.execution_outcome("withdrawn").await,
        ("SUCCEEDED".into(), "Cancelled".into())
    );
    assert!(granted(&env).await.is_empty());
}

/// Someone with no say revokes first (admission lets anyone who reaches status add an
/// entry in their own name) while the request waits for approval; it must not stand in
/// the way of one that counts. Here the first writer is dave, who is no approver of this
/// role. Before the fix `status.revocation` was one set-once slot: dave's entry blocked
/// alice's own withdrawal (admission refused it) until the controller cleared it, and a
/// co-user re-setting it each time kept her out.
#[tokio::test]
async fn an_ineligible_revocation_does_not_block_the_requesters() {
    let env = Env::new("atk-block", "  approvers: [{user: carol}]\n").await;
    env.request(User::Alice, "blocked", "  duration: 2m\n");
    env.wait_phase("blocked", Phase::AwaitingApproval).await;
    env.revoke(User::Dave, "blocked", "I have no say");
    wait_warning(&env, "blocked", "RevokeIgnored").await;
    // Ignored: the request still waits, and nothing was cancelled.
    let r = env.requests().get("blocked").await.expect("get");
    assert_eq!(
        r.status.and_then(|s| s.phase),
        Some(Phase::AwaitingApproval)
    );
    env.revoke(User::Alice, "blocked", "withdrawn");
    env.wait_phase("blocked", Phase::Revoked).await;
    assert!(granted(&env).await.is_empty());
    // Both entries stay: the record of who asked.
    let r = env.requests().get("blocked").await.expect("get");
    let who: Vec<String> = r
        .status
        .and_then(|s| s.revocations)
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.requested_by)
        .collect();
    assert_eq!(who, ["dave", "alice"]);
}

/// An approval is delivered and the operator dies before it records it; then an approver
/// appends a Deny. Before the fix the restarted controller answered Deny (too late: the
/// task was over), wrote `Denied` and deleted the tokens, while the execution granted
/// access that status said was denied and nobody could end early. Now what Kubernetes
/// says at grant time wins (a Deny before the grant stops it) and the phase is what the
/// execution did: never `Denied` while access is granted, and a grant made before the
/// Deny can still be revoked.
#[tokio::test]
async fn status_never_says_denied_while_access_is_granted() {
    let mut env = Env::new("atk-late-deny", "").await;
    env.faults.arm(points::AFTER_APPROVAL_ANSWERED);
    env.request(User::Alice, "late", "  duration: 2m\n");
    env.wait_phase("late", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "late", "Approve");
    crate::crashes::stopped_at(&env, points::AFTER_APPROVAL_ANSWERED).await;
    env.kill_operator();
    env.vote(User::Dave, "late", "Deny");
    env.start_operator();
    // The worker may have granted between the answer and the crash (the Deny came too
    // late), or the Deny stops the grant. Either way status says what AWS has.
    let settled = eventually("the request to settle", WAIT, || async {
        let r = env
            .requests()
            .get("late")
            .await
            .map_err(|e| e.to_string())?;
        match r.status.as_ref().and_then(|s| s.phase) {
            Some(p @ (Phase::Active | Phase::Failed | Phase::Denied)) => Ok(p),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    match settled {
        Phase::Failed => {
            assert!(
                granted(&env).await.is_empty(),
                "the late Deny stopped the grant"
            );
            let (state, _) = env.execution_outcome("late").await;
            assert_eq!(
                state, "FAILED",
                "the execution's grant failed, and status says so"
            );
        }
        Phase::Active => {
            assert_eq!(granted(&env).await, vec![ALICE.to_string()]);
            // Its tokens were kept: the access can still be ended early.
            env.revoke(User::Alice, "late", "done");
            env.wait_phase("late", Phase::Revoked).await;
            assert!(granted(&env).await.is_empty());
        }
        other => {
            let has = granted(&env).await;
            panic!("status says {other:?} while the trust policy grants {has:?}")
        }
    }
}

/// A statement in aws-jit's exact shape for `principal`, valid for 12 hours.
fn in_our_shape(sid: &str, principal: &str) -> Value {
    let expiry = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(12))
        .expect("time")
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    json!({"Sid": sid, "Effect": "Allow", "Principal": {"AWS": principal},
        "Action": "sts:AssumeRole",
        "Condition": {"DateLessThan": {"aws:CurrentTime": expiry}}})
}

/// An IAM admin (or a lost revoke) adds `statements` to the managed role's trust
/// policy, which was `live`.
async fn plant<const N: usize>(
    env: &Env,
    live: &aws_jit::grant::trust_policy::document::Document,
    statements: [Value; N],
) {
    let mut planted: Value =
        serde_json::from_str(&aws_jit::grant::trust_policy::document::to_json(live)).expect("JSON");
    planted["Statement"]
        .as_array_mut()
        .expect("statements")
        .extend(statements);
    aws_sdk_iam::Client::new(&env.sdk)
        .update_assume_role_policy()
        .role_name(&env.iam_role_name)
        .policy_document(planted.to_string())
        .send()
        .await
        .expect("an IAM admin edits the trust policy");
}

/// The crash of the test above, with the drift sweep between the grant and the status
/// that says so: carol's approval was answered and granted, the operator stopped before
/// writing `Approved`, and dave's Deny came after. The request's status and votes then
/// say nothing approved it, but the approval went out and stands (the controller keeps
/// it, in status and in its tokens, so it can still be ended early). Before the fix the
/// sweep removed the grant, and the request then showed `Active` with nothing granted
/// (seen in the test above, about 1 run in 12).
#[tokio::test]
async fn a_deny_after_the_approval_went_out_does_not_get_the_grant_swept() {
    let mut env = Env::new("atk-late-sweep", "").await;
    env.faults.arm(points::AFTER_APPROVAL_ANSWERED);
    env.request(User::Alice, "late", "  duration: 2m\n");
    env.wait_phase("late", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "late", "Approve");
    crate::crashes::stopped_at(&env, points::AFTER_APPROVAL_ANSWERED).await;
    eventually("the grant", WAIT, || async {
        let has = granted(&env).await;
        if has.is_empty() {
            Err("none yet".to_string())
        } else {
            Ok(())
        }
    })
    .await;
    env.kill_operator();
    env.vote(User::Dave, "late", "Deny");
    let granted_doc = env.trust_policy().await;
    let phase = env
        .requests()
        .get("late")
        .await
        .expect("get")
        .status
        .and_then(|s| s.phase);
    assert_eq!(
        phase,
        Some(Phase::AwaitingApproval),
        "status does not show the approval"
    );

    // A sweep as the restarted operator's first (caches showing no request, so every
    // statement is judged on a live read).
    let role: aws_jit::crd::AccessRole = Api::all(env.kube.clone())
        .get(&env.access_role)
        .await
        .expect("AccessRole");
    let cached = CachedSweep::new(&env, vec![role]).await;
    let swept = cached.sweeper.sweep().await.expect("a sweep");
    assert!(swept.statements.is_empty(), "{:?}", swept.statements);
    assert_eq!(
        env.trust_policy().await,
        granted_doc,
        "the grant stays, exactly"
    );

    // The restarted operator shows what AWS has, and the access can still be ended.
    env.start_operator();
    env.wait_phase("late", Phase::Active).await;
    assert_eq!(granted(&env).await, vec![ALICE.to_string()]);
    env.revoke(User::Alice, "late", "done");
    env.wait_phase("late", Phase::Revoked).await;
    assert!(granted(&env).await.is_empty());
}

/// Someone with IAM rights (or a revoke that was lost) leaves statements in a managed
/// role's trust policy that no approved request accounts for: one in aws-jit's exact
/// shape for a request that has ended, and one named like aws-jit's with no expiry at
/// all. The drift sweeper removes both, reports the first on its request, and leaves
/// every foreign statement and the live grant alone.
#[tokio::test]
async fn the_drift_sweeper_removes_grants_nothing_approved() {
    let env = Env::new("atk-drift", "").await;
    env.request(User::Alice, "ended", "  duration: 2m\n");
    env.wait_phase("ended", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "ended", "Approve");
    env.wait_phase("ended", Phase::Active).await;
    let ended_sid = aws_jit::grant::trust_policy::document::grants(&env.trust_policy().await)[0]
        .sid
        .clone();
    env.revoke(User::Alice, "ended", "done");
    env.wait_phase("ended", Phase::Revoked).await;
    env.request(User::Alice, "live", "  duration: 2m\n");
    env.wait_phase("live", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "live", "Approve");
    env.wait_phase("live", Phase::Active).await;
    let live = env.trust_policy().await;
    let foreign_before = env.foreign_statements().await;

    // The plant: the ended request's statement back, valid for 12 hours, and a
    // permanent one for mallory named like aws-jit's.
    plant(
        &env,
        &live,
        [
            in_our_shape(&ended_sid, ALICE),
            json!({"Sid": "AwsJitBackdoor", "Effect": "Allow",
                "Principal": {"AWS": MALLORY}, "Action": "sts:AssumeRole"}),
        ],
    )
    .await;

    let warning = wait_warning(&env, "ended", "DriftRemoved").await;
    assert!(warning.contains(&ended_sid), "{warning}");
    let alert = wait_security_alert(&env, "DriftRemoved", "ended").await;
    assert!(alert.message.contains(&ended_sid), "{}", alert.message);
    eventually("the planted statements to be gone", WAIT, || async {
        let doc = env.trust_policy().await;
        let sids = aws_jit::grant::trust_policy::document::prefixed_sids(&doc);
        if sids
            .iter()
            .any(|s| s == "AwsJitBackdoor" || *s == ended_sid)
        {
            Err(format!("{sids:?}"))
        } else {
            Ok(())
        }
    })
    .await;
    assert_eq!(
        granted(&env).await,
        vec![ALICE.to_string()],
        "the live grant stays"
    );
    assert_eq!(
        env.trust_policy().await,
        live,
        "exactly as it was before the plant"
    );
    assert_eq!(env.foreign_statements().await, foreign_before);
}

/// The drift sweep finds its candidates in the controller's caches, which may not show
/// a request yet (a watch a little behind, a request just created). Here the cache of
/// requests has synced and shows none at all while a grant is live: its statement and
/// its execution are candidates, and both must be judged again on a live read, while
/// real drift planted beside them (a statement in aws-jit's shape for a request that
/// exists nowhere, an execution no request started) is still removed. Before the fix
/// (executions judged on the cache alone) the live execution was stopped; without the
/// live re-check of statements the live grant was removed.
#[tokio::test]
async fn a_cache_behind_the_apiserver_never_gets_a_live_grant_swept() {
    let mut env = Env::new("atk-stale-sweep", "").await;
    env.request(User::Alice, "held", "  duration: 5m\n");
    env.wait_phase("held", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "held", "Approve");
    env.wait_phase("held", Phase::Active).await;
    // Only the sweeper below judges from here on.
    env.kill_operator();
    let live = env.trust_policy().await;
    assert_eq!(granted(&env).await, vec![ALICE.to_string()]);

    // Real drift beside the live grant.
    // The uid of no request anywhere (uids are UUIDs; this one is made up).
    let ghost_uid = format!(
        "0000dead-{:04x}-4000-8000-000000000000",
        std::process::id() & 0xffff
    );
    let ghost_sid = aws_jit::grant::trust_policy::document::sid_for(&ghost_uid).expect("sid");
    plant(&env, &live, [in_our_shape(&ghost_sid, MALLORY)]).await;
    let forged = start_foreign(&env, "mallory-forged", &real_input(&env, "held").await).await;

    // Caches as the controller's, through the same reflector: synced, showing no
    // requests at all, and this test's AccessRole.
    let role: aws_jit::crd::AccessRole = Api::all(env.kube.clone())
        .get(&env.access_role)
        .await
        .expect("AccessRole");
    let cached = CachedSweep::new(&env, vec![role]).await;
    let sweeper = &cached.sweeper;
    let caches = sweeper.caches.as_ref().expect("caches");
    assert!(caches.requests.is_empty(), "the cache shows no request");

    let swept = sweeper.sweep().await.expect("a sweep");
    let removed: Vec<&str> = swept
        .statements
        .iter()
        .map(|(_, sid, _)| sid.as_str())
        .collect();
    assert_eq!(removed, [ghost_sid.as_str()], "only the planted statement");
    let stopped: Vec<&str> = swept
        .executions
        .iter()
        .map(|(arn, _)| arn.as_str())
        .collect();
    assert_eq!(stopped, [forged.as_str()], "only the forged execution");
    // Its input passes it off as held's: held's owners are told, as the consumer tells
    // them when it refuses such an execution's task (whichever catches it first).
    let warning = wait_warning(&env, "held", "ForeignExecution").await;
    assert!(warning.contains(&forged), "{warning}");
    // Each removal counted once.
    for kind in ["statement", "execution"] {
        let counted = sweeper
            .metrics
            .drift_removed
            .get_or_create(&aws_jit::telemetry::metrics::KindLabels { kind })
            .get();
        assert_eq!(counted, 1, "{kind}");
    }
    assert_eq!(
        env.trust_policy().await,
        live,
        "the live grant stays, exactly"
    );
    assert_eq!(
        env.execution("held").await.status().as_str(),
        "RUNNING",
        "the request's execution still runs"
    );
}

/// A drift sweeper as the operator's, over caches fed through the controller's own
/// reflector (`aws_jit::cache::reflect`), synced, showing no request and the roles a
/// test gives; the apiserver and AWS are the real ones.
pub(crate) struct CachedSweep {
    pub(crate) sweeper: aws_jit::grant::sweeper::Sweeper,
    role_tx: futures::channel::mpsc::UnboundedSender<
        Result<
            kube::runtime::watcher::Event<aws_jit::crd::AccessRole>,
            kube::runtime::watcher::Error,
        >,
    >,
    roles: kube::runtime::reflector::Store<aws_jit::crd::AccessRole>,
    // Kept open: a cache whose watch is gone is not read.
    _request_tx: futures::channel::mpsc::UnboundedSender<
        Result<kube::runtime::watcher::Event<AccessRequest>, kube::runtime::watcher::Error>,
    >,
}

impl CachedSweep {
    pub(crate) async fn new(env: &Env, roles: Vec<aws_jit::crd::AccessRole>) -> CachedSweep {
        use aws_jit::grant::sweeper::{Caches, Methods, Sweeper};
        use futures::StreamExt;
        use kube::runtime::{reflector, watcher};
        let (request_store, request_writer) = reflector::store();
        let (request_tx, request_rx) = futures::channel::mpsc::unbounded();
        let (request_events, requests_synced) = aws_jit::cache::reflect(request_rx, request_writer);
        let (role_store, role_writer) = reflector::store();
        let (role_tx, role_rx) = futures::channel::mpsc::unbounded();
        let (role_events, roles_synced) = aws_jit::cache::reflect(role_rx, role_writer);
        tokio::spawn(request_events.for_each(|_| async {}));
        tokio::spawn(role_events.for_each(|_| async {}));
        for event in [watcher::Event::Init, watcher::Event::InitDone] {
            request_tx.unbounded_send(Ok(event)).expect("send");
        }
        let events = std::iter::once(watcher::Event::Init)
            .chain(roles.into_iter().map(watcher::Event::InitApply))
            .chain([watcher::Event::InitDone]);
        for event in events {
            role_tx.unbounded_send(Ok(event)).expect("send");
        }
        assert!(requests_synced.within(Duration::from_secs(10)).await);
        assert!(roles_synced.within(Duration::from_secs(10)).await);

        let config = env.config();
        let sfn = aws_sdk_sfn::Client::new(&env.sdk);
        let machine =
            aws_jit::aws::sfn::StepFunctionClient::new(sfn.clone(), &env.aws.state_machine_arn);
        let authority = aws_jit::aws::authority::Authority::new(
            env.kube.clone(),
            machine.clone(),
            config.aws.scope(),
            Default::default(),
            aws_jit::aws::alerts::SecurityAlerts::none(),
        );
        let iam = aws_sdk_iam::Client::new(&env.sdk);
        let worker = aws_jit::grant::trust_policy::worker::Worker::new(
            authority,
            aws_sdk_sqs::Client::new(&env.sdk),
            iam.clone(),
            machine,
            &env.aws.work_queue_url,
        );
        let sso = aws_sdk_ssoadmin::Client::new(&env.sdk);
        let sweeper = Sweeper {
            client: env.kube.clone(),
            sfn,
            state_machine_arn: env.aws.state_machine_arn.clone(),
            worker,
            scope: config.aws.scope(),
            // Every request (the statement of one the cache does not show is drift then).
            watch_namespace: None,
            metrics: Default::default(),
            alerts: aws_jit::aws::alerts::SecurityAlerts::none(),
            interval: Duration::from_secs(3600),
            methods: std::sync::Arc::new(Methods {
                identity_center:
                    aws_jit::grant::identity_center::IdentityCenterGrants::with_clients(
                        sso.clone(),
                        aws_sdk_identitystore::Client::new(&env.sdk),
                        std::sync::Arc::new(aws_jit::grant::identity_center::PermissionSets::new(
                            Some(sso),
                        )),
                    ),
                iam_group: aws_jit::grant::iam_group::IamGroupGrants { iam },
            }),
            caches: Some(Caches {
                requests: request_store,
                requests_synced,
                roles: role_store.clone(),
                roles_synced,
            }),
            answers: aws_jit::run::operator::answers(aws_jit::controller::tokens::TokenStore::new(
                env.kube.clone(),
                &config.settings.operator_namespace,
            )),
        };
        CachedSweep {
            sweeper,
            role_tx,
            roles: role_store,
            _request_tx: request_tx,
        }
    }

    /// The role cache sees `role` as it is now (a watch event); returns once it shows.
    pub(crate) async fn role_changed(&self, role: aws_jit::crd::AccessRole) {
        let want = role.clone();
        self.role_tx
            .unbounded_send(Ok(kube::runtime::watcher::Event::Apply(role)))
            .expect("send");
        crate::support::wait::eventually(
            "the role cache shows the change",
            Duration::from_secs(10),
            || async {
                let shown = self
                    .roles
                    .state()
                    .iter()
                    .any(|r| r.spec == want.spec && r.metadata.name == want.metadata.name);
                if shown {
                    Ok(())
                } else {
                    Err("not yet".to_string())
                }
            },
        )
        .await
    }
}

/// The apiserver is unreachable for the operator while a request's approval task
/// waits on the request queue, for longer than SQS takes to move an abandoned message
/// to the dead-letter queue (the queue's visibility timeout is cut to 1 s here, so five
/// receives take seconds, as five minutes do with the template's 60 s). Before the fix
/// the consumer left a message it could not handle to come back, SQS dead-lettered it,
/// and the approval token was lost: the request never became AwaitingApproval. Now the
/// consumer keeps the message and tries again.
#[tokio::test]
async fn an_apiserver_outage_loses_no_task_token() {
    let mut env = Env::new("atk-outage", "").await;
    env.kill_operator();
    let sqs = aws_sdk_sqs::Client::new(&env.sdk);
    sqs.set_queue_attributes()
        .queue_url(&env.aws.request_queue_url)
        .attributes(QueueAttributeName::VisibilityTimeout, "1")
        .send()
        .await
        .expect("short visibility timeout");
    let port = stack().kube.server().rsplit(':').next().expect("port");
    let target = format!("127.0.0.1:{port}").parse().expect("address");
    let outage = crate::support::outage::Outage::start(target).await;
    let kubeconfig = kube::config::Kubeconfig::read_from(stack().kube.kubeconfig(User::Operator))
        .expect("kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    config.cluster_url = format!("https://{}", outage.addr()).parse().expect("URL");
    let proxied = kube::Client::try_from(config).expect("client");
    // The controller stops right after it starts the execution, so the approval task
    // finds a request that has not recorded it; then the apiserver goes away.
    env.faults.arm(points::AFTER_START_EXECUTION);
    env.start_operator_via(proxied);
    env.request(User::Alice, "outage", "  duration: 2m\n");
    crate::crashes::stopped_at(&env, points::AFTER_START_EXECUTION).await;
    outage.begin();
    // The outage's length (three times what SQS needs to dead-letter the message
    // here), not a wait for anything.
    tokio::time::sleep(Duration::from_secs(15)).await;
    outage.end();
    env.kill_operator();
    env.start_operator();
    env.wait_phase("outage", Phase::AwaitingApproval).await;
    let dead = sqs
        .receive_message()
        .queue_url(&env.aws.request_dlq_url)
        .max_number_of_messages(10)
        .send()
        .await
        .expect("receive from the DLQ");
    assert!(
        dead.messages().is_empty(),
        "nothing was dead-lettered: {:?}",
        dead.messages()
    );
    env.vote(User::Carol, "outage", "Approve");
    env.wait_phase("outage", Phase::Active).await;
    assert_eq!(env.executions_started().await, 1);
}

/// A task that reached the request dead-letter queue all the same (here: moved there the
/// way SQS's redrive does, while the operator was down) is surfaced on its request (the
/// `TaskDeadLettered` condition and a Warning Event) and handled from there: the request
/// goes on to AwaitingApproval and Active, and the condition says it was redriven.
#[tokio::test]
async fn a_dead_lettered_task_is_surfaced_and_redriven() {
    let mut env = Env::new("atk-dlq", "").await;
    // The controller starts the execution and stops right there (as if it crashed), so
    // nothing consumes the approval task; the operator is then taken down.
    env.faults.arm(points::AFTER_START_EXECUTION);
    env.request(User::Alice, "lost", "  duration: 2m\n");
    crate::crashes::stopped_at(&env, points::AFTER_START_EXECUTION).await;
    env.kill_operator();
    // SQS's redrive, by hand: the approval task moves to the dead-letter queue.
    let sqs = aws_sdk_sqs::Client::new(&env.sdk);
    let moved = eventually("the approval task to be moved to the DLQ", WAIT, || async {
        let got = sqs
            .receive_message()
            .queue_url(&env.aws.request_queue_url)
            .max_number_of_messages(1)
            .wait_time_seconds(1)
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        let Some(m) = got.messages().first() else {
            return Err("no message yet".to_string());
        };
        sqs.send_message()
            .queue_url(&env.aws.request_dlq_url)
            .message_body(m.body().unwrap_or_default())
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        sqs.delete_message()
            .queue_url(&env.aws.request_queue_url)
            .receipt_handle(m.receipt_handle().unwrap_or_default())
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        Ok(m.body().unwrap_or_default().to_string())
    })
    .await;
    assert!(moved.contains("\"approval\""), "{moved}");
    env.start_operator();
    // Redriven within a minute or two (once at start, again every minute).
    env.wait_phase_within("lost", Phase::AwaitingApproval, Duration::from_secs(150))
        .await;
    wait_warning(&env, "lost", "DeadLetteredTask").await;
    let r = eventually("the TaskDeadLettered condition", WAIT, || async {
        let r = env
            .requests()
            .get("lost")
            .await
            .map_err(|e| e.to_string())?;
        let c = r.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "TaskDeadLettered")
                .cloned()
        });
        match c {
            Some(c) if c.reason == "Redriven" => Ok(c),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(r.status, "False");
    env.vote(User::Carol, "lost", "Approve");
    env.wait_phase("lost", Phase::Active).await;
}
