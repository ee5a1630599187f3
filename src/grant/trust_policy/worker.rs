//! The trust-policy worker: consumes the FIFO work queue (one message group per target
//! role, see `deploy/aws/README.md`) and performs the `grant` and `revoke` work items of
//! the `TrustPolicy` method with IAM, then answers the execution with the item's task
//! token.
//!
//! The editing itself is [`crate::grant::trust_policy::document`] (pure); this module is the
//! read-modify-write around it (`GetRole` → edit → `UpdateAssumeRolePolicy`), the answer
//! to Step Functions, and the SQS message lifecycle. Two writers to one role never race:
//! while a message of a group (a role) is in flight, SQS FIFO gives no other message of
//! that group to anyone, and the messages of one group that arrive in one receive are
//! worked on one after the other, in order. Different groups (roles) are worked on
//! concurrently.
//!
//! # Grant
//!
//! First the grant is put to Kubernetes ([`crate::aws::authority`]): the item must be the
//! request's own recorded execution, the request approved, unended and unrevoked, and the
//! item's input exactly what Kubernetes derives from the request and its AccessRole; what
//! is granted is Kubernetes' answer, never the message's. A refusal grants nothing and
//! fails the task. Then, under the role's lock (shared with revokes and the drift
//! sweeper): `GetRole` → [`trust_policy::parse`] → [`trust_policy::sweep`] (expired
//! statements do not count against the size limit) → [`trust_policy::grant`] for the
//! request's uid, its principal, expiry `now + duration_seconds` (whole seconds) →
//! `UpdateAssumeRolePolicy` → `SendTaskSuccess` with a [`GrantOutput`]. A grant that
//! cannot be made (role not found, policy too large, access denied, malformed ARN, …)
//! changes nothing and answers `GrantFailed` with the reason as the cause; the state
//! machine then revokes anyway.
//!
//! **Idempotency.** A work item can be delivered twice (e.g. the answer was lost, or the
//! message could not be deleted). A grant never moves an expiry the first grant set:
//! - our statement for the request is already there, unexpired, for the same principal:
//!   nothing is written, and the answer repeats the first grant (its `expires_at`, and
//!   `granted_at = expires_at - duration_seconds`, which is exactly the first grant's
//!   time because both are whole seconds);
//! - it is there but expired: the grant already ran its course; the item is answered
//!   `GrantFailed` (no second window), and the revoke that follows sweeps the statement;
//! - it is there for another principal: `GrantFailed`, nothing changed.
//!
//! FIFO order makes the window for anything else small: the revoke of a request sits
//! behind its grant in the same message group, so it cannot remove the statement before a
//! redelivered grant is seen.
//!
//! # Revoke
//!
//! `GetRole` → [`trust_policy::revoke`] (the request's statement, plus every expired one
//! of ours) → `UpdateAssumeRolePolicy` if anything was removed → `SendTaskSuccess` with a
//! [`RevokeOutput`]. Revoking what is not there is a success, and so is a role that no
//! longer exists. A revoke works from `input` alone (after a failed grant there is no
//! `grant`), and whatever `input.method` says (removing a statement of ours is always
//! safe).
//!
//! # Read your own writes
//!
//! IAM is eventually consistent: a `GetRole` right after `UpdateAssumeRolePolicy` may
//! return the document from before it, and a read-modify-write built on that (a grant
//! right after a revoke) would write the removed statement back. So after each write the
//! worker reads the role back, with back-off, until IAM returns the document it wrote
//! (compared parsed, not as text), and only then lets go of the role's lock. A write not
//! shown within [`Worker::with_consistency_wait`] (10 s) is a transient error: the work
//! item is retried (grant and revoke are idempotent), and it is logged and counted
//! (`aws_jit_trust_policy_unconfirmed_writes_total`). Until IAM shows that write, every
//! later read of the role waits for it the same way, and fails the same way, so no work
//! item of the role (another request's grant, the drift sweeper) builds on a read that
//! may be older; after six waits (a minute) with IAM showing something else, someone
//! else wrote the policy, and the worker goes on with what IAM returns. This is one
//! process's memory: a new leader's first read of a role just written by the old one is
//! not checked.
//!
//! # Errors and the message lifecycle
//!
//! - Transient errors (throttling, IAM service faults, transport), and any failure to
//!   deliver the answer to Step Functions: no answer, the message stays and comes back
//!   after a back-off by its receive count ([`Worker::with_retry_delay`], set with
//!   `ChangeMessageVisibility`, see [`crate::aws::consumer`]); after 5 receives SQS moves
//!   it to the dead-letter queue and the task times out in the state machine
//!   (`WorkTaskTimeoutSeconds`), which revokes.
//! - Permanent errors: `SendTaskFailure` (`GrantFailed` / `RevokeFailed`) with a cause a
//!   person understands.
//! - A message is deleted only after its answer was delivered, or Step Functions said the
//!   task is over (`TaskTimedOut`, `TaskDoesNotExist`, `InvalidToken`).
//! - A message that is not a work item (not JSON, unknown `type`, no task token) is poison:
//!   it is logged and moved to the work dead-letter queue (same message group, a
//!   deduplication id derived from its message id, its reason as a message attribute),
//!   then deleted, so its FIFO group is not blocked behind it. Without a dead-letter URL it
//!   is left for SQS's own redrive (`maxReceiveCount` 5), made visible again after a short
//!   delay so that takes seconds, not five visibility timeouts. A work item with a known
//!   `type` and a task token whose other fields do not parse is not poison: it is answered
//!   with a failure, so its execution moves on at once.
//! - If a message cannot be finished (not answered, or not deleted), the later messages
//!   of the same execution in that receive are not worked on: they are made visible
//!   again at once, and SQS FIFO delivers them only after the one that stayed, so a
//!   revoke never overtakes its grant. Later messages of other executions in the group
//!   are worked on (different requests' items commute), so one stuck or poison message
//!   neither blocks a role's other work nor drags it to the dead-letter queue by adding
//!   receives to it.
//! - A grant answered `AlreadyOver` is checked against its execution: if that has ended
//!   (stopped, failed, timed out), nothing would revoke the statement just written or
//!   found, so it is revoked at once; if it still runs, it holds the grant or its revoke
//!   follows in the same message group.

use crate::aws::consumer::{Consumer, Dispatch, Handler, Queue, Retries, Verdict};
use crate::aws::retry::Backoff;
use crate::faults::{self, Faults};
use crate::telemetry::metrics::queue;
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use aws_sdk_iam::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::Message;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{Instrument, Span, error, info, warn};

use crate::aws::sfn::{ExecutionState, StepFunctionClient, TaskAnswer};
use crate::contract::{ExecutionInput, ExtendOutput, GrantOutput, WorkTask, errors};
use crate::grant::trust_policy::document::{self as trust_policy, Document, TrustPolicyError};

/// SQS's longest long poll.
const MAX_WAIT_TIME: Duration = Duration::from_secs(20);
/// First back-off of a transient failure; doubled per receive, up to
/// [`RETRY_DOUBLINGS`] times, each with up to as much again of jitter
/// ([`crate::aws::retry`]). With 5 receives before the dead-letter queue the tries span
/// (8+16+32+64 s) to twice that, 120-240 s, inside the template's default
/// `WorkTaskTimeoutSeconds` (300).
const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(8);
const RETRY_DOUBLINGS: u32 = 3;
/// How long (in pauses between reads) a trust-policy write may take to show in IAM's
/// reads before the work item is left for a retry instead; see
/// [`Worker::with_consistency_wait`].
const DEFAULT_CONSISTENCY_WAIT: Duration = Duration::from_secs(10);
/// First and longest pause between two reads of a write not shown yet (jittered).
const MIN_READ_BACK_DELAY: Duration = Duration::from_millis(100);
const MAX_READ_BACK_DELAY: Duration = Duration::from_secs(2);
/// For how many consistency waits after a write IAM did not show the role's later reads
/// still wait for it (a minute by default): long enough to cover IAM lagging well past
/// one wait, short enough that a write someone else overwrote does not hold the role up
/// for longer than a work item's retries last.
const UNCONFIRMED_WAITS: u32 = 6;

/// The message attributes of what the worker dead-letters: why, and the id the message
/// had on the work queue.
pub use crate::aws::consumer::{DEAD_LETTER_REASON_ATTRIBUTE, SOURCE_MESSAGE_ID_ATTRIBUTE};

/// Why a work item could not be done. [`WorkerError::is_transient`] decides between
/// "try again later" and "answer the task with a failure"; the `Display` text is the
/// failure's cause, written for the people who read the alert.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(
        "{arn:?} is not an IAM role ARN \
         (arn:<partition>:iam::<12-digit account>:role/[<path>/]<name>)"
    )]
    MalformedRoleArn { arn: String },
    #[error("role {role} does not exist")]
    RoleNotFound { role: String },
    #[error("IAM denied {call} on role {role}: {message}")]
    AccessDenied {
        call: &'static str,
        role: String,
        message: String,
    },
    #[error("IAM {call} on role {role} failed: {code}: {message}")]
    Iam {
        call: &'static str,
        role: String,
        code: String,
        message: String,
        transient: bool,
    },
    #[error("role {role} has no trust policy in IAM's answer")]
    NoTrustPolicy { role: String },
    #[error("cannot change the trust policy of role {role}: {source}")]
    TrustPolicy {
        role: String,
        #[source]
        source: TrustPolicyError,
    },
    #[error("method {method:?} is not granted by the trust-policy worker (only \"TrustPolicy\")")]
    WrongMethod { method: String },
    #[error("duration_seconds {seconds} is not a usable duration (a positive number of seconds)")]
    BadDuration { seconds: u64 },
    #[error(
        "role {role} already has the statement {sid} for this request, granting {existing} \
         rather than the requester {requester}; refusing to change it"
    )]
    PrincipalMismatch {
        role: String,
        sid: String,
        existing: String,
        requester: String,
    },
    #[error(
        "the grant for this request on role {role} already ran and ended at {expired_at} \
         (statement {sid}); a redelivered grant does not grant again"
    )]
    AlreadyExpired {
        role: String,
        sid: String,
        expired_at: String,
    },
    #[error("the approved expiry {expires_at} cannot be granted: {why}")]
    BadExpiry { expires_at: String, why: String },
    #[error(
        "the sessions' deny policy {policy} is not in place on role {role} as the state \
         machine writes it ({found}); nothing is granted without it"
    )]
    NoSessionDeny {
        role: String,
        policy: String,
        found: String,
        /// Not there (yet): IAM may not show the state machine's write at once, so the
        /// item is tried again (its task's timeout bounds the tries).
        missing: bool,
    },
    #[error("the grant task is over (timed out or its execution ended); nothing was written")]
    TaskOver,
    #[error(
        "role {role} has no live statement {sid} of this request to extend (its grant is \
         gone or has ended); nothing was written"
    )]
    NothingToExtend { role: String, sid: String },
    #[error("access is ended, but its session cleanup could not be started: {0}")]
    CleanupNotStarted(String),
    #[error("Step Functions: {0}")]
    Sfn(#[from] crate::aws::sfn::SfnError),
    #[error("the work item is malformed: {reason}")]
    MalformedTask { reason: String },
    /// Kubernetes does not back the grant (or cannot be asked yet).
    #[error("refused: {0}")]
    NotAuthorized(#[from] crate::aws::authority::AuthorityError),
    #[error("SQS {call} failed: {message}")]
    Sqs { call: &'static str, message: String },
    /// IAM is eventually consistent: it accepted the write, but its reads kept returning
    /// something else for as long as the worker waited.
    #[error(
        "IAM does not show the trust policy last written to role {role} after {waited:?} \
         (last read: {seen}); trying the work again later"
    )]
    NotConfirmed {
        role: String,
        waited: Duration,
        /// What the last read returned: "a different document" or the read's error.
        seen: String,
    },
}

impl WorkerError {
    /// True for errors worth trying again later rather than failing the task.
    pub fn is_transient(&self) -> bool {
        match self {
            WorkerError::Iam { transient, .. } => *transient,
            WorkerError::Sqs { .. } | WorkerError::NotConfirmed { .. } => true,
            WorkerError::NotAuthorized(e) => e.is_transient(),
            WorkerError::Sfn(e) => e.is_transient(),
            WorkerError::NoSessionDeny { missing, .. } => *missing,
            _ => false,
        }
    }

    fn iam<E, R>(call: &'static str, role: &str, err: &SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let role = role.to_owned();
        let Some(service) = err.as_service_error() else {
            // Construction, dispatch, timeout, unreadable response: nothing IAM decided.
            return WorkerError::Iam {
                call,
                role,
                code: "Transport".to_owned(),
                message: aws_sdk_iam::error::DisplayErrorContext(err).to_string(),
                transient: true,
            };
        };
        let code = service.code().unwrap_or("Unknown");
        let message = service.message().unwrap_or_default().to_owned();
        match code {
            "NoSuchEntity" => WorkerError::RoleNotFound { role },
            "AccessDenied" | "AccessDeniedException" => WorkerError::AccessDenied {
                call,
                role,
                message,
            },
            _ => WorkerError::Iam {
                call,
                role,
                code: code.to_owned(),
                message,
                transient: is_transient_iam_code(code),
            },
        }
    }
}

/// IAM error codes that say "not now" rather than "no".
fn is_transient_iam_code(code: &str) -> bool {
    matches!(
        code,
        "Throttling"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "ServiceFailure"
            | "ServiceFailureException"
            | "ServiceUnavailable"
            | "ServiceUnavailableException"
            | "InternalFailure"
            | "InternalError"
            | "ConcurrentModification"
            | "RequestTimeout"
            | "RequestTimeoutException"
    )
}

/// The worker's answer to a revoke task.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RevokeOutput {
    /// When the revoke ran (RFC 3339, whole seconds).
    pub revoked_at: String,
    /// The `Sid`s of this request's statements that were removed; empty when there was
    /// nothing to revoke.
    pub removed: Vec<String>,
    /// The `Sid`s of other requests' expired statements swept on the way.
    pub swept: Vec<String>,
}

/// What the worker answered a task with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Granted(GrantOutput),
    Extended(ExtendOutput),
    Revoked(RevokeOutput),
    /// `SendTaskFailure` with this error (one of [`crate::contract::errors`]) and cause.
    Failed {
        error: String,
        cause: String,
    },
}

// One per message, returned at once: the size of a variant costs nothing.
#[allow(clippy::large_enum_variant)]
/// What became of one work-queue message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The task was answered (or was already over): the message can go.
    Answered {
        answer: Answer,
        delivery: TaskAnswer,
    },
    /// Something transient went wrong; nothing was answered. Keep the message: it comes
    /// back after a back-off.
    Retry { reason: String },
    /// Not a work item at all: dead-letter it.
    Poison { reason: String },
}

/// The trust-policy worker. Build it with [`Worker::new`], then [`Worker::run`] it, or
/// give it one message body at a time with [`Worker::handle`].
#[derive(Clone, Debug)]
pub struct Worker {
    authority: crate::aws::authority::Authority,
    /// One lock per role: every read-modify-write of a trust policy in this process
    /// (grant, revoke, the drift sweeper) holds its role's.
    locks:
        std::sync::Arc<std::sync::Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>>,
    sqs: aws_sdk_sqs::Client,
    iam: aws_sdk_iam::Client,
    sfn: StepFunctionClient,
    queue_url: String,
    dead_letter_url: Option<String>,
    size_limit: usize,
    wait_time: Duration,
    retry_delay: Duration,
    consistency_wait: Duration,
    /// Per role: the last trust policy written that IAM did not show in time, and when.
    /// Until IAM shows it (or [`UNCONFIRMED_WAITS`] consistency waits pass), a read of the
    /// role that does not show it may be stale, and nothing is built on it.
    unconfirmed: std::sync::Arc<std::sync::Mutex<HashMap<String, (Document, std::time::Instant)>>>,
    faults: Faults,
    metrics: std::sync::Arc<crate::telemetry::metrics::Metrics>,
    /// Who is told that the worker answered a task that moves the execution on with
    /// no request task following (a failed grant, a revoke): the operator notes it on
    /// the request's token Secret, whose change wakes its reconcile (None: nobody is
    /// told; the controller's safety re-check finds the end).
    outcomes: Option<Outcomes>,
}

/// Told the request of each grant or revoke task the worker answered (see
/// [`Worker::with_outcomes`]). Best effort: it must not fail the answer.
#[derive(Clone)]
pub struct Outcomes(
    std::sync::Arc<
        dyn Fn(crate::contract::RequestIdentity) -> futures::future::BoxFuture<'static, ()>
            + Send
            + Sync,
    >,
);

impl Outcomes {
    pub fn new(
        tell: impl Fn(crate::contract::RequestIdentity) -> futures::future::BoxFuture<'static, ()>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Self(std::sync::Arc::new(tell))
    }
}

impl std::fmt::Debug for Outcomes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outcomes")
    }
}

impl Worker {
    /// A worker on the work queue `queue_url`, with IAM's default trust-policy size limit,
    /// 20-second long polls and no dead-letter URL (poison is left to SQS's redrive).
    /// Every grant is first put to `authority` (Kubernetes), and what it answers is what
    /// is granted.
    pub fn new(
        authority: crate::aws::authority::Authority,
        sqs: aws_sdk_sqs::Client,
        iam: aws_sdk_iam::Client,
        sfn: StepFunctionClient,
        queue_url: impl Into<String>,
    ) -> Self {
        Self {
            authority,
            locks: Default::default(),
            sqs,
            iam,
            sfn,
            queue_url: queue_url.into(),
            dead_letter_url: None,
            size_limit: trust_policy::DEFAULT_SIZE_LIMIT,
            wait_time: MAX_WAIT_TIME,
            retry_delay: DEFAULT_RETRY_DELAY,
            consistency_wait: DEFAULT_CONSISTENCY_WAIT,
            unconfirmed: Default::default(),
            faults: Faults::default(),
            metrics: Default::default(),
            outcomes: None,
        }
    }

    /// Tells `outcomes` when an answer moves an execution on with no request task to
    /// follow (a failed grant, a revoke).
    pub fn with_outcomes(mut self, outcomes: Outcomes) -> Self {
        self.outcomes = Some(outcomes);
        self
    }

    async fn tell(&self, request: &crate::contract::RequestIdentity) {
        if let Some(outcomes) = &self.outcomes {
            (outcomes.0)(request.clone()).await;
        }
    }

    /// Where the worker counts messages, grants and revokes.
    pub fn with_metrics(
        mut self,
        metrics: std::sync::Arc<crate::telemetry::metrics::Metrics>,
    ) -> Self {
        self.metrics = metrics;
        self
    }

    /// Crash points for tests (see [`crate::faults`]).
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Where poison messages go (the template's `WorkDeadLetterQueueUrl`). The operator
    /// needs `sqs:SendMessage` on it.
    pub fn with_dead_letter_url(mut self, url: impl Into<String>) -> Self {
        self.dead_letter_url = Some(url.into());
        self
    }

    /// The account's trust-policy size quota ([`trust_policy::DEFAULT_SIZE_LIMIT`] unless
    /// raised through Service Quotas, at most 4096 on AWS).
    pub fn with_size_limit(mut self, limit: usize) -> Self {
        self.size_limit = limit;
        self
    }

    /// How long one `ReceiveMessage` waits for messages: whole seconds, from 1 (never a
    /// busy loop of short polls) to 20 (SQS's longest).
    pub fn with_wait_time(mut self, wait: Duration) -> Self {
        self.wait_time = wait.clamp(Duration::from_secs(1), MAX_WAIT_TIME);
        self
    }

    /// The first back-off of a transiently failed message (doubled per receive, at most
    /// three times, each with up to as much again of jitter).
    pub fn with_retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// How long a trust-policy write may take to show in IAM's reads (10 s by default):
    /// after each write the worker reads the role back, pausing 0.1 s doubling to 2 s
    /// (up to twice that with jitter) between reads, for at most this long in pauses,
    /// and keeps the role's lock meanwhile. A write still not shown then leaves the work
    /// item for a retry, and until IAM shows it (for up to six such waits) every later
    /// read of the role waits for it the same way, so nothing is built on a read that
    /// may be older. `Duration::ZERO`: one read back, no pause.
    pub fn with_consistency_wait(mut self, wait: Duration) -> Self {
        self.consistency_wait = wait;
        self
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// Long-polls the work queue and works on what arrives until `shutdown` completes:
    /// [`crate::aws::consumer`], each message group (role) in order, the groups at once,
    /// retries handed back to the queue by receive count. A receive in progress at
    /// shutdown is let finish and its messages handed back; messages already received
    /// are finished first. Never returns early and never panics: receive errors are
    /// logged and retried with back-off.
    pub async fn run(&self, shutdown: impl Future) {
        info!(
            queue_url = %self.queue_url,
            dead_letter_url = self.dead_letter_url.as_deref().unwrap_or("(none: SQS redrive)"),
            size_limit = self.size_limit,
            "trust-policy worker started"
        );
        Consumer::new(
            std::sync::Arc::new(self.clone()),
            Queue::new(self.sqs.clone(), &self.queue_url),
            queue::WORK,
        )
        .with_dispatch(Dispatch::Groups)
        .with_retries(Retries::Release(retry_backoff(self.retry_delay)))
        .with_dead_letter(self.dead_letter_url.clone())
        .with_wait(self.wait_time)
        .with_metrics(self.metrics.clone())
        .run(shutdown)
        .await;
        info!(queue_url = %self.queue_url, "trust-policy worker stopped");
    }

    /// Works on one message body: grant or revoke, and answer the task. Does not touch the
    /// queue (see [`Outcome`] for what the caller should do with the message).
    pub async fn handle(&self, body: &str) -> Outcome {
        let parsed = classify(body);
        let span = task_span(&parsed, None);
        self.handle_parsed(parsed).instrument(span).await
    }

    async fn handle_parsed(&self, parsed: Result<Parsed, String>) -> Outcome {
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(reason) => {
                error!(%reason, "poison message on the work queue: not a work item");
                return Outcome::Poison { reason };
            }
        };
        match parsed {
            Parsed::Task(task) => match *task {
                WorkTask::Grant {
                    task_token,
                    execution_arn,
                    input,
                    approval,
                } => {
                    // Kubernetes says what may be granted; the message only says which
                    // request. A refusal grants nothing and fails the task.
                    let result = match self
                        .authority
                        .grant(queue::WORK, &execution_arn, &input)
                        .await
                    {
                        Ok(planned) => self
                            .grant(&planned, &approval, &task_token)
                            .await
                            .map(Answer::Granted),
                        Err(refused) => Err(WorkerError::from(refused)),
                    };
                    if let Err(WorkerError::TaskOver) = &result {
                        info!("the grant task was over before anything was written");
                        return Outcome::Answered {
                            answer: failure(errors::GRANT_FAILED, &WorkerError::TaskOver),
                            delivery: TaskAnswer::AlreadyOver,
                        };
                    }
                    let outcome = self
                        .answer(&task_token, self.settle(result, errors::GRANT_FAILED))
                        .await;
                    if let Outcome::Answered {
                        answer: Answer::Granted(_),
                        delivery: TaskAnswer::AlreadyOver,
                    } = &outcome
                    {
                        self.undo_if_orphaned(&input, &execution_arn).await;
                    }
                    // A failed grant moves the execution on (to its revoke, then its end)
                    // with no request task to follow.
                    if let Outcome::Answered {
                        answer: Answer::Failed { .. },
                        ..
                    } = &outcome
                    {
                        self.tell(&input.request).await;
                    }
                    outcome
                }
                WorkTask::Extend {
                    task_token,
                    execution_arn,
                    input,
                    extend,
                } => {
                    // Kubernetes says whether the extension was approved, and to when.
                    let until = extend.expires_at.parse::<Timestamp>().map_err(|_| {
                        WorkerError::BadExpiry {
                            expires_at: extend.expires_at.clone(),
                            why: "not an RFC 3339 timestamp".into(),
                        }
                    });
                    let result = match until {
                        Err(e) => Err(e),
                        Ok(until) => match self
                            .authority
                            .extend(queue::WORK, &execution_arn, &input, &extend.id, until)
                            .await
                        {
                            Ok(planned) => self
                                .extend(&planned, until, &task_token)
                                .await
                                .map(Answer::Extended),
                            Err(refused) => Err(WorkerError::from(refused)),
                        },
                    };
                    self.answer(&task_token, self.settle(result, errors::EXTEND_FAILED))
                        .await
                }
                WorkTask::Revoke {
                    task_token, input, ..
                } => {
                    let result = self.revoke(&input).await.map(Answer::Revoked);
                    let outcome = self
                        .answer(&task_token, self.settle(result, errors::REVOKE_FAILED))
                        .await;
                    if matches!(outcome, Outcome::Answered { .. }) {
                        self.tell(&input.request).await;
                    }
                    outcome
                }
            },
            Parsed::Malformed {
                kind,
                task_token,
                reason,
                ..
            } => {
                let err = WorkerError::MalformedTask { reason };
                error!(
                    error = %err,
                    "a {} work item that cannot be read; failing its task",
                    kind.as_str(),
                );
                self.answer(&task_token, Ok(failure(kind.error(), &err)))
                    .await
            }
        }
    }

    /// Sends the answer (`Err(reason)`: nothing to send yet, retry later).
    async fn answer(&self, token: &str, result: Result<Answer, String>) -> Outcome {
        let answer = match result {
            Ok(answer) => answer,
            Err(reason) => return Outcome::Retry { reason },
        };
        let delivered = match &answer {
            Answer::Granted(output) => self.sfn.send_success(token, output).await,
            Answer::Extended(output) => self.sfn.send_success(token, output).await,
            Answer::Revoked(output) => self.sfn.send_success(token, output).await,
            Answer::Failed { error, cause } => self.sfn.send_failure(token, error, cause).await,
        };
        match delivered {
            Ok(delivery) => {
                info!(?answer, ?delivery, "answered the task");
                Outcome::Answered { answer, delivery }
            }
            Err(err) => {
                // Whatever the kind: without an answer the message must stay. Grant and
                // revoke are idempotent, so the retry answers the same.
                let transient = err.is_transient();
                error!(
                    error = %err,
                    transient,
                    ?answer,
                    "cannot answer the task; keeping the message",
                );
                Outcome::Retry {
                    reason: err.to_string(),
                }
            }
        }
    }

    /// A grant was made (or found) for a task that is already over. If the execution
    /// still runs, it has moved on: it holds this grant (our first answer got through),
    /// or it timed the grant out and its revoke waits behind this message in the role's
    /// message group. If it has ended (stopped, timed out, failed), nothing will revoke
    /// the statement, so it is revoked here rather than left until its expiry.
    async fn undo_if_orphaned(&self, input: &ExecutionInput, execution_arn: &str) {
        let status = match self.sfn.describe(execution_arn).await {
            Ok(ExecutionState::Running) => {
                info!("the execution runs on: it holds this grant, or revokes it next");
                return;
            }
            Ok(ExecutionState::Succeeded { .. }) => "SUCCEEDED".to_owned(),
            Ok(ExecutionState::Failed { error, .. }) => format!("FAILED ({error})"),
            Ok(ExecutionState::Ended { status }) => status,
            Err(err) => {
                warn!(
                    error = %err,
                    "cannot tell whether the execution still runs; if it has ended, the grant \
                     lasts until its expiry"
                );
                return;
            }
        };
        warn!(%status, "the execution ended without taking this grant: revoking it now");
        match self.revoke(input).await {
            Ok(out) => info!(removed = ?out.removed, "revoked the grant of an ended execution"),
            Err(err) => error!(
                error = %err,
                "cannot revoke the grant of an ended execution; AWS ends it at its expiry"
            ),
        }
    }

    /// A grant or revoke result as the answer to send, or `Err(reason)` to retry later.
    fn settle(
        &self,
        result: Result<Answer, WorkerError>,
        error_name: &str,
    ) -> Result<Answer, String> {
        match result {
            Ok(answer) => Ok(answer),
            Err(err) if err.is_transient() => Err(err.to_string()),
            Err(err) => {
                error!(error = %err, "{error_name}: answering the task with a failure");
                Ok(failure(error_name, &err))
            }
        }
    }

    async fn grant(
        &self,
        input: &ExecutionInput,
        approval: &Value,
        task_token: &str,
    ) -> Result<GrantOutput, WorkerError> {
        if input.method != "TrustPolicy" {
            return Err(WorkerError::WrongMethod {
                method: input.method.clone(),
            });
        }
        let approved_until = approved_until(approval)?;
        let role = role_name(&input.role_arn)?;
        let session = trust_policy::SessionTerms {
            session_name: input.session_name.clone(),
            source_identity: input.source_identity.clone(),
        };
        let lock = self.lock(&role);
        let _edit = lock.lock().await;
        let now = Timestamp::now();
        let document = self.trust_policy(&role).await?;
        let plan = plan_grant(
            &document,
            &role,
            &input.request.uid,
            &input.requester_arn,
            &session,
            Some(approved_until),
            input.duration_seconds,
            now,
            self.size_limit,
        )?;
        if plan.document.is_some() {
            // Nothing is granted unless the deny that ends its sessions is in place,
            // with this grant's expiry; and only while the task still waits (a grant
            // written after its task timed out would be nobody's to revoke).
            self.check_session_deny(&role, input, &plan.output.expires_at)
                .await?;
            if self.sfn.heartbeat(task_token).await? == TaskAnswer::AlreadyOver {
                return Err(WorkerError::TaskOver);
            }
        }
        for sid in &plan.lookalikes {
            warn!(
                %role,
                %sid,
                "a statement looks like aws-jit's but was edited by hand; left alone",
            );
        }
        match &plan.document {
            Some(updated) => {
                self.update_trust_policy(&role, updated).await?;
                info!(
                    %role,
                    principal = %input.requester_arn,
                    statement_id = %plan.output.statement_id,
                    expires_at = %plan.output.expires_at,
                    swept = ?plan.swept,
                    "granted: trust policy updated"
                );
            }
            None => info!(
                %role,
                statement_id = %plan.output.statement_id,
                expires_at = %plan.output.expires_at,
                "already granted (a redelivered grant): the expiry stays as the first grant set it"
            ),
        }
        self.faults.point(faults::points::AFTER_GRANT).await;
        Ok(plan.output)
    }

    /// Moves the request's statement to `until` (an approved extension), under the
    /// role's lock, once the sessions' deny says `until` (the execution writes it first,
    /// so access never outlives what AWS enforces) and only while the task waits.
    async fn extend(
        &self,
        input: &ExecutionInput,
        until: Timestamp,
        task_token: &str,
    ) -> Result<ExtendOutput, WorkerError> {
        if input.method != "TrustPolicy" {
            return Err(WorkerError::WrongMethod {
                method: input.method.clone(),
            });
        }
        let role = role_name(&input.role_arn)?;
        let session = trust_policy::SessionTerms {
            session_name: input.session_name.clone(),
            source_identity: input.source_identity.clone(),
        };
        let lock = self.lock(&role);
        let _edit = lock.lock().await;
        let document = self.trust_policy(&role).await?;
        let plan = plan_extend(
            &document,
            &role,
            &input.request.uid,
            &input.requester_arn,
            &session,
            until,
            Timestamp::now(),
            self.size_limit,
        )?;
        if let Some(updated) = &plan.document {
            match self
                .check_session_deny(&role, input, &plan.output.expires_at)
                .await
            {
                // IAM may still show the deny from before the execution's write.
                Err(WorkerError::NoSessionDeny {
                    role,
                    policy,
                    found,
                    ..
                }) => {
                    return Err(WorkerError::NoSessionDeny {
                        role,
                        policy,
                        found,
                        missing: true,
                    });
                }
                other => other?,
            }
            if self.sfn.heartbeat(task_token).await? == TaskAnswer::AlreadyOver {
                return Err(WorkerError::TaskOver);
            }
            self.update_trust_policy(&role, updated).await?;
            info!(
                %role,
                statement_id = %plan.output.statement_id,
                expires_at = %plan.output.expires_at,
                "extended: trust policy updated"
            );
        }
        Ok(plan.output)
    }

    /// The request's deny policy on the role must be exactly the state machine's
    /// "deny after the expiry" for this grant ([`crate::grant::trust_policy::session::deny_document`]).
    async fn check_session_deny(
        &self,
        role: &str,
        input: &ExecutionInput,
        expires_at: &str,
    ) -> Result<(), WorkerError> {
        let refused = |found: &str, missing: bool| WorkerError::NoSessionDeny {
            role: role.to_owned(),
            policy: input.session_policy_name.clone(),
            found: found.to_owned(),
            missing,
        };
        if input.session_policy_name.is_empty() || input.session_name.is_empty() {
            return Err(refused("the execution names no deny policy", false));
        }
        let out = match self
            .iam
            .get_role_policy()
            .role_name(role)
            .policy_name(&input.session_policy_name)
            .send()
            .await
        {
            Ok(out) => out,
            Err(err) => {
                return match WorkerError::iam("iam:GetRolePolicy", role, &err) {
                    // NoSuchEntity names the policy here, not the role.
                    WorkerError::RoleNotFound { .. } => Err(refused("no such policy", true)),
                    other => Err(other),
                };
            }
        };
        match crate::grant::trust_policy::session::deny_state(
            out.policy_document(),
            &input.session_name,
            expires_at,
        ) {
            crate::grant::trust_policy::session::DenyState::Expiring => Ok(()),
            crate::grant::trust_policy::session::DenyState::Revoked => {
                Err(refused("already tightened: revoked", false))
            }
            crate::grant::trust_policy::session::DenyState::Other => {
                Err(refused("another document", false))
            }
        }
    }

    /// Ends a grant now, whatever became of its execution: the sessions' deny is
    /// tightened to "deny now" (so live sessions end), the trust statement goes, and the
    /// session cleanup is started (it removes the deny once no session can be alive).
    /// Idempotent; for the controller when an execution ended without revoking.
    pub async fn end_access(
        &self,
        input: &ExecutionInput,
        expires_at: &str,
        granted: bool,
        cleanup: &CleanupTarget,
    ) -> Result<EndedAccess, WorkerError> {
        let role = role_name(&input.role_arn)?;
        let session_name = crate::grant::trust_policy::session::session_name(&input.request.uid)
            .map_err(|e| WorkerError::MalformedTask {
                reason: e.to_string(),
            })?;
        let policy = crate::grant::trust_policy::session::policy_name(&input.request.uid);
        // 1. Tighten the deny, if there is one to tighten; whatever happens, go on.
        let tightened = self
            .tighten_session_deny(&role, &policy, &session_name, expires_at, granted)
            .await;
        // 2. The statement goes, whatever became of the deny.
        let revoked = self.revoke(input).await;
        // 3. The cleanup removes the deny once no session can be alive.
        let cleaned = match &tightened {
            Ok(Some(DenyCleanup {
                expires_at: expiry,
                max_session_seconds,
                ..
            })) => self
                .sfn
                .start_cleanup(
                    &cleanup.state_machine_arn,
                    &crate::aws::sfn::execution_name(&input.request.uid),
                    &serde_json::json!({
                        "role_name": role,
                        "session_policy_name": policy,
                        "session_name": session_name,
                        "expires_at": expiry,
                        "max_session_seconds": max_session_seconds,
                    }),
                )
                .await
                .map_err(|e| WorkerError::CleanupNotStarted(e.to_string())),
            _ => Ok(()),
        };
        let revoked = revoked?;
        let tightened = tightened?.is_some_and(|c| c.tightened);
        cleaned?;
        Ok(EndedAccess { revoked, tightened })
    }

    /// Makes the request's deny "deny now" and returns what the cleanup needs: its expiry,
    /// the role's `MaxSessionDuration`, and whether the deny is now tightened. A missing
    /// deny is written only for a grant that was made (`granted`: someone removed it) and
    /// while one of its sessions could still be alive. `None` when there is nothing to
    /// do: no deny and never granted (the worker grants nothing without one), or no deny
    /// and every session over (no deny is written that nobody would remove).
    async fn tighten_session_deny(
        &self,
        role: &str,
        policy: &str,
        session_name: &str,
        expires_at: &str,
        granted: bool,
    ) -> Result<Option<DenyCleanup>, WorkerError> {
        let existing = match self
            .iam
            .get_role_policy()
            .role_name(role)
            .policy_name(policy)
            .send()
            .await
        {
            Ok(out) => Some(out.policy_document().to_owned()),
            Err(err) => match WorkerError::iam("iam:GetRolePolicy", role, &err) {
                // NoSuchEntity: the role, or here the policy.
                WorkerError::RoleNotFound { .. } => None,
                other => return Err(other),
            },
        };
        // The deny's own expiry wins over the caller's guess: it is the grant's.
        let expiry = existing
            .as_deref()
            .and_then(crate::grant::trust_policy::session::deny_expiry)
            .map(|t| t.to_string())
            .unwrap_or_else(|| expires_at.to_owned());
        let max_session_seconds = self.max_session_seconds(role).await?;
        let over = expiry
            .parse::<Timestamp>()
            .ok()
            .and_then(|e| {
                e.checked_add(SignedDuration::from_secs(i64::from(max_session_seconds)))
                    .ok()
            })
            .is_some_and(|end| end <= Timestamp::now());
        let cleanup = |tightened| DenyCleanup {
            expires_at: expiry.clone(),
            max_session_seconds,
            tightened,
        };
        if over {
            info!(%role, %policy, "every session of the grant is over: nothing to tighten");
            return Ok(existing.map(|_| cleanup(false)));
        }
        if existing.is_none() && !granted {
            info!(%role, %policy, "no sessions' deny and nothing granted: nothing to tighten");
            return Ok(None);
        }
        if existing.as_deref().is_some_and(|doc| {
            crate::grant::trust_policy::session::deny_state(doc, session_name, &expiry)
                == crate::grant::trust_policy::session::DenyState::Revoked
        }) {
            return Ok(Some(cleanup(true)));
        }
        let document =
            crate::grant::trust_policy::session::deny_document(session_name, &expiry, true);
        match self
            .iam
            .put_role_policy()
            .role_name(role)
            .policy_name(policy)
            .policy_document(document.to_string())
            .send()
            .await
        {
            Ok(_) => {
                info!(%role, %policy, "sessions' deny tightened: the grant's sessions end now");
                Ok(Some(cleanup(true)))
            }
            Err(err) => match WorkerError::iam("iam:PutRolePolicy", role, &err) {
                WorkerError::RoleNotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    /// The role's `MaxSessionDuration` (IAM's default, 3600, for a role that is gone).
    async fn max_session_seconds(&self, role: &str) -> Result<i32, WorkerError> {
        match self.iam.get_role().role_name(role).send().await {
            Ok(out) => Ok(out
                .role()
                .and_then(|r| r.max_session_duration())
                .unwrap_or(3600)),
            Err(err) => match WorkerError::iam("iam:GetRole", role, &err) {
                WorkerError::RoleNotFound { .. } => Ok(3600),
                other => Err(other),
            },
        }
    }

    async fn revoke(&self, input: &ExecutionInput) -> Result<RevokeOutput, WorkerError> {
        self.faults.point(faults::points::BEFORE_REVOKE).await;
        let role = role_name(&input.role_arn)?;
        let lock = self.lock(&role);
        let _edit = lock.lock().await;
        let now = Timestamp::now();
        let nothing = || RevokeOutput {
            revoked_at: whole_seconds(now).to_string(),
            removed: Vec::new(),
            swept: Vec::new(),
        };
        let document = match self.trust_policy(&role).await {
            Err(WorkerError::RoleNotFound { .. }) => {
                info!(%role, "the role does not exist (any more): nothing to revoke");
                return Ok(nothing());
            }
            other => other?,
        };
        let plan = plan_revoke(&document, &input.request.uid, now);
        for sid in &plan.lookalikes {
            warn!(
                %role,
                %sid,
                "a statement looks like aws-jit's but was edited by hand; left alone",
            );
        }
        let Some(updated) = &plan.document else {
            info!(%role, "nothing of this request in the trust policy: nothing to revoke");
            return Ok(plan.output);
        };
        match self.update_trust_policy(&role, updated).await {
            Err(WorkerError::RoleNotFound { .. }) => {
                info!(%role, "the role was deleted while revoking: nothing to revoke");
                Ok(nothing())
            }
            Err(err) => Err(err),
            Ok(()) => {
                info!(
                    %role,
                    removed = ?plan.output.removed,
                    swept = ?plan.output.swept,
                    "revoked: trust policy updated"
                );
                Ok(plan.output)
            }
        }
    }

    fn lock(&self, role: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        match self.locks.lock() {
            Ok(mut locks) => locks.entry(role.to_owned()).or_default().clone(),
            // A panic elsewhere poisoned the map: a fresh lock still orders this
            // process's own edits of the role from here on.
            Err(poisoned) => poisoned
                .into_inner()
                .entry(role.to_owned())
                .or_default()
                .clone(),
        }
    }

    /// Removes the statements `choose` picks (by `Sid`, with a reason) from the trust
    /// policy of `role_arn`, under the role's lock: `choose` sees the policy as IAM has
    /// it now and may read Kubernetes afresh, and no grant or revoke of this process
    /// runs until the edit is written. Returns what was removed. For the drift sweeper.
    pub async fn edit_trust_policy<F, Fut>(
        &self,
        role_arn: &str,
        choose: F,
    ) -> Result<Vec<(String, String)>, WorkerError>
    where
        F: FnOnce(Document) -> Fut,
        Fut: Future<Output = Vec<(String, String)>>,
    {
        let role = role_name(role_arn)?;
        let lock = self.lock(&role);
        let _edit = lock.lock().await;
        let document = match self.trust_policy(&role).await {
            Err(WorkerError::RoleNotFound { .. }) => return Ok(Vec::new()),
            other => other?,
        };
        let chosen = choose(document.clone()).await;
        let sids: Vec<String> = chosen.iter().map(|(sid, _)| sid.clone()).collect();
        let (updated, removed) = trust_policy::remove_sids(&document, &sids);
        if removed.is_empty() {
            return Ok(Vec::new());
        }
        self.update_trust_policy(&role, &updated).await?;
        Ok(chosen
            .into_iter()
            .filter(|(sid, _)| removed.contains(sid))
            .collect())
    }

    /// The role's trust policy, to build an edit on. If an earlier write of ours to the
    /// role was not shown in time, IAM must show it first: a read that does not may be
    /// older than that write (a revoke not yet seen would be written back).
    async fn trust_policy(&self, role: &str) -> Result<Document, WorkerError> {
        match self.unconfirmed_write(role) {
            Some(written) => {
                info!(%role, "an earlier write to this role is not shown yet; waiting for it");
                self.confirm_trust_policy(role, &written).await
            }
            None => self.read_trust_policy(role).await,
        }
    }

    /// The last write to `role` IAM did not show, unless [`UNCONFIRMED_WAITS`] consistency
    /// waits have passed since: then it is let go (someone else may have written the
    /// policy since), with a warning.
    fn unconfirmed_write(&self, role: &str) -> Option<Document> {
        let mut unconfirmed = self
            .unconfirmed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (written, since) = unconfirmed.get(role)?;
        let horizon = self.consistency_wait.saturating_mul(UNCONFIRMED_WAITS);
        if since.elapsed() <= horizon {
            return Some(written.clone());
        }
        warn!(
            %role,
            waited = ?since.elapsed(),
            "IAM never showed the trust policy last written to this role (someone else may \
             have written it since); going on with what IAM returns"
        );
        unconfirmed.remove(role);
        None
    }

    /// Records (`Some`) or clears (`None`) the write to `role` IAM did not show. A write
    /// already recorded keeps its time, so waiting for it again does not extend it.
    fn set_unconfirmed(&self, role: &str, written: Option<&Document>) {
        let mut unconfirmed = self
            .unconfirmed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match written {
            None => {
                unconfirmed.remove(role);
            }
            Some(doc) if unconfirmed.get(role).is_some_and(|(d, _)| d == doc) => {}
            Some(doc) => {
                self.metrics.trust_policy_unconfirmed_writes.inc();
                unconfirmed.insert(role.to_owned(), (doc.clone(), std::time::Instant::now()));
            }
        }
    }

    /// `GetRole`, parsed.
    async fn read_trust_policy(&self, role: &str) -> Result<Document, WorkerError> {
        let out = self
            .iam
            .get_role()
            .role_name(role)
            .send()
            .await
            .map_err(|e| WorkerError::iam("iam:GetRole", role, &e))?;
        let text = out
            .role()
            .and_then(|r| r.assume_role_policy_document())
            .ok_or_else(|| WorkerError::NoTrustPolicy {
                role: role.to_owned(),
            })?;
        trust_policy::parse(text).map_err(|source| WorkerError::TrustPolicy {
            role: role.to_owned(),
            source,
        })
    }

    async fn update_trust_policy(
        &self,
        role: &str,
        document: &Document,
    ) -> Result<(), WorkerError> {
        self.iam
            .update_assume_role_policy()
            .role_name(role)
            .policy_document(trust_policy::to_json(document))
            .send()
            .await
            .map_err(|e| WorkerError::iam("iam:UpdateAssumeRolePolicy", role, &e))?;
        // IAM is eventually consistent: a read right after the write may still return
        // the document before it, and the next read-modify-write of the role (a grant
        // after a revoke) would build on that and write a removed statement back. So the
        // role's lock, which the caller holds, is kept until IAM shows the write.
        self.confirm_trust_policy(role, document).await.map(drop)
    }

    /// Reads `role` back until IAM returns `written`, pausing with back-off between
    /// reads, for at most the consistency wait in pauses, and returns what it read.
    /// Transient read errors count as "not shown yet"; others end the wait with that
    /// error. A write not shown is remembered for the role's later reads
    /// ([`Worker::trust_policy`]); one shown clears what was remembered.
    async fn confirm_trust_policy(
        &self,
        role: &str,
        written: &Document,
    ) -> Result<Document, WorkerError> {
        let started = std::time::Instant::now();
        let mut pauses = read_back_delays(self.consistency_wait);
        let mut stale_reads: u32 = 0;
        loop {
            let seen = match self.read_trust_policy(role).await {
                Ok(read) if shows_write(&read, written) => {
                    if stale_reads > 0 {
                        info!(
                            %role,
                            stale_reads,
                            waited = ?started.elapsed(),
                            "IAM shows the trust policy just written, after older reads"
                        );
                    }
                    self.set_unconfirmed(role, None);
                    return Ok(read);
                }
                Ok(_) => {
                    stale_reads += 1;
                    self.metrics.trust_policy_stale_reads.inc();
                    "a different document".to_owned()
                }
                Err(err) if err.is_transient() => err.to_string(),
                Err(err) => return Err(err),
            };
            let Some(pause) = pauses.next() else {
                self.set_unconfirmed(role, Some(written));
                let err = WorkerError::NotConfirmed {
                    role: role.to_owned(),
                    waited: started.elapsed(),
                    seen,
                };
                warn!(
                    %role,
                    stale_reads,
                    error = %err,
                    "IAM does not show the trust policy just written; the work item is retried"
                );
                return Err(err);
            };
            tokio::time::sleep(pause).await;
        }
    }
}

/// The worker's part of the work-queue loop ([`crate::aws::consumer`]): what a message
/// is worth. An answered task (or one already over) is done; a transient failure is
/// retried; a message that is not a work item is poison. The later messages of an
/// execution whose message stays go back behind it (its [`Handler::order_key`]), so a
/// revoke never overtakes its grant; other executions' items commute (each has its own
/// statement), so one stuck or poison message neither blocks a role's other work nor
/// drags it to the dead-letter queue by adding receives to it.
impl Handler for Worker {
    async fn handle_message(&self, message: &Message) -> Verdict {
        match self
            .handle_parsed(classify(message.body().unwrap_or_default()))
            .await
        {
            Outcome::Answered { delivery, answer } => {
                if delivery == TaskAnswer::AlreadyOver {
                    info!("the task was already over; removing its message");
                }
                self.metrics.grant(match answer {
                    Answer::Granted(_) => "granted",
                    Answer::Extended(_) => "extended",
                    Answer::Revoked(_) => "revoked",
                    Answer::Failed { .. } => "failed",
                });
                Verdict::Done
            }
            Outcome::Retry { reason } => Verdict::retry(reason),
            Outcome::Poison { reason } => Verdict::Poison(reason),
        }
    }

    fn span(&self, message: &Message) -> Span {
        task_span(
            &classify(message.body().unwrap_or_default()),
            message.message_id(),
        )
    }

    fn order_key(&self, message: &Message) -> Option<String> {
        execution_of(&classify(message.body().unwrap_or_default())).map(str::to_owned)
    }
}

/// The expiry the approval fixed (`approval.expires_at` of the grant item).
fn approved_until(approval: &Value) -> Result<Timestamp, WorkerError> {
    let text = approval
        .get("expires_at")
        .and_then(Value::as_str)
        .unwrap_or_default();
    text.parse::<Timestamp>()
        .map_err(|_| WorkerError::BadExpiry {
            expires_at: text.to_owned(),
            why: "the approval carries no expiry (an execution of an older definition?)".into(),
        })
}

/// What the cleanup of a request's deny needs to know.
#[derive(Debug, Clone)]
struct DenyCleanup {
    expires_at: String,
    max_session_seconds: i32,
    /// The deny says "deny now".
    tightened: bool,
}

/// What [`Worker::end_access`] did.
#[derive(Debug, Clone)]
pub struct EndedAccess {
    pub revoked: RevokeOutput,
    /// The sessions' deny now says "deny now" (false: there was none to tighten, e.g.
    /// nothing was ever granted, or every session was already over).
    pub tightened: bool,
}

/// Where the operator starts a grant's session cleanup itself (template output
/// `CleanupStateMachineArn`).
#[derive(Clone, Debug)]
pub struct CleanupTarget {
    pub state_machine_arn: String,
}

/// The name of the role an IAM role ARN names: the last path segment after `role/`
/// (`arn:aws:iam::123456789012:role/jit/admin` → `admin`).
pub fn role_name(role_arn: &str) -> Result<String, WorkerError> {
    crate::policy::arn::role(role_arn)
        .map(|(_, name)| name.to_owned())
        .ok_or_else(|| WorkerError::MalformedRoleArn {
            arn: role_arn.to_owned(),
        })
}

/// What a grant will do to a trust policy.
#[derive(Debug, Clone, PartialEq)]
pub struct GrantPlan {
    /// The document to write, or `None` when nothing changes (a redelivered grant).
    pub document: Option<Document>,
    /// The answer to the grant task.
    pub output: GrantOutput,
    /// Other requests' expired statements swept to make room.
    pub swept: Vec<String>,
    /// Statements that look like ours but are not (for a warning).
    pub lookalikes: Vec<String>,
}

/// The grant for `request_uid`, decided on `document` at `now` (pure; see the module's
/// notes on idempotency). `role` only names the role in errors.
#[allow(clippy::too_many_arguments)]
pub fn plan_grant(
    document: &Document,
    role: &str,
    request_uid: &str,
    principal_arn: &str,
    session: &trust_policy::SessionTerms,
    approved_until: Option<Timestamp>,
    duration_seconds: u64,
    now: Timestamp,
    size_limit: usize,
) -> Result<GrantPlan, WorkerError> {
    let policy_error = |source| WorkerError::TrustPolicy {
        role: role.to_owned(),
        source,
    };
    let sid = trust_policy::sid_for(request_uid).map_err(policy_error)?;
    let duration = i64::try_from(duration_seconds)
        .ok()
        .filter(|s| *s > 0)
        .map(SignedDuration::from_secs)
        .ok_or(WorkerError::BadDuration {
            seconds: duration_seconds,
        })?;
    let (swept_document, swept) = trust_policy::sweep(document, now);
    let swept_sids: Vec<String> = swept.removed.iter().map(|g| g.sid.clone()).collect();

    // A statement of ours under this Sid whose session terms are not this grant's (an
    // old-shape one, a hand edit) is not "already granted": its sessions would escape
    // the deny. It is rewritten in place below.
    if let Some(existing) = trust_policy::grants(document)
        .into_iter()
        .find(|g| g.sid == sid && g.session.as_ref() == Some(session))
    {
        if existing.principal != principal_arn {
            return Err(WorkerError::PrincipalMismatch {
                role: role.to_owned(),
                sid,
                existing: existing.principal,
                requester: principal_arn.to_owned(),
            });
        }
        if existing.expires_at <= now {
            return Err(WorkerError::AlreadyExpired {
                role: role.to_owned(),
                sid,
                expired_at: existing.expires_at.to_string(),
            });
        }
        // Redelivered: keep the first grant's expiry; its time was expiry - duration.
        let granted_at = existing
            .expires_at
            .checked_sub(duration)
            .map(|t| t.min(whole_seconds(now)))
            .unwrap_or_else(|_| whole_seconds(now));
        return Ok(GrantPlan {
            // Writing only to sweep would be a change this item did not need; the next
            // revoke on the role sweeps.
            document: None,
            output: GrantOutput {
                granted_at: granted_at.to_string(),
                expires_at: existing.expires_at.to_string(),
                statement_id: sid,
                ..Default::default()
            },
            swept: Vec::new(),
            lookalikes: swept.lookalikes,
        });
    }

    let granted_at = whole_seconds(now);
    let latest = granted_at
        .checked_add(duration)
        .map_err(|_| WorkerError::BadDuration {
            seconds: duration_seconds,
        })?;
    // The approval fixed the window (and the sessions' deny ends at that instant); it
    // can only be shorter than what Kubernetes allows from now, never longer.
    let expires_at = match approved_until {
        None => latest,
        Some(until) if until > latest => {
            return Err(WorkerError::BadExpiry {
                expires_at: until.to_string(),
                why: format!("later than now + the request's duration ({latest})"),
            });
        }
        Some(until) if until <= now => {
            return Err(WorkerError::BadExpiry {
                expires_at: until.to_string(),
                why: "already past: the grant came after the approved window".into(),
            });
        }
        Some(until) => whole_seconds(until),
    };
    let granted = trust_policy::grant(
        &swept_document,
        request_uid,
        principal_arn,
        session,
        expires_at,
        size_limit,
    )
    .map_err(policy_error)?;
    // The window's start (the approval), so a redelivered grant, which can only know
    // the expiry, answers exactly the same.
    let window_start = expires_at
        .checked_sub(duration)
        .map(|t| t.min(granted_at))
        .unwrap_or(granted_at);
    Ok(GrantPlan {
        document: Some(granted),
        output: GrantOutput {
            granted_at: window_start.to_string(),
            expires_at: expires_at.to_string(),
            statement_id: sid,
            ..Default::default()
        },
        swept: swept_sids,
        lookalikes: swept.lookalikes,
    })
}

/// What an extension will do to a trust policy.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtendPlan {
    /// The document to write, or `None` when the statement already says `until` (a
    /// redelivered item).
    pub document: Option<Document>,
    pub output: ExtendOutput,
}

/// The extension of `request_uid`'s statement to `until` on `document` at `now`
/// (pure): only a live statement of ours for this request, principal and session terms
/// is moved, to exactly `until`; everything else stays as it is.
#[allow(clippy::too_many_arguments)]
pub fn plan_extend(
    document: &Document,
    role: &str,
    request_uid: &str,
    principal_arn: &str,
    session: &trust_policy::SessionTerms,
    until: Timestamp,
    now: Timestamp,
    size_limit: usize,
) -> Result<ExtendPlan, WorkerError> {
    let policy_error = |source| WorkerError::TrustPolicy {
        role: role.to_owned(),
        source,
    };
    let sid = trust_policy::sid_for(request_uid).map_err(policy_error)?;
    let nothing = || WorkerError::NothingToExtend {
        role: role.to_owned(),
        sid: sid.clone(),
    };
    let existing = trust_policy::grants(document)
        .into_iter()
        .find(|g| g.sid == sid && g.session.as_ref() == Some(session))
        .ok_or_else(nothing)?;
    if existing.principal != principal_arn {
        return Err(WorkerError::PrincipalMismatch {
            role: role.to_owned(),
            sid,
            existing: existing.principal,
            requester: principal_arn.to_owned(),
        });
    }
    if existing.expires_at <= now {
        return Err(nothing());
    }
    let until = whole_seconds(until);
    let output = ExtendOutput {
        expires_at: until.to_string(),
        statement_id: sid.clone(),
    };
    // Exactly `until`, later or earlier: an earlier move that failed after its write
    // left a later date, which this one corrects.
    if existing.expires_at == until {
        return Ok(ExtendPlan {
            document: None,
            output,
        });
    }
    let extended = trust_policy::grant(
        document,
        request_uid,
        principal_arn,
        session,
        until,
        size_limit,
    )
    .map_err(policy_error)?;
    Ok(ExtendPlan {
        document: Some(extended),
        output,
    })
}

/// What a revoke will do to a trust policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RevokePlan {
    /// The document to write, or `None` when nothing is removed.
    pub document: Option<Document>,
    /// The answer to the revoke task.
    pub output: RevokeOutput,
    /// Statements that look like ours but are not (for a warning).
    pub lookalikes: Vec<String>,
}

/// The revoke of `request_uid` on `document` at `now` (pure): its statement goes, and
/// every expired statement of ours with it.
pub fn plan_revoke(document: &Document, request_uid: &str, now: Timestamp) -> RevokePlan {
    let own = trust_policy::sid_for(request_uid).ok();
    let (revoked, report) = trust_policy::revoke(document, request_uid, now);
    let (removed, swept): (Vec<String>, Vec<String>) = report
        .removed
        .into_iter()
        .map(|g| g.sid)
        .partition(|sid| own.as_deref() == Some(sid.as_str()));
    RevokePlan {
        document: (!removed.is_empty() || !swept.is_empty()).then_some(revoked),
        output: RevokeOutput {
            revoked_at: whole_seconds(now).to_string(),
            removed,
            swept,
        },
        lookalikes: report.lookalikes,
    }
}

/// A message body, read just far enough to know what to do with it.
#[derive(Debug)]
enum Parsed {
    Task(Box<WorkTask>),
    /// A known `type` with a task token, but the rest does not parse: answerable.
    Malformed {
        kind: Kind,
        task_token: String,
        /// As far as the body names it.
        execution_arn: Option<String>,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Grant,
    Extend,
    Revoke,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Grant => "grant",
            Kind::Extend => "extend",
            Kind::Revoke => "revoke",
        }
    }

    fn error(self) -> &'static str {
        match self {
            Kind::Grant => errors::GRANT_FAILED,
            Kind::Extend => errors::EXTEND_FAILED,
            Kind::Revoke => errors::REVOKE_FAILED,
        }
    }
}

/// `Err(reason)` for poison: not JSON, not an object, an unknown `type`, no task token.
fn classify(body: &str) -> Result<Parsed, String> {
    let value: Value =
        serde_json::from_str(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let kind = match value.get("type") {
        Some(Value::String(t)) if t == "grant" => Kind::Grant,
        Some(Value::String(t)) if t == "revoke" => Kind::Revoke,
        Some(Value::String(t)) if t == "extend" => Kind::Extend,
        Some(Value::String(t)) => return Err(format!("unknown work item type {t:?}")),
        Some(_) => return Err("the work item's type is not a string".to_owned()),
        None => return Err("the body has no type".to_owned()),
    };
    let task_token = match value.get("task_token") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        _ => return Err(format!("the {} work item has no task_token", kind.as_str())),
    };
    let execution_arn = value
        .get("execution_arn")
        .and_then(Value::as_str)
        .map(str::to_owned);
    match serde_json::from_value::<WorkTask>(value) {
        Ok(task) => Ok(Parsed::Task(Box::new(task))),
        Err(e) => Ok(Parsed::Malformed {
            kind,
            task_token,
            execution_arn,
            reason: e.to_string(),
        }),
    }
}

/// The execution a message belongs to, if it says.
fn execution_of(parsed: &Result<Parsed, String>) -> Option<&str> {
    match parsed {
        Ok(Parsed::Task(task)) => match task.as_ref() {
            WorkTask::Grant { execution_arn, .. }
            | WorkTask::Extend { execution_arn, .. }
            | WorkTask::Revoke { execution_arn, .. } => Some(execution_arn),
        },
        Ok(Parsed::Malformed { execution_arn, .. }) => execution_arn.as_deref(),
        Err(_) => None,
    }
}

/// The span every log line of one message carries: the request's identity and the
/// execution, as far as the body gives them.
fn task_span(parsed: &Result<Parsed, String>, message_id: Option<&str>) -> Span {
    let (task, execution_arn, input) = match parsed {
        Ok(Parsed::Task(task)) => match task.as_ref() {
            WorkTask::Grant {
                execution_arn,
                input,
                ..
            } => ("grant", execution_arn.as_str(), Some(input)),
            WorkTask::Extend {
                execution_arn,
                input,
                ..
            } => ("extend", execution_arn.as_str(), Some(input)),
            WorkTask::Revoke {
                execution_arn,
                input,
                ..
            } => ("revoke", execution_arn.as_str(), Some(input)),
        },
        Ok(Parsed::Malformed {
            kind,
            execution_arn,
            ..
        }) => (kind.as_str(), execution_arn.as_deref().unwrap_or(""), None),
        Err(_) => ("poison", "", None),
    };
    let field = |f: fn(&ExecutionInput) -> &str| input.map(f).unwrap_or("");
    tracing::info_span!(
        "work_item",
        task,
        request_namespace = field(|i| &i.request.namespace),
        request_name = field(|i| &i.request.name),
        request_uid = field(|i| &i.request.uid),
        execution_arn,
        role_arn = field(|i| &i.role_arn),
        message_id = message_id.unwrap_or(""),
    )
}

fn failure(error: &str, err: &WorkerError) -> Answer {
    Answer::Failed {
        error: error.to_owned(),
        cause: err.to_string(),
    }
}

/// The back-off of a transiently failed work item, by its receive count: `first` (at
/// least a second), doubling [`RETRY_DOUBLINGS`] times, with jitter.
fn retry_backoff(first: Duration) -> Backoff {
    let first = first.max(Duration::from_secs(1));
    Backoff::new(first, first.saturating_mul(1 << RETRY_DOUBLINGS))
}

/// True when `read` (a trust policy as IAM returns it, parsed) is the document `written`:
/// the same meaning, whatever IAM's encoding or key order. Statement order counts: IAM
/// keeps it, so a reordered policy is someone else's write.
fn shows_write(read: &Document, written: &Document) -> bool {
    read == written
}

/// The pauses between the reads that confirm a write: 0.1 s doubling to 2 s, each up
/// to twice that with jitter, until the next would make them add up to more than `wait`.
fn read_back_delays(wait: Duration) -> impl Iterator<Item = Duration> {
    Backoff::new(MIN_READ_BACK_DELAY, MAX_READ_BACK_DELAY).delays_within(wait)
}

/// `ts` rounded down to the second (its `Display` is then `YYYY-MM-DDTHH:MM:SSZ`).
fn whole_seconds(ts: Timestamp) -> Timestamp {
    Timestamp::from_second(ts.as_second()).unwrap_or(ts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const UID: &str = "0b5f7a4e-9c1d-4e2b-8f3a-1d2c3b4a5f6e";
    const SID: &str = "AwsJit0b5f7a4e9c1d4e2b8f3a1d2c3b4a5f6e";
    const OTHER_UID: &str = "7d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6";
    const ALICE: &str = "arn:aws:iam::123456789012:user/alice";
    const BOB: &str = "arn:aws:iam::123456789012:user/bob";

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn base() -> Document {
        trust_policy::parse(
            &json!({"Version": "2012-10-17", "Statement": [
                {"Sid": "Ec2", "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                 "Action": "sts:AssumeRole"}
            ]})
            .to_string(),
        )
        .unwrap()
    }

    fn terms() -> trust_policy::SessionTerms {
        trust_policy::SessionTerms {
            session_name: format!("ar-{UID}"),
            source_identity: "alice".into(),
        }
    }

    #[test]
    fn an_extension_moves_only_this_requests_live_statement_to_exactly_its_expiry() {
        let now = ts("2026-03-01T10:30:00Z");
        let granted = trust_policy::grant(
            &base(),
            UID,
            ALICE,
            &terms(),
            ts("2026-03-01T11:00:00Z"),
            2048,
        )
        .unwrap();
        let extend = |doc: &Document, until: &str, principal: &str, at: Timestamp| {
            plan_extend(doc, "admin", UID, principal, &terms(), ts(until), at, 2048)
        };
        let plan = extend(&granted, "2026-03-01T11:30:00Z", ALICE, now).unwrap();
        let moved = plan.document.expect("a write");
        let ours = trust_policy::grants(&moved);
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0].expires_at, ts("2026-03-01T11:30:00Z"));
        assert_eq!(
            moved.statements()[0],
            base().statements()[0],
            "others untouched"
        );
        // Redelivered: nothing to write, the same answer.
        let again = extend(&moved, "2026-03-01T11:30:00Z", ALICE, now).unwrap();
        assert!(again.document.is_none());
        assert_eq!(again.output.expires_at, "2026-03-01T11:30:00Z");
        // An earlier expiry than the statement's (a failed move left a later one) is set.
        let back = extend(&moved, "2026-03-01T11:10:00Z", ALICE, now).unwrap();
        let back = trust_policy::grants(&back.document.expect("a write"));
        assert_eq!(back[0].expires_at, ts("2026-03-01T11:10:00Z"));
        // No statement, an ended one, or another principal's: nothing moves.
        assert!(matches!(
            extend(&base(), "2026-03-01T11:30:00Z", ALICE, now),
            Err(WorkerError::NothingToExtend { .. })
        ));
        assert!(matches!(
            extend(
                &granted,
                "2026-03-01T11:30:00Z",
                ALICE,
                ts("2026-03-01T11:00:00Z")
            ),
            Err(WorkerError::NothingToExtend { .. })
        ));
        assert!(matches!(
            extend(&granted, "2026-03-01T11:30:00Z", BOB, now),
            Err(WorkerError::PrincipalMismatch { .. })
        ));
    }

    #[test]
    fn the_approved_expiry_bounds_the_grant_and_can_only_shorten_it() {
        let now = ts("2026-03-01T10:00:30Z");
        let approved = ts("2026-03-01T11:00:00Z");
        let plan = plan_grant(
            &base(),
            "admin",
            UID,
            ALICE,
            &terms(),
            Some(approved),
            3600,
            now,
            2048,
        )
        .unwrap();
        assert_eq!(plan.output.expires_at, "2026-03-01T11:00:00Z");
        // granted_at is the window's start, so a redelivery answers the same.
        assert_eq!(plan.output.granted_at, "2026-03-01T10:00:00Z");
        let ours = trust_policy::grants(&plan.document.unwrap());
        assert_eq!(ours[0].expires_at, approved);
        assert_eq!(ours[0].session, Some(terms()));
        // An expiry later than Kubernetes allows from now is refused, not granted.
        let err = plan_grant(
            &base(),
            "admin",
            UID,
            ALICE,
            &terms(),
            Some(ts("2026-03-01T11:00:31Z")),
            3600,
            now,
            2048,
        )
        .unwrap_err();
        assert!(matches!(err, WorkerError::BadExpiry { .. }), "{err}");
        // A grant that comes after its window: nothing.
        let err = plan_grant(
            &base(),
            "admin",
            UID,
            ALICE,
            &terms(),
            Some(ts("2026-03-01T10:00:30Z")),
            3600,
            now,
            2048,
        )
        .unwrap_err();
        assert!(matches!(err, WorkerError::BadExpiry { .. }), "{err}");
    }

    #[test]
    fn a_statement_under_the_sid_with_other_session_terms_is_rewritten_not_kept() {
        let now = ts("2026-03-01T10:00:00Z");
        let other = trust_policy::SessionTerms {
            session_name: "anything-goes".into(),
            source_identity: "alice".into(),
        };
        let planted = plan_grant(&base(), "admin", UID, ALICE, &other, None, 3600, now, 2048)
            .unwrap()
            .document
            .unwrap();
        let plan = plan_grant(
            &planted,
            "admin",
            UID,
            ALICE,
            &terms(),
            None,
            3600,
            now,
            2048,
        )
        .unwrap();
        let doc = plan
            .document
            .expect("rewritten, not taken as already granted");
        let ours = trust_policy::grants(&doc);
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0].session, Some(terms()));
    }

    #[test]
    fn the_approved_expiry_comes_from_the_approval_output() {
        assert_eq!(
            approved_until(&json!({"expires_at": "2026-03-01T11:00:00Z"})).unwrap(),
            ts("2026-03-01T11:00:00Z")
        );
        for bad in [
            json!({}),
            json!({"expires_at": "soon"}),
            json!(null),
            json!({"expires_at": 5}),
        ] {
            assert!(
                matches!(approved_until(&bad), Err(WorkerError::BadExpiry { .. })),
                "{bad}"
            );
        }
    }

    fn input(body: Value) -> Value {
        json!({
            "type": "grant", "task_token": "tok", "execution_arn": "arn:x",
            "input": {
                "requester_arn": ALICE, "requester_name": "alice", "reason": "r", "ticket": "",
                "role_arn": "arn:aws:iam::123456789012:role/admin", "method": "TrustPolicy",
                "work_group": "123456789012/admin", "duration_seconds": 60,
                "approval_timeout_seconds": 60,
                "request": {"namespace": "a", "name": "b", "uid": UID}
            }
        })
        .as_object()
        .map(|base| {
            let mut merged = base.clone();
            if let Value::Object(extra) = body {
                merged.extend(extra);
            }
            Value::Object(merged)
        })
        .unwrap()
    }

    #[test]
    fn role_names_come_from_role_arns() {
        for (arn, name) in [
            ("arn:aws:iam::123456789012:role/admin", "admin"),
            (
                "arn:aws:iam::123456789012:role/jit/team-a/Admin.Ops",
                "Admin.Ops",
            ),
            (
                "arn:aws-us-gov:iam::123456789012:role/x+y=z,w@v_u-t",
                "x+y=z,w@v_u-t",
            ),
            ("arn:aws-cn:iam::123456789012:role/a", "a"),
        ] {
            assert_eq!(role_name(arn).unwrap(), name, "{arn}");
        }
        for arn in [
            "",
            "admin",
            "arn:aws:iam::123456789012:user/admin",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam::123456789012:role/jit/",
            "arn:aws:iam::123456789012:role/*",
            "arn:aws:iam::123456789012:role/jit//admin",
            "arn:aws:iam::123456789012:role/ad min",
            "arn:aws:iam::12345678901:role/admin",
            "arn:aws:iam:us-east-1:123456789012:role/admin",
            "arn:aws:sts::123456789012:role/admin",
            "arn:azure:iam::123456789012:role/admin",
            "arn:aws:iam::123456789012:role/admin:x",
            &format!("arn:aws:iam::123456789012:role/{}", "a".repeat(65)),
        ] {
            let err = role_name(arn).unwrap_err();
            assert!(
                matches!(err, WorkerError::MalformedRoleArn { .. }),
                "{arn}: {err}"
            );
            assert!(err.to_string().contains("is not an IAM role ARN"), "{err}");
        }
    }

    #[test]
    fn a_grant_adds_a_statement_expiring_after_the_duration() {
        let now = ts("2026-03-01T10:00:00.75Z");
        let plan = plan_grant(
            &base(),
            "admin",
            UID,
            ALICE,
            &terms(),
            None,
            3600,
            now,
            2048,
        )
        .unwrap();
        assert_eq!(
            plan.output,
            GrantOutput {
                granted_at: "2026-03-01T10:00:00Z".into(),
                expires_at: "2026-03-01T11:00:00Z".into(),
                statement_id: SID.into(),
                ..Default::default()
            }
        );
        let doc = plan.document.unwrap();
        let ours = trust_policy::grants(&doc);
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0].principal, ALICE);
        assert_eq!(ours[0].expires_at, ts("2026-03-01T11:00:00Z"));
        assert_eq!(doc.statements()[0], base().statements()[0]);
    }

    #[test]
    fn a_redelivered_grant_keeps_the_first_expiry() {
        let first = ts("2026-03-01T10:00:00Z");
        let plan = plan_grant(
            &base(),
            "admin",
            UID,
            ALICE,
            &terms(),
            None,
            600,
            first,
            2048,
        )
        .unwrap();
        let doc = plan.document.unwrap();
        // Seconds or minutes later, the same item again: same answer, nothing written.
        for later in ["2026-03-01T10:00:01Z", "2026-03-01T10:09:59.9Z"] {
            let again = plan_grant(
                &doc,
                "admin",
                UID,
                ALICE,
                &terms(),
                None,
                600,
                ts(later),
                2048,
            )
            .unwrap();
            assert_eq!(again.document, None, "{later}");
            assert_eq!(again.output, plan.output, "{later}");
        }
        // After the first grant ended: no second window.
        let err = plan_grant(
            &doc,
            "admin",
            UID,
            ALICE,
            &terms(),
            None,
            600,
            ts("2026-03-01T10:10:00Z"),
            2048,
        )
        .unwrap_err();
        assert!(matches!(err, WorkerError::AlreadyExpired { .. }), "{err}");
        assert!(err.to_string().contains("2026-03-01T10:10:00Z"), "{err}");
        // Another principal under this request's Sid: refused, not rewritten.
        let err =
            plan_grant(&doc, "admin", UID, BOB, &terms(), None, 600, first, 2048).unwrap_err();
        assert!(
            matches!(err, WorkerError::PrincipalMismatch { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_grant_sweeps_expired_statements_first() {
        let t0 = ts("2026-03-01T10:00:00Z");
        let old = plan_grant(
            &base(),
            "admin",
            OTHER_UID,
            BOB,
            &terms(),
            None,
            60,
            t0,
            4096,
        )
        .unwrap()
        .document
        .unwrap();
        let later = ts("2026-03-01T10:01:00Z");
        let plan = plan_grant(&old, "admin", UID, ALICE, &terms(), None, 60, later, 4096).unwrap();
        assert_eq!(
            plan.swept,
            vec!["AwsJit7d1e2f3a4b5c4d6e8f708192a3b4c5d6".to_owned()]
        );
        let ours = trust_policy::grants(&plan.document.unwrap());
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0].sid, SID);
    }

    #[test]
    fn a_grant_over_the_size_limit_says_size_and_limit() {
        let size = trust_policy::to_json(&base()).len();
        let err = plan_grant(
            &base(),
            "admin",
            UID,
            ALICE,
            &terms(),
            None,
            60,
            Timestamp::now(),
            size + 10,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(
                "cannot change the trust policy of role admin: trust policy would be "
            ),
            "{text}"
        );
        assert!(
            text.contains(&format!("over the limit of {}", size + 10)),
            "{text}"
        );
        assert!(!err.is_transient());
    }

    #[test]
    fn bad_inputs_fail_the_grant() {
        let now = Timestamp::now();
        for (uid, principal, duration) in [
            ("bad uid", ALICE, 60),
            (UID, "arn:aws:iam::123456789012:user/*", 60),
            (UID, ALICE, 0),
            (UID, ALICE, u64::MAX),
            (UID, ALICE, 1 << 40),
        ] {
            let err = plan_grant(
                &base(),
                "admin",
                uid,
                principal,
                &terms(),
                None,
                duration,
                now,
                4096,
            );
            assert!(err.is_err(), "{uid} {principal} {duration}");
        }
    }

    #[test]
    fn a_revoke_removes_the_request_and_sweeps_the_expired() {
        let t0 = ts("2026-03-01T10:00:00Z");
        let doc = plan_grant(
            &base(),
            "admin",
            OTHER_UID,
            BOB,
            &terms(),
            None,
            60,
            t0,
            4096,
        )
        .unwrap()
        .document
        .unwrap();
        let doc = plan_grant(&doc, "admin", UID, ALICE, &terms(), None, 3600, t0, 4096)
            .unwrap()
            .document
            .unwrap();
        let later = ts("2026-03-01T10:05:00Z");
        let plan = plan_revoke(&doc, UID, later);
        assert_eq!(plan.output.removed, vec![SID.to_owned()]);
        assert_eq!(
            plan.output.swept,
            vec!["AwsJit7d1e2f3a4b5c4d6e8f708192a3b4c5d6".to_owned()]
        );
        assert_eq!(plan.output.revoked_at, "2026-03-01T10:05:00Z");
        let revoked = plan.document.unwrap();
        assert_eq!(revoked.statements(), base().statements());
        // Again: nothing there, nothing written, still a success.
        let again = plan_revoke(&revoked, UID, later);
        assert_eq!(again.document, None);
        assert!(again.output.removed.is_empty() && again.output.swept.is_empty());
    }

    #[test]
    fn poison_and_malformed_items_are_told_apart() {
        for body in [
            "not json".to_owned(),
            "[1]".to_owned(),
            json!({"task_token": "t"}).to_string(),
            json!({"type": "bribe", "task_token": "t"}).to_string(),
            json!({"type": 7, "task_token": "t"}).to_string(),
            input(json!({"task_token": ""})).to_string(),
            input(json!({"task_token": null})).to_string(),
        ] {
            assert!(classify(&body).is_err(), "{body}");
        }
        assert!(matches!(
            classify(&input(json!({})).to_string()),
            Ok(Parsed::Task(task)) if matches!(*task, WorkTask::Grant { .. })
        ));
        // Known type and a token: answerable even when the rest is broken.
        match classify(&input(json!({"type": "revoke", "input": {"role_arn": 1}})).to_string()) {
            Ok(Parsed::Malformed {
                kind,
                task_token,
                execution_arn,
                ..
            }) => {
                assert_eq!(kind, Kind::Revoke);
                assert_eq!(task_token, "tok");
                // Its execution is known, so its later items wait behind it if it stays.
                assert_eq!(execution_arn.as_deref(), Some("arn:x"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(execution_of(&classify("junk")), None);
        assert_eq!(
            execution_of(&classify(&input(json!({})).to_string())),
            Some("arn:x")
        );
    }

    #[test]
    fn retries_back_off_within_the_work_task_timeout() {
        let policy = retry_backoff(DEFAULT_RETRY_DELAY);
        for _ in 0..50 {
            // The back-offs after receives 1-4: the fifth (last) try comes inside the
            // template's WorkTaskTimeoutSeconds (300 s), even with the most jitter.
            let tries: Duration = (1..=4).map(|n| policy.after(n)).sum();
            assert!(
                tries >= Duration::from_secs(120) && tries < Duration::from_secs(240),
                "{tries:?}"
            );
        }
        assert!(policy.after(u32::MAX) < Duration::from_secs(128));
        assert_eq!(retry_backoff(Duration::ZERO).min(), Duration::from_secs(1));
    }

    #[test]
    fn transient_iam_codes() {
        assert!(is_transient_iam_code("Throttling"));
        assert!(is_transient_iam_code("ServiceFailure"));
        assert!(is_transient_iam_code("ConcurrentModification"));
        assert!(!is_transient_iam_code("MalformedPolicyDocument"));
        assert!(!is_transient_iam_code("LimitExceeded"));
        assert!(!is_transient_iam_code("UnmodifiableEntity"));
    }

    /// `value` with the keys of every object in reverse order.
    fn keys_reversed(value: &Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .rev()
                    .map(|(k, v)| (k.clone(), keys_reversed(v)))
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(keys_reversed).collect()),
            other => other.clone(),
        }
    }

    #[test]
    fn a_write_shows_only_when_iam_returns_the_document_written() {
        let t0 = ts("2026-03-01T10:00:00Z");
        let granted = plan_grant(&base(), "admin", UID, ALICE, &terms(), None, 3600, t0, 4096)
            .unwrap()
            .document
            .unwrap();
        // As IAM returns it: URL-encoded, and here with every object's keys reordered.
        let written: Value = serde_json::from_str(&trust_policy::to_json(&granted)).unwrap();
        let reordered = keys_reversed(&written).to_string();
        assert_ne!(reordered, trust_policy::to_json(&granted));
        let encoded =
            percent_encoding::utf8_percent_encode(&reordered, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        assert!(shows_write(
            &trust_policy::parse(&encoded).unwrap(),
            &granted
        ));
        assert!(shows_write(
            &trust_policy::parse(&trust_policy::to_json(&granted)).unwrap(),
            &granted
        ));

        // A stale read of a grant: the policy before it.
        assert!(!shows_write(&base(), &granted));
        // A stale read of a revoke: the policy still holding the revoked statement.
        let revoked = plan_revoke(&granted, UID, ts("2026-03-01T10:05:00Z"))
            .document
            .unwrap();
        assert!(!shows_write(&granted, &revoked));
        // The same statements in another order: not what was written.
        let two = plan_grant(
            &granted,
            "admin",
            OTHER_UID,
            BOB,
            &terms(),
            None,
            3600,
            t0,
            4096,
        )
        .unwrap()
        .document
        .unwrap();
        let mut swapped: Value = serde_json::from_str(&trust_policy::to_json(&two)).unwrap();
        swapped["Statement"].as_array_mut().unwrap().swap(1, 2);
        let swapped = trust_policy::parse(&swapped.to_string()).unwrap();
        assert!(!shows_write(&swapped, &two));
        // One condition value changed (another expiry): not what was written.
        let later = plan_grant(&base(), "admin", UID, ALICE, &terms(), None, 3601, t0, 4096)
            .unwrap()
            .document
            .unwrap();
        assert!(!shows_write(&later, &granted));
    }

    #[test]
    fn read_backs_pause_with_back_off_within_the_wait() {
        for wait in [1, 10, 60].map(Duration::from_secs) {
            let pauses: Vec<Duration> = read_back_delays(wait).collect();
            let total: Duration = pauses.iter().sum();
            assert!(total <= wait, "{wait:?}: {pauses:?}");
            // Not one long sleep: the pauses add up to most of the wait.
            assert!(
                total + 2 * 2 * MAX_READ_BACK_DELAY >= wait,
                "{wait:?}: {pauses:?}"
            );
            assert!(pauses[0] >= MIN_READ_BACK_DELAY && pauses[0] < 2 * MIN_READ_BACK_DELAY);
            assert!(
                pauses.iter().all(|p| *p < 2 * MAX_READ_BACK_DELAY),
                "{pauses:?}"
            );
        }
        // At the default wait, a write shown within a second is seen within a few reads.
        let pauses: Vec<Duration> = read_back_delays(DEFAULT_CONSISTENCY_WAIT).collect();
        assert!(pauses.len() >= 5, "{pauses:?}");
        assert_eq!(read_back_delays(Duration::ZERO).count(), 0);
        let err = WorkerError::NotConfirmed {
            role: "admin".into(),
            waited: Duration::from_secs(10),
            seen: "a different document".into(),
        };
        assert!(err.is_transient());
        assert!(err.to_string().contains("role admin"), "{err}");
    }

    #[test]
    fn revoke_output_is_the_contract_json() {
        let out = RevokeOutput {
            revoked_at: "2026-03-01T10:00:00Z".into(),
            removed: vec![SID.into()],
            swept: vec![],
        };
        assert_eq!(
            serde_json::to_value(&out).unwrap(),
            json!({"revoked_at": "2026-03-01T10:00:00Z", "removed": [SID], "swept": []})
        );
    }
}
