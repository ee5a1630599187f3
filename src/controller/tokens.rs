//! Task tokens, kept where no requester can read them: one Secret per request in the
//! operator's own namespace, whatever rights a requester holds in theirs. A task token
//! is a capability (whoever holds it can approve), so it never goes into the
//! AccessRequest, its status, an Event or a log line.
//!
//! The request-queue consumer writes tokens here; the reconciler reads them, answers
//! the tasks, and records that it did. The Secret's annotations name the request, so a
//! write wakes the reconciler of that request. The request's finalizer deletes it.
use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};

use crate::contract::RequestIdentity;

pub const MANAGED_BY: &str = "aws-jit";
pub const ANNOTATION_NAMESPACE: &str = "aws-jit.io/request-namespace";
pub const ANNOTATION_NAME: &str = "aws-jit.io/request-name";
pub const LABEL_UID: &str = "aws-jit.io/request-uid";

/// Keys of the Secret's data.
pub mod keys {
    pub const EXECUTION_ARN: &str = "execution-arn";
    pub const APPROVAL_TOKEN: &str = "approval-token";
    /// When the approval task was received plus the execution's own approval timeout
    /// (RFC 3339): the task's timeout has run out by then (the controller wakes then,
    /// not on a poll).
    pub const APPROVAL_DEADLINE: &str = "approval-deadline";
    /// `approved` or `denied`, once the approval task was answered.
    pub const APPROVAL_ANSWER: &str = "approval-answer";
    /// Who decided, for the status message: `carol, dave` or `dave: <comment>`.
    pub const DECIDED_BY: &str = "decided-by";
    pub const HOLD_TOKEN: &str = "hold-token";
    pub const GRANTED_AT: &str = "granted-at";
    pub const EXPIRES_AT: &str = "expires-at";
    /// What the grant made, as the hold task carried it (JSON of `GrantOutput`).
    pub const GRANT_RECORD: &str = "grant-record";
    /// The expiry the approval answer fixed (`ApprovalOutput::expires_at`), for ending
    /// access when the execution could not.
    pub const APPROVED_UNTIL: &str = "approved-until";
    /// Set once the hold task was answered (access ended early).
    pub const HOLD_ENDED: &str = "hold-ended";
    /// What became of a task of the request that went to the request dead-letter queue
    /// (a note for the `TaskDeadLettered` condition), and whether it is still there
    /// (`waiting`) or was handled (`redriven`).
    pub const DEAD_LETTERED: &str = "dead-lettered";
    pub const DEAD_LETTER_STATE: &str = "dead-letter-state";
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("Kubernetes API error on Secret {name}: {source}")]
    Kube {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// What is known about a request's tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    pub data: BTreeMap<String, String>,
}

impl Tokens {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.data
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

#[derive(Clone)]
pub struct TokenStore {
    api: Api<Secret>,
}

/// The Secret of a request.
pub fn secret_name(request_uid: &str) -> String {
    format!("aws-jit-task-{request_uid}")
}

impl TokenStore {
    pub fn new(client: kube::Client, operator_namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, operator_namespace),
        }
    }

    /// Adds entries to the request's Secret, creating it if needed. Existing keys not
    /// named are kept.
    pub async fn put(
        &self,
        request: &RequestIdentity,
        entries: &[(&str, &str)],
    ) -> Result<(), TokenError> {
        let name = secret_name(&request.uid);
        let data: BTreeMap<String, ByteString> = entries
            .iter()
            .map(|(k, v)| ((*k).to_string(), ByteString(v.as_bytes().to_vec())))
            .collect();
        let err = |source| TokenError::Kube {
            name: name.clone(),
            source,
        };
        let patch = serde_json::json!({ "data": data });
        match self
            .api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(err(e)),
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        MANAGED_BY.to_string(),
                    ),
                    (LABEL_UID.to_string(), request.uid.clone()),
                ])),
                annotations: Some(BTreeMap::from([
                    (ANNOTATION_NAMESPACE.to_string(), request.namespace.clone()),
                    (ANNOTATION_NAME.to_string(), request.name.clone()),
                ])),
                ..ObjectMeta::default()
            },
            type_: Some("aws-jit.io/task-tokens".into()),
            data: Some(data),
            ..Secret::default()
        };
        match self.api.create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(()),
            // Created concurrently: merge into it.
            Err(kube::Error::Api(e)) if e.code == 409 => self
                .api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
                .map_err(err),
            Err(e) => Err(err(e)),
        }
    }

    /// The request's tokens and markers; empty when there is no Secret.
    pub async fn get(&self, request_uid: &str) -> Result<Tokens, TokenError> {
        let name = secret_name(request_uid);
        let secret = self
            .api
            .get_opt(&name)
            .await
            .map_err(|source| TokenError::Kube {
                name: name.clone(),
                source,
            })?;
        let data = secret
            .and_then(|s| s.data)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
            .collect();
        Ok(Tokens { data })
    }

    /// Removes the request's Secret; absent is fine.
    pub async fn delete(&self, request_uid: &str) -> Result<(), TokenError> {
        let name = secret_name(request_uid);
        match self.api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(source) => Err(TokenError::Kube { name, source }),
        }
    }
}
