//! graceful-app: an HTTP app that drains without losing a request. See docs/architecture.md.

mod admin;
mod bind;
mod config;
mod connection;
mod context;
mod error;
mod handlers;
mod metrics;
mod prestop;
mod server;
mod shutdown;
mod state;
mod telemetry;
mod write_stall;

use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;
use crate::error::AppError;

fn main() -> ExitCode {
    let config = Config::from_args();
    telemetry::init(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(source) => return fail(&AppError::Runtime(source)),
    };
    let outcome = runtime.block_on(server::run(config));
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
