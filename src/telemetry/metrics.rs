//! Prometheus metrics of one process (the controller or the relay), in one registry
//! served at `/metrics` by [`crate::telemetry::probes`].
//!
//! Each process makes its own [`Metrics`] and hands it to the loops that count; there
//! is no global registry, so tests run several operators in one process and read each
//! one's own figures. Names follow Prometheus conventions: `aws_jit_` prefix, counters
//! end in `_total`, durations are in seconds.
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::crd::{AccessRequest, Phase};

/// Every phase, so `aws_jit_requests{phase=...}` shows zeros instead of gaps.
const PHASES: [Phase; 10] = [
    Phase::Pending,
    Phase::AwaitingApproval,
    Phase::Scheduled,
    Phase::Approved,
    Phase::Active,
    Phase::Expired,
    Phase::Denied,
    Phase::Rejected,
    Phase::Revoked,
    Phase::Failed,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub decision: &'static str,
    /// The grant method of the request's role (`TrustPolicy`, `IdentityCenter`,
    /// `IamGroup`).
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrantLabels {
    pub result: &'static str,
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub queue: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AwsCallLabels {
    pub service: String,
    pub api: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlackLabels {
    pub method: &'static str,
    pub result: &'static str,
}

/// Queue names of `aws_jit_queue_messages_total{queue}`.
pub mod queue {
    pub const REQUEST: &str = "request";
    pub const WORK: &str = "work";
    pub const ALERT: &str = "alert";
}

/// Results of `aws_jit_queue_messages_total{result}`.
pub mod outcome {
    /// Handled and deleted.
    pub const PROCESSED: &str = "processed";
    /// Not handled this time; the message comes back (transient failure).
    pub const FAILED: &str = "failed";
    /// Moved to the dead-letter queue (poison, or refused for good).
    pub const DEAD_LETTERED: &str = "dead_lettered";
}

/// The instruments. Cheap to clone handles: share one `Arc<Metrics>` per process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `aws_jit_reconciles_total{result="ok|error"}`
    pub reconciles: Family<ResultLabels, Counter>,
    /// `aws_jit_reconcile_errors_total{kind}`
    pub reconcile_errors: Family<KindLabels, Counter>,
    /// `aws_jit_reconcile_duration_seconds`
    pub reconcile_duration: Histogram,
    /// `aws_jit_approvals_total{decision="approved|denied", method}`: decisions answered
    /// to the state machine, by the role's grant method.
    pub approvals: Family<DecisionLabels, Counter>,
    /// `aws_jit_grants_total{result="granted|revoked|failed", method}`: grant work the
    /// operator did (the trust-policy worker's; the state machine grants the other
    /// methods itself).
    pub grants: Family<GrantLabels, Counter>,
    /// `aws_jit_queue_messages_total{queue, result}`
    pub queue_messages: Family<QueueLabels, Counter>,
    /// `aws_jit_slack_requests_total{method, result}`: Web API calls and how they ended.
    pub slack_requests: Family<SlackLabels, Counter>,
    /// `aws_jit_slack_rate_limited_total`: 429 answers from Slack.
    pub slack_rate_limited: Counter,
    /// `aws_jit_leader`: 1 while this replica holds the lease (or runs unelected).
    pub leader: Gauge,
    /// `aws_jit_refused_tasks_total{queue, reason}`: tasks from AWS that Kubernetes does
    /// not back (a foreign execution, a forged or altered work item), refused.
    pub refused_tasks: Family<RefusedLabels, Counter>,
    /// `aws_jit_drift_removed_total{kind="statement|execution"}`: what the drift sweeper
    /// removed because no approved request accounted for it.
    pub drift_removed: Family<KindLabels, Counter>,
    /// `aws_jit_revoke_failures_total`: tries of the controller to end a grant its
    /// execution left (stopped, failed) that failed; each is retried.
    pub revoke_failures: Counter,
    /// `aws_jit_trust_policy_stale_reads_total`: reads of a trust policy just written by
    /// the worker that returned another document (IAM's eventual consistency).
    pub trust_policy_stale_reads: Counter,
    /// `aws_jit_trust_policy_unconfirmed_writes_total`: trust-policy writes IAM did not
    /// show within the worker's consistency wait (the work item is tried again).
    pub trust_policy_unconfirmed_writes: Counter,
    /// `aws_jit_aws_calls_total{service, api}`: attempts of AWS calls the operator made
    /// (`aws::calls`), retries included.
    pub aws_calls: Family<AwsCallLabels, Counter>,
    requests: Arc<RequestsCollector>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("aws_jit");
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reconciles",
            "AccessRequest reconciles, by result",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciles, by kind of error",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            reconcile_duration.clone(),
        );
        let approvals = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "approvals",
            "Approval decisions answered to the state machine, by decision",
            approvals.clone(),
        );
        let grants = Family::<GrantLabels, Counter>::default();
        registry.register(
            "grants",
            "Trust-policy grants and revokes done by the worker, by result",
            grants.clone(),
        );
        let queue_messages = Family::<QueueLabels, Counter>::default();
        registry.register(
            "queue_messages",
            "SQS messages handled, by queue and result",
            queue_messages.clone(),
        );
        let slack_requests = Family::<SlackLabels, Counter>::default();
        registry.register(
            "slack_requests",
            "Slack Web API calls, by method and result",
            slack_requests.clone(),
        );
        let slack_rate_limited = Counter::default();
        registry.register(
            "slack_rate_limited",
            "Slack answers with 429 Too Many Requests",
            slack_rate_limited.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica leads (reconciles and consumes queues)",
            leader.clone(),
        );
        let refused_tasks = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "refused_tasks",
            "Tasks from AWS refused because Kubernetes does not back them, by queue and reason",
            refused_tasks.clone(),
        );
        let drift_removed = Family::<KindLabels, Counter>::default();
        registry.register(
            "drift_removed",
            "Grants and executions in AWS that no approved request accounted for, removed",
            drift_removed.clone(),
        );
        let revoke_failures = Counter::default();
        registry.register(
            "revoke_failures",
            "Failed tries to end a grant whose execution ended without revoking (retried)",
            revoke_failures.clone(),
        );
        let trust_policy_stale_reads = Counter::default();
        registry.register(
            "trust_policy_stale_reads",
            "Reads of a trust policy just written that returned another document",
            trust_policy_stale_reads.clone(),
        );
        let trust_policy_unconfirmed_writes = Counter::default();
        registry.register(
            "trust_policy_unconfirmed_writes",
            "Trust-policy writes IAM did not show within the consistency wait",
            trust_policy_unconfirmed_writes.clone(),
        );
        let aws_calls = Family::<AwsCallLabels, Counter>::default();
        registry.register(
            "aws_calls",
            "Attempts of AWS API calls the operator made, by service and API",
            aws_calls.clone(),
        );
        let requests = Arc::new(RequestsCollector::default());
        registry.register_collector(Box::new(requests.clone()));
        Metrics {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            approvals,
            grants,
            queue_messages,
            slack_requests,
            slack_rate_limited,
            leader,
            refused_tasks,
            drift_removed,
            revoke_failures,
            trust_policy_stale_reads,
            trust_policy_unconfirmed_writes,
            aws_calls,
            requests,
        }
    }

    /// Counts one attempt of an AWS call.
    pub fn aws_call(&self, service: &str, api: &str) {
        self.aws_calls
            .get_or_create(&AwsCallLabels {
                service: service.to_owned(),
                api: api.to_owned(),
            })
            .inc();
    }

    /// Attempts of `service`'s `api` so far (`"SFN"`, `"DescribeExecution"`).
    pub fn aws_calls_of(&self, service: &str, api: &str) -> u64 {
        self.aws_calls
            .get_or_create(&AwsCallLabels {
                service: service.to_owned(),
                api: api.to_owned(),
            })
            .get()
    }

    /// Counts one reconcile.
    pub fn reconciled(&self, took: Duration, error_kind: Option<&'static str>) {
        self.reconcile_duration.observe(took.as_secs_f64());
        let result = if error_kind.is_some() { "error" } else { "ok" };
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
        if let Some(kind) = error_kind {
            self.reconcile_errors
                .get_or_create(&KindLabels { kind })
                .inc();
        }
    }

    pub fn queue_message(&self, queue: &'static str, result: &'static str) {
        self.queue_messages
            .get_or_create(&QueueLabels { queue, result })
            .inc();
    }

    pub fn approval(&self, decision: &'static str, method: crate::crd::GrantMethod) {
        self.approvals
            .get_or_create(&DecisionLabels {
                decision,
                method: method.as_str(),
            })
            .inc();
    }

    /// Grant work of the trust-policy worker: the only method the operator grants
    /// itself.
    pub fn grant(&self, result: &'static str) {
        self.grants
            .get_or_create(&GrantLabels {
                result,
                method: crate::crd::GrantMethod::TrustPolicy.as_str(),
            })
            .inc();
    }

    pub fn refused(&self, queue: &'static str, reason: &'static str) {
        self.refused_tasks
            .get_or_create(&RefusedLabels { queue, reason })
            .inc();
    }

    pub fn revoke_failure(&self) {
        self.revoke_failures.inc();
    }

    pub fn drift_removed(&self, kind: &'static str) {
        self.drift_removed.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn slack_request(&self, method: &'static str, result: &'static str) {
        self.slack_requests
            .get_or_create(&SlackLabels { method, result })
            .inc();
    }

    /// `aws_jit_requests{phase}` and `aws_jit_grants_active` are read from the
    /// controller's cache at each scrape; the controller hands its cache over here.
    pub fn watch_requests(&self, store: kube::runtime::reflector::Store<AccessRequest>) {
        if let Ok(mut slot) = self.requests.store.write() {
            *slot = Some(store);
        }
    }

    /// The text exposition (OpenMetrics) of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Requests by phase and active grants, counted from the controller's cache.
#[derive(Debug, Default)]
struct RequestsCollector {
    store: RwLock<Option<kube::runtime::reflector::Store<AccessRequest>>>,
}

impl RequestsCollector {
    fn counts(&self) -> Option<[i64; PHASES.len()]> {
        let slot = self.store.read().ok()?;
        let store = slot.as_ref()?;
        let mut counts = [0i64; PHASES.len()];
        for request in store.state() {
            let phase = request
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .unwrap_or(Phase::Pending);
            if let Some(i) = PHASES.iter().position(|p| *p == phase) {
                counts[i] += 1;
            }
        }
        Some(counts)
    }
}

impl Collector for RequestsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // The relay (and a standby controller) has no cache: no series rather than zeros.
        let Some(counts) = self.counts() else {
            return Ok(());
        };
        let gauge = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "requests",
            "AccessRequests in the controller's cache, by phase",
            None,
            gauge.metric_type(),
        )?;
        for (phase, n) in PHASES.iter().zip(counts) {
            let label = [("phase", phase_name(*phase))];
            ConstGauge::new(n).encode(family.encode_family(&label)?)?;
        }
        let active = PHASES
            .iter()
            .position(|p| *p == Phase::Active)
            .map(|i| counts[i])
            .unwrap_or(0);
        let gauge = ConstGauge::new(active);
        gauge.encode(encoder.encode_descriptor(
            "grants_active",
            "AccessRequests whose access is granted now (phase Active)",
            None,
            gauge.metric_type(),
        )?)?;
        Ok(())
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Pending => "Pending",
        Phase::AwaitingApproval => "AwaitingApproval",
        Phase::Scheduled => "Scheduled",
        Phase::Approved => "Approved",
        Phase::Active => "Active",
        Phase::Expired => "Expired",
        Phase::Denied => "Denied",
        Phase::Rejected => "Rejected",
        Phase::Revoked => "Revoked",
        Phase::Failed => "Failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_in_the_exposition_with_their_labels() {
        let m = Metrics::new();
        m.reconciled(Duration::from_millis(20), None);
        m.reconciled(Duration::from_millis(20), Some("kube"));
        m.queue_message(queue::WORK, outcome::DEAD_LETTERED);
        m.approval("approved", crate::crd::GrantMethod::IdentityCenter);
        m.slack_rate_limited.inc();
        m.trust_policy_unconfirmed_writes.inc();
        let text = m.encode().unwrap();
        for line in [
            "aws_jit_reconciles_total{result=\"ok\"} 1",
            "aws_jit_reconciles_total{result=\"error\"} 1",
            "aws_jit_reconcile_errors_total{kind=\"kube\"} 1",
            "aws_jit_reconcile_duration_seconds_count 2",
            "aws_jit_queue_messages_total{queue=\"work\",result=\"dead_lettered\"} 1",
            "aws_jit_approvals_total{decision=\"approved\",method=\"IdentityCenter\"} 1",
            "aws_jit_slack_rate_limited_total 1",
            "aws_jit_trust_policy_unconfirmed_writes_total 1",
            "aws_jit_trust_policy_stale_reads_total 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // No cache handed over: no request gauges at all (not misleading zeros).
        assert!(!text.contains("aws_jit_requests{"), "{text}");
    }

    #[test]
    fn requests_by_phase_come_from_the_cache() {
        let (reader, mut writer) = kube::runtime::reflector::store::<AccessRequest>();
        let mut active = AccessRequest::new(
            "a",
            serde_json::from_value(serde_json::json!({"role": "r", "requester": "alice"})).unwrap(),
        );
        active.metadata.namespace = Some("ns".into());
        active.status = Some(crate::crd::AccessRequestStatus {
            phase: Some(Phase::Active),
            ..Default::default()
        });
        let mut fresh = active.clone();
        fresh.metadata.name = Some("b".into());
        fresh.status = None;
        writer.apply_watcher_event(&kube::runtime::watcher::Event::InitApply(active));
        writer.apply_watcher_event(&kube::runtime::watcher::Event::InitApply(fresh));
        writer.apply_watcher_event(&kube::runtime::watcher::Event::InitDone);
        let m = Metrics::new();
        m.watch_requests(reader);
        let text = m.encode().unwrap();
        for line in [
            "aws_jit_requests{phase=\"Active\"} 1",
            "aws_jit_requests{phase=\"Pending\"} 1",
            "aws_jit_requests{phase=\"Denied\"} 0",
            "aws_jit_grants_active 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
