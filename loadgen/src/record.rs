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
    /// Whether the response was the last on its connection by the server's word.
    ///
    /// HTTP/1: the response said `Connection: close`. HTTP/2: the server ended the connection
    /// (GOAWAY, or a close) after this response, as the worker found when it went to send its
    /// next request. hyper exposes no GOAWAY event, only that the connection took no more
    /// requests, so a GOAWAY and a plain close between requests look alike; and a worker's
    /// last response is marked only if the worker looked again before its run ended.
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

/// Classifies a failure from an error chain (hyper, h2 and std errors).
pub(crate) fn classify(error: &(dyn std::error::Error + 'static)) -> ErrorKind {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut kind = ErrorKind::Other;
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return classify_io(io);
        }
        // h2 errors end the chain (they have no source), so they are read here.
        if let Some(h2_error) = err.downcast_ref::<h2::Error>() {
            return classify_h2(h2_error);
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

/// An h2 error: a reset, a GOAWAY that ended the stream, or the connection's I/O error (in a
/// response body; hyper turns it into a plain I/O error when the response head failed).
fn classify_h2(error: &h2::Error) -> ErrorKind {
    if let Some(io) = error.get_io() {
        return classify_io(io);
    }
    if error.is_reset() || (error.is_go_away() && error.is_remote()) {
        ErrorKind::Reset
    } else {
        ErrorKind::Other
    }
}

/// Classifies a failure in HTTP/2 mode.
///
/// h2 tells every stream still open when the peer closed the connection (EOF) "stream closed
/// because of a broken pipe", an I/O error of kind BrokenPipe it made up, which hyper passes
/// on. HTTP/1 calls the same event an incomplete message, so both modes count it as
/// [`ErrorKind::EofBeforeResponse`] (a write to a connection the peer closed, the other source
/// of BrokenPipe, is the same event seen from the other side).
pub(crate) fn classify_http2(error: &hyper::Error) -> ErrorKind {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(err) = current {
        let io = match err.downcast_ref::<h2::Error>() {
            Some(h2_error) => h2_error.get_io(),
            None => err.downcast_ref::<std::io::Error>(),
        };
        if io.is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) {
            return ErrorKind::EofBeforeResponse;
        }
        current = err.source();
    }
    classify(error)
}

/// Why the server provably did not process a request, so that sending it again is safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unprocessed {
    /// The request never left the client: its connection had closed or received GOAWAY.
    ConnectionGone,
    /// The server reset the stream with REFUSED_STREAM.
    StreamRefused,
    /// The stream's id is above the last stream id of the server's graceful GOAWAY.
    AboveLastStream,
}

/// Whether a failed h2 send (before any response head) was provably never processed.
///
/// What hyper 1.12 and h2 0.4 report, as read in their code and seen against real servers:
/// - `hyper::Error::is_canceled()` ("connection closed", or "connection was not ready"): the
///   request never left hyper's dispatch queue, because the connection's dispatch task had
///   ended. That task checks for the server's GOAWAY (and for a closed connection) only when
///   it takes the next request, so this is how a request meets a graceful GOAWAY that arrived
///   between two requests. Proof: nothing of the request was written.
/// - an `h2::Error` from the peer's RST_STREAM with reason REFUSED_STREAM: the server closed
///   the stream "prior to any processing" (RFC 9113 §8.7). Proof by the protocol.
/// - an `h2::Error` from the peer's GOAWAY with reason NO_ERROR (`is_go_away()`,
///   `is_remote()`). h2 gives it to the open streams whose id is above the GOAWAY's last
///   stream id (`recv_go_away` in h2's streams.rs). A server "might have" processed only
///   streams up to that id (RFC 9113 §6.8), and h2's server names there the highest stream
///   whose HEADERS it received, then ignores every later stream. Proof by the protocol, on
///   one thread (see the crate docs); the tests check it by counting what the server ran (a
///   retry of a stream the server had run would count twice).
///
/// Every other failure (a reset of an open stream, a GOAWAY with an error, EOF, a timeout) may
/// have happened with the server's work in progress, so it is an error.
pub(crate) fn unprocessed(error: &hyper::Error) -> Option<Unprocessed> {
    if error.is_canceled() {
        return Some(Unprocessed::ConnectionGone);
    }
    let mut current = std::error::Error::source(error);
    while let Some(err) = current {
        if let Some(h2_error) = err.downcast_ref::<h2::Error>() {
            let graceful = h2_error.reason() == Some(h2::Reason::NO_ERROR);
            let refused = h2_error.reason() == Some(h2::Reason::REFUSED_STREAM);
            return if h2_error.is_reset() && h2_error.is_remote() && refused {
                Some(Unprocessed::StreamRefused)
            } else if h2_error.is_go_away() && h2_error.is_remote() && graceful {
                Some(Unprocessed::AboveLastStream)
            } else {
                None
            };
        }
        current = err.source();
    }
    None
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

    #[test]
    fn a_bare_h2_reason_is_other() {
        // h2 offers no public constructor for its I/O, reset or GOAWAY errors; the tests in
        // tests/http2.rs meet those on real connections.
        let protocol = h2::Error::from(h2::Reason::PROTOCOL_ERROR);
        assert_eq!(classify(&protocol), ErrorKind::Other);
    }
}
