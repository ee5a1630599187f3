//! The operator's caches of Kubernetes objects (reflector stores fed by its watches),
//! and reading a whole list without keeping a second copy.
//!
//! **Whether a cache can be read.** kube-runtime's `Store::wait_until_ready` wakes only
//! the last of several tasks waiting at once (its readiness is a oneshot receiver, which
//! keeps one waker): the controller itself waits on its store, so another waiter (many
//! reconciles at a start, the drift sweep) slept until its own timeout. Measured: a
//! sweep at start waited its full 30 s for a store that had synced in 2 s. [`reflect`]
//! gives a [`Synced`] every waiter sees instead, and it says more than "listed once": a
//! watch that is failing (its last event an error) or gone (its stream dropped) is not
//! readable, since its store may be as old as its last good event. Readers then read
//! live. A watch that resumes after an error says nothing until its objects change
//! (kube-runtime watches on from its last resourceVersion, with no new list): so a
//! watch quiet for [`QUIET`] after its last error is readable again, else one blip of
//! the apiserver would have a quiet cache (AccessRoles) read live for good.
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a watch that failed must be quiet (no new error) to be read again: longer
/// than kube-runtime's longest backoff between retries (30 s) and a request timing
/// out, so a watch still failing has said so again before then.
pub const QUIET: Duration = Duration::from_secs(300);

/// Where a watch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not listed yet.
    Listing,
    /// Listed, and its last event was not an error.
    Synced,
    /// Its last event was an error (it retries with backoff): its store may be stale.
    /// With the time of that error when the store had a whole list before it and is not
    /// listing again (it may be read again once quiet); None while it never had one, or
    /// lists again (an empty or half-listed store is never read).
    Failing(Option<Instant>),
}

impl State {
    /// Whether a store in this state can be read at `now`.
    fn readable(self, now: Instant) -> bool {
        match self {
            State::Listing => false,
            State::Synced => true,
            State::Failing(Some(at)) => now.saturating_duration_since(at) >= QUIET,
            State::Failing(None) => false,
        }
    }
}

/// Whether the store behind it can be read now.
#[derive(Debug, Clone)]
pub struct Synced(watch::Receiver<State>);

impl Synced {
    /// Whether the store can be read: synced, its watch working and still running.
    /// While it has not listed yet, waits at most `wait` for that; a failing or gone
    /// watch answers false at once (read live; never stall on it).
    pub async fn within(&self, wait: Duration) -> bool {
        let mut rx = self.0.clone();
        let settled = tokio::time::timeout(wait, rx.wait_for(|s| *s != State::Listing)).await;
        // A dropped sender leaves its last value behind: gone is not readable.
        if self.0.has_changed().is_err() {
            return false;
        }
        matches!(settled, Ok(Ok(s)) if s.readable(Instant::now()))
    }

    /// Whether the store can be read now, without waiting.
    pub fn now(&self) -> bool {
        self.0.has_changed().is_ok() && self.0.borrow().readable(Instant::now())
    }
}

/// `stream` reflected into `writer`'s store, with the signal of whether it can be read.
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
    let (tx, rx) = watch::channel(State::Listing);
    let stream = stream
        .reflect(writer)
        // After the store applied the event: the reflector passes events on once applied.
        .inspect(move |event| {
            tx.send_modify(|state| {
                *state = match (event, *state) {
                    (Err(_), State::Synced | State::Failing(Some(_))) => {
                        State::Failing(Some(Instant::now()))
                    }
                    (Err(_), State::Listing | State::Failing(None)) => State::Failing(None),
                    // Listing again after errors (a 410): read once it has listed.
                    (Ok(watcher::Event::Init), State::Failing(_)) => State::Failing(None),
                    (Ok(watcher::Event::InitDone), _) => State::Synced,
                    // A watch resumed after errors: its store is current again (a
                    // re-list keeps the old state until its InitDone).
                    (
                        Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)),
                        State::Failing(_),
                    ) => State::Synced,
                    (Ok(_), s) => s,
                }
            })
        });
    (stream, Synced(rx))
}

/// Drops what a cache never needs: `managedFields` are most of a small object.
pub fn strip<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// Every object `api` lists, a page at a time (one snapshot: the pages of a list are
/// served at its first page's resourceVersion) and without managedFields, so a long
/// list is never held as one answer.
pub async fn list_stripped<K>(api: &Api<K>) -> Result<Vec<K>, kube::Error>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    const PAGE: u32 = 500;
    // A server that kept answering "more" would never end the loop.
    const MAX_PAGES: usize = 10_000;
    let mut all = Vec::new();
    let mut params = ListParams::default().limit(PAGE);
    for _ in 0..MAX_PAGES {
        let page = api.list(&params).await?;
        all.extend(page.items.into_iter().map(|mut o| {
            strip(&mut o);
            o
        }));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(all),
        }
    }
    Err(kube::Error::Service(
        format!("a list of more than {MAX_PAGES} pages of {PAGE}").into(),
    ))
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

    /// A watch whose last event is an error is not read (its store may be stale), at
    /// once rather than after a wait; it is again once events flow; a watch gone is
    /// never read again, though it had synced.
    #[tokio::test]
    async fn a_failing_or_gone_watch_is_not_read() {
        let (_store, writer) = reflector::store::<ConfigMap>();
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let (mut stream, synced) = reflect(rx, writer);
        let step = |event: Result<watcher::Event<ConfigMap>, watcher::Error>| {
            tx.unbounded_send(event).expect("send");
        };
        step(Ok(watcher::Event::Init));
        step(Ok(watcher::Event::InitDone));
        stream.next().await;
        stream.next().await;
        assert!(synced.now());
        step(Err(watcher::Error::NoResourceVersion));
        stream.next().await;
        let started = std::time::Instant::now();
        assert!(!synced.within(Duration::from_secs(30)).await);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no wait on a failing watch"
        );
        step(Ok(watcher::Event::Apply(named("a"))));
        stream.next().await;
        assert!(synced.within(Duration::from_secs(30)).await, "resumed");
        drop(stream);
        assert!(!synced.now());
        assert!(!synced.within(Duration::from_secs(5)).await, "gone");
    }

    /// A watch that failed and then went quiet (kube-runtime resumes it from its last
    /// resourceVersion, sending nothing until objects change) is readable again after
    /// [`QUIET`]; a new error starts the wait again; listing is never readable.
    #[test]
    fn a_failed_watch_quiet_long_enough_is_read_again() {
        let at = Instant::now();
        let failing = State::Failing(Some(at));
        assert!(!failing.readable(at));
        assert!(!failing.readable(at + QUIET - Duration::from_secs(1)));
        assert!(failing.readable(at + QUIET));
        let again = State::Failing(Some(at + QUIET));
        assert!(!again.readable(at + QUIET + Duration::from_secs(1)));
        assert!(!State::Listing.readable(at + QUIET * 10));
        assert!(!State::Failing(None).readable(at + QUIET * 10));
        assert!(State::Synced.readable(at));
    }

    /// Quiet makes readable only a store that had its whole list: never one whose first
    /// list failed, nor one listing again after an error, however long it stays quiet.
    #[tokio::test]
    async fn quiet_never_makes_an_unlisted_store_readable() {
        let (_store, writer) = reflector::store::<ConfigMap>();
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let (mut stream, synced) = reflect(rx, writer);
        let state = || *synced.0.borrow();
        let step = |event: Result<watcher::Event<ConfigMap>, watcher::Error>| {
            tx.unbounded_send(event).expect("send");
        };
        // The first list fails, then its retry hangs.
        step(Err(watcher::Error::NoResourceVersion));
        stream.next().await;
        assert_eq!(state(), State::Failing(None));
        step(Ok(watcher::Event::Init));
        step(Ok(watcher::Event::InitApply(named("a"))));
        stream.next().await;
        stream.next().await;
        assert_eq!(state(), State::Failing(None), "half listed");
        step(Ok(watcher::Event::InitDone));
        stream.next().await;
        assert_eq!(state(), State::Synced);
        // Fails once it had its list: quiet may make it readable again ...
        step(Err(watcher::Error::NoResourceVersion));
        stream.next().await;
        assert!(matches!(state(), State::Failing(Some(_))));
        // ... until it lists again (a 410), until that list is done.
        step(Ok(watcher::Event::Init));
        stream.next().await;
        assert_eq!(state(), State::Failing(None), "listing again");
        step(Err(watcher::Error::NoResourceVersion));
        stream.next().await;
        assert_eq!(state(), State::Failing(None), "its list failed again");
    }
}
