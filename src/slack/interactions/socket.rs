// Not slack-morphism's `SlackClientSocketModeListener` (2.31.1, the locked version): its
// API URL and ack-with-payload would do, but it lacks
// - concurrent envelopes and an ack before the work: `connect_spawn` in
//   `hyper_tokio/socket_mode/tungstenite_wss_client.rs` awaits `on_message`
//   (`socket_mode/clients_manager_listener.rs`, which awaits our callback and returns the
//   ack) before reading the next frame, so one slow click delays every other ack;
// - a growing backoff: `connect_with_reconnections` (same file) waits a fixed
//   `reconnect_timeout_in_seconds`, and a socket that drops after opening is reopened at
//   once (`restart_client` -> `start(0)`): a tight loop against a peer that keeps dropping;
// - a secret-free log and a handshake timeout: `try_to_connect` logs the `wss://` URL
//   (its ticket is a credential) and `connect_async` is unbounded.
// Its WebSocket client is a private module, so those parts cannot be replaced alone.

//! Socket Mode (<https://api.slack.com/apis/socket-mode>): interactions over a WebSocket
//! the relay opens, so the cluster needs no inbound endpoint.
//!
//! 1. `apps.connections.open` on the Web API, with the app-level token (`xapp-…`,
//!    [`AppToken`]) as bearer, answers a one-time `wss://` URL.
//! 2. The relay connects; Slack says `hello`, then sends envelopes
//!    `{"type":"interactive","envelope_id":..,"payload":{..},"accepts_response_payload":..}`.
//! 3. Each interactive payload goes to the same [`Handler`] as the HTTP endpoint's. Every
//!    envelope is acknowledged with `{"envelope_id":..}` on the socket: at once when
//!    Slack takes no response payload (`block_actions`: the answer goes to the click's
//!    `response_url`, as over HTTP), or with the [`Reply`]'s body as `payload` once
//!    decided (`view_submission`: a refusal shows on the modal), which the handler's
//!    Kubernetes bound ([`Handler::kube_timeout`], 2.5 s) keeps within Slack's 3 s.
//!    Envelopes are handled concurrently: a slow one never delays another's ack.
//! 4. `disconnect` (Slack refreshes connections every few hours, or warns before a
//!    server goes away) opens a fresh connection at once. A dropped or failed connection
//!    is reopened with a fresh `apps.connections.open` after a backoff that doubles from
//!    [`Config::backoff_base`] to [`Config::backoff_max`], each wait up to twice that
//!    with jitter ([`reconnect_delays`]; reset once a connection said `hello`), so a bad
//!    token or Slack being down never makes a tight loop.
//!    The relay pings every [`Config::ping_interval`]; a connection on which nothing
//!    arrives for [`Config::idle_timeout`] (a network path lost without a FIN) is
//!    replaced the same way.
//! 5. On shutdown the socket is closed (a close frame) and [`run`] returns.
//!
//! The app token and the WebSocket URL (its `ticket` is a credential for one connection)
//! are never logged: only the URL's host is.
use std::fmt;
use std::future::Future;
use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use slack_morphism::prelude::*;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, error, info, warn};

use super::{Handler, Reply};

/// Slack's app-level token (`xapp-…`). Its `Debug` never shows the value.
#[derive(Clone)]
pub struct AppToken(String);

impl AppToken {
    /// Refuses what is not an app-level token (a bot token `xoxb-…` cannot open
    /// Socket Mode connections).
    pub fn new(token: &str) -> Result<AppToken, SocketError> {
        let token = token.trim();
        if !token.starts_with("xapp-") {
            return Err(SocketError::NotAnAppToken);
        }
        Ok(AppToken(token.to_string()))
    }
}

impl fmt::Debug for AppToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AppToken(<redacted>)")
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    /// The Web API base, `https://slack.com/api` (`http://` for a local stand-in).
    pub api_url: String,
    pub app_token: AppToken,
    /// First wait before reopening a failed or dropped connection; doubles up to
    /// `backoff_max` ([`reconnect_delays`]).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Bound on `apps.connections.open` plus the WebSocket handshake.
    pub connect_timeout: Duration,
    /// How often the relay pings Slack on an open connection.
    pub ping_interval: Duration,
    /// A connection on which nothing (not even a pong) arrived for this long is dead
    /// (a silently lost network path) and is replaced.
    pub idle_timeout: Duration,
}

impl Config {
    pub fn new(api_url: &str, app_token: &str) -> Result<Config, SocketError> {
        Ok(Config {
            api_url: api_url.to_string(),
            app_token: AppToken::new(app_token)?,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(15),
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
        })
    }
}

/// Why a connection could not be opened or ended. The `Display` never holds the token
/// or the WebSocket URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SocketError {
    #[error("SLACK_APP_TOKEN is not an app-level token (it must start with xapp-)")]
    NotAnAppToken,
    #[error("cannot set up the Slack client: {0}")]
    Client(String),
    #[error(
        "Slack refused apps.connections.open: {0} (check SLACK_APP_TOKEN: an app-level token with connections:write, for an app with Socket Mode enabled)"
    )]
    Refused(String),
    #[error("apps.connections.open failed: {0}")]
    Open(String),
    #[error("cannot connect to Slack's WebSocket at {host}: {message}")]
    Connect { host: String, message: String },
    #[error("timed out opening a Socket Mode connection after {0:?}")]
    Timeout(Duration),
    #[error("the Socket Mode connection failed: {0}")]
    Connection(String),
    #[error("the Socket Mode connection dropped")]
    Dropped,
    #[error("nothing arrived on the Socket Mode connection for {0:?}, not even a pong")]
    Silent(Duration),
    #[error("Slack disabled this app's Socket Mode connections (link_disabled)")]
    LinkDisabled,
}

/// How a connection that was up ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Slack asked for a fresh connection (`disconnect`).
    Refresh(String),
    /// Shutdown asked; the socket was closed.
    Shutdown,
}

/// `apps.connections.open`: a fresh one-time WebSocket URL.
pub async fn open_connection(
    client: &SlackHyperClient,
    token: &AppToken,
) -> Result<String, SocketError> {
    let token = SlackApiToken::new(SlackApiTokenValue(token.0.clone()));
    client
        .open_session(&token)
        .apps_connections_open(&SlackApiAppsConnectionOpenRequest::new())
        .await
        .map(|r| r.url.0.to_string())
        .map_err(|e| match e {
            slack_morphism::errors::SlackClientError::ApiError(e) => SocketError::Refused(e.code),
            other => SocketError::Open(other.to_string()),
        })
}

/// Serves interactions over Socket Mode until `shutdown` resolves. It returns early only
/// when the Slack client cannot be built at all; every connection failure is retried
/// with backoff (and logged).
pub async fn run(
    handler: Handler,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SocketError> {
    let client =
        crate::slack::relay::slack::client(&config.api_url).map_err(SocketError::Client)?;
    let shutdown = shutdown.shared();
    let mut delays = reconnect_delays(config.backoff_base, config.backoff_max);
    info!(api_url = %config.api_url, "Slack Socket Mode starting");
    loop {
        let mut said_hello = false;
        // The session watches `shutdown` itself, so that it can close the socket.
        let session = session(
            &client,
            &config,
            &handler,
            shutdown.clone(),
            &mut said_hello,
        )
        .await;
        if said_hello {
            delays = reconnect_delays(config.backoff_base, config.backoff_max);
        }
        let wait = match session {
            Ok(End::Shutdown) => break,
            Ok(End::Refresh(reason)) if said_hello => {
                info!(%reason, "Slack asked for a fresh Socket Mode connection");
                continue;
            }
            Err(e @ SocketError::LinkDisabled) => {
                error!(error = %e, retry_in = ?config.backoff_max, "Socket Mode is off for this app; waiting");
                config.backoff_max
            }
            other => {
                // Never None (no limit on attempts); the cap if it were.
                let wait = delays.next().unwrap_or(config.backoff_max);
                match other {
                    // Not even a hello first: never a tight loop, whatever Slack says.
                    Ok(End::Refresh(reason)) => {
                        warn!(%reason, retry_in = ?wait, "Slack closed a Socket Mode connection before hello")
                    }
                    Err(e @ (SocketError::Refused(_) | SocketError::NotAnAppToken)) => {
                        error!(error = %e, retry_in = ?wait, "cannot open a Socket Mode connection")
                    }
                    Err(e) => {
                        warn!(error = %e, retry_in = ?wait, "Socket Mode connection lost; reconnecting")
                    }
                    Ok(End::Shutdown) => {}
                }
                wait
            }
        };
        tokio::select! {
            _ = shutdown.clone() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    info!("Slack Socket Mode stopped");
    Ok(())
}

/// The waits before reopening a connection, after each failure in a row: `base`
/// doubling to `max`, each up to twice that with jitter (relays restarted together do
/// not reconnect in step), for as long as it takes.
pub fn reconnect_delays(base: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    crate::aws::retry::Backoff::new(base, max).delays()
}

/// One envelope from Slack (the fields read here).
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    envelope_id: Option<String>,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    accepts_response_payload: bool,
    #[serde(default)]
    reason: Option<String>,
}

/// The acknowledgement of `envelope_id`, with the reply's body when there is one.
pub fn ack(envelope_id: &str, reply: Option<&Reply>) -> String {
    let mut ack = json!({"envelope_id": envelope_id});
    if let Some(body) = reply.and_then(Reply::body) {
        ack["payload"] = body;
    }
    ack.to_string()
}

/// One connection: open, connect, serve until it ends.
async fn session(
    client: &SlackHyperClient,
    config: &Config,
    handler: &Handler,
    shutdown: impl Future<Output = ()> + Unpin,
    said_hello: &mut bool,
) -> Result<End, SocketError> {
    let connect = async {
        let url = open_connection(client, &config.app_token).await?;
        let host = url
            .parse::<axum::http::Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_string))
            .unwrap_or_default();
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .map_err(|e| SocketError::Connect {
                host: host.clone(),
                // The error may quote the URL; keep its kind only.
                message: redact_url(&e.to_string(), url.as_str()),
            })?;
        Ok::<_, SocketError>((socket, host))
    };
    let mut shutdown = shutdown;
    let (socket, host) = tokio::select! {
        _ = &mut shutdown => return Ok(End::Shutdown),
        c = tokio::time::timeout(config.connect_timeout, connect) => {
            c.map_err(|_| SocketError::Timeout(config.connect_timeout))??
        }
    };
    debug!(%host, "Socket Mode WebSocket connected");
    let (mut sink, mut stream) = socket.split();
    let (acks, mut to_send) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut ping = tokio::time::interval(config.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_seen = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                close(&mut sink).await;
                return Ok(End::Shutdown);
            }
            Some(ack) = to_send.recv() => {
                sink.send(Message::text(ack))
                    .await
                    .map_err(|e| SocketError::Connection(e.to_string()))?;
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > config.idle_timeout {
                    return Err(SocketError::Silent(config.idle_timeout));
                }
                sink.send(Message::Ping(Default::default()))
                    .await
                    .map_err(|e| SocketError::Connection(e.to_string()))?;
            }
            message = stream.next() => {
                last_seen = tokio::time::Instant::now();
                let text = match message {
                    None => return Err(SocketError::Dropped),
                    Some(Err(e)) => return Err(SocketError::Connection(e.to_string())),
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) => return Err(SocketError::Dropped),
                    // Pings are answered by tungstenite itself; pongs answer ours.
                    Some(Ok(_)) => continue,
                };
                let envelope: Envelope = match serde_json::from_str(text.as_str()) {
                    Ok(e) => e,
                    Err(e) => {
                        warn!(error = %e, "a Socket Mode message that is not an envelope");
                        continue;
                    }
                };
                match envelope.kind.as_str() {
                    "hello" => {
                        *said_hello = true;
                        info!(%host, "Slack Socket Mode connected");
                    }
                    "disconnect" => {
                        let reason = envelope.reason.unwrap_or_default();
                        if reason == "link_disabled" {
                            return Err(SocketError::LinkDisabled);
                        }
                        close(&mut sink).await;
                        return Ok(End::Refresh(reason));
                    }
                    "interactive" => dispatch(handler, envelope, &acks),
                    other => {
                        // Events API, slash commands, …: not ours, but acknowledged so
                        // Slack does not send them again.
                        debug!(kind = %other, "ignored a Socket Mode envelope");
                        if let Some(id) = &envelope.envelope_id {
                            let _ = acks.send(ack(id, None));
                        }
                    }
                }
            }
        }
    }
}

/// Sends a close frame, if the peer takes it within a second (it may be gone).
async fn close(sink: &mut (impl futures::Sink<Message> + Unpin)) {
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(Message::Close(None))).await;
}

/// Handles one `interactive` envelope on its own task, acknowledging it through `acks`.
fn dispatch(
    handler: &Handler,
    envelope: Envelope,
    acks: &tokio::sync::mpsc::UnboundedSender<String>,
) {
    let Some(id) = envelope.envelope_id else {
        warn!("an interactive Socket Mode envelope without envelope_id; ignored");
        return;
    };
    let (handler, acks) = (handler.clone(), acks.clone());
    tokio::spawn(async move {
        if !envelope.accepts_response_payload {
            // Slack shows nothing of the ack: acknowledge first, answer via response_url.
            let _ = acks.send(ack(&id, None));
        }
        let reply = match handler.handle_json(envelope.payload).await {
            Ok(reply) => reply,
            Err(why) => {
                warn!(%why, "a Socket Mode interaction could not be read");
                Reply::Empty
            }
        };
        if envelope.accepts_response_payload {
            // The connection may be gone by now: Slack then sends the envelope again.
            let _ = acks.send(ack(&id, Some(&reply)));
        }
    });
}

fn redact_url(text: &str, url: &str) -> String {
    text.replace(url, "<socket url>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_app_tokens_are_taken_and_never_printed() {
        assert_eq!(
            AppToken::new("xoxb-bot").map(|_| ()),
            Err(SocketError::NotAnAppToken)
        );
        let t = AppToken::new(" xapp-1-A0-secret ").expect("an app token");
        assert_eq!(t.0, "xapp-1-A0-secret");
        assert!(!format!("{t:?}").contains("secret"));
        let c = Config::new("http://127.0.0.1:1/api", "xapp-1-A0-secret").expect("config");
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn reconnect_waits_double_to_the_cap_with_jitter_and_never_run_out() {
        let ms = Duration::from_millis;
        let waits: Vec<Duration> = reconnect_delays(ms(200), ms(800)).take(50).collect();
        assert_eq!(waits.len(), 50, "no limit on attempts");
        for (i, wait) in waits.iter().enumerate() {
            let expected = ms(200 * (1 << i.min(2)));
            // backon computes in f32 seconds: a little slack either way.
            let (low, high) = (expected - ms(1), expected * 2 + ms(1));
            assert!(
                (low..high).contains(wait),
                "attempt {i}: {wait:?} outside [{expected:?}, {:?})",
                expected * 2
            );
        }
        // Jitter: the same step does not always wait the same.
        let capped: std::collections::BTreeSet<Duration> = waits[3..].iter().copied().collect();
        assert!(capped.len() > 1, "{capped:?}");
    }

    #[test]
    fn acks_carry_the_envelope_id_and_the_reply() {
        let plain: Value = serde_json::from_str(&ack("e-1", None)).unwrap();
        assert_eq!(plain, json!({"envelope_id": "e-1"}));
        let empty: Value = serde_json::from_str(&ack("e-2", Some(&Reply::Empty))).unwrap();
        assert_eq!(empty, json!({"envelope_id": "e-2"}));
        let refused: Value =
            serde_json::from_str(&ack("e-3", Some(&Reply::FieldError("why".into())))).unwrap();
        assert_eq!(refused["envelope_id"], "e-3");
        assert_eq!(refused["payload"]["response_action"], "errors");
        assert_eq!(
            refused["payload"]["errors"][super::super::modal::COMMENT_BLOCK],
            "why"
        );
    }
}
