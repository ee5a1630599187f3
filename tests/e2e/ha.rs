//! Two replicas of the operator on one Lease, as the chart runs them: only the leader
//! reconciles and consumes the queues; when it dies mid-lifecycle the other takes over,
//! and the request still ends right (one execution, no grant left behind). The
//! replicas' `/metrics`, `/healthz` and `/readyz` are read over HTTP, as Prometheus and
//! the kubelet read them.
use std::net::SocketAddr;
use std::time::Duration;

use aws_jit::crd::Phase;
use aws_jit::run::leader::{Election, LeaderError};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

use crate::controller::Env;
use crate::support::kube::User;
use crate::support::stack;
use crate::support::unique;
use crate::support::wait::eventually;

const OPERATOR_NS: &str = "aws-jit-system";
const WAIT: Duration = Duration::from_secs(60);

/// One replica: the operator under leader election, with its probe server.
struct Replica {
    identity: String,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<(), LeaderError>>,
}

async fn start_replica(env: &Env, lease: &str, identity: &str) -> Replica {
    let config = env.config();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind probes");
    let addr = listener.local_addr().expect("probe address");
    tokio::spawn(aws_jit::telemetry::probes::serve(
        listener,
        config.health.clone(),
        config.metrics.clone(),
        std::future::pending(),
    ));
    let mut election = Election::new(lease, OPERATOR_NS, identity);
    election.lease_duration = Duration::from_secs(4);
    election.renew_before = Duration::from_secs(1);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let kube = env.kube.clone();
    let sdk = env.sdk.clone();
    let handle = tokio::spawn(async move {
        aws_jit::run::operator::run_elected(kube, &sdk, config, Some(election), async move {
            let _ = rx.await;
        })
        .await
    });
    Replica {
        identity: identity.to_string(),
        addr,
        stop: Some(tx),
        handle,
    }
}

impl Replica {
    async fn get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(format!("http://{}{path}", self.addr))
            .await
            .expect("probe request");
        let code = resp.status().as_u16();
        (code, resp.text().await.expect("probe body"))
    }

    /// The value of one sample of `/metrics`, e.g. `aws_jit_leader` or
    /// `aws_jit_approvals_total{decision="approved",method="TrustPolicy"}`; absent counts as 0.
    async fn metric(&self, sample: &str) -> f64 {
        let (code, text) = self.get("/metrics").await;
        assert_eq!(code, 200, "{text}");
        sample_value(&text, sample)
    }
}

fn sample_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(sample))
        .filter_map(|rest| rest.strip_prefix(' '))
        .filter_map(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .next()
        .unwrap_or(0.0)
}

/// The operator's Role may read and renew only the Lease `aws-jit-controller`; each
/// test elects on a Lease of its own, so it grants the same rights on that one.
fn allow_lease(lease: &str) {
    let yaml = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: {lease}\n  namespace: {OPERATOR_NS}\n\
         rules:\n- apiGroups: [coordination.k8s.io]\n  resources: [leases]\n  resourceNames: [{lease}]\n  verbs: [get, patch]\n\
         ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: {lease}\n  namespace: {OPERATOR_NS}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {lease}}}\n\
         subjects:\n- {{kind: ServiceAccount, name: aws-jit, namespace: {OPERATOR_NS}}}\n"
    );
    crate::support::succeeded(&stack().kube.kubectl_stdin(
        User::Admin,
        &["apply", "-f", "-"],
        &yaml,
    ));
}

async fn holder(lease: &str) -> Option<String> {
    let admin = stack().kube.client(User::Admin).await;
    let leases: Api<Lease> = Api::namespaced(admin, OPERATOR_NS);
    leases
        .get_opt(lease)
        .await
        .expect("get lease")
        .and_then(|l| l.spec?.holder_identity)
        .filter(|h| !h.is_empty())
}

async fn wait_holder(lease: &str, who: Option<&str>) {
    eventually(
        &format!("Lease {lease} held by {who:?}"),
        WAIT,
        || async move {
            match holder(lease).await {
                h if h.as_deref() == who => Ok(()),
                h => Err(format!("held by {h:?}")),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn the_standby_takes_over_a_killed_leader_mid_lifecycle() {
    let mut env = Env::new("ha", "").await;
    // This test runs its own replicas instead of the Env's unelected operator.
    env.kill_operator();
    let lease = unique("ha-lease");
    allow_lease(&lease);
    let a = start_replica(&env, &lease, "replica-a").await;
    wait_holder(&lease, Some(&a.identity)).await;
    let b = start_replica(&env, &lease, "replica-b").await;
    // The standby is alive and ready (it reached the API), and knows it does not lead.
    eventually("the standby to be ready", WAIT, || async {
        match b.get("/readyz").await {
            (200, _) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(b.get("/healthz").await.0, 200);
    assert_eq!(a.metric("aws_jit_leader").await, 1.0);
    assert_eq!(b.metric("aws_jit_leader").await, 0.0);

    env.request(User::Alice, "ha", "  duration: 15s\n");
    env.wait_phase("ha", Phase::AwaitingApproval).await;
    // Only the leader did that. (The consumer counts a message after deleting it,
    // which may come a moment after the reconciler has seen the stored token.)
    const PROCESSED: &str = "aws_jit_queue_messages_total{queue=\"request\",result=\"processed\"}";
    eventually("the leader to count its work", WAIT, || async {
        let reconciles = a.metric("aws_jit_reconciles_total{result=\"ok\"}").await;
        let processed = a.metric(PROCESSED).await;
        if reconciles >= 1.0 && processed >= 1.0 {
            Ok(())
        } else {
            Err(format!("reconciles {reconciles}, processed {processed}"))
        }
    })
    .await;
    assert_eq!(
        b.metric("aws_jit_reconciles_total{result=\"ok\"}").await,
        0.0,
        "the standby reconciled while the leader led"
    );
    assert_eq!(
        b.metric(PROCESSED).await,
        0.0,
        "the standby consumed the request queue while the leader led"
    );

    // The leader dies without releasing its Lease, like a killed pod.
    a.handle.abort();
    drop(a.stop);
    env.vote(User::Carol, "ha", "Approve");
    wait_holder(&lease, Some(&b.identity)).await;
    let r = env.wait_phase("ha", Phase::Active).await;
    assert!(r.status.and_then(|s| s.expires_at).is_some());
    assert_eq!(b.metric("aws_jit_leader").await, 1.0);
    assert_eq!(
        aws_jit::grant::trust_policy::document::grants(&env.trust_policy().await).len(),
        1
    );
    // The new leader counted what it did.
    assert_eq!(
        b.metric("aws_jit_approvals_total{decision=\"approved\",method=\"TrustPolicy\"}")
            .await,
        1.0
    );
    assert_eq!(
        b.metric("aws_jit_grants_total{result=\"granted\",method=\"TrustPolicy\"}")
            .await,
        1.0
    );
    assert_eq!(b.metric("aws_jit_requests{phase=\"Active\"}").await, 1.0);
    assert_eq!(b.metric("aws_jit_grants_active").await, 1.0);

    // The grant runs its time and is revoked, by the new leader.
    env.wait_phase("ha", Phase::Expired).await;
    assert!(aws_jit::grant::trust_policy::document::grants(&env.trust_policy().await).is_empty());
    assert_eq!(env.executions_started().await, 1, "one execution, not two");
    eventually("the revoke to be counted", WAIT, || async {
        let revoked = b
            .metric("aws_jit_grants_total{result=\"revoked\",method=\"TrustPolicy\"}")
            .await;
        let expired = b.metric("aws_jit_requests{phase=\"Expired\"}").await;
        if revoked >= 1.0 && expired == 1.0 {
            Ok(())
        } else {
            Err(format!("revoked {revoked}, expired {expired}"))
        }
    })
    .await;

    // A graceful stop releases the Lease at once (no wait for it to expire), and
    // readiness goes before that.
    let mut b = b;
    if let Some(stop) = b.stop.take() {
        let _ = stop.send(());
    }
    let ended = tokio::time::timeout(WAIT, &mut b.handle)
        .await
        .expect("the replica to stop")
        .expect("the replica's task");
    assert!(ended.is_ok(), "{ended:?}");
    assert_eq!(holder(&lease).await, None, "the Lease was not released");
}

#[tokio::test]
async fn a_replica_that_loses_its_lease_stops_leading_and_says_so() {
    let mut env = Env::new("ha-lost", "").await;
    env.kill_operator();
    let lease = unique("ha-lost");
    allow_lease(&lease);
    let mut a = start_replica(&env, &lease, "replica-a").await;
    wait_holder(&lease, Some(&a.identity)).await;
    // Someone else takes the Lease (an admin, or a replica that saw it expire while
    // this one was partitioned away).
    let admin = stack().kube.client(User::Admin).await;
    let leases: Api<Lease> = Api::namespaced(admin, OPERATOR_NS);
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now());
    let patch = serde_json::json!({
        "spec": {
            "holderIdentity": "someone-else",
            "leaseDurationSeconds": 3600,
            "acquireTime": now,
            "renewTime": now,
        }
    });
    leases
        .patch(
            &lease,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("take the lease");
    let ended = tokio::time::timeout(WAIT, &mut a.handle)
        .await
        .expect("the replica to notice")
        .expect("the replica's task");
    assert!(matches!(ended, Err(LeaderError::Lost { .. })), "{ended:?}");
    // It stopped leading and left the Lease to its holder.
    assert_eq!(holder(&lease).await.as_deref(), Some("someone-else"));
    assert_eq!(a.metric("aws_jit_leader").await, 0.0);
}
