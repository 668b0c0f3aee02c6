//! One worker: a loop of requests over (at most) one connection at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONNECTION, HOST};
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{SendRequest, handshake};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::control::{ConnectClaim, Control};
use crate::record::{ErrorKind, RequestRecord, classify, classify_io};
use crate::spec::{ConnectionMode, LoadSpec};

type Sender = SendRequest<Empty<Bytes>>;

pub(crate) struct Worker {
    pub id: usize,
    pub spec: Arc<LoadSpec>,
    pub control: Control,
    pub budget: Arc<AtomicU64>,
    pub deadline: Instant,
}

/// What a completed exchange told us.
struct Answer {
    status: u16,
    connection_close: bool,
}

impl Worker {
    pub async fn run(self) -> Vec<RequestRecord> {
        let mut records = Vec::new();
        let mut connection: Option<Sender> = None;
        loop {
            if self.control.is_stopped() || Instant::now() >= self.deadline {
                break;
            }
            // The server closed the connection between requests (EOF): reconnect, no error.
            // Nothing of the next request has been written yet, so this is not a retry.
            if let Some(sender) = connection.as_mut()
                && (sender.is_closed() || sender.ready().await.is_err())
            {
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
            let new_connection = connection.is_none();
            let exchange = tokio::time::timeout(
                self.spec.request_timeout,
                self.exchange(&mut connection, claim),
            )
            .await;
            let latency = start.elapsed();
            let mut record = RequestRecord {
                worker: self.id,
                start,
                latency,
                status: None,
                error: None,
                new_connection,
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
                Ok(Err(kind)) => {
                    record.error = Some(kind);
                    connection = None;
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
    ) -> Result<Answer, ErrorKind> {
        let mut sender = match connection.take() {
            Some(sender) => sender,
            None => self.connect().await?,
        };
        drop(claim);
        sender.ready().await.map_err(|error| classify(&error))?;
        let mut request = Request::get(self.spec.path.as_str());
        let host = match &self.spec.host {
            Some(host) => host.clone(),
            None => self.spec.target.to_string(),
        };
        request = request.header(HOST, host);
        if self.spec.mode == ConnectionMode::Close {
            request = request.header(CONNECTION, "close");
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|_| ErrorKind::Other)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| classify(&error))?;
        let status = response.status().as_u16();
        let connection_close = says_close(response.headers());
        response
            .into_body()
            .collect()
            .await
            .map_err(|error| classify(&error))?;
        *connection = Some(sender);
        Ok(Answer {
            status,
            connection_close,
        })
    }

    async fn connect(&self) -> Result<Sender, ErrorKind> {
        let stream =
            TcpStream::connect(self.spec.target)
                .await
                .map_err(|error| match classify_io(&error) {
                    ErrorKind::Other => ErrorKind::Connect,
                    kind => kind,
                })?;
        // Latency figures would be meaningless with Nagle's delay on small requests.
        let _ = stream.set_nodelay(true);
        let (sender, driver) = handshake(TokioIo::new(stream))
            .await
            .map_err(|error| classify(&error))?;
        tokio::spawn(async move {
            // Errors surface on the request that was in flight; nothing to add here.
            let _ = driver.await;
        });
        Ok(sender)
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
