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
mod extend;
pub mod request_queue;
pub mod tokens;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, info, warn};

use self::tokens::{TokenError, TokenStore, keys};
use crate::aws::sfn::{ExecutionState, SfnError, StepFunctionClient, TaskAnswer, execution_name};
use crate::contract::{ApprovalOutput, DenialCause, errors};
use crate::crd::{AccessRequest, AccessRequestStatus, AccessRole, FINALIZER, Phase};
use crate::policy::decide::{self, Tally};

/// How often an open request's execution is looked at when no event and no deadline of
/// its own says anything (for an execution stopped or failed from outside), plus
/// [`spread`]. Access needs no look to end: AWS itself refuses it after the expiry.
const SAFETY_RECHECK: Duration = Duration::from_secs(600);
/// How often an approved request is looked at while the state machine makes a grant
/// itself (IdentityCenter, IamGroup): no worker answer says when that fails.
const GRANTING_RECHECK: Duration = Duration::from_secs(30);
/// The longest a reconcile waits for a watch's first list before it reads live.
const SYNC_WAIT: Duration = Duration::from_secs(10);

/// Up to two minutes, fixed per request: spreads the safety re-checks of many requests
/// (e.g. after a start-up or a leader change) instead of making them at once.
fn spread(uid: &str) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    uid.hash(&mut h);
    Duration::from_millis(h.finish() % 120_000)
}

/// Back-off of a request whose reconcile fails: 2 s doubling to 5 minutes, with jitter.
const ERROR_BACKOFF: crate::aws::retry::Backoff =
    crate::aws::retry::Backoff::new(Duration::from_secs(2), Duration::from_secs(300));
/// Back-off of ending a grant its execution left: 10 s doubling to 2 minutes (soon
/// enough to matter, slow enough not to eat the account's IAM rate it shares with the
/// worker).
const REVOKE_BACKOFF: crate::aws::retry::Backoff =
    crate::aws::retry::Backoff::new(Duration::from_secs(10), Duration::from_secs(120));

/// The message of a request whose approval came after its task was over.
const TOO_LATE: &str = "approved, but the approval task was already over (it timed out, or the \
     execution was stopped): nothing was answered; waiting for the execution's end";

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
    /// How soon a request waiting on something outside the operator (its deletion on
    /// the execution's end, a write conflict) is looked at again.
    pub poll_interval: Duration,
    /// At most this many requests are reconciled at once.
    pub concurrency: u16,
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
    /// AccessRequests, from the controller's watch of them (another open request of the
    /// same requester for the same role refuses a new one).
    pub requests: Store<AccessRequest>,
    /// AccessRoles, from the controller's watch of them.
    pub roles: Store<AccessRole>,
    pub roles_synced: crate::cache::Synced,
    /// AccessRoles, live (when the watch cannot answer, and to count an approval on the
    /// role as it is now).
    pub roles_api: Api<AccessRole>,
    pub settings: Settings,
    pub faults: crate::faults::Faults,
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    /// When this controller started: the baseline of the safety re-checks of requests
    /// it has not looked at yet (a new leader spreads them instead of asking at once).
    pub since: jiff::Timestamp,
    /// What this controller remembers of each open request (in memory: a new leader
    /// starts afresh).
    pub memory: Mutex<HashMap<String, Memory>>,
}

/// What the controller remembers of an open request.
#[derive(Debug, Default)]
pub struct Memory {
    /// Its last look at the execution.
    looked: Option<decide::Looked>,
    /// How the execution ended, once a look saw it end (an ended execution never runs
    /// again: no second look while the request's end is being recorded or retried).
    ended: Option<ExecutionState>,
    /// When an answer came back "task already over" (the execution moved on its own).
    moved: Option<jiff::Timestamp>,
    /// Reconciles that failed in a row (the back-off's count).
    failures: u32,
    /// Warnings already published (reason and subject), so a reconcile that runs again
    /// on an unchanged request does not publish them again.
    said: BTreeSet<String>,
}

impl Context {
    fn with_memory<T>(&self, uid: &str, f: impl FnOnce(&mut Memory) -> T) -> Option<T> {
        self.memory
            .lock()
            .ok()
            .map(|mut m| f(m.entry(uid.to_owned()).or_default()))
    }

    fn looked(&self, uid: &str) -> Option<decide::Looked> {
        self.memory
            .lock()
            .ok()
            .and_then(|m| m.get(uid).and_then(|e| e.looked))
    }

    fn record_look(&self, uid: &str, looked: decide::Looked, state: &ExecutionState) {
        self.with_memory(uid, |m| {
            m.looked = Some(looked);
            if !matches!(state, ExecutionState::Running) {
                m.ended = Some(state.clone());
            }
        });
    }

    fn ended(&self, uid: &str) -> Option<ExecutionState> {
        self.memory
            .lock()
            .ok()
            .and_then(|m| m.get(uid).and_then(|e| e.ended.clone()))
    }

    fn moved(&self, uid: &str) -> Option<jiff::Timestamp> {
        self.memory
            .lock()
            .ok()
            .and_then(|m| m.get(uid).and_then(|e| e.moved))
    }

    /// An answer came back "task already over": look at the execution next time.
    fn moved_now(&self, uid: &str) {
        self.with_memory(uid, |m| m.moved = Some(jiff::Timestamp::now()));
    }

    /// One more failure in a row; how many now.
    fn failed(&self, uid: &str) -> u32 {
        self.with_memory(uid, |m| {
            m.failures = m.failures.saturating_add(1);
            m.failures
        })
        .unwrap_or(1)
    }

    fn succeeded(&self, uid: &str) {
        if let Ok(mut m) = self.memory.lock()
            && let Some(e) = m.get_mut(uid)
        {
            e.failures = 0;
        }
    }

    /// Forgets a request that has ended or gone (the map stays as small as the open
    /// requests).
    fn forget(&self, uid: &str) {
        if let Ok(mut m) = self.memory.lock() {
            m.remove(uid);
        }
    }

    /// The AccessRole of that name, from the watch (live while the watch has not
    /// listed them: a watch that cannot sync must not stall every request). A role the
    /// watch does not have is read live before it is called missing: it may be newer
    /// than the watch's last event (applied just before its request, as a GitOps sync
    /// does), and a request naming a missing role is rejected for good.
    async fn role(&self, name: &str) -> Result<Option<AccessRole>, Error> {
        if self.roles_synced.within(SYNC_WAIT).await
            && let Some(role) = self.roles.get(&ObjectRef::new(name))
        {
            return Ok(Some((*role).clone()));
        }
        self.roles_api.get_opt(name).await.map_err(Error::Kube)
    }

    /// Publishes a Warning about `subject` once while the request is open (again after
    /// a restart), not on every reconcile of an unchanged request.
    #[allow(clippy::too_many_arguments)]
    async fn event_once(
        &self,
        request: &AccessRequest,
        uid: &str,
        type_: EventType,
        reason: &str,
        action: &str,
        subject: &str,
        note: String,
    ) {
        let key = format!("{reason}/{subject}/{note}");
        let first = self
            .with_memory(uid, |m| m.said.insert(key))
            .unwrap_or(true);
        if first {
            event(self, request, type_, reason, action, note).await;
        }
    }
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// The controller's watches of requests and roles, made before it runs so that the
/// drift sweeper reads the same caches (no second copy of thousands of requests). Their
/// stores fill while the controller runs.
pub struct Watches {
    pub requests: Store<AccessRequest>,
    pub roles: Store<AccessRole>,
    /// Set once each store shows a whole list (any number of tasks may wait on these).
    pub requests_synced: crate::cache::Synced,
    pub roles_synced: crate::cache::Synced,
    request_events: futures::stream::BoxStream<'static, Result<AccessRequest, watcher::Error>>,
    role_events: futures::stream::BoxStream<'static, Result<AccessRole, watcher::Error>>,
    roles_api: Api<AccessRole>,
}

impl Watches {
    pub fn new(client: &kube::Client, settings: &Settings) -> Self {
        let requests: Api<AccessRequest> = match &settings.watch_namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let roles_api: Api<AccessRole> = Api::all(client.clone());
        // Every watched object is cached without its managedFields (most of a small
        // object's bytes): thousands of ended requests, the audit trail, stay cheap.
        let (store, writer) = reflector::store();
        let (request_events, requests_synced) = crate::cache::reflect(
            watcher(requests, watcher::Config::default().any_semantic())
                .default_backoff()
                .modify(crate::cache::strip),
            writer,
        );
        let (roles, role_writer) = reflector::store();
        let (role_events, roles_synced) = crate::cache::reflect(
            watcher(roles_api.clone(), watcher::Config::default())
                .default_backoff()
                .modify(crate::cache::strip),
            role_writer,
        );
        Watches {
            requests: store,
            roles,
            requests_synced,
            roles_synced,
            request_events: request_events.applied_objects().boxed(),
            role_events: role_events.touched_objects().boxed(),
            roles_api,
        }
    }
}

/// Runs the controller until `shutdown` resolves. `tokens` reads from the cache that
/// `token_events` (from [`TokenStore::watched`]) feeds; each of those events wakes its
/// request.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: kube::Client,
    sfn: StepFunctionClient,
    guard: Guard,
    settings: Settings,
    watches: Watches,
    tokens: TokenStore,
    token_events: impl futures::Stream<Item = Result<Secret, watcher::Error>> + Send + 'static,
    faults: crate::faults::Faults,
    metrics: Arc<crate::telemetry::metrics::Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let Watches {
        requests: store,
        roles,
        requests_synced: _,
        roles_synced,
        request_events,
        role_events,
        roles_api,
    } = watches;
    let ctx = Arc::new(Context {
        client: client.clone(),
        sfn,
        scope: guard.scope,
        alerts: guard.alerts,
        revoker: guard.revoker,
        permission_sets: guard.permission_sets,
        tokens,
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "aws-jit-controller".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        requests: store.clone(),
        roles,
        roles_synced,
        roles_api: roles_api.clone(),
        settings: settings.clone(),
        faults,
        metrics: metrics.clone(),
        since: jiff::Timestamp::now(),
        memory: Default::default(),
    });
    let controller = Controller::for_stream(request_events, store.clone()).with_config(
        kube::runtime::controller::Config::default().concurrency(settings.concurrency),
    );
    metrics.watch_requests(store.clone());
    let role_store = store.clone();
    let watch_ns = settings.watch_namespace.clone();
    controller
        // A token written for a request wakes that request.
        .watches_stream(token_events, move |secret: Secret| {
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
        })
        // A changed role re-evaluates the requests that are not decided yet.
        .watches_stream(role_events, move |role: AccessRole| {
            let name = role.name_any();
            role_store
                .state()
                .into_iter()
                .filter(|r| r.spec.role == name && !phase(r).is_some_and(Phase::is_terminal))
                .map(|r| ObjectRef::from(&*r))
                .collect::<Vec<_>>()
        })
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
    let uid = request.uid();
    let result = finalizer(&api, FINALIZER, request, |event| async {
        match event {
            Finalizer::Apply(r) => apply(&r, &ctx, &api).await,
            Finalizer::Cleanup(r) => cleanup(&r, &ctx).await,
        }
    })
    .instrument(span)
    .await;
    if result.is_ok()
        && let Some(uid) = uid.as_deref()
    {
        ctx.succeeded(uid);
    }
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
    // Per request, doubling with jitter: a request that keeps failing (AWS down, a
    // revoke IAM refuses) costs less and less, and many failing together come back
    // apart. Throttling by AWS waits at least as long as AWS's own back-off did.
    let failures = request.uid().map_or(1, |uid| ctx.failed(&uid));
    // Ending access (a grant its execution left, an early revoke, a deletion) retries
    // on the shorter back-off.
    let ending = request.meta().deletion_timestamp.is_some()
        || request
            .status
            .as_ref()
            .and_then(|s| s.revocations.as_ref())
            .is_some_and(|r| !r.is_empty());
    let policy = if kind == "revoke" || ending {
        REVOKE_BACKOFF
    } else {
        ERROR_BACKOFF
    };
    let mut delay = policy.after(failures);
    if let F::ApplyFailed(Error::StepFunctions(SfnError::Api { code, .. }))
    | F::CleanupFailed(Error::StepFunctions(SfnError::Api { code, .. })) = error
        && let Some(floor) = crate::aws::retry::throttle_floor(Some(code))
    {
        delay = delay.max(floor);
    }
    warn!(
        request_namespace = request.namespace().unwrap_or_default(),
        request_name = request.name_any(),
        request_uid = request.uid().unwrap_or_default(),
        kind,
        failures,
        retry_in = ?delay,
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
        status.extensions = Some(Vec::new());
        status.extension_approvals = Some(Vec::new());
        status.reviews = Some(Vec::new());
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
        comparable.extensions = Some(Vec::new());
        comparable.extension_approvals = Some(Vec::new());
        comparable.reviews = Some(Vec::new());
        comparable.slack = None;
        if comparable == self.status
            && current.approvals.is_some()
            && current.revocations.is_some()
            && current.extensions.is_some()
            && current.extension_approvals.is_some()
            && current.reviews.is_some()
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
    if request.spec.break_glass && reviewed(request, ctx, api, &uid).await? {
        // Written: the write brings the request back.
        return Ok(Action::await_change());
    }
    if status.phase.is_some_and(Phase::is_terminal) {
        in_todays_terms(request, api).await?;
        ctx.tokens.delete(&uid).await?;
        ctx.forget(&uid);
        return Ok(Action::await_change());
    }

    // 1. Not started: validate against the role, then start exactly one execution.
    let Some(execution_arn) = status.execution_arn.clone() else {
        let role = ctx.role(&request.spec.role).await?;
        let open = ctx.requests.state();
        let planned =
            match crate::policy::extension::overlapping(request, open.iter().map(|r| r.as_ref())) {
                Some(overlap) => Err(overlap),
                None => decide::plan_in(request, role.as_ref(), &ctx.scope),
            };
        return match planned {
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
                // The status records the execution (no Event: one write less per request,
                // and nothing was decided yet).
                update.apply(api).await?;
                Ok(Action::requeue(SAFETY_RECHECK + spread(&uid)))
            }
        };
    };

    // 2. Started: where the execution is comes from events (votes, revocations and
    // deletion on the request, its role, each task in the token store); Step Functions
    // is asked only when no event can say it ([`decide::look`]).
    let mut tokens = ctx.tokens.get(&uid).await?;
    let role = ctx.role(&request.spec.role).await?;
    let now_ts = jiff::Timestamp::now();
    let answer = tokens.get(keys::APPROVAL_ANSWER);
    let held = tokens.get(keys::HOLD_TOKEN).is_some();
    let undecided = tokens.undecided(status.phase);
    let deadline = if held {
        tokens.get(keys::EXPIRES_AT).and_then(|t| t.parse().ok())
    } else if tokens.get(keys::APPROVAL_TOKEN).is_some() && undecided {
        let timeout: Option<jiff::Timestamp> = tokens
            .get(keys::APPROVAL_DEADLINE)
            .and_then(|t| t.parse().ok());
        // A scheduled request is counted again at its start.
        match (timeout, decide::scheduled_start(request, now_ts)) {
            (Some(timeout), Some(start)) => Some(timeout.min(start)),
            (timeout, start) => timeout.or(start),
        }
    } else {
        None
    };
    // Answered in a way that ends the execution: it ends soon and says nothing.
    let ending = matches!(answer, Some("denied" | "cancelled" | "too-late"))
        || tokens.hold_ended().is_some();
    // Approved and waiting for a grant the state machine makes itself (no worker
    // answers it, so no word comes when it fails): looked at more often.
    let granting_alone = !held
        && matches!(answer, Some("approving" | "approved"))
        && role
            .as_ref()
            .is_some_and(|r| r.spec.method != crate::crd::GrantMethod::TrustPolicy);
    let safety = if granting_alone {
        GRANTING_RECHECK
    } else {
        SAFETY_RECHECK + spread(&uid)
    };
    let moved = [
        ctx.moved(&uid),
        tokens.get(keys::WORK_ANSWERED).and_then(|t| t.parse().ok()),
    ]
    .into_iter()
    .flatten()
    .max();
    let watch = decide::Watch {
        ending,
        deadline,
        moved,
        last: ctx.looked(&uid),
        since: ctx.since,
        safety,
        now: now_ts,
    };
    let (state, watch) = match (ctx.ended(&uid), decide::look(&watch)) {
        (Some(ended), _) => (ended, watch),
        (None, decide::Look::After(_)) => (ExecutionState::Running, watch),
        (None, decide::Look::Now(looked)) => {
            let state = ctx.sfn.describe(&execution_arn).await?;
            ctx.record_look(&uid, looked, &state);
            // Never older than what Step Functions said.
            tokens = ctx.tokens.get(&uid).await?;
            (
                state,
                decide::Watch {
                    last: Some(looked),
                    ..watch
                },
            )
        }
    };
    // When nothing wakes the request before: its next look.
    let next = match decide::look(&watch) {
        decide::Look::After(d) => d.max(Duration::from_millis(500)),
        decide::Look::Now(_) => Duration::from_secs(1),
    };

    // Ended: the execution's outcome is the request's final phase. An execution that
    // ended outside its flow (stopped, timed out, failed) after approval may have left a
    // grant: it is ended here first, and retried until it is.
    if !matches!(state, ExecutionState::Running) {
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
        if phase == Phase::Denied
            && !message.starts_with("denied by")
            && let Some(by) = tokens.get(keys::DECIDED_BY)
        {
            message = format!("denied by {by}");
        }
        let mut update = StatusUpdate::from(request).phase(phase, message.clone());
        if matches!(phase, Phase::Expired | Phase::Revoked) && update.status.granted_at.is_some() {
            update.status.revoked_at.get_or_insert_with(now);
        }
        // An extension still being applied when access ended was not.
        if let Some(flight) = crate::policy::extension::in_flight(request) {
            let mut ended = flight;
            ended.phase = crate::crd::ExtensionPhase::Failed;
            ended.message = format!("access ended ({phase:?}) before the extension was applied");
            extend::upsert(&mut update.status.extension_outcomes, ended);
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

    // 3. Running: where the tokens say it is.
    let status_update = || StatusUpdate::from(request).dead_letter(&tokens);
    // The first revocation by someone with a say counts; anyone else's is recorded and
    // ignored (the list is keyed by person, so it can never stand in the way).
    let revocations = status.revocations.clone().unwrap_or_default();
    let revocation = if revocations.is_empty() {
        None
    } else {
        let counts =
            decide::effective_revocation(role.as_ref(), &request.spec.requester, &revocations)
                .cloned();
        // Said while it matters: not once the access is being ended anyway (the drain's
        // own entry is one of those).
        let ending = counts.is_some()
            || tokens.hold_ended().is_some()
            || tokens.get(keys::APPROVAL_ANSWER) == Some("cancelled");
        for ignored in revocations
            .iter()
            .filter(|_| !ending)
            .filter(|r| !decide::may_revoke(role.as_ref(), &request.spec.requester, r))
        {
            ctx.event_once(
                request,
                &uid,
                EventType::Warning,
                "RevokeIgnored",
                "Revoke",
                &ignored.requested_by,
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
            && tokens.hold_ended().is_none()
        {
            let by = &revocation.requested_by;
            let output =
                json!({"ended_by": by, "reason": revocation.reason.clone().unwrap_or_default()});
            if ctx.sfn.send_success(hold_token, &output).await? == TaskAnswer::AlreadyOver {
                ctx.moved_now(&uid);
            }
            ctx.tokens
                .put(
                    &identity(request, &uid),
                    &[(keys::HOLD_ENDED, by), (keys::HOLD_ENDED_TOKEN, hold_token)],
                )
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
        let ending_early = tokens.hold_ended().is_some() || revocation.is_some();
        let extending = extend::extensions(
            request,
            ctx,
            &uid,
            &tokens,
            role.as_ref(),
            hold_token,
            ending_early,
        )
        .await?;
        if ending_early {
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
        } else if let Some(note) = &extending.note {
            message = format!("{message}; {note}");
        }
        let mut update = status_update().phase(Phase::Active, message);
        if let Some(outcome) = extending.outcome.clone() {
            extend::upsert(&mut update.status.extension_outcomes, outcome);
        }
        update.status.granted_at = granted_at;
        update.status.expires_at = expires_at.clone();
        if let Some(record) = tokens
            .get(keys::GRANT_RECORD)
            .and_then(|r| serde_json::from_str::<crate::contract::GrantOutput>(r).ok())
        {
            update.status.grant = Some(grant_record(&record));
        }
        if update.status.access.is_none() {
            update.status.access = decide::plan_in(request, role.as_ref(), &ctx.scope)
                .ok()
                .map(|input| decide::access_instructions(&input, role.as_ref()));
        }
        update.apply(api).await?;
        if extending.settled {
            let cleared = extend::KEYS.map(|k| (k, ""));
            ctx.tokens.put(&identity(request, &uid), &cleared).await?;
        }
        if let Some((type_, reason, note)) = extending.event {
            event(ctx, request, type_, &reason, "Extend", note).await;
        }
        // While access is held nothing changes in the execution until the expiry, except
        // through this controller (revoke action, deletion) or the worker's answer to
        // its revoke: the next look is at the expiry, or the safety re-check.
        return Ok(Action::requeue(next));
    }
    if let Some(token) = tokens.get(keys::APPROVAL_TOKEN) {
        if let Some(revocation) = revocation
            && tokens.undecided(status.phase)
        {
            // Withdrawn before a decision: cancel rather than grant and then revoke.
            let by = &revocation.requested_by;
            let answer = ctx
                .sfn
                .send_failure(
                    token,
                    errors::CANCELLED,
                    &format!("{by} revoked the request before it was decided"),
                )
                .await?;
            if answer == TaskAnswer::AlreadyOver {
                ctx.moved_now(&uid);
                if tokens.get(keys::APPROVAL_ANSWER) == Some("approving") {
                    // The approval went out before: the revocation ends the access once
                    // it is held.
                    return Ok(Action::requeue(Duration::from_secs(1)));
                }
            }
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
            return Ok(Action::requeue(next));
        }
        match tokens.get(keys::APPROVAL_ANSWER) {
            // Recorded right before the answer, and no Approved phase says it went out
            // (the send failed, or a crash in between): counted again, so a Deny, a
            // withdrawal or a role change meanwhile wins; an approval still met is
            // answered with the window fixed then.
            Some("approving") if undecided => {
                answer_approval(request, ctx, api, &uid, token, &tokens, role.as_ref()).await?;
            }
            // The approval came after the task was over (timed out, or the execution
            // was stopped): nothing was answered; the execution's end is the phase.
            Some("too-late") => {
                let phase = status.phase.unwrap_or(Phase::AwaitingApproval);
                status_update().phase(phase, TOO_LATE).apply(api).await?;
            }
            Some("approving" | "approved") => {
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
                answer_approval(request, ctx, api, &uid, token, &tokens, role.as_ref()).await?;
            }
        }
        // An answer writes the token store or status, which wakes the request; nothing
        // else is due before the next look.
        return Ok(Action::requeue(next));
    }
    status_update()
        .phase(
            Phase::Pending,
            "execution started; waiting for it to ask for approval",
        )
        .apply(api)
        .await?;
    Ok(Action::requeue(next))
}

/// Keeps the `ReviewPending` condition of a break-glass request true to its reviews
/// (open, ended, whatever its phase), and says each outcome once: a Flagged review is a
/// Warning Event and a security alert. Whether it wrote.
async fn reviewed(
    request: &AccessRequest,
    ctx: &Context,
    api: &Api<AccessRequest>,
    uid: &str,
) -> Result<bool, Error> {
    let Some(role) = ctx.role(&request.spec.role).await? else {
        return Ok(false);
    };
    let (review, ignored) = decide::review(&role, request);
    for i in &ignored {
        ctx.event_once(
            request,
            uid,
            EventType::Warning,
            "ReviewIgnored",
            "Review",
            &i.approver,
            format!("review by {} not counted: {}", i.approver, i.why),
        )
        .await;
    }
    let name = request.name_any();
    let (pending, reason, message) = match &review {
        decide::Review::None => return Ok(false),
        decide::Review::Pending => (
            true,
            "AwaitingReview",
            format!(
                "break glass: an approver must review this access (kubectl jit review {name} \
                 --verdict Reviewed|Flagged)"
            ),
        ),
        decide::Review::Reviewed { by } => (false, "Reviewed", format!("reviewed by {by}")),
        decide::Review::Flagged { by, comment } => {
            (false, "Flagged", format!("flagged by {by}: {comment}"))
        }
    };
    let conditions = request
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let current = conditions
        .iter()
        .find(|c| c.type_ == decide::REVIEW_PENDING);
    if current.is_some_and(|c| c.reason == reason && c.message == message) {
        return Ok(false);
    }
    let mut update = StatusUpdate::from(request);
    decide::set_condition(
        &mut update.status.conditions,
        decide::REVIEW_PENDING,
        pending,
        reason,
        &message,
        request.metadata.generation,
        &now(),
    );
    update.apply(api).await?;
    match &review {
        decide::Review::Flagged { .. } => {
            event(
                ctx,
                request,
                EventType::Warning,
                "BreakGlassFlagged",
                "Review",
                message.clone(),
            )
            .await;
            ctx.alerts
                .send(
                    "BreakGlassFlagged",
                    Some(&identity(request, uid)),
                    &format!("break-glass request {name}: {message}"),
                )
                .await;
        }
        decide::Review::Reviewed { .. } => {
            event(
                ctx,
                request,
                EventType::Normal,
                "Reviewed",
                "Review",
                message,
            )
            .await;
        }
        _ => {}
    }
    Ok(true)
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

/// Counts the votes; when the role's rule is met, answers the approval task (recording
/// first that it may have: a crash in between answers again, as decided).
async fn answer_approval(
    request: &AccessRequest,
    ctx: &Context,
    api: &Api<AccessRequest>,
    uid: &str,
    token: &str,
    tokens: &tokens::Tokens,
    role: Option<&AccessRole>,
) -> Result<(), Error> {
    let Some(role) = role else {
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
    let (tally, ignored) = decide::decision(role, request);
    for i in &ignored {
        ctx.event_once(
            request,
            uid,
            EventType::Warning,
            "VoteIgnored",
            "Count",
            &i.approver,
            format!("vote by {} not counted: {}", i.approver, i.why),
        )
        .await;
    }
    let requester_arn = decide::principal_for(role, &request.spec.requester).unwrap_or_default();
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
            if let Some(start) = decide::scheduled_start(request, jiff::Timestamp::now()) {
                // Nothing is answered before the start: then the votes are counted again,
                // on the AccessRole as it is then (a requester removed meanwhile gets
                // nothing), and a Deny or a withdrawal until then still wins.
                let message = format!(
                    "approved by {}; access starts at {start} (the request is checked against \
                     its AccessRole again then, and the duration counts from the start)",
                    approvers.join(", ")
                );
                StatusUpdate::from(request)
                    .dead_letter(tokens)
                    .phase(Phase::Scheduled, message.clone())
                    .apply(api)
                    .await?;
                ctx.event_once(
                    request,
                    uid,
                    EventType::Normal,
                    "Scheduled",
                    "Approve",
                    &start.to_string(),
                    message,
                )
                .await;
                return Ok(());
            }
            send_approval(request, ctx, api, uid, token, tokens, role, approvers).await?;
        }
        Tally::Denied { by, comment } => {
            let cause = DenialCause {
                approver_name: by.clone(),
                requester_arn,
                comment: comment.clone(),
            };
            let answer = ctx
                .sfn
                .send_failure(token, errors::DENIED, &serde_json::to_string(&cause)?)
                .await?;
            if answer == TaskAnswer::AlreadyOver {
                ctx.moved_now(uid);
                if let Some(approved_by) = tokens.get(keys::DECIDED_BY)
                    && tokens.get(keys::APPROVAL_ANSWER) == Some("approving")
                {
                    // An approval went out before this denial (or the task is over:
                    // the execution's end says which): the approval stands.
                    warn!("a denial came after the approval had been answered; it stands");
                    StatusUpdate::from(request)
                        .dead_letter(tokens)
                        .phase(
                            Phase::Approved,
                            format!(
                                "approved by {approved_by}; granting access (the denial by \
                                 {by} came after the approval had been answered)"
                            ),
                        )
                        .apply(api)
                        .await?;
                    return Ok(());
                }
            }
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

/// An approval that waits, loudly, without an answer: the status says why, and a
/// Warning Event (once) too.
struct Held<'a> {
    request: &'a AccessRequest,
    uid: &'a str,
    tokens: &'a tokens::Tokens,
}

impl<'a> Held<'a> {
    fn new(request: &'a AccessRequest, uid: &'a str, tokens: &'a tokens::Tokens) -> Self {
        Self {
            request,
            uid,
            tokens,
        }
    }

    async fn wait(
        &self,
        ctx: &Context,
        api: &Api<AccessRequest>,
        reason: &str,
        subject: &str,
        message: String,
    ) -> Result<(), Error> {
        StatusUpdate::from(self.request)
            .dead_letter(self.tokens)
            .phase(Phase::AwaitingApproval, message.clone())
            .apply(api)
            .await?;
        ctx.event_once(
            self.request,
            self.uid,
            EventType::Warning,
            reason,
            "Approve",
            subject,
            message,
        )
        .await;
        Ok(())
    }
}

/// Answers the approval task with `approvers`' approval. The access window is fixed
/// first and recorded with the decision (`approving`), so a crash before or after the
/// answer neither loses that a grant may follow nor moves the window: a retry answers
/// the same. The `Approved` phase written after it says the answer went out.
#[allow(clippy::too_many_arguments)]
async fn send_approval(
    request: &AccessRequest,
    ctx: &Context,
    api: &Api<AccessRequest>,
    uid: &str,
    token: &str,
    tokens: &tokens::Tokens,
    role: &AccessRole,
    approvers: Vec<String>,
) -> Result<(), Error> {
    // What is granted, from Kubernetes now: for the methods the state machine performs
    // itself, the answer is all it acts on. Until it can be said (a permission set name
    // not found, a principal the role no longer maps), the approval waits, loudly, and
    // nothing is answered.
    let target = match grant_target(ctx, role, &request.spec.requester).await {
        Ok(target) => target,
        Err(why) => {
            let message = format!("approved, but not granted yet: {why}");
            let held = Held::new(request, uid, tokens);
            return held
                .wait(ctx, api, "GrantTargetUnresolved", &why, message)
                .await;
        }
    };
    let by = approvers.join(", ");
    // The first answer (none can have gone out before: the window is recorded first).
    let first = tokens.get(keys::APPROVED_UNTIL).is_none();
    let expires_at = match tokens.get(keys::APPROVED_UNTIL) {
        Some(until) => until.to_owned(),
        None => {
            // Counted on the role as it is now, not as the watch last saw it: an approver
            // removed, or a duration no longer allowed, a moment ago counts.
            let live = ctx
                .roles_api
                .get_opt(&role.name_any())
                .await
                .map_err(Error::Kube)?;
            // What is granted and to whom (the answer below) comes from the cached role:
            // the live role must name the same, else the cache is behind a change.
            let live = live.filter(|live| {
                live.spec.same_targets(&role.spec) && live.spec.principal == role.spec.principal
            });
            let still = live.as_ref().map(|live| {
                (
                    decide::decision(live, request).0,
                    decide::plan(request, Some(live)),
                )
            });
            let duration = match still {
                Some((Tally::Approved { .. }, Ok(input))) => input.duration_seconds,
                Some((Tally::Approved { .. }, Err(rejection))) => {
                    let message =
                        format!("approved, but the AccessRole no longer allows it: {rejection}");
                    let held = Held::new(request, uid, tokens);
                    return held
                        .wait(ctx, api, rejection.reason(), "role", message)
                        .await;
                }
                // The role changed under the vote: the watch brings the change, and the
                // request is counted again then.
                _ => {
                    return Err(Error::Waiting(
                        "the AccessRole changed while the vote was counted".into(),
                    ));
                }
            };
            let until = decide::expiry_after(jiff::Timestamp::now(), duration);
            ctx.tokens
                .put(
                    &identity(request, uid),
                    &[
                        (keys::APPROVED_UNTIL, &until),
                        (keys::APPROVAL_ANSWER, "approving"),
                        (keys::DECIDED_BY, &by),
                    ],
                )
                .await?;
            until
        }
    };
    let output = ApprovalOutput {
        approver_name: approvers.join(","),
        approvers: approvers.clone(),
        requester_arn: decide::principal_for(role, &request.spec.requester).unwrap_or_default(),
        expires_at,
        grant: Some(target),
    };
    ctx.faults
        .point(crate::faults::points::BEFORE_APPROVAL_ANSWERED)
        .await;
    let answer = ctx.sfn.send_success(token, &output).await?;
    ctx.faults
        .point(crate::faults::points::AFTER_APPROVAL_ANSWERED)
        .await;
    if answer == TaskAnswer::AlreadyOver {
        // Answered before (a retry), or the execution ended: Step Functions says which.
        ctx.moved_now(uid);
        if first {
            // No answer of ours went out before this one: the task was over (timed out,
            // or the execution stopped). Not an approval: the execution's end decides.
            // The window stays recorded, so an end that is not what it seems still has
            // the operator look for a grant.
            info!("the approval came after the task was over");
            ctx.tokens
                .put(
                    &identity(request, uid),
                    &[(keys::APPROVAL_ANSWER, "too-late")],
                )
                .await?;
            StatusUpdate::from(request)
                .dead_letter(tokens)
                .phase(
                    request
                        .status
                        .as_ref()
                        .and_then(|s| s.phase)
                        .unwrap_or(Phase::AwaitingApproval),
                    TOO_LATE,
                )
                .apply(api)
                .await?;
            return Ok(());
        }
    }
    if first {
        ctx.metrics.approval("approved", role.spec.method);
        if request.spec.break_glass {
            // Loud: every approver learns at once (the relay mentions them in Slack).
            ctx.metrics.approval("break_glass", role.spec.method);
            let note = format!(
                "{} broke the glass on AccessRole {}: granted without approval until {} \
                 (reason: {}); an approver must review it",
                request.spec.requester, request.spec.role, output.expires_at, request.spec.reason
            );
            event(
                ctx,
                request,
                EventType::Warning,
                "BreakGlass",
                "Approve",
                note,
            )
            .await;
        }
    }
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
    Ok(())
}

/// Whether the tokens say a grant may exist: the approval was answered (or about to be:
/// its expiry is recorded first), or a hold was handed over.
fn may_have_granted(tokens: &tokens::Tokens) -> bool {
    matches!(
        tokens.get(keys::APPROVAL_ANSWER),
        Some("approving" | "approved")
    ) || tokens.get(keys::APPROVED_UNTIL).is_some()
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
    let role = ctx.role(&request.spec.role).await?;
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
                // An extension may have moved the statement later than the status says
                // (its move failed after the write): the deny stays until then.
                let expires_at = status
                    .expires_at
                    .as_ref()
                    .map(|t| {
                        let moved = crate::policy::extension::latest_move(status);
                        decide::expiry_after(moved.map_or(t.0, |m| m.max(t.0)), 0)
                    })
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
    let requests = crate::cache::list_stripped(&requests)
        .await
        .map_err(|e| format!("cannot list requests: {e}"))?;
    // Live too: a role the cache does not show yet (at a start) would count nobody else
    // holding the same assignment, and take it away from them.
    let roles = crate::cache::list_stripped(&ctx.roles_api)
        .await
        .map_err(|e| format!("cannot list AccessRoles: {e}"))?;
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
        if tokens.hold_ended().is_none() {
            ctx.sfn
                .send_success(
                    hold,
                    &json!({"ended_by": "deletion", "reason": "AccessRequest deleted"}),
                )
                .await?;
            ctx.tokens
                .put(
                    &identity(request, &uid),
                    &[
                        (keys::HOLD_ENDED, "deletion"),
                        (keys::HOLD_ENDED_TOKEN, hold),
                    ],
                )
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
        && tokens.undecided(request.status.as_ref().and_then(|s| s.phase))
    {
        let answer = ctx
            .sfn
            .send_failure(
                token,
                errors::CANCELLED,
                "the AccessRequest was deleted before a decision",
            )
            .await?;
        // "Already over" after an approval was recorded: it went out, and the hold it
        // leads to is ended when it arrives.
        if answer == TaskAnswer::Delivered || tokens.get(keys::APPROVAL_ANSWER) != Some("approving")
        {
            ctx.tokens
                .put(
                    &identity(request, &uid),
                    &[(keys::APPROVAL_ANSWER, "cancelled")],
                )
                .await?;
        }
    }
    Err(Error::Waiting(format!(
        "execution {execution_arn} to end before releasing the request"
    )))
}
