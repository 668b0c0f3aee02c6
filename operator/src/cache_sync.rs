//! Whether a cache's watch has listed its objects once: what `/readyz` waits for.
//!
//! kube-runtime's `Store::wait_until_ready` cannot serve here. Its `DelayedInit` keeps the one
//! waker of a `futures` oneshot channel, so of two tasks waiting on the same store only the one
//! that polled last is woken. The `Controller` itself waits on the GracefulService store before
//! it starts reconciling; a readiness task waiting on that store too was, in 5 of 7 local starts,
//! never woken and the operator stayed unready for good although its lists had all answered
//! (CI run of `e2e/tests/operator/readiness.rs`). A `tokio::sync::watch` wakes every waiter.

use kube::runtime::watcher;
use tokio::sync::watch;

/// The watch side: told of every event of one cache's watch.
pub struct Listing(watch::Sender<bool>);

/// The readiness side: resolves once that watch's list has been applied to its cache.
#[derive(Clone)]
pub struct Listed(watch::Receiver<bool>);

/// A linked pair for one cache.
pub fn pair() -> (Listing, Listed) {
    let (tx, rx) = watch::channel(false);
    (Listing(tx), Listed(rx))
}

impl Listing {
    /// Records the end of a (re)list. Call it on the events a `reflect`ed stream yields: an
    /// event comes out of `reflect` only after the store applied it.
    pub fn observe<K>(&self, event: &Result<watcher::Event<K>, watcher::Error>) {
        if matches!(event, Ok(watcher::Event::InitDone)) {
            self.0.send_replace(true);
        }
    }
}

impl Listed {
    /// Resolves `true` once the list was applied, `false` if the watch ended before it was.
    pub async fn wait(&self) -> bool {
        let mut rx = self.0.clone();
        rx.wait_for(|listed| *listed).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Event = Result<watcher::Event<()>, watcher::Error>;

    #[tokio::test]
    async fn every_waiter_wakes_on_the_end_of_the_list() {
        let (listing, listed) = pair();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                tokio::spawn({
                    let listed = listed.clone();
                    async move { listed.wait().await }
                })
            })
            .collect();
        tokio::task::yield_now().await;
        listing.observe::<()>(&Ok(watcher::Event::Init));
        listing.observe::<()>(&Ok(watcher::Event::InitApply(())));
        for waiter in &waiters {
            assert!(!waiter.is_finished(), "ready before the list ended");
        }
        listing.observe::<()>(&Ok(watcher::Event::InitDone));
        for waiter in waiters {
            assert!(waiter.await.unwrap_or(false));
        }
        assert!(listed.wait().await, "a later waiter sees it too");
    }

    /// The twin: kube-runtime's own readiness loses a waiter (why this module exists). If a
    /// kube upgrade makes this fail, `Store::wait_until_ready` has become usable again.
    #[tokio::test]
    async fn kube_store_readiness_wakes_only_the_last_waiter() {
        use k8s_openapi::api::core::v1::Service;
        let (store, mut writer) = kube::runtime::reflector::store::<Service>();
        let first = tokio::spawn({
            let store = store.clone();
            async move { store.wait_until_ready().await.is_ok() }
        });
        tokio::task::yield_now().await;
        let last = tokio::spawn(async move { store.wait_until_ready().await.is_ok() });
        tokio::task::yield_now().await;
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitDone);
        assert_eq!(last.await.ok(), Some(true));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!first.is_finished(), "kube-runtime now wakes every waiter");
        first.abort();
    }

    #[tokio::test]
    async fn a_watch_that_ends_unlisted_is_not_ready() {
        let (listing, listed) = pair();
        let failed: Event = Err(watcher::Error::NoResourceVersion);
        listing.observe(&failed);
        drop(listing);
        assert!(!listed.wait().await);
    }
}
