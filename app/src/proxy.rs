//! The drain proxy's main listener: every request goes to the app over the pod's loopback, and
//! the app's response streams back. What makes the proxy drain (readiness, the preStop hold,
//! waiting for the requests in flight, closing connections) is the same code as graceful-app's;
//! this module only forwards, and counts each request in flight until its response body ended.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpStream;
use tracing::debug;

use crate::config::{ProxyConfig, UpstreamProtocol};
use crate::context::{AppContext, ResponseBody};
use crate::metrics::InFlightGuard;

/// How long the proxy keeps an idle connection to the app. Shorter than the idle timeout of
/// common servers (Node.js closes after 5 s), so the proxy never sends a request on a
/// connection the app is closing at that instant.
const UPSTREAM_IDLE: Duration = Duration::from_secs(2);
/// Bound on connecting to the app, for a request and for the readiness check.
const UPSTREAM_CONNECT: Duration = Duration::from_millis(500);

/// Headers that belong to one hop (RFC 9110, section 7.6.1), never forwarded. `te: trailers`
/// is kept: gRPC needs it.
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Forwards requests to one upstream address.
pub struct Forwarder {
    client: Client<HttpConnector, Incoming>,
    authority: Authority,
    upstream: SocketAddr,
    version: Version,
    max_request: Duration,
}

impl Forwarder {
    pub fn new(config: &ProxyConfig) -> Result<Self, String> {
        let authority = Authority::try_from(config.upstream.to_string().as_str())
            .map_err(|error| format!("--upstream {}: {error}", config.upstream))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(UPSTREAM_CONNECT));
        let h2c = config.upstream_protocol == UpstreamProtocol::H2c;
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(UPSTREAM_IDLE)
            .http2_only(h2c)
            .build(connector);
        Ok(Self {
            client,
            authority,
            upstream: config.upstream,
            version: if h2c {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            },
            max_request: config.max_request(),
        })
    }

    pub fn max_request(&self) -> Duration {
        self.max_request
    }

    /// Whether the app accepts a TCP connection now: the proxy is ready only while it does.
    pub async fn upstream_accepts(&self) -> bool {
        matches!(
            tokio::time::timeout(UPSTREAM_CONNECT, TcpStream::connect(self.upstream)).await,
            Ok(Ok(_))
        )
    }

    /// Sends `request` to the app and streams its answer back. The request counts as in flight
    /// until the response body has ended, which is what preStop waits for. A failure of the
    /// app gets 502, a response slower than the longest request 504.
    pub async fn forward(
        &self,
        ctx: &AppContext,
        request: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, Infallible> {
        let in_flight = ctx.metrics.request_started();
        let (mut parts, body) = request.into_parts();
        // HTTP/2 clients name the host in the URI (:authority); an HTTP/1 app reads `Host`.
        if !parts.headers.contains_key(header::HOST)
            && let Some(host) = parts.uri.authority()
            && let Ok(value) = HeaderValue::from_str(host.as_str())
        {
            parts.headers.insert(header::HOST, value);
        }
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(path)
            .build();
        let Ok(uri) = uri else {
            return Ok(own(ctx, StatusCode::BAD_REQUEST, "bad request target\n"));
        };
        parts.uri = uri;
        parts.version = self.version;
        strip_hop_by_hop(&mut parts.headers);
        let sent = self.client.request(Request::from_parts(parts, body));
        let answer = match tokio::time::timeout(self.max_request, sent).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => {
                ctx.metrics.upstream_error();
                debug!(%error, "upstream request failed");
                return Ok(own(ctx, StatusCode::BAD_GATEWAY, "upstream failed\n"));
            }
            Err(_elapsed) => {
                ctx.metrics.upstream_error();
                debug!(
                    max_request_ms = self.max_request.as_millis() as u64,
                    "upstream too slow"
                );
                return Ok(own(ctx, StatusCode::GATEWAY_TIMEOUT, "upstream too slow\n"));
            }
        };
        let (mut parts, body) = answer.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body = Either::Right(UpstreamBody {
            inner: body,
            _in_flight: in_flight,
        });
        let mut response = Response::from_parts(parts, body);
        ctx.mark_close_when_draining(&mut response);
        Ok(response)
    }
}

/// A response the proxy makes itself.
fn own(ctx: &AppContext, status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    ctx.respond(status, text).map(Either::Left)
}

/// Removes the hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
    if headers
        .get(header::TE)
        .is_some_and(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
    }
}

/// The app's response body, streamed to the client; the request stays in flight until it is
/// dropped (sent to the end, or abandoned by the client).
pub struct UpstreamBody {
    inner: Incoming,
    _in_flight: InFlightGuard,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "gzip"),
            ("x-end", "kept"),
            ("content-type", "text/plain"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-end"]);

        let mut grpc = HeaderMap::new();
        grpc.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut grpc);
        assert!(grpc.contains_key(header::TE), "te: trailers dropped");
    }
}
