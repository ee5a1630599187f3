//! Whether a watch has listed everything once, awaited by any number of tasks.
//!
//! kube-runtime's `Store::wait_until_ready` wakes only the last of several tasks waiting
//! at once (its readiness is a oneshot receiver, which keeps one waker): the controller
//! itself waits on its store, so another waiter (many reconciles at a start, the drift
//! sweep) slept until its own timeout. Measured: a sweep at start waited its full 30 s
//! for a store that had synced in 2 s. This signal is a `watch` channel set when the
//! watch's first `InitDone` has been applied to the store.
use std::time::Duration;

use futures::{Stream, TryStreamExt};
use kube::Resource;
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

/// Set once the store behind it shows a whole list.
#[derive(Debug, Clone)]
pub struct Synced(watch::Receiver<bool>);

impl Synced {
    /// Whether the store has synced, waiting at most `wait` for it. False when the
    /// watch is gone without ever syncing.
    pub async fn within(&self, wait: Duration) -> bool {
        let mut rx = self.0.clone();
        matches!(
            tokio::time::timeout(wait, rx.wait_for(|synced| *synced)).await,
            Ok(Ok(_))
        )
    }

    /// The channel itself, for a module that must not depend on the controller.
    pub fn receiver(&self) -> watch::Receiver<bool> {
        self.0.clone()
    }
}

/// `stream` reflected into `writer`'s store, with the signal of its first sync.
pub fn reflect<K, S>(
    stream: S,
    writer: Writer<K>,
) -> (
    impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    Synced,
)
where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let (tx, rx) = watch::channel(false);
    let stream = stream.reflect(writer).inspect_ok(move |event| {
        // After the store applied it: the reflector passes events on once applied.
        if matches!(event, watcher::Event::InitDone) {
            tx.send_replace(true);
        }
    });
    (stream, Synced(rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector;

    fn named(name: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.name = Some(name.into());
        c.metadata.namespace = Some("ns".into());
        c
    }

    /// Every waiter, however many wait at once, sees the sync (kube-runtime's own
    /// readiness wakes only the last of them), and only once the store shows the list.
    #[tokio::test]
    async fn every_waiter_sees_the_sync_once_the_store_shows_it() {
        let (store, writer) = reflector::store::<ConfigMap>();
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let (stream, synced) = reflect(rx, writer);
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let (synced, store) = (synced.clone(), store.clone());
                tokio::spawn(async move {
                    let ok = synced.within(Duration::from_secs(30)).await;
                    (ok, store.len())
                })
            })
            .collect();
        // A second waiter on kube-runtime's own readiness too, as the controller is.
        let kube_waiter = {
            let store = store.clone();
            tokio::spawn(async move { store.wait_until_ready().await.is_ok() })
        };
        tokio::task::yield_now().await;
        let started = std::time::Instant::now();
        let driven = tokio::spawn(stream.for_each(|_| async {}));
        for event in [
            watcher::Event::Init,
            watcher::Event::InitApply(named("a")),
            watcher::Event::InitApply(named("b")),
            watcher::Event::InitDone,
        ] {
            tx.unbounded_send(Ok(event)).expect("send");
        }
        for w in waiters {
            let (ok, len) = w.await.expect("waiter");
            assert!(ok, "synced");
            assert_eq!(len, 2, "the store shows the list when the sync is seen");
        }
        // A waiter whose wakeup was lost would still see it, at its own 30 s timeout.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "woken by the sync, not by a timeout: {:?}",
            started.elapsed()
        );
        assert!(kube_waiter.await.expect("kube waiter"));
        drop(tx);
        driven.await.expect("stream");
    }

    #[tokio::test]
    async fn a_watch_gone_before_its_sync_is_not_synced() {
        let (_store, writer) = reflector::store::<ConfigMap>();
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let (stream, synced) = reflect(rx, writer);
        drop(tx);
        stream.for_each(|_| async {}).await;
        assert!(!synced.within(Duration::from_secs(5)).await);
    }
}
