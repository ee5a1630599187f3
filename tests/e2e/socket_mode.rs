//! Approvals from Slack over Socket Mode on the real stack: the operator (the
//! controller's `Env`), the Socket Mode client (`aws_jit::slack::interactions::socket`, what
//! `aws-jit relay` runs when SLACK_APP_TOKEN is set) connected to the Socket Mode
//! stand-in (`support::slack_socket`), and the bot's Web API (`views.open`,
//! `response_url`) on the `ViewsApi` stand-in. The payloads are the ones the HTTP tests
//! post (`support::slack_interactions`), carried in `interactive` envelopes.
use std::time::Duration;

use aws_jit::crd::{Decision, Phase};
use aws_jit::slack::interactions::{self, Handler, SlackWeb, socket};
use serde_json::{Value, json};

use crate::controller::Env;
use crate::interactions::{ALICE, BOT_TOKEN, CAROL, DAVE, ROLE, SRE_GROUP_ROLE, STRANGER, WAIT};
use crate::support::kube::User;
use crate::support::slack_interactions::{
    ViewsApi, block_actions, map_slack_users, view_submission,
};
use crate::support::slack_socket::SocketStandIn;
use crate::support::stack;
use crate::support::wait::eventually;

const APP_TOKEN: &str = "xapp-1-A0TEST001-e2e-app-token";
const BACKOFF: Duration = Duration::from_millis(200);

/// The operator, the Socket Mode client and both Slack stand-ins.
struct World {
    env: Env,
    socket: SocketStandIn,
    views: ViewsApi,
    client: Client,
}

/// The Socket Mode client as a task of the test.
struct Client {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<(), socket::SocketError>>,
}

impl Client {
    async fn start(api_url: &str, app_token: &str, views: &ViewsApi) -> Client {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("aws_jit::slack::interactions=debug")
            .try_init();
        let kube = stack().kube.client(User::Relay).await;
        let handler = Handler::new(kube).with_slack(
            SlackWeb::new(&views.api_url, BOT_TOKEN)
                .expect("Slack client")
                .with_response_url_prefix(&views.hooks_prefix),
        );
        let mut config = socket::Config::new(api_url, app_token).expect("an app token");
        config.backoff_base = BACKOFF;
        config.backoff_max = BACKOFF * 4;
        config.ping_interval = BACKOFF;
        config.idle_timeout = BACKOFF * 5;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(socket::run(handler, config, async move {
            let _ = rx.await;
        }));
        Client {
            stop: Some(tx),
            handle,
        }
    }

    /// Shutdown: `run` returns promptly, without error.
    async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let ended = tokio::time::timeout(Duration::from_secs(10), &mut self.handle)
            .await
            .expect("the Socket Mode client returns after shutdown")
            .expect("it did not panic");
        assert_eq!(ended, Ok(()));
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl World {
    async fn new(prefix: &str, role_spec: &str) -> World {
        map_slack_users();
        let env = Env::new(prefix, role_spec).await;
        let socket = SocketStandIn::start(APP_TOKEN).await;
        let views = ViewsApi::start(BOT_TOKEN).await;
        let client = Client::start(&socket.api_url, APP_TOKEN, &views).await;
        socket.wait_connected(1).await;
        World {
            env,
            socket,
            views,
            client,
        }
    }

    /// Sends the click as an `interactive` envelope; returns its ack.
    async fn click(&self, slack_user: &str, approve: bool, name: &str, uid: &str) -> Value {
        let action = if approve {
            interactions::APPROVE_ACTION
        } else {
            interactions::DENY_ACTION
        };
        let mut payload = block_actions(slack_user, action, &self.env.ns, name, uid);
        payload["response_url"] = json!(self.views.response_url);
        let id = self.socket.interactive(&payload);
        self.socket.ack(&id).await
    }

    /// Waits for the `n`th ephemeral answer posted to a `response_url`; returns its text.
    async fn answer(&self, n: usize) -> String {
        let posted = eventually(&format!("response_url answer #{n}"), WAIT, || async {
            let r = self.views.responses();
            r.get(n - 1).cloned().ok_or_else(|| format!("{r:?}"))
        })
        .await;
        assert_eq!(posted["response_type"], "ephemeral", "{posted}");
        assert_eq!(posted["replace_original"], false, "{posted}");
        posted["text"].as_str().unwrap_or_default().to_string()
    }

    /// Submits the Deny modal `view` with `comment`; returns the ack.
    async fn submit(&self, slack_user: &str, view: &Value, comment: &str) -> Value {
        let id = self
            .socket
            .interactive(&view_submission(slack_user, view, comment));
        self.socket.ack(&id).await
    }
}

/// An ack with nothing but the envelope's id (what `block_actions` get, and a modal
/// that closes).
#[track_caller]
fn bare(ack: &Value) {
    let keys: Vec<&String> = ack.as_object().expect("an object").keys().collect();
    assert_eq!(keys, ["envelope_id"], "{ack}");
}

#[tokio::test]
async fn an_approve_click_over_socket_mode_activates_the_request() {
    let w = World::new("sock-approve", ROLE).await;
    let uid = w.env.awaiting("by-socket").await;
    bare(&w.click(CAROL, true, "by-socket", &uid).await);
    let text = w.answer(1).await;
    assert!(text.contains("Recorded your approval"), "{text}");
    assert!(text.contains("carol"), "{text}");
    w.env
        .only_slack_vote("by-socket", Phase::Active, "carol", Decision::Approve)
        .await;
    // Shutdown closes the socket and returns.
    w.client.shutdown().await;
    w.socket.wait_disconnected().await;
    assert_eq!(w.socket.acks().len(), 1, "{:?}", w.socket.acks());
}

#[tokio::test]
async fn a_deny_over_socket_mode_asks_why_and_the_submitted_modal_denies() {
    let w = World::new("sock-deny", ROLE).await;
    let uid = w.env.awaiting("deny-socket").await;
    // The click opens the modal (acked at once) and records nothing yet.
    bare(&w.click(DAVE, false, "deny-socket", &uid).await);
    let opened = eventually("the Deny modal", WAIT, || async {
        match w.views.opened().as_slice() {
            [one] => Ok(one.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let view = &opened["view"];
    assert_eq!(view["callback_id"], interactions::modal::DENY_CALLBACK);
    assert!(w.env.approvals("deny-socket").await.is_empty());
    // A blank comment is asked again, through the ack's payload.
    let ack = w.submit(DAVE, view, "  ").await;
    assert_eq!(ack["payload"]["response_action"], "errors", "{ack}");
    // An unmapped user's submission is refused the same way.
    let ack = w.submit(STRANGER, view, "sneaky").await;
    assert_eq!(ack["payload"]["response_action"], "errors", "{ack}");
    let why = ack["payload"]["errors"][interactions::modal::COMMENT_BLOCK].to_string();
    assert!(why.contains("not mapped to a Kubernetes user"), "{why}");
    assert!(w.env.approvals("deny-socket").await.is_empty());
    // dave's reason closes the modal (a bare ack) and denies.
    bare(&w.submit(DAVE, view, "change freeze until Monday").await);
    let vote = w
        .env
        .only_slack_vote("deny-socket", Phase::Denied, "dave", Decision::Deny)
        .await;
    assert_eq!(vote.comment.as_deref(), Some("change freeze until Monday"));
    assert_eq!(w.socket.acks().len(), 4, "each envelope acked once");
}

#[tokio::test]
async fn unmapped_users_and_the_requester_are_refused_over_socket_mode() {
    let w = World::new(
        "sock-refused",
        "  approvers: [{user: alice}, {user: carol}]",
    )
    .await;
    let uid = w.env.awaiting("refused").await;
    bare(&w.click(STRANGER, true, "refused", &uid).await);
    let text = w.answer(1).await;
    assert!(text.contains("not mapped to a Kubernetes user"), "{text}");
    bare(&w.click(ALICE, true, "refused", &uid).await);
    let text = w.answer(2).await;
    assert!(text.contains("your own request"), "{text}");
    assert!(w.env.approvals("refused").await.is_empty());
    assert_eq!(
        w.env.get("refused").await.status.and_then(|s| s.phase),
        Some(Phase::AwaitingApproval)
    );
    // The role's other approver can, on the same connection.
    bare(&w.click(CAROL, true, "refused", &uid).await);
    assert!(w.answer(3).await.contains("Recorded"));
    w.env.wait_phase("refused", Phase::Active).await;
}

/// Attacks over Socket Mode: alice (requester, also in the approver group) approves her
/// own request; dave approves by kubectl, then again in Slack. Both refused; the vote of
/// a second person then counts once.
#[tokio::test]
async fn over_socket_mode_a_click_is_the_person_who_votes_once_and_never_on_their_own() {
    let w = World::new(
        "sock-person",
        &format!("{SRE_GROUP_ROLE}\n  approvalsRequired: 2"),
    )
    .await;
    let uid = w.env.awaiting("person").await;
    bare(&w.click(ALICE, true, "person", &uid).await);
    let text = w.answer(1).await;
    assert!(text.contains("your own request"), "{text}");
    assert!(w.env.approvals("person").await.is_empty());
    crate::support::succeeded(&stack().kube.append_approval(
        User::Dave,
        &w.env.ns,
        "person",
        r#"{"approver":"dave","decision":"Approve","group":"sre","comment":"by kubectl"}"#,
    ));
    w.env.wait_message("person", "1 of 2 approvals").await;
    bare(&w.click(DAVE, true, "person", &uid).await);
    let text = w.answer(2).await;
    assert!(text.contains("already voted"), "{text}");
    assert_eq!(w.env.approvals("person").await.len(), 1);
    assert_eq!(
        w.env.get("person").await.status.and_then(|s| s.phase),
        Some(Phase::AwaitingApproval)
    );
    bare(&w.click(CAROL, true, "person", &uid).await);
    assert!(w.answer(3).await.contains("Recorded"));
    let r = w.env.wait_phase("person", Phase::Active).await;
    let approvers: Vec<_> = r
        .status
        .and_then(|s| s.approvals)
        .unwrap_or_default()
        .into_iter()
        .map(|a| a.approver)
        .collect();
    assert_eq!(approvers, ["dave", "carol"]);
}

#[tokio::test]
async fn after_a_disconnect_a_dropped_or_a_silent_socket_the_client_reconnects_and_clicks_still_work()
 {
    let w = World::new("sock-reconnect", &format!("{ROLE}\n  approvalsRequired: 2")).await;
    let uid = w.env.awaiting("reconnect").await;
    assert_eq!(w.socket.opens().len(), 1);
    // Slack refreshes the connection: a fresh apps.connections.open, a new socket.
    w.socket.disconnect("refresh_requested");
    w.socket.wait_connected(2).await;
    assert_eq!(w.socket.opens().len(), 2);
    bare(&w.click(CAROL, true, "reconnect", &uid).await);
    assert!(w.answer(1).await.contains("Recorded"));
    // The network drops the socket (no close frame): reconnected after a backoff.
    w.socket.drop_connection();
    w.socket.wait_connected(3).await;
    let opens = w.socket.opens();
    assert_eq!(opens.len(), 3, "{opens:?}");
    assert!(
        opens.iter().all(|(_, outcome)| outcome == "ok"),
        "{opens:?}"
    );
    // A quiet but healthy connection is kept: the client pings, the pongs come back,
    // for longer than the idle timeout.
    w.socket.wait_pings(3, 8).await;
    assert_eq!(
        w.socket.connections(),
        3,
        "no reconnect while pongs come back"
    );
    // The network path goes silent without closing: the client's pings go unanswered,
    // and it replaces the connection.
    w.socket.freeze();
    w.socket.wait_connected(4).await;
    assert_eq!(w.socket.opens().len(), 4);
    bare(&w.click(DAVE, true, "reconnect", &uid).await);
    assert!(w.answer(2).await.contains("Recorded"));
    let r = w.env.wait_phase("reconnect", Phase::Active).await;
    let approvers: Vec<String> = r
        .status
        .and_then(|s| s.approvals)
        .unwrap_or_default()
        .into_iter()
        .map(|a| a.approver)
        .collect();
    assert_eq!(approvers, ["carol", "dave"]);
    assert_eq!(w.socket.connections(), 4);
}

#[tokio::test]
async fn a_bad_app_token_is_refused_clearly_and_retried_with_backoff() {
    crate::support::install_crypto_provider();
    let socket = SocketStandIn::start(APP_TOKEN).await;
    let views = ViewsApi::start(BOT_TOKEN).await;
    let wrong = "xapp-1-A0TEST001-revoked-token";
    // The error says what to check, and never holds the token.
    let client = aws_jit::slack::relay::slack::client(&socket.api_url).expect("client");
    let err = socket::open_connection(
        &client,
        &socket::AppToken::new(wrong).expect("an app token"),
    )
    .await
    .expect_err("refused");
    assert_eq!(err, socket::SocketError::Refused("invalid_auth".into()));
    let said = err.to_string();
    assert!(said.contains("SLACK_APP_TOKEN"), "{said}");
    assert!(!said.contains(wrong), "{said}");
    // The client keeps trying, slower and slower, and never connects.
    let before = socket.opens().len();
    let client = Client::start(&socket.api_url, wrong, &views).await;
    let opens = eventually("five refused attempts", WAIT, || async {
        let opens = socket.opens().split_off(before);
        if opens.len() >= 5 {
            Ok(opens)
        } else {
            Err(format!("{opens:?}"))
        }
    })
    .await;
    assert!(opens.iter().all(|(_, o)| o == "invalid_auth"), "{opens:?}");
    let gaps: Vec<Duration> = opens.windows(2).map(|w| w[1].0 - w[0].0).collect();
    // 200 ms, 400 ms, 800 ms, then capped at 800 ms (a little slack for timers).
    let floor = |d: Duration| d - Duration::from_millis(20);
    assert!(gaps[0] >= floor(BACKOFF), "{gaps:?}");
    assert!(gaps[1] >= floor(BACKOFF * 2), "{gaps:?}");
    assert!(gaps[2] >= floor(BACKOFF * 4), "{gaps:?}");
    assert!(gaps[3] >= floor(BACKOFF * 4), "{gaps:?}");
    assert_eq!(socket.connections(), 0);
    assert!(!client.handle.is_finished(), "still retrying");
    client.shutdown().await;
}

#[tokio::test]
async fn the_relay_binary_runs_socket_mode_when_slack_app_token_is_set() {
    map_slack_users();
    let env = Env::new("sock-binary", ROLE).await;
    let socket = SocketStandIn::start(APP_TOKEN).await;
    let relay = |app_token: &str| {
        let mut cmd = stack().operator_command("relay");
        cmd.env("KUBECONFIG", stack().kube.kubeconfig(User::Relay));
        // An alert queue nothing writes to: this test is about the clicks.
        cmd.args(["--alert-queue-url", &env.aws.alert_dlq_url])
            .args(["--default-channel", "C0SOCKET"])
            .args(["--slack-api-url", &socket.api_url])
            .env("SLACK_BOT_TOKEN", BOT_TOKEN)
            .env("SLACK_APP_TOKEN", app_token);
        cmd
    };
    // A bot token where the app token belongs: a clear refusal at start-up.
    let mut wrong = relay("xoxb-not-an-app-token");
    let out = tokio::task::spawn_blocking(move || wrong.output())
        .await
        .expect("join")
        .expect("run the relay");
    crate::support::refused(&out, "SLACK_APP_TOKEN is not an app-level token");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("xoxb-not-an-app-token"));
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("relay.log");
    let pid = crate::support::procs::spawn_service(relay(APP_TOKEN), log.clone())
        .expect("start the relay");
    socket.wait_connected(1).await;
    let uid = env.awaiting("by-binary").await;
    let mut payload = block_actions(
        CAROL,
        interactions::APPROVE_ACTION,
        &env.ns,
        "by-binary",
        &uid,
    );
    payload["response_url"] = json!("https://hooks.slack.com/actions/T0TEST001/1/abc");
    let id = socket.interactive(&payload);
    bare(&socket.ack(&id).await);
    env.only_slack_vote("by-binary", Phase::Active, "carol", Decision::Approve)
        .await;
    // SIGTERM: the relay closes the socket and exits.
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    socket.wait_disconnected().await;
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains("Slack Socket Mode connected"), "{logged}");
    assert!(!logged.contains(APP_TOKEN), "the app token is never logged");
    assert!(!logged.contains("ticket-"), "nor the socket URL's ticket");
}
