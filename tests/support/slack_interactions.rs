//! Slack's side of the interactivity endpoint (`aws_jit::slack::interactions`): builds
//! `block_actions` payloads shaped like the ones Slack sends when someone clicks the
//! awaiting-approval message's buttons, and POSTs them form-encoded, signed the way
//! Slack signs (or deliberately not).
//!
//! The signature comes from [`slack_sign`] (test-only, hmac + sha2), which
//! `aws_jit::slack::interactions::verify`'s unit tests check against Slack's published example;
//! the endpoint verifies with slack-morphism's verifier, a separate implementation.
use aws_jit::slack::interactions::verify::{self, now_unix};
use aws_jit::slack::interactions::{APPROVE_ACTION, DENY_ACTION};
use serde_json::{Value, json};

#[path = "slack_sign.rs"]
mod slack_sign;

/// The `trigger_id` of every click [`block_actions`] builds.
pub const TRIGGER_ID: &str = "1234567890.1234567890.abcdef0123456789abcdef0123456789";

/// How a request is signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signing {
    /// As Slack does: the app's signing secret, a current timestamp.
    Correct,
    /// With another secret.
    WrongSecret,
    /// Correctly, but with a timestamp `secs` in the past (a replay when > 300).
    Stale(i64),
    /// Correctly, but with a timestamp `secs` in the future.
    Future(i64),
    /// Correctly for one body, but another body is sent.
    TamperedBody,
    /// No `X-Slack-Signature` header at all.
    Unsigned,
}

/// What the endpoint answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    /// The ephemeral message's text (empty when the body is not one).
    pub fn text(&self) -> String {
        self.json()["text"].as_str().unwrap_or_default().to_string()
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    /// A 200 with an ephemeral message.
    #[track_caller]
    pub fn ephemeral_text(&self) -> String {
        assert_eq!(self.status, 200, "expected 200, got {self:?}");
        assert_eq!(
            self.json()["response_type"],
            "ephemeral",
            "expected an ephemeral reply, got {self:?}"
        );
        self.text()
    }
}

/// The Slack user who clicks and the workspace it happens in.
pub struct Slack {
    /// `http://127.0.0.1:<port>/slack/interactions`.
    pub url: String,
    secret: String,
    http: reqwest::Client,
    /// Replaces the `response_url` of every payload posted (a local stand-in).
    response_url: Option<String>,
}

impl Slack {
    pub fn new(url: impl Into<String>, signing_secret: impl Into<String>) -> Slack {
        Slack {
            url: url.into(),
            secret: signing_secret.into(),
            http: reqwest::Client::new(),
            response_url: None,
        }
    }

    /// Payloads posted carry `response_url` (e.g. [`ViewsApi::response_url`]).
    pub fn with_response_url(mut self, response_url: impl Into<String>) -> Slack {
        self.response_url = Some(response_url.into());
        self
    }

    /// Clicks Approve (`approve == true`) or Deny on the message for request
    /// `namespace/name` (uid `uid`) as Slack user `slack_user`, correctly signed.
    pub async fn click(
        &self,
        slack_user: &str,
        approve: bool,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Answer {
        let action = if approve { APPROVE_ACTION } else { DENY_ACTION };
        self.post(
            &block_actions(slack_user, action, namespace, name, uid),
            Signing::Correct,
        )
        .await
    }

    /// POSTs `payload` form-encoded, signed as `signing` says.
    pub async fn post(&self, payload: &Value, signing: Signing) -> Answer {
        let mut payload = payload.clone();
        if let (Some(url), Some(obj)) = (&self.response_url, payload.as_object_mut()) {
            obj.insert("response_url".into(), json!(url));
        }
        let body = form_body(&payload);
        let now = now_unix();
        let (ts, secret, signed_body) = match signing {
            Signing::Correct | Signing::Unsigned => (now, self.secret.as_str(), body.clone()),
            Signing::WrongSecret => (now, "not-the-signing-secret-0123456789", body.clone()),
            Signing::Stale(secs) => (now - secs, self.secret.as_str(), body.clone()),
            Signing::Future(secs) => (now + secs, self.secret.as_str(), body.clone()),
            Signing::TamperedBody => (
                now,
                self.secret.as_str(),
                form_body(&json!({"type": "block_actions", "actions": []})),
            ),
        };
        let ts = ts.to_string();
        let mut req = self
            .http
            .post(&self.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header(verify::TIMESTAMP_HEADER, &ts);
        if signing != Signing::Unsigned {
            req = req.header(
                verify::SIGNATURE_HEADER,
                slack_sign::signature(secret, &ts, signed_body.as_bytes()),
            );
        }
        let res = req
            .body(body)
            .send()
            .await
            .expect("POST to the interactions endpoint");
        Answer {
            status: res.status().as_u16(),
            body: res.text().await.unwrap_or_default(),
        }
    }
}

/// A `block_actions` payload as Slack sends it for a button click on the relay's
/// awaiting-approval message (fields the endpoint does not read included, for shape).
pub fn block_actions(
    slack_user: &str,
    action_id: &str,
    namespace: &str,
    name: &str,
    uid: &str,
) -> Value {
    let value = json!({"namespace": namespace, "name": name, "uid": uid}).to_string();
    json!({
        "type": "block_actions",
        "team": {"id": "T0TEST001", "domain": "aws-jit-e2e"},
        "user": {"id": slack_user, "username": slack_user.to_lowercase(), "team_id": "T0TEST001"},
        "api_app_id": "A0TEST001",
        "token": "legacy-verification-token-unused",
        "container": {"type": "message", "message_ts": "1700000000.000100", "channel_id": "C0TEST001", "is_ephemeral": false},
        "trigger_id": TRIGGER_ID,
        "channel": {"id": "C0TEST001", "name": "aws-jit"},
        "response_url": "https://hooks.slack.invalid/actions/T0TEST001/1/abc",
        "actions": [{
            "type": "button",
            "block_id": "decide",
            "action_id": action_id,
            "text": {"type": "plain_text", "text": if action_id == APPROVE_ACTION { "Approve" } else { "Deny" }},
            "value": value,
            "action_ts": "1700000001.000200"
        }]
    })
}

/// `payload=<percent-encoded JSON>`, as Slack posts interactions.
pub fn form_body(payload: &Value) -> String {
    format!(
        "payload={}",
        percent_encoding::utf8_percent_encode(
            &payload.to_string(),
            percent_encoding::NON_ALPHANUMERIC
        )
    )
}

/// The `view_submission` Slack sends when `slack_user` submits the modal `view` (as
/// `views.open` received it) with `comment` typed into its input.
pub fn view_submission(slack_user: &str, view: &Value, comment: &str) -> Value {
    use aws_jit::slack::interactions::modal::{COMMENT_ACTION, COMMENT_BLOCK};
    json!({
        "type": "view_submission",
        "team": {"id": "T0TEST001", "domain": "aws-jit-e2e"},
        "user": {"id": slack_user, "username": slack_user.to_lowercase(), "team_id": "T0TEST001"},
        "api_app_id": "A0TEST001",
        "trigger_id": "1234567890.1234567890.fedcba9876543210fedcba9876543210",
        "view": {
            "id": "V0TEST001",
            "team_id": "T0TEST001",
            "type": "modal",
            "callback_id": view["callback_id"],
            "private_metadata": view["private_metadata"],
            "title": view["title"],
            "blocks": view["blocks"],
            "state": {"values": {COMMENT_BLOCK: {COMMENT_ACTION: {"type": "plain_text_input", "value": comment}}}},
            "hash": "1700000002.abcdef"
        }
    })
}

/// A stand-in for what the endpoint calls on Slack: the Web API's `views.open` (checks
/// the bearer token, records the views opened, answers like Slack) and `response_url`s
/// (`/hooks/…`, records the messages posted).
pub struct ViewsApi {
    /// The Web API base URL, `http://127.0.0.1:<port>/api/`.
    pub api_url: String,
    /// A `response_url` for clicks, `http://127.0.0.1:<port>/hooks/actions/1`.
    pub response_url: String,
    /// What `response_url`s point under (for `SlackWeb::with_response_url_prefix`).
    pub hooks_prefix: String,
    opened: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    responses: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ViewsApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ViewsApi {
    pub async fn start(bot_token: &str) -> ViewsApi {
        use axum::http::HeaderMap;
        let opened = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
        let expected = format!("Bearer {bot_token}");
        let responses = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
        let recorded = opened.clone();
        let answered = responses.clone();
        let app = axum::Router::new()
            .route(
                "/hooks/{*rest}",
                axum::routing::post(move |body: String| {
                    let answered = answered.clone();
                    async move {
                        let v =
                            serde_json::from_str::<Value>(&body).unwrap_or(json!({"raw": body}));
                        answered.lock().unwrap().push(v);
                        axum::Json(json!({"ok": true}))
                    }
                }),
            )
            .route(
                "/api/views.open",
                axum::routing::post(move |headers: HeaderMap, body: String| {
                    let recorded = recorded.clone();
                    let expected = expected.clone();
                    async move {
                        let auth = headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default();
                        if auth != expected {
                            return axum::Json(json!({"ok": false, "error": "invalid_auth"}));
                        }
                        let Ok(req) = serde_json::from_str::<Value>(&body) else {
                            return axum::Json(json!({"ok": false, "error": "invalid_json"}));
                        };
                        if req["trigger_id"].as_str().unwrap_or_default().is_empty() {
                            return axum::Json(json!({"ok": false, "error": "invalid_trigger_id"}));
                        }
                        recorded.lock().unwrap().push(req.clone());
                        let mut view = req["view"].clone();
                        view["id"] = json!("V0TEST001");
                        view["team_id"] = json!("T0TEST001");
                        view["hash"] = json!("1700000002.abcdef");
                        view["state"] = json!({"values": {}});
                        axum::Json(json!({"ok": true, "view": view}))
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the views.open stand-in");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ViewsApi {
            api_url: format!("http://{addr}/api/"),
            response_url: format!("http://{addr}/hooks/actions/T0TEST001/1/abc"),
            hooks_prefix: format!("http://{addr}/hooks/"),
            opened,
            responses,
            task,
        }
    }

    /// The messages posted to `response_url`s, in order.
    pub fn responses(&self) -> Vec<Value> {
        self.responses.lock().unwrap().clone()
    }

    /// The `views.open` requests received, in order (`{"trigger_id","view"}`).
    pub fn opened(&self) -> Vec<Value> {
        self.opened.lock().unwrap().clone()
    }
}

/// The people behind the tests' Slack users, as an admin maps them: Slack user ID,
/// Kubernetes username, groups they may approve as from Slack. SlackIdentities are
/// cluster-scoped, so every test shares these (and agrees on them).
pub const SLACK_IDENTITIES: &[(&str, &str, &[&str])] = &[
    ("UCAROL01", "carol", &["sre"]),
    ("UDAVE001", "dave", &["sre"]),
    // alice requests, and is also an approver by group (SREs who both ask and approve).
    ("UALICE01", "alice", &["developers", "sre"]),
    ("UERIN001", "erin", &["sre", "sre-leads"]),
];

/// A SlackIdentity as YAML.
pub fn slack_identity_yaml(
    name: &str,
    slack_user: &str,
    username: &str,
    groups: &[&str],
) -> String {
    let groups = groups
        .iter()
        .map(|g| format!("{g:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "apiVersion: aws-jit.io/v1alpha1\nkind: SlackIdentity\nmetadata:\n  name: {name}\n\
         spec:\n  slackUserId: {slack_user}\n  username: {username}\n  groups: [{groups}]\n"
    )
}

/// Applies [`SLACK_IDENTITIES`] as admin, once per test run.
pub fn map_slack_users() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let yaml: String = SLACK_IDENTITIES
            .iter()
            .map(|(id, user, groups)| {
                format!(
                    "---\n{}",
                    slack_identity_yaml(&id.to_ascii_lowercase(), id, user, groups)
                )
            })
            .collect();
        super::succeeded(&super::stack().kube.kubectl_stdin(
            super::kube::User::Admin,
            &["apply", "-f", "-"],
            &yaml,
        ));
    });
}
