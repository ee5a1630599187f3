//! IAM's eventual consistency, made to happen on demand: an HTTP proxy on `127.0.0.1:0`
//! in front of moto (which is always consistent) for IAM clients only.
//!
//! It forwards every request to moto as it came and hands moto's answer back, except:
//! after each successful `UpdateAssumeRolePolicy` of a role, the next
//! [`StaleIam::set_stale_reads`] `GetRole` calls for that role are answered with the
//! `GetRole` response the role had just before the write (the proxy reads it from moto
//! itself, right before it forwards the write), as a real IAM read served by a replica
//! the write has not reached yet would be. The count starts again at every write: a
//! second write within the window makes the reads return the state between the two
//! writes. `set_stale_reads(0)` (the default) makes it a plain proxy; `usize::MAX` makes
//! every later read stale until the count is lowered (which applies to the reads still
//! owed, too).
//!
//! Only IAM's query protocol is understood (form-encoded `Action=...&RoleName=...`, in the
//! body as the AWS SDK sends it, or in the query string); anything else passes through.
//! Traffic only goes from 127.0.0.1 to moto on 127.0.0.1.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

/// A response as moto gave it.
#[derive(Clone, Debug)]
struct Recorded {
    status: StatusCode,
    content_type: Option<header::HeaderValue>,
    body: Bytes,
}

impl IntoResponse for Recorded {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body).into_response();
        if let Some(ct) = self.content_type {
            response.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        response
    }
}

/// The stale reads owed for one role.
#[derive(Debug)]
struct Window {
    /// `GetRole` as it answered right before the last write.
    before: Recorded,
    remaining: usize,
}

#[derive(Default)]
struct Inner {
    /// Refuse every IAM write to roles (`AccessDenied`), as an SCP or a permissions
    /// boundary changed under the operator would.
    refuse_role_writes: bool,
    /// Writes refused so far.
    refused: usize,
    stale_reads: usize,
    windows: HashMap<String, Window>,
    /// Per role: successful `UpdateAssumeRolePolicy` calls forwarded.
    writes: HashMap<String, usize>,
    /// Per role: `GetRole` calls answered from before the last write.
    stale_served: HashMap<String, usize>,
    /// Per role: `GetRole` calls answered by moto.
    fresh_served: HashMap<String, usize>,
}

#[derive(Clone)]
struct Shared {
    moto: String,
    http: reqwest::Client,
    inner: Arc<Mutex<Inner>>,
    /// Writes go one at a time, so "the state before the write" is well defined.
    writing: Arc<tokio::sync::Mutex<()>>,
}

pub struct StaleIam {
    /// `http://127.0.0.1:PORT`, for an IAM client's `endpoint_url`.
    pub endpoint: String,
    shared: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl StaleIam {
    /// A proxy to moto at `moto` (`http://127.0.0.1:PORT`), on the current test's runtime,
    /// with no stale reads until [`StaleIam::set_stale_reads`].
    pub async fn start(moto: &str) -> StaleIam {
        assert!(
            moto.starts_with("http://127.0.0.1:"),
            "only a loopback moto: {moto}"
        );
        let shared = Shared {
            moto: moto.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            inner: Arc::default(),
            writing: Arc::default(),
        };
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stale-IAM proxy");
        let addr = listener.local_addr().expect("proxy address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        StaleIam {
            endpoint: format!("http://{addr}"),
            shared,
            server,
        }
    }

    /// After each later write of a role's trust policy, the next `n` `GetRole` calls for
    /// it answer from before the write. Also caps the reads still owed at `n`.
    pub fn set_stale_reads(&self, n: usize) {
        let mut inner = self.shared.inner.lock().unwrap();
        inner.stale_reads = n;
        for window in inner.windows.values_mut() {
            window.remaining = window.remaining.min(n);
        }
    }

    /// While `on`, every `PutRolePolicy`, `DeleteRolePolicy` and `UpdateAssumeRolePolicy`
    /// through the proxy is answered `AccessDenied` (403), and nothing reaches moto.
    pub fn refuse_role_writes(&self, on: bool) {
        self.shared.inner.lock().unwrap().refuse_role_writes = on;
    }

    /// Role writes refused so far.
    pub fn refused(&self) -> usize {
        self.shared.inner.lock().unwrap().refused
    }

    /// An IAM client of `sdk` (as the operator builds one) that goes through this proxy.
    pub fn iam_client(&self, sdk: &aws_config::SdkConfig) -> aws_sdk_iam::Client {
        aws_sdk_iam::Client::from_conf(
            aws_sdk_iam::config::Builder::from(sdk)
                .endpoint_url(&self.endpoint)
                .build(),
        )
    }

    /// Successful `UpdateAssumeRolePolicy` calls of `role` that went through.
    pub fn writes(&self, role: &str) -> usize {
        count(&self.shared.inner.lock().unwrap().writes, role)
    }

    /// `GetRole` calls of `role` answered with a response from before the last write.
    pub fn stale_served(&self, role: &str) -> usize {
        count(&self.shared.inner.lock().unwrap().stale_served, role)
    }

    /// `GetRole` calls of `role` answered by moto as it is.
    pub fn fresh_served(&self, role: &str) -> usize {
        count(&self.shared.inner.lock().unwrap().fresh_served, role)
    }
}

impl Drop for StaleIam {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn count(map: &HashMap<String, usize>, role: &str) -> usize {
    map.get(role).copied().unwrap_or(0)
}

async fn handle(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut params = form(uri.query().unwrap_or_default().as_bytes());
    params.extend(form(&body));
    let action = params.get("Action").cloned().unwrap_or_default();
    let role = params.get("RoleName").cloned();
    if matches!(
        action.as_str(),
        "PutRolePolicy" | "DeleteRolePolicy" | "UpdateAssumeRolePolicy"
    ) {
        let mut inner = shared.inner.lock().unwrap();
        if inner.refuse_role_writes {
            inner.refused += 1;
            return access_denied(&action).into_response();
        }
    }
    match (action.as_str(), role) {
        ("GetRole", Some(role)) => {
            if let Some(stale) = stale_read(&shared, &role) {
                return stale.into_response();
            }
            let answer = forward(&shared, &method, &uri, &headers, body).await;
            if answer.status.is_success() {
                *shared
                    .inner
                    .lock()
                    .unwrap()
                    .fresh_served
                    .entry(role)
                    .or_default() += 1;
            }
            answer.into_response()
        }
        ("UpdateAssumeRolePolicy", Some(role)) => {
            let _one_at_a_time = shared.writing.lock().await;
            let before = get_role(&shared, &headers, &role).await;
            let answer = forward(&shared, &method, &uri, &headers, body).await;
            if answer.status.is_success() {
                let mut inner = shared.inner.lock().unwrap();
                *inner.writes.entry(role.clone()).or_default() += 1;
                let remaining = inner.stale_reads;
                match before {
                    Some(before) if remaining > 0 => {
                        inner.windows.insert(role, Window { before, remaining });
                    }
                    _ => {
                        inner.windows.remove(&role);
                    }
                }
            }
            answer.into_response()
        }
        _ => forward(&shared, &method, &uri, &headers, body)
            .await
            .into_response(),
    }
}

/// The stale answer owed to this `GetRole`, if any (and one fewer owed).
fn stale_read(shared: &Shared, role: &str) -> Option<Recorded> {
    let mut inner = shared.inner.lock().unwrap();
    let window = inner.windows.get_mut(role)?;
    if window.remaining == 0 {
        inner.windows.remove(role);
        return None;
    }
    window.remaining -= 1;
    let stale = window.before.clone();
    if window.remaining == 0 {
        inner.windows.remove(role);
    }
    *inner.stale_served.entry(role.to_string()).or_default() += 1;
    Some(stale)
}

/// `GetRole` of `role` from moto, as the caller's credentials (moto reads only the
/// access key from them), or `None` if moto did not answer 200.
async fn get_role(shared: &Shared, headers: &HeaderMap, role: &str) -> Option<Recorded> {
    let body: String = form_urlencoded(&[
        ("Action", "GetRole"),
        ("Version", "2010-05-08"),
        ("RoleName", role),
    ]);
    let mut request = shared
        .http
        .post(format!("{}/", shared.moto))
        .header(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .body(body);
    for name in [header::AUTHORIZATION.as_str(), "x-amz-date"] {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value);
        }
    }
    let response = request.send().await.ok()?;
    let recorded = record(response).await?;
    recorded.status.is_success().then_some(recorded)
}

/// The request, as it came, to moto.
async fn forward(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Recorded {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut request = shared
        .http
        .request(method.clone(), format!("{}{path}", shared.moto))
        .body(body);
    for (name, value) in headers {
        // reqwest sets these for the new connection.
        if [
            header::HOST,
            header::CONTENT_LENGTH,
            header::CONNECTION,
            header::TRANSFER_ENCODING,
        ]
        .contains(name)
        {
            continue;
        }
        request = request.header(name, value);
    }
    match request.send().await {
        Ok(response) => record(response)
            .await
            .unwrap_or_else(|| bad_gateway("cannot read moto's answer")),
        Err(e) => bad_gateway(e.to_string()),
    }
}

async fn record(response: reqwest::Response) -> Option<Recorded> {
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let body = response.bytes().await.ok()?;
    Some(Recorded {
        status,
        content_type,
        body,
    })
}

/// IAM's answer to a call the caller may not make (query protocol, XML).
fn access_denied(action: &str) -> Recorded {
    Recorded {
        status: StatusCode::FORBIDDEN,
        content_type: Some(header::HeaderValue::from_static("text/xml")),
        body: Bytes::from(format!(
            "<ErrorResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"><Error>\
             <Type>Sender</Type><Code>AccessDenied</Code><Message>User is not authorized to \
             perform: iam:{action} (refused by the test's proxy)</Message></Error>\
             <RequestId>stale-iam</RequestId></ErrorResponse>"
        )),
    }
}

fn bad_gateway(reason: impl Into<String>) -> Recorded {
    Recorded {
        status: StatusCode::BAD_GATEWAY,
        content_type: None,
        body: Bytes::from(reason.into()),
    }
}

/// The pairs of an `application/x-www-form-urlencoded` text (later keys win).
fn form(text: &[u8]) -> HashMap<String, String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    String::from_utf8_lossy(text)
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn form_urlencoded(pairs: &[(&str, &str)]) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, NON_ALPHANUMERIC),
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}
