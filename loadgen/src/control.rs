//! Stopping a run from outside, for example when a test models a proxy that stops sending new
//! connections to a backend once its readiness turned false.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Shared switch board of one run; clone it freely.
#[derive(Clone, Debug, Default)]
pub struct Control {
    inner: Arc<Flags>,
}

#[derive(Debug, Default)]
struct Flags {
    stop: AtomicBool,
    no_new_connections: AtomicBool,
    finished: AtomicU64,
    failed: AtomicU64,
    /// Workers between "may I open a connection?" and "the connect finished".
    connecting: AtomicU64,
}

impl Control {
    pub fn new() -> Self {
        Self::default()
    }

    /// No worker starts another request; requests in flight finish and are recorded.
    pub fn stop(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
    }

    /// Workers keep using their open connections but open no new one: once the server closes
    /// a worker's connection, that worker ends. Models a proxy that removed the endpoint.
    pub fn stop_new_connections(&self) {
        self.inner.no_new_connections.store(true, Ordering::SeqCst);
    }

    /// Waits (bounded by `limit`) until no worker is still opening a connection it was allowed
    /// to open before [`Control::stop_new_connections`]. After it returns true, every
    /// connection this run will ever open is established, so a server that stops listening
    /// from then on refuses nobody. Returns false when `limit` passed first.
    pub async fn new_connections_settled(&self, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if self.inner.connecting.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Claims the right to open a connection; `None` once new connections are stopped. The
    /// claim is counted (before the flag is read, so [`Control::new_connections_settled`] cannot
    /// miss it) until the returned guard drops.
    pub(crate) fn begin_connect(&self) -> Option<ConnectClaim> {
        self.inner.connecting.fetch_add(1, Ordering::SeqCst);
        let claim = ConnectClaim {
            control: self.clone(),
        };
        self.new_connections_allowed().then_some(claim)
    }

    pub fn is_stopped(&self) -> bool {
        self.inner.stop.load(Ordering::SeqCst)
    }

    pub fn new_connections_allowed(&self) -> bool {
        !self.inner.no_new_connections.load(Ordering::SeqCst)
    }

    /// Requests finished so far (ok or failed), for a live progress display.
    pub fn finished(&self) -> u64 {
        self.inner.finished.load(Ordering::Relaxed)
    }

    /// Failed requests so far, for a live progress display.
    pub fn failed(&self) -> u64 {
        self.inner.failed.load(Ordering::Relaxed)
    }

    pub(crate) fn count(&self, ok: bool) {
        self.inner.finished.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.inner.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A worker's claim to open one connection; released when the connect finished (or failed).
pub(crate) struct ConnectClaim {
    control: Control,
}

impl Drop for ConnectClaim {
    fn drop(&mut self) {
        self.control.inner.connecting.fetch_sub(1, Ordering::SeqCst);
    }
}
