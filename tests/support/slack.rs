//! A local stand-in for Slack's Web API, one per test: axum on `127.0.0.1:0`.
//!
//! It answers the calls aws-jit makes (`chat.postMessage`, `chat.update`, `views.open`,
//! `auth.test`) the way Slack does: it checks `Authorization: Bearer <token>`
//! (`{"ok":false,"error":"invalid_auth"}` otherwise), reads JSON bodies, answers
//! `{"ok":true,"channel":..,"ts":..}` with increasing `ts`, and records every call.
//!
//! Scripted failures, applied to the next calls in arrival order (after the token check):
//! - [`SlackStandIn::rate_limit`]: `n` times HTTP 429 with `Retry-After: 1`;
//! - [`SlackStandIn::server_error`]: `n` times HTTP 500;
//! - [`SlackStandIn::refuse_channel`]: every call for that channel answers
//!   `{"ok":false,"error":<error>}` (e.g. `channel_not_found`), for good.
//!
//! [`SlackStandIn::recover`] drops the failures not served yet.
//!
//! [`SlackStandIn::calls`] lists every call with its outcome; [`SlackStandIn::accepted`]
//! only those Slack accepted (what a channel would show).
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One call the stand-in received.
#[derive(Clone, Debug)]
pub struct Call {
    /// e.g. `chat.postMessage`.
    pub method: String,
    pub channel: String,
    /// The `ts` answered (postMessage) or targeted (update); empty when refused.
    pub ts: String,
    pub thread_ts: Option<String>,
    pub text: String,
    /// The `blocks` array (Null when none).
    pub blocks: Value,
    /// The full JSON body received.
    pub body: Value,
    /// `ok`, `429`, `500`, or the Slack error (`invalid_auth`, `channel_not_found`, …).
    pub outcome: String,
    /// When it arrived.
    pub at: std::time::Instant,
}

impl Call {
    pub fn ok(&self) -> bool {
        self.outcome == "ok"
    }
}

/// A scripted failure for the next call.
#[derive(Clone, Copy, Debug)]
enum Failure {
    RateLimited,
    ServerError,
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    next_ts: u64,
    failures: VecDeque<Failure>,
    refused: HashMap<String, String>,
}

#[derive(Clone)]
struct Shared {
    token: String,
    inner: Arc<Mutex<Inner>>,
}

pub struct SlackStandIn {
    /// Base URL of the Web API, as slack-morphism takes it (it appends `/<method>`):
    /// `http://127.0.0.1:PORT/api`.
    pub url: String,
    /// The bot token it accepts.
    pub token: String,
    shared: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl SlackStandIn {
    /// Starts a stand-in accepting `token`, on the current test's runtime.
    pub async fn start(token: &str) -> SlackStandIn {
        let shared = Shared {
            token: token.to_string(),
            inner: Arc::new(Mutex::new(Inner {
                next_ts: 1,
                ..Inner::default()
            })),
        };
        let app = Router::new()
            .route("/api/{method}", axum::routing::any(handle))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Slack stand-in");
        let addr = listener.local_addr().expect("stand-in address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        SlackStandIn {
            url: format!("http://{addr}/api"),
            token: token.to_string(),
            shared,
            server,
        }
    }

    /// The next `n` calls answer HTTP 429 with `Retry-After: 1`.
    pub fn rate_limit(&self, n: usize) {
        let mut inner = self.shared.inner.lock().unwrap();
        inner
            .failures
            .extend(std::iter::repeat_n(Failure::RateLimited, n));
    }

    /// The next `n` calls answer HTTP 500.
    pub fn server_error(&self, n: usize) {
        let mut inner = self.shared.inner.lock().unwrap();
        inner
            .failures
            .extend(std::iter::repeat_n(Failure::ServerError, n));
    }

    /// Every call for `channel` answers `{"ok":false,"error":error}`.
    pub fn refuse_channel(&self, channel: &str, error: &str) {
        let mut inner = self.shared.inner.lock().unwrap();
        inner.refused.insert(channel.to_string(), error.to_string());
    }

    /// Drops the scripted failures not served yet (Slack is back).
    pub fn recover(&self) {
        self.shared.inner.lock().unwrap().failures.clear();
    }

    /// How many scripted failures are still to be served.
    pub fn failures_pending(&self) -> usize {
        self.shared.inner.lock().unwrap().failures.len()
    }

    /// Every call received, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.inner.lock().unwrap().calls.clone()
    }

    /// The calls Slack accepted, in arrival order.
    pub fn accepted(&self) -> Vec<Call> {
        self.calls().into_iter().filter(Call::ok).collect()
    }
}

impl Drop for SlackStandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn handle(
    State(shared): State<Shared>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => return slack_error("invalid_json"),
        }
    };
    let field = |k: &str| body[k].as_str().unwrap_or_default().to_string();
    let mut call = Call {
        method: method.clone(),
        channel: field("channel"),
        ts: field("ts"),
        thread_ts: body["thread_ts"].as_str().map(str::to_string),
        text: field("text"),
        blocks: body["blocks"].clone(),
        body: body.clone(),
        outcome: String::new(),
        at: std::time::Instant::now(),
    };
    let authorised = bearer_is(&headers, &shared.token);

    let mut inner = shared.inner.lock().unwrap();
    let response = if !authorised {
        call.outcome = "invalid_auth".into();
        slack_error("invalid_auth")
    } else if let Some(failure) = inner.failures.pop_front() {
        match failure {
            Failure::RateLimited => {
                call.outcome = "429".into();
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, "1")],
                    axum::Json(json!({"ok": false, "error": "ratelimited"})),
                )
                    .into_response()
            }
            Failure::ServerError => {
                call.outcome = "500".into();
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
            }
        }
    } else if let Some(error) = inner.refused.get(&call.channel).cloned() {
        call.outcome = error.clone();
        slack_error(&error)
    } else {
        call.outcome = "ok".into();
        match method.as_str() {
            "chat.postMessage" => {
                let ts = format!("1700000000.{:06}", inner.next_ts);
                inner.next_ts += 1;
                call.ts = ts.clone();
                let mut message = json!({"ts": ts, "text": call.text, "type": "message"});
                if !call.blocks.is_null() {
                    message["blocks"] = call.blocks.clone();
                }
                if let Some(t) = &call.thread_ts {
                    message["thread_ts"] = json!(t);
                }
                ok(json!({"channel": call.channel, "ts": ts, "message": message}))
            }
            "chat.update" => {
                if call.ts.is_empty() {
                    call.outcome = "message_not_found".into();
                    slack_error("message_not_found")
                } else {
                    let mut message = json!({"text": call.text});
                    if !call.blocks.is_null() {
                        message["blocks"] = call.blocks.clone();
                    }
                    ok(
                        json!({"channel": call.channel, "ts": call.ts, "text": call.text, "message": message}),
                    )
                }
            }
            "views.open" => ok(json!({"view": {"id": "V0STANDIN", "type": "modal"}})),
            "auth.test" => ok(json!({
                "url": "https://aws-jit.slack.com/", "team": "aws-jit", "user": "aws-jit",
                "team_id": "T0STANDIN", "user_id": "U0STANDIN", "bot_id": "B0STANDIN"
            })),
            _ => {
                call.outcome = "unknown_method".into();
                slack_error("unknown_method")
            }
        }
    };
    inner.calls.push(call);
    response
}

/// Whether the request carries `Authorization: Bearer <token>`.
pub fn bearer_is(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        == Some(token)
}

fn ok(mut body: Value) -> Response {
    body["ok"] = json!(true);
    axum::Json(body).into_response()
}

fn slack_error(error: &str) -> Response {
    axum::Json(json!({"ok": false, "error": error})).into_response()
}

/// A `requested` alert, as the state machine sends it, for a request `nowhere/<name>`
/// that is not in Kubernetes (the relay finds its channel through the role ARN).
pub fn ghost_alert(name: &str, role_arn: &str) -> String {
    json!({
        "event": "requested",
        "execution_arn": format!("arn:aws:states:us-east-1:123456789012:execution:x:{name}"),
        "input": {
            "requester_arn": "arn:aws:iam::123456789012:user/alice", "requester_name": "alice",
            "reason": "ghost", "ticket": "", "role_arn": role_arn, "method": "TrustPolicy",
            "work_group": "g", "duration_seconds": 60, "approval_timeout_seconds": 60,
            "request": {"namespace": "nowhere", "name": name,
                        "uid": "00000000-0000-4000-8000-000000000000"}
        }
    })
    .to_string()
}
