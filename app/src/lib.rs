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

/// The whole life of either binary after its flags were parsed: logs, runtime, serve, drain,
/// exit code (0 after a complete drain, 1 on failure).
pub fn run_to_exit(program: &'static str, config: &ServerConfig, workload: Workload) -> ExitCode {
    telemetry::init(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
