//! Security findings, sent by the operator to the alert queue so the relay posts them
//! to Slack loudly (with the configured failure mentions): a tampered execution, a
//! forged task refused, drift removed. Sending never fails the caller: a finding that
//! cannot be sent is logged (the Warning Event and the metric stand regardless).
//!
//! The alert queue is FIFO: findings share one message group, and the deduplication id
//! is derived from the finding, so the same finding reported again within SQS's
//! five-minute window (a sweep that finds the same drift, a redelivered forged task) is
//! posted once.
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::contract::{RequestIdentity, SecurityAlert};

/// The message group of every finding.
pub const GROUP: &str = "aws-jit-security";

/// Where findings go; without a queue URL they are only logged.
#[derive(Clone, Debug, Default)]
pub struct SecurityAlerts {
    target: Option<(aws_sdk_sqs::Client, String)>,
}

impl SecurityAlerts {
    pub fn new(sqs: aws_sdk_sqs::Client, alert_queue_url: Option<String>) -> Self {
        Self {
            target: alert_queue_url.map(|url| (sqs, url)),
        }
    }

    /// Reports nothing anywhere but the log.
    pub fn none() -> Self {
        Self::default()
    }

    pub async fn send(&self, kind: &str, request: Option<&RequestIdentity>, message: &str) {
        let Some((sqs, url)) = &self.target else {
            return;
        };
        let alert = SecurityAlert {
            event: SecurityAlert::EVENT.into(),
            kind: kind.into(),
            request: request.cloned(),
            message: crate::aws::sfn::truncate(message, 4000).to_owned(),
        };
        let body = match serde_json::to_string(&alert) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, kind, "cannot encode a security alert");
                return;
            }
        };
        let sent = sqs
            .send_message()
            .queue_url(url)
            .message_group_id(GROUP)
            .message_deduplication_id(dedup_id(&body))
            .message_body(body)
            .send()
            .await;
        if let Err(e) = sent {
            warn!(
                error = %aws_sdk_sqs::error::DisplayErrorContext(e),
                kind,
                "cannot send a security alert to Slack's queue; the Event and metric stand"
            );
        }
    }
}

/// The FIFO deduplication id of a finding: the same finding, the same id.
fn dedup_id(body: &str) -> String {
    Sha256::digest(body.as_bytes())
        .iter()
        .take(32)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_finding_has_the_same_id_and_fits_sqs() {
        let a = dedup_id(r#"{"kind":"DriftRemoved"}"#);
        assert_eq!(a, dedup_id(r#"{"kind":"DriftRemoved"}"#));
        assert_ne!(a, dedup_id(r#"{"kind":"ExecutionTampered"}"#));
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
