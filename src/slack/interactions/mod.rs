//! Approvals from Slack, over either of Slack's two transports:
//!
//! - the HTTP interactivity endpoint (`POST /slack/interactions`, [`serve`]): Slack
//!   POSTs each interaction, authenticated by its request signature ([`verify`]);
//! - Socket Mode ([`socket`]): the relay opens a WebSocket to Slack with the app-level
//!   token (`xapp-…`, which authenticates the connection), so no inbound endpoint is
//!   needed; interactions arrive as `interactive` envelopes and are acknowledged on it.
//!
//! Both hand the interaction's JSON payload to the same [`Handler`], which decides and
//! returns a [`Reply`]; the transport only carries the payload in and the reply back
//! (the HTTP response body, or the Socket Mode acknowledgement's `payload`).
//!
//! The relay's awaiting-approval message carries two buttons, action_id
//! [`APPROVE_ACTION`] and [`DENY_ACTION`], whose value is the AccessRequest's identity
//! as JSON (`{"namespace","name","uid"}`, [`RequestRef`]). A click arrives here as a
//! form-encoded `payload=<json>` of type `block_actions`, and becomes the same status
//! approval `kubectl patch` makes, written by the operator's identity with `via: slack`:
//!
//! 1. Over HTTP, Slack's signature and timestamp are verified first ([`verify`]); a
//!    request that fails is answered `401` and nothing else happens (nothing is read or
//!    written). Over Socket Mode the app token authenticated the connection.
//! 2. The request is looked up and must still be the one the button was rendered for
//!    (same uid) and be `AwaitingApproval`.
//! 3. The clicking Slack user ID is resolved to a person, as Kubernetes knows them:
//!    the [`SlackIdentity`] named after the ID (lower case), which only admins may
//!    write, gives the Kubernetes username (what the person's `kubectl` votes carry)
//!    and the groups they may approve as. No SlackIdentity: no vote. The AccessRole's
//!    `approvers[].slackUserId` is not a mapping (it only picks who alerts mention).
//! 4. That person is checked against the AccessRole exactly as a `kubectl` vote is
//!    ([`voter_for`]): a `user` entry naming the username, else a `group` entry naming
//!    one of the person's groups (recorded as `group`). The vote is recorded as
//!    `approver: <username>`, so the requester may not decide on their own request
//!    whichever channel they use (also enforced by the controller's tally), and each
//!    person votes once across `kubectl` and Slack together: the approvals list is
//!    keyed by approver, so the apiserver refuses a second vote ("Duplicate value").
//! 5. The vote is appended with a JSON patch on the status subresource that first
//!    tests `metadata.uid`, so a request deleted and re-created under the same name
//!    is never voted on by an old button.
//!
//! Answers: Slack wants a response within 3 s. Everything above is done inline (two
//! GETs and one PATCH against the apiserver, bounded by [`Handler::kube_timeout`]), and
//! the outcome is the [`Reply`]: over HTTP the response body, `200` with
//! `{"response_type":"ephemeral","replace_original":false,"text":...}`. Slack does not
//! display a `block_actions` response body (nor a Socket Mode acknowledgement's), so
//! when the bot's Web API is configured ([`Handler::with_slack`]) the same message is
//! also POSTed to the click's `response_url` right after (only to
//! `https://hooks.slack.com/…`). The relay's message update, driven by the alert queue,
//! shows everyone who decided.
//!
//! Deny asks why: with the Web API configured, a Deny click is checked (mapping,
//! self-approval, one vote) and then opens a modal (`views.open` with the click's
//! `trigger_id`, [`modal`]); the vote is written when the modal is submitted
//! (`view_submission`, comment required), and a refusal then is shown on the modal's
//! comment field. Without the Web API a Deny is recorded at once with the comment
//! [`DENY_COMMENT`].
//!
//! Nothing secret is logged: the signing secret has a redacting `Debug`, and refusals
//! log only their reason.
pub mod modal;
pub mod socket;
pub mod verify;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use serde::Deserialize;
use serde_json::json;

use crate::crd::{AccessRequest, AccessRole, Decision, Phase, RequestRef, SlackIdentity};
pub use modal::SlackWeb;
pub use verify::{Refusal, SigningSecret};

/// The endpoint's path (the Slack app's "Interactivity Request URL").
pub const PATH: &str = "/slack/interactions";
/// The awaiting-approval message's Approve button.
pub const APPROVE_ACTION: &str = "aws-jit-approve";
/// The awaiting-approval message's Deny button.
pub const DENY_ACTION: &str = "aws-jit-deny";
/// The comment recorded with a Deny from Slack (until the comment modal exists).
pub const DENY_COMMENT: &str = "denied from Slack";
/// Default bound on the Kubernetes work of one click (Slack gives up after 3 s).
pub const DEFAULT_KUBE_TIMEOUT: Duration = Duration::from_millis(2500);
/// The largest body accepted (Slack's payloads are a few KB).
const MAX_BODY: usize = 256 * 1024;

/// The decision logic both transports share. `kube` must carry the operator's identity
/// (RBAC verb `manage` on `accessrequests/status`): only it may record `via: slack`
/// votes. It also reads SlackIdentities (`get`), to know who clicked.
#[derive(Clone)]
pub struct Handler {
    pub kube: kube::Client,
    /// Bound on the Kubernetes reads and write of one click.
    pub kube_timeout: Duration,
    /// The Web API as the bot, for the Deny comment modal and `response_url` answers.
    /// Without it a Deny click is recorded at once with the comment [`DENY_COMMENT`].
    pub slack: Option<Arc<SlackWeb>>,
}

impl Handler {
    pub fn new(kube: kube::Client) -> Handler {
        Handler {
            kube,
            kube_timeout: DEFAULT_KUBE_TIMEOUT,
            slack: None,
        }
    }

    /// With the Deny comment modal (`views.open` through `slack`) and `response_url`
    /// answers.
    pub fn with_slack(mut self, slack: SlackWeb) -> Handler {
        self.slack = Some(Arc::new(slack));
        self
    }
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handler")
            .field("kube_timeout", &self.kube_timeout)
            .field("slack", &self.slack)
            .finish_non_exhaustive()
    }
}

/// What the HTTP endpoint needs: the shared [`Handler`] and the signing secret that
/// authenticates Slack's POSTs.
#[derive(Clone, Debug)]
pub struct State {
    pub handler: Handler,
    pub signing_secret: SigningSecret,
}

impl State {
    pub fn new(kube: kube::Client, signing_secret: SigningSecret) -> State {
        State {
            handler: Handler::new(kube),
            signing_secret,
        }
    }

    /// With the Deny comment modal (`views.open` through `slack`).
    pub fn with_slack(mut self, slack: SlackWeb) -> State {
        self.handler = self.handler.with_slack(slack);
        self
    }
}

/// The answer to one interaction, whatever carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Nothing to say (a modal opened or closed, an interaction that is not ours).
    Empty,
    /// An ephemeral message to the clicker.
    Ephemeral(String),
    /// A submitted Deny modal is refused: the text shows on its comment field.
    FieldError(String),
}

impl Reply {
    /// The JSON Slack reads: the HTTP response body, or a Socket Mode
    /// acknowledgement's `payload`. `None` for an empty answer.
    pub fn body(&self) -> Option<serde_json::Value> {
        match self {
            Reply::Empty => None,
            Reply::Ephemeral(text) => {
                Some(json!({"response_type": "ephemeral", "replace_original": false, "text": text}))
            }
            Reply::FieldError(text) => {
                Some(json!({"response_action": "errors", "errors": {modal::COMMENT_BLOCK: text}}))
            }
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        match self.body() {
            None => StatusCode::OK.into_response(),
            Some(body) => (StatusCode::OK, Json(body)).into_response(),
        }
    }
}

/// The router: `POST /slack/interactions`.
pub fn router(state: State) -> Router {
    Router::new()
        .route(PATH, post(interactions))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Serves the endpoint on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, state: State) -> std::io::Result<()> {
    serve_with_shutdown(listener, state, std::future::pending()).await
}

/// Serves the endpoint on `listener` until `shutdown` completes (in-flight clicks finish).
pub async fn serve_with_shutdown(
    listener: tokio::net::TcpListener,
    state: State,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, path = PATH, "serving Slack interactions");
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn interactions(
    AxumState(state): AxumState<State>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(refusal) = verify::verify(
        &state.signing_secret,
        header(verify::TIMESTAMP_HEADER),
        header(verify::SIGNATURE_HEADER),
        &body,
    ) {
        tracing::warn!(reason = %refusal, "refused a Slack interaction");
        return (StatusCode::UNAUTHORIZED, refusal.to_string()).into_response();
    }
    let payload = match parse_payload(&body) {
        Ok(p) => p,
        Err(why) => {
            tracing::warn!(%why, "a signed Slack interaction could not be read");
            return (StatusCode::BAD_REQUEST, why.to_string()).into_response();
        }
    };
    state.handler.handle(payload).await.into_response()
}

impl Handler {
    /// Decides on one interaction (`block_actions` or `view_submission`), whichever
    /// transport brought it. Other interaction types (shortcuts, `view_closed`, …) are
    /// not ours and get [`Reply::Empty`].
    pub async fn handle(&self, payload: Payload) -> Reply {
        match payload.kind.as_str() {
            "block_actions" => block_actions(self, payload).await,
            "view_submission" => view_submission(self, payload).await,
            other => {
                tracing::debug!(kind = %other, "ignored a Slack interaction");
                Reply::Empty
            }
        }
    }

    /// [`Handler::handle`] for a payload as JSON (a Socket Mode envelope's `payload`).
    pub async fn handle_json(&self, payload: serde_json::Value) -> Result<Reply, PayloadError> {
        let payload: Payload = serde_json::from_value(payload)
            .map_err(|e| PayloadError::NotInteraction(e.to_string()))?;
        Ok(self.handle(payload).await)
    }
}

async fn block_actions(state: &Handler, payload: Payload) -> Reply {
    let Some(action) = payload
        .actions
        .iter()
        .find(|a| a.action_id == APPROVE_ACTION || a.action_id == DENY_ACTION)
    else {
        return Reply::Empty;
    };
    let decision = if action.action_id == APPROVE_ACTION {
        Decision::Approve
    } else {
        Decision::Deny
    };
    let Some(target) = action
        .value
        .as_deref()
        .and_then(|v| serde_json::from_str::<RequestRef>(v).ok())
    else {
        return Reply::Ephemeral(
            "This button does not name an AccessRequest; nothing was recorded.".into(),
        );
    };
    let slack_user = payload.user.id;
    // A Deny asks for a comment first, when the bot can open a modal: the checks run
    // now (so a refused click is told at once), the vote is written on submission.
    if decision == Decision::Deny
        && let (Some(slack), Some(trigger_id)) = (&state.slack, payload.trigger_id.as_deref())
    {
        let checked = bounded(state, check(&state.kube, &target, &slack_user)).await;
        let outcome = match checked {
            Ok(Ok(_)) => match slack.open_deny_modal(trigger_id, &target).await {
                Ok(()) => {
                    log_click(&target, &slack_user, decision, "opened the Deny modal");
                    return Reply::Empty;
                }
                Err(e) => Outcome::Failed(format!("could not open the comment dialog: {e}")),
            },
            Ok(Err(refused)) => refused,
            Err(timed_out) => timed_out,
        };
        log_click(&target, &slack_user, decision, &format!("{outcome:?}"));
        let text = outcome.text(&target, decision);
        respond_later(state, payload.response_url.as_deref(), &text);
        return Reply::Ephemeral(text);
    }
    let outcome = bounded(
        state,
        record(&state.kube, &target, &slack_user, decision, None),
    )
    .await
    .unwrap_or_else(|timed_out| timed_out);
    log_click(&target, &slack_user, decision, &format!("{outcome:?}"));
    let text = outcome.text(&target, decision);
    respond_later(state, payload.response_url.as_deref(), &text);
    Reply::Ephemeral(text)
}

/// Slack does not show a `block_actions` response body: the answer goes to the
/// click's `response_url` too, after the 200 (when the bot's Web API is configured).
fn respond_later(state: &Handler, response_url: Option<&str>, text: &str) {
    let (Some(slack), Some(url)) = (state.slack.clone(), response_url) else {
        return;
    };
    let (url, text) = (url.to_string(), text.to_string());
    tokio::spawn(async move {
        if let Err(e) = slack.respond_ephemeral(&url, &text).await {
            tracing::warn!(error = %e, "could not answer a Slack click through its response_url");
        }
    });
}

/// The Deny modal submitted: record the Deny with its comment. Success closes the
/// modal (empty 200); a refusal is shown on the comment field.
async fn view_submission(state: &Handler, payload: Payload) -> Reply {
    let Some(view) = payload.view else {
        return Reply::Empty;
    };
    if view.callback_id != modal::DENY_CALLBACK {
        return Reply::Empty;
    }
    let field_error = Reply::FieldError;
    let Ok(target) = serde_json::from_str::<RequestRef>(&view.private_metadata) else {
        return field_error(
            "This dialog does not name an AccessRequest; nothing was recorded.".into(),
        );
    };
    let Some(comment) = modal::submitted_comment(&view.state.values) else {
        return field_error("Say why you deny the request.".into());
    };
    if comment.chars().count() > modal::MAX_COMMENT {
        return field_error(format!("At most {} characters.", modal::MAX_COMMENT));
    }
    let slack_user = payload.user.id;
    let outcome = bounded(
        state,
        record(
            &state.kube,
            &target,
            &slack_user,
            Decision::Deny,
            Some(&comment),
        ),
    )
    .await
    .unwrap_or_else(|timed_out| timed_out);
    log_click(
        &target,
        &slack_user,
        Decision::Deny,
        &format!("{outcome:?}"),
    );
    match outcome {
        Outcome::Recorded { .. } => Reply::Empty,
        refused => field_error(refused.text(&target, Decision::Deny)),
    }
}

/// Runs `work` within the state's Kubernetes timeout.
async fn bounded<T>(
    state: &Handler,
    work: impl std::future::Future<Output = T>,
) -> Result<T, Outcome> {
    tokio::time::timeout(state.kube_timeout, work)
        .await
        .map_err(|_| {
            Outcome::Failed(format!(
                "the Kubernetes API did not answer within {:?}",
                state.kube_timeout
            ))
        })
}

fn log_click(target: &RequestRef, slack_user: &str, decision: Decision, outcome: &str) {
    tracing::info!(
        namespace = %target.namespace,
        name = %target.name,
        slack_user = %slack_user,
        decision = ?decision,
        outcome = %outcome,
        "Slack click"
    );
}

/// What became of one click.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The vote was written as `approver`.
    Recorded { approver: String },
    /// This approver has a vote on the request already.
    AlreadyVoted { approver: String },
    /// No SlackIdentity maps the Slack user to a Kubernetes user.
    NotMapped,
    /// The person is not an approver of the role (by user, nor by a group of theirs).
    NotApprover { username: String },
    /// The Slack user is the requester.
    OwnRequest,
    /// The request is gone, or is a newer one under the same name.
    NotFound,
    /// The request is not waiting for votes (already decided, or not started yet).
    NotAwaiting(Option<Phase>),
    /// The AccessRole the request names does not exist.
    NoRole(String),
    /// Kubernetes failed or did not answer; the vote may not have been recorded.
    Failed(String),
}

impl Outcome {
    pub fn text(&self, target: &RequestRef, decision: Decision) -> String {
        let what = format!("{}/{}", target.namespace, target.name);
        let verb = match decision {
            Decision::Approve => "approval",
            Decision::Deny => "denial",
        };
        match self {
            Outcome::Recorded { approver } => {
                format!("Recorded your {verb} of {what} as {approver}.")
            }
            Outcome::AlreadyVoted { approver } => format!(
                "You already voted on {what} (as {approver}); a vote cannot be changed. Nothing was recorded."
            ),
            Outcome::NotMapped => format!(
                "Your Slack account is not mapped to a Kubernetes user (an admin maps it with a SlackIdentity), so your {verb} of {what} was not recorded."
            ),
            Outcome::NotApprover { username } => format!(
                "You ({username}) are not listed as an approver of {what}'s AccessRole, by name or by a group of yours, so your {verb} was not recorded."
            ),
            Outcome::OwnRequest => {
                format!("You cannot approve or deny your own request {what}. Nothing was recorded.")
            }
            Outcome::NotFound => format!(
                "{what} no longer exists (deleted, or re-created since this message was posted). Nothing was recorded."
            ),
            Outcome::NotAwaiting(phase) => match phase {
                Some(p) => format!(
                    "{what} is not waiting for approval any more (phase {p:?}). Nothing was recorded."
                ),
                None => format!("{what} is not waiting for approval yet. Nothing was recorded."),
            },
            Outcome::NoRole(role) => {
                format!(
                    "{what} names AccessRole {role:?}, which does not exist. Nothing was recorded."
                )
            }
            Outcome::Failed(why) => format!(
                "Your {verb} of {what} could not be recorded ({why}). Try again, or use kubectl."
            ),
        }
    }
}

/// A person behind a Slack account, in Kubernetes' terms (from their SlackIdentity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub username: String,
    pub groups: Vec<String>,
}

/// Whether `id` has the shape of a Slack user ID (`U…`/`W…`, upper-case letters and
/// digits), as [`crate::crd::SLACK_USER_ID_RE`] says.
pub fn is_slack_user_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some('U' | 'W'))
        && (3..=21).contains(&id.len())
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// The person a SlackIdentity names for `slack_user`: it must be that user's object
/// (the apiserver makes its name the ID in lower case; the ID is checked again here).
pub fn person_from(identity: &SlackIdentity, slack_user: &str) -> Option<Person> {
    let spec = &identity.spec;
    if spec.slack_user_id != slack_user || spec.username.is_empty() {
        return None;
    }
    Some(Person {
        username: spec.username.clone(),
        groups: spec.groups.clone(),
    })
}

/// Who a permitted Slack vote is cast as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    pub approver: String,
    pub group: Option<String>,
}

/// How `person` votes on `role`, as a `kubectl` vote would: as themselves when a `user`
/// entry names them (no group), else through the first `group` entry that names one
/// of their groups. `None`: not an approver.
pub fn voter_for(role: &AccessRole, person: &Person) -> Option<Voter> {
    let approvers = &role.spec.approvers;
    if approvers
        .iter()
        .any(|s| s.user.as_deref() == Some(person.username.as_str()))
    {
        return Some(Voter {
            approver: person.username.clone(),
            group: None,
        });
    }
    approvers
        .iter()
        .filter_map(|s| s.group.as_ref())
        .find(|g| person.groups.contains(g))
        .map(|g| Voter {
            approver: person.username.clone(),
            group: Some(g.clone()),
        })
}

/// The person behind `slack_user`, from their SlackIdentity.
async fn resolve(kube: &kube::Client, slack_user: &str) -> Result<Person, Outcome> {
    if !is_slack_user_id(slack_user) {
        return Err(Outcome::NotMapped);
    }
    let identities: Api<SlackIdentity> = Api::all(kube.clone());
    match identities
        .get_opt(&SlackIdentity::name_for(slack_user))
        .await
    {
        Ok(Some(identity)) => person_from(&identity, slack_user).ok_or(Outcome::NotMapped),
        Ok(None) => Err(Outcome::NotMapped),
        Err(e) => Err(Outcome::Failed(format!(
            "reading the SlackIdentity: {}",
            short(&e)
        ))),
    }
}

/// Whether the Slack user may vote on `target` now, and as whom (reads only).
pub async fn check(
    kube: &kube::Client,
    target: &RequestRef,
    slack_user: &str,
) -> Result<Voter, Outcome> {
    let api: Api<AccessRequest> = Api::namespaced(kube.clone(), &target.namespace);
    let request = match api.get_opt(&target.name).await {
        Ok(Some(r)) => r,
        Ok(None) => return Err(Outcome::NotFound),
        Err(e) => {
            return Err(Outcome::Failed(format!(
                "reading the request: {}",
                short(&e)
            )));
        }
    };
    if request.metadata.uid.as_deref() != Some(target.uid.as_str()) {
        return Err(Outcome::NotFound);
    }
    let status = request.status.clone().unwrap_or_default();
    if status.phase != Some(Phase::AwaitingApproval) {
        return Err(Outcome::NotAwaiting(status.phase));
    }
    let roles: Api<AccessRole> = Api::all(kube.clone());
    let role = match roles.get_opt(&request.spec.role).await {
        Ok(Some(r)) => r,
        Ok(None) => return Err(Outcome::NoRole(request.spec.role.clone())),
        Err(e) => {
            return Err(Outcome::Failed(format!(
                "reading the AccessRole: {}",
                short(&e)
            )));
        }
    };
    let person = resolve(kube, slack_user).await?;
    if person.username == request.spec.requester {
        return Err(Outcome::OwnRequest);
    }
    let Some(Voter { approver, group }) = voter_for(&role, &person) else {
        return Err(Outcome::NotApprover {
            username: person.username,
        });
    };
    let Some(approvals) = status.approvals else {
        // The controller creates the list when it takes the request up.
        return Err(Outcome::NotAwaiting(None));
    };
    if approvals.iter().any(|a| a.approver == approver) {
        return Err(Outcome::AlreadyVoted { approver });
    }
    Ok(Voter { approver, group })
}

/// Checks, then writes one Slack vote on `target` as the client's identity (the
/// operator). A Deny without `comment` gets [`DENY_COMMENT`].
pub async fn record(
    kube: &kube::Client,
    target: &RequestRef,
    slack_user: &str,
    decision: Decision,
    comment: Option<&str>,
) -> Outcome {
    let Voter { approver, group } = match check(kube, target, slack_user).await {
        Ok(v) => v,
        Err(refused) => return refused,
    };
    let api: Api<AccessRequest> = Api::namespaced(kube.clone(), &target.namespace);
    let mut vote = json!({
        "approver": approver,
        "decision": decision,
        "via": "slack",
        "time": Time(jiff::Timestamp::now()),
    });
    if let Some(group) = &group {
        vote["group"] = json!(group);
    }
    match (comment, decision) {
        (Some(c), _) => vote["comment"] = json!(c),
        (None, Decision::Deny) => vote["comment"] = json!(DENY_COMMENT),
        (None, Decision::Approve) => {}
    }
    let ops = json!([
        {"op": "test", "path": "/metadata/uid", "value": target.uid},
        {"op": "add", "path": "/status/approvals/-", "value": vote},
    ]);
    let patch = match serde_json::from_value(ops) {
        Ok(p) => Patch::Json::<()>(p),
        Err(e) => return Outcome::Failed(format!("building the patch: {e}")),
    };
    let params = PatchParams {
        field_manager: Some("aws-jit-slack".into()),
        ..PatchParams::default()
    };
    match api.patch_status(&target.name, &params, &patch).await {
        Ok(_) => Outcome::Recorded { approver },
        Err(kube::Error::Api(s)) if s.message.contains("Duplicate value") => {
            Outcome::AlreadyVoted { approver }
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Outcome::NotFound,
        Err(e) => {
            // A failed `test` of metadata.uid comes back as a bare 422: look again.
            match api.get_opt(&target.name).await {
                Ok(Some(r)) if r.metadata.uid.as_deref() == Some(target.uid.as_str()) => {
                    Outcome::Failed(format!("writing the vote: {}", short(&e)))
                }
                Ok(_) => Outcome::NotFound,
                Err(_) => Outcome::Failed(format!("writing the vote: {}", short(&e))),
            }
        }
    }
}

/// An error's message, bounded (it goes back to Slack).
fn short(e: &kube::Error) -> String {
    let s = e.to_string();
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s
    }
}

/// The fields of an interaction payload (`block_actions`, `view_submission`) the
/// handler reads: what Slack POSTs form-encoded, or a Socket Mode envelope's `payload`.
#[derive(Debug, Deserialize)]
pub struct Payload {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    user: SlackUser,
    #[serde(default)]
    actions: Vec<Action>,
    #[serde(default)]
    trigger_id: Option<String>,
    #[serde(default)]
    response_url: Option<String>,
    #[serde(default)]
    view: Option<View>,
}

/// A submitted modal.
#[derive(Debug, Deserialize)]
struct View {
    #[serde(default)]
    callback_id: String,
    #[serde(default)]
    private_metadata: String,
    #[serde(default)]
    state: ViewState,
}

#[derive(Debug, Default, Deserialize)]
struct ViewState {
    #[serde(default)]
    values: serde_json::Value,
}

#[derive(Debug, Default, Deserialize)]
struct SlackUser {
    #[serde(default)]
    id: String,
}

#[derive(Debug, Deserialize)]
struct Action {
    #[serde(default)]
    action_id: String,
    #[serde(default)]
    value: Option<String>,
}

/// Why an interaction body or payload could not be read. Safe to log and to answer:
/// it never holds the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("the body is not UTF-8")]
    BodyNotUtf8,
    #[error("the payload is not UTF-8")]
    NotUtf8,
    #[error("the body has no payload field")]
    NoPayload,
    #[error("the body has more than one payload field")]
    RepeatedPayload,
    #[error("the payload is not a Slack interaction: {0}")]
    NotInteraction(String),
}

/// `payload=<url-encoded JSON>` from an `application/x-www-form-urlencoded` body (the
/// only field Slack sends). Exactly one `payload` field is taken: with two, which one
/// counts would depend on the reader, so neither does.
fn parse_payload(body: &[u8]) -> Result<Payload, PayloadError> {
    let text = std::str::from_utf8(body).map_err(|_| PayloadError::BodyNotUtf8)?;
    // form_urlencoded decodes escapes that are not UTF-8 lossily (as U+FFFD): refuse
    // them first. The separators are ASCII, which never sits inside a multi-byte
    // character, so decoding the body whole checks every name and value in it.
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map_err(|_| PayloadError::NotUtf8)?;
    let mut payloads = form_urlencoded::parse(body)
        .filter(|(name, _)| name == "payload")
        .map(|(_, value)| value);
    let json = payloads.next().ok_or(PayloadError::NoPayload)?;
    if payloads.next().is_some() {
        return Err(PayloadError::RepeatedPayload);
    }
    serde_json::from_str(&json).map_err(|e| PayloadError::NotInteraction(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::AccessRoleSpec;

    fn role(approvers: serde_json::Value) -> AccessRole {
        let spec: AccessRoleSpec = serde_json::from_value(json!({
            "roleArn": "arn:aws:iam::123456789012:role/admin",
            "approvers": approvers,
            "requesters": [{"group": "developers"}],
            "principal": {"template": "arn:aws:iam::123456789012:user/{username}"},
        }))
        .unwrap();
        AccessRole::new("r", spec)
    }

    fn identity(slack: &str, username: &str, groups: &[&str]) -> SlackIdentity {
        let spec: crate::crd::SlackIdentitySpec = serde_json::from_value(json!({
            "slackUserId": slack, "username": username, "groups": groups,
        }))
        .unwrap();
        SlackIdentity::new(&SlackIdentity::name_for(slack), spec)
    }

    fn person(username: &str, groups: &[&str]) -> Person {
        Person {
            username: username.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn slack_user_ids_are_checked_before_any_lookup() {
        for ok in ["UCAROL01", "W012AB3CD", "U01"] {
            assert!(is_slack_user_id(ok), "{ok}");
        }
        for bad in [
            "",
            "U",
            "ucarol01",
            "XCAROL01",
            "U/../x",
            "U CAROL",
            "UCARÖL01",
        ] {
            assert!(!is_slack_user_id(bad), "{bad}");
        }
        assert!(!is_slack_user_id(&format!("U{}", "A".repeat(21))));
    }

    #[test]
    fn a_slack_identity_names_the_person_only_for_its_own_slack_id() {
        let i = identity("UCAROL01", "carol", &["sre"]);
        assert_eq!(person_from(&i, "UCAROL01"), Some(person("carol", &["sre"])));
        // An object that names another Slack ID (whatever its name) maps nobody.
        assert_eq!(person_from(&i, "UDAVE001"), None);
    }

    #[test]
    fn a_person_votes_as_their_username_by_user_entry_first_then_by_group() {
        let r = role(json!([
            {"user": "carol"},
            {"group": "sre-leads"},
            {"group": "sre"},
        ]));
        let voter = |p: &Person| voter_for(&r, p).map(|v| (v.approver, v.group));
        assert_eq!(
            voter(&person("carol", &["sre"])),
            Some(("carol".into(), None))
        );
        assert_eq!(
            voter(&person("dave", &["developers", "sre"])),
            Some(("dave".into(), Some("sre".into())))
        );
        assert_eq!(voter(&person("erin", &["developers"])), None);
        // The legacy slackUserId on an entry grants nothing by itself.
        let legacy = role(json!([{"group": "sre-leads", "slackUserId": "ULEAD001"}]));
        assert_eq!(voter_for(&legacy, &person("lead", &[])), None);
    }

    #[test]
    fn a_group_vote_from_slack_counts_for_the_controller_as_the_person() {
        // The vote is the one a kubectl vote by the same person would be: the tally
        // counts it once, and not at all for the requester.
        let r = role(json!([{"group": "sre"}]));
        let slack_vote = |p: &Person| {
            let Voter { approver, group } = voter_for(&r, p).unwrap();
            crate::crd::Approval {
                approver,
                decision: Decision::Approve,
                group,
                comment: None,
                time: None,
                via: crate::crd::ApprovalChannel::Slack,
            }
        };
        let dave = slack_vote(&person("dave", &["sre"]));
        let (tally, ignored) =
            crate::policy::decide::tally(&r, "alice", std::slice::from_ref(&dave));
        assert!(ignored.is_empty(), "{ignored:?}");
        assert_eq!(
            tally,
            crate::policy::decide::Tally::Approved {
                approvers: vec!["dave".into()]
            }
        );
        let own = slack_vote(&person("alice", &["sre"]));
        let (tally, _) = crate::policy::decide::tally(&r, "alice", &[own]);
        assert_eq!(
            tally,
            crate::policy::decide::Tally::Pending { have: 0, need: 1 }
        );
    }

    #[test]
    fn payloads_are_read_from_the_form() {
        let json = r#"{"type":"block_actions","user":{"id":"UCAROL01"},"actions":[{"action_id":"aws-jit-approve","value":"{\"namespace\":\"n\",\"name\":\"a b\",\"uid\":\"u\"}"}]}"#;
        let encoded: String =
            percent_encoding::utf8_percent_encode(json, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let p = parse_payload(format!("payload={encoded}").as_bytes()).unwrap();
        assert_eq!(p.kind, "block_actions");
        assert_eq!(p.user.id, "UCAROL01");
        assert_eq!(p.actions[0].action_id, APPROVE_ACTION);
        let target: RequestRef =
            serde_json::from_str(p.actions[0].value.as_deref().unwrap()).unwrap();
        assert_eq!(target.name, "a b");
        // '+' is a space in forms.
        let p = parse_payload(b"payload=%7B%22type%22%3A%22block+actions%22%7D").unwrap();
        assert_eq!(p.kind, "block actions");
        assert!(parse_payload(b"nothing=1").is_err());
        assert!(parse_payload(b"payload=not-json").is_err());
    }

    /// `payload=<json>` form-encoded the way a form encoder does it (space as `+`).
    fn form(json: &str) -> String {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", json)
            .finish()
    }

    fn comment_of(p: &Payload) -> String {
        let view = p.view.as_ref().expect("a view");
        modal::submitted_comment(&view.state.values).expect("a comment")
    }

    /// A Deny modal submitted with `comment`, as JSON.
    fn submission(comment: &str) -> String {
        json!({
            "type": "view_submission",
            "user": {"id": "UDAVE001"},
            "view": {
                "callback_id": modal::DENY_CALLBACK,
                "private_metadata": r#"{"namespace":"n","name":"a","uid":"u"}"#,
                "state": {"values": {modal::COMMENT_BLOCK: {modal::COMMENT_ACTION: {
                    "type": "plain_text_input", "value": comment}}}},
            },
        })
        .to_string()
    }

    #[test]
    fn plus_is_a_space_and_an_encoded_plus_is_a_plus() {
        let p = parse_payload(form(&submission("c++ & a=b; 50% off")).as_bytes()).unwrap();
        assert_eq!(comment_of(&p), "c++ & a=b; 50% off");
        // Spelled out: `+` is a space, `%2B` a plus, `%26` an ampersand inside the value.
        let body = form(&submission("x")).replace("%22x%22", "%22a+b%2Bc%26d%3De%22");
        let p = parse_payload(body.as_bytes()).unwrap();
        assert_eq!(comment_of(&p), "a b+c&d=e");
    }

    #[test]
    fn an_unencoded_ampersand_ends_the_field() {
        // `&` separates fields: a JSON cut there is not a Slack interaction.
        let why = parse_payload(br#"payload={"type":"block_actions","x":"a&b"}"#)
            .unwrap_err()
            .to_string();
        assert!(why.contains("not a Slack interaction"), "{why}");
    }

    #[test]
    fn only_one_payload_field_is_taken() {
        let one = form(&submission("first"));
        let two = form(&submission("second"));
        // Two payloads: which one is meant is ambiguous, so neither is taken.
        let why = parse_payload(format!("{one}&{two}").as_bytes())
            .unwrap_err()
            .to_string();
        assert!(why.contains("more than one payload"), "{why}");
        // Other fields, repeated or not, and fields merely named like it, change nothing.
        let body = format!("token=a&token=b&{one}&payloads=x&xpayload=y");
        assert_eq!(
            comment_of(&parse_payload(body.as_bytes()).unwrap()),
            "first"
        );
    }

    #[test]
    fn unreadable_bodies_say_why() {
        let why = |body: &[u8]| parse_payload(body).unwrap_err().to_string();
        assert!(why(b"").contains("no payload field"), "{}", why(b""));
        assert!(why(b"nothing=1").contains("no payload field"));
        assert!(why(b"payload").contains("not a Slack interaction"));
        assert!(why(b"payload=").contains("not a Slack interaction"));
        assert!(why(b"payload=%7B").contains("not a Slack interaction"));
        assert!(why(b"payload=\xff").contains("not UTF-8"));
        assert!(why(b"payload=%7B%22type%22%3A%22%FF%22%7D").contains("not UTF-8"));
        // A lone lead byte right before a separator is not UTF-8 either.
        assert!(why(b"payload=%7B%7D%E2&x=1").contains("not UTF-8"));
        assert!(why(b"\xffpayload={}").contains("not UTF-8"));
    }

    #[test]
    fn refusals_explain_themselves() {
        let t = RequestRef {
            namespace: "team".into(),
            name: "req".into(),
            uid: "u".into(),
        };
        assert!(
            Outcome::NotMapped
                .text(&t, Decision::Approve)
                .contains("not mapped to a Kubernetes user")
        );
        assert!(
            Outcome::NotApprover {
                username: "erin".into()
            }
            .text(&t, Decision::Approve)
            .contains("(erin) are not listed as an approver")
        );
        assert!(
            Outcome::OwnRequest
                .text(&t, Decision::Deny)
                .contains("your own request")
        );
        assert!(
            Outcome::AlreadyVoted {
                approver: "carol".into()
            }
            .text(&t, Decision::Approve)
            .contains("already voted")
        );
    }
}
