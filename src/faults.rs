//! Named crash points for tests. A test arms a point on one operator instance; when
//! the operator reaches it, it stops there for good (the future never completes), as
//! if the process had died at that instant. The test then aborts that operator and
//! starts a fresh one, which must finish the work: no duplicate executions, no lost
//! approvals, nothing granted past its expiry. In production no point is ever armed
//! and a check is one uncontended lock.
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Where the operator can be stopped.
pub mod points {
    /// The reconciler started the execution but has not written status.
    pub const AFTER_START_EXECUTION: &str = "after-start-execution";
    /// The reconciler recorded an approval (`approving`) but has not answered the task.
    pub const BEFORE_APPROVAL_ANSWERED: &str = "before-approval-answered";
    /// The reconciler answered the approval task but has not recorded that it did.
    pub const AFTER_APPROVAL_ANSWERED: &str = "after-approval-answered";
    /// The consumer stored a task token but has not deleted the message.
    pub const AFTER_TOKEN_STORED: &str = "after-token-stored";
    /// The worker changed the trust policy but has not answered the grant task.
    pub const AFTER_GRANT: &str = "after-grant";
    /// The worker received a revoke task but has not changed the trust policy.
    pub const BEFORE_REVOKE: &str = "before-revoke";
}

#[derive(Clone, Debug, Default)]
pub struct Faults {
    armed: Arc<Mutex<HashSet<&'static str>>>,
    hit: Arc<Mutex<HashSet<&'static str>>>,
}

impl Faults {
    pub fn arm(&self, point: &'static str) {
        if let Ok(mut a) = self.armed.lock() {
            a.insert(point);
        }
    }

    /// Whether the operator has stopped at `point`.
    pub fn was_hit(&self, point: &'static str) -> bool {
        self.hit.lock().map(|h| h.contains(point)).unwrap_or(false)
    }

    /// Stops here forever if `point` is armed.
    pub async fn point(&self, point: &'static str) {
        let armed = self
            .armed
            .lock()
            .map(|a| a.contains(point))
            .unwrap_or(false);
        if armed {
            tracing::warn!(
                point,
                "fault point reached: stopping here as if the process died"
            );
            if let Ok(mut h) = self.hit.lock() {
                h.insert(point);
            }
            std::future::pending::<()>().await;
        }
    }
}
