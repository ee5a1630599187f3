//! The drift sweeper: at start and then periodically, the operator compares what it
//! manages in AWS with what Kubernetes approved, and removes what nothing accounts for,
//! loudly (an error log line, a Warning Event `DriftRemoved` on the request concerned,
//! `aws_jit_drift_removed_total{kind}`).
//!
//! - **Trust-policy statements** whose `Sid` carries aws-jit's prefix, in every role an
//!   AccessRole names: one is kept only while an approved, unended AccessRequest of that
//!   role accounts for it (same principal, an expiry no later than the grant's). A
//!   statement named like ours but in a shape aws-jit never writes is removed too. The
//!   edit takes the worker's per-role lock, so it never races a grant or a revoke.
//! - **Executions of the state machine** that no request recorded (a foreign execution,
//!   or one whose name was squatted) are stopped. Nothing is revoked on the word of a
//!   foreign execution's input (whoever started it wrote that); it only says whom to
//!   tell: one whose input names a request is reported on it as `ForeignExecution` (a
//!   Warning Event and a security alert, as the consumer reports its refused tasks).
//!
//! A request whose votes deny but whose status is not settled yet is judged as the
//! controller will settle it: when the controller recorded an approval answer for it
//! (the approval may have gone out, and a Deny after that does not take it back), as
//! the grant that approval allows, until the expiry it fixed.
//!
//! The candidates come from the controller's caches (no second copy of thousands of
//! requests); nothing is removed or stopped on a cache's word. A statement the caches
//! call drift is judged again on requests read afresh while the role's lock is held, so
//! a grant made (or a request created) after the lists is never removed; an execution
//! they call foreign is judged again on requests read after the executions were. What
//! a cache calls kept carries the cache's lag: a cache that cannot be read (not synced,
//! its watch failing or gone) is not used, and a sweep whose last live read is an hour
//! old reads everything live anyway.
//!
//! With `--watch-namespace` the operator sees only its namespace's requests, so a
//! statement for a request it cannot see may be another installation's: it is reported
//! but left (its AWS-enforced expiry still ends it). Every execution of the state
//! machine belongs to this installation, so executions are judged either way.
use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kube::Resource;
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use tracing::{error, info, warn};

use crate::crd::{AccessRequest, AccessRole, Phase};
use crate::grant::iam_group::IamGroupGrants;
use crate::grant::identity_center::IdentityCenterGrants;
use crate::grant::trust_policy::document::{self as trust_policy, Document, GrantInfo};
use crate::grant::trust_policy::worker::Worker;
use crate::grant::{GrantError, GrantMethod, Held, accounted_for};
use crate::policy::decide::{self, Scope, Tally};
use crate::telemetry::metrics::Metrics;

/// Slack on an expiry bound: the grant's own clock and ours may differ by this much.
const EXPIRY_SLACK: SignedDuration = SignedDuration::from_secs(120);

/// What becomes of one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementVerdict {
    Keep,
    /// Past its expiry: inert (AWS refuses it), left for the worker's own sweep.
    Expired,
    /// Might be another installation's (a request this operator cannot see).
    Unknown,
    /// Nothing approved accounts for it: removed and reported.
    Drift(String),
}

/// What becomes of one running execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutionVerdict {
    Ours,
    /// Its request has not recorded an execution yet: the controller's to decide.
    Young,
    /// Not started by aws-jit for a request it knows: stopped and reported.
    Foreign(String),
}

/// The requests and roles the sweep judges by, indexed.
pub struct Known<'a> {
    by_sid: HashMap<String, &'a AccessRequest>,
    by_uid: HashMap<&'a str, &'a AccessRequest>,
    roles: HashMap<String, &'a AccessRole>,
    /// Every request there is, not one namespace's.
    complete: bool,
}

impl<'a> Known<'a> {
    pub fn new<R: Borrow<AccessRequest>, S: Borrow<AccessRole>>(
        requests: &'a [R],
        roles: &'a [S],
        complete: bool,
    ) -> Self {
        let mut by_sid = HashMap::new();
        let mut by_uid = HashMap::new();
        for r in requests {
            let r: &'a AccessRequest = r.borrow();
            if let Some(uid) = r.metadata.uid.as_deref() {
                by_uid.insert(uid, r);
                if let Ok(sid) = trust_policy::sid_for(uid) {
                    by_sid.insert(sid, r);
                }
            }
        }
        let roles = roles
            .iter()
            .map(Borrow::borrow)
            .filter_map(|r: &'a AccessRole| r.metadata.name.clone().map(|n| (n, r)))
            .collect();
        Known {
            by_sid,
            by_uid,
            roles,
            complete,
        }
    }

    fn request_of_sid(&self, sid: &str) -> Option<&'a AccessRequest> {
        self.by_sid.get(sid).copied()
    }
}

/// Judges one `Sid`ed statement in the trust policy of `role_arn` (`info` is `None` for
/// a statement named like ours in another shape).
pub fn judge_statement(
    known: &Known<'_>,
    role_arn: &str,
    sid: &str,
    info: Option<&GrantInfo>,
    now: Timestamp,
) -> StatementVerdict {
    let Some(info) = info else {
        return StatementVerdict::Drift(
            "a statement named like aws-jit's, in a shape aws-jit never writes".into(),
        );
    };
    if info.expires_at <= now {
        return StatementVerdict::Expired;
    }
    let Some(request) = known.request_of_sid(sid) else {
        return if known.complete {
            StatementVerdict::Drift("no AccessRequest has the uid this statement names".into())
        } else {
            StatementVerdict::Unknown
        };
    };
    let drift = |why: String| StatementVerdict::Drift(why);
    let Some(role) = known.roles.get(&request.spec.role) else {
        return drift(format!(
            "the request's AccessRole {:?} no longer exists",
            request.spec.role
        ));
    };
    if crate::policy::arn::role(&role.spec.role_arn) != crate::policy::arn::role(role_arn) {
        return drift(format!(
            "the request's AccessRole grants {}, not this role",
            role.spec.role_arn
        ));
    }
    if let Err(why) = approved_and_unended(role, request) {
        return drift(why);
    }
    let status = request.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or(Phase::Pending);
    match decide::principal_for(role, &request.spec.requester) {
        Ok(p) if p == info.principal => {}
        Ok(p) => {
            return drift(format!(
                "it names {}, but the request is for {p}",
                info.principal
            ));
        }
        Err(e) => return drift(format!("the request maps to no principal: {e}")),
    }
    let latest = match (phase, status.expires_at.as_ref()) {
        // An approved extension moves the statement before the status shows it.
        (Phase::Active, Some(expires)) => crate::policy::extension::approved_until(request)
            .map_or(expires.0, |extended| extended.max(expires.0)),
        _ => {
            let duration = request
                .spec
                .duration
                .clone()
                .unwrap_or_else(|| role.spec.default_duration.clone());
            match decide::parse_duration("duration", &duration)
                .ok()
                .and_then(|d| SignedDuration::try_from(d).ok())
                .and_then(|d| now.checked_add(d).ok())
            {
                Some(t) => t,
                None => return drift(format!("the request's duration {duration:?} is unusable")),
            }
        }
    };
    if latest
        .checked_add(EXPIRY_SLACK)
        .is_ok_and(|bound| info.expires_at > bound)
    {
        return drift(format!(
            "it expires at {}, later than the grant's {latest}",
            info.expires_at
        ));
    }
    StatementVerdict::Keep
}

/// Whether `request` (of `role`) may hold a grant at all: not ended, and approved (in
/// status, or by its votes while the answer is on its way). Why not, otherwise.
pub fn approved_and_unended(role: &AccessRole, request: &AccessRequest) -> Result<(), String> {
    let status = request.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or(Phase::Pending);
    if phase.is_terminal() {
        return Err(format!(
            "the request is {phase:?}: its access should have been revoked"
        ));
    }
    let approved = matches!(phase, Phase::Approved | Phase::Active)
        || (decide::scheduled_start(request, Timestamp::now()).is_none()
            && matches!(decide::decision(role, request).0, Tally::Approved { .. }));
    if !approved {
        return Err("the request is not approved".into());
    }
    Ok(())
}

/// Whether `request` may have a grant its status and votes do not show: not ended, not
/// `Approved` or `Active`, and its votes deny now. The controller answers an approval
/// and writes `Approved` after, so a Deny cast in between (or while the operator was
/// down) finds a grant already made; the controller then keeps the approval (the Deny's
/// answer comes back "already over"). Only for such a request is the controller's
/// record of its answer read ([`as_answered`]).
pub fn denied_after_a_possible_answer<S: Borrow<AccessRole>>(
    request: &AccessRequest,
    roles: &[S],
) -> bool {
    let status = request.status.clone().unwrap_or_default();
    if status
        .phase
        .is_some_and(|p| p.is_terminal() || matches!(p, Phase::Approved | Phase::Active))
    {
        return false;
    }
    role_named(roles, &request.spec.role)
        .is_some_and(|role| matches!(decide::decision(role, request).0, Tally::Denied { .. }))
}

/// What the controller recorded of a request's approval answer on its token Secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordedAnswer {
    /// `approving` (recorded right before the approval is sent), `approved`, `denied`,
    /// `cancelled`, `too-late`; None: not answered.
    pub answer: Option<String>,
    /// The expiry the approval fixed (RFC 3339), recorded with `approving`.
    pub approved_until: Option<String>,
}

/// `request` judged as the grant an approval the controller answered allows: `Active`
/// until the expiry that approval fixed. Whether it went out or not, nothing it allows
/// outlives that expiry (a statement or holding that would is drift), and an approval
/// that did not go out is answered Denied by the controller at the request's next
/// reconcile (the record then says `denied`). Before this, a sweep between the grant and
/// the `Approved` status removed the grant of a request that then showed `Active`.
/// None (judged as it is): no approval recorded, or no expiry with it.
pub fn as_answered(request: &AccessRequest, recorded: &RecordedAnswer) -> Option<AccessRequest> {
    if !matches!(recorded.answer.as_deref(), Some("approving" | "approved")) {
        return None;
    }
    let until: Timestamp = recorded.approved_until.as_deref()?.parse().ok()?;
    let mut settled = request.clone();
    let status = settled.status.get_or_insert_with(Default::default);
    status.phase = Some(Phase::Active);
    status.expires_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(until));
    Some(settled)
}

/// Whether `request` may hold a grant of a method without an expiry of its own in AWS
/// (an assignment, a membership) now: approved, unended, and, once active, not past its
/// expiry (with slack for clocks; the execution's revoke is due then).
pub fn may_hold_now(
    role: &AccessRole,
    request: &AccessRequest,
    now: Timestamp,
) -> Result<(), String> {
    approved_and_unended(role, request)?;
    let status = request.status.clone().unwrap_or_default();
    if let (Some(Phase::Active), Some(expires)) = (status.phase, status.expires_at.as_ref())
        && expires
            .0
            .checked_add(EXPIRY_SLACK)
            .is_ok_and(|bound| bound < now)
    {
        return Err(format!("its access ended at {}", expires.0));
    }
    Ok(())
}

/// Everything the requests of `method`'s roles that may hold a grant now account for,
/// leaving out the request `except` (by uid). One request the method cannot judge
/// (its directory unreachable) fails the whole count: removing on half a count could
/// take a live grant away.
pub async fn accounted_by<M: GrantMethod, R: Borrow<AccessRequest>, S: Borrow<AccessRole>>(
    method: &M,
    requests: &[R],
    roles: &[S],
    except: Option<&str>,
    now: Timestamp,
) -> Result<HashSet<Held>, GrantError> {
    let mut accounted = HashSet::new();
    for request in requests {
        let request: &AccessRequest = request.borrow();
        if except.is_some() && request.metadata.uid.as_deref() == except {
            continue;
        }
        let Some(role) = role_named(roles, &request.spec.role) else {
            continue;
        };
        if role.spec.method != method.method() || may_hold_now(role, request, now).is_err() {
            continue;
        }
        accounted.extend(accounted_for(method, Some(role), request).await?);
    }
    Ok(accounted)
}

/// What `held` contains that nothing in `accounted` accounts for, split in what to
/// remove and what to leave: with `ours` (watching one namespace), only what a request
/// of that namespace once accounted for is removed.
pub fn drift_among(
    held: Vec<Held>,
    accounted: &HashSet<Held>,
    ours: Option<&HashSet<Held>>,
) -> (Vec<Held>, Vec<Held>) {
    held.into_iter()
        .filter(|h| !accounted.contains(h))
        .partition(|h| ours.is_none_or(|ours| ours.contains(h)))
}

/// Everything the requests of `method`'s roles ever accounted for, ended or not: whose
/// grant a request of this operator's was (watching one namespace).
pub async fn ever_accounted_by<M: GrantMethod, R: Borrow<AccessRequest>, S: Borrow<AccessRole>>(
    method: &M,
    requests: &[R],
    roles: &[S],
) -> Result<HashSet<Held>, GrantError> {
    let mut ever = HashSet::new();
    for request in requests {
        let request: &AccessRequest = request.borrow();
        let Some(role) = role_named(roles, &request.spec.role) else {
            continue;
        };
        if role.spec.method == method.method() {
            ever.extend(accounted_for(method, Some(role), request).await?);
        }
    }
    Ok(ever)
}

/// Whether an AccessRole in `roles` grants the IAM role `role_arn` by trust policy.
fn names_role_arn<S: Borrow<AccessRole>>(roles: &[S], role_arn: &str) -> bool {
    roles.iter().map(Borrow::borrow).any(|r| {
        r.spec.method == crate::crd::GrantMethod::TrustPolicy && r.spec.role_arn == role_arn
    })
}

/// Whether `roles` holds an AccessRole of `role`'s name granting by the same method on
/// the same targets.
fn names_same_targets<S: Borrow<AccessRole>>(roles: &[S], role: &AccessRole) -> bool {
    role.metadata.name.as_deref().is_some_and(|name| {
        role_named(roles, name).is_some_and(|now| now.spec.same_targets(&role.spec))
    })
}

/// The AccessRole called `name` among `roles`.
fn role_named<'a, S: Borrow<AccessRole>>(roles: &'a [S], name: &str) -> Option<&'a AccessRole> {
    roles
        .iter()
        .map(Borrow::borrow)
        .find(|r: &&AccessRole| r.metadata.name.as_deref() == Some(name))
}

/// Ends `request`'s grant of `method` in place of its execution (stopped, failed): what
/// it recorded it made (else what its role says it would), unless another request that may hold it now accounts for it too
/// (one assignment, many grants). Returns what was removed.
pub async fn end_grant<M: GrantMethod, R: Borrow<AccessRequest>, S: Borrow<AccessRole>>(
    method: &M,
    role: Option<&AccessRole>,
    request: &AccessRequest,
    requests: &[R],
    roles: &[S],
) -> Result<Vec<Held>, GrantError> {
    let mine = accounted_for(method, role, request).await?;
    let others = accounted_by(
        method,
        requests,
        roles,
        request.metadata.uid.as_deref(),
        Timestamp::now(),
    )
    .await?;
    let mut removed = Vec::new();
    for held in mine {
        if others.contains(&held) {
            info!(held = %held.describe(), "kept: another live request accounts for it");
            continue;
        }
        if method.remove(&held).await? {
            removed.push(held);
        }
    }
    Ok(removed)
}

/// Judges one running execution of the state machine. Foreign is final only against
/// requests listed after the executions were (so a request always exists before its
/// execution is seen); against a cache it only makes a candidate. No clock is trusted: an execution whose request has not recorded one yet, and has not
/// ended, is left to the controller, which adopts it or marks the request tampered.
pub fn judge_execution(known: &Known<'_>, name: &str, arn: &str) -> ExecutionVerdict {
    let Some(uid) = name.strip_prefix("ar-") else {
        return ExecutionVerdict::Foreign(
            "its name is not one aws-jit gives (ar-<request uid>)".into(),
        );
    };
    let Some(request) = known.by_uid.get(uid) else {
        return ExecutionVerdict::Foreign("no AccessRequest has the uid it names".into());
    };
    let status = request.status.clone().unwrap_or_default();
    match status.execution_arn.as_deref() {
        Some(recorded) if recorded == arn => ExecutionVerdict::Ours,
        Some(recorded) => ExecutionVerdict::Foreign(format!("its request records {recorded}")),
        None if status.phase.is_some_and(Phase::is_terminal) => {
            ExecutionVerdict::Foreign("its request ended without ever recording it".into())
        }
        None => ExecutionVerdict::Young,
    }
}

/// The request a foreign execution's `input` passes itself off as: the request its
/// `request` identity names, when that identity is one a request can have and names a
/// known request by uid, namespace and name. An attacker writes that input, so it only
/// says whom to tell, never what to revoke.
pub fn impersonated<'a>(known: &Known<'a>, input: &str) -> Option<&'a AccessRequest> {
    #[derive(serde::Deserialize)]
    struct Claimed {
        request: crate::contract::RequestIdentity,
    }
    let claimed: Claimed = serde_json::from_str(input).ok()?;
    let identity = claimed.request;
    crate::policy::authorize::check_identity(&identity).ok()?;
    let request = known.by_uid.get(identity.uid.as_str()).copied()?;
    (request.metadata.namespace.as_deref() == Some(identity.namespace.as_str())
        && request.metadata.name.as_deref() == Some(identity.name.as_str()))
    .then_some(request)
}

/// The `Sid`s (with why) of the statements in `doc` that nothing accounts for.
pub fn drift_in(
    known: &Known<'_>,
    role_arn: &str,
    doc: &Document,
    now: Timestamp,
) -> Vec<(String, String)> {
    let ours: HashMap<String, GrantInfo> = trust_policy::grants(doc)
        .into_iter()
        .map(|g| (g.sid.clone(), g))
        .collect();
    let mut drift = Vec::new();
    for sid in trust_policy::prefixed_sids(doc) {
        match judge_statement(known, role_arn, &sid, ours.get(&sid), now) {
            StatementVerdict::Keep => {}
            StatementVerdict::Unknown => warn!(
                %role_arn, %sid,
                "a statement for a request this operator cannot see (another namespace or \
                 installation?); left to its expiry"
            ),
            // Inert; the worker sweeps them with its next edit of the role.
            StatementVerdict::Expired => {}
            StatementVerdict::Drift(why) => drift.push((sid, why)),
        }
    }
    drift
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Step Functions {call}: {message}")]
    StepFunctions { call: &'static str, message: String },
    #[error("cannot read how the approval of request {uid} was answered: {message}")]
    Answer { uid: String, message: String },
}

/// How the controller answered a request's approval task, as its token Secret records
/// it, by request uid.
#[derive(Clone)]
pub struct Answers(Arc<dyn Fn(String) -> AnswerRead + Send + Sync>);

/// One read of [`Answers`]: the answer, or why it cannot be read.
pub type AnswerRead = futures::future::BoxFuture<'static, Result<RecordedAnswer, String>>;

impl Answers {
    pub fn new(read: impl Fn(String) -> AnswerRead + Send + Sync + 'static) -> Self {
        Self(Arc::new(read))
    }
}

impl std::fmt::Debug for Answers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Answers")
    }
}

/// The sweeper's I/O.
pub struct Sweeper {
    pub client: kube::Client,
    pub sfn: aws_sdk_sfn::Client,
    pub state_machine_arn: String,
    pub worker: Worker,
    pub scope: Scope,
    pub watch_namespace: Option<String>,
    pub metrics: Arc<Metrics>,
    pub alerts: crate::aws::alerts::SecurityAlerts,
    pub interval: Duration,
    /// The methods the state machine performs, as the operator sees them.
    pub methods: Arc<Methods>,
    /// The controller's caches of requests and roles, where the sweep finds candidates.
    pub caches: Option<Caches>,
    /// The approval answers the controller recorded: read for requests whose votes deny
    /// while a grant may have been made ([`denied_after_a_possible_answer`]).
    pub answers: Answers,
}

/// The controller's caches (its watches, without managedFields), each with whether it
/// can be read (synced, its watch working).
#[derive(Clone)]
pub struct Caches {
    pub requests: Store<AccessRequest>,
    pub requests_synced: crate::cache::Synced,
    pub roles: Store<AccessRole>,
    pub roles_synced: crate::cache::Synced,
}

/// How long a sweep waits for the controller's caches to sync before it reads live.
const CACHE_WAIT: Duration = Duration::from_secs(30);

/// A sweep reads everything live, caches or not, when the last live read is this old: a
/// watch stuck without an error (a connection that hangs) would otherwise hide drift its
/// cache calls kept, as long as it stays stuck. Wall time, not a count of sweeps, so a
/// longer sweep interval does not stretch it (every sweep is live at an hour or more).
const LIVE_AFTER: Duration = Duration::from_secs(3600);

/// The grant methods the state machine performs, for the sweep and for ending a grant
/// whose execution ended without it.
#[derive(Debug)]
pub struct Methods {
    pub identity_center: IdentityCenterGrants,
    pub iam_group: IamGroupGrants,
}

/// Where a sweep finds its candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    Caches,
    Live,
}

/// What one sweep removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// (role, Sid, why) of statements removed as drift.
    pub statements: Vec<(String, String, String)>,
    /// (execution ARN, why) of executions stopped.
    pub executions: Vec<(String, String)>,
    /// Assignments and memberships removed as drift.
    pub held: Vec<Held>,
}

impl Sweeper {
    /// Sweeps now, then every `interval`, until `shutdown`.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut read_live_at = tokio::time::Instant::now();
        loop {
            let read = if read_live_at.elapsed() >= LIVE_AFTER {
                Read::Live
            } else {
                Read::Caches
            };
            let result = self.sweep_reading(read).await;
            // A live sweep that failed is due again at once (next interval).
            if read == Read::Live && result.is_ok() {
                read_live_at = tokio::time::Instant::now();
            }
            match result {
                Ok(swept) if swept == Swept::default() => info!("drift sweep: nothing to remove"),
                Ok(swept) => warn!(
                    statements = swept.statements.len(),
                    executions = swept.executions.len(),
                    assignments_and_memberships = swept.held.len(),
                    "drift sweep removed what nothing approved"
                ),
                Err(e) => warn!(error = %e, "drift sweep failed; trying again next time"),
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// The requests this operator sees and every AccessRole, read now from the API.
    async fn read_live(
        &self,
    ) -> Result<(Vec<Arc<AccessRequest>>, Vec<Arc<AccessRole>>), SweepError> {
        let requests_api: Api<AccessRequest> = match &self.watch_namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let requests = crate::cache::list_stripped(&requests_api).await?;
        let roles: Vec<Arc<AccessRole>> =
            crate::cache::list_stripped(&Api::<AccessRole>::all(self.client.clone()))
                .await?
                .into_iter()
                .map(Arc::new)
                .collect();
        let mut settled = Vec::with_capacity(requests.len());
        for request in requests {
            settled.push(Arc::new(
                self.as_the_controller_sees(request, &roles).await?,
            ));
        }
        Ok((settled, roles))
    }

    /// `request` with the approval the controller answered, when its status and votes do
    /// not show it ([`as_answered`]). A read that fails fails the live read, and with it
    /// every removal it would confirm this sweep (such requests are few: voted Deny,
    /// not yet ended).
    async fn as_the_controller_sees(
        &self,
        request: AccessRequest,
        roles: &[Arc<AccessRole>],
    ) -> Result<AccessRequest, SweepError> {
        let Some(uid) = request.metadata.uid.clone() else {
            return Ok(request);
        };
        if !denied_after_a_possible_answer(&request, roles) {
            return Ok(request);
        }
        let recorded = (self.answers.0)(uid.clone())
            .await
            .map_err(|message| SweepError::Answer { uid, message })?;
        Ok(as_answered(&request, &recorded).unwrap_or(request))
    }

    /// The requests and roles to find candidates in: the controller's caches when they
    /// can be read (synced, their watches working: no second copy of thousands of
    /// requests), else read live. Nothing is removed or stopped on the word of a cache:
    /// every candidate is judged again on a live read ([`Sweeper::read_live`]).
    async fn read_first(
        &self,
        read: Read,
    ) -> Result<(Vec<Arc<AccessRequest>>, Vec<Arc<AccessRole>>), SweepError> {
        if let (Some(caches), Read::Caches) = (&self.caches, read) {
            if caches.requests_synced.within(CACHE_WAIT).await
                && caches.roles_synced.within(CACHE_WAIT).await
            {
                return Ok((caches.requests.state(), caches.roles.state()));
            }
            warn!(
                "the controller's caches cannot be read (not synced, or their watch failing); the drift sweep reads live"
            );
        }
        self.read_live().await
    }

    /// One sweep, finding candidates in the caches.
    pub async fn sweep(&self) -> Result<Swept, SweepError> {
        self.sweep_reading(Read::Caches).await
    }

    /// One sweep; `aws_jit_drift_removed_total{kind}` counts each removal once (one
    /// stopped execution may be reported on two requests).
    async fn sweep_reading(&self, read: Read) -> Result<Swept, SweepError> {
        let swept = self.sweep_once(read).await?;
        for _ in &swept.statements {
            self.metrics.drift_removed("statement");
        }
        for _ in &swept.executions {
            self.metrics.drift_removed("execution");
        }
        for held in &swept.held {
            self.metrics.drift_removed(held.kind());
        }
        Ok(swept)
    }

    async fn sweep_once(&self, read: Read) -> Result<Swept, SweepError> {
        // Executions first: the requests that confirm an execution is foreign are read
        // live after they were listed, so a request always shows before its execution.
        let executions = self.running_executions().await?;
        let (requests, roles) = self.read_first(read).await?;
        let complete = self.watch_namespace.is_none();
        let known = Known::new(&requests, &roles, complete);
        let mut swept = Swept::default();
        // Every role an AccessRole names; watching one namespace, only the roles its
        // requests use (statements of requests it cannot see are not its to judge).
        let used: HashSet<&str> = requests.iter().map(|r| r.spec.role.as_str()).collect();
        let mut managed: Vec<&str> = roles
            .iter()
            .filter(|r| r.spec.method == crate::crd::GrantMethod::TrustPolicy)
            .filter(|r| complete || r.metadata.name.as_deref().is_some_and(|n| used.contains(n)))
            .map(|r| r.spec.role_arn.as_str())
            .filter(|arn| self.scope.check_role(arn).is_ok())
            .collect();
        managed.sort_unstable();
        managed.dedup();
        for role_arn in managed {
            match self.sweep_role(&known, role_arn).await {
                Ok(removed) => {
                    for (sid, why, request) in removed {
                        self.report(
                            "statement",
                            "DriftRemoved",
                            request.as_ref(),
                            &format!(
                                "removed statement {sid} from the trust policy of {role_arn}: {why}"
                            ),
                        )
                        .await;
                        swept.statements.push((role_arn.to_owned(), sid, why));
                    }
                }
                Err(e) => warn!(%role_arn, error = %e, "cannot sweep this role's trust policy"),
            }
        }
        for role in roles.iter().filter(|r| {
            r.spec.method != crate::crd::GrantMethod::TrustPolicy
                && r.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| complete || used.contains(n))
        }) {
            let name = role.metadata.name.clone().unwrap_or_default();
            let removed = match role.spec.method {
                crate::crd::GrantMethod::IdentityCenter => {
                    self.sweep_held(&self.methods.identity_center, role, &requests, &roles)
                        .await
                }
                crate::crd::GrantMethod::IamGroup => {
                    self.sweep_held(&self.methods.iam_group, role, &requests, &roles)
                        .await
                }
                crate::crd::GrantMethod::TrustPolicy => Ok(Vec::new()),
            };
            match removed {
                Ok(removed) => swept.held.extend(removed),
                Err(e) => warn!(role = %name, error = %e, "cannot sweep this AccessRole's grants"),
            }
        }
        // Foreign on the cache's word is only a candidate: a request's status may not be
        // in the cache yet. Judged again on requests read after the executions were.
        let candidates: Vec<&(String, String)> = executions
            .iter()
            .filter(|(arn, name)| {
                matches!(
                    judge_execution(&known, name, arn),
                    ExecutionVerdict::Foreign(_)
                )
            })
            .collect();
        if !candidates.is_empty() {
            let (requests, roles) = match self.read_live().await {
                Ok(fresh) => fresh,
                Err(e) => {
                    warn!(error = %e, "cannot read requests afresh; no execution stopped");
                    return Ok(swept);
                }
            };
            let fresh = Known::new(&requests, &roles, complete);
            for (arn, name) in candidates {
                let ExecutionVerdict::Foreign(why) = judge_execution(&fresh, name, arn) else {
                    continue;
                };
                let named = name
                    .strip_prefix("ar-")
                    .and_then(|uid| fresh.by_uid.get(uid).copied());
                let stopped = self.stop_foreign(arn).await;
                let done = if stopped {
                    "stopped"
                } else {
                    "could not stop (tried again next sweep)"
                };
                // One that passes itself off as a request (its input names one) is
                // the finding the consumer reports when it refuses that execution's
                // task: ForeignExecution, on the request its input names. The request
                // its name squats, if another, is told as drift.
                let impersonated = self
                    .input_of(arn)
                    .await
                    .and_then(|input| impersonated(&fresh, &input));
                if let Some(request) = impersonated {
                    self.report(
                        "execution",
                        "ForeignExecution",
                        Some(request),
                        &format!(
                            "{done} execution {arn}, which aws-jit did not start: its input \
                         names this request ({why}); nothing is granted from it"
                        ),
                    )
                    .await;
                }
                let squatted =
                    named.filter(|n| impersonated.is_none_or(|i| i.metadata.uid != n.metadata.uid));
                if impersonated.is_none() || squatted.is_some() {
                    self.report("execution", "DriftRemoved", squatted, &format!(
                        "{done} execution {arn}, which aws-jit did not start for a request it knows: {why}"
                    ))
                    .await;
                }
                swept.executions.push((arn.clone(), why));
            }
        }
        Ok(swept)
    }

    /// Judges and edits one role's trust policy under the worker's lock for the role.
    /// What the (older) caches or lists call drift is judged again on requests read
    /// afresh, after the policy was read under the lock: a grant made since, or a
    /// request created since, is never taken for drift. Returns what was removed, with
    /// why and the request concerned as read afresh.
    async fn sweep_role(
        &self,
        known: &Known<'_>,
        role_arn: &str,
    ) -> Result<
        Vec<(String, String, Option<AccessRequest>)>,
        crate::grant::trust_policy::worker::WorkerError,
    > {
        let concerned: std::sync::Mutex<HashMap<String, AccessRequest>> = Default::default();
        let removed = self
            .worker
            .edit_trust_policy(role_arn, |doc: Document| {
                let concerned = &concerned;
                async move {
                    let candidates = drift_in(known, role_arn, &doc, Timestamp::now());
                    if candidates.is_empty() {
                        return candidates;
                    }
                    let (requests, roles) = match self.read_live().await {
                        Ok(fresh) => fresh,
                        Err(e) => {
                            warn!(%role_arn, error = %e, "cannot read requests afresh; removing nothing");
                            return Vec::new();
                        }
                    };
                    if !names_role_arn(&roles, role_arn) {
                        info!(%role_arn, "no AccessRole names this role now; its trust policy is not swept");
                        return Vec::new();
                    }
                    let fresh = Known::new(&requests, &roles, known.complete);
                    let confirmed: Vec<(String, String)> =
                        drift_in(&fresh, role_arn, &doc, Timestamp::now())
                            .into_iter()
                            .filter(|(sid, _)| candidates.iter().any(|(s, _)| s == sid))
                            .collect();
                    if let Ok(mut c) = concerned.lock() {
                        for (sid, _) in &confirmed {
                            if let Some(r) = fresh.request_of_sid(sid) {
                                c.insert(sid.clone(), r.clone());
                            }
                        }
                    }
                    confirmed
                }
            })
            .await?;
        let mut concerned = concerned
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(removed
            .into_iter()
            .map(|(sid, why)| {
                let request = concerned.remove(&sid);
                (sid, why, request)
            })
            .collect())
    }

    /// Removes, from what exists on `role`'s targets, what no request that may hold a
    /// grant now accounts for: judged on the lists, then again on requests read afresh
    /// (a grant approved since the lists is never taken for drift). Watching one
    /// namespace, only what a request of that namespace once accounted for is removed
    /// (its grant ended); the rest may be another namespace's and is only reported.
    async fn sweep_held<M: GrantMethod>(
        &self,
        method: &M,
        role: &AccessRole,
        requests: &[Arc<AccessRequest>],
        roles: &[Arc<AccessRole>],
    ) -> Result<Vec<Held>, GrantError> {
        let held = method.held(role).await?;
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let accounted = accounted_by(method, requests, roles, None, Timestamp::now()).await?;
        let ours = match self.watch_namespace {
            None => None,
            Some(_) => Some(ever_accounted_by(method, requests, roles).await?),
        };
        let (candidates, left) = drift_among(held, &accounted, ours.as_ref());
        for h in &left {
            warn!(held = %h.describe(), "nothing this operator sees accounts for it (another namespace's request?); left");
        }
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let (fresh_requests, fresh_roles) = self
            .read_live()
            .await
            .map_err(|e| GrantError::Target(format!("cannot read requests afresh: {e}")))?;
        // The targets listed are the (older) cache's: an AccessRole deleted or pointed
        // at other targets since would have its old group's or permission set's holders,
        // permanent ones too, taken for drift.
        if !names_same_targets(&fresh_roles, role) {
            info!(
                role = role.metadata.name.as_deref().unwrap_or_default(),
                "this AccessRole is gone or names other targets now; what its old targets hold is not swept"
            );
            return Ok(Vec::new());
        }
        let fresh = accounted_by(
            method,
            &fresh_requests,
            &fresh_roles,
            None,
            Timestamp::now(),
        )
        .await?;
        // Watching one namespace, "ours" is judged afresh too: a request gone since the
        // caches no longer makes a holding this installation's to remove.
        let fresh_ours = match self.watch_namespace {
            None => None,
            Some(_) => Some(ever_accounted_by(method, &fresh_requests, &fresh_roles).await?),
        };
        let mut removed = Vec::new();
        for h in candidates.into_iter().filter(|h| {
            !fresh.contains(h) && fresh_ours.as_ref().is_none_or(|ours| ours.contains(h))
        }) {
            match method.remove(&h).await {
                // Gone meanwhile (its execution's own revoke): nothing to report.
                Ok(false) => {}
                Ok(true) => {
                    let note = format!(
                        "removed {}: no approved, unended request accounts for it",
                        h.describe()
                    );
                    self.report(h.kind(), "DriftRemoved", None, &note).await;
                    removed.push(h);
                }
                Err(e) => {
                    warn!(held = %h.describe(), error = %e, "cannot remove drift; trying again next sweep")
                }
            }
        }
        Ok(removed)
    }

    async fn running_executions(&self) -> Result<Vec<(String, String)>, SweepError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .sfn
                .list_executions()
                .state_machine_arn(&self.state_machine_arn)
                .status_filter(aws_sdk_sfn::types::ExecutionStatus::Running)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| SweepError::StepFunctions {
                    call: "ListExecutions",
                    message: aws_sdk_sfn::error::DisplayErrorContext(e).to_string(),
                })?;
            for e in page.executions() {
                out.push((e.execution_arn().to_owned(), e.name().to_owned()));
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    /// Stops a foreign execution. Nothing is revoked from what its input says (an
    /// attacker writes that input); statements are judged on their own, above. Whether
    /// it was stopped.
    async fn stop_foreign(&self, arn: &str) -> bool {
        let stopped = self
            .sfn
            .stop_execution()
            .execution_arn(arn)
            .error("aws-jit.Foreign")
            .cause("aws-jit: not started by aws-jit for a request it knows (drift sweep)")
            .send()
            .await;
        match stopped {
            Ok(_) => true,
            Err(e) => {
                warn!(execution_arn = %arn, error = %aws_sdk_sfn::error::DisplayErrorContext(e), "cannot stop the foreign execution");
                false
            }
        }
    }

    /// The input of execution `arn`, or None when it cannot be read (then it is
    /// reported as drift naming no request).
    async fn input_of(&self, arn: &str) -> Option<String> {
        match self
            .sfn
            .describe_execution()
            .execution_arn(arn)
            .send()
            .await
        {
            Ok(out) => out.input().map(str::to_owned),
            Err(e) => {
                warn!(execution_arn = %arn, error = %aws_sdk_sfn::error::DisplayErrorContext(e), "cannot read the foreign execution's input");
                None
            }
        }
    }

    /// Logs and reports one removal: a security alert `finding` (naming the request, if
    /// any) and a Warning Event of that reason on the request.
    async fn report(
        &self,
        kind: &'static str,
        finding: &'static str,
        request: Option<&AccessRequest>,
        note: &str,
    ) {
        error!(kind, finding, note, "drift removed");
        let identity = request.and_then(|r| {
            Some(crate::contract::RequestIdentity {
                namespace: r.metadata.namespace.clone()?,
                name: r.metadata.name.clone()?,
                uid: r.metadata.uid.clone()?,
            })
        });
        self.alerts.send(finding, identity.as_ref(), note).await;
        let Some(request) = request else {
            return;
        };
        let recorder = Recorder::new(
            self.client.clone(),
            Reporter {
                controller: "aws-jit-controller".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        let ev = Event {
            type_: EventType::Warning,
            reason: finding.into(),
            note: Some(crate::aws::sfn::truncate(note, 1024).to_owned()),
            action: "Sweep".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, &request.object_ref(&())).await {
            warn!(error = %e, "cannot publish the drift event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/jit/prod-admin";
    const UID: &str = "0b5f7a4e-9c1d-4e2b-8f3a-1d2c3b4a5f6e";
    const ALICE: &str = "arn:aws:iam::123456789012:user/alice";

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn role() -> AccessRole {
        serde_json::from_value(json!({
            "apiVersion": "aws-jit.io/v1alpha1", "kind": "AccessRole",
            "metadata": {"name": "prod-admin"},
            "spec": {"roleArn": ROLE_ARN, "approvers": [{"user": "carol"}],
                     "requesters": [{"user": "alice"}],
                     "principal": {"template": "arn:aws:iam::123456789012:user/{username}"}}
        }))
        .unwrap()
    }

    fn request(status: serde_json::Value) -> AccessRequest {
        serde_json::from_value(json!({
            "apiVersion": "aws-jit.io/v1alpha1", "kind": "AccessRequest",
            "metadata": {"name": "fix", "namespace": "team", "uid": UID},
            "spec": {"role": "prod-admin", "requester": "alice", "duration": "30m", "reason": "x"},
            "status": status
        }))
        .unwrap()
    }

    fn info(principal: &str, expires: &str) -> GrantInfo {
        GrantInfo {
            sid: trust_policy::sid_for(UID).unwrap(),
            principal: principal.into(),
            expires_at: ts(expires),
            session: None,
        }
    }

    fn judge(status: serde_json::Value, g: Option<&GrantInfo>, complete: bool) -> StatementVerdict {
        let requests = [request(status)];
        let roles = [role()];
        let known = Known::new(&requests, &roles, complete);
        let sid = trust_policy::sid_for(UID).unwrap();
        judge_statement(&known, ROLE_ARN, &sid, g, ts("2026-12-01T10:00:00Z"))
    }

    fn is_drift(v: &StatementVerdict) -> bool {
        matches!(v, StatementVerdict::Drift(_))
    }

    #[test]
    fn an_active_grant_as_approved_is_kept() {
        let g = info(ALICE, "2026-12-01T10:30:00Z");
        let status = json!({"phase": "Active", "expiresAt": "2026-12-01T10:30:00Z"});
        assert_eq!(judge(status, Some(&g), true), StatementVerdict::Keep);
        // Granted, status not written yet: the votes approve it.
        let status = json!({"phase": "AwaitingApproval",
            "approvals": [{"approver": "carol", "decision": "Approve"}]});
        assert_eq!(judge(status, Some(&g), true), StatementVerdict::Keep);
    }

    #[test]
    fn what_nothing_approved_accounts_for_is_drift() {
        let g = info(ALICE, "2026-12-01T10:30:00Z");
        // Not approved.
        assert!(is_drift(&judge(
            json!({"phase": "AwaitingApproval"}),
            Some(&g),
            true
        )));
        // Ended: the revoke was lost.
        assert!(is_drift(&judge(
            json!({"phase": "Expired"}),
            Some(&g),
            true
        )));
        // Someone else's principal.
        let mallory = info(
            "arn:aws:iam::123456789012:user/mallory",
            "2026-12-01T10:30:00Z",
        );
        assert!(is_drift(&judge(
            json!({"phase": "Active"}),
            Some(&mallory),
            true
        )));
        // Longer than granted.
        let longer = info(ALICE, "2026-12-01T22:00:00Z");
        let status = json!({"phase": "Active", "expiresAt": "2026-12-01T10:30:00Z"});
        assert!(is_drift(&judge(status, Some(&longer), true)));
        let status = json!({"phase": "Approved"});
        assert!(
            is_drift(&judge(status, Some(&longer), true)),
            "30m from now at most"
        );
        // A lookalike statement.
        assert!(is_drift(&judge(json!({"phase": "Active"}), None, false)));
    }

    #[test]
    fn unknown_requests_are_drift_only_when_every_request_is_seen() {
        let requests: [AccessRequest; 0] = [];
        let roles = [role()];
        let g = info(ALICE, "2026-12-01T10:30:00Z");
        let now = ts("2026-12-01T10:00:00Z");
        let all = Known::new(&requests, &roles, true);
        assert!(is_drift(&judge_statement(
            &all,
            ROLE_ARN,
            &g.sid,
            Some(&g),
            now
        )));
        let some = Known::new(&requests, &roles, false);
        assert_eq!(
            judge_statement(&some, ROLE_ARN, &g.sid, Some(&g), now),
            StatementVerdict::Unknown
        );
        let expired = info(ALICE, "2026-12-01T09:00:00Z");
        assert_eq!(
            judge_statement(&all, ROLE_ARN, &g.sid, Some(&expired), now),
            StatementVerdict::Expired
        );
    }

    #[test]
    fn an_answered_approval_stands_against_a_later_deny_until_its_expiry() {
        let mut two = role();
        two.spec.approvers =
            serde_json::from_value(json!([{"user": "carol"}, {"user": "dave"}])).unwrap();
        let roles = [two.clone()];
        let carol = json!({"approver": "carol", "decision": "Approve"});
        let dave = json!({"approver": "dave", "decision": "Deny"});
        let late = request(json!({"phase": "AwaitingApproval", "approvals": [carol, dave]}));
        let recorded = |answer: Option<&str>, until: Option<&str>| RecordedAnswer {
            answer: answer.map(str::to_owned),
            approved_until: until.map(str::to_owned),
        };
        // Its votes deny now: the record is read, and an approval recorded makes it the
        // grant that approval allows, until the expiry it fixed.
        assert!(denied_after_a_possible_answer(&late, &roles));
        assert!(approved_and_unended(&two, &late).is_err());
        let now = ts("2026-12-01T10:00:00Z");
        for answer in ["approving", "approved"] {
            let settled = as_answered(&late, &recorded(Some(answer), Some("2026-12-01T10:30:00Z")))
                .expect(answer);
            assert_eq!(approved_and_unended(&two, &settled), Ok(()), "{answer}");
            let known_requests = [settled];
            let k = Known::new(&known_requests, &roles, true);
            let sid = trust_policy::sid_for(UID).unwrap();
            let within = info(ALICE, "2026-12-01T10:30:00Z");
            assert_eq!(
                judge_statement(&k, ROLE_ARN, &sid, Some(&within), now),
                StatementVerdict::Keep
            );
            // Past what the approval allowed (beyond the clocks' slack): drift.
            let longer = info(ALICE, "2026-12-01T12:00:00Z");
            assert!(is_drift(&judge_statement(
                &k,
                ROLE_ARN,
                &sid,
                Some(&longer),
                now
            )));
        }
        for (answer, until) in [
            (None, Some("2026-12-01T10:30:00Z")),
            (Some("denied"), Some("2026-12-01T10:30:00Z")),
            (Some("cancelled"), Some("2026-12-01T10:30:00Z")),
            (Some("too-late"), Some("2026-12-01T10:30:00Z")),
            (Some("approving"), None),
            (Some("approving"), Some("soon")),
        ] {
            assert!(
                as_answered(&late, &recorded(answer, until)).is_none(),
                "{answer:?} {until:?}"
            );
        }
        // Nothing to read where status settles it or the votes do not deny.
        for settled in [
            request(json!({"phase": "Active", "approvals": [dave]})),
            request(json!({"phase": "Approved", "approvals": [dave]})),
            request(json!({"phase": "Denied", "approvals": [carol, dave]})),
            request(json!({"phase": "AwaitingApproval", "approvals": [carol]})),
            request(json!({"phase": "AwaitingApproval"})),
        ] {
            assert!(
                !denied_after_a_possible_answer(&settled, &roles),
                "{:?}",
                settled.status
            );
        }
        // A request of an AccessRole that is gone is drift whatever its record.
        assert!(!denied_after_a_possible_answer(&late, &[] as &[AccessRole]));
    }

    #[test]
    fn a_foreign_input_names_a_request_only_by_its_whole_identity() {
        let known_requests = [request(json!({"phase": "AwaitingApproval"}))];
        let roles: [AccessRole; 0] = [];
        let k = Known::new(&known_requests, &roles, true);
        let input = |ns: &str, name: &str, uid: &str| {
            json!({"requester_arn": "arn:aws:iam::123456789012:user/mallory",
                   "request": {"namespace": ns, "name": name, "uid": uid}})
            .to_string()
        };
        let found = impersonated(&k, &input("team", "fix", UID)).map(|r| r.metadata.name.clone());
        assert_eq!(found, Some(Some("fix".to_string())));
        // Anything short of the request's whole identity names nobody.
        for other in [
            input("other", "fix", UID),
            input("team", "other", UID),
            input("team", "fix", "1b5f7a4e-9c1d-4e2b-8f3a-1d2c3b4a5f6e"),
            input("team", "fix", "../../x"),
            r#"{"request": "team/fix"}"#.to_string(),
            "not json".to_string(),
            "{}".to_string(),
        ] {
            assert!(impersonated(&k, &other).is_none(), "{other}");
        }
    }

    #[test]
    fn executions_are_ours_only_when_their_request_recorded_them() {
        let arn = format!("arn:aws:states:us-east-1:123456789012:execution:sm:ar-{UID}");
        let recorded = [request(json!({"phase": "Active", "executionArn": arn}))];
        let elsewhere = [request(json!({"phase": "Active", "executionArn": "arn:x"}))];
        let ended = [request(json!({"phase": "Failed"}))];
        let pending = [request(json!({"phase": "Pending"}))];
        let none: [AccessRequest; 0] = [];
        let roles = [role()];
        let name = format!("ar-{UID}");
        let k = Known::new(&recorded, &roles, false);
        assert_eq!(judge_execution(&k, &name, &arn), ExecutionVerdict::Ours);
        assert!(matches!(
            judge_execution(&k, "mallory", "arn:x"),
            ExecutionVerdict::Foreign(_)
        ));
        for requests in [&elsewhere[..], &ended[..], &none[..]] {
            let k = Known::new(requests, &roles, false);
            assert!(matches!(
                judge_execution(&k, &name, &arn),
                ExecutionVerdict::Foreign(_)
            ));
        }
        let k = Known::new(&pending, &roles, false);
        assert_eq!(judge_execution(&k, &name, &arn), ExecutionVerdict::Young);
    }

    fn membership(user: &str) -> Held {
        Held::Membership {
            group_name: "admins".into(),
            user_name: user.into(),
        }
    }

    #[test]
    fn drift_is_what_nothing_accounts_for_and_one_namespace_removes_only_its_own() {
        let held = vec![
            membership("alice"),
            membership("bob"),
            membership("mallory"),
        ];
        let accounted: HashSet<Held> = [membership("alice")].into();
        let (remove, left) = drift_among(held.clone(), &accounted, None);
        assert_eq!(remove, vec![membership("bob"), membership("mallory")]);
        assert!(left.is_empty());
        // Watching one namespace: bob's request there ended; mallory's may be another's.
        let ours: HashSet<Held> = [membership("alice"), membership("bob")].into();
        let (remove, left) = drift_among(held, &accounted, Some(&ours));
        assert_eq!(remove, vec![membership("bob")]);
        assert_eq!(left, vec![membership("mallory")]);
    }

    #[test]
    fn only_approved_unended_unexpired_requests_may_hold_a_grant() {
        let now = ts("2026-03-01T10:00:00Z");
        let active = request(json!({"phase": "Active", "expiresAt": "2026-03-01T11:00:00Z"}));
        assert_eq!(may_hold_now(&role(), &active, now), Ok(()));
        // Past its expiry (beyond the clock slack): the execution's revoke is due.
        let past = request(json!({"phase": "Active", "expiresAt": "2026-03-01T09:00:00Z"}));
        assert!(may_hold_now(&role(), &past, now).is_err());
        // Within the slack it still may (clocks differ).
        let just = request(json!({"phase": "Active", "expiresAt": "2026-03-01T09:59:00Z"}));
        assert_eq!(may_hold_now(&role(), &just, now), Ok(()));
        for phase in ["Revoked", "Expired", "Denied", "Failed"] {
            let ended = request(json!({"phase": phase}));
            assert!(may_hold_now(&role(), &ended, now).is_err(), "{phase}");
        }
        let waiting = request(json!({"phase": "AwaitingApproval"}));
        assert!(may_hold_now(&role(), &waiting, now).is_err());
        // Approved while the answer is on its way (granting).
        let approved = request(json!({"phase": "Approved"}));
        assert_eq!(may_hold_now(&role(), &approved, now), Ok(()));
    }

    #[test]
    fn only_targets_an_access_role_names_now_are_swept() {
        let before = role();
        assert!(names_role_arn(std::slice::from_ref(&before), ROLE_ARN));
        assert!(names_same_targets(std::slice::from_ref(&before), &before));
        // Gone since.
        let none: [AccessRole; 0] = [];
        assert!(!names_role_arn(&none, ROLE_ARN));
        assert!(!names_same_targets(&none, &before));
        // Pointed at another role since.
        let mut moved = before.clone();
        moved.spec.role_arn = "arn:aws:iam::123456789012:role/jit/other".into();
        assert!(!names_role_arn(&[moved.clone()], ROLE_ARN));
        assert!(!names_same_targets(&[moved], &before));
        // Another of its fields changed: the targets are the same.
        let mut longer = before.clone();
        longer.spec.approvals_required = 2;
        assert!(names_same_targets(&[longer], &before));
        // Another role's name on the same targets is not this role.
        let mut renamed = before.clone();
        renamed.metadata.name = Some("renamed".into());
        assert!(!names_same_targets(&[renamed.clone()], &before));
        assert!(names_role_arn(&[renamed], ROLE_ARN));
    }
}
