//! Task tokens, kept where no requester can read them: one Secret per request in the
//! operator's own namespace, whatever rights a requester holds in theirs. A task token
//! is a capability (whoever holds it can approve), so it never goes into the
//! AccessRequest, its status, an Event or a log line.
//!
//! The request-queue consumer writes tokens here; the reconciler reads them, answers
//! the tasks, and records that it did. The Secret's annotations name the request, so a
//! write wakes the reconciler of that request. The request's finalizer deletes it.
//!
//! The operator reads them from a reflector cache of the Secrets ([`TokenStore::watched`],
//! the same watch that wakes the requests), not with a GET per reconcile. A cache may
//! lag behind a write: the store remembers the resourceVersion of each of its own writes
//! (and its deletes) until the cache has caught up, and reads the Secret live until then,
//! so the reconciler never acts on tokens older than what it last wrote itself.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};

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
    /// `approving` (recorded with [`APPROVED_UNTIL`] right before the approval is sent:
    /// it may have been answered), `approved` (an answer from an older operator),
    /// `denied` or `cancelled`, once the approval task was answered.
    pub const APPROVAL_ANSWER: &str = "approval-answer";
    /// Who decided, for the status message: `carol, dave` or `dave: <comment>`.
    pub const DECIDED_BY: &str = "decided-by";
    pub const HOLD_TOKEN: &str = "hold-token";
    /// When the execution entered the stored hold (`entered_at` of its message).
    pub const HOLD_ENTERED: &str = "hold-entered";
    pub const GRANTED_AT: &str = "granted-at";
    pub const EXPIRES_AT: &str = "expires-at";
    /// What the grant made, as the hold task carried it (JSON of `GrantOutput`).
    pub const GRANT_RECORD: &str = "grant-record";
    /// The expiry the approval answer fixed (`ApprovalOutput::expires_at`), for ending
    /// access when the execution could not.
    pub const APPROVED_UNTIL: &str = "approved-until";
    /// Set once the hold task was answered (access ended early): who ended it.
    pub const HOLD_ENDED: &str = "hold-ended";
    /// The hold token [`HOLD_ENDED`] answered. A hold that comes after it (the
    /// execution held again after an extension) is not ended until it is answered too.
    pub const HOLD_ENDED_TOKEN: &str = "hold-ended-token";
    /// The extension being applied (its `id`), recorded right before the hold is
    /// answered with it, with the expiry it moves to, who approved it, and the hold
    /// token answered. A hold token other than that one means the execution holds
    /// again: the extension is settled by the expiry the new hold carries.
    pub const EXTENDING: &str = "extending";
    pub const EXTENDING_UNTIL: &str = "extending-until";
    pub const EXTENDING_BY: &str = "extending-by";
    pub const EXTENDING_TOKEN: &str = "extending-token";
    /// When the trust-policy worker last answered a grant or revoke task of the
    /// request (RFC 3339): the execution moves on after it, and the controller looks.
    pub const WORK_ANSWERED: &str = "work-answered";
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

    /// Who ended the current hold, if it was ended: [`keys::HOLD_ENDED`] recorded for
    /// this hold token (or by an operator that did not record the token).
    pub fn hold_ended(&self) -> Option<&str> {
        let by = self.get(keys::HOLD_ENDED)?;
        match self.get(keys::HOLD_ENDED_TOKEN) {
            Some(token) if Some(token) != self.get(keys::HOLD_TOKEN) => None,
            _ => Some(by),
        }
    }

    /// The extension being applied, while the hold answered with it is the current
    /// one: (id, until).
    pub fn extending(&self) -> Option<(&str, &str)> {
        Some((self.get(keys::EXTENDING)?, self.get(keys::EXTENDING_UNTIL)?))
    }

    /// Whether the approval task still waits for a decision: never answered, or an
    /// approval recorded (`approving`) that no `Approved` phase confirms went out (the
    /// send failed, or the operator stopped in between). The latter is counted again
    /// (a Deny, a withdrawal or a role change meanwhile wins), and a cancel or denial
    /// that comes back "already over" means the approval did go out.
    pub fn undecided(&self, phase: Option<crate::crd::Phase>) -> bool {
        match self.get(keys::APPROVAL_ANSWER) {
            None => true,
            Some("approving") => phase != Some(crate::crd::Phase::Approved),
            Some(_) => false,
        }
    }
}

#[derive(Clone)]
pub struct TokenStore {
    api: Api<Secret>,
    /// The watched Secrets (None: every read is a GET, as `aws-jit drain` does).
    cache: Option<(Store<Secret>, crate::cache::Synced)>,
    /// This store's own writes the cache may not show yet, by request uid.
    written: Arc<Mutex<HashMap<String, Written>>>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("namespace", &self.api.namespace())
            .field("cached", &self.cache.is_some())
            .finish_non_exhaustive()
    }
}

/// A write of this store, until the cache shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Written {
    Version(String),
    Deleted,
}

/// Whether a cached resourceVersion is at least `written` (resourceVersions are etcd
/// revisions, which only grow; anything unreadable counts as behind unless equal).
fn caught_up(cached: Option<&str>, written: &Written) -> bool {
    match (cached, written) {
        (None, Written::Deleted) => true,
        (Some(_), Written::Deleted) | (None, Written::Version(_)) => false,
        (Some(c), Written::Version(w)) => {
            c == w || matches!((c.parse::<u64>(), w.parse::<u64>()), (Ok(c), Ok(w)) if c >= w)
        }
    }
}

/// How long a read waits for the cache's first list before it reads live instead.
const SYNC_WAIT: Duration = Duration::from_secs(10);

/// The Secret of a request.
pub fn secret_name(request_uid: &str) -> String {
    format!("aws-jit-task-{request_uid}")
}

impl TokenStore {
    /// Reads every token with a GET.
    pub fn new(client: kube::Client, operator_namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, operator_namespace),
            cache: None,
            written: Default::default(),
        }
    }

    /// Reads tokens from a cache fed by the returned watch of the operator's token
    /// Secrets, which must be polled (the controller does: each change wakes its
    /// request).
    pub fn watched(
        client: kube::Client,
        operator_namespace: &str,
    ) -> (
        Self,
        impl Stream<Item = Result<Secret, watcher::Error>> + Send + 'static,
    ) {
        let api: Api<Secret> = Api::namespaced(client, operator_namespace);
        let (reader, writer) = reflector::store();
        let (stream, synced) = crate::cache::reflect(
            watcher(
                api.clone(),
                watcher::Config::default()
                    .labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}")),
            )
            .default_backoff()
            .modify(crate::cache::strip),
            writer,
        );
        let store = Self {
            api,
            cache: Some((reader, synced)),
            written: Default::default(),
        };
        let stream = stream.touched_objects();
        (store, stream)
    }

    /// The cached Secret of a request, and whether the cache can be trusted for it
    /// (it shows this store's last write). None without a cache.
    async fn cached(
        &self,
        request_uid: &str,
    ) -> Result<Option<(Option<Secret>, bool)>, TokenError> {
        let Some((cache, synced)) = &self.cache else {
            return Ok(None);
        };
        // Not listed yet (a watch that cannot sync): read live rather than stall.
        if !synced.within(SYNC_WAIT).await {
            return Ok(None);
        }
        let name = secret_name(request_uid);
        let namespace = self.api.namespace().unwrap_or_default().to_owned();
        let secret = cache
            .get(&ObjectRef::new(&name).within(&namespace))
            .map(|s| (*s).clone());
        let mut written = self
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fresh = match written.get(request_uid) {
            None => true,
            Some(w)
                if caught_up(
                    secret
                        .as_ref()
                        .and_then(|s| s.resource_version())
                        .as_deref(),
                    w,
                ) =>
            {
                written.remove(request_uid);
                true
            }
            Some(_) => false,
        };
        Ok(Some((secret, fresh)))
    }

    /// Remembers a write until the cache shows it.
    fn wrote(&self, request_uid: &str, what: Written) {
        if self.cache.is_none() {
            return;
        }
        if let Ok(mut written) = self.written.lock() {
            // Two writes whose answers came back out of order: the newer one stands.
            if let (Some(Written::Version(kept)), Written::Version(new)) =
                (written.get(request_uid), &what)
                && caught_up(Some(kept), &Written::Version(new.clone()))
                && kept != new
            {
                return;
            }
            written.insert(request_uid.to_owned(), what);
            // Entries of requests nobody reads again (ended, gone): dropped once the
            // cache shows them, checked when the map grows.
            if written.len() % 1024 == 0
                && let Some((cache, _)) = &self.cache
            {
                let namespace = self.api.namespace().unwrap_or_default().to_owned();
                written.retain(|uid, w| {
                    let rv = cache
                        .get(&ObjectRef::new(&secret_name(uid)).within(&namespace))
                        .and_then(|s| s.resource_version());
                    !caught_up(rv.as_deref(), w)
                });
            }
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
        let data = data_of(entries);
        let err = |source| TokenError::Kube {
            name: name.clone(),
            source,
        };
        let patch = serde_json::json!({ "data": data });
        // Created first when the cache knows there is none (the first task of every
        // request), so that costs no refused PATCH; merged into it otherwise.
        let absent = matches!(self.cached(&request.uid).await?, Some((None, true)));
        if !absent {
            match self
                .api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(s) => {
                    self.wrote(&request.uid, version(&s));
                    return Ok(());
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(err(e)),
            }
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
        let written = match self.api.create(&PostParams::default(), &secret).await {
            Ok(s) => s,
            // Created concurrently (or not in the cache yet): merge into it.
            Err(kube::Error::Api(e)) if e.code == 409 => self
                .api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(err)?,
            Err(e) => return Err(err(e)),
        };
        self.wrote(&request.uid, version(&written));
        Ok(())
    }

    /// Adds entries to the request's Secret only if it exists (a note for a request
    /// whose Secret is gone, its end recorded, must not bring it back).
    pub async fn mark(
        &self,
        request: &RequestIdentity,
        entries: &[(&str, &str)],
    ) -> Result<(), TokenError> {
        let name = secret_name(&request.uid);
        let patch = serde_json::json!({ "data": data_of(entries) });
        match self
            .api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(s) => {
                self.wrote(&request.uid, version(&s));
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(source) => Err(TokenError::Kube { name, source }),
        }
    }

    /// The request's tokens and markers; empty when there is no Secret.
    pub async fn get(&self, request_uid: &str) -> Result<Tokens, TokenError> {
        if let Some((secret, true)) = self.cached(request_uid).await? {
            return Ok(tokens_of(secret));
        }
        let name = secret_name(request_uid);
        let secret = self
            .api
            .get_opt(&name)
            .await
            .map_err(|source| TokenError::Kube {
                name: name.clone(),
                source,
            })?;
        Ok(tokens_of(secret))
    }

    /// Removes the request's Secret; absent is fine. Without a call when the cache
    /// knows it is gone (an ended request reconciled again costs nothing).
    pub async fn delete(&self, request_uid: &str) -> Result<(), TokenError> {
        if matches!(self.cached(request_uid).await?, Some((None, true))) {
            return Ok(());
        }
        let name = secret_name(request_uid);
        match self.api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => return Err(TokenError::Kube { name, source }),
        }
        self.wrote(request_uid, Written::Deleted);
        Ok(())
    }
}

fn data_of(entries: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
    entries
        .iter()
        .map(|(k, v)| ((*k).to_string(), ByteString(v.as_bytes().to_vec())))
        .collect()
}

fn version(secret: &Secret) -> Written {
    Written::Version(secret.resource_version().unwrap_or_default())
}

fn tokens_of(secret: Option<Secret>) -> Tokens {
    let data = secret
        .and_then(|s| s.data)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    Tokens { data }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(rv: &str) -> Written {
        Written::Version(rv.into())
    }

    #[test]
    fn the_cache_is_trusted_only_once_it_shows_our_last_write() {
        // Behind: an older version, or the Secret not seen yet.
        assert!(!caught_up(Some("41"), &v("42")));
        assert!(!caught_up(None, &v("42")));
        // Caught up, or someone wrote after us.
        assert!(caught_up(Some("42"), &v("42")));
        assert!(caught_up(Some("43"), &v("42")));
        // Unreadable versions count only when equal.
        assert!(caught_up(Some("x"), &v("x")));
        assert!(!caught_up(Some("y"), &v("x")));
        // A delete is shown once the Secret is gone from the cache.
        assert!(caught_up(None, &Written::Deleted));
        assert!(!caught_up(Some("42"), &Written::Deleted));
    }
}
