//! SIGTERM/SIGINT handling. Once installed, the handlers stay for the life of the process, so a
//! second signal during the drain is logged instead of killing the process.

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::error::AppError;

/// The termination signals the process reacts to.
pub struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    pub fn install() -> Result<Self, AppError> {
        Ok(Self {
            terminate: signal(SignalKind::terminate()).map_err(AppError::Signals)?,
            interrupt: signal(SignalKind::interrupt()).map_err(AppError::Signals)?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT and names it.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            Some(()) = self.terminate.recv() => "SIGTERM",
            Some(()) = self.interrupt.recv() => "SIGINT",
            else => std::future::pending().await,
        }
    }
}
