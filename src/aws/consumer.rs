//! The one SQS consumer loop: the request queue ([`crate::controller::request_queue`]),
//! the trust-policy work queue ([`crate::grant::trust_policy::worker`]) and the relay's
//! alert queue ([`crate::slack::relay`]) each give it a [`Handler`] that decides what a
//! message is worth ([`Verdict`]); everything SQS is here: the long poll, deleting,
//! visibility, the dead-letter queue, back-off and shutdown.
//!
//! - **Receive**: long polls of up to 10 messages, asking for `MessageGroupId` and
//!   `ApproximateReceiveCount`. A failed receive backs off ([`RECEIVE_BACKOFF`], at
//!   least [`crate::aws::retry::THROTTLED_FLOOR`] when SQS says it throttles).
//! - **Dispatch** ([`Dispatch`]): every message on its own, up to a bound at once
//!   (the request queue); or a receive's messages grouped by `MessageGroupId`, the
//!   groups at once and each group in order (the FIFO queues). Within a group, once a
//!   message stays on the queue, the later ones with the same [`Handler::order_key`]
//!   are not handled: they are made visible again at once, and FIFO delivers them only
//!   after the one that stayed.
//! - **Verdicts**: [`Verdict::Done`] deletes the message. [`Verdict::Poison`] moves it to
//!   the dead-letter queue (its body, the reason as the message attribute
//!   [`DEAD_LETTER_REASON_ATTRIBUTE`], its id as [`SOURCE_MESSAGE_ID_ATTRIBUTE`], and on a
//!   FIFO dead-letter queue its group and a deduplication id derived from its id, so a
//!   move retried after a failed delete is not queued twice), then deletes it; without a
//!   dead-letter URL it is left to SQS's redrive (`maxReceiveCount`) and made visible
//!   again after a few seconds, so that takes seconds, not visibility timeouts.
//!   [`Verdict::Retry`] follows [`Retries`]: tried again here with the message kept
//!   invisible (it never counts towards `maxReceiveCount`), or handed back to the queue
//!   to come back after the back-off for its receive count.
//! - **Lease** ([`Consumer::with_lease`]): receives with that visibility timeout and
//!   extends it every third of it for every message in hand, so a handler that takes
//!   long (Slack down) never lets its message show up for another replica.
//! - **Shutdown**: a receive in flight is let finish and what it got goes straight back
//!   (visibility 0); messages in hand are finished, except that one waiting to be tried
//!   again goes back at once; with [`Consumer::with_shutdown_grace`], what is not
//!   finished within the grace goes back too.
//!
//! The SQS calls of all three consumers are made here, as the identity of the process
//! that builds the consumer (the operator or the relay): `tests/iam_actions.rs` counts
//! them for each file that builds a [`Queue`], with that file's identity and queues.
use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName};
use futures::FutureExt;
use tracing::{Instrument, Span, error, info, warn};

use crate::aws::retry::{self, Backoff};
use crate::faults::Faults;
use crate::telemetry::metrics::{Metrics, outcome};

/// Message attribute that says why aws-jit dead-lettered a message.
pub const DEAD_LETTER_REASON_ATTRIBUTE: &str = "aws-jit-dead-letter-reason";
/// Message attribute with the id the message had on its queue.
pub const SOURCE_MESSAGE_ID_ATTRIBUTE: &str = "aws-jit-source-message-id";

/// SQS's largest receive batch.
const MAX_MESSAGES: i32 = 10;
/// SQS's longest long poll.
const MAX_WAIT: Duration = Duration::from_secs(20);
/// The back-off of the receive loop when SQS cannot be reached.
pub const RECEIVE_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
/// When a poison message is left to SQS's redrive: how soon it comes back (and so
/// counts another receive).
const POISON_REDELIVERY: Duration = Duration::from_secs(5);
/// How long a message retried in process stays invisible beyond its next try.
const HOLD_MARGIN: Duration = Duration::from_secs(10);
/// The shortest interval between two lease extensions.
const MIN_HEARTBEAT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, thiserror::Error)]
#[error("SQS {call} failed: {message}")]
pub struct SqsError {
    pub call: &'static str,
    /// AWS's error code, when there is one.
    pub code: Option<String>,
    pub message: String,
}

impl SqsError {
    fn of<E, R>(call: &'static str, err: &SdkError<E, R>) -> SqsError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        SqsError {
            call,
            code: err.code().map(str::to_owned),
            message: aws_sdk_sqs::error::DisplayErrorContext(err).to_string(),
        }
    }

    fn build(call: &'static str, err: impl std::fmt::Display) -> SqsError {
        SqsError {
            call,
            code: None,
            message: err.to_string(),
        }
    }
}

/// One queue: the SQS calls on it.
#[derive(Clone, Debug)]
pub struct Queue {
    sqs: aws_sdk_sqs::Client,
    url: String,
}

impl Queue {
    pub fn new(sqs: aws_sdk_sqs::Client, url: impl Into<String>) -> Queue {
        Queue {
            sqs,
            url: url.into(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Up to 10 messages, waiting up to `wait` (at most 20 s) for the first; with
    /// `visibility`, they stay invisible that long instead of the queue's timeout.
    pub async fn receive(
        &self,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<Message>, SqsError> {
        let mut receive = self
            .sqs
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(MAX_MESSAGES)
            .wait_time_seconds(seconds(wait.min(MAX_WAIT)))
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount);
        if let Some(visibility) = visibility {
            receive = receive.visibility_timeout(seconds(visibility).max(1));
        }
        let out = receive
            .send()
            .await
            .map_err(|e| SqsError::of("ReceiveMessage", &e))?;
        Ok(out.messages.unwrap_or_default())
    }

    pub async fn delete(&self, receipt: &str) -> Result<(), SqsError> {
        self.sqs
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| SqsError::of("DeleteMessage", &e))?;
        Ok(())
    }

    /// Makes a received message visible again after `after` (zero: at once). False
    /// (and a log line) when SQS did not take it: the message then comes back after
    /// its visibility timeout.
    pub async fn set_visibility(&self, receipt: &str, after: Duration) -> bool {
        let res = self
            .sqs
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(seconds(after))
            .send()
            .await;
        if let Err(e) = res {
            warn!(
                error = %aws_sdk_sqs::error::DisplayErrorContext(&e),
                seconds = seconds(after),
                "cannot change a message's visibility; it comes back after its visibility timeout"
            );
            return false;
        }
        true
    }

    /// Puts `message` (received elsewhere) on this queue, a dead-letter queue, with why.
    async fn put_dead_letter(&self, message: &Message, reason: &str) -> Result<(), SqsError> {
        let attribute = |value: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| SqsError::build("SendMessage", e))
        };
        let message_id = message.message_id().unwrap_or_default();
        let mut send = self
            .sqs
            .send_message()
            .queue_url(&self.url)
            .message_body(message.body().unwrap_or_default())
            .message_attributes(
                DEAD_LETTER_REASON_ATTRIBUTE,
                attribute(crate::aws::sfn::truncate(reason, 1024))?,
            );
        if !message_id.is_empty() {
            send = send.message_attributes(SOURCE_MESSAGE_ID_ATTRIBUTE, attribute(message_id)?);
        }
        if self.url.ends_with(".fifo") {
            let group = group_id(message)
                .filter(|g| !g.is_empty())
                .unwrap_or("aws-jit-poison");
            send = send
                .message_group_id(group)
                .message_deduplication_id(dead_letter_dedup_id(message_id, message.body()));
        }
        send.send()
            .await
            .map_err(|e| SqsError::of("SendMessage", &e))?;
        Ok(())
    }
}

/// What a [`Handler`] makes of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Handled: delete it.
    Done,
    /// Not now (a transient failure): try again later, after at least `at_least` if
    /// the other side said so.
    Retry {
        reason: String,
        at_least: Option<Duration>,
    },
    /// Never handleable: dead-letter it, with why.
    Poison(String),
}

impl Verdict {
    pub fn retry(reason: impl Into<String>) -> Verdict {
        Verdict::Retry {
            reason: reason.into(),
            at_least: None,
        }
    }
}

/// A consumer's own decisions.
pub trait Handler: Send + Sync + 'static {
    /// What to do with `message`. Called again for a message retried in process.
    fn handle_message(&self, message: &Message) -> impl Future<Output = Verdict> + Send;

    /// The span every log line about `message` carries.
    fn span(&self, _message: &Message) -> Span {
        Span::current()
    }

    /// Messages of one FIFO group with the same key are kept in order: once one stays
    /// on the queue, the later ones in the same receive go back behind it. `None`:
    /// the message is independent of the others in its group.
    fn order_key(&self, _message: &Message) -> Option<String> {
        None
    }
}

/// How the messages of a receive are worked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// Each message on its own, at most this many at once; the loop receives again
    /// while they are worked on.
    Concurrent { max_in_flight: usize },
    /// By `MessageGroupId`: the groups at once, each in order; the loop receives again
    /// once the whole receive is settled.
    Groups,
}

/// What happens to a message whose handler said [`Verdict::Retry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retries {
    /// Tried again here, backing off, for as long as it takes; the message stays
    /// invisible meanwhile, so it never counts towards the queue's `maxReceiveCount`.
    InProcess(Backoff),
    /// Handed back to the queue, visible again after the back-off for its receive
    /// count; SQS dead-letters it after `maxReceiveCount` receives.
    Release(Backoff),
}

impl Retries {
    fn backoff(&self) -> &Backoff {
        match self {
            Retries::InProcess(b) | Retries::Release(b) => b,
        }
    }
}

/// Where a message is once its consumer is done with it for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Deleted (handled, or dead-lettered).
    Done,
    /// Still on the queue, to come back later.
    Stays,
}

/// The receipts of the messages in hand (received, not settled).
#[derive(Clone, Default)]
struct InHand(Arc<Mutex<HashSet<String>>>);

impl InHand {
    fn add(&self, messages: &[Message]) {
        let mut hand = self.0.lock().unwrap_or_else(|p| p.into_inner());
        hand.extend(
            messages
                .iter()
                .filter_map(|m| m.receipt_handle().map(str::to_owned)),
        );
    }

    fn remove(&self, message: &Message) {
        if let Some(r) = message.receipt_handle() {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(r);
        }
    }

    fn receipts(&self) -> Vec<String> {
        let hand = self.0.lock().unwrap_or_else(|p| p.into_inner());
        hand.iter().cloned().collect()
    }
}

/// One queue's consumer. Build it with [`Consumer::new`] and the `with_` settings, then
/// [`Consumer::run`] it.
pub struct Consumer<H> {
    handler: Arc<H>,
    queue: Queue,
    dead_letter: Option<Queue>,
    /// The `queue` label of `aws_jit_queue_messages_total`.
    label: &'static str,
    dispatch: Dispatch,
    retries: Retries,
    wait: Duration,
    lease: Option<Duration>,
    shutdown_grace: Option<Duration>,
    faults: Faults,
    before_delete: Option<&'static str>,
    metrics: Arc<Metrics>,
}

impl<H> Clone for Consumer<H> {
    fn clone(&self) -> Self {
        Consumer {
            handler: self.handler.clone(),
            queue: self.queue.clone(),
            dead_letter: self.dead_letter.clone(),
            label: self.label,
            dispatch: self.dispatch,
            retries: self.retries,
            wait: self.wait,
            lease: self.lease,
            shutdown_grace: self.shutdown_grace,
            faults: self.faults.clone(),
            before_delete: self.before_delete,
            metrics: self.metrics.clone(),
        }
    }
}

impl<H: Handler> Consumer<H> {
    /// A consumer of `queue` whose messages `handler` decides on, counted as `label`:
    /// groups in order, retries handed back to the queue (1 s doubling to 30 s), 20 s
    /// long polls, no dead-letter URL (poison is left to SQS's redrive), no lease, and
    /// at shutdown messages in hand are finished.
    pub fn new(handler: Arc<H>, queue: Queue, label: &'static str) -> Consumer<H> {
        Consumer {
            handler,
            queue,
            dead_letter: None,
            label,
            dispatch: Dispatch::Groups,
            retries: Retries::Release(Backoff::new(
                Duration::from_secs(1),
                Duration::from_secs(30),
            )),
            wait: MAX_WAIT,
            lease: None,
            shutdown_grace: None,
            faults: Faults::default(),
            before_delete: None,
            metrics: Default::default(),
        }
    }

    pub fn with_dispatch(mut self, dispatch: Dispatch) -> Self {
        self.dispatch = dispatch;
        self
    }

    pub fn with_retries(mut self, retries: Retries) -> Self {
        self.retries = retries;
        self
    }

    /// Where poison goes (the identity needs `sqs:SendMessage` on it).
    pub fn with_dead_letter(mut self, url: Option<impl Into<String>>) -> Self {
        self.dead_letter = url.map(|u| Queue::new(self.queue.sqs.clone(), u));
        self
    }

    /// How long one receive waits for messages: whole seconds, 1 (never a busy loop of
    /// short polls) to 20 (SQS's longest).
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait.clamp(Duration::from_secs(1), MAX_WAIT);
        self
    }

    /// Receive with this visibility timeout and extend it every third of it while a
    /// message is in hand.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease.max(Duration::from_secs(1)));
        self
    }

    /// At shutdown, how long messages in hand may take to finish before they go back.
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = Some(grace);
        self
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// A crash point (see [`crate::faults`]) right before a settled message is deleted.
    pub fn with_fault_before_delete(mut self, faults: Faults, point: &'static str) -> Self {
        self.faults = faults;
        self.before_delete = Some(point);
        self
    }

    /// Consumes until `shutdown` completes (see the module's doc for what happens
    /// then). Never returns early and never panics: receive errors are logged and
    /// retried with back-off.
    pub async fn run(&self, shutdown: impl Future) {
        let shutdown = shutdown.fuse();
        tokio::pin!(shutdown);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let hand = InHand::default();
        let mut heartbeat = tokio::task::JoinSet::new();
        if let Some(lease) = self.lease {
            heartbeat.spawn(self.clone().heartbeat(lease, hand.clone()));
        }
        let mut in_flight = tokio::task::JoinSet::new();
        let mut receive_delays = RECEIVE_BACKOFF.delays();
        loop {
            while let Some(joined) = in_flight.try_join_next() {
                self.joined(joined);
            }
            if let Dispatch::Concurrent { max_in_flight } = self.dispatch
                && in_flight.len() >= max_in_flight.max(1)
            {
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    joined = in_flight.join_next() => {
                        if let Some(joined) = joined {
                            self.joined(joined);
                        }
                        continue;
                    }
                }
            }
            let receive = self.queue.receive(self.wait, self.lease);
            tokio::pin!(receive);
            let received = tokio::select! {
                biased;
                _ = &mut shutdown => {
                    // A poll in flight may already hold messages: let it finish (at
                    // most the long-poll wait) and hand them straight back, rather than
                    // leave them invisible (blocking their group) for the visibility
                    // timeout.
                    if let Ok(messages) = receive.await {
                        for m in &messages {
                            if let Some(r) = m.receipt_handle() {
                                self.queue.set_visibility(r, Duration::ZERO).await;
                            }
                        }
                    }
                    break;
                }
                received = &mut receive => received,
            };
            let messages = match received {
                Ok(messages) => {
                    receive_delays = RECEIVE_BACKOFF.delays();
                    messages
                }
                Err(e) => {
                    let delay = receive_delays.next_delay(retry::throttle_floor(e.code.as_deref()));
                    warn!(
                        queue_url = %self.queue.url,
                        error = %e,
                        retry_in = ?delay,
                        "cannot receive from the queue; backing off"
                    );
                    tokio::select! {
                        biased;
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            };
            hand.add(&messages);
            match self.dispatch {
                Dispatch::Concurrent { .. } => {
                    for message in messages {
                        let this = self.clone();
                        let (stop, hand) = (stop_rx.clone(), hand.clone());
                        let span = self.handler.span(&message);
                        in_flight.spawn(
                            async move {
                                this.work_on(&message, stop).await;
                                hand.remove(&message);
                            }
                            .instrument(span),
                        );
                    }
                }
                Dispatch::Groups => {
                    let mut groups = self.groups(messages, &stop_rx, &hand);
                    // Owns the groups' tasks: dropping it aborts them.
                    let mut all_settled = Box::pin(async move {
                        while let Some(joined) = groups.join_next().await {
                            self.joined(joined);
                        }
                    });
                    tokio::select! {
                        biased;
                        _ = &mut all_settled => continue,
                        _ = &mut shutdown => {}
                    }
                    let _ = stop_tx.send(true);
                    if !self.within_grace(all_settled).await {
                        self.hand_back(&hand).await;
                    }
                    break;
                }
            }
        }
        let _ = stop_tx.send(true);
        let all_settled = async {
            while let Some(joined) = in_flight.join_next().await {
                self.joined(joined);
            }
        };
        if !self.within_grace(all_settled).await {
            in_flight.abort_all();
            self.hand_back(&hand).await;
        }
        heartbeat.abort_all();
    }

    /// Waits for `work`, within the shutdown grace if there is one. False when the
    /// grace ran out first.
    async fn within_grace(&self, work: impl Future<Output = ()>) -> bool {
        match self.shutdown_grace {
            None => {
                work.await;
                true
            }
            Some(grace) => match tokio::time::timeout(grace, work).await {
                Ok(()) => true,
                Err(_) => {
                    warn!(
                        queue_url = %self.queue.url,
                        ?grace,
                        "shutdown grace period over; unfinished messages go back to the queue"
                    );
                    false
                }
            },
        }
    }

    /// Gives every message still in hand back to the queue at once.
    async fn hand_back(&self, hand: &InHand) {
        for receipt in hand.receipts() {
            self.queue.set_visibility(&receipt, Duration::ZERO).await;
        }
    }

    fn joined(&self, joined: Result<(), tokio::task::JoinError>) {
        if let Err(e) = joined
            && !e.is_cancelled()
        {
            // Not expected (nothing here panics); its messages come back after their
            // visibility timeout.
            error!(queue_url = %self.queue.url, error = %e, "a message's task ended abnormally");
        }
    }

    /// Keeps the messages in hand invisible: every third of the lease, for the lease.
    async fn heartbeat(self, lease: Duration, hand: InHand) {
        let every = (lease / 3).max(MIN_HEARTBEAT);
        loop {
            tokio::time::sleep(every).await;
            for receipt in hand.receipts() {
                self.queue.set_visibility(&receipt, lease).await;
            }
        }
    }

    /// One receive's messages by group, each group's in order, as tasks.
    fn groups(
        &self,
        messages: Vec<Message>,
        stop: &tokio::sync::watch::Receiver<bool>,
        hand: &InHand,
    ) -> tokio::task::JoinSet<()> {
        let mut tasks = tokio::task::JoinSet::new();
        for group in by_group(messages) {
            let this = self.clone();
            let (stop, hand) = (stop.clone(), hand.clone());
            tasks.spawn(async move { this.work_on_group(group, stop, hand).await });
        }
        tasks
    }

    /// The messages of one group, in order, one at a time. Once a message stays on the
    /// queue, the later ones with its order key go back behind it at once.
    async fn work_on_group(
        &self,
        group: Vec<Message>,
        stop: tokio::sync::watch::Receiver<bool>,
        hand: InHand,
    ) {
        let mut stuck = Stuck::default();
        for message in group {
            let key = self.handler.order_key(&message);
            let span = self.handler.span(&message);
            async {
                if stuck.must_wait(key.as_deref()) {
                    info!(
                        "not working on this message yet: an earlier message of its kind \
                         stays on the queue; it comes back behind that one"
                    );
                    if let Some(r) = message.receipt_handle() {
                        self.queue.set_visibility(r, Duration::ZERO).await;
                    }
                } else {
                    let settled = self.work_on(&message, stop.clone()).await;
                    stuck.settled(key, settled);
                }
                hand.remove(&message);
            }
            .instrument(span)
            .await;
        }
    }

    /// Handles one message until it is settled for now.
    async fn work_on(
        &self,
        message: &Message,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Settled {
        let Some(receipt) = message.receipt_handle() else {
            warn!("the message has no receipt handle; it cannot be settled and will come back");
            return Settled::Stays;
        };
        let mut delays = None;
        // The queue's own visibility timeout (or the lease) holds it at first; when it
        // is retried here, this consumer says how long.
        let mut held_until: Option<Instant> = None;
        loop {
            match self.handler.handle_message(message).await {
                Verdict::Done => {
                    let settled = self.delete(message).await;
                    self.metrics.queue_message(self.label, outcome::PROCESSED);
                    return settled;
                }
                Verdict::Poison(reason) => {
                    self.metrics
                        .queue_message(self.label, outcome::DEAD_LETTERED);
                    return self.dead_letter(message, &reason).await;
                }
                Verdict::Retry { reason, at_least } => {
                    self.metrics.queue_message(self.label, outcome::FAILED);
                    let backoff = match self.retries {
                        Retries::Release(backoff) => {
                            let delay = backoff
                                .after(receive_count(message))
                                .max(at_least.unwrap_or_default());
                            warn!(%reason, retry_in = ?delay, "not handled; the message comes back after a back-off");
                            self.queue.set_visibility(receipt, delay).await;
                            return Settled::Stays;
                        }
                        Retries::InProcess(backoff) => backoff,
                    };
                    let delay = delays
                        .get_or_insert_with(|| backoff.delays())
                        .next_delay(at_least);
                    warn!(%reason, retry_in = ?delay, "cannot handle the message yet; trying again");
                    if self.lease.is_none()
                        && let Some(hold) = hold_for(held_until, Instant::now(), delay)
                        && self.queue.set_visibility(receipt, hold).await
                    {
                        held_until = Some(Instant::now() + hold);
                    }
                    tokio::select! {
                        _ = stopped(&mut stop) => {
                            self.queue.set_visibility(receipt, Duration::ZERO).await;
                            return Settled::Stays;
                        }
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Deletes a settled message. `Stays` when it could not be: it comes back after its
    /// visibility timeout and is settled again.
    async fn delete(&self, message: &Message) -> Settled {
        let Some(receipt) = message.receipt_handle() else {
            return Settled::Stays;
        };
        if let Some(point) = self.before_delete {
            self.faults.point(point).await;
        }
        match self.queue.delete(receipt).await {
            Ok(()) => Settled::Done,
            Err(e) => {
                warn!(
                    error = %e,
                    "cannot delete a settled message; it will come back and be settled again"
                );
                Settled::Stays
            }
        }
    }

    /// Moves a poison message to the dead-letter queue, or leaves it to SQS's redrive.
    async fn dead_letter(&self, message: &Message, reason: &str) -> Settled {
        let Some(receipt) = message.receipt_handle() else {
            return Settled::Stays;
        };
        let Some(dlq) = &self.dead_letter else {
            error!(
                %reason,
                receive_count = receive_count(message),
                "no dead-letter URL configured: leaving the poison message to SQS's redrive \
                 (the queue's maxReceiveCount)"
            );
            self.queue.set_visibility(receipt, POISON_REDELIVERY).await;
            return Settled::Stays;
        };
        match dlq.put_dead_letter(message, reason).await {
            Ok(()) => {
                error!(%reason, dead_letter_url = %dlq.url, "moved the poison message to the dead-letter queue");
                self.delete(message).await
            }
            Err(e) => {
                let delay = self.retries.backoff().after(receive_count(message));
                error!(
                    %reason,
                    error = %e,
                    retry_in = ?delay,
                    "cannot move the poison message to the dead-letter queue; it stays"
                );
                self.queue.set_visibility(receipt, delay).await;
                Settled::Stays
            }
        }
    }
}

/// The order keys of a group's messages that stayed on the queue in this receive: a
/// later message with one of them waits behind it (a revoke never overtakes its grant).
#[derive(Debug, Default)]
struct Stuck(Vec<String>);

impl Stuck {
    fn must_wait(&self, key: Option<&str>) -> bool {
        key.is_some_and(|k| self.0.iter().any(|s| s == k))
    }

    fn settled(&mut self, key: Option<String>, settled: Settled) {
        if settled == Settled::Stays
            && let Some(key) = key
            && !self.0.contains(&key)
        {
            self.0.push(key);
        }
    }
}

/// A receive's messages by `MessageGroupId`: the groups in the order they first appear,
/// each group's messages in the order received (FIFO's order).
fn by_group(messages: Vec<Message>) -> Vec<Vec<Message>> {
    let mut groups: Vec<(String, Vec<Message>)> = Vec::new();
    for message in messages {
        let group = group_id(&message).unwrap_or_default().to_owned();
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, list)) => list.push(message),
            None => groups.push((group, vec![message])),
        }
    }
    groups.into_iter().map(|(_, list)| list).collect()
}

/// How long to make a message retried in process invisible before waiting `delay` for
/// its next try, if what holds it now (`held_until`; `None`: the queue's own
/// visibility timeout, unknown here) may not last until then: the delay and a margin.
fn hold_for(held_until: Option<Instant>, now: Instant, delay: Duration) -> Option<Duration> {
    let needed = now + delay + HOLD_MARGIN / 2;
    held_until
        .is_none_or(|until| until < needed)
        .then_some(delay + HOLD_MARGIN)
}

/// Resolves once the consumer is stopping.
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A message's `MessageGroupId` (FIFO queues), if asked for and there.
pub fn group_id(message: &Message) -> Option<&str> {
    system_attribute(message, MessageSystemAttributeName::MessageGroupId)
}

/// How many times the message was received, this time included (1 if SQS did not say).
pub fn receive_count(message: &Message) -> u32 {
    system_attribute(message, MessageSystemAttributeName::ApproximateReceiveCount)
        .and_then(|c| c.parse().ok())
        .unwrap_or(1)
}

fn system_attribute(message: &Message, name: MessageSystemAttributeName) -> Option<&str> {
    message
        .attributes()
        .and_then(|a| a.get(&name))
        .map(String::as_str)
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

/// FIFO deduplication id for a dead-lettered message: stable per source message, so a
/// move retried after a failed delete is not queued twice. At most 128 characters from
/// the set SQS allows (the message id is a UUID; the body's hash stands in if it is
/// missing).
fn dead_letter_dedup_id(message_id: &str, body: Option<&str>) -> String {
    let mut id: String = message_id
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(100)
        .collect();
    if id.is_empty() {
        id = format!("{:016x}", fnv1a(body.unwrap_or_default().as_bytes()));
    }
    format!("dead-letter-{id}")
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_dedup_ids_are_stable_and_valid() {
        let id = dead_letter_dedup_id("5c3b7f0e-0000-4000-8000-000000000001", Some("x"));
        assert_eq!(id, "dead-letter-5c3b7f0e-0000-4000-8000-000000000001");
        let from_body = dead_letter_dedup_id("", Some("junk"));
        assert_eq!(from_body, dead_letter_dedup_id("", Some("junk")));
        assert_ne!(from_body, dead_letter_dedup_id("", Some("junk2")));
        let long = dead_letter_dedup_id(&"é x".repeat(300), None);
        assert!(long.len() <= 128, "{}", long.len());
        assert!(long.chars().all(|c| c.is_ascii_graphic()), "{long}");
    }

    fn message(group: &str, body: &str) -> Message {
        Message::builder()
            .attributes(MessageSystemAttributeName::MessageGroupId, group)
            .body(body)
            .build()
    }

    #[test]
    fn a_receive_is_split_by_group_each_in_order() {
        let messages = vec![
            message("role-a", "a1"),
            message("role-b", "b1"),
            message("role-a", "a2"),
            Message::builder().body("none").build(),
            message("role-a", "a3"),
        ];
        let groups = by_group(messages);
        let bodies: Vec<Vec<&str>> = groups
            .iter()
            .map(|g| g.iter().map(|m| m.body().unwrap_or_default()).collect())
            .collect();
        assert_eq!(
            bodies,
            vec![vec!["a1", "a2", "a3"], vec!["b1"], vec!["none"]]
        );
    }

    #[test]
    fn after_a_message_stays_the_later_ones_of_its_key_wait_behind_it() {
        let mut stuck = Stuck::default();
        stuck.settled(Some("exec-1".into()), Settled::Done);
        assert!(!stuck.must_wait(Some("exec-1")), "done: nothing waits");
        stuck.settled(Some("exec-1".into()), Settled::Stays);
        stuck.settled(None, Settled::Stays);
        assert!(
            stuck.must_wait(Some("exec-1")),
            "its revoke waits behind its grant"
        );
        assert!(!stuck.must_wait(Some("exec-2")), "other executions commute");
        assert!(
            !stuck.must_wait(None),
            "a message without a key never waits"
        );
    }

    #[test]
    fn a_message_retried_in_process_is_held_until_after_its_next_try() {
        let now = Instant::now();
        let delay = Duration::from_secs(4);
        // First retry: the queue's timeout is unknown, so it is set.
        assert_eq!(hold_for(None, now, delay), Some(delay + HOLD_MARGIN));
        // Held long enough already: nothing to do.
        assert_eq!(
            hold_for(Some(now + Duration::from_secs(20)), now, delay),
            None
        );
        // Held, but not beyond the next try and half the margin: extended.
        assert_eq!(
            hold_for(Some(now + Duration::from_secs(6)), now, delay),
            Some(delay + HOLD_MARGIN)
        );
    }

    #[test]
    fn receive_counts_and_groups_come_from_the_system_attributes() {
        let m = Message::builder()
            .attributes(MessageSystemAttributeName::ApproximateReceiveCount, "3")
            .attributes(MessageSystemAttributeName::MessageGroupId, "g")
            .build();
        assert_eq!((receive_count(&m), group_id(&m)), (3, Some("g")));
        let bare = Message::builder().build();
        assert_eq!((receive_count(&bare), group_id(&bare)), (1, None));
    }
}
