//! IAM is eventually consistent: a `GetRole` right after an `UpdateAssumeRolePolicy` may
//! return the trust policy from before the write. moto never does, so here the worker's
//! IAM goes through [`StaleIam`], which answers the `GetRole`s after each write from
//! before it; everything else is the stack of `worker.rs` (the shipped state machine on
//! moto, AccessRequests in the real apiserver, the real worker). The trust policy the
//! tests check is read from moto directly: what IAM really holds.
//!
//! What must hold: a read-modify-write never works on a document older than the
//! worker's own last write, so a revoke (or a drift sweep) is never undone by the next
//! grant on the role, and a write IAM does not show back in time is retried rather than
//! built upon.
use std::time::Duration;

use aws_jit::aws::sfn::StepFunctionClient;
use aws_jit::contract::Outcome as ExecutionOutcome;
use aws_jit::grant::trust_policy::worker::{Answer, Outcome, Worker};
use serde_json::{Value, json};

use crate::support::{self, stale_iam::StaleIam};
use crate::worker::{Env, STEP, base_policy, expected_statement, grant_of, ours};

/// Stale `GetRole`s after each write: more than one, so a single read-back is not enough
/// to get past them, and few enough that the worker's wait gets past them in well under
/// a second.
const STALE_READS: usize = 3;

/// A worker as `Env::worker` builds it, with its IAM through the proxy.
fn worker_through(env: &Env, iam: &StaleIam, sdk: &aws_config::SdkConfig) -> Worker {
    Worker::new(
        env.authority(),
        env.sqs.clone(),
        iam.iam_client(sdk),
        StepFunctionClient::new(env.sfn.clone(), &env.out.state_machine_arn),
        &env.out.work_queue_url,
    )
    .with_dead_letter_url(&env.out.work_dlq_url)
    .with_wait_time(Duration::from_secs(1))
    .with_retry_delay(Duration::from_secs(1))
}

/// Ends a hold early, as a deletion or an explicit revoke does.
async fn end_hold(env: &Env, hold: &Value) {
    env.sfn
        .send_task_success()
        .task_token(hold["task_token"].as_str().expect("task token"))
        .output(json!({"ended_by": "bob", "reason": "done"}).to_string())
        .send()
        .await
        .expect("end the hold");
}

fn sids(policy: &Value) -> Vec<String> {
    ours(policy)
        .iter()
        .map(|s| s["Sid"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Alice's first request is granted, then revoked early; right after, her second request
/// on the same role is granted. The revoke's write is followed by stale reads, so a
/// worker that does not wait for its write to show reads the pre-revoke policy for the
/// grant and writes the revoked statement back.
#[tokio::test]
async fn a_revoke_is_never_undone_by_the_next_grant() {
    let env = Env::new("cons-regrant", base_policy()).await;
    let sdk = support::stack().aws.sdk_config().await;
    let iam = StaleIam::start(&support::stack().aws.endpoint).await;
    let worker = env.spawn(worker_through(&env, &iam, &sdk));

    let first = env.start(3600).await;
    env.approve(&[&first]).await;
    let holds = env.holds(&[&first], STEP).await;
    let (_, held) = env.policy().await;
    assert_eq!(
        ours(&held),
        vec![expected_statement(
            &first,
            &grant_of(&holds[&first.arn]).expires_at
        )]
    );

    // From here on IAM lags: every trust-policy write is followed by stale reads.
    iam.set_stale_reads(STALE_READS);
    end_hold(&env, &holds[&first.arn]).await;
    let output = env
        .succeeded_with(&first, ExecutionOutcome::Revoked, STEP)
        .await;
    assert_eq!(
        output["revoke"]["removed"],
        json!([first.sid()]),
        "{output}"
    );
    let (_, revoked) = env.policy().await;
    assert!(ours(&revoked).is_empty(), "{revoked}");

    let second = env.start(3600).await;
    env.approve(&[&second]).await;
    let holds = env.holds(&[&second], STEP).await;
    let (_, after) = env.policy().await;
    assert_eq!(
        sids(&after),
        vec![second.sid()],
        "the second grant must not bring back the revoked statement {}: {after}",
        first.sid()
    );
    assert_eq!(
        ours(&after),
        vec![expected_statement(
            &second,
            &grant_of(&holds[&second.arn]).expires_at
        )]
    );
    assert!(
        iam.stale_served(&env.role_name) >= STALE_READS,
        "IAM served stale reads ({} of them)",
        iam.stale_served(&env.role_name)
    );

    end_hold(&env, &holds[&second.arn]).await;
    env.succeeded_with(&second, ExecutionOutcome::Revoked, STEP)
        .await;
    let (_, end) = env.policy().await;
    assert_eq!(end, env.base, "the trust policy is as it was");
    worker.stop().await;
}

/// The drift sweeper's edit (through the worker, under the role's lock) removes a
/// statement; the next grant on the role must not bring it back.
#[tokio::test]
async fn a_drift_removal_is_never_undone_by_the_next_grant() {
    let env = Env::new("cons-sweep", base_policy()).await;
    let sdk = support::stack().aws.sdk_config().await;
    let iam = StaleIam::start(&support::stack().aws.endpoint).await;
    let sweeper = worker_through(&env, &iam, &sdk);
    let worker = env.spawn(sweeper.clone());

    let first = env.start(3600).await;
    env.approve(&[&first]).await;
    let first_hold = env.holds(&[&first], STEP).await.remove(&first.arn).unwrap();

    iam.set_stale_reads(STALE_READS);
    let sid = first.sid();
    let removed = sweeper
        .edit_trust_policy(&env.role_arn, |doc| {
            let sid = sid.clone();
            async move {
                assert!(
                    aws_jit::grant::trust_policy::document::prefixed_sids(&doc).contains(&sid),
                    "the sweeper sees the grant"
                );
                vec![(sid, "drift (test)".to_string())]
            }
        })
        .await
        .expect("the sweeper's edit");
    assert_eq!(removed, vec![(first.sid(), "drift (test)".to_string())]);
    let (_, swept) = env.policy().await;
    assert!(ours(&swept).is_empty(), "{swept}");

    let second = env.start(3600).await;
    env.approve(&[&second]).await;
    let holds = env.holds(&[&second], STEP).await;
    let (_, after) = env.policy().await;
    assert_eq!(
        sids(&after),
        vec![second.sid()],
        "the second grant must not bring back the swept statement {}: {after}",
        first.sid()
    );
    assert!(iam.stale_served(&env.role_name) >= STALE_READS);

    for (run, hold) in [(&first, &first_hold), (&second, &holds[&second.arn])] {
        end_hold(&env, hold).await;
        env.succeeded_with(run, ExecutionOutcome::Revoked, STEP)
            .await;
    }
    let (_, end) = env.policy().await;
    assert_eq!(end, env.base);
    worker.stop().await;
}

/// IAM does not show a revoke's write for longer than the worker waits: the revoke is not
/// answered but left for a retry, and while IAM still shows the policy from before it, no
/// later work item of the role builds on that: the next grant is left for a retry too,
/// rather than write the revoked statement back. Once IAM catches up, both go through.
#[tokio::test]
async fn a_write_iam_does_not_show_in_time_is_retried_and_holds_up_the_role() {
    let env = Env::new("cons-unconfirmed", base_policy()).await;
    let sdk = support::stack().aws.sdk_config().await;
    let iam = StaleIam::start(&support::stack().aws.endpoint).await;
    let metrics = std::sync::Arc::new(aws_jit::telemetry::metrics::Metrics::new());
    // Items are handed to the worker one at a time, in the order under test. The worker
    // lets an unconfirmed write go after six of its consistency waits (someone else may
    // have written since): 4 s each keep that horizon past the next grant's arrival even
    // when the whole suite loads moto.
    let worker = worker_through(&env, &iam, &sdk)
        .with_consistency_wait(Duration::from_secs(4))
        .with_metrics(metrics.clone());

    let first = env.start(3600).await;
    env.approve(&[&first]).await;
    let item = env.work_item("grant", &first).await.to_string();
    assert!(
        matches!(
            worker.handle(&item).await,
            Outcome::Answered {
                answer: Answer::Granted(_),
                ..
            }
        ),
        "the first grant, IAM consistent"
    );
    let hold = env.holds(&[&first], STEP).await.remove(&first.arn).unwrap();

    // IAM lags behind for longer than the worker waits.
    iam.set_stale_reads(usize::MAX);
    end_hold(&env, &hold).await;
    let revoke = env.work_item("revoke", &first).await.to_string();
    match worker.handle(&revoke).await {
        Outcome::Retry { reason } => assert!(
            reason.contains("does not show the trust policy last written"),
            "{reason}"
        ),
        other => panic!("a revoke IAM does not show is retried, not answered: {other:?}"),
    }
    assert_eq!(metrics.trust_policy_unconfirmed_writes.get(), 1);
    assert!(metrics.trust_policy_stale_reads.get() >= 2);
    // IAM holds the revoke; only its reads lag.
    let (_, revoked) = env.policy().await;
    assert!(ours(&revoked).is_empty(), "{revoked}");

    let second = env.start(3600).await;
    env.approve(&[&second]).await;
    let grant = env.work_item("grant", &second).await.to_string();
    let outcome = worker.handle(&grant).await;
    let (_, meanwhile) = env.policy().await;
    assert!(
        !sids(&meanwhile).contains(&first.sid()),
        "a grant while IAM lags must not write the revoked statement {} back: {meanwhile}",
        first.sid()
    );
    assert!(matches!(outcome, Outcome::Retry { .. }), "{outcome:?}");
    assert_eq!(
        metrics.trust_policy_unconfirmed_writes.get(),
        1,
        "one write not shown, waited for twice"
    );

    // IAM catches up; the items come back and go through.
    iam.set_stale_reads(0);
    match worker.handle(&revoke).await {
        Outcome::Answered {
            answer: Answer::Revoked(_),
            ..
        } => {}
        other => panic!("the retried revoke: {other:?}"),
    }
    match worker.handle(&grant).await {
        Outcome::Answered {
            answer: Answer::Granted(_),
            ..
        } => {}
        other => panic!("the retried grant: {other:?}"),
    }
    let (_, after) = env.policy().await;
    assert_eq!(sids(&after), vec![second.sid()], "{after}");
    env.succeeded_with(&first, ExecutionOutcome::Revoked, STEP)
        .await;

    let hold = env
        .holds(&[&second], STEP)
        .await
        .remove(&second.arn)
        .unwrap();
    end_hold(&env, &hold).await;
    let revoke = env.work_item("revoke", &second).await.to_string();
    assert!(matches!(
        worker.handle(&revoke).await,
        Outcome::Answered {
            answer: Answer::Revoked(_),
            ..
        }
    ));
    env.succeeded_with(&second, ExecutionOutcome::Revoked, STEP)
        .await;
    let (_, end) = env.policy().await;
    assert_eq!(end, env.base);
}

/// A write IAM did not show in time holds up the role's later work only for a while: if
/// someone else writes the trust policy meanwhile, IAM never shows the worker's write,
/// and after six consistency waits the worker goes on with what IAM returns.
#[tokio::test]
async fn a_write_someone_else_overwrote_holds_up_the_role_only_for_a_while() {
    let env = Env::new("cons-overwritten", base_policy()).await;
    let sdk = support::stack().aws.sdk_config().await;
    let iam = StaleIam::start(&support::stack().aws.endpoint).await;
    let wait = Duration::from_secs(1);
    let worker = worker_through(&env, &iam, &sdk).with_consistency_wait(wait);

    let first = env.start(3600).await;
    env.approve(&[&first]).await;
    let item = env.work_item("grant", &first).await.to_string();
    assert!(matches!(
        worker.handle(&item).await,
        Outcome::Answered {
            answer: Answer::Granted(_),
            ..
        }
    ));
    let hold = env.holds(&[&first], STEP).await.remove(&first.arn).unwrap();
    iam.set_stale_reads(usize::MAX);
    end_hold(&env, &hold).await;
    let revoke = env.work_item("revoke", &first).await.to_string();
    let unconfirmed = std::time::Instant::now();
    assert!(matches!(
        worker.handle(&revoke).await,
        Outcome::Retry { .. }
    ));

    // An IAM admin rewrites the policy (straight to IAM), and IAM's reads catch up: they
    // show the admin's document, never the worker's.
    let mut theirs = env.base.clone();
    theirs["Statement"]
        .as_array_mut()
        .expect("statements")
        .push(json!({"Sid": "Lambda", "Effect": "Allow",
                     "Principal": {"Service": "lambda.amazonaws.com"},
                     "Action": "sts:AssumeRole"}));
    env.iam
        .update_assume_role_policy()
        .role_name(&env.role_name)
        .policy_document(theirs.to_string())
        .send()
        .await
        .expect("an IAM admin edits the trust policy");
    iam.set_stale_reads(0);
    assert!(
        matches!(worker.handle(&revoke).await, Outcome::Retry { .. }),
        "held up while the worker's write may still show"
    );
    let answered =
        crate::support::wait::eventually("the role to be let go", wait * 6 + STEP, || async {
            match worker.handle(&revoke).await {
                Outcome::Answered { answer, .. } => Ok(answer),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    assert!(
        unconfirmed.elapsed() >= wait * 6,
        "let go after {:?}",
        unconfirmed.elapsed()
    );
    assert!(matches!(answered, Answer::Revoked(_)), "{answered:?}");
    let (_, after) = env.policy().await;
    assert_eq!(after, theirs, "the admin's policy, as written");
    env.succeeded_with(&first, ExecutionOutcome::Revoked, STEP)
        .await;
}
