//! Step Functions throttles the operator: its AWS goes through
//! [`crate::support::throttle::Throttle`], which answers a fixed share of its Step
//! Functions calls with Step Functions' own `ThrottlingException` and forwards the rest
//! (and all of SQS and IAM) to moto. The state machine's own calls inside moto are not
//! throttled: only the operator's.
//!
//! What must hold: throttling slows the operator down, it never fails a request. Every
//! refused attempt is retried (the SDK's own retries, then, when those run out, the
//! controller's per-request back-off), so requests still go through approval to
//! Active, and none ends Failed.
use std::time::Duration;

use aws_jit::crd::{AccessRequest, Phase};
use kube::api::{Api, ListParams};

use crate::controller::Env;
use crate::support::kube::User;
use crate::support::throttle::Throttle;
use crate::support::{stack, succeeded};

/// Throttled past the SDK's retries, a step waits out the controller's back-off (at
/// least 5 s after throttling) once or twice.
const WAIT: Duration = Duration::from_secs(120);

/// One more than the SDK's attempts of one call.
const REFUSED: usize = aws_jit::aws::calls::MAX_ATTEMPTS as usize + 1;

#[tokio::test]
async fn throttling_from_step_functions_slows_the_operator_down_instead_of_failing_requests() {
    let mut env = Env::new("thr-sfn", "").await;
    env.kill_operator();
    let proxy = Throttle::start(&stack().aws.endpoint).await;
    // The first REFUSED attempts of each Step Functions API are refused: more than the
    // SDK's retries of one call, so the throttling reaches the controller too.
    proxy.refuse_first(REFUSED);
    let metrics = env.start_operator_through(&proxy.endpoint);

    // Several requesters at once (GitOps submits for them; the role lists developers).
    let names: Vec<String> = (0..3).map(|i| format!("thr-{i}")).collect();
    for name in &names {
        let yaml = format!(
            "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRequest\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
             spec:\n  role: {role}\n  requester: dev-{name}\n  requesterGroup: developers\n  reason: e2e\n  duration: 1h\n",
            ns = env.ns,
            role = env.access_role,
        );
        succeeded(
            &stack()
                .kube
                .kubectl_stdin(User::GitOps, &["create", "-f", "-"], &yaml),
        );
    }
    for name in &names {
        env.wait_phase_within(name, Phase::AwaitingApproval, WAIT)
            .await;
    }
    for name in &names {
        env.vote(User::Carol, name, "Approve");
    }
    for name in &names {
        env.wait_phase_within(name, Phase::Active, WAIT).await;
    }

    // Nothing failed: every request is Active, none ended on the way.
    let all = Api::<AccessRequest>::namespaced(env.kube.clone(), &env.ns)
        .list(&ListParams::default())
        .await
        .expect("list requests");
    for r in &all.items {
        let phase = r.status.as_ref().and_then(|s| s.phase);
        assert_eq!(phase, Some(Phase::Active), "{:?}", r.status);
    }
    assert_eq!(all.items.len(), names.len());

    // The proxy really refused calls, of the APIs a request's way to Active makes, as
    // many as it was told to.
    let refused = proxy.refused_by_api();
    let succeeded_by_api = proxy.succeeded_by_api();
    assert!(proxy.refused() > 0, "nothing was throttled");
    for api in ["StartExecution", "SendTaskSuccess"] {
        assert!(
            refused.get(api).copied().unwrap_or(0) == REFUSED,
            "no {api} was throttled: {refused:?}"
        );
    }
    // The operator counted every attempt, the refused ones too: more attempts than
    // successes. (Each attempt is counted before it is sent, so the counter, read after
    // the proxy's tallies, holds at least every attempt the proxy saw.)
    for (api, refused) in &refused {
        let ok = succeeded_by_api.get(api).copied().unwrap_or(0);
        let attempts = metrics.aws_calls_of("SFN", api);
        assert!(
            attempts >= u64::try_from(ok + refused).expect("count"),
            "{api}: {attempts} attempts counted, {ok} succeeded and {refused} refused at the proxy"
        );
        assert!(attempts > u64::try_from(ok).expect("count"), "{api}");
    }
}
