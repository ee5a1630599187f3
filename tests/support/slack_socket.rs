//! A local stand-in for Slack's Socket Mode, one per test.
//!
//! - `POST /api/apps.connections.open` (axum on `127.0.0.1:0`) checks
//!   `Authorization: Bearer <app token>` (`{"ok":false,"error":"invalid_auth"}`
//!   otherwise) and answers `{"ok":true,"url":"ws://127.0.0.1:PORT/link/?ticket=N"}`
//!   with a fresh one-time ticket. Every call is recorded with its time and outcome.
//! - The WebSocket endpoint (tokio-tungstenite on another port) refuses unknown or used
//!   tickets with HTTP 401, says `hello` on each new connection, then on demand sends
//!   `interactive` envelopes (the payloads `support::slack_interactions` builds),
//!   `disconnect`, or drops the socket without a close frame. Every message the client
//!   sends that names an `envelope_id` is recorded as an acknowledgement.
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

use crate::support::wait::eventually;

const WAIT: Duration = Duration::from_secs(30);

/// What the test asks the live connection to do.
enum Command {
    Send(String),
    Drop,
    Freeze,
}

#[derive(Default)]
struct Inner {
    /// `apps.connections.open` calls: when, and `ok` or the error answered.
    opens: Vec<(Instant, String)>,
    /// Tickets issued and not used yet.
    tickets: HashSet<String>,
    next_ticket: u64,
    /// Connections accepted (a valid ticket) so far.
    connections: usize,
    /// The live connection (the latest one), if any.
    current: Option<(usize, mpsc::UnboundedSender<Command>)>,
    /// Every message from the client with an `envelope_id`, in arrival order.
    acks: Vec<Value>,
    /// Pings received, per connection (index: connection number - 1).
    pings: Vec<usize>,
    next_envelope: u64,
}

struct Shared {
    token: String,
    ws_addr: SocketAddr,
    inner: Mutex<Inner>,
}

pub struct SocketStandIn {
    /// The Web API base the client opens connections with: `http://127.0.0.1:P/api`.
    pub api_url: String,
    /// The app-level token it accepts.
    pub app_token: String,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for SocketStandIn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl SocketStandIn {
    /// Starts a stand-in accepting `app_token`, on the current test's runtime.
    pub async fn start(app_token: &str) -> SocketStandIn {
        let ws = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Socket Mode WebSocket stand-in");
        let shared = Arc::new(Shared {
            token: app_token.to_string(),
            ws_addr: ws.local_addr().expect("WebSocket address"),
            inner: Mutex::new(Inner::default()),
        });
        let api = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the apps.connections.open stand-in");
        let api_addr = api.local_addr().expect("API address");
        let opener = shared.clone();
        let app = axum::Router::new().route(
            "/api/apps.connections.open",
            axum::routing::post(move |headers: HeaderMap| {
                let shared = opener.clone();
                async move { axum::Json(open(&shared, &headers)) }
            }),
        );
        let api_task = tokio::spawn(async move {
            let _ = axum::serve(api, app).await;
        });
        let accepting = shared.clone();
        let ws_task = tokio::spawn(async move {
            while let Ok((stream, _)) = ws.accept().await {
                tokio::spawn(serve_connection(accepting.clone(), stream));
            }
        });
        SocketStandIn {
            api_url: format!("http://{api_addr}/api"),
            app_token: app_token.to_string(),
            shared,
            tasks: vec![api_task, ws_task],
        }
    }

    /// `apps.connections.open` calls so far: when, and `ok` or the error answered.
    pub fn opens(&self) -> Vec<(Instant, String)> {
        self.shared.inner.lock().unwrap().opens.clone()
    }

    /// WebSocket connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.inner.lock().unwrap().connections
    }

    /// Whether a connection is live now.
    pub fn is_connected(&self) -> bool {
        self.shared.inner.lock().unwrap().current.is_some()
    }

    /// Waits until the `n`th connection is accepted and live.
    pub async fn wait_connected(&self, n: usize) {
        eventually(&format!("Socket Mode connection #{n}"), WAIT, || async {
            let inner = self.shared.inner.lock().unwrap();
            match &inner.current {
                Some((number, _)) if *number >= n => Ok(()),
                other => Err(format!(
                    "{} accepted, live: {:?}",
                    inner.connections,
                    other.as_ref().map(|c| c.0)
                )),
            }
        })
        .await
    }

    /// Waits until connection `n` has received `count` pings from the client.
    pub async fn wait_pings(&self, n: usize, count: usize) {
        eventually(
            &format!("{count} pings on connection #{n}"),
            WAIT,
            || async {
                let got = self.shared.inner.lock().unwrap().pings.get(n - 1).copied();
                match got {
                    Some(p) if p >= count => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await
    }

    /// Waits until no connection is live (the client closed it).
    pub async fn wait_disconnected(&self) {
        eventually("the Socket Mode connection to close", WAIT, || async {
            if self.is_connected() {
                Err("still connected".to_string())
            } else {
                Ok(())
            }
        })
        .await
    }

    fn command(&self, command: Command) {
        let inner = self.shared.inner.lock().unwrap();
        let (_, tx) = inner
            .current
            .as_ref()
            .expect("a live Socket Mode connection");
        tx.send(command).expect("the connection takes commands");
    }

    /// Sends `payload` as an `interactive` envelope on the live connection, as Slack
    /// does: `accepts_response_payload` only for `view_submission`. Returns its
    /// `envelope_id`.
    pub fn interactive(&self, payload: &Value) -> String {
        let id = {
            let mut inner = self.shared.inner.lock().unwrap();
            inner.next_envelope += 1;
            format!("e0{:08}-standin", inner.next_envelope)
        };
        let accepts = payload["type"] == "view_submission";
        let envelope = json!({
            "envelope_id": id,
            "payload": payload,
            "type": "interactive",
            "accepts_response_payload": accepts,
            "retry_attempt": 0,
            "retry_reason": ""
        });
        self.command(Command::Send(envelope.to_string()));
        id
    }

    /// Sends `disconnect` with `reason` (e.g. `refresh_requested`, `warning`).
    pub fn disconnect(&self, reason: &str) {
        let envelope = json!({"type": "disconnect", "reason": reason, "debug_info": {"host": "applink-standin"}});
        self.command(Command::Send(envelope.to_string()));
    }

    /// Drops the live socket without a close frame (a network failure).
    pub fn drop_connection(&self) {
        self.command(Command::Drop);
    }

    /// The live socket goes silent but stays open: nothing is read or sent on it any
    /// more, pings included (a network path lost without a FIN).
    pub fn freeze(&self) {
        self.command(Command::Freeze);
    }

    /// Every acknowledgement received, in arrival order.
    pub fn acks(&self) -> Vec<Value> {
        self.shared.inner.lock().unwrap().acks.clone()
    }

    /// Waits for the acknowledgement of `envelope_id`; panics if it comes twice.
    pub async fn ack(&self, envelope_id: &str) -> Value {
        eventually(&format!("the ack of {envelope_id}"), WAIT, || async {
            let acks: Vec<Value> = self
                .acks()
                .into_iter()
                .filter(|a| a["envelope_id"] == envelope_id)
                .collect();
            match acks.as_slice() {
                [one] => Ok(one.clone()),
                [] => Err("no ack yet".to_string()),
                many => panic!("{envelope_id} acked {} times: {many:?}", many.len()),
            }
        })
        .await
    }
}

/// `apps.connections.open`, as Slack answers it.
fn open(shared: &Shared, headers: &HeaderMap) -> Value {
    let authorised = crate::support::slack::bearer_is(headers, &shared.token);
    let mut inner = shared.inner.lock().unwrap();
    if !authorised {
        inner.opens.push((Instant::now(), "invalid_auth".into()));
        return json!({"ok": false, "error": "invalid_auth"});
    }
    inner.next_ticket += 1;
    let ticket = format!("ticket-{:04}", inner.next_ticket);
    inner.tickets.insert(ticket.clone());
    inner.opens.push((Instant::now(), "ok".into()));
    json!({"ok": true, "url": format!("ws://{}/link/?ticket={ticket}&app_id=A0TEST001", shared.ws_addr)})
}

/// One WebSocket connection: a one-time ticket, `hello`, then commands and acks.
async fn serve_connection(shared: Arc<Shared>, stream: tokio::net::TcpStream) {
    // The signature is tungstenite's handshake callback's.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, res: Response| -> Result<Response, ErrorResponse> {
        let ticket = req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .find_map(|kv| kv.strip_prefix("ticket="))
            .unwrap_or_default()
            .to_string();
        if shared.inner.lock().unwrap().tickets.remove(&ticket) {
            Ok(res)
        } else {
            let mut refused = ErrorResponse::new(Some("invalid ticket".into()));
            *refused.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::UNAUTHORIZED;
            Err(refused)
        }
    };
    let Ok(socket) = tokio_tungstenite::accept_hdr_async(stream, check).await else {
        return;
    };
    let (mut sink, mut stream) = socket.split();
    let (tx, mut commands) = mpsc::unbounded_channel();
    let number = {
        let mut inner = shared.inner.lock().unwrap();
        inner.connections += 1;
        inner.pings.push(0);
        let number = inner.connections;
        inner.current = Some((number, tx));
        number
    };
    let hello = json!({
        "type": "hello",
        "num_connections": 1,
        "debug_info": {"host": "applink-standin", "build_number": 1, "approximate_connection_time": 18060},
        "connection_info": {"app_id": "A0TEST001"}
    });
    let mut frozen = false;
    if sink.send(Message::text(hello.to_string())).await.is_ok() {
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Send(text)) => {
                        if sink.send(Message::text(text)).await.is_err() {
                            break;
                        }
                    }
                    Some(Command::Freeze) => frozen = true,
                    // Dropping both halves closes the TCP connection, no close frame.
                    Some(Command::Drop) | None => break,
                },
                // Not reading also means not answering pings.
                message = stream.next(), if !frozen => match message {
                    Some(Ok(Message::Text(text))) => {
                        if let Ok(v) = serde_json::from_str::<Value>(text.as_str())
                            && v.get("envelope_id").is_some()
                        {
                            shared.inner.lock().unwrap().acks.push(v);
                        }
                    }
                    Some(Ok(Message::Ping(_))) => {
                        // tungstenite answers it; count it.
                        shared.inner.lock().unwrap().pings[number - 1] += 1;
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
            }
        }
    }
    let mut inner = shared.inner.lock().unwrap();
    if inner.current.as_ref().map(|c| c.0) == Some(number) {
        inner.current = None;
    }
}
