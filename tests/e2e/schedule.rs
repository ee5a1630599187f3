//! Scheduled start (`spec.startAt`), on the real stack: approvers may decide before the
//! start, nothing is granted until it, the request is checked against its AccessRole
//! again at the start, and the duration counts from it.
use std::time::Duration;

use aws_jit::crd::{AccessRequest, Phase};
use jiff::{SignedDuration, Timestamp};

use crate::controller::Env;
use crate::support::kube::User;
use crate::support::{stack, succeeded};

fn start_in(seconds: i64) -> Timestamp {
    let now = Timestamp::from_second(Timestamp::now().as_second()).expect("now");
    now.checked_add(SignedDuration::from_secs(seconds))
        .expect("time")
}

fn time(
    r: &AccessRequest,
    f: fn(
        &aws_jit::crd::AccessRequestStatus,
    ) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
) -> Timestamp {
    r.status.as_ref().and_then(f).expect("a time").0
}

fn message(r: &AccessRequest) -> String {
    r.status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default()
}

async fn statements(env: &Env) -> usize {
    aws_jit::grant::trust_policy::document::grants(&env.trust_policy().await).len()
}

#[tokio::test]
async fn approved_before_its_start_a_request_is_granted_at_the_start_for_its_whole_duration() {
    let env = Env::new("sch-start", "  maxStartDelay: 1h\n").await;
    let start = start_in(25);
    env.request(
        User::Alice,
        "later",
        &format!("  duration: 1h\n  startAt: '{start}'\n"),
    );
    env.wait_phase("later", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "later", "Approve");
    let r = env.wait_phase("later", Phase::Scheduled).await;
    assert!(
        message(&r).contains(&format!("access starts at {start}")),
        "{}",
        message(&r)
    );
    assert_eq!(
        statements(&env).await,
        0,
        "nothing is granted before the start"
    );
    let r = env
        .wait_phase_within("later", Phase::Active, Duration::from_secs(90))
        .await;
    let granted = time(&r, |s| s.granted_at.as_ref());
    let expires = time(&r, |s| s.expires_at.as_ref());
    assert!(
        granted >= start,
        "granted at {granted}, before the start {start}"
    );
    // The duration counts from the start: the whole hour, not an hour from the vote.
    assert!(
        expires
            >= start
                .checked_add(SignedDuration::from_hours(1))
                .expect("time"),
        "expires at {expires}"
    );
    assert_eq!(statements(&env).await, 1);
}

#[tokio::test]
async fn a_requester_removed_before_the_start_gets_nothing() {
    let env = Env::new("sch-recheck", "  maxStartDelay: 1h\n").await;
    let start = start_in(20);
    env.request(
        User::Alice,
        "removed",
        &format!("  duration: 1h\n  startAt: '{start}'\n"),
    );
    env.wait_phase("removed", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "removed", "Approve");
    env.wait_phase("removed", Phase::Scheduled).await;
    // Meanwhile alice is taken off the role's requesters.
    succeeded(&stack().kube.kubectl(
        User::Admin,
        &[
            "patch",
            "accessrole",
            &env.access_role,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"requesters":[{"user":"erin"}]}}"#,
        ],
    ));
    let api = env.requests();
    crate::support::wait::eventually(
        "the start to find alice no longer eligible",
        Duration::from_secs(90),
        || {
            let api = api.clone();
            async move {
                let r = api.get("removed").await.map_err(|e| e.to_string())?;
                let m = message(&r);
                if m.contains("no longer allows it") && m.contains("not allowed to request") {
                    Ok(())
                } else {
                    Err(m)
                }
            }
        },
    )
    .await;
    assert!(Timestamp::now() >= start);
    let r = env.requests().get("removed").await.expect("request");
    assert_eq!(
        r.status.as_ref().and_then(|s| s.phase),
        Some(Phase::AwaitingApproval)
    );
    assert!(
        r.status
            .as_ref()
            .and_then(|s| s.granted_at.clone())
            .is_none()
    );
    assert_eq!(statements(&env).await, 0);
}

#[tokio::test]
async fn a_deny_before_the_start_still_denies() {
    let env = Env::new("sch-deny", "  maxStartDelay: 1h\n").await;
    let start = start_in(600);
    env.request(
        User::Alice,
        "changed-mind",
        &format!("  startAt: '{start}'\n"),
    );
    env.wait_phase("changed-mind", Phase::AwaitingApproval)
        .await;
    env.vote(User::Carol, "changed-mind", "Approve");
    env.wait_phase("changed-mind", Phase::Scheduled).await;
    env.vote(User::Dave, "changed-mind", "Deny");
    let r = env.wait_phase("changed-mind", Phase::Denied).await;
    assert!(message(&r).contains("denied by dave"), "{}", message(&r));
    assert_eq!(statements(&env).await, 0);
}

#[tokio::test]
async fn a_start_the_role_does_not_allow_is_rejected_with_the_bound() {
    let env = Env::new("sch-bound", "  maxStartDelay: 1h\n").await;
    env.request(
        User::Alice,
        "too-far",
        &format!("  startAt: '{}'\n", start_in(2 * 3600)),
    );
    let r = env.wait_phase("too-far", Phase::Rejected).await;
    assert!(
        message(&r).contains("allows at most maxStartDelay 1h"),
        "{}",
        message(&r)
    );
    assert!(r.status.and_then(|s| s.execution_arn).is_none());
    let unscheduled = Env::new("sch-none", "").await;
    unscheduled.request(
        User::Alice,
        "not-here",
        &format!("  startAt: '{}'\n", start_in(60)),
    );
    let r = unscheduled.wait_phase("not-here", Phase::Rejected).await;
    assert!(
        message(&r).contains("does not allow scheduled requests"),
        "{}",
        message(&r)
    );
    // The apiserver refuses a start that is no time at all.
    crate::support::refused(
        &stack().kube.kubectl_stdin(
            User::Alice,
            &["create", "-f", "-"],
            &format!(
                "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRequest\nmetadata:\n  name: bad-start\n  namespace: {}\nspec:\n  role: {}\n  requester: alice\n  reason: x\n  startAt: tomorrow\n",
                env.ns, env.access_role
            ),
        ),
        "startAt",
    );
}
