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
