//! What every loop reports: Prometheus [`metrics`], and the [`probes`] that serve them
//! with `/healthz` and `/readyz`.
pub mod metrics;
pub mod probes;
