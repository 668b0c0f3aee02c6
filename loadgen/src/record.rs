//! One request's outcome.

use std::fmt;
use std::time::{Duration, Instant};

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// Nothing listened: the connect was refused.
    ConnectRefused,
    /// Connecting failed for another reason.
    Connect,
    /// The connection was reset (RST) or the pipe broke.
    Reset,
    /// The connection ended (EOF) before a complete response arrived.
    EofBeforeResponse,
    /// The request did not complete within the request timeout.
    Timeout,
    /// A response arrived with a status outside 2xx.
    Non2xx,
    /// Anything else (a protocol error, for example).
    Other,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ErrorKind::ConnectRefused => "connect_refused",
            ErrorKind::Connect => "connect",
            ErrorKind::Reset => "reset",
            ErrorKind::EofBeforeResponse => "eof_before_response",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Non2xx => "non_2xx",
            ErrorKind::Other => "other",
        };
        f.write_str(name)
    }
}

/// One request as the client saw it.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub worker: usize,
    /// When the request started (before connecting, when it needed a new connection).
    pub start: Instant,
    /// Until the full response body arrived, or until it failed.
    pub latency: Duration,
    /// The response status, when one arrived.
    pub status: Option<u16>,
    /// Set when the request failed.
    pub error: Option<ErrorKind>,
    /// Whether this request opened a new connection.
    pub new_connection: bool,
    /// Whether the response said `Connection: close`.
    pub connection_close: bool,
}

impl RequestRecord {
    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }

    pub fn end(&self) -> Instant {
        self.start + self.latency
    }
}

/// Classifies a failure from an error chain (hyper and std errors).
pub(crate) fn classify(error: &(dyn std::error::Error + 'static)) -> ErrorKind {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut kind = ErrorKind::Other;
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return classify_io(io);
        }
        if let Some(hyper_error) = err.downcast_ref::<hyper::Error>() {
            if hyper_error.is_incomplete_message() || hyper_error.is_canceled() {
                kind = ErrorKind::EofBeforeResponse;
            } else if hyper_error.is_timeout() {
                kind = ErrorKind::Timeout;
            }
        }
        current = err.source();
    }
    kind
}

pub(crate) fn classify_io(error: &std::io::Error) -> ErrorKind {
    use std::io::ErrorKind as Io;
    match error.kind() {
        Io::ConnectionRefused => ErrorKind::ConnectRefused,
        Io::ConnectionReset | Io::ConnectionAborted | Io::BrokenPipe => ErrorKind::Reset,
        Io::UnexpectedEof => ErrorKind::EofBeforeResponse,
        Io::TimedOut => ErrorKind::Timeout,
        _ => ErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_kinds() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify(&refused), ErrorKind::ConnectRefused);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(classify(&reset), ErrorKind::Reset);
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(classify(&eof), ErrorKind::EofBeforeResponse);
    }
}
