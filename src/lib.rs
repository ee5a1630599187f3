//! aws-jit: just-in-time, time-bound, approved admin access to AWS, as a Kubernetes operator.
//!
//! Data flows one way: AccessRequest → reconcile → Step Functions → queues → status.
//!
//! The house, floor by floor (`tests/layout.rs` checks who may use whom):
//! - [`crd`], [`contract`], [`faults`], [`cache`]: the resources, the state machine's
//!   messages, test crash points, the reflector caches and whole-list reads. They use
//!   nothing above them.
//! - [`policy`]: pure decisions. Besides the ground floor it uses only the pure rules of
//!   each grant method (`grant::*::rules`, the trust policy's `document` and `session`).
//! - [`telemetry`] (metrics, probes) and [`aws`] (Step Functions, the one SQS consumer
//!   loop, the one back-off policy, alerts, and the authority that checks every AWS
//!   message against Kubernetes with `policy`).
//! - [`grant`]: one folder per grant method (its pure rules beside its AWS I/O) behind
//!   one interface, and the drift sweeper.
//! - [`controller`] (reconcile, request queue, task tokens) and [`slack`] (relay,
//!   interactions): they never use each other.
//! - [`run`]: process wiring: the operator's loops together, leader election, drain.
//! - [`plugin`]: the `kubectl jit` plugin (people's tool): it uses only `crd`,
//!   `contract` and `policy` (the controller's own decisions of who may vote or revoke).

// Floors, from the ground up; a module imports only from floors below it.
pub mod cache;
pub mod contract;
pub mod crd;
pub mod faults;

pub mod aws;
pub mod policy;
pub mod telemetry;

pub mod grant;

pub mod controller;
pub mod slack;

pub mod run;

// Beside the operator, on the floors it may use (crd, contract, policy): the
// `kubectl jit` plugin, a client of the cluster and of STS as the person running it.
pub mod plugin;

/// kube, the AWS SDK and slack-morphism pull in two rustls crypto providers (ring and
/// aws-lc-rs); with both present none is chosen and the first TLS call panics. Call
/// this first thing in `main` and in test setup. Installing twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
