//! The request-queue consumer: takes the state machine's approval and hold tasks off
//! the request queue, keeps each task token in the request's token Secret, and only
//! then deletes the message, so a crash at any point loses no task (an undeleted
//! message comes back). Writing the Secret wakes the request's reconciler, which does
//! everything else.
//!
//! Only a task of the execution the controller started and recorded for a request is
//! kept ([`crate::aws::authority`]): a task of any other execution that names a live request
//! (someone in the AWS account started one with a copy of its identity) is refused,
//! reported on the request it impersonated, and answered. A task for a request that no
//! longer exists is answered at once (approval: failure `Cancelled`; hold: success,
//! which revokes now), so its execution does not wait for a timeout. A message that
//! cannot be understood is moved to the dead-letter queue with a log line: it never
//! blocks the queue and never stops the loop.
//!
//! A task token is never lost to a passing outage: a message whose handling fails for
//! a transient reason (the apiserver is down, throttling) stays with this consumer,
//! which tries again with exponential back-off and jitter and keeps the message
//! invisible meanwhile (`ChangeMessageVisibility`), so SQS never counts it towards the
//! dead-letter queue. Messages are handled concurrently, so one that waits does not
//! hold up the rest. The loop itself (receive, delete, visibility, dead-letter queue,
//! back-off, shutdown) is the shared [`crate::aws::consumer`]; this module decides. Should a task reach the dead-letter queue all the same (the
//! operator crashed with it five times), [`RequestQueue::redrive`] gives it another go
//! once a minute, and a Warning Event on its request says so.
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::Message;
use futures::FutureExt;
use serde_json::json;
use tracing::{Instrument, error, info, warn};

use crate::aws::authority::{Authority, AuthorityError};
use crate::aws::consumer::{Consumer, Dispatch, Handler, Queue, Retries, Verdict};
use crate::aws::retry::Backoff;
use crate::aws::sfn::StepFunctionClient;
use crate::contract::{RequestIdentity, RequestTask, errors};
use crate::controller::tokens::{TokenStore, keys};
use crate::telemetry::metrics::queue;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Tokens(#[from] crate::controller::tokens::TokenError),
    #[error(transparent)]
    StepFunctions(#[from] crate::aws::sfn::SfnError),
    #[error(transparent)]
    Authority(#[from] AuthorityError),
}

impl QueueError {
    /// At least how long to wait before the next try, when the other side said it
    /// throttles.
    fn throttled(&self) -> Option<Duration> {
        match self {
            QueueError::StepFunctions(crate::aws::sfn::SfnError::Api { code, .. }) => {
                crate::aws::retry::throttle_floor(Some(code))
            }
            QueueError::Kube(kube::Error::Api(status)) if status.code == 429 => {
                Some(crate::aws::retry::THROTTLED_FLOOR)
            }
            _ => None,
        }
    }
}

/// How many messages are handled at once.
const MAX_IN_FLIGHT: usize = 64;
/// How often the dead-letter queue is looked at for tasks to give another go.
const REDRIVE_EVERY: Duration = Duration::from_secs(60);
/// A dead-lettered message that will never be understood is not looked at again for this
/// long.
const REDRIVE_PARK: Duration = Duration::from_secs(900);
/// A dead-lettered task that cannot be handled yet comes back for the next redrive.
const REDRIVE_RETRY: Duration = Duration::from_secs(50);
/// The back-off of a message whose handling failed: 1 s doubling to 30 s, with jitter,
/// for as long as it takes (in process: the message is kept invisible meanwhile).
const RETRY_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Token stored for the request; message deleted.
    Stored,
    /// The request is gone; the task was answered; message deleted.
    AnsweredOrphan,
    /// Not understood; moved to the dead-letter queue (or left for SQS's redrive).
    Poison(String),
}

pub struct RequestQueue {
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
    pub dead_letter_url: Option<String>,
    pub sfn: StepFunctionClient,
    pub tokens: TokenStore,
    pub client: kube::Client,
    /// Long-poll wait (SQS allows up to 20 s).
    pub wait: Duration,
    pub faults: crate::faults::Faults,
    pub metrics: std::sync::Arc<crate::telemetry::metrics::Metrics>,
    /// Judges whether a task belongs to the execution of its request.
    pub authority: Authority,
}

impl RequestQueue {
    /// Consumes until `shutdown` resolves, each message on its own (up to
    /// [`MAX_IN_FLIGHT`] at once), a transient failure tried again in process with the
    /// message kept invisible; and gives the dead-letter queue's tasks another go at
    /// start and every [`REDRIVE_EVERY`]. Errors are logged and retried with back-off.
    /// At shutdown, messages still being worked on go back to the queue at once.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let shutdown = shutdown.shared();
        let consumer = Consumer::new(
            self.clone(),
            Queue::new(self.sqs.clone(), &self.queue_url),
            queue::REQUEST,
        )
        .with_dispatch(Dispatch::Concurrent {
            max_in_flight: MAX_IN_FLIGHT,
        })
        .with_retries(Retries::InProcess(RETRY_BACKOFF))
        .with_dead_letter(self.dead_letter_url.clone())
        .with_wait(self.wait)
        .with_metrics(self.metrics.clone())
        .with_fault_before_delete(
            self.faults.clone(),
            crate::faults::points::AFTER_TOKEN_STORED,
        );
        let redrive = async {
            if self.dead_letter_url.is_none() {
                return;
            }
            loop {
                self.redrive().await;
                tokio::select! {
                    biased;
                    _ = shutdown.clone() => return,
                    _ = tokio::time::sleep(REDRIVE_EVERY) => {}
                }
            }
        };
        tokio::join!(consumer.run(shutdown.clone()), redrive);
    }

    /// Gives dead-lettered tasks another go: one that can now be handled is, and leaves
    /// the dead-letter queue; one that still cannot stays there, out of sight for a
    /// while. Each is reported on its request (a Warning Event), so a token that went
    /// to the dead-letter queue is never silent.
    pub async fn redrive(&self) {
        let Some(dlq) = self.dead_letter_url.clone() else {
            return;
        };
        let dlq = Queue::new(self.sqs.clone(), dlq);
        let messages = match dlq.receive(Duration::ZERO, None).await {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "cannot look at the request dead-letter queue");
                return;
            }
        };
        for message in messages {
            let span = message_span(&message);
            async {
                let Some(receipt) = message.receipt_handle() else {
                    return;
                };
                let body = message.body().unwrap_or_default();
                let task = serde_json::from_str::<RequestTask>(body).ok();
                match self.handle(body).await {
                    Ok(Handled::Poison(_)) => {
                        dlq.set_visibility(receipt, REDRIVE_PARK).await;
                    }
                    Ok(handled) => {
                        if let Err(e) = dlq.delete(receipt).await {
                            warn!(error = %e, "cannot delete a redriven message");
                        }
                        info!("a dead-lettered task was handled after all");
                        if let Some(task) = &task {
                            let note = "a task of this request had gone to the request \
                                        dead-letter queue; it was handled now";
                            self.authority
                                .notify(task_identity(task), "DeadLetteredTask", note)
                                .await;
                            if handled == Handled::Stored {
                                self.record_dead_letter(task, note, true).await;
                            }
                        }
                    }
                    Err(e) => {
                        // Tried again at the next redrive. Only a task that is its
                        // request's own comes this far (a foreign one is refused for good):
                        // surfaced on the request as the TaskDeadLettered condition.
                        dlq.set_visibility(receipt, REDRIVE_RETRY).await;
                        if let Some(task) = &task {
                            let note = format!(
                                "a task of this request is in the request dead-letter queue \
                                 and cannot be handled yet ({e}); it is tried again every \
                                 minute"
                            );
                            self.authority
                                .notify(task_identity(task), "DeadLetteredTask", &note)
                                .await;
                            self.record_dead_letter(task, &note, false).await;
                        }
                    }
                }
            }
            .instrument(span)
            .await;
        }
    }

    /// Records on the request's token Secret (which wakes its reconcile) that a task of
    /// it is, or was, in the dead-letter queue: the controller shows it as the condition
    /// `TaskDeadLettered` (True while there, False `Redriven` once handled). Only for a
    /// request that exists: the authority's lookup says so.
    async fn record_dead_letter(&self, task: &RequestTask, note: &str, redriven: bool) {
        let identity = task_identity(task);
        let exists = matches!(self.authority.exists(identity).await, Ok(true));
        if !exists {
            return;
        }
        let state = if redriven { "redriven" } else { "waiting" };
        if let Err(e) = self
            .tokens
            .put(
                identity,
                &[
                    (keys::DEAD_LETTERED, note),
                    (keys::DEAD_LETTER_STATE, state),
                ],
            )
            .await
        {
            warn!(error = %e, "cannot record the dead-lettered task on its request");
        }
    }

    /// Handles one message body. Returns an error only for transient failures, after
    /// which the message must stay on the queue.
    pub async fn handle(&self, body: &str) -> Result<Handled, QueueError> {
        let task: RequestTask = match serde_json::from_str(body) {
            Ok(t) => t,
            Err(e) => return Ok(Handled::Poison(format!("not a request task: {e}"))),
        };
        let (input, execution_arn) = match &task {
            RequestTask::Approval {
                input,
                execution_arn,
                ..
            }
            | RequestTask::Hold {
                input,
                execution_arn,
                ..
            } => (input, execution_arn),
        };
        let who = &input.request;
        let kind = match &task {
            RequestTask::Approval { .. } => "approval",
            RequestTask::Hold { .. } => "hold",
        };
        match self
            .authority
            .task(queue::REQUEST, who, execution_arn)
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(AuthorityError::Refused(refusal)) => {
                info!(task = kind, %refusal, "not this request's task; ending it");
                self.answer_orphan(&task, &refusal.to_string()).await?;
                return Ok(Handled::AnsweredOrphan);
            }
            Err(e) => return Err(e.into()),
        }
        let identity = RequestIdentity {
            namespace: who.namespace.clone(),
            name: who.name.clone(),
            uid: who.uid.clone(),
        };
        match &task {
            RequestTask::Approval { task_token, .. } => {
                // Received after the task started: its deadline is no later than now
                // plus the execution's own approval timeout.
                let deadline = jiff::SignedDuration::try_from(std::time::Duration::from_secs(
                    input.approval_timeout_seconds,
                ))
                .ok()
                .and_then(|d| jiff::Timestamp::now().checked_add(d).ok())
                .map(|t| t.to_string())
                .unwrap_or_default();
                self.tokens
                    .put(
                        &identity,
                        &[
                            (keys::EXECUTION_ARN, execution_arn.as_str()),
                            (keys::APPROVAL_TOKEN, task_token.as_str()),
                            (keys::APPROVAL_DEADLINE, deadline.as_str()),
                        ],
                    )
                    .await?;
            }
            RequestTask::Hold {
                task_token,
                grant,
                entered_at,
                ..
            } => {
                // After an extension the execution holds again: an older hold delivered
                // again (its delete was lost) must never take the place of the newer
                // one, whose token is the one that ends access early.
                let stored = self.tokens.get(&identity.uid).await?;
                let time = |t: Option<&str>| t.and_then(|t| t.parse::<jiff::Timestamp>().ok());
                let older = match (
                    time(stored.get(keys::HOLD_ENTERED)),
                    time(Some(entered_at.as_str())),
                ) {
                    (Some(held), Some(incoming)) => incoming < held,
                    // From an older definition: the later expiry is the newer hold.
                    _ => match (
                        time(stored.get(keys::EXPIRES_AT)),
                        time(Some(grant.expires_at.as_str())),
                    ) {
                        (Some(held), Some(incoming)) => incoming < held,
                        _ => false,
                    },
                };
                if older && stored.get(keys::HOLD_TOKEN) != Some(task_token.as_str()) {
                    info!(%entered_at, "an older hold than the one stored; dropped");
                    return Ok(Handled::Stored);
                }
                let record = serde_json::to_string(grant).unwrap_or_default();
                self.tokens
                    .put(
                        &identity,
                        &[
                            (keys::EXECUTION_ARN, execution_arn.as_str()),
                            (keys::HOLD_TOKEN, task_token.as_str()),
                            (keys::HOLD_ENTERED, entered_at.as_str()),
                            (keys::GRANTED_AT, grant.granted_at.as_str()),
                            (keys::EXPIRES_AT, grant.expires_at.as_str()),
                            (keys::GRANT_RECORD, record.as_str()),
                        ],
                    )
                    .await?;
            }
        }
        info!("task token stored");
        Ok(Handled::Stored)
    }

    /// Ends a task no request of ours stands behind: an approval is cancelled, a hold
    /// ended (its execution revokes).
    async fn answer_orphan(&self, task: &RequestTask, why: &str) -> Result<(), QueueError> {
        match task {
            RequestTask::Approval { task_token, .. } => {
                self.sfn
                    .send_failure(task_token, errors::CANCELLED, why)
                    .await?;
            }
            RequestTask::Hold { task_token, .. } => {
                self.sfn
                    .send_success(task_token, &json!({"ended_by": "aws-jit", "reason": why}))
                    .await?;
            }
        }
        Ok(())
    }
}

/// The request queue's part of the loop ([`crate::aws::consumer`]): a task whose token
/// is stored (or that was answered as an orphan) is done, one that cannot be understood
/// is poison, a transient failure is tried again.
impl Handler for RequestQueue {
    async fn handle_message(&self, message: &Message) -> Verdict {
        match self.handle(message.body().unwrap_or_default()).await {
            Ok(Handled::Poison(why)) => {
                error!(
                    message_id = message.message_id().unwrap_or_default(),
                    why, "poison message on the request queue"
                );
                Verdict::Poison(why)
            }
            Ok(_) => Verdict::Done,
            Err(e) => Verdict::Retry {
                at_least: e.throttled(),
                reason: e.to_string(),
            },
        }
    }

    fn span(&self, message: &Message) -> tracing::Span {
        message_span(message)
    }
}

fn task_identity(task: &RequestTask) -> &RequestIdentity {
    match task {
        RequestTask::Approval { input, .. } | RequestTask::Hold { input, .. } => &input.request,
    }
}

/// The span every log line of one message carries: the request's identity as far as
/// the body gives it (a poison message has none).
fn message_span(message: &Message) -> tracing::Span {
    let task = message
        .body()
        .and_then(|b| serde_json::from_str::<RequestTask>(b).ok());
    let (who, execution_arn, kind) = match &task {
        Some(RequestTask::Approval {
            input,
            execution_arn,
            ..
        }) => (Some(&input.request), execution_arn.as_str(), "approval"),
        Some(RequestTask::Hold {
            input,
            execution_arn,
            ..
        }) => (Some(&input.request), execution_arn.as_str(), "hold"),
        None => (None, "", "unknown"),
    };
    tracing::info_span!(
        "request_task",
        task = kind,
        request_namespace = who.map(|w| w.namespace.as_str()).unwrap_or(""),
        request_name = who.map(|w| w.name.as_str()).unwrap_or(""),
        request_uid = who.map(|w| w.uid.as_str()).unwrap_or(""),
        execution_arn,
        message_id = message.message_id().unwrap_or(""),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_retry_waits_at_least_the_floor() {
        let sfn = |code: &str| {
            QueueError::StepFunctions(crate::aws::sfn::SfnError::Api {
                call: "SendTaskFailure",
                code: code.into(),
                message: String::new(),
            })
        };
        assert_eq!(
            sfn("ThrottlingException").throttled(),
            Some(crate::aws::retry::THROTTLED_FLOOR)
        );
        assert_eq!(sfn("Transport").throttled(), None);
    }
}
