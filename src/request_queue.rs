//! The request-queue consumer: takes the state machine's approval and hold tasks off
//! the request queue, keeps each task token in the request's token Secret, and only
//! then deletes the message, so a crash at any point loses no task (an undeleted
//! message comes back). Writing the Secret wakes the request's reconciler, which does
//! everything else.
//!
//! A task for a request that no longer exists is answered at once (approval: failure
//! `Cancelled`; hold: success, which revokes now), so its execution does not wait for
//! a timeout. A message that cannot be understood is moved to the dead-letter queue
//! with a log line: it never blocks the queue and never stops the loop.
use std::time::Duration;

use aws_sdk_sqs::types::Message;
use kube::ResourceExt;
use kube::api::Api;
use serde_json::json;
use tracing::{Instrument, error, info, warn};

use crate::contract::{RequestIdentity, RequestTask, errors};
use crate::crd::AccessRequest;
use crate::metrics::{outcome, queue};
use crate::sfn::StepFunctionClient;
use crate::tokens::{TokenStore, keys};

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("SQS {call} failed: {message}")]
    Sqs { call: &'static str, message: String },
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Tokens(#[from] crate::tokens::TokenError),
    #[error(transparent)]
    StepFunctions(#[from] crate::sfn::SfnError),
}

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
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl RequestQueue {
    /// Consumes until `shutdown` resolves. Errors are logged and retried with backoff.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(200);
        loop {
            let receive = self.receive();
            tokio::pin!(receive);
            let received = tokio::select! {
                biased;
                _ = &mut shutdown => {
                    // Messages a poll in flight already holds go straight back rather
                    // than stay invisible for the visibility timeout.
                    if let Ok(messages) = receive.await {
                        for m in &messages {
                            self.release(m).await;
                        }
                    }
                    return;
                }
                r = &mut receive => r,
            };
            match received {
                Ok(messages) => {
                    backoff = Duration::from_millis(200);
                    for m in messages {
                        let span = message_span(&m);
                        self.process(m).instrument(span).await;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot receive from the request queue; backing off");
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    async fn receive(&self) -> Result<Vec<Message>, QueueError> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(i32::try_from(self.wait.as_secs()).unwrap_or(20).min(20))
            .send()
            .await
            .map_err(|e| QueueError::Sqs {
                call: "ReceiveMessage",
                message: aws_sdk_sqs::error::DisplayErrorContext(e).to_string(),
            })?;
        Ok(out.messages.unwrap_or_default())
    }

    async fn process(&self, message: Message) {
        let Some(receipt) = message.receipt_handle() else {
            return;
        };
        let body = message.body().unwrap_or_default();
        match self.handle(body).await {
            Ok(Handled::Poison(why)) => {
                error!(
                    message_id = message.message_id().unwrap_or_default(),
                    why, "poison message on the request queue"
                );
                self.dead_letter(body, receipt).await;
                self.metrics
                    .queue_message(queue::REQUEST, outcome::DEAD_LETTERED);
            }
            Ok(_) => {
                self.faults
                    .point(crate::faults::points::AFTER_TOKEN_STORED)
                    .await;
                if let Err(e) = self.delete(receipt).await {
                    // It comes back; storing a token twice is harmless.
                    warn!(error = %e, "cannot delete a handled message");
                }
                self.metrics
                    .queue_message(queue::REQUEST, outcome::PROCESSED);
            }
            // Not deleted: SQS gives it back after its visibility timeout.
            Err(e) => {
                self.metrics.queue_message(queue::REQUEST, outcome::FAILED);
                warn!(error = %e, "cannot handle a request-queue message yet; it will come back")
            }
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
        let api: Api<AccessRequest> = Api::namespaced(self.client.clone(), &who.namespace);
        let live = api
            .get_opt(&who.name)
            .await?
            .filter(|r| r.uid().as_deref() == Some(who.uid.as_str()));
        let Some(_request) = live else {
            info!("task for a request that no longer exists; ending it");
            self.answer_orphan(&task).await?;
            return Ok(Handled::AnsweredOrphan);
        };
        let identity = RequestIdentity {
            namespace: who.namespace.clone(),
            name: who.name.clone(),
            uid: who.uid.clone(),
        };
        match &task {
            RequestTask::Approval { task_token, .. } => {
                self.tokens
                    .put(
                        &identity,
                        &[
                            (keys::EXECUTION_ARN, execution_arn.as_str()),
                            (keys::APPROVAL_TOKEN, task_token.as_str()),
                        ],
                    )
                    .await?;
            }
            RequestTask::Hold {
                task_token, grant, ..
            } => {
                self.tokens
                    .put(
                        &identity,
                        &[
                            (keys::EXECUTION_ARN, execution_arn.as_str()),
                            (keys::HOLD_TOKEN, task_token.as_str()),
                            (keys::GRANTED_AT, grant.granted_at.as_str()),
                            (keys::EXPIRES_AT, grant.expires_at.as_str()),
                        ],
                    )
                    .await?;
            }
        }
        info!("task token stored");
        Ok(Handled::Stored)
    }

    async fn answer_orphan(&self, task: &RequestTask) -> Result<(), QueueError> {
        match task {
            RequestTask::Approval { task_token, .. } => {
                self.sfn
                    .send_failure(
                        task_token,
                        errors::CANCELLED,
                        "the AccessRequest no longer exists",
                    )
                    .await?;
            }
            RequestTask::Hold { task_token, .. } => {
                self.sfn
                    .send_success(
                        task_token,
                        &json!({"ended_by": "aws-jit", "reason": "AccessRequest no longer exists"}),
                    )
                    .await?;
            }
        }
        Ok(())
    }

    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        self.sqs
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| QueueError::Sqs {
                call: "DeleteMessage",
                message: aws_sdk_sqs::error::DisplayErrorContext(e).to_string(),
            })?;
        Ok(())
    }

    /// Makes a received message visible again at once.
    async fn release(&self, message: &Message) {
        let Some(receipt) = message.receipt_handle() else {
            return;
        };
        let res = self
            .sqs
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(0)
            .send()
            .await;
        if let Err(e) = res {
            warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(e), "cannot return a message to the queue; it comes back after its visibility timeout");
        }
    }

    /// Moves a message that will never be understood out of the way.
    async fn dead_letter(&self, body: &str, receipt: &str) {
        let Some(dlq) = &self.dead_letter_url else {
            warn!("no dead-letter queue configured: leaving the message for SQS's redrive policy");
            return;
        };
        let sent = self
            .sqs
            .send_message()
            .queue_url(dlq)
            .message_body(body)
            .send()
            .await;
        match sent {
            Ok(_) => {
                self.faults
                    .point(crate::faults::points::AFTER_TOKEN_STORED)
                    .await;
                if let Err(e) = self.delete(receipt).await {
                    warn!(error = %e, "moved a poison message to the dead-letter queue but cannot delete it");
                }
            }
            Err(e) => {
                warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(e), "cannot move a poison message to the dead-letter queue; SQS's redrive will")
            }
        }
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
