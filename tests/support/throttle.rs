//! AWS throttling, made to happen on demand: an HTTP proxy on `127.0.0.1:0` in front of
//! moto (which never throttles) for a client's AWS calls.
//!
//! It forwards every request to moto as it came and hands moto's answer back, except
//! that after [`Throttle::refuse_first`]`(k)`, the first `k` attempts of each Step
//! Functions API (awsJson1_0, named by its `X-Amz-Target: AWSStepFunctions.<Api>`
//! header) get Step Functions' own throttling answer (HTTP 400,
//! `com.amazonaws.swf.base.model#ThrottlingException`, "Rate exceeded") and never reach
//! moto, so a refused call had no effect and a retry of it is safe: a burst of
//! throttling on every API the client uses, deterministic, that ends (as real
//! throttling does once the caller slows down). Everything else (SQS, IAM, Identity
//! Center, later Step Functions attempts) passes through untouched.
//!
//! Traffic only goes from 127.0.0.1 to moto on 127.0.0.1.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

/// Step Functions' answer to a call over the account's rate.
pub const THROTTLED_BODY: &str =
    r#"{"__type":"com.amazonaws.swf.base.model#ThrottlingException","message":"Rate exceeded"}"#;

#[derive(Default)]
struct Inner {
    refuse_first: usize,
    /// Per Step Functions API: attempts seen since [`Throttle::refuse_first`].
    seen: HashMap<String, usize>,
    /// Per Step Functions API: attempts answered with a throttling error.
    refused: HashMap<String, usize>,
    /// Per Step Functions API: attempts moto answered with a 2xx.
    succeeded: HashMap<String, usize>,
}

#[derive(Clone)]
struct Shared {
    moto: String,
    http: reqwest::Client,
    inner: Arc<Mutex<Inner>>,
}

pub struct Throttle {
    /// `http://127.0.0.1:PORT`, for a client's `endpoint_url`.
    pub endpoint: String,
    shared: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl Throttle {
    /// A proxy to moto at `moto` (`http://127.0.0.1:PORT`), on the current test's
    /// runtime, refusing nothing until [`Throttle::refuse_every`].
    pub async fn start(moto: &str) -> Throttle {
        assert!(
            moto.starts_with("http://127.0.0.1:"),
            "only a loopback moto: {moto}"
        );
        let shared = Shared {
            moto: moto.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            inner: Arc::default(),
        };
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the throttling proxy");
        let addr = listener.local_addr().expect("proxy address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Throttle {
            endpoint: format!("http://{addr}"),
            shared,
            server,
        }
    }

    /// From now on, refuse the first `k` attempts of each Step Functions API (counted
    /// afresh); `0` refuses nothing.
    pub fn refuse_first(&self, k: usize) {
        let mut inner = self.shared.inner.lock().unwrap();
        inner.refuse_first = k;
        inner.seen.clear();
    }

    /// Step Functions attempts refused so far, all APIs.
    pub fn refused(&self) -> usize {
        self.shared.inner.lock().unwrap().refused.values().sum()
    }

    /// Per Step Functions API: attempts refused so far.
    pub fn refused_by_api(&self) -> HashMap<String, usize> {
        self.shared.inner.lock().unwrap().refused.clone()
    }

    /// Per Step Functions API: attempts moto answered with a 2xx so far.
    pub fn succeeded_by_api(&self) -> HashMap<String, usize> {
        self.shared.inner.lock().unwrap().succeeded.clone()
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The Step Functions API a request calls, if it is one.
fn sfn_api(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-amz-target")?
        .to_str()
        .ok()?
        .strip_prefix("AWSStepFunctions.")
        .map(str::to_owned)
}

async fn handle(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let api = sfn_api(&headers);
    if let Some(api) = &api {
        let mut inner = shared.inner.lock().unwrap();
        let first = inner.refuse_first;
        let seen = inner.seen.entry(api.clone()).or_default();
        *seen += 1;
        if *seen <= first {
            *inner.refused.entry(api.clone()).or_default() += 1;
            return (
                StatusCode::BAD_REQUEST,
                [(header::CONTENT_TYPE, "application/x-amz-json-1.0")],
                THROTTLED_BODY,
            )
                .into_response();
        }
    }
    let response = forward(&shared, &method, &uri, &headers, body).await;
    if let Some(api) = api
        && response.status().is_success()
    {
        *shared
            .inner
            .lock()
            .unwrap()
            .succeeded
            .entry(api)
            .or_default() += 1;
    }
    response
}

/// The request, as it came, to moto; moto's answer as it came.
async fn forward(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
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
    let answer = match request.send().await {
        Ok(answer) => answer,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    let Ok(body) = answer.bytes().await else {
        return (StatusCode::BAD_GATEWAY, "cannot read moto's answer").into_response();
    };
    let mut response = (status, body).into_response();
    if let Some(ct) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    response
}
