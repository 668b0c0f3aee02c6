//! What load to generate.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::ensure;

/// Whether a worker reuses its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionMode {
    /// Reuse the connection until the server closes it, then reconnect.
    KeepAlive,
    /// One new connection per request (`Connection: close` on every request).
    Close,
    /// HTTP/2 over cleartext with prior knowledge (h2c): one long-lived connection per worker,
    /// one stream at a time on it. A new connection only when the server closed it or sent
    /// GOAWAY (found before or while sending the next request); a request the server provably
    /// did not process is sent once more on a new connection (see the crate docs).
    Http2,
}

/// The load of one run. Both bounds apply: whichever comes first ends the run.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub target: SocketAddr,
    /// Path and query, e.g. `/?work_ms=100`.
    pub path: String,
    /// `Host` header; defaults to the target address.
    pub host: Option<String>,
    pub concurrency: usize,
    /// Most requests started in total, across workers.
    pub max_requests: u64,
    /// No request starts after this much time since the run began.
    pub duration: Duration,
    pub mode: ConnectionMode,
    /// Bound on one request, connect included; past it the request fails as a timeout.
    pub request_timeout: Duration,
    /// The workers start spread evenly over this long (zero: all at once). Each worker's first
    /// request starts, and is timed, at its turn. A thousand workers started in the same instant
    /// measure the generator, not the server: each connect runs the SYN's whole path through
    /// the kernel (NAT, veth, the server's handshake) in the connecting thread, and a worker
    /// whose connect finished waits to send its request behind every worker not yet started.
    pub ramp: Duration,
}

impl LoadSpec {
    /// One keep-alive worker, 1,000 requests, 10 s, 10 s per request; adjust with the setters.
    pub fn new(target: SocketAddr, path: impl Into<String>) -> Self {
        Self {
            target,
            path: path.into(),
            host: None,
            concurrency: 1,
            max_requests: 1_000,
            duration: Duration::from_secs(10),
            mode: ConnectionMode::KeepAlive,
            request_timeout: Duration::from_secs(10),
            ramp: Duration::ZERO,
        }
    }

    pub fn concurrency(mut self, workers: usize) -> Self {
        self.concurrency = workers;
        self
    }

    pub fn max_requests(mut self, count: u64) -> Self {
        self.max_requests = count;
        self
    }

    pub fn duration(mut self, duration: Duration) -> Self {
        self.duration = duration;
        self
    }

    pub fn mode(mut self, mode: ConnectionMode) -> Self {
        self.mode = mode;
        self
    }

    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    pub fn ramp(mut self, ramp: Duration) -> Self {
        self.ramp = ramp;
        self
    }

    /// When worker `id` starts, after the run's start: its share of the ramp.
    pub(crate) fn start_offset(&self, id: usize) -> Duration {
        let share = u32::try_from(id).unwrap_or(u32::MAX);
        let workers = u32::try_from(self.concurrency).unwrap_or(u32::MAX).max(1);
        self.ramp
            .checked_mul(share)
            .map_or(self.ramp, |spread| spread / workers)
    }

    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        ensure!(self.concurrency > 0, "concurrency must be at least 1");
        ensure!(self.path.starts_with('/'), "path must start with '/'");
        ensure!(
            !self.request_timeout.is_zero(),
            "request timeout must be positive"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ramp_spreads_the_workers_starts_evenly_and_none_by_default() {
        let spec = LoadSpec::new(([127, 0, 0, 1], 80).into(), "/").concurrency(4);
        assert!((0..4).all(|id| spec.start_offset(id).is_zero()));
        let spec = spec.ramp(Duration::from_millis(400));
        let offsets: Vec<u128> = (0..4).map(|id| spec.start_offset(id).as_millis()).collect();
        assert_eq!(offsets, [0, 100, 200, 300]);
    }
}
