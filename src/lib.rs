//! aws-jit: just-in-time, time-bound, approved admin access to AWS, as a Kubernetes operator.
//!
//! Data flows one way: AccessRequest → reconcile → Step Functions → queues → status.

pub mod alerts;
pub mod arn;
pub mod authority;
pub mod authorize;
pub mod contract;
pub mod controller;
pub mod crd;
pub mod decide;
pub mod drain;
pub mod faults;
pub mod interactions;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod probes;
pub mod relay;
pub mod request_queue;
pub mod session;
pub mod sfn;
pub mod sweeper;
pub mod tokens;
pub mod trust_policy;
pub mod worker;

/// kube, the AWS SDK and slack-morphism pull in two rustls crypto providers (ring and
/// aws-lc-rs); with both present none is chosen and the first TLS call panics. Call
/// this first thing in `main` and in test setup. Installing twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
