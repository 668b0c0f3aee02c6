//! Which HTTP version a new connection speaks, read from its first bytes without consuming
//! them: HTTP/2 over cleartext with prior knowledge (h2c, what gRPC clients send) starts with
//! the fixed preface `PRI * HTTP/2.0`; anything else is HTTP/1.
//!
//! Done here rather than by hyper-util's auto builder so that a client that connects and sends
//! nothing is bounded by the header read timeout and by the drain, like any slow HTTP/1 client.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

/// The protocol of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// The client preface of HTTP/2 (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// "PRI " decides: no HTTP/1 request uses the method PRI, which RFC 9113 reserves. hyper's
/// HTTP/2 server checks the rest of the preface.
const DECIDING: usize = 4;
/// Pause between peeks while only part of "PRI " has arrived; a peek returns at once while
/// any byte waits, so without it the loop would spin.
const PARTIAL_PAUSE: Duration = Duration::from_millis(1);

/// What the first bytes say, or `None` when they do not say yet.
pub fn classify(first: &[u8]) -> Option<Protocol> {
    let seen = &first[..first.len().min(PREFACE.len())];
    if !PREFACE.starts_with(seen) {
        Some(Protocol::Http1)
    } else if seen.len() >= DECIDING {
        Some(Protocol::Http2)
    } else {
        None
    }
}

/// Waits for enough bytes to tell the protocol; `Ok(None)` when the client closed first. The
/// caller bounds the wait.
pub async fn sniff(stream: &TcpStream) -> io::Result<Option<Protocol>> {
    let mut first = [0_u8; DECIDING];
    loop {
        let read = stream.peek(&mut first).await?;
        if read == 0 {
            return Ok(None);
        }
        if let Some(protocol) = classify(&first[..read]) {
            return Ok(Some(protocol));
        }
        tokio::time::sleep(PARTIAL_PAUSE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_means_http2_and_anything_else_http1() {
        assert_eq!(classify(PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(b"PRI "), Some(Protocol::Http2));
        for http1 in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST",
            b"PUT ",
            b"PATCH",
            b"X",
            b"\r\n",
        ] {
            assert_eq!(classify(http1), Some(Protocol::Http1), "{http1:?}");
        }
        for undecided in [&b""[..], b"P", b"PR", b"PRI"] {
            assert_eq!(classify(undecided), None, "{undecided:?}");
        }
    }
}
