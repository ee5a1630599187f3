//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager): of the
//! replicas of the controller, only the one holding the Lease reconciles and consumes
//! the queues; the others wait and take over when the Lease is free or expired.
//!
//! Correctness does not rest on the Lease: every step the operator takes is idempotent
//! or guarded (one execution per request by name, status written with the
//! resourceVersion it was computed from, task answers that tolerate "already over",
//! SQS messages deleted only after they were handled). So the short overlap a Lease
//! cannot exclude (a leader that has not noticed yet that it lost the Lease) costs
//! duplicate API calls, never a second grant or a lost approval. The Lease keeps two
//! replicas from doing all the work twice.
//!
//! A leader that loses the Lease, or cannot renew it, stops its loops and returns an
//! error: the process exits and starts over as a candidate, with nothing half-held.
//! On shutdown the leader stops its loops first, renewing the Lease meanwhile, then
//! releases it: the standby leads only once they have stopped, and without waiting for
//! the Lease to expire.
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tracing::{info, warn};

use crate::telemetry::metrics::Metrics;
use crate::telemetry::probes::Health;

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lost the Lease {lease} to another replica; stopped leading")]
    Lost { lease: String },
    #[error("cannot renew the Lease {lease}, so stopped leading: {source}")]
    Renew {
        lease: String,
        #[source]
        source: LeaseManagerError,
    },
    #[error("the work run under the Lease {lease} ended on its own")]
    WorkEnded { lease: String },
    #[error("invalid leader election settings: {0}")]
    Settings(String),
}

/// Which Lease, who we are, and how long a Lease lasts.
#[derive(Clone, Debug)]
pub struct Election {
    pub lease_name: String,
    pub namespace: String,
    /// Unique per replica: the pod name.
    pub identity: String,
    /// How long a Lease is valid without renewal: how long a dead leader blocks.
    pub lease_duration: Duration,
    /// How long before expiry the leader renews.
    pub renew_before: Duration,
}

impl Election {
    pub fn new(lease_name: &str, namespace: &str, identity: &str) -> Election {
        Election {
            lease_name: lease_name.to_string(),
            namespace: namespace.to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_before: Duration::from_secs(5),
        }
    }

    fn check(&self) -> Result<(u64, u64), LeaderError> {
        let duration = self.lease_duration.as_secs();
        let grace = self.renew_before.as_secs();
        if grace == 0 || duration <= grace {
            return Err(LeaderError::Settings(format!(
                "the Lease duration ({duration}s) must be longer than the renewal margin \
                 ({grace}s), and both whole seconds above zero"
            )));
        }
        if self.identity.trim().is_empty() {
            return Err(LeaderError::Settings("empty identity".into()));
        }
        Ok((duration, grace))
    }
}

/// The identity of this replica: `POD_NAME` when set (the chart sets it from the
/// downward API), else the host name plus the process id.
pub fn default_identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.trim().is_empty()
    {
        return pod.trim().to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "aws-jit".into());
    format!("{host}-{}", std::process::id())
}

const RETRY: Duration = Duration::from_secs(2);

/// Runs `work` while this replica holds the Lease; `work` gets a future that resolves
/// when it must stop, and must return once it has stopped.
///
/// Returns `Ok` after `shutdown` (work stopped, Lease released), or an error when the
/// Lease was lost or could not be renewed (work stopped). Marks `health` ready once the
/// Lease could be read (the API is reachable), and `metrics.leader` while leading.
pub async fn lead<W, F>(
    client: kube::Client,
    election: &Election,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
    work: W,
) -> Result<(), LeaderError>
where
    W: FnOnce(futures::future::BoxFuture<'static, ()>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let (duration, grace) = election.check()?;
    let lease = format!("{}/{}", election.namespace, election.lease_name);
    tokio::pin!(shutdown);

    let manager = loop {
        let built = LeaseManagerBuilder::new(client.clone(), &election.lease_name)
            .with_namespace(&election.namespace)
            .with_identity(&election.identity)
            .with_duration(duration)
            .with_grace(grace)
            .with_field_manager(format!("aws-jit-{}", election.identity))
            .build();
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            built = built => match built {
                Ok(m) => break m,
                Err(e) => {
                    warn!(%lease, error = %e, "cannot read or create the Lease; retrying");
                    if wait_or_shutdown(RETRY, &mut shutdown).await {
                        return Ok(());
                    }
                }
            },
        }
    };
    health.set_ready();
    info!(%lease, identity = %election.identity, "waiting to lead");

    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            changed = manager.changed() => match changed {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    warn!(%lease, error = %e, "leader election error; retrying");
                    if wait_or_shutdown(RETRY, &mut shutdown).await {
                        return Ok(());
                    }
                }
            },
        }
    }

    info!(%lease, identity = %election.identity, "leading: reconciling and consuming queues");
    metrics.leader.set(1);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop = Box::pin(async move {
        let mut rx = stop_rx;
        let _ = rx.wait_for(|s| *s).await;
    });
    let mut running = tokio::spawn(work(stop));
    let ended = tokio::select! {
        _ = &mut shutdown => Ok(()),
        lost = keep(&manager, &lease) => Err(lost),
        _ = &mut running => Err(LeaderError::WorkEnded { lease: lease.clone() }),
    };
    let _ = stop_tx.send(true);
    if !running.is_finished() {
        let stopped = match &ended {
            // Shutting down: the Lease is renewed until the loops have stopped. They
            // take up to a long poll (20 s), longer than the Lease lasts (15 s): left
            // unrenewed, it expired and the standby led while they still ran.
            Ok(()) => tokio::select! {
                stopped = &mut running => stopped,
                lost = keep(&manager, &lease) => {
                    warn!(%lease, error = %lost, "the Lease ended while the loops were stopping; stopping them at once");
                    running.abort();
                    (&mut running).await
                }
            },
            Err(_) => (&mut running).await,
        };
        if let Err(e) = stopped
            && !e.is_cancelled()
        {
            warn!(%lease, error = %e, "the operator's loops ended abnormally");
        }
    }
    metrics.leader.set(0);
    // Only after every loop has stopped: the next leader never overlaps with us here.
    if let Err(e) = manager.release().await {
        warn!(%lease, error = %e, "cannot release the Lease; the next leader waits for it to expire");
    } else {
        info!(%lease, "released the Lease");
    }
    ended
}

/// Resolves when this replica stops being the leader.
async fn keep(manager: &LeaseManager, lease: &str) -> LeaderError {
    loop {
        match manager.changed().await {
            Ok(true) => continue,
            Ok(false) => {
                warn!(%lease, "lost the Lease");
                return LeaderError::Lost {
                    lease: lease.to_string(),
                };
            }
            Err(source) => {
                warn!(%lease, error = %source, "cannot renew the Lease");
                return LeaderError::Renew {
                    lease: lease.to_string(),
                    source,
                };
            }
        }
    }
}

/// Waits `d`; true when shutdown came first.
async fn wait_or_shutdown(
    d: Duration,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> bool {
    tokio::select! {
        _ = shutdown.as_mut() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_instead_of_panicking_in_the_library() {
        let mut e = Election::new("l", "ns", "me");
        assert!(e.check().is_ok());
        e.renew_before = e.lease_duration;
        assert!(matches!(e.check(), Err(LeaderError::Settings(_))));
        e.renew_before = Duration::from_millis(500);
        assert!(matches!(e.check(), Err(LeaderError::Settings(_))));
        let e = Election::new("l", "ns", " ");
        assert!(matches!(e.check(), Err(LeaderError::Settings(_))));
    }
}
