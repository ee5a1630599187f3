//! The two Slack Web API calls the relay makes, through slack-morphism, with every
//! failure sorted into what the relay does about it.
use std::time::Duration;

use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;

use super::render::Rendered;

/// Why a Slack call did not go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// HTTP 429: wait `Retry-After`, then again.
    RateLimited(Duration),
    /// Slack or the network is having a moment (5xx, transport, bad token): retry with
    /// backoff; the message waits in the queue.
    Transient(String),
    /// Slack refuses this message for good (`channel_not_found`, `invalid_blocks`, …).
    Refused(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::RateLimited(d) => write!(f, "rate limited for {d:?}"),
            Failure::Transient(e) => write!(f, "transient: {e}"),
            Failure::Refused(e) => write!(f, "refused: {e}"),
        }
    }
}

/// Slack error codes that are about the app or Slack, not about the message: retrying
/// the same message later can succeed (a fixed token, Slack back), so it stays queued
/// instead of filling the dead-letter queue.
const RETRYABLE_CODES: &[&str] = &[
    "ratelimited",
    "rate_limited",
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
    "invalid_auth",
    "not_authed",
    "account_inactive",
    "token_revoked",
    "token_expired",
    "missing_scope",
    "team_access_not_granted",
];

pub fn classify(err: SlackClientError) -> Failure {
    match err {
        SlackClientError::RateLimitError(e) => {
            Failure::RateLimited(e.retry_after.unwrap_or(Duration::from_secs(1)))
        }
        SlackClientError::ApiError(e) => {
            if RETRYABLE_CODES.contains(&e.code.as_str()) {
                Failure::Transient(e.code)
            } else {
                Failure::Refused(e.code)
            }
        }
        // Slack refuses a message with HTTP 200 and `ok: false`; an HTTP-level error is
        // Slack (or a proxy, or a wrong API URL) failing, except a body it cannot take.
        SlackClientError::HttpError(e) => {
            let status = e.status_code.as_u16();
            if status == 400 || status == 413 {
                Failure::Refused(format!("HTTP {status}"))
            } else {
                Failure::Transient(format!("HTTP {status}"))
            }
        }
        other => Failure::Transient(other.to_string()),
    }
}

/// A Slack Web API client for `api_url` (e.g. `https://slack.com/api`; `http://` works
/// too, for the local stand-in). slack-morphism's own `new()` is HTTPS-only; kube-client
/// builds an HTTP-or-HTTPS hyper-rustls connector of the type it takes, which saves a
/// direct dependency on hyper-util and hyper-rustls.
pub fn client(api_url: &str) -> Result<SlackHyperClient, String> {
    use kube::client::ConfigExt;
    let uri = "http://slack.invalid/"
        .parse()
        .map_err(|e| format!("{e}"))?;
    let connector = kube::Config::new(uri)
        .rustls_https_connector()
        .map_err(|e| format!("cannot build the HTTPS connector: {e}"))?;
    // slack-morphism joins `{base}/{method}`.
    let url = api_url.trim_end_matches('/');
    Ok(SlackClient::new(
        SlackClientHyperConnector::with_connector(connector).with_slack_api_url(url),
    ))
}

pub struct SlackApi {
    client: SlackHyperClient,
    token: SlackApiToken,
}

impl SlackApi {
    /// `api_url` is the Web API's base, e.g. `https://slack.com/api`; `http://` works
    /// too (the local stand-in).
    pub fn new(api_url: &str, token: &str) -> Result<SlackApi, String> {
        Ok(SlackApi {
            client: client(api_url)?,
            token: SlackApiToken::new(SlackApiTokenValue(token.to_string())),
        })
    }

    fn content(rendered: &Rendered) -> Result<SlackMessageContent, Failure> {
        let blocks: Vec<SlackBlock> = serde_json::from_value(rendered.blocks.clone())
            .map_err(|e| Failure::Refused(format!("invalid_blocks (local): {e}")))?;
        Ok(SlackMessageContent::new()
            .with_text(rendered.text.clone())
            .with_blocks(blocks))
    }

    /// `chat.postMessage`; a thread reply when `thread_ts` is set. Returns the new `ts`.
    pub async fn post(
        &self,
        channel: &str,
        rendered: &Rendered,
        thread_ts: Option<&str>,
    ) -> Result<String, Failure> {
        let mut req = SlackApiChatPostMessageRequest::new(
            SlackChannelId(channel.to_string()),
            Self::content(rendered)?,
        );
        if let Some(ts) = thread_ts {
            req = req.with_thread_ts(SlackTs(ts.to_string()));
        }
        let session = self.client.open_session(&self.token);
        let out = session.chat_post_message(&req).await.map_err(classify)?;
        Ok(out.ts.0)
    }

    /// `chat.update` of the message `ts` in `channel`.
    pub async fn update(
        &self,
        channel: &str,
        ts: &str,
        rendered: &Rendered,
    ) -> Result<(), Failure> {
        let req = SlackApiChatUpdateRequest::new(
            SlackChannelId(channel.to_string()),
            Self::content(rendered)?,
            SlackTs(ts.to_string()),
        );
        let session = self.client.open_session(&self.token);
        session.chat_update(&req).await.map_err(classify)?;
        Ok(())
    }
}
