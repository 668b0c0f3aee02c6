//! graceful-app and graceful-drain-proxy: two binaries, one drain.
//!
//! Both run the same listeners, admin endpoints and drain (see docs/architecture.md, "The
//! app's contract"); they differ only in what their main listener does with a request
//! ([`context::Workload`]): graceful-app answers it, the drain proxy forwards it to an app that
//! knows nothing of the protocol.

pub mod admin;
pub mod bind;
pub mod config;
pub mod connection;
pub mod context;
pub mod error;
pub mod handlers;
pub mod metrics;
pub mod prestop;
pub mod protocol;
pub mod proxy;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod telemetry;
pub mod write_stall;

use std::process::ExitCode;
use std::time::Duration;

use crate::config::ServerConfig;
use crate::context::Workload;
use crate::error::AppError;

/// How many threads serve connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// One per core the process may use (graceful-app).
    PerCore,
    /// A fixed number; 1 is a single-threaded runtime (the drain proxy's default).
    Fixed(u16),
}

/// The whole life of either binary after its flags were parsed: logs, runtime, serve, drain,
/// exit code (0 after a complete drain, 1 on failure).
pub fn run_to_exit(
    program: &'static str,
    config: &ServerConfig,
    workload: Workload,
    threads: Threads,
) -> ExitCode {
    telemetry::init(config.log_format);
    let mut builder = match threads {
        Threads::Fixed(1) => tokio::runtime::Builder::new_current_thread(),
        Threads::Fixed(n) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(usize::from(n.max(1)));
            builder
        }
        Threads::PerCore => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(source) => return fail(&AppError::Runtime(source)),
    };
    let outcome = runtime.block_on(server::run(program, config, workload));
    // Connections still open here (immediate mode, or a timed-out drain) are dropped, not awaited.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

fn fail(error: &AppError) -> ExitCode {
    tracing::error!(%error, "exiting");
    ExitCode::FAILURE
}
