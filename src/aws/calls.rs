//! The operator's AWS clients ([`Clients`] builds them all), and what every one of them
//! carries:
//! - `aws_jit_aws_calls_total{service, api}`: every attempt of every AWS call, retries
//!   included (what AWS rate-limits), counted by one interceptor ([`CallCounter`]).
//! - Honouring AWS throttling: the SDK's standard retry mode ([`retry_config`]): a
//!   throttled call is tried up to [`MAX_ATTEMPTS`] times with exponential back-off and
//!   jitter, drawing on a retry quota that throttling drains (so a throttling storm
//!   stops adding retries); what still fails goes back to the controller as transient,
//!   and the request backs off on its own (at least
//!   [`THROTTLED_FLOOR`](crate::aws::retry::THROTTLED_FLOOR)). Not the adaptive mode:
//!   its client-side limiter, after a single throttle at low traffic, holds every call
//!   to the service (revokes included) for 10-20 s. Each client has a retry partition
//!   of its own, so one `Clients`' quota never drains another's.
//! - A bound on in-flight calls ([`InFlight`]): at most `max` HTTP requests to Step
//!   Functions, IAM and Identity Center at once, shared by all of them (one semaphore
//!   around the SDK's own HTTPS client). A permit is held only while a request is on
//!   the wire (until its response head arrives), never during the SDK's back-off
//!   sleeps. SQS is outside the bound: its `ReceiveMessage` long-polls (20 s) would
//!   hold permits the other calls need, and the queue consumers are few and bounded
//!   by themselves.
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_smithy_runtime::client::retries::RetryPartition;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::behavior_version::BehaviorVersion;
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, Metadata};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::{
    RuntimeComponents, RuntimeComponentsBuilder,
};
use aws_smithy_runtime_api::client::runtime_plugin::RuntimePlugin;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::retry::RetryConfig;
use tokio::sync::Semaphore;

use crate::telemetry::metrics::Metrics;

/// Counts each attempt, by the operation's service and name as the SDK knows them
/// (`SFN`/`DescribeExecution`, `SQS`/`ReceiveMessage`, …).
#[derive(Debug, Clone)]
pub struct CallCounter {
    metrics: Arc<Metrics>,
}

impl CallCounter {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "aws-jit-call-counter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(op) = cfg.load::<Metadata>() {
            self.metrics.aws_call(op.service(), op.name());
        }
        Ok(())
    }
}

/// How many times the SDK tries one call before its error comes back (the first try
/// included).
pub const MAX_ATTEMPTS: u32 = 5;

/// The default bound on the operator's in-flight AWS calls (`--aws-max-in-flight`).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 32;

/// The retry policy of every client of the operator: standard mode, [`MAX_ATTEMPTS`]
/// tries, back-off from up to 100 ms doubling to up to 20 s (with full jitter).
pub fn retry_config() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(MAX_ATTEMPTS)
        .with_initial_backoff(Duration::from_millis(100))
        .with_max_backoff(Duration::from_secs(20))
}

/// A retry partition of its own for one service of one [`Clients`]: its retry token
/// bucket belongs to these clients only (the SDK's default
/// partition is one per service for the whole process).
fn partition(service: &'static str) -> RetryPartition {
    RetryPartition::custom(Cow::Borrowed(service)).build()
}

/// The bound on in-flight calls: at most `max` requests on the wire at once through
/// every HTTP client made by [`InFlight::wrap`] on it.
#[derive(Clone, Debug)]
pub struct InFlight {
    permits: Arc<Semaphore>,
    max: usize,
    /// Requests on the wire now, and the most there ever were (for tests and debugging).
    now: Arc<AtomicUsize>,
    high_water: Arc<AtomicUsize>,
}

impl InFlight {
    /// At most `max` at once (at least one).
    pub fn new(max: usize) -> InFlight {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        InFlight {
            permits: Arc::new(Semaphore::new(max)),
            max,
            now: Arc::default(),
            high_water: Arc::default(),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// The most requests that were ever on the wire at once.
    pub fn high_water(&self) -> usize {
        self.high_water.load(Ordering::SeqCst)
    }

    /// `inner`, with each request it sends waiting for a permit first.
    pub fn wrap(&self, inner: SharedHttpClient) -> SharedHttpClient {
        SharedHttpClient::new(Bounded {
            inner,
            bound: self.clone(),
        })
    }
}

/// An HTTP client whose requests go through an [`InFlight`] bound.
#[derive(Debug)]
struct Bounded<T> {
    inner: T,
    bound: InFlight,
}

impl HttpClient for Bounded<SharedHttpClient> {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(Bounded {
            inner: self.inner.http_connector(settings, components),
            bound: self.bound.clone(),
        })
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        self.inner.connector_metadata()
    }

    // `validate_*` keep their defaults: the inner client's own checks are out of reach
    // behind `SharedHttpClient`, and the SDK's default client only uses them to load the
    // native certificates early (they load on the first request instead).
}

impl HttpConnector for Bounded<SharedHttpConnector> {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let inner = self.inner.clone();
        let bound = self.bound.clone();
        HttpConnectorFuture::new(async move {
            // The semaphore is never closed; if it were, the call fails as a transport
            // error rather than going out unbounded.
            let _permit = bound
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| ConnectorError::other(Box::new(e), None))?;
            let now = bound.now.fetch_add(1, Ordering::SeqCst) + 1;
            bound.high_water.fetch_max(now, Ordering::SeqCst);
            let _on_the_wire = Leaving(&bound.now);
            inner.call(request).await
        })
    }
}

/// Counts a request off the wire when it ends, however it ends (answered, failed, or
/// its future dropped by a timeout).
struct Leaving<'a>(&'a AtomicUsize);

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The HTTP client the SDK would use for `aws`: the one it names, or else the SDK's own
/// default HTTPS client for its behavior version.
fn base_http_client(aws: &aws_config::SdkConfig) -> Option<SharedHttpClient> {
    if let Some(client) = aws.http_client() {
        return Some(client);
    }
    let version = aws.behavior_version().unwrap_or(BehaviorVersion::latest());
    aws_smithy_runtime::client::defaults::default_http_client_plugin_v2(version)?
        .runtime_components(&RuntimeComponentsBuilder::new("aws-jit"))
        .http_client()
}

/// The operator's AWS clients, one per service, each counting its calls, retrying in
/// standard mode with more attempts, and (all but SQS) sharing one bound on in-flight calls.
#[derive(Clone, Debug)]
pub struct Clients {
    pub sfn: aws_sdk_sfn::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub iam: aws_sdk_iam::Client,
    pub sso: aws_sdk_ssoadmin::Client,
    pub store: aws_sdk_identitystore::Client,
    /// The bound the clients but SQS share.
    pub in_flight: InFlight,
}

impl Clients {
    /// The clients with at most `max_in_flight` calls to Step Functions, IAM and
    /// Identity Center on the wire at once.
    pub fn new(aws: &aws_config::SdkConfig, metrics: Arc<Metrics>, max_in_flight: usize) -> Self {
        let counter = CallCounter::new(metrics);
        let in_flight = InFlight::new(max_in_flight);
        let bounded = base_http_client(aws).map(|c| in_flight.wrap(c));
        if bounded.is_none() {
            tracing::warn!("no default HTTPS client: the operator's AWS calls are not bounded");
        }
        let bounded = bounded.as_ref();
        Self {
            sfn: aws_sdk_sfn::Client::from_conf({
                let mut b = aws_sdk_sfn::config::Builder::from(aws)
                    .interceptor(counter.clone())
                    .retry_config(retry_config())
                    .retry_partition(partition("aws-jit-sfn"));
                b.set_http_client(bounded.cloned());
                b.build()
            }),
            sqs: aws_sdk_sqs::Client::from_conf(
                aws_sdk_sqs::config::Builder::from(aws)
                    .interceptor(counter.clone())
                    .retry_config(retry_config())
                    .retry_partition(partition("aws-jit-sqs"))
                    .build(),
            ),
            iam: aws_sdk_iam::Client::from_conf({
                let mut b = aws_sdk_iam::config::Builder::from(aws)
                    .interceptor(counter.clone())
                    .retry_config(retry_config())
                    .retry_partition(partition("aws-jit-iam"));
                b.set_http_client(bounded.cloned());
                b.build()
            }),
            sso: aws_sdk_ssoadmin::Client::from_conf({
                let mut b = aws_sdk_ssoadmin::config::Builder::from(aws)
                    .interceptor(counter.clone())
                    .retry_config(retry_config())
                    .retry_partition(partition("aws-jit-sso-admin"));
                b.set_http_client(bounded.cloned());
                b.build()
            }),
            store: aws_sdk_identitystore::Client::from_conf({
                let mut b = aws_sdk_identitystore::config::Builder::from(aws)
                    .interceptor(counter)
                    .retry_config(retry_config())
                    .retry_partition(partition("aws-jit-identitystore"));
                b.set_http_client(bounded.cloned());
                b.build()
            }),
            in_flight,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::sfn::{StepFunctionClient, TaskAnswer};

    /// A stand-in for Step Functions on 127.0.0.1 that holds every request until the
    /// gate opens, and measures how many it holds at once.
    #[derive(Clone, Default)]
    struct Stub {
        now: Arc<AtomicUsize>,
        high_water: Arc<AtomicUsize>,
        gate: Arc<tokio::sync::Notify>,
        open: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Stub {
        async fn serve(&self) -> String {
            let stub = self.clone();
            let app = axum::Router::new().fallback(move || {
                let stub = stub.clone();
                async move {
                    let now = stub.now.fetch_add(1, Ordering::SeqCst) + 1;
                    stub.high_water.fetch_max(now, Ordering::SeqCst);
                    loop {
                        let opened = stub.gate.notified();
                        if stub.open.load(Ordering::SeqCst) {
                            break;
                        }
                        opened.await;
                    }
                    stub.now.fetch_sub(1, Ordering::SeqCst);
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/x-amz-json-1.0",
                        )],
                        "{}",
                    )
                }
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind the stub");
            let addr = listener.local_addr().expect("stub address");
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            format!("http://{addr}")
        }

        fn open(&self) {
            self.open.store(true, Ordering::SeqCst);
            self.gate.notify_waiters();
        }
    }

    fn sdk(endpoint: &str) -> aws_config::SdkConfig {
        use aws_sdk_sfn::config::{Credentials, Region, SharedCredentialsProvider};
        aws_config::SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "AKIDTEST", "secret", None, None, "test",
            )))
            .endpoint_url(endpoint)
            .build()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_calls_than_the_bound_are_ever_on_the_wire() {
        crate::install_crypto_provider();
        const MAX: usize = 4;
        const CALLS: usize = 3 * MAX;
        let stub = Stub::default();
        let endpoint = stub.serve().await;
        let clients = Clients::new(&sdk(&endpoint), Arc::new(Metrics::new()), MAX);
        let sfn = StepFunctionClient::new(
            clients.sfn.clone(),
            "arn:aws:states:us-east-1:123456789012:stateMachine:m",
        );
        let calls: Vec<_> = (0..CALLS)
            .map(|i| {
                let sfn = sfn.clone();
                tokio::spawn(async move { sfn.heartbeat(&format!("token-{i}")).await })
            })
            .collect();
        // The bound's worth of calls reach the stub and wait there; the others wait for
        // a permit (were there no bound, all of them would be at the stub by now).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while stub.now.load(Ordering::SeqCst) < MAX {
            assert!(
                std::time::Instant::now() < deadline,
                "only {} calls reached the stub",
                stub.now.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stub.open();
        for call in calls {
            let answer = call.await.expect("the call's task");
            assert!(matches!(answer, Ok(TaskAnswer::Delivered)), "{answer:?}");
        }
        assert_eq!(stub.high_water.load(Ordering::SeqCst), MAX);
        assert_eq!(clients.in_flight.high_water(), MAX);
        assert_eq!(clients.in_flight.max(), MAX);
    }

    #[test]
    fn every_client_retries_in_standard_mode_with_more_attempts() {
        crate::install_crypto_provider();
        let clients = Clients::new(
            &sdk("http://127.0.0.1:9"),
            Arc::new(Metrics::new()),
            DEFAULT_MAX_IN_FLIGHT,
        );
        for retry in [
            clients.sfn.config().retry_config(),
            clients.sqs.config().retry_config(),
            clients.iam.config().retry_config(),
            clients.sso.config().retry_config(),
            clients.store.config().retry_config(),
        ] {
            let retry = retry.expect("a retry config");
            assert_eq!(retry.mode(), aws_smithy_types::retry::RetryMode::Standard);
            assert_eq!(retry.max_attempts(), MAX_ATTEMPTS);
        }
        // The bound wraps the SDK's own HTTPS client, which exists.
        assert!(base_http_client(&sdk("http://127.0.0.1:9")).is_some());
        assert!(clients.sfn.config().http_client().is_some());
        assert!(
            clients.sqs.config().http_client().is_none(),
            "SQS unbounded"
        );
    }

    #[test]
    fn a_bound_has_at_least_one_permit() {
        assert_eq!(InFlight::new(0).max(), 1);
        assert_eq!(InFlight::new(7).max(), 7);
    }
}
