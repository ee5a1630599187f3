//! The relay (`aws-jit relay`, the operator pod's sidecar): alert queue → Slack, at
//! least once.
//!
//! It long-polls the alert queue (FIFO, one message group per execution), renders each
//! event ([`render`]) and posts it to the channel of the request's AccessRole (its
//! `slackChannel`), or the configured default. A request has one living message: the
//! first event posts it and its channel and `ts` are remembered on the AccessRequest's
//! `status.slack` ([`crate::crd::SlackMessage`]); every later event `chat.update`s it
//! and adds a thread reply. The events already shown are listed in
//! `status.slack.relayed`, so a message that comes back (relay killed after Slack
//! accepted it) is not shown twice. A request that no longer exists gets new messages.
//!
//! That state is in status, which only the operator's identities may write (the
//! admission policies), and is written by a JSON patch on the status subresource under
//! the field manager [`FIELD_MANAGER`]; the controller's status apply leaves it alone.
//! Nothing is read from annotations: whoever creates a request writes those, and could
//! otherwise silence its alerts or point them at another request's message.
//!
//! A message is deleted only after Slack accepted it. `429` waits `Retry-After` (at
//! least); 5xx, transport and Kubernetes errors are retried with backoff
//! ([`crate::aws::retry`]) while the message's visibility is extended, so Slack being
//! down for minutes loses nothing. The queue loop is the shared [`crate::aws::consumer`]
//! (groups in order, a lease of [`Config::visibility_timeout`]). A message
//! Slack refuses for good (`channel_not_found`, `invalid_blocks`, …) or that cannot be
//! read is moved to the alert dead-letter queue with a log line and never blocks the
//! rest. Writes to one channel are paced (default one a second). On shutdown, in-flight
//! messages get [`Config::shutdown_grace`] to finish; what is left returns to the queue.
//!
//! Pacing is per process: each relay replica keeps its own per-channel clock, so with
//! two replicas (the chart runs two operator pods, each with this sidecar) one channel
//! can get up to two writes per pacing interval. Slack's own limit (about one message
//! a second per channel, with bursts tolerated) is still enforced by Slack: a `429`
//! from it is obeyed by whichever replica got it. There is no cross-replica pacing.
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::Message;
use futures::FutureExt;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, debug, error, info, warn};

use crate::aws::consumer::{Consumer, Dispatch, Handler, Queue, Verdict};
use crate::aws::retry::{Backoff, Failed};
use crate::crd::{AccessRequest, AccessRole, SlackMessage};

pub mod render;
/// The role's approvers who have a Slack user ID, as mentions.
fn approver_mentions(role: &AccessRole) -> impl Iterator<Item = String> + '_ {
    role.spec
        .approvers
        .iter()
        .filter_map(|a| a.slack_user_id.as_ref())
        .map(|id| format!("<@{id}>"))
}

/// How long the relay tries to tell whether an alert comes from its request's own
/// execution (the controller records it right after it starts one) before it gives up
/// and dead-letters the alert.
const RESOLVE_BUDGET: std::time::Duration = std::time::Duration::from_secs(120);

pub mod slack;

use render::{Alert, Mentions, Rendered};
use slack::{Failure, SlackApi};

/// The field manager of the relay's writes to `status.slack`.
pub const FIELD_MANAGER: &str = "aws-jit-relay";
/// SQS message attribute carrying why a message was dead-lettered (as the worker's).
pub const DEAD_LETTER_REASON_ATTRIBUTE: &str = crate::aws::consumer::DEAD_LETTER_REASON_ATTRIBUTE;

/// Slack's bot token: never printed.
#[derive(Clone)]
pub struct BotToken(pub String);

impl std::fmt::Debug for BotToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BotToken(<redacted>)")
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Template output AlertQueueUrl.
    pub alert_queue_url: String,
    /// Template output AlertDeadLetterQueueUrl; without it, refused messages are left
    /// to SQS's redrive (maxReceiveCount).
    pub dead_letter_url: Option<String>,
    /// Channel for roles without `slackChannel` and requests that are gone.
    pub default_channel: String,
    /// Web API base, `https://slack.com/api`.
    pub slack_api_url: String,
    pub bot_token: BotToken,
    /// Minimum interval between two writes to one channel (zero: no pacing).
    pub pacing: Duration,
    /// Who grant and revoke failures mention, e.g. `<!subteam^S012>` or `<@U012>`
    /// (the role's approvers with a Slack user ID are mentioned as well).
    pub failure_mentions: Vec<String>,
    /// Long-poll wait (at most 20 s).
    pub queue_wait: Duration,
    /// Visibility of a received message; extended every third of it while working.
    pub visibility_timeout: Duration,
    /// First retry delay of a transient Slack or Kubernetes failure; doubles up to
    /// `retry_max`, each with up to as much again of jitter.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How long in-flight messages may take to finish once shutdown is asked.
    pub shutdown_grace: Duration,
    /// Where the relay counts alerts and Slack calls.
    pub metrics: std::sync::Arc<crate::telemetry::metrics::Metrics>,
}

impl Config {
    /// The defaults, for a queue, a default channel and a token.
    pub fn new(alert_queue_url: &str, default_channel: &str, bot_token: &str) -> Config {
        Config {
            alert_queue_url: alert_queue_url.into(),
            dead_letter_url: None,
            default_channel: default_channel.into(),
            slack_api_url: "https://slack.com/api".into(),
            bot_token: BotToken(bot_token.into()),
            pacing: Duration::from_secs(1),
            failure_mentions: Vec::new(),
            queue_wait: Duration::from_secs(20),
            visibility_timeout: Duration::from_secs(60),
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(20),
            metrics: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot set up the Slack client: {0}")]
    Slack(String),
}

/// What became of one alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Slack accepted it (posted, or updated + thread reply).
    Delivered,
    /// Already shown before (a redelivery).
    AlreadyShown,
    /// Refused or unreadable: moved to the dead-letter queue (or left to the redrive).
    DeadLettered(String),
}

/// Where an alert goes, and what the request remembers.
#[derive(Debug, Clone, Default)]
struct Target {
    /// The live AccessRequest (name/uid match), if any.
    request: Option<AccessRequest>,
    channel: String,
    /// The living message, if one was posted.
    living: Option<(String, String)>,
    relayed: Vec<String>,
    mentions: Mentions,
}

/// Per-channel pacing: each write to a channel takes the next free slot.
struct Pacer {
    interval: Duration,
    next: Mutex<HashMap<String, tokio::time::Instant>>,
}

impl Pacer {
    async fn wait(&self, channel: &str) {
        if self.interval.is_zero() {
            return;
        }
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = tokio::time::Instant::now();
            let slot = next
                .get(channel)
                .copied()
                .filter(|t| *t > now)
                .unwrap_or(now);
            next.insert(channel.to_string(), slot + self.interval);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

pub struct Relay {
    sqs: aws_sdk_sqs::Client,
    kube: kube::Client,
    slack: SlackApi,
    config: Config,
    pacer: Pacer,
}

/// Runs the relay until `shutdown` resolves (then finishes in-flight messages within
/// the grace period and returns).
pub async fn run(
    kube: kube::Client,
    aws: &aws_config::SdkConfig,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RelayError> {
    let relay = Relay::new(kube, aws_sdk_sqs::Client::new(aws), config)?;
    relay.run(shutdown).await;
    Ok(())
}

impl Relay {
    pub fn new(
        kube: kube::Client,
        sqs: aws_sdk_sqs::Client,
        config: Config,
    ) -> Result<Relay, RelayError> {
        let slack =
            SlackApi::new(&config.slack_api_url, &config.bot_token.0).map_err(RelayError::Slack)?;
        Ok(Relay {
            sqs,
            kube,
            slack,
            pacer: Pacer {
                interval: config.pacing,
                next: Mutex::new(HashMap::new()),
            },
            config,
        })
    }

    /// Consumes the alert queue until `shutdown` resolves, then gives the alerts in hand
    /// [`Config::shutdown_grace`] to finish; what is left goes back to the queue.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        info!(queue = %self.config.alert_queue_url, default_channel = %self.config.default_channel, "relay started");
        let config = self.config.clone();
        let queue = Queue::new(self.sqs.clone(), &config.alert_queue_url);
        Consumer::new(
            Arc::new(self),
            queue,
            crate::telemetry::metrics::queue::ALERT,
        )
        .with_dispatch(Dispatch::Groups)
        .with_lease(config.visibility_timeout)
        .with_shutdown_grace(config.shutdown_grace)
        .with_dead_letter(config.dead_letter_url.clone())
        .with_wait(config.queue_wait)
        .with_metrics(config.metrics.clone())
        .run(shutdown)
        .await;
        info!("relay stopped");
    }

    /// What an alert is worth: `Err` is a permanent refusal (dead-letter it).
    async fn settle(&self, message: &Message) -> Result<Settled, String> {
        let body = message.body().unwrap_or_default();
        debug!(body, "alert received");
        let security = serde_json::from_str::<crate::contract::SecurityAlert>(body)
            .ok()
            .filter(|a| a.event == crate::contract::SecurityAlert::EVENT);
        match (security, serde_json::from_str::<Alert>(body)) {
            (Some(finding), _) => self.deliver_security(&finding).await,
            (None, Ok(alert)) => {
                // Every log line of this alert carries the request's identity.
                let who = &alert.input.request;
                let span = tracing::info_span!(
                    "alert",
                    request_namespace = %who.namespace,
                    request_name = %who.name,
                    request_uid = %who.uid,
                    event = alert.event.name(),
                );
                self.deliver(&alert).instrument(span).await
            }
            (None, Err(e)) => Err(format!("not an alert: {e}")),
        }
    }

    /// Shows one alert in Slack. `Err` is a permanent refusal (dead-letter it);
    /// transient failures are retried here until they pass.
    pub async fn deliver(&self, alert: &Alert) -> Result<Settled, String> {
        let shown_as = alert.shown_as();
        let event = shown_as.as_str();
        // An identity no request can have is refused before any lookup (a forged alert
        // must not make a lookup fail in a way that looks worth retrying).
        crate::policy::authorize::check_identity(&alert.input.request)
            .map_err(|r| r.to_string())?;
        let target = tokio::time::timeout(
            RESOLVE_BUDGET,
            self.retry("look up the request", || self.resolve(alert)),
        )
        .await
        .map_err(|_| {
            format!(
                "could not tell within {RESOLVE_BUDGET:?} whether execution {} is its request's own",
                alert.execution_arn
            )
        })??;
        if target.relayed.iter().any(|e| e == event) {
            info!(event, execution_arn = %alert.execution_arn, "alert already shown; skipping");
            return Ok(Settled::AlreadyShown);
        }
        let enriched = enrich(alert, &target);
        let alert = &enriched;
        let message = render::message(alert, &target.mentions);
        let (channel, ts) = match &target.living {
            Some((channel, ts)) => {
                let updated = self
                    .retry("chat.update", || self.slack_update(channel, ts, &message))
                    .await;
                match updated {
                    Ok(()) => {
                        let step = render::step(alert, &target.mentions);
                        self.retry("chat.postMessage (thread)", || {
                            self.slack_post(channel, &step, Some(ts))
                        })
                        .await?;
                        (channel.clone(), ts.clone())
                    }
                    // The living message was deleted in Slack: start a new one.
                    Err(code) if code == "message_not_found" || code == "cant_update_message" => {
                        let ts = self
                            .retry("chat.postMessage", || {
                                self.slack_post(channel, &message, None)
                            })
                            .await?;
                        (channel.clone(), ts)
                    }
                    Err(code) => return Err(code),
                }
            }
            None => {
                let ts = self
                    .retry("chat.postMessage", || {
                        self.slack_post(&target.channel, &message, None)
                    })
                    .await?;
                (target.channel.clone(), ts)
            }
        };
        if let Some(request) = &target.request {
            let mut relayed = target.relayed.clone();
            relayed.push(event.to_string());
            // A request deleted meanwhile has nothing left to remember; the alert is
            // shown either way.
            if let Err(why) = self
                .retry("remember the message in status.slack", || {
                    self.remember(request, &channel, &ts, &relayed)
                })
                .await
            {
                warn!(%why, "could not remember the Slack message on the request");
            }
        }
        info!(event, channel, execution_arn = %alert.execution_arn, "alert shown in Slack");
        Ok(Settled::Delivered)
    }

    /// Posts a security finding of the operator, loudly, to the channel of the request's
    /// role (or the default channel). Not part of any request's living message.
    async fn deliver_security(
        &self,
        finding: &crate::contract::SecurityAlert,
    ) -> Result<Settled, String> {
        let mut channel = self.config.default_channel.clone();
        let mut mentions = self.config.failure_mentions.clone();
        if let Some(who) = finding
            .request
            .as_ref()
            .filter(|w| crate::policy::authorize::check_identity(w).is_ok())
        {
            let requests: Api<AccessRequest> = Api::namespaced(self.kube.clone(), &who.namespace);
            if let Ok(Some(r)) = requests.get_opt(&who.name).await
                && let Ok(Some(role)) = Api::<AccessRole>::all(self.kube.clone())
                    .get_opt(&r.spec.role)
                    .await
            {
                if let Some(c) = role.spec.slack_channel.clone().filter(|c| !c.is_empty()) {
                    channel = c;
                }
                mentions.extend(approver_mentions(&role));
            }
        }
        let message = render::security(finding, &Mentions(mentions));
        self.retry("chat.postMessage (security)", || {
            self.slack_post(&channel, &message, None)
        })
        .await?;
        warn!(kind = %finding.kind, %channel, "security finding shown in Slack");
        Ok(Settled::Delivered)
    }

    async fn slack_post(
        &self,
        channel: &str,
        r: &Rendered,
        thread: Option<&str>,
    ) -> Result<String, Failure> {
        self.pacer.wait(channel).await;
        let out = self.slack.post(channel, r, thread).await;
        self.count("chat.postMessage", &out);
        out
    }

    async fn slack_update(&self, channel: &str, ts: &str, r: &Rendered) -> Result<(), Failure> {
        self.pacer.wait(channel).await;
        let out = self.slack.update(channel, ts, r).await;
        self.count("chat.update", &out);
        out
    }

    fn count<T>(&self, method: &'static str, out: &Result<T, Failure>) {
        let m = &self.config.metrics;
        let result = match out {
            Ok(_) => "ok",
            Err(Failure::RateLimited(_)) => {
                m.slack_rate_limited.inc();
                "rate_limited"
            }
            Err(Failure::Refused(_)) => "refused",
            Err(Failure::Transient(_)) => "transient_error",
        };
        m.slack_request(method, result);
    }

    /// Retries `f` until it succeeds or fails for good (returned as `Err(reason)`), by
    /// the one back-off policy; a `429` waits at least its `Retry-After`.
    async fn retry<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, String>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let policy = Backoff::new(self.config.retry_base, self.config.retry_max);
        crate::aws::retry::retry(&policy, what, || {
            f().map(|tried| {
                tried.map_err(|failure| match failure {
                    Failure::Refused(reason) => Failed::Permanent(reason),
                    Failure::RateLimited(wait) => Failed::Transient {
                        error: "Slack rate limit".to_string(),
                        at_least: Some(wait),
                    },
                    Failure::Transient(error) => Failed::Transient {
                        error,
                        at_least: None,
                    },
                })
            })
        })
        .await
    }

    /// The request, its role's channel and mentions, and what it remembers.
    async fn resolve(&self, alert: &Alert) -> Result<Target, Failure> {
        let who = &alert.input.request;
        // The apiserver's refusals (forbidden, invalid) are final; only failing to
        // reach it is worth retrying.
        let kube_err = |e: kube::Error| match e {
            kube::Error::Api(s) if (400..500).contains(&s.code) && s.code != 429 => {
                Failure::Refused(format!("Kubernetes refused the lookup: {}", s.message))
            }
            e => Failure::Transient(format!("Kubernetes: {e}")),
        };
        let requests: Api<AccessRequest> = Api::namespaced(self.kube.clone(), &who.namespace);
        let request = requests
            .get_opt(&who.name)
            .await
            .map_err(kube_err)?
            .filter(|r| r.uid().as_deref() == Some(who.uid.as_str()));
        // Only the execution the request recorded speaks for it: anyone who can start an
        // execution could otherwise put a forged card (another role, duration, reason)
        // in front of the approvers, or mark the real one cancelled.
        if let Some(r) = &request {
            let status = r.status.clone().unwrap_or_default();
            match status.execution_arn.as_deref() {
                Some(recorded) if recorded == alert.execution_arn => {}
                Some(recorded) => {
                    return Err(Failure::Refused(format!(
                        "execution {} is not the request's own ({recorded})",
                        alert.execution_arn
                    )));
                }
                None if status.phase.is_some_and(crate::crd::Phase::is_terminal) => {
                    return Err(Failure::Refused(format!(
                        "the request ended without recording an execution; {} is not its own",
                        alert.execution_arn
                    )));
                }
                None => {
                    return Err(Failure::Transient(
                        "the request has not recorded its execution yet".into(),
                    ));
                }
            }
        }
        let roles: Api<AccessRole> = Api::all(self.kube.clone());
        let role = match &request {
            Some(r) => roles.get_opt(&r.spec.role).await.map_err(kube_err)?,
            // Gone: find its role by ARN, for the channel at least.
            None => roles
                .list(&Default::default())
                .await
                .map_err(kube_err)?
                .items
                .into_iter()
                .find(|r| r.spec.role_arn == alert.input.role_arn),
        };
        let mut mentions = self.config.failure_mentions.clone();
        if let Some(role) = &role {
            mentions.extend(approver_mentions(role));
        }
        let channel = role
            .as_ref()
            .and_then(|r| r.spec.slack_channel.clone())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| self.config.default_channel.clone());
        let remembered = request
            .as_ref()
            .and_then(|r| r.status.as_ref())
            .and_then(|s| s.slack.clone())
            .unwrap_or_default();
        let living = (!remembered.channel.is_empty() && !remembered.ts.is_empty())
            .then(|| (remembered.channel.clone(), remembered.ts.clone()));
        let relayed = remembered.relayed;
        Ok(Target {
            request,
            channel,
            living,
            relayed,
            mentions: Mentions(mentions),
        })
    }

    /// Remembers the living message and the events shown in the request's `status.slack`
    /// (a JSON patch on the status subresource that first tests the uid, so a recreated
    /// request is not touched).
    async fn remember(
        &self,
        request: &AccessRequest,
        channel: &str,
        ts: &str,
        relayed: &[String],
    ) -> Result<(), Failure> {
        let api: Api<AccessRequest> =
            Api::namespaced(self.kube.clone(), &request.namespace().unwrap_or_default());
        let name = request.name_any();
        // Read again on every attempt: whether status exists decides the patch.
        let current = match api.get_opt(&name).await {
            Ok(Some(r)) if r.uid() == request.uid() => r,
            Ok(_) => return Err(Failure::Refused("request gone".into())),
            Err(e) => return Err(Failure::Transient(format!("Kubernetes: {e}"))),
        };
        let slack = SlackMessage {
            channel: channel.to_string(),
            ts: ts.to_string(),
            relayed: relayed.to_vec(),
        };
        let patch = remember_patch(&current, &slack)
            .map_err(|e| Failure::Refused(format!("building the status patch: {e}")))?;
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        match api.patch_status(&name, &params, &patch).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => {
                Err(Failure::Refused(format!("request gone: {}", e.message)))
            }
            // A failed `test` (re-created, or status written meanwhile) is a bare 422:
            // the next attempt reads again. A 422 on an unchanged object is the schema
            // refusing the record itself: retrying cannot help.
            Err(kube::Error::Api(e)) if e.code == 422 => match api.get_opt(&name).await {
                Ok(Some(r)) if r.uid() == request.uid() => {
                    if r.resource_version() == current.resource_version() {
                        Err(Failure::Refused(format!(
                            "status.slack refused: {}",
                            e.message
                        )))
                    } else {
                        Err(Failure::Transient("the request changed meanwhile".into()))
                    }
                }
                Ok(_) => Err(Failure::Refused("request gone".into())),
                Err(e) => Err(Failure::Transient(format!("Kubernetes: {e}"))),
            },
            Err(e) => Err(Failure::Transient(format!("Kubernetes: {e}"))),
        }
    }
}

/// The relay's part of the alert-queue loop ([`crate::aws::consumer`]): an alert Slack
/// took (or that was shown before) is done; one Slack refuses for good, or that cannot
/// be read, is poison. Transient failures are retried inside [`Relay::deliver`].
impl Handler for Relay {
    async fn handle_message(&self, message: &Message) -> Verdict {
        match self.settle(message).await {
            Ok(s) => {
                debug!(?s, "alert settled");
                Verdict::Done
            }
            Err(reason) => {
                error!(
                    %reason,
                    message_id = message.message_id().unwrap_or_default(),
                    "Slack refused an alert for good (or it cannot be read); moving it to the dead-letter queue"
                );
                Verdict::Poison(reason)
            }
        }
    }
}

/// The JSON patch that records `slack` on `request`, as read just before. It tests the
/// uid first, so a re-created request is never touched. Once the controller wrote
/// status, only `status.slack` is set; before, status is created, on condition that the
/// object is still the one read (its resourceVersion), so a status written meanwhile
/// is never replaced.
fn remember_patch(
    request: &AccessRequest,
    slack: &SlackMessage,
) -> Result<Patch<()>, serde_json::Error> {
    let uid = request.meta().uid.clone().unwrap_or_default();
    let mut ops = vec![json!({"op": "test", "path": "/metadata/uid", "value": uid})];
    if request.status.is_some() {
        ops.push(json!({"op": "add", "path": "/status/slack", "value": slack}));
    } else {
        let version = request.resource_version().unwrap_or_default();
        ops.push(json!({"op": "test", "path": "/metadata/resourceVersion", "value": version}));
        ops.push(json!({"op": "add", "path": "/status", "value": {"slack": slack}}));
    }
    serde_json::from_value(serde_json::Value::Array(ops)).map(Patch::Json)
}

/// Fills what the alert lacks from the request: a `denied` alert whose `Cause` is
/// missing (moto's Step Functions drops task-failure causes) names the denier from the
/// request's status.
fn enrich(alert: &Alert, target: &Target) -> Alert {
    let mut alert = alert.clone();
    if alert.event == render::Event::Denied && alert.denial().is_none() {
        let deny = target
            .request
            .as_ref()
            .and_then(|r| r.status.as_ref())
            .and_then(|s| s.approvals.as_ref())
            .and_then(|a| a.iter().find(|v| v.decision == crate::crd::Decision::Deny));
        if let Some(v) = deny {
            let cause = crate::contract::DenialCause {
                approver_name: v.approver.clone(),
                requester_arn: alert.input.requester_arn.clone(),
                comment: v.comment.clone().unwrap_or_default(),
            };
            if let Ok(cause) = serde_json::to_string(&cause) {
                if !alert.error.is_object() {
                    alert.error = json!({"Error": crate::contract::errors::DENIED});
                }
                alert.error["Cause"] = json!(cause);
            }
        }
    }
    alert
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_never_printed() {
        let c = Config::new("q", "C1", "xoxb-secret");
        assert!(!format!("{c:?}").contains("xoxb-secret"));
    }

    #[test]
    fn slack_failures_are_sorted() {
        use slack_morphism::errors::*;
        let api = |code: &str| SlackClientError::ApiError(SlackClientApiError::new(code.into()));
        assert_eq!(
            slack::classify(api("channel_not_found")),
            Failure::Refused("channel_not_found".into())
        );
        assert_eq!(
            slack::classify(api("invalid_blocks")),
            Failure::Refused("invalid_blocks".into())
        );
        assert!(matches!(
            slack::classify(api("invalid_auth")),
            Failure::Transient(_)
        ));
        assert!(matches!(
            slack::classify(api("internal_error")),
            Failure::Transient(_)
        ));
        let rl = SlackClientError::RateLimitError(
            SlackRateLimitError::new().with_retry_after(Duration::from_secs(7)),
        );
        assert_eq!(
            slack::classify(rl),
            Failure::RateLimited(Duration::from_secs(7))
        );
    }

    #[test]
    fn a_denial_without_its_cause_names_the_denier_from_the_request() {
        let alert: Alert = serde_json::from_value(json!({
            "event": "denied", "execution_arn": "arn:x",
            "input": {"requester_arn": "arn:aws:iam::123456789012:user/alice",
                "requester_name": "alice", "reason": "r", "role_arn": "arn:aws:iam::123456789012:role/a",
                "method": "TrustPolicy", "work_group": "g", "duration_seconds": 60,
                "approval_timeout_seconds": 60, "request": {"namespace": "n", "name": "r", "uid": "u"}},
            "error": {"Error": "Denied", "Cause": null}
        }))
        .expect("alert");
        let request: AccessRequest = serde_json::from_value(json!({
            "apiVersion": "aws-jit.io/v1alpha1", "kind": "AccessRequest",
            "metadata": {"name": "r", "namespace": "n", "uid": "u"},
            "spec": {"role": "a", "requester": "alice", "reason": "r"},
            "status": {"approvals": [
                {"approver": "carol", "decision": "Approve"},
                {"approver": "dave", "decision": "Deny", "comment": "not today"}
            ]}
        }))
        .expect("request");
        let target = Target {
            request: Some(request),
            ..Target::default()
        };
        let d = enrich(&alert, &target).denial().expect("denial");
        assert_eq!(
            (d.approver_name.as_str(), d.comment.as_str()),
            ("dave", "not today")
        );
        // A cause that is there wins.
        let mut with_cause = alert.clone();
        with_cause.error["Cause"] =
            json!(r#"{"approver_name":"erin","requester_arn":"x","comment":""}"#);
        assert_eq!(
            enrich(&with_cause, &target)
                .denial()
                .expect("denial")
                .approver_name,
            "erin"
        );
    }

    #[test]
    fn the_relay_state_patch_tests_the_uid_and_never_replaces_a_status() {
        let slack = SlackMessage {
            channel: "C1".into(),
            ts: "1.2".into(),
            relayed: vec!["requested".into()],
        };
        let mut request: AccessRequest = serde_json::from_value(json!({
            "apiVersion": "aws-jit.io/v1alpha1", "kind": "AccessRequest",
            "metadata": {"name": "r", "namespace": "n", "uid": "u1", "resourceVersion": "7"},
            "spec": {"role": "a", "requester": "alice", "reason": "r"},
        }))
        .expect("request");
        let ops = |r: &AccessRequest| match remember_patch(r, &slack).expect("patch") {
            Patch::Json(p) => serde_json::to_value(p).expect("json"),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            ops(&request),
            json!([
                {"op": "test", "path": "/metadata/uid", "value": "u1"},
                {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
                {"op": "add", "path": "/status", "value": {"slack": {"channel": "C1", "ts": "1.2", "relayed": ["requested"]}}},
            ])
        );
        request.status = Some(Default::default());
        assert_eq!(
            ops(&request),
            json!([
                {"op": "test", "path": "/metadata/uid", "value": "u1"},
                {"op": "add", "path": "/status/slack", "value": {"channel": "C1", "ts": "1.2", "relayed": ["requested"]}},
            ])
        );
    }

    #[tokio::test]
    async fn pacing_spaces_writes_per_channel() {
        let pacer = Pacer {
            interval: Duration::from_millis(200),
            next: Mutex::new(HashMap::new()),
        };
        let start = tokio::time::Instant::now();
        for _ in 0..3 {
            pacer.wait("C1").await;
        }
        let c1 = start.elapsed();
        pacer.wait("C2").await;
        let c2 = start.elapsed() - c1;
        assert!(c1 >= Duration::from_millis(400), "{c1:?}");
        assert!(
            c2 < Duration::from_millis(100),
            "another channel does not wait: {c2:?}"
        );
    }
}
