//! One worker: a loop of requests over (at most) one connection at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONNECTION, HOST};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;

use crate::conn::Sender;
use crate::control::{ConnectClaim, Control};
use crate::record::{ErrorKind, RequestRecord, Unprocessed, classify, classify_http2, unprocessed};
use crate::spec::{ConnectionMode, LoadSpec};

pub(crate) struct Worker {
    pub id: usize,
    pub spec: Arc<LoadSpec>,
    pub control: Control,
    pub budget: Arc<AtomicU64>,
    /// When the first request starts (the worker's turn in the ramp).
    pub start: Instant,
    pub deadline: Instant,
}

/// What a completed exchange told us.
struct Answer {
    status: u16,
    connection_close: bool,
}

/// Why an exchange ended without an answer.
enum Failure {
    Error(ErrorKind),
    /// The request was never processed, its connection is gone and new connections are
    /// stopped: it is not recorded (as if it had not started) and the worker ends, as it would
    /// had it found the connection gone before starting the request.
    Unsent,
}

impl From<ErrorKind> for Failure {
    fn from(kind: ErrorKind) -> Self {
        Failure::Error(kind)
    }
}

/// What an exchange learned about connections, whatever its outcome.
#[derive(Default)]
struct Trace {
    /// This request opened a connection (for its first attempt or for its retry).
    new_connection: bool,
    /// The connection kept from the worker's previous request was gone (GOAWAY or closed)
    /// when this request was offered to it.
    previous_gone: bool,
}

impl Worker {
    pub async fn run(self) -> Vec<RequestRecord> {
        let mut records = Vec::new();
        let mut connection: Option<Sender> = None;
        tokio::time::sleep_until(self.start.into()).await;
        loop {
            if self.control.is_stopped() || Instant::now() >= self.deadline {
                break;
            }
            // The server closed the connection between requests (EOF, or for h2 a GOAWAY
            // hyper already acted on): reconnect, no error. Nothing of the next request has
            // been written yet, so this is not a retry.
            if let Some(sender) = connection.as_mut()
                && (sender.is_closed() || sender.ready().await.is_err())
            {
                if sender.is_http2() {
                    mark_last_on_connection(&mut records);
                }
                connection = None;
            }
            // A worker without a connection must be allowed to open one; the claim lasts until
            // its connect finished, so a test can wait for connects already under way.
            let claim = if connection.is_none() {
                match self.control.begin_connect() {
                    Some(claim) => Some(claim),
                    None => break,
                }
            } else {
                None
            };
            if self.budget.fetch_add(1, Ordering::SeqCst) >= self.spec.max_requests {
                break;
            }
            let start = Instant::now();
            let mut trace = Trace {
                new_connection: connection.is_none(),
                previous_gone: false,
            };
            let exchange = tokio::time::timeout(
                self.spec.request_timeout,
                self.exchange(&mut connection, claim, &mut trace),
            )
            .await;
            let latency = start.elapsed();
            if trace.previous_gone {
                mark_last_on_connection(&mut records);
            }
            let mut record = RequestRecord {
                worker: self.id,
                start,
                latency,
                status: None,
                error: None,
                new_connection: trace.new_connection,
                connection_close: false,
            };
            match exchange {
                Ok(Ok(answer)) => {
                    record.status = Some(answer.status);
                    record.connection_close = answer.connection_close;
                    if !(200..300).contains(&answer.status) {
                        record.error = Some(ErrorKind::Non2xx);
                    }
                    if answer.connection_close || self.spec.mode == ConnectionMode::Close {
                        connection = None;
                    }
                }
                Ok(Err(Failure::Error(kind))) => {
                    record.error = Some(kind);
                    connection = None;
                }
                Ok(Err(Failure::Unsent)) => {
                    // Give the request back to the budget: it never started.
                    self.budget.fetch_sub(1, Ordering::SeqCst);
                    break;
                }
                Err(_elapsed) => {
                    record.error = Some(ErrorKind::Timeout);
                    connection = None;
                }
            }
            self.control.count(record.is_ok());
            records.push(record);
        }
        records
    }

    /// One request and its full response, connecting first when needed.
    async fn exchange(
        &self,
        connection: &mut Option<Sender>,
        claim: Option<ConnectClaim>,
        trace: &mut Trace,
    ) -> Result<Answer, Failure> {
        let mut sender = match connection.take() {
            Some(sender) => sender,
            None => self.connect().await?,
        };
        drop(claim);
        let response = if sender.is_http2() {
            self.send_h2(&mut sender, trace).await?
        } else {
            sender.ready().await.map_err(|error| classify(&error))?;
            let request = self.request()?;
            sender
                .send(request)
                .await
                .map_err(|error| classify(&error))?
        };
        let status = response.status().as_u16();
        let connection_close = says_close(response.headers());
        response.into_body().collect().await.map_err(|error| {
            if sender.is_http2() {
                classify_http2(&error)
            } else {
                classify(&error)
            }
        })?;
        *connection = Some(sender);
        Ok(Answer {
            status,
            connection_close,
        })
    }

    /// Sends on an h2 connection, and sends once more, on a new connection, a request that
    /// the server provably did not process (see [`unprocessed`]): hyper never wrote it because
    /// the connection had received GOAWAY or closed, or the server refused its stream (with
    /// REFUSED_STREAM, or by a GOAWAY whose last stream id is below it). This is
    /// the transparent retry gRPC and h2 clients do: the server never saw the request, so
    /// sending it again cannot run it twice, and a server draining with GOAWAY loses no call.
    /// The caller records one request whose latency includes the retry; a second failure of
    /// any kind is an error.
    async fn send_h2(
        &self,
        sender: &mut Sender,
        trace: &mut Trace,
    ) -> Result<Response<Incoming>, Failure> {
        let error = match sender.send(self.request()?).await {
            Ok(response) => return Ok(response),
            Err(error) => error,
        };
        let Some(why) = unprocessed(&error) else {
            return Err(classify_http2(&error).into());
        };
        if why == Unprocessed::ConnectionGone && !trace.new_connection {
            trace.previous_gone = true;
        }
        let Some(claim) = self.control.begin_connect() else {
            return Err(Failure::Unsent);
        };
        *sender = self.connect().await?;
        drop(claim);
        trace.new_connection = true;
        let response = sender.send(self.request()?).await;
        response.map_err(|error| classify_http2(&error).into())
    }

    /// A fresh request for each attempt (sending one consumes it).
    fn request(&self) -> Result<Request<Empty<Bytes>>, ErrorKind> {
        let host = match &self.spec.host {
            Some(host) => host.clone(),
            None => self.spec.target.to_string(),
        };
        let request = if self.spec.mode == ConnectionMode::Http2 {
            // h2 carries the host as the `:authority` of an absolute URI, not as a header.
            Request::get(format!("http://{host}{}", self.spec.path))
        } else {
            let request = Request::get(self.spec.path.as_str()).header(HOST, host);
            if self.spec.mode == ConnectionMode::Close {
                request.header(CONNECTION, "close")
            } else {
                request
            }
        };
        request
            .body(Empty::<Bytes>::new())
            .map_err(|_| ErrorKind::Other)
    }

    async fn connect(&self) -> Result<Sender, ErrorKind> {
        Sender::connect(self.spec.target, self.spec.mode == ConnectionMode::Http2).await
    }
}

/// Marks the worker's previous response as the last on its connection (h2: the server ended
/// the connection after it; see [`RequestRecord::connection_close`]).
fn mark_last_on_connection(records: &mut [RequestRecord]) {
    if let Some(last) = records.last_mut() {
        last.connection_close = true;
    }
}

fn says_close(headers: &HeaderMap) -> bool {
    headers.get_all(CONNECTION).iter().any(|value| {
        value
            .to_str()
            .map(|text| {
                text.split(',')
                    .any(|token| token.trim().eq_ignore_ascii_case("close"))
            })
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::time::Duration;

    use hyper::server::conn::http2;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::TcpListener;

    use super::*;

    /// An h2c server that closes its first `closing` connections at once and serves 200s on
    /// the next ones.
    async fn serve(closing: usize) -> anyhow::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let mut accepted = 0;
            while let Ok((stream, _)) = listener.accept().await {
                accepted += 1;
                if accepted <= closing {
                    continue;
                }
                let ok = service_fn(|_| async {
                    Ok::<_, Infallible>(http::Response::new(Empty::<Bytes>::new()))
                });
                let builder = http2::Builder::new(TokioExecutor::new());
                tokio::spawn(builder.serve_connection(TokioIo::new(stream), ok));
            }
        });
        Ok(addr)
    }

    /// A connection the server closed, as the worker holds it when its check before the
    /// request passed just before hyper noticed (on a multi-thread runtime, a GOAWAY makes
    /// that race common).
    async fn gone(addr: SocketAddr) -> anyhow::Result<Sender> {
        let connected = Sender::connect(addr, true).await;
        let sender = connected.map_err(|kind| anyhow::anyhow!("connect: {kind}"))?;
        let closing = async {
            while !sender.is_closed() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), closing).await?;
        Ok(sender)
    }

    fn worker(addr: SocketAddr, control: Control) -> Worker {
        Worker {
            id: 0,
            spec: Arc::new(LoadSpec::new(addr, "/").mode(ConnectionMode::Http2)),
            control,
            budget: Arc::default(),
            start: Instant::now(),
            deadline: Instant::now() + Duration::from_secs(10),
        }
    }

    /// hyper cancels the request unsent; the worker sends it once more on a new connection,
    /// or, when new connections are stopped, drops it unrecorded.
    #[tokio::test]
    async fn a_request_on_a_gone_connection_is_sent_once_more() -> anyhow::Result<()> {
        let addr = serve(2).await?;
        let stopped = Control::new();
        stopped.stop_new_connections();
        let (mut connection, mut trace) = (Some(gone(addr).await?), Trace::default());
        let answer = worker(addr, stopped)
            .exchange(&mut connection, None, &mut trace)
            .await;
        assert!(matches!(answer, Err(Failure::Unsent)));
        assert!(trace.previous_gone && !trace.new_connection);

        let (mut connection, mut trace) = (Some(gone(addr).await?), Trace::default());
        let answer = worker(addr, Control::new())
            .exchange(&mut connection, None, &mut trace)
            .await;
        assert!(matches!(answer, Ok(Answer { status: 200, .. })));
        assert!(trace.previous_gone && trace.new_connection);
        assert!(connection.is_some_and(|sender| !sender.is_closed()));
        Ok(())
    }
}
