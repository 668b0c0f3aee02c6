//! A worker's client connection: HTTP/1.1 or h2c, behind one small enum so the worker's loop
//! stays the same for both.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::record::{ErrorKind, classify, classify_http2, classify_io};

/// The sending half of one connection; its driver runs on its own task.
pub(crate) enum Sender {
    Http1(http1::SendRequest<Empty<Bytes>>),
    /// One h2c connection with prior knowledge (no upgrade, no TLS); the worker keeps at most
    /// one stream open on it.
    Http2(http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    /// Opens a connection to `target`, HTTP/2 when `http2`.
    pub(crate) async fn connect(target: SocketAddr, http2: bool) -> Result<Self, ErrorKind> {
        let stream =
            TcpStream::connect(target)
                .await
                .map_err(|error| match classify_io(&error) {
                    ErrorKind::Other => ErrorKind::Connect,
                    kind => kind,
                })?;
        // Latency figures would be meaningless with Nagle's delay on small requests.
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        if http2 {
            // The h2 handshake only writes the preface and SETTINGS; it does not wait for the
            // server's, so a server that does not speak h2 fails on the first request.
            let (sender, driver) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|error| classify_http2(&error))?;
            tokio::spawn(async move {
                // Errors surface on the stream that was open; nothing to add here.
                let _ = driver.await;
            });
            Ok(Self::Http2(sender))
        } else {
            let (sender, driver) = http1::handshake(io)
                .await
                .map_err(|error| classify(&error))?;
            tokio::spawn(async move {
                // Errors surface on the request that was in flight; nothing to add here.
                let _ = driver.await;
            });
            Ok(Self::Http1(sender))
        }
    }

    pub(crate) fn is_http2(&self) -> bool {
        matches!(self, Self::Http2(_))
    }

    /// True once the connection can take no more requests. For h2 that is once hyper's
    /// dispatch task ended: when the connection closed (h2 closes it itself once a GOAWAY
    /// arrived and no stream is open), or when the task found a GOAWAY upon taking a request;
    /// it does not watch for one between requests.
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            Self::Http1(sender) => sender.is_closed(),
            Self::Http2(sender) => sender.is_closed(),
        }
    }

    /// Waits until the connection can take a request; an error means it is closed.
    pub(crate) async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Self::Http1(sender) => sender.ready().await,
            Self::Http2(sender) => sender.ready().await,
        }
    }

    /// Sends one request and waits for the response head.
    pub(crate) async fn send(
        &mut self,
        request: Request<Empty<Bytes>>,
    ) -> hyper::Result<Response<Incoming>> {
        match self {
            Self::Http1(sender) => sender.send_request(request).await,
            Self::Http2(sender) => sender.send_request(request).await,
        }
    }
}
