//! `aws-jit drain`: end every grant and every open request before aws-jit goes away.
//!
//! Run by the Helm chart's `pre-delete` hook, while the operator is still running (its
//! trust-policy worker performs the revokes the state machine asks for). For each
//! AccessRequest in scope:
//!
//! - an active grant is ended: the hold task is answered (the state machine then revokes
//!   now), and an entry of `status.revocations` records who ended it and why, so the record stays
//!   true (the drain holds the operator's `manage` verb, so admission lets it write);
//! - an undecided request is cancelled: the approval task fails with `Cancelled`;
//! - a request in between (execution starting, grant in progress) is waited for, then
//!   handled as above;
//! - once a request's execution has ended and the operator has recorded its final
//!   phase, the `aws-jit.io/revoke` finalizer is removed, so deleting the request (or
//!   its namespace, or the CRD) later never hangs without an operator.
//!
//! The AccessRequests themselves are kept: they are the audit trail. The same token
//! bookkeeping as the controller's (the Secret in the operator's namespace) is used, so
//! the controller and the drain never answer a task twice.
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::aws::sfn::{ExecutionState, SfnError, StepFunctionClient};
use crate::contract::errors;
use crate::controller::tokens::{TokenError, TokenStore, keys};
use crate::crd::{AccessRequest, FINALIZER, Phase};

/// The field manager of the drain's writes (the revocation record, the finalizer).
pub const FIELD_MANAGER: &str = "aws-jit-drain";

/// Why access ended, in the revocation record and the hold task's output.
pub const REASON: &str = "aws-jit is being uninstalled (aws-jit drain)";

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Tokens(#[from] TokenError),
    #[error(transparent)]
    StepFunctions(#[from] SfnError),
    #[error("cannot encode a patch: {0}")]
    Encode(#[source] serde_json::Error),
    #[error(
        "{} request(s) not drained after {timeout:?}: {}",
        remaining.len(),
        remaining.join("; ")
    )]
    Timeout {
        timeout: Duration,
        remaining: Vec<String>,
    },
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Only this namespace's requests (None: every namespace), as the controller.
    pub watch_namespace: Option<String>,
    /// Where task-token Secrets live (the operator's namespace).
    pub operator_namespace: String,
    /// Give up (and fail) after this long.
    pub timeout: Duration,
    /// How often the requests are looked at again while waiting.
    pub poll_interval: Duration,
}

/// What the drain did, for its last log line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Grants ended (hold tasks answered).
    pub revoked: usize,
    /// Undecided requests cancelled (approval tasks failed).
    pub cancelled: usize,
    /// Finalizers removed.
    pub released: usize,
    /// Requests seen in total.
    pub requests: usize,
}

/// Where one request stands after one look.
enum Step {
    /// Nothing more to do: its execution has ended and the finalizer is off.
    Done,
    /// Waiting for something (said why).
    Waiting(String),
}

struct Drain {
    requests: Api<AccessRequest>,
    client: kube::Client,
    sfn: StepFunctionClient,
    tokens: TokenStore,
    /// Who the drain acts as (from a SelfSubjectReview), for the revocation record.
    identity: String,
    summary: Summary,
}

/// Drains every request in scope; returns when all are drained or fails at the deadline.
pub async fn run(
    client: kube::Client,
    sfn: StepFunctionClient,
    config: Config,
) -> Result<Summary, DrainError> {
    let requests: Api<AccessRequest> = match &config.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let identity = whoami(&client).await;
    info!(
        identity,
        scope = config.watch_namespace.as_deref().unwrap_or("all namespaces"),
        timeout = ?config.timeout,
        "draining: revoking active grants and cancelling pending requests"
    );
    let mut drain = Drain {
        requests,
        tokens: TokenStore::new(client.clone(), &config.operator_namespace),
        client,
        sfn,
        identity,
        summary: Summary::default(),
    };
    let deadline = Instant::now() + config.timeout;
    loop {
        let list = drain.requests.list(&ListParams::default()).await?;
        drain.summary.requests = drain.summary.requests.max(list.items.len());
        let mut remaining = Vec::new();
        for request in &list.items {
            let name = format!(
                "{}/{}",
                request.namespace().unwrap_or_default(),
                request.name_any()
            );
            match drain.step(request).await {
                Ok(Step::Done) => {}
                Ok(Step::Waiting(why)) => remaining.push(format!("{name}: {why}")),
                // One request's trouble must not stop the others; it is retried.
                Err(e) => {
                    warn!(request = name, error = %e, "cannot drain yet; retrying");
                    remaining.push(format!("{name}: {e}"));
                }
            }
        }
        if remaining.is_empty() {
            info!(
                requests = drain.summary.requests,
                revoked = drain.summary.revoked,
                cancelled = drain.summary.cancelled,
                released = drain.summary.released,
                "drained: no grant is active, no request is pending, no finalizer is left"
            );
            return Ok(drain.summary);
        }
        info!(
            remaining = remaining.len(),
            waiting_for = remaining.join("; "),
            "draining"
        );
        if Instant::now() >= deadline {
            return Err(DrainError::Timeout {
                timeout: config.timeout,
                remaining,
            });
        }
        tokio::time::sleep(config.poll_interval).await;
    }
}

/// The authenticated user name, or a fixed name when the apiserver cannot say.
async fn whoami(client: &kube::Client) -> String {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    match api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
    {
        Ok(review) => review
            .status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username)
            .unwrap_or_else(|| "aws-jit-drain".into()),
        Err(e) => {
            warn!(error = %e, "cannot tell who I am; recording revocations as aws-jit-drain");
            "aws-jit-drain".into()
        }
    }
}

impl Drain {
    async fn step(&mut self, request: &AccessRequest) -> Result<Step, DrainError> {
        let uid = request.uid().unwrap_or_default();
        let status = request.status.clone().unwrap_or_default();
        let terminal = status.phase.is_some_and(Phase::is_terminal);
        let Some(execution_arn) = status.execution_arn.clone() else {
            if terminal {
                // Rejected: nothing was ever started.
                return self.release(request).await;
            }
            return Ok(Step::Waiting(
                "not taken up by the operator yet (no execution)".into(),
            ));
        };
        if !matches!(
            self.sfn.describe(&execution_arn).await?,
            ExecutionState::Running
        ) {
            if !terminal && request.meta().deletion_timestamp.is_none() {
                // The operator writes the final phase; releasing before that would let it
                // put the finalizer back.
                return Ok(Step::Waiting(
                    "execution ended; waiting for the operator to record the outcome".into(),
                ));
            }
            return self.release(request).await;
        }
        let tokens = self.tokens.get(&uid).await?;
        let identity = crate::contract::RequestIdentity {
            namespace: request.namespace().unwrap_or_default(),
            name: request.name_any(),
            uid: uid.clone(),
        };
        if let Some(hold) = tokens.get(keys::HOLD_TOKEN) {
            if tokens.hold_ended().is_none() {
                self.sfn
                    .send_success(hold, &json!({"ended_by": self.identity, "reason": REASON}))
                    .await?;
                // Recorded before the revocation below: the controller then sees the hold
                // already ended (the revocation entry is the audit record, not what ends it).
                self.tokens
                    .put(
                        &identity,
                        &[
                            (keys::HOLD_ENDED, &self.identity),
                            (keys::HOLD_ENDED_TOKEN, hold),
                        ],
                    )
                    .await?;
                self.summary.revoked += 1;
                info!(request = %identity.name, namespace = %identity.namespace, "ending access now");
            }
            let recorded = status
                .revocations
                .as_ref()
                .is_some_and(|r| r.iter().any(|r| r.requested_by == self.identity));
            if !recorded {
                self.record_revocation(request).await?;
            }
            return Ok(Step::Waiting("access is being revoked".into()));
        }
        if let Some(token) = tokens.get(keys::APPROVAL_TOKEN) {
            if tokens.undecided(status.phase) {
                let answer = self
                    .sfn
                    .send_failure(token, errors::CANCELLED, REASON)
                    .await?;
                // "Already over" after an approval was recorded: it went out; the hold
                // it leads to is ended when it arrives.
                if answer == crate::aws::sfn::TaskAnswer::AlreadyOver
                    && tokens.get(keys::APPROVAL_ANSWER) == Some("approving")
                {
                    return Ok(Step::Waiting(
                        "approved before the drain; waiting for the grant, to revoke it".into(),
                    ));
                }
                self.tokens
                    .put(&identity, &[(keys::APPROVAL_ANSWER, "cancelled")])
                    .await?;
                self.summary.cancelled += 1;
                info!(request = %identity.name, namespace = %identity.namespace, "cancelled before a decision");
                return Ok(Step::Waiting(
                    "cancelled; waiting for the execution to end".into(),
                ));
            }
            return Ok(Step::Waiting(match tokens.get(keys::APPROVAL_ANSWER) {
                Some("approved" | "approving") => {
                    "approved; waiting for the grant, to revoke it".into()
                }
                answer => format!(
                    "{}; waiting for the execution to end",
                    answer.unwrap_or("answered")
                ),
            }));
        }
        Ok(Step::Waiting(
            "execution starting; waiting for its approval task, to cancel it".into(),
        ))
    }

    /// An entry of `status.revocations` in the drain's own name, appended (the list is
    /// created if the request has none yet, with the resourceVersion read, so a list
    /// someone else created meanwhile is never replaced).
    async fn record_revocation(&self, request: &AccessRequest) -> Result<(), DrainError> {
        let entry = json!({
            "requestedBy": self.identity,
            "reason": REASON,
            "time": jiff::Timestamp::now().to_string(),
        });
        let has_list = request
            .status
            .as_ref()
            .is_some_and(|s| s.revocations.is_some());
        let ops = if has_list {
            json!([{"op": "add", "path": "/status/revocations/-", "value": entry}])
        } else {
            json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": request.resource_version()},
                {"op": "add", "path": "/status/revocations", "value": [entry]}
            ])
        };
        let patch = serde_json::from_value(ops)
            .map(Patch::<()>::Json)
            .map_err(DrainError::Encode)?;
        self.requests_in(request)
            .patch_status(&request.name_any(), &PatchParams::default(), &patch)
            .await?;
        Ok(())
    }

    /// Takes the finalizer off a request whose execution has ended.
    async fn release(&mut self, request: &AccessRequest) -> Result<Step, DrainError> {
        let finalizers = request.finalizers();
        if !finalizers.iter().any(|f| f == FINALIZER) {
            return Ok(Step::Done);
        }
        let kept: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
        // With the resourceVersion read: if the request changed meanwhile, the write
        // conflicts and the next pass looks again.
        let patch = json!({"metadata": {
            "resourceVersion": request.resource_version(),
            "finalizers": kept,
        }});
        self.requests_in(request)
            .patch(
                &request.name_any(),
                &PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PatchParams::default()
                },
                &Patch::Merge(&patch),
            )
            .await?;
        self.summary.released += 1;
        info!(
            request = request.name_any(),
            namespace = request.namespace().unwrap_or_default(),
            phase = ?request.status.as_ref().and_then(|s| s.phase),
            "released (finalizer removed; the record is kept)"
        );
        Ok(Step::Done)
    }

    fn requests_in(&self, request: &AccessRequest) -> Api<AccessRequest> {
        Api::namespaced(
            self.client.clone(),
            &request.namespace().unwrap_or_default(),
        )
    }
}

/// `aws-jit drain`'s flags and environment (the chart's pre-delete hook sets the same
/// environment as the controller container).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The state machine's ARN (template output StateMachineArn).
    #[arg(long, env = "AWS_JIT_STATE_MACHINE_ARN")]
    pub state_machine_arn: String,
    /// The operator's namespace, where task-token Secrets live.
    #[arg(long, env = "POD_NAMESPACE", default_value = "aws-jit-system")]
    pub operator_namespace: String,
    /// Drain one namespace only (the controller's watch namespace; default: all).
    #[arg(long, env = "AWS_JIT_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Fail when not drained after this long, e.g. 4m (keep it below Helm's --timeout).
    #[arg(long, env = "AWS_JIT_DRAIN_TIMEOUT", default_value = "4m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// How often the requests are looked at again while waiting, e.g. 2s.
    #[arg(long, env = "AWS_JIT_POLL_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub poll_interval: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::policy::decide::parse_duration("duration", s).map_err(|e| e.to_string())
}

/// The subcommand's body: connects to Kubernetes and AWS from the environment, drains,
/// and says how it went.
pub async fn main(args: Args) -> std::process::ExitCode {
    use std::process::ExitCode;
    let kube = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot reach Kubernetes: {e}");
            return ExitCode::FAILURE;
        }
    };
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let sfn = StepFunctionClient::new(aws_sdk_sfn::Client::new(&aws), &args.state_machine_arn);
    let config = Config {
        watch_namespace: args.watch_namespace,
        operator_namespace: args.operator_namespace,
        timeout: args.timeout,
        poll_interval: args.poll_interval,
    };
    match run(kube, sfn, config).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "drain failed");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
