//! Everything that can end the process with a non-zero exit code.

use std::io;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot bind the {listener} listener to {addr}: {source}")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("cannot read the bound address of the {listener} listener: {source}")]
    LocalAddr {
        listener: &'static str,
        source: io::Error,
    },
    #[error("cannot install the signal handlers: {0}")]
    Signals(io::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(io::Error),
    #[error(
        "shutdown timed out after {timeout_ms} ms with {open_connections} connection(s) still open"
    )]
    ShutdownTimeout {
        timeout_ms: u64,
        open_connections: i64,
    },
}
