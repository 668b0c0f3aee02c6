//! The flags that only the bundled app has: its artificial work time.

use std::time::Duration;

use clap::Parser;

use super::ServerConfig;

/// The bundled graceful HTTP app: a main listener for the workload (HTTP/1.1 and h2c) and an
/// admin listener for preStop, readiness, liveness and metrics.
#[derive(Clone, Debug, Parser)]
#[command(name = "graceful-app", version, about)]
pub struct AppConfig {
    #[command(flatten)]
    pub server: ServerConfig,

    /// Artificial work time of every `GET /`, in milliseconds.
    #[arg(long, env = "GRACEFUL_WORK_MS", default_value_t = 0)]
    pub work_ms: u64,

    /// Cap on the per-request `?work_ms=N` query parameter, in milliseconds. It is also the
    /// longest request, so it bounds how long preStop waits for the requests in flight.
    #[arg(long, env = "GRACEFUL_MAX_WORK_MS", default_value_t = 30_000)]
    pub max_work_ms: u64,
}

impl AppConfig {
    /// Parses flags and env vars; on bad input prints the message and exits with code 2.
    pub fn from_args() -> Self {
        super::parse_or_exit(|config: &AppConfig| config.server.validate())
    }

    pub fn default_work(&self) -> Duration {
        Duration::from_millis(self.work_ms)
    }

    pub fn max_work(&self) -> Duration {
        Duration::from_millis(self.max_work_ms)
    }
}
