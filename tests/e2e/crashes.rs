//! Crashes at the worst moments. The operator is stopped dead at a named point (as if
//! its process died there), aborted, and a fresh one started: each request must still
//! end in the right phase, with exactly one execution, the grant present exactly while
//! it should be, and nothing granted after expiry.
use std::time::Duration;

use aws_jit::crd::Phase;
use aws_jit::faults::points;
use aws_sdk_sqs::types::QueueAttributeName;

use crate::controller::Env;
use crate::support::kube::User;
use crate::support::wait::eventually;

const WAIT: Duration = Duration::from_secs(60);

pub(crate) async fn stopped_at(env: &Env, point: &'static str) {
    let faults = env.faults.clone();
    eventually(&format!("the operator to stop at {point}"), WAIT, || {
        let faults = faults.clone();
        async move {
            if faults.was_hit(point) {
                Ok(())
            } else {
                Err("not yet".into())
            }
        }
    })
    .await;
}

/// Undeleted messages come back after the queue's visibility timeout (60 s in the
/// template); a short one keeps these tests short.
async fn short_visibility(env: &Env, queue_url: &str) {
    aws_sdk_sqs::Client::new(&env.sdk)
        .set_queue_attributes()
        .queue_url(queue_url)
        .attributes(QueueAttributeName::VisibilityTimeout, "2")
        .send()
        .await
        .expect("set visibility timeout");
}

async fn statements(env: &Env) -> Vec<aws_jit::grant::trust_policy::document::GrantInfo> {
    aws_jit::grant::trust_policy::document::grants(&env.trust_policy().await)
}

#[tokio::test]
async fn crash_after_start_execution_before_status() {
    let mut env = Env::new("crash-start", "").await;
    env.faults.arm(points::AFTER_START_EXECUTION);
    env.request(User::Alice, "started", "  duration: 15s\n");
    stopped_at(&env, points::AFTER_START_EXECUTION).await;
    let r = env.requests().get("started").await.expect("get");
    assert!(
        r.status.and_then(|s| s.execution_arn).is_none(),
        "the crash came before status was written"
    );
    assert_eq!(env.executions_started().await, 1);
    env.kill_operator();
    env.start_operator();
    env.wait_phase("started", Phase::AwaitingApproval).await;
    assert_eq!(
        env.executions_started().await,
        1,
        "the restart adopted the execution instead of starting another"
    );
    env.vote(User::Carol, "started", "Approve");
    env.wait_phase("started", Phase::Active).await;
    env.wait_phase("started", Phase::Expired).await;
    assert!(statements(&env).await.is_empty());
    assert_eq!(env.executions_started().await, 1);
}

#[tokio::test]
async fn crash_after_the_token_is_stored_before_the_message_is_deleted() {
    let mut env = Env::new("crash-token", "").await;
    short_visibility(&env, &env.aws.request_queue_url.clone()).await;
    env.faults.arm(points::AFTER_TOKEN_STORED);
    env.request(User::Alice, "tokened", "  duration: 15s\n");
    stopped_at(&env, points::AFTER_TOKEN_STORED).await;
    env.kill_operator();
    env.start_operator();
    env.wait_phase("tokened", Phase::AwaitingApproval).await;
    env.vote(User::Dave, "tokened", "Approve");
    env.wait_phase("tokened", Phase::Active).await;
    env.wait_phase("tokened", Phase::Expired).await;
    assert!(statements(&env).await.is_empty());
    assert_eq!(env.executions_started().await, 1);
    // The redelivered copy was consumed too: the request queue drains.
    let sqs = aws_sdk_sqs::Client::new(&env.sdk);
    let queue = env.aws.request_queue_url.clone();
    eventually("the request queue to drain", WAIT, || {
        let (sqs, queue) = (sqs.clone(), queue.clone());
        async move {
            let a = sqs
                .get_queue_attributes()
                .queue_url(&queue)
                .attribute_names(QueueAttributeName::All)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let attrs = a.attributes().cloned().unwrap_or_default();
            let visible = attrs
                .get(&QueueAttributeName::ApproximateNumberOfMessages)
                .cloned()
                .unwrap_or_default();
            let hidden = attrs
                .get(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                .cloned()
                .unwrap_or_default();
            if visible == "0" && hidden == "0" {
                Ok(())
            } else {
                Err(format!("{visible} visible, {hidden} in flight"))
            }
        }
    })
    .await;
}

#[tokio::test]
async fn crash_after_the_grant_before_task_success() {
    let mut env = Env::new("crash-grant", "").await;
    short_visibility(&env, &env.aws.work_queue_url.clone()).await;
    env.faults.arm(points::AFTER_GRANT);
    env.request(User::Alice, "granted", "  duration: 240s\n");
    env.wait_phase("granted", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "granted", "Approve");
    stopped_at(&env, points::AFTER_GRANT).await;
    // The statement is in the policy, bounded by AWS, though nobody has answered yet.
    let before = statements(&env).await;
    assert_eq!(before.len(), 1);
    env.kill_operator();
    env.start_operator();
    // The grant item comes back once its visibility (which the stopped worker may have
    // extended while it worked) runs out.
    let r = env
        .wait_phase_within("granted", Phase::Active, Duration::from_secs(180))
        .await;
    let expires = r.status.and_then(|s| s.expires_at).expect("expiresAt").0;
    assert_eq!(
        expires, before[0].expires_at,
        "the redelivered grant kept the first expiry"
    );
    assert_eq!(statements(&env).await.len(), 1);
    // No need to sit out the expiry: deleting revokes now.
    crate::support::succeeded(&crate::support::stack().kube.kubectl(
        User::Alice,
        &["delete", "ar", "granted", "-n", &env.ns, "--wait=false"],
    ));
    env.wait_gone("granted").await;
    assert!(statements(&env).await.is_empty());
    assert_eq!(env.executions_started().await, 1);
}

/// An approval recorded but never sent (the operator died in between, or the send
/// failed) is not a decision yet: a Deny that comes meanwhile wins, and nothing is
/// granted.
#[tokio::test]
async fn a_deny_after_an_approval_that_never_went_out_wins() {
    let mut env = Env::new("crash-approving", "").await;
    env.faults.arm(points::BEFORE_APPROVAL_ANSWERED);
    env.request(User::Alice, "raced", "");
    env.wait_phase("raced", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "raced", "Approve");
    stopped_at(&env, points::BEFORE_APPROVAL_ANSWERED).await;
    env.kill_operator();
    env.vote(User::Dave, "raced", "Deny");
    env.start_operator();
    let r = env.wait_phase("raced", Phase::Denied).await;
    let message = r.status.and_then(|s| s.message).unwrap_or_default();
    assert!(message.contains("denied by dave"), "{message}");
    assert!(statements(&env).await.is_empty(), "nothing was granted");
    assert_eq!(env.executions_started().await, 1);
}

#[tokio::test]
async fn crash_during_revoke() {
    let mut env = Env::new("crash-revoke", "").await;
    short_visibility(&env, &env.aws.work_queue_url.clone()).await;
    env.faults.arm(points::BEFORE_REVOKE);
    env.request(User::Alice, "revoking", "  duration: 15s\n");
    env.wait_phase("revoking", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "revoking", "Approve");
    env.wait_phase("revoking", Phase::Active).await;
    stopped_at(&env, points::BEFORE_REVOKE).await;
    // The revoke has not run, but the statement's own condition has already ended access.
    let left = statements(&env).await;
    assert_eq!(left.len(), 1);
    assert!(
        left[0].expires_at <= jiff::Timestamp::now(),
        "AWS refuses the statement after its expiry"
    );
    env.kill_operator();
    env.start_operator();
    env.wait_phase("revoking", Phase::Expired).await;
    assert!(statements(&env).await.is_empty());
    assert_eq!(env.executions_started().await, 1);
}
