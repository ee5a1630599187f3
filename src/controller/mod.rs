//! The AccessRequest controller: one reconcile that keeps each request's status true to
//! its Step Functions execution. Data flows one way: the request and its role decide
//! what execution starts; the execution asks for decisions through the request queue
//! (tokens land in [`crate::controller::tokens`]); the reconciler answers with the approvers'
//! votes and reads the execution's state back into status.
//!
//! Status is written with server-side apply under one field manager, as a full snapshot
//! of the fields the controller owns and with the resourceVersion it was computed from:
//! a concurrent change (an approver's vote) makes the write conflict and the request is
//! reconciled again, so nothing an approver appended is ever dropped.
pub mod request_queue;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, info, warn};

use self::tokens::{TokenError, TokenStore, keys};
use crate::aws::sfn::{ExecutionState, SfnError, StepFunctionClient, execution_name};
use crate::contract::{ApprovalOutput, DenialCause, errors};
use crate::crd::{AccessRequest, AccessRequestStatus, AccessRole, FINALIZER, Phase};
use crate::policy::decide::{self, Tally};

/// How often an active grant is looked at before its expiry (in case something outside
/// the operator ended its execution).
const ACTIVE_RECHECK: Duration = Duration::from_secs(300);
/// How often a request waiting for its approval is checked against Step Functions
/// (for an execution stopped from outside), plus [`spread`].
const AWAITING_RECHECK: Duration = Duration::from_secs(300);

/// Up to a minute, fixed per request: spreads the safety re-checks of many requests
/// (e.g. after a start-up) instead of making them at once.
fn spread(uid: &str) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    uid.hash(&mut h);
    Duration::from_millis(h.finish() % 60_000)
}

/// The condition that says a task of the request sits in the request dead-letter queue.
pub const TASK_DEAD_LETTERED: &str = "TaskDeadLettered";

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "aws-jit";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error(transparent)]
    Tokens(#[from] TokenError),
    #[error(transparent)]
    StepFunctions(#[from] SfnError),
    #[error("cannot encode: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the request has no {0}")]
    Incomplete(&'static str),
    /// Deletion waits for the execution to revoke; not a failure.
    #[error("waiting: {0}")]
    Waiting(String),
    /// The controller could not end a grant its execution left (retried until done).
    #[error("cannot end access: {0}")]
    Revoke(String),
}

impl Error {
    fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Tokens(_) => "tokens",
            Error::StepFunctions(_) => "stepfunctions",
            Error::Encode(_) => "encode",
            Error::Incomplete(_) => "incomplete",
            Error::Waiting(_) => "waiting",
            Error::Revoke(_) => "revoke",
        }
    }
}

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Only this namespace's requests (None: every namespace).
    pub watch_namespace: Option<String>,
    /// Where task-token Secrets live.
    pub operator_namespace: String,
    /// How often a running execution is looked at when nothing else happens.
    pub poll_interval: Duration,
}

/// What the controller checks against and reports to.
pub struct Guard {
    /// The AWS accounts whose roles may be granted.
    pub scope: crate::policy::decide::Scope,
    /// Security findings for Slack.
    pub alerts: crate::aws::alerts::SecurityAlerts,
    /// Ends a grant when its execution ended without revoking (None: such a request
    /// stays loud until an operator with IAM rights runs).
    pub revoker: Option<Revoker>,
    /// Permission-set names to ARNs, for IdentityCenter approval answers.
    pub permission_sets: Arc<crate::grant::identity_center::PermissionSets>,
}

/// What the controller ends access with when the execution cannot: the trust-policy
/// worker (under the role's lock) and the session cleanup it starts.
#[derive(Clone, Debug)]
pub struct Revoker {
    pub worker: crate::grant::trust_policy::worker::Worker,
    pub cleanup: crate::grant::trust_policy::worker::CleanupTarget,
    /// The methods the state machine performs (IdentityCenter, IamGroup).
    pub methods: Arc<crate::grant::sweeper::Methods>,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: kube::Client,
    pub sfn: StepFunctionClient,
    /// The AWS accounts whose roles may be granted.
    pub scope: crate::policy::decide::Scope,
    /// Security findings for Slack.
    pub alerts: crate::aws::alerts::SecurityAlerts,
    pub revoker: Option<Revoker>,
    pub permission_sets: Arc<crate::grant::identity_center::PermissionSets>,
    pub tokens: TokenStore,
    pub recorder: Recorder,
    pub roles: Api<AccessRole>,
    pub settings: Settings,
    pub faults: crate::faults::Faults,
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    /// When each open request's execution was last described (in memory: a new leader
    /// describes each open request once).
    pub described: std::sync::Mutex<std::collections::HashMap<String, jiff::Timestamp>>,
}

impl Context {
    fn described(&self, uid: &str) -> Option<jiff::Timestamp> {
        self.described.lock().ok().and_then(|m| m.get(uid).copied())
    }

    fn mark_described(&self, uid: &str) {
        if let Ok(mut m) = self.described.lock() {
            let now = jiff::Timestamp::now();
            m.insert(uid.to_owned(), now);
            // An entry older than a re-check means what no entry means: drop those now
            // and then, so requests gone without a last reconcile do not accumulate.
            if m.len() % 1024 == 0 {
                let horizon = AWAITING_RECHECK + Duration::from_secs(60);
                m.retain(|_, at| {
                    Duration::try_from(now.duration_since(*at)).is_ok_and(|d| d < horizon)
                });
            }
        }
    }

    /// Forgets a request that has ended or gone (the map stays as small as the open
    /// requests).
    fn forget(&self, uid: &str) {
        if let Ok(mut m) = self.described.lock() {
            m.remove(uid);
        }
    }
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: kube::Client,
    sfn: StepFunctionClient,
    guard: Guard,
    settings: Settings,
    faults: crate::faults::Faults,
    metrics: Arc<crate::telemetry::metrics::Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let requests: Api<AccessRequest> = match &settings.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let roles_api: Api<AccessRole> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &settings.operator_namespace);
    let ctx = Arc::new(Context {
        client: client.clone(),
        sfn,
        scope: guard.scope,
        alerts: guard.alerts,
        revoker: guard.revoker,
        permission_sets: guard.permission_sets,
        tokens: TokenStore::new(client.clone(), &settings.operator_namespace),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "aws-jit-controller".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        roles: roles_api.clone(),
        settings: settings.clone(),
        faults,
        metrics: metrics.clone(),
        described: Default::default(),
    });
    let controller = Controller::new(requests, watcher::Config::default().any_semantic());
    let store = controller.store();
    metrics.watch_requests(store.clone());
    let role_store = store.clone();
    let watch_ns = settings.watch_namespace.clone();
    controller
        // A token written for a request wakes that request.
        .watches(
            secrets,
            watcher::Config::default().labels(&format!(
                "app.kubernetes.io/managed-by={}",
                tokens::MANAGED_BY
            )),
            move |secret: Secret| {
                let a = secret.annotations();
                match (
                    a.get(tokens::ANNOTATION_NAMESPACE),
                    a.get(tokens::ANNOTATION_NAME),
                ) {
                    (Some(ns), Some(name)) if watch_ns.as_ref().is_none_or(|w| w == ns) => {
                        Some(ObjectRef::<AccessRequest>::new(name).within(ns))
                    }
                    _ => None,
                }
            },
        )
        // A changed role re-evaluates the requests that are not decided yet.
        .watches(
            roles_api,
            watcher::Config::default(),
            move |role: AccessRole| {
                let name = role.name_any();
                role_store
                    .state()
                    .into_iter()
                    .filter(|r| r.spec.role == name && !phase(r).is_some_and(Phase::is_terminal))
                    .map(|r| ObjectRef::from(&*r))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            use kube::runtime::controller::Error as C;
            match res {
                Ok(_) => {}
                // Already told (or deliberately not) by `error_policy`.
                Err(C::ReconcilerFailed(..)) => {}
                Err(C::ObjectNotFound(obj)) => {
                    tracing::debug!(%obj, "deleted before its reconcile")
                }
                Err(e) => warn!(error = %e, "the controller's watch failed; retrying"),
            }
        })
        .await;
}

fn phase(r: &AccessRequest) -> Option<Phase> {
    r.status.as_ref().and_then(|s| s.phase)
}

async fn reconcile(
    request: Arc<AccessRequest>,
    ctx: Arc<Context>,
) -> Result<Action, kube::runtime::finalizer::Error<Error>> {
    let ns = request.namespace().unwrap_or_default();
    // Every log line of this reconcile carries the request's identity.
    let span = tracing::info_span!(
        "reconcile",
        request_namespace = %ns,
        request_name = %request.name_any(),
        request_uid = %request.uid().unwrap_or_default(),
    );
    let api: Api<AccessRequest> = Api::namespaced(ctx.client.clone(), &ns);
    // A finished request that `aws-jit drain` released keeps no finalizer: nothing is
    // left to revoke, and putting it back would make a later deletion wait for an
    // operator that may be gone.
    if request.meta().deletion_timestamp.is_none()
        && phase(&request).is_some_and(Phase::is_terminal)
        && !request.finalizers().iter().any(|f| f == FINALIZER)
    {
        in_todays_terms(&request, &api)
            .await
            .map_err(kube::runtime::finalizer::Error::ApplyFailed)?;
        if let Some(uid) = request.uid() {
            ctx.tokens
                .delete(&uid)
                .await
                .map_err(|e| kube::runtime::finalizer::Error::ApplyFailed(Error::Tokens(e)))?;
            ctx.forget(&uid);
        }
        return Ok(Action::await_change());
    }
    let started = std::time::Instant::now();
    let result = finalizer(&api, FINALIZER, request, |event| async {
        match event {
            Finalizer::Apply(r) => apply(&r, &ctx, &api).await,
            Finalizer::Cleanup(r) => cleanup(&r, &ctx).await,
        }
    })
    .instrument(span)
    .await;
    let error_kind = result.as_ref().err().map(|e| {
        use kube::runtime::finalizer::Error as F;
        match e {
            F::ApplyFailed(e) | F::CleanupFailed(e) => e.kind(),
            _ => "finalizer",
        }
    });
    ctx.metrics.reconciled(started.elapsed(), error_kind);
    result
}

fn error_policy(
    request: Arc<AccessRequest>,
    error: &kube::runtime::finalizer::Error<Error>,
    ctx: Arc<Context>,
) -> Action {
    use kube::runtime::finalizer::Error as F;
    let waiting = matches!(
        error,
        F::CleanupFailed(Error::Waiting(_)) | F::ApplyFailed(Error::Waiting(_))
    );
    let conflict =
        matches!(error, F::ApplyFailed(Error::Kube(kube::Error::Api(s))) if s.is_conflict());
    // Reconciled from a cache that has not seen our own finalizer yet: the JSON patch's
    // `test` fails (422) or conflicts. The watch event that follows reconciles it again.
    let stale =
        matches!(error, F::AddFinalizer(kube::Error::Api(s)) if s.code == 422 || s.is_conflict());
    if waiting || conflict || stale {
        return Action::requeue(ctx.settings.poll_interval.min(Duration::from_secs(2)));
    }
    let kind = match error {
        F::ApplyFailed(e) | F::CleanupFailed(e) => e.kind(),
        _ => "finalizer",
    };
    // Ending a grant the execution left retries every 30 s: soon enough to matter,
    // slow enough not to eat the account's IAM rate limit it shares with the worker.
    let delay = if kind == "revoke" {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(5)
    };
    warn!(
        request_namespace = request.namespace().unwrap_or_default(),
        request_name = request.name_any(),
        request_uid = request.uid().unwrap_or_default(),
        kind,
        error = %error,
        "reconcile error; retrying"
    );
    Action::requeue(delay)
}

/// The fields the controller owns, as one snapshot for server-side apply.
struct StatusUpdate<'a> {
    request: &'a AccessRequest,
    status: AccessRequestStatus,
    /// A task of this request that went to the request dead-letter queue: the note,
    /// and whether it has been handled since.
    dead_letter: Option<(String, bool)>,
}

impl<'a> StatusUpdate<'a> {
    fn from(request: &'a AccessRequest) -> Self {
        let mut status = request.status.clone().unwrap_or_default();
        // Votes are the approvers' fields: never part of our snapshot beyond the empty
        // list that lets them append with a JSON patch.
        status.approvals = Some(Vec::new());
        status.revocations = Some(Vec::new());
        // The relay's field: never claimed (nor wiped) by this apply.
        status.slack = None;
        Self {
            request,
            status,
            dead_letter: None,
        }
    }

    /// A `TaskDeadLettered` condition while a task of the request sits in the request
    /// dead-letter queue (the consumer redrives it once a minute), set back to False once
    /// it was handled.
    fn dead_letter(mut self, tokens: &tokens::Tokens) -> Self {
        self.dead_letter = tokens.get(keys::DEAD_LETTERED).map(|note| {
            (
                note.to_owned(),
                tokens.get(keys::DEAD_LETTER_STATE) == Some("redriven"),
            )
        });
        self
    }

    fn phase(mut self, phase: Phase, message: impl Into<String>) -> Self {
        let message = message.into();
        let conditions = decide::conditions_for(
            &self.status.conditions,
            phase,
            &message,
            self.request.metadata.generation,
            &now(),
        );
        self.status.phase = Some(phase);
        self.status.message = Some(message);
        // How to use an access that has ended is not something to leave lying around.
        if phase.is_terminal() {
            self.status.access = None;
        }
        self.status.conditions = conditions;
        self.status.observed_generation = self.request.metadata.generation;
        self
    }

    /// Writes the snapshot if it differs from what is there.
    async fn apply(mut self, api: &Api<AccessRequest>) -> Result<bool, Error> {
        if let Some((note, redriven)) = &self.dead_letter {
            decide::set_condition(
                &mut self.status.conditions,
                TASK_DEAD_LETTERED,
                !redriven,
                if *redriven {
                    "Redriven"
                } else {
                    "InDeadLetterQueue"
                },
                note,
                self.request.metadata.generation,
                &now(),
            );
        }
        let current = self.request.status.clone().unwrap_or_default();
        let mut comparable = current.clone();
        comparable.approvals = Some(Vec::new());
        comparable.revocations = Some(Vec::new());
        comparable.slack = None;
        if comparable == self.status && current.approvals.is_some() && current.revocations.is_some()
        {
            return Ok(false);
        }
        let name = self.request.name_any();
        let patch = json!({
            "apiVersion": "aws-jit.io/v1alpha1",
            "kind": "AccessRequest",
            "metadata": {
                "name": name,
                "resourceVersion": self.request.resource_version(),
            },
            "status": self.status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::Kube)?;
        Ok(true)
    }
}

/// Rewrites the conditions of a request that ended under an older operator (no `Ended`
/// condition; `Ready=False`, which kstatus reads as InProgress forever) once, in
/// today's terms. Only status conditions change: phase and message stay, nothing starts.
async fn in_todays_terms(request: &AccessRequest, api: &Api<AccessRequest>) -> Result<(), Error> {
    let status = request.status.clone().unwrap_or_default();
    if let Some(phase) = decide::ended_in_old_terms(&status) {
        info!(
            ?phase,
            "ended under an older operator: conditions written in today's terms"
        );
        StatusUpdate::from(request)
            .phase(phase, status.message.unwrap_or_default())
            .apply(api)
            .await?;
    }
    Ok(())
}

async fn event(
    ctx: &Context,
    request: &AccessRequest,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &request.object_ref(&())).await {
        warn!(error = %e, reason, "cannot publish event");
    }
}

async fn apply(
    request: &AccessRequest,
    ctx: &Context,
    api: &Api<AccessRequest>,
) -> Result<Action, Error> {
    let uid = request.uid().ok_or(Error::Incomplete("uid"))?;
    let status = request.status.clone().unwrap_or_default();
    if status.phase.is_some_and(Phase::is_terminal) {
        in_todays_terms(request, api).await?;
        ctx.tokens.delete(&uid).await?;
        ctx.forget(&uid);
        return Ok(Action::await_change());
    }

    // 1. Not started: validate against the role, then start exactly one execution.
    let Some(execution_arn) = status.execution_arn.clone() else {
        let role = ctx
            .roles
            .get_opt(&request.spec.role)
            .await
            .map_err(Error::Kube)?;
        return match decide::plan_in(request, role.as_ref(), &ctx.scope) {
            Err(rejection) => {
                info!(reason = rejection.reason(), "rejected: {rejection}");
                StatusUpdate::from(request)
                    .phase(Phase::Rejected, rejection.to_string())
                    .apply(api)
                    .await?;
                event(
                    ctx,
                    request,
                    EventType::Warning,
                    rejection.reason(),
                    "Validate",
                    rejection.to_string(),
                )
                .await;
                Ok(Action::await_change())
            }
            Ok(input) => {
                let arn = match ctx.sfn.start_execution(&execution_name(&uid), &input).await {
                    Err(SfnError::InputConflict { name }) => {
                        return tampered(request, ctx, api, &name).await;
                    }
                    other => other?,
                };
                info!(execution_arn = %arn, "execution started");
                ctx.faults
                    .point(crate::faults::points::AFTER_START_EXECUTION)
                    .await;
                let mut update = StatusUpdate::from(request).phase(
                    Phase::Pending,
                    "execution started; waiting for it to ask for approval",
                );
                update.status.execution_arn = Some(arn.clone());
                update.apply(api).await?;
                event(
                    ctx,
                    request,
                    EventType::Normal,
                    "ExecutionStarted",
                    "Start",
                    format!("started {arn}"),
                )
                .await;
                Ok(Action::requeue(ctx.settings.poll_interval))
            }
        };
    };

    // Waiting for its approval, a request moves only through events (votes, revocations,
    // deletion, its role, the token store) or at its approval deadline: Step Functions
    // is asked where the execution is only then, on a slow safety re-check, and before
    // anything is answered (an answer to an execution that has ended must not be
    // recorded as a decision).
    let mut read_tokens = None;
    let mut quiet_until = None;
    let mut past_deadline = None;
    if status.phase == Some(Phase::AwaitingApproval) {
        let tokens = ctx.tokens.get(&uid).await?;
        let deadline = tokens
            .get(keys::APPROVAL_DEADLINE)
            .and_then(|t| t.parse::<jiff::Timestamp>().ok());
        if let Some(deadline) = deadline
            && tokens.get(keys::APPROVAL_TOKEN).is_some()
            && tokens.get(keys::APPROVAL_ANSWER).is_none()
            && tokens.get(keys::HOLD_TOKEN).is_none()
            && status.revocations.as_ref().is_none_or(Vec::is_empty)
        {
            let role = ctx
                .roles
                .get_opt(&request.spec.role)
                .await
                .map_err(Error::Kube)?;
            let undecided = role.as_ref().is_some_and(|role| {
                let votes = status.approvals.clone().unwrap_or_default();
                matches!(
                    decide::tally(role, &request.spec.requester, &votes).0,
                    decide::Tally::Pending { .. }
                )
            });
            let now = jiff::Timestamp::now();
            if undecided {
                quiet_until = decide::awaiting_recheck(
                    deadline,
                    ctx.described(&uid),
                    now,
                    AWAITING_RECHECK + spread(&uid),
                );
            }
            past_deadline = decide::past_deadline_wait(deadline, now, AWAITING_RECHECK);
        }
        read_tokens = Some(tokens);
    }

    // 2. Ended: the execution's outcome is the request's final phase. An execution that
    // ended outside its flow (stopped, timed out, failed) after approval may have left a
    // grant: it is ended here first, and retried until it is.
    let state = if quiet_until.is_some() {
        ExecutionState::Running
    } else {
        let state = ctx.sfn.describe(&execution_arn).await?;
        ctx.mark_described(&uid);
        read_tokens = None;
        state
    };
    if !matches!(state, ExecutionState::Running) {
        let tokens = ctx.tokens.get(&uid).await?;
        let approved = may_have_granted(&tokens);
        if decide::needs_operator_revoke(&state, &status, approved) {
            operator_revoke(request, ctx, api, &execution_arn, &state, &tokens).await?;
            ctx.tokens.delete(&uid).await?;
            ctx.forget(&uid);
            return Ok(Action::await_change());
        }
    }
    if let Some((phase, mut message)) = decide::phase_of(&state) {
        // Who denied, from our own record when the execution kept no cause.
        if phase == Phase::Denied && !message.starts_with("denied by") {
            let tokens = ctx.tokens.get(&uid).await?;
            if let Some(by) = tokens.get(keys::DECIDED_BY) {
                message = format!("denied by {by}");
            }
        }
        let mut update = StatusUpdate::from(request).phase(phase, message.clone());
        if matches!(phase, Phase::Expired | Phase::Revoked) && update.status.granted_at.is_some() {
            update.status.revoked_at.get_or_insert_with(now);
        }
        update.apply(api).await?;
        let type_ = if phase == Phase::Failed {
            EventType::Warning
        } else {
            EventType::Normal
        };
        event(
            ctx,
            request,
            type_,
            &format!("{phase:?}"),
            "Finish",
            message,
        )
        .await;
        ctx.tokens.delete(&uid).await?;
        ctx.forget(&uid);
        return Ok(Action::await_change());
    }

    // 3. Running: where the tokens say it is (read again after a describe, so they are
    // never older than what Step Functions said).
    let tokens = match read_tokens {
        Some(tokens) => tokens,
        None => ctx.tokens.get(&uid).await?,
    };
    let poll = ctx.settings.poll_interval;
    let status_update = || StatusUpdate::from(request).dead_letter(&tokens);
    // The first revocation by someone with a say counts; anyone else's is recorded and
    // ignored (the list is keyed by person, so it can never stand in the way).
    let revocations = status.revocations.clone().unwrap_or_default();
    let revocation = if revocations.is_empty() {
        None
    } else {
        let role = ctx
            .roles
            .get_opt(&request.spec.role)
            .await
            .map_err(Error::Kube)?;
        let counts =
            decide::effective_revocation(role.as_ref(), &request.spec.requester, &revocations)
                .cloned();
        // Said while it matters: not once the access is being ended anyway (the drain's
        // own entry is one of those).
        let ending = counts.is_some()
            || tokens.get(keys::HOLD_ENDED).is_some()
            || tokens.get(keys::APPROVAL_ANSWER) == Some("cancelled");
        for ignored in revocations
            .iter()
            .filter(|_| !ending)
            .filter(|r| !decide::may_revoke(role.as_ref(), &request.spec.requester, r))
        {
            event(
                ctx,
                request,
                EventType::Warning,
                "RevokeIgnored",
                "Revoke",
                format!(
                    "{} is neither the requester, an approver of this role, nor an admin",
                    ignored.requested_by
                ),
            )
            .await;
        }
        counts
    };
    if let Some(hold_token) = tokens.get(keys::HOLD_TOKEN) {
        let granted_at = tokens.get(keys::GRANTED_AT).and_then(parse_time);
        let expires_at = tokens.get(keys::EXPIRES_AT).and_then(parse_time);
        let mut message = format!(
            "access granted until {}",
            tokens.get(keys::EXPIRES_AT).unwrap_or("its expiry")
        );
        if let Some(revocation) = &revocation
            && tokens.get(keys::HOLD_ENDED).is_none()
        {
            let by = &revocation.requested_by;
            let output =
                json!({"ended_by": by, "reason": revocation.reason.clone().unwrap_or_default()});
            ctx.sfn.send_success(hold_token, &output).await?;
            ctx.tokens
                .put(&identity(request, &uid), &[(keys::HOLD_ENDED, by)])
                .await?;
            event(
                ctx,
                request,
                EventType::Normal,
                "RevokeRequested",
                "Revoke",
                format!("{by} ended access early"),
            )
            .await;
        }
        if tokens.get(keys::HOLD_ENDED).is_some() || revocation.is_some() {
            message = "access is being revoked early".into();
        } else if expires_at
            .as_ref()
            .is_some_and(|e| e.0 <= jiff::Timestamp::now())
        {
            // The approval fixed the window, so the hold can outlast it by the grant's
            // delay: AWS already refuses the access; say so.
            message = format!(
                "access expired at {} (AWS refuses it since); the execution is revoking",
                tokens.get(keys::EXPIRES_AT).unwrap_or("its expiry")
            );
        }
        let mut update = status_update().phase(Phase::Active, message);
        update.status.granted_at = granted_at;
        update.status.expires_at = expires_at.clone();
        if let Some(record) = tokens
            .get(keys::GRANT_RECORD)
            .and_then(|r| serde_json::from_str::<crate::contract::GrantOutput>(r).ok())
        {
            update.status.grant = Some(grant_record(&record));
        }
        if update.status.access.is_none() {
            let role = ctx
                .roles
                .get_opt(&request.spec.role)
                .await
                .map_err(Error::Kube)?;
            update.status.access = decide::plan_in(request, role.as_ref(), &ctx.scope)
                .ok()
                .map(|input| decide::access_instructions(&input, role.as_ref()));
        }
        update.apply(api).await?;
        // While access is held nothing changes in the execution until the expiry, except
        // through this controller (revoke action, deletion): look again at the expiry
        // (and at least every few minutes), not every poll interval. At 500 active
        // requests a 2 s poll cost 250 reads per second for nothing.
        let until_expiry = expires_at
            .map(|e| e.0.duration_since(jiff::Timestamp::now()))
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero());
        let ending = tokens.get(keys::HOLD_ENDED).is_some() || revocation.is_some();
        let next = match until_expiry {
            // Access is being ended now: watch the execution revoke.
            _ if ending => poll,
            Some(d) => (d + Duration::from_secs(1)).min(ACTIVE_RECHECK),
            None => poll,
        };
        return Ok(Action::requeue(next.max(Duration::from_millis(500))));
    }
    if let Some(token) = tokens.get(keys::APPROVAL_TOKEN) {
        if let Some(revocation) = revocation
            && tokens.get(keys::APPROVAL_ANSWER).is_none()
        {
            // Withdrawn before a decision: cancel rather than grant and then revoke.
            let by = &revocation.requested_by;
            ctx.sfn
                .send_failure(
                    token,
                    errors::CANCELLED,
                    &format!("{by} revoked the request before it was decided"),
                )
                .await?;
            ctx.tokens
                .put(
                    &identity(request, &uid),
                    &[(keys::APPROVAL_ANSWER, "cancelled"), (keys::DECIDED_BY, by)],
                )
                .await?;
            event(
                ctx,
                request,
                EventType::Normal,
                "RevokeRequested",
                "Revoke",
                format!("{by} revoked the request before it was decided"),
            )
            .await;
            return Ok(Action::requeue(poll));
        }
        match tokens.get(keys::APPROVAL_ANSWER) {
            Some("approved") => {
                let by = tokens.get(keys::DECIDED_BY).unwrap_or("the approvers");
                status_update()
                    .phase(
                        Phase::Approved,
                        format!("approved by {by}; granting access"),
                    )
                    .apply(api)
                    .await?;
            }
            // Cancelled by `aws-jit drain`: no decision; the execution's outcome
            // (Cancelled) becomes the phase once it has ended.
            Some("cancelled") => {
                let phase = status.phase.unwrap_or(Phase::AwaitingApproval);
                status_update()
                    .phase(
                        phase,
                        "cancelled before a decision; waiting for the execution to end",
                    )
                    .apply(api)
                    .await?;
            }
            // The phase becomes Denied when the execution ends denied: only what the
            // execution really did is a terminal phase.
            Some(_) => {
                let by = tokens.get(keys::DECIDED_BY).unwrap_or("an approver");
                let phase = status.phase.unwrap_or(Phase::AwaitingApproval);
                status_update()
                    .phase(
                        phase,
                        format!("denied by {by}; waiting for the execution to end"),
                    )
                    .apply(api)
                    .await?;
            }
            None => {
                answer_approval(request, ctx, api, &uid, token, &tokens).await?;
                // An answer writes the token store, which wakes the request; otherwise
                // nothing is due before the deadline or the safety re-check.
                if let Some(wait) = quiet_until.or(past_deadline) {
                    return Ok(Action::requeue(wait.max(Duration::from_millis(500))));
                }
            }
        }
        return Ok(Action::requeue(poll));
    }
    status_update()
        .phase(
            Phase::Pending,
            "execution started; waiting for it to ask for approval",
        )
        .apply(api)
        .await?;
    Ok(Action::requeue(poll))
}

/// The request's execution name is taken by an execution someone else started with
/// another input (the name is predictable from the uid, which anyone who may read the
/// request sees). Nothing is granted for this request: it ends `Failed` with a
/// `Tampered` condition and a Warning Event, and the foreign execution is stopped. Its
/// tasks are refused on the queues (the request records no execution).
async fn tampered(
    request: &AccessRequest,
    ctx: &Context,
    api: &Api<AccessRequest>,
    name: &str,
) -> Result<Action, Error> {
    let foreign = ctx.sfn.execution_arn(name)?;
    let message = format!(
        "execution {name} was started by someone other than aws-jit, with an input aws-jit \
         did not write: nothing is granted for this request. Report it to your AWS \
         security team; to ask for access again, create a new AccessRequest"
    );
    warn!(execution_arn = %foreign, "execution name squatted with a foreign input");
    let mut update = StatusUpdate::from(request).phase(Phase::Failed, message.clone());
    decide::set_condition(
        &mut update.status.conditions,
        "Tampered",
        true,
        "ForeignExecution",
        &format!("{foreign} was not started by aws-jit"),
        request.metadata.generation,
        &now(),
    );
    update.apply(api).await?;
    event(
        ctx,
        request,
        EventType::Warning,
        "ExecutionTampered",
        "Start",
        message.clone(),
    )
    .await;
    ctx.metrics.refused("execution", "ExecutionSquatted");
    if let Some(uid) = request.uid() {
        ctx.alerts
            .send(
                "ExecutionTampered",
                Some(&identity(request, &uid)),
                &message,
            )
            .await;
    }
    if let Err(e) = ctx
        .sfn
        .stop(&foreign, "aws-jit: not started by aws-jit for this request")
        .await
    {
        warn!(error = %e, execution_arn = %foreign, "cannot stop the foreign execution");
    }
    Ok(Action::await_change())
}

/// The approval answer's [`GrantTarget`](crate::contract::GrantTarget) for `requester`
/// on `role`, or why it cannot be said yet.
async fn grant_target(
    ctx: &Context,
    role: &AccessRole,
    requester: &str,
) -> Result<crate::contract::GrantTarget, String> {
    let principal = decide::principal_for(role, requester).map_err(|e| e.to_string())?;
    let permission_set_arn = match &role.spec.identity_center {
        Some(spec) if role.spec.method == crate::crd::GrantMethod::IdentityCenter => Some(
            ctx.permission_sets
                .arn_of(spec)
                .await
                .map_err(|e| e.to_string())?,
        ),
        _ => None,
    };
    decide::grant_target(role, &principal, permission_set_arn.as_deref()).map_err(|e| e.to_string())
}

/// `status.grant` from the execution's record of its grant.
fn grant_record(grant: &crate::contract::GrantOutput) -> crate::crd::GrantRecord {
    crate::crd::GrantRecord {
        method: grant.method.clone().unwrap_or_else(|| "TrustPolicy".into()),
        statement_id: grant.statement_id.clone(),
        instance_arn: grant.instance_arn.clone(),
        permission_set_arn: grant.permission_set_arn.clone(),
        account_ids: grant.account_ids.clone(),
        user_id: grant.user_id.clone(),
        group_name: grant.group_name.clone(),
        user_name: grant.user_name.clone(),
    }
}

fn identity(request: &AccessRequest, uid: &str) -> crate::contract::RequestIdentity {
    crate::contract::RequestIdentity {
        namespace: request.namespace().unwrap_or_default(),
        name: request.name_any(),
        uid: uid.to_string(),
    }
}

fn parse_time(s: &str) -> Option<Time> {
    s.parse::<jiff::Timestamp>().ok().map(Time)
}

/// Counts the votes; when the role's rule is met, answers the approval task (then
/// records that it did: a crash in between answers again, which the execution ignores).
async fn answer_approval(
    request: &AccessRequest,
    ctx: &Context,
    api: &Api<AccessRequest>,
    uid: &str,
    token: &str,
    tokens: &tokens::Tokens,
) -> Result<(), Error> {
    let Some(role) = ctx
        .roles
        .get_opt(&request.spec.role)
        .await
        .map_err(Error::Kube)?
    else {
        StatusUpdate::from(request)
            .dead_letter(tokens)
            .phase(
                Phase::AwaitingApproval,
                format!("AccessRole {:?} is gone; waiting for it", request.spec.role),
            )
            .apply(api)
            .await?;
        return Ok(());
    };
    let votes = request
        .status
        .as_ref()
        .and_then(|s| s.approvals.clone())
        .unwrap_or_default();
    let (tally, ignored) = decide::tally(&role, &request.spec.requester, &votes);
    for i in &ignored {
        event(
            ctx,
            request,
            EventType::Warning,
            "VoteIgnored",
            "Count",
            format!("vote by {} not counted: {}", i.approver, i.why),
        )
        .await;
    }
    let requester_arn = decide::principal_for(&role, &request.spec.requester).unwrap_or_default();
    match tally {
        Tally::Pending { have, need } => {
            StatusUpdate::from(request)
                .dead_letter(tokens)
                .phase(
                    Phase::AwaitingApproval,
                    format!("{have} of {need} approvals"),
                )
                .apply(api)
                .await?;
        }
        Tally::Approved { approvers } => {
            // What is granted, from Kubernetes now: for the methods the state machine
            // performs itself, the answer is all it acts on. Until it can be said (a
            // permission set name not found, a principal the role no longer maps), the
            // approval waits, loudly, and nothing is answered.
            let target = match grant_target(ctx, &role, &request.spec.requester).await {
                Ok(target) => target,
                Err(why) => {
                    let message = format!("approved, but not granted yet: {why}");
                    StatusUpdate::from(request)
                        .dead_letter(tokens)
                        .phase(Phase::AwaitingApproval, message.clone())
                        .apply(api)
                        .await?;
                    event(
                        ctx,
                        request,
                        EventType::Warning,
                        "GrantTargetUnresolved",
                        "Approve",
                        message,
                    )
                    .await;
                    return Ok(());
                }
            };
            // The access window is fixed now: the execution writes the sessions' deny
            // with this expiry before the grant, and the grant ends at the same instant.
            // Recorded before the answer, and reused by a retry: a crash in between must
            // neither lose that a grant may follow nor move the window.
            let expires_at = match tokens.get(keys::APPROVED_UNTIL) {
                Some(until) => until.to_owned(),
                None => {
                    let duration = decide::plan(request, Some(&role))
                        .map(|input| input.duration_seconds)
                        .unwrap_or(1);
                    let until = decide::expiry_after(jiff::Timestamp::now(), duration);
                    ctx.tokens
                        .put(&identity(request, uid), &[(keys::APPROVED_UNTIL, &until)])
                        .await?;
                    until
                }
            };
            let output = ApprovalOutput {
                approver_name: approvers.join(","),
                approvers: approvers.clone(),
                requester_arn,
                expires_at: expires_at.clone(),
                grant: Some(target),
            };
            ctx.sfn.send_success(token, &output).await?;
            ctx.faults
                .point(crate::faults::points::AFTER_APPROVAL_ANSWERED)
                .await;
            ctx.metrics.approval("approved", role.spec.method);
            let by = approvers.join(", ");
            ctx.tokens
                .put(
                    &identity(request, uid),
                    &[(keys::APPROVAL_ANSWER, "approved"), (keys::DECIDED_BY, &by)],
                )
                .await?;
            let message = format!("approved by {by}; granting access");
            StatusUpdate::from(request)
                .dead_letter(tokens)
                .phase(Phase::Approved, message.clone())
                .apply(api)
                .await?;
            event(
                ctx,
                request,
                EventType::Normal,
                "Approved",
                "Approve",
                message,
            )
            .await;
        }
        Tally::Denied { by, comment } => {
            let cause = DenialCause {
                approver_name: by.clone(),
                requester_arn,
                comment: comment.clone(),
            };
            ctx.sfn
                .send_failure(token, errors::DENIED, &serde_json::to_string(&cause)?)
                .await?;
            ctx.metrics.approval("denied", role.spec.method);
            let decided = if comment.is_empty() {
                by.clone()
            } else {
                format!("{by}: {comment}")
            };
            ctx.tokens
                .put(
                    &identity(request, uid),
                    &[
                        (keys::APPROVAL_ANSWER, "denied"),
                        (keys::DECIDED_BY, &decided),
                    ],
                )
                .await?;
            let message = format!("denied by {decided}");
            let phase = request
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .unwrap_or(Phase::AwaitingApproval);
            StatusUpdate::from(request)
                .dead_letter(tokens)
                .phase(
                    phase,
                    format!("{message}; waiting for the execution to end"),
                )
                .apply(api)
                .await?;
            event(ctx, request, EventType::Normal, "Denied", "Deny", message).await;
        }
    }
    Ok(())
}

/// Whether the tokens say a grant may exist: the approval was answered (or about to be:
/// its expiry is recorded first), or a hold was handed over.
fn may_have_granted(tokens: &tokens::Tokens) -> bool {
    tokens.get(keys::APPROVAL_ANSWER) == Some("approved")
        || tokens.get(keys::APPROVED_UNTIL).is_some()
        || tokens.get(keys::HOLD_TOKEN).is_some()
}

/// Ends a grant whose execution ended without revoking it: tightens the sessions' deny
/// (live sessions end), removes the trust statement, starts the session cleanup. Until
/// that succeeds the request says so loudly (condition `Revoked` False `RevokeFailing`,
/// a Warning Event, a security alert for Slack, `aws_jit_revoke_failures_total`) and the
/// error requeues it; once it has, the phase says what happened.
async fn operator_revoke(
    request: &AccessRequest,
    ctx: &Context,
    api: &Api<AccessRequest>,
    execution_arn: &str,
    state: &ExecutionState,
    tokens: &tokens::Tokens,
) -> Result<(), Error> {
    let status = request.status.clone().unwrap_or_default();
    let role = ctx
        .roles
        .get_opt(&request.spec.role)
        .await
        .map_err(Error::Kube)?;
    // The method of what was granted: as recorded, else as the role says.
    let method = status
        .grant
        .as_ref()
        .and_then(|g| crate::crd::GrantMethod::parse(&g.method))
        .or(role.as_ref().map(|r| r.spec.method));
    let outcome = match (&ctx.revoker, method) {
        (Some(revoker), Some(method)) if method != crate::crd::GrantMethod::TrustPolicy => {
            end_method_grant(
                ctx,
                revoker,
                method,
                role.as_ref(),
                request,
                &status,
                tokens,
                state,
            )
            .await
        }
        _ => end_trust_policy_grant(ctx, execution_arn, &status, tokens, state).await,
    };
    record_operator_end(request, ctx, api, &status, outcome).await
}

/// Ends a TrustPolicy grant with the worker (the session deny tightened, the statement
/// removed): the phase and message after it, or why it failed.
async fn end_trust_policy_grant(
    ctx: &Context,
    execution_arn: &str,
    status: &AccessRequestStatus,
    tokens: &tokens::Tokens,
    state: &ExecutionState,
) -> Result<(Phase, String), String> {
    let result = match &ctx.revoker {
        None => Err("this controller runs without IAM access (no revoker)".to_owned()),
        Some(revoker) => match ctx.sfn.input_of(execution_arn).await {
            Err(e) => Err(format!("cannot read the execution's input: {e}")),
            Ok(input) => {
                // The grant's own expiry if it was made, else the one the approval
                // fixed, else the latest one it could have had.
                let expires_at = status
                    .expires_at
                    .as_ref()
                    .map(|t| decide::expiry_after(t.0, 0))
                    .or_else(|| tokens.get(keys::APPROVED_UNTIL).map(str::to_owned))
                    .unwrap_or_else(|| {
                        decide::expiry_after(jiff::Timestamp::now(), input.duration_seconds)
                    });
                let granted = status.granted_at.is_some() || tokens.get(keys::HOLD_TOKEN).is_some();
                revoker
                    .worker
                    .end_access(&input, &expires_at, granted, &revoker.cleanup)
                    .await
                    .map(|out| (out, expires_at))
                    .map_err(|e| e.to_string())
            }
        },
    };
    result.map(|(out, expires_at)| {
        let at = decide::expiry_after(jiff::Timestamp::now(), 0);
        let expired = expires_at.as_str() <= at.as_str();
        info!(removed = ?out.revoked.removed, "ended a trust-policy grant its execution left");
        decide::after_operator_revoke(state, expired, out.tightened, &at)
    })
}

/// Ends an IdentityCenter or IamGroup grant in place of its execution: what the request
/// accounts for, unless another live request accounts for it too.
#[allow(clippy::too_many_arguments)]
async fn end_method_grant(
    ctx: &Context,
    revoker: &Revoker,
    method: crate::crd::GrantMethod,
    role: Option<&AccessRole>,
    request: &AccessRequest,
    status: &AccessRequestStatus,
    tokens: &tokens::Tokens,
    state: &ExecutionState,
) -> Result<(Phase, String), String> {
    let requests: Api<AccessRequest> = match &ctx.settings.watch_namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let requests = requests
        .list(&Default::default())
        .await
        .map_err(|e| format!("cannot list requests: {e}"))?
        .items;
    let roles = ctx
        .roles
        .list(&Default::default())
        .await
        .map_err(|e| format!("cannot list AccessRoles: {e}"))?
        .items;
    use crate::grant::sweeper::end_grant;
    let removed = match method {
        crate::crd::GrantMethod::IdentityCenter => {
            end_grant(
                &revoker.methods.identity_center,
                role,
                request,
                &requests,
                &roles,
            )
            .await
        }
        _ => end_grant(&revoker.methods.iam_group, role, request, &requests, &roles).await,
    }
    .map_err(|e| e.to_string())?;
    let at = decide::expiry_after(jiff::Timestamp::now(), 0);
    let expires_at = status
        .expires_at
        .as_ref()
        .map(|t| decide::expiry_after(t.0, 0))
        .or_else(|| tokens.get(keys::APPROVED_UNTIL).map(str::to_owned))
        .unwrap_or_else(|| at.clone());
    let expired = expires_at.as_str() <= at.as_str();
    let what = if removed.is_empty() {
        "nothing of it was left in AWS (its execution removed it, or another live request \
         holds it)"
            .to_owned()
    } else {
        removed
            .iter()
            .map(crate::grant::Held::describe)
            .collect::<Vec<_>>()
            .join("; ")
            + " removed"
    };
    Ok(decide::after_operator_end(
        state,
        expired,
        format!("the operator ended access at {at}: {what}"),
    ))
}

/// Records how the operator's end of a grant went: the phase after it, or loudly that
/// it keeps failing.
async fn record_operator_end(
    request: &AccessRequest,
    ctx: &Context,
    api: &Api<AccessRequest>,
    status: &AccessRequestStatus,
    outcome: Result<(Phase, String), String>,
) -> Result<(), Error> {
    let generation = request.metadata.generation;
    match outcome {
        Ok((phase, message)) => {
            info!("ended a grant its execution left: {message}");
            let mut update = StatusUpdate::from(request).phase(phase, message.clone());
            update.status.revoked_at.get_or_insert_with(now);
            decide::set_condition(
                &mut update.status.conditions,
                decide::REVOKED_CONDITION,
                true,
                "RevokedByOperator",
                &message,
                generation,
                &now(),
            );
            update.apply(api).await?;
            event(
                ctx,
                request,
                EventType::Normal,
                "RevokedByOperator",
                "Revoke",
                message,
            )
            .await;
            Ok(())
        }
        Err(why) => {
            ctx.metrics.revoke_failure();
            let message = format!(
                "the execution ended without revoking and the operator cannot end access yet \
                 (retrying): {why}"
            );
            warn!(%why, "cannot end a grant its execution left; retrying");
            let phase = status.phase.unwrap_or(Phase::Active);
            let mut update = StatusUpdate::from(request).phase(phase, message.clone());
            decide::set_condition(
                &mut update.status.conditions,
                decide::REVOKED_CONDITION,
                false,
                "RevokeFailing",
                &message,
                generation,
                &now(),
            );
            // Not ready while its end is pending: `kubectl wait --for=condition=Ready`
            // and GitOps health must not read a stuck revoke as a healthy grant.
            decide::set_condition(
                &mut update.status.conditions,
                "Ready",
                false,
                "RevokeFailing",
                &message,
                generation,
                &now(),
            );
            if let Err(e) = update.apply(api).await {
                warn!(error = %e, "cannot record the failing revoke in status");
            }
            event(
                ctx,
                request,
                EventType::Warning,
                "RevokeFailing",
                "Revoke",
                message.clone(),
            )
            .await;
            // Slack hears it once per failing streak, not every retry.
            let already_failing = status
                .conditions
                .iter()
                .any(|c| c.type_ == decide::REVOKED_CONDITION && c.status == "False");
            if let Some(uid) = request.uid().filter(|_| !already_failing) {
                ctx.alerts
                    .send("RevokeFailing", Some(&identity(request, &uid)), &message)
                    .await;
            }
            Err(Error::Revoke(why))
        }
    }
}

/// Deleting a request ends its access first: an undecided approval is cancelled, a
/// hold is ended (the state machine revokes), and the finalizer stays until the
/// execution has ended.
async fn cleanup(request: &AccessRequest, ctx: &Context) -> Result<Action, Error> {
    let uid = request.uid().ok_or(Error::Incomplete("uid"))?;
    let Some(execution_arn) = request
        .status
        .as_ref()
        .and_then(|s| s.execution_arn.clone())
    else {
        ctx.tokens.delete(&uid).await?;
        ctx.forget(&uid);
        return Ok(Action::await_change());
    };
    let state = ctx.sfn.describe(&execution_arn).await?;
    if !matches!(state, ExecutionState::Running) {
        // Nothing is released while a grant its execution left may still be live.
        let tokens = ctx.tokens.get(&uid).await?;
        let approved = may_have_granted(&tokens);
        let status = request.status.clone().unwrap_or_default();
        if decide::needs_operator_revoke(&state, &status, approved) {
            let api: Api<AccessRequest> =
                Api::namespaced(ctx.client.clone(), &request.namespace().unwrap_or_default());
            operator_revoke(request, ctx, &api, &execution_arn, &state, &tokens).await?;
        }
        ctx.tokens.delete(&uid).await?;
        ctx.forget(&uid);
        info!("execution ended; releasing the request");
        return Ok(Action::await_change());
    }
    let tokens = ctx.tokens.get(&uid).await?;
    if let Some(hold) = tokens.get(keys::HOLD_TOKEN) {
        if tokens.get(keys::HOLD_ENDED).is_none() {
            ctx.sfn
                .send_success(
                    hold,
                    &json!({"ended_by": "deletion", "reason": "AccessRequest deleted"}),
                )
                .await?;
            ctx.tokens
                .put(&identity(request, &uid), &[(keys::HOLD_ENDED, "deletion")])
                .await?;
            event(
                ctx,
                request,
                EventType::Normal,
                "Revoking",
                "Delete",
                "request deleted: ending access now".into(),
            )
            .await;
        }
    } else if let Some(token) = tokens.get(keys::APPROVAL_TOKEN)
        && tokens.get(keys::APPROVAL_ANSWER).is_none()
    {
        ctx.sfn
            .send_failure(
                token,
                errors::CANCELLED,
                "the AccessRequest was deleted before a decision",
            )
            .await?;
        ctx.tokens
            .put(
                &identity(request, &uid),
                &[(keys::APPROVAL_ANSWER, "cancelled")],
            )
            .await?;
    }
    Err(Error::Waiting(format!(
        "execution {execution_arn} to end before releasing the request"
    )))
}
