//! Access ends when the grant ends, live sessions included (issue 11), on the real stack:
//! the operator's own code, the shipped state machines on moto, kubectl as the real
//! users. What the documents *mean* is proven with a real policy evaluator
//! (`policy_eval`); here: that the right documents are in IAM at the right times,
//! written and removed by whom the design says, whatever becomes of the execution.
use std::time::Duration;

use aws_jit::crd::{AccessRequest, Phase};
use serde_json::Value;

use crate::controller::{ACCOUNT, Env, condition};
use crate::support::kube::User;
use crate::support::policy_eval::{Decision, RoleSession, assume_role, session_call};
use crate::support::wait::eventually;
use crate::support::{stack, succeeded};

const WAIT: Duration = Duration::from_secs(60);

/// A stack whose cleanup waits only `SessionGraceSeconds` = 1 after a role's (small)
/// `MaxSessionDuration`, so a test sees the deny go.
async fn env(prefix: &str, max_session_seconds: i32) -> Env {
    let env = Env::with_template(
        prefix,
        "",
        &[
            ("SessionGraceSeconds", "1"),
            ("WorkTaskTimeoutSeconds", "30"),
        ],
    )
    .await;
    // moto does not enforce IAM's 3600 s minimum: a short-lived role keeps tests short.
    aws_sdk_iam::Client::new(&env.sdk)
        .update_role()
        .role_name(&env.iam_role_name)
        .max_session_duration(max_session_seconds)
        .send()
        .await
        .expect("update the role's MaxSessionDuration");
    env
}

fn uid(r: &AccessRequest) -> String {
    r.metadata.uid.clone().expect("uid")
}

fn expires_at(r: &AccessRequest) -> String {
    let at = r
        .status
        .as_ref()
        .and_then(|s| s.expires_at.clone())
        .expect("expiresAt");
    aws_jit::policy::decide::expiry_after(at.0, 0)
}

/// The request's deny policy on the role, as IAM has it (None: there is none).
async fn deny_policy(env: &Env, uid: &str) -> Option<Value> {
    let got = aws_sdk_iam::Client::new(&env.sdk)
        .get_role_policy()
        .role_name(&env.iam_role_name)
        .policy_name(aws_jit::grant::trust_policy::session::policy_name(uid))
        .send()
        .await;
    match got {
        Ok(out) => Some(
            aws_jit::grant::trust_policy::document::decode_json(out.policy_document())
                .expect("a JSON policy"),
        ),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_no_such_entity_exception()) =>
        {
            None
        }
        Err(e) => panic!("get role policy: {e:?}"),
    }
}

fn expiring(uid: &str, expires_at: &str) -> Value {
    aws_jit::grant::trust_policy::session::deny_document(&format!("ar-{uid}"), expires_at, false)
}

fn revoked(uid: &str, expires_at: &str) -> Value {
    aws_jit::grant::trust_policy::session::deny_document(&format!("ar-{uid}"), expires_at, true)
}

/// The role's trust policy as IAM holds it (a JSON document), and the role's id.
async fn trust_and_id(env: &Env) -> (Value, String) {
    let role = aws_sdk_iam::Client::new(&env.sdk)
        .get_role()
        .role_name(&env.iam_role_name)
        .send()
        .await
        .expect("get role");
    let role = role.role().expect("role");
    let doc = aws_jit::grant::trust_policy::document::decode_json(
        role.assume_role_policy_document().expect("trust policy"),
    )
    .expect("JSON");
    (doc, role.role_id().to_string())
}

/// What the role is for: administrator access (its permissions besides our deny).
fn admin() -> Value {
    serde_json::json!({"Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
}

/// A session cleanup execution exists for the request (named like its execution).
async fn assert_cleanup_started(env: &Env, uid: &str) {
    let cleanup = aws_sdk_sfn::Client::new(&env.sdk)
        .list_executions()
        .state_machine_arn(&env.aws.cleanup_state_machine_arn)
        .send()
        .await
        .expect("list cleanup executions");
    assert!(
        cleanup
            .executions()
            .iter()
            .any(|e| e.name() == format!("ar-{uid}")),
        "a cleanup execution for the request: {:?}",
        cleanup.executions()
    );
}

/// alice asks, carol approves: the request once it is Active.
async fn active(env: &Env, name: &str, duration: &str) -> AccessRequest {
    env.request(User::Alice, name, &format!("  duration: {duration}\n"));
    env.wait_phase(name, Phase::AwaitingApproval).await;
    env.vote(User::Carol, name, "Approve");
    env.wait_phase(name, Phase::Active).await
}

#[tokio::test]
async fn a_grant_names_its_sessions_and_an_early_revoke_ends_them_at_once() {
    let env = env("ses-revoke", 3600).await;
    let r = active(&env, "named", "1h").await;
    let uid = uid(&r);
    let expires = expires_at(&r);
    let session = format!("ar-{uid}");

    // status.access says exactly how to use it.
    let access = r
        .status
        .as_ref()
        .and_then(|s| s.access.clone())
        .expect("status.access once Active");
    assert_eq!(access.session_name, session);
    assert_eq!(access.source_identity, "alice");
    assert!(
        access
            .role_arn
            .ends_with(&format!("/{}", env.iam_role_name))
    );
    assert!(
        access.assume_role_command.contains(&format!(
            "--role-arn {} --role-session-name {session} --source-identity alice",
            access.role_arn
        )),
        "{}",
        access.assume_role_command
    );
    assert!(
        access
            .profile
            .contains("credential_process = aws sts assume-role")
    );

    // The trust statement requires that session name and that source identity.
    let grants = aws_jit::grant::trust_policy::document::grants(&env.trust_policy().await);
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(
        grants[0].session,
        Some(aws_jit::grant::trust_policy::document::SessionTerms {
            session_name: session.clone(),
            source_identity: "alice".into(),
        })
    );
    assert_eq!(
        grants[0].principal,
        format!("arn:aws:iam::{ACCOUNT}:user/alice")
    );
    // The deny that ends its sessions at the expiry is there from the grant on.
    assert_eq!(
        deny_policy(&env, &uid).await,
        Some(expiring(&uid, &expires)),
        "the sessions' deny, written by the execution before the grant"
    );

    // What these documents mean, judged by a real IAM policy evaluator on exactly what
    // IAM holds (moto judges nothing).
    let (trust, role_id) = trust_and_id(&env).await;
    let alice = format!("arn:aws:iam::{ACCOUNT}:user/alice");
    let role_arn = access.role_arn.clone();
    let now = jiff::Timestamp::now();
    let expiry: jiff::Timestamp = expires.parse().expect("expiry");
    let after = expiry + jiff::SignedDuration::from_secs(1);
    assert_eq!(
        assume_role(&trust, &role_arn, &alice, &session, Some("alice"), now),
        Decision::Allowed,
        "alice, as the session the request names, may assume the role"
    );
    assert_ne!(
        assume_role(&trust, &role_arn, &alice, "my-own-name", Some("alice"), now),
        Decision::Allowed,
        "under another session name she may not (the deny would not know it)"
    );
    assert_ne!(
        assume_role(&trust, &role_arn, &alice, &session, None, now),
        Decision::Allowed,
        "nor without the source identity"
    );
    assert_ne!(
        assume_role(&trust, &role_arn, &alice, &session, Some("alice"), after),
        Decision::Allowed,
        "nor after the expiry"
    );
    let deny = deny_policy(&env, &uid).await.expect("deny");
    let hers = RoleSession {
        role_arn: role_arn.clone(),
        role_id: role_id.clone(),
        session_name: session.clone(),
        source_identity: Some("alice".into()),
        issued_at: now,
    };
    let call = |s: &RoleSession, at| {
        session_call(
            &[admin(), deny.clone()],
            s,
            at,
            "iam:PutRolePolicy",
            &role_arn,
        )
    };
    assert_eq!(call(&hers, now), Decision::Allowed, "her session works now");
    assert_eq!(
        call(&hers, after),
        Decision::ExplicitlyDenied,
        "and is denied after the expiry, though issued before it"
    );
    let later_grant = RoleSession {
        session_name: "ar-00000000-0000-4000-8000-000000000002".into(),
        ..hers.clone()
    };
    assert_eq!(
        call(&later_grant, after),
        Decision::Allowed,
        "another grant's session of alice is not this grant's deny's business"
    );

    // An early revoke: "deny now" before the statement goes.
    env.revoke(User::Alice, "named", "done");
    env.wait_phase("named", Phase::Revoked).await;
    let tightened = deny_policy(&env, &uid).await;
    assert_eq!(tightened, Some(revoked(&uid, &expires)));
    assert!(aws_jit::grant::trust_policy::document::grants(&env.trust_policy().await).is_empty());
    let now = jiff::Timestamp::now();
    let tightened = tightened.expect("deny");
    assert_eq!(
        session_call(
            &[admin(), tightened.clone()],
            &hers,
            now,
            "s3:GetObject",
            "*"
        ),
        Decision::ExplicitlyDenied,
        "her live session ends at once, before the expiry"
    );
    assert_eq!(
        session_call(
            &[admin(), tightened],
            &later_grant,
            now,
            "s3:GetObject",
            "*"
        ),
        Decision::Allowed
    );
    let (trust, _) = trust_and_id(&env).await;
    assert_ne!(
        assume_role(&trust, &role_arn, &alice, &session, Some("alice"), now),
        Decision::Allowed,
        "and no new session"
    );
    assert_eq!(
        env.execution_outcome("named").await,
        ("SUCCEEDED".into(), "Revoked".into())
    );
    // The execution started the cleanup (it waits past the expiry, an hour from now).
    assert_cleanup_started(&env, &uid).await;
}

#[tokio::test]
async fn deleting_an_active_request_ends_its_sessions_at_once() {
    let env = env("ses-delete", 3600).await;
    let r = active(&env, "deleted", "1h").await;
    let uid = uid(&r);
    let expires = expires_at(&r);
    succeeded(&stack().kube.kubectl(
        User::Alice,
        &["delete", "ar", "deleted", "-n", &env.ns, "--wait=false"],
    ));
    env.wait_gone("deleted").await;
    assert_eq!(deny_policy(&env, &uid).await, Some(revoked(&uid, &expires)));
    assert!(aws_jit::grant::trust_policy::document::grants(&env.trust_policy().await).is_empty());
}

#[tokio::test]
async fn the_execution_removes_the_deny_itself_with_the_operator_gone() {
    let mut env = env("ses-alone", 2).await;
    // Long enough for the grant to be made under the whole suite's load (the window is
    // fixed at approval: a grant that takes longer than it fails, as it should).
    let r = active(&env, "alone", "20s").await;
    let uid = uid(&r);
    let expires = expires_at(&r);
    assert_eq!(
        deny_policy(&env, &uid).await,
        Some(expiring(&uid, &expires))
    );
    // The cluster side is gone: no operator answers the revoke, nobody else helps.
    env.kill_operator();
    // The revoke times out (30 s), the execution still starts its cleanup, and the deny
    // goes once no session can be alive (expiry + MaxSessionDuration 2 s + grace 1 s):
    // until then it stays.
    let expiry: jiff::Timestamp = expires.parse().expect("expiry");
    let (sdk, role, policy) = (
        env.sdk.clone(),
        env.iam_role_name.clone(),
        aws_jit::grant::trust_policy::session::policy_name(&uid),
    );
    eventually(
        "the deny to be removed by the cleanup",
        Duration::from_secs(120),
        || {
            let (sdk, role, policy) = (sdk.clone(), role.clone(), policy.clone());
            async move {
                let got = aws_sdk_iam::Client::new(&sdk)
                    .get_role_policy()
                    .role_name(role)
                    .policy_name(policy)
                    .send()
                    .await;
                match got {
                    Ok(_) => Err("still there".to_string()),
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_no_such_entity_exception()) =>
                    {
                        let now = jiff::Timestamp::now();
                        assert!(
                            now >= expiry + jiff::SignedDuration::from_secs(3),
                            "removed at {now}, before no session could be alive ({expiry} + 3 s)"
                        );
                        Ok(())
                    }
                    Err(e) => Err(format!("{e:?}")),
                }
            }
        },
    )
    .await;
    // The statement the operator could not revoke is dead weight, not access: AWS
    // stopped honouring it at the expiry (the drift sweeper removes it later).
    let grants = aws_jit::grant::trust_policy::document::grants(&env.trust_policy().await);
    assert!(
        grants
            .iter()
            .all(|g| g.expires_at <= jiff::Timestamp::now()),
        "{grants:?}"
    );
}

#[tokio::test]
async fn a_stopped_execution_still_ends_the_access() {
    let env = env("ses-stopped", 3600).await;
    let r = active(&env, "stopped", "8s").await;
    let uid = uid(&r);
    let expires = expires_at(&r);
    let arn = r
        .status
        .as_ref()
        .and_then(|s| s.execution_arn.clone())
        .expect("executionArn");
    // Someone with StopExecution stops it during the hold: its own revoke never runs.
    aws_sdk_sfn::Client::new(&env.sdk)
        .stop_execution()
        .execution_arn(&arn)
        .send()
        .await
        .expect("stop execution");
    let api = env.requests();
    let r = eventually("the operator to end what the execution left", WAIT, || {
        let api = api.clone();
        async move {
            let r = api.get("stopped").await.map_err(|e| e.to_string())?;
            match condition(&r, aws_jit::policy::decide::REVOKED_CONDITION) {
                Some((s, reason)) if s == "True" && reason == "RevokedByOperator" => Ok(r),
                other => Err(format!("{other:?}: {:?}", r.status)),
            }
        }
    })
    .await;
    let status = r.status.clone().expect("status");
    let message = status.message.clone().unwrap_or_default();
    assert!(
        matches!(status.phase, Some(Phase::Revoked | Phase::Expired)),
        "{status:?}"
    );
    // AWS ends a stopped execution ABORTED at once; moto 5.2.5 lets the waiting task run
    // out and ends it FAILED States.Timeout, without running the revoke either way.
    assert!(
        message.contains("ABORTED") || message.contains("States.Timeout"),
        "the phase says what happened: {message}"
    );
    assert!(message.contains("the operator ended access"), "{message}");
    assert_eq!(deny_policy(&env, &uid).await, Some(revoked(&uid, &expires)));
    assert!(aws_jit::grant::trust_policy::document::grants(&env.trust_policy().await).is_empty());
    // And the operator started the cleanup the execution never reached.
    assert_cleanup_started(&env, &uid).await;
}

#[tokio::test]
async fn a_revoke_that_fails_is_retried_until_done_and_loud_meanwhile() {
    let mut env = env("ses-loud", 3600).await;
    // The operator's AWS goes through a proxy that can refuse its IAM role writes, as an
    // SCP or a permissions boundary changed under it would. The state machine's own
    // IAM calls do not go through it.
    env.kill_operator();
    let proxy = crate::support::stale_iam::StaleIam::start(&stack().aws.endpoint).await;
    let metrics = env.start_operator_through(&proxy.endpoint);
    let r = active(&env, "stuck", "1h").await;
    let uid = uid(&r);
    let expires = expires_at(&r);

    proxy.refuse_role_writes(true);
    env.revoke(User::Alice, "stuck", "done");
    // The execution tightens the deny itself (its own IAM rights), but the operator's
    // revoke of the statement is refused: the execution fails RevokeFailed, and the
    // operator keeps trying, loudly.
    let api = env.requests();
    let r = eventually("the request to say its revoke is failing", WAIT, || {
        let api = api.clone();
        async move {
            let r = api.get("stuck").await.map_err(|e| e.to_string())?;
            match condition(&r, aws_jit::policy::decide::REVOKED_CONDITION) {
                Some((s, reason)) if s == "False" && reason == "RevokeFailing" => Ok(r),
                other => Err(format!("{other:?}: {:?}", r.status)),
            }
        }
    })
    .await;
    assert_eq!(
        condition(&r, "Ready"),
        Some(("False".into(), "RevokeFailing".into())),
        "not Ready while its end is pending"
    );
    // GitOps health meanwhile: kstatus InProgress (not Current), Argo CD Degraded.
    let json = serde_json::to_value(&r).expect("request as JSON");
    let h = crate::support::gitops::judge(&json.to_string()).remove(0);
    assert_eq!(
        (h.kstatus.status.as_str(), h.argocd.status.as_str()),
        ("InProgress", "Degraded"),
        "{h:?}"
    );
    let message = r.status.and_then(|s| s.message).unwrap_or_default();
    assert!(message.contains("IAM denied"), "{message}");
    assert!(
        !aws_jit::grant::trust_policy::document::grants(&env.trust_policy().await).is_empty(),
        "the statement is still there while IAM refuses"
    );
    assert_eq!(
        deny_policy(&env, &uid).await,
        Some(revoked(&uid, &expires)),
        "the execution's own tightening ended the sessions meanwhile"
    );
    assert_eq!(env.execution("stuck").await.status().as_str(), "FAILED");
    // A Warning Event, a security finding for Slack, the metric.
    let events = succeeded(&stack().kube.kubectl(
        User::Admin,
        &[
            "get",
            "events",
            "-n",
            &env.ns,
            "--field-selector",
            "reason=RevokeFailing",
            "-o",
            "name",
        ],
    ));
    assert!(!events.trim().is_empty(), "a RevokeFailing Event");
    let sqs = aws_sdk_sqs::Client::new(&env.sdk);
    let queue = env.aws.alert_queue_url.clone();
    eventually(
        "a RevokeFailing security finding on the alert queue",
        WAIT,
        || {
            let (sqs, queue) = (sqs.clone(), queue.clone());
            async move {
                let bodies = crate::support::aws::take_messages(&sqs, &queue).await?;
                if bodies
                    .iter()
                    .any(|b| b.contains("\"event\":\"security\"") && b.contains("RevokeFailing"))
                {
                    Ok(())
                } else {
                    Err(format!("{bodies:?}"))
                }
            }
        },
    )
    .await;
    assert!(metrics.revoke_failures.get() >= 1);

    // IAM lets the operator again: the next try ends the access, and the phase says so.
    proxy.refuse_role_writes(false);
    let r = eventually("the operator to end the access", WAIT, || {
        let api = api.clone();
        async move {
            let r = api.get("stuck").await.map_err(|e| e.to_string())?;
            match condition(&r, aws_jit::policy::decide::REVOKED_CONDITION) {
                Some((s, _)) if s == "True" => Ok(r),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    // Done: the RevokeFailing Ready the operator wrote is gone with the rest of Ready.
    assert_eq!(condition(&r, "Ready"), None, "{:?}", r.status);
    let status = r.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Revoked));
    let message = status.message.unwrap_or_default();
    assert!(message.contains("RevokeFailed"), "what happened: {message}");
    assert!(aws_jit::grant::trust_policy::document::grants(&env.trust_policy().await).is_empty());
    assert_eq!(deny_policy(&env, &uid).await, Some(revoked(&uid, &expires)));
    assert!(proxy.refused() >= 2, "the operator tried while refused");
}

#[tokio::test]
async fn the_cleanup_machine_deletes_nothing_but_a_session_deny() {
    // A plain AWS caller with StartExecution on the cleanup machine tries to have it
    // delete a role's own inline policy (say, a restricting deny) at once.
    let env = env("ses-forged", 3600).await;
    let iam = aws_sdk_iam::Client::new(&env.sdk);
    let keep = serde_json::json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Deny", "Action": "s3:DeleteBucket", "Resource": "*"}]});
    iam.put_role_policy()
        .role_name(&env.iam_role_name)
        .policy_name("NoBucketDeletes")
        .policy_document(keep.to_string())
        .send()
        .await
        .expect("the role's own inline policy");
    let sfn = aws_sdk_sfn::Client::new(&env.sdk);
    let mut forged = Vec::new();
    for (name, policy, session, expires) in [
        (
            "forged-1",
            "NoBucketDeletes",
            "ar-x",
            "2000-01-01T00:00:00Z",
        ),
        ("forged-2", "AwsJit-x", "whatever", "2000-01-01T00:00:00Z"),
        ("forged-3", "AwsJit-x", "ar-x", "yesterday"),
    ] {
        let started = sfn
            .start_execution()
            .state_machine_arn(&env.aws.cleanup_state_machine_arn)
            .name(name)
            .input(
                serde_json::json!({"role_name": env.iam_role_name, "session_policy_name": policy,
                    "session_name": session, "expires_at": expires, "max_session_seconds": 0})
                .to_string(),
            )
            .send()
            .await
            .expect("start the cleanup machine");
        forged.push(started.execution_arn().to_string());
    }
    for arn in &forged {
        let (sfn, arn) = (sfn.clone(), arn.clone());
        eventually("the forged cleanup to fail", WAIT, || {
            let (sfn, arn) = (sfn.clone(), arn.clone());
            async move {
                let d = sfn
                    .describe_execution()
                    .execution_arn(&arn)
                    .send()
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                match d.status().as_str() {
                    "FAILED" if d.error() == Some("NotASessionDeny") => Ok(()),
                    other => Err(format!("{other} {:?}", d.error())),
                }
            }
        })
        .await;
    }
    iam.get_role_policy()
        .role_name(&env.iam_role_name)
        .policy_name("NoBucketDeletes")
        .send()
        .await
        .expect("the role's own policy is still there");
}
