//! Load through the service proxy: many concurrent keep-alive clients, each looping `GET /`,
//! bounded in request count and time, recording every request (start, latency, error) on the
//! timeline's clock so the plot can line requests up with the rollout's events.
//!
//! Client behaviour is that of an ordinary HTTP/1.1 keep-alive client: it reuses its connection
//! until the server says `Connection: close` or the connection is found closed while idle (then it
//! opens a new one, through the proxy, to whatever endpoint the proxy picks). A request that was
//! sent and got no complete 2xx response is an error; nothing is retried.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::SendRequest;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// One request as the client saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Start, in milliseconds since the load started.
    pub start_ms: f64,
    /// Time to the complete response (or to the failure), connect included.
    pub latency_ms: f64,
    /// Why it failed; `None` for a complete 2xx response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    pub samples: Vec<Sample>,
}

/// What to send and how much.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: SocketAddr,
    pub path: String,
    pub clients: usize,
    /// Hard bound on requests sent, over all clients.
    pub max_requests: u64,
    /// Hard bound on the load's duration, whatever the stop signal does.
    pub max_duration: Duration,
    /// Bound on one request (connect, send, full response).
    pub request_timeout: Duration,
}

/// Live counters, read by the progress display.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    pub errors: AtomicU64,
}

/// Runs the load until `stop` turns true, `max_duration` passes or `max_requests` were sent.
/// Sample times count from `origin`.
pub async fn run(
    cfg: LoadConfig,
    origin: Instant,
    stop: watch::Receiver<bool>,
    counters: Arc<Counters>,
) -> LoadResult {
    let deadline = tokio::time::Instant::now() + cfg.max_duration;
    let cfg = Arc::new(cfg);
    let mut tasks = Vec::with_capacity(cfg.clients);
    for _ in 0..cfg.clients {
        let cfg = cfg.clone();
        let counters = counters.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(client(cfg, origin, deadline, stop, counters)));
    }
    let mut samples = Vec::new();
    for t in tasks {
        if let Ok(mut s) = t.await {
            samples.append(&mut s);
        }
    }
    samples.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
    LoadResult { samples }
}

async fn client(
    cfg: Arc<LoadConfig>,
    origin: Instant,
    deadline: tokio::time::Instant,
    stop: watch::Receiver<bool>,
    counters: Arc<Counters>,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut conn: Option<SendRequest<Empty<Bytes>>> = None;
    loop {
        if *stop.borrow() || tokio::time::Instant::now() >= deadline {
            break;
        }
        if counters.sent.fetch_add(1, Ordering::Relaxed) >= cfg.max_requests {
            counters.sent.fetch_sub(1, Ordering::Relaxed);
            break;
        }
        // An idle connection the server closed is not a failed request: reconnect first.
        if let Some(c) = conn.as_mut()
            && c.ready().await.is_err()
        {
            conn = None;
        }
        let started = Instant::now();
        let outcome =
            match tokio::time::timeout(cfg.request_timeout, request(&cfg, &mut conn)).await {
                Ok(r) => r,
                Err(_) => {
                    conn = None;
                    Err("timeout".to_string())
                }
            };
        let sample = Sample {
            start_ms: started.duration_since(origin).as_secs_f64() * 1000.0,
            latency_ms: started.elapsed().as_secs_f64() * 1000.0,
            error: outcome.err(),
        };
        if sample.error.is_some() {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            conn = None;
            // Do not hammer a refusing proxy in a tight loop; a real client backs off too.
            tokio::time::sleep(Duration::from_millis(10)).await;
        } else {
            counters.ok.fetch_add(1, Ordering::Relaxed);
        }
        samples.push(sample);
    }
    samples
}

/// One request on the client's connection, opening one if needed. On `Connection: close` the
/// connection is dropped after the response.
async fn request(
    cfg: &LoadConfig,
    conn: &mut Option<SendRequest<Empty<Bytes>>>,
) -> Result<(), String> {
    if conn.is_none() {
        let stream = TcpStream::connect(cfg.target)
            .await
            .map_err(|e| format!("connect: {}", e.kind()))?;
        let _ = stream.set_nodelay(true);
        let io = hyper_util::rt::TokioIo::new(stream);
        let (sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        *conn = Some(sender);
    }
    let Some(sender) = conn.as_mut() else {
        return Err("no connection".into());
    };
    let req = hyper::Request::get(cfg.path.as_str())
        .header(hyper::header::HOST, cfg.target.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender.send_request(req).await.map_err(|e| {
        let kind = if e.is_incomplete_message() {
            "closed before response"
        } else {
            "send"
        };
        format!("{kind}: {e}")
    })?;
    let status = resp.status();
    let close = resp
        .headers()
        .get(hyper::header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let body = resp.into_body().collect().await;
    if close {
        *conn = None;
    }
    body.map_err(|e| format!("body: {e}"))?;
    if !status.is_success() {
        *conn = None;
        return Err(format!("status {}", status.as_u16()));
    }
    Ok(())
}

/// The post's figures, plus p99. Latency figures are over successful requests.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    pub average_ms: Option<f64>,
    pub min_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub std_dev_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Error kinds and their counts.
    pub error_kinds: std::collections::BTreeMap<String, u64>,
}

impl Summary {
    pub fn of(samples: &[Sample]) -> Summary {
        let mut ok: Vec<f64> = samples
            .iter()
            .filter(|s| s.error.is_none())
            .map(|s| s.latency_ms)
            .collect();
        ok.sort_by(f64::total_cmp);
        let mut error_kinds = std::collections::BTreeMap::new();
        for e in samples.iter().filter_map(|s| s.error.as_deref()) {
            // The part before the first ':' names the kind; the rest is detail.
            let kind = e.split(':').next().unwrap_or(e).to_string();
            *error_kinds.entry(kind).or_insert(0) += 1;
        }
        let n = ok.len() as f64;
        let (average_ms, std_dev_ms) = if ok.is_empty() {
            (None, None)
        } else {
            let mean = ok.iter().sum::<f64>() / n;
            let var = ok.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            (Some(mean), Some(var.sqrt()))
        };
        Summary {
            requests: samples.len() as u64,
            errors: samples.len() as u64 - ok.len() as u64,
            average_ms,
            min_ms: ok.first().copied(),
            max_ms: ok.last().copied(),
            std_dev_ms,
            p99_ms: percentile(&ok, 99.0),
            error_kinds,
        }
    }

    pub fn error_percent(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 * 100.0 / self.requests as f64
        }
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(latency_ms: f64, error: Option<&str>) -> Sample {
        Sample {
            start_ms: 0.0,
            latency_ms,
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn summary_counts_errors_apart_from_latency() {
        let sum = Summary::of(&[
            s(1000.0, None),
            s(1002.0, None),
            s(3.0, Some("connect: ConnectionRefused")),
        ]);
        assert_eq!(sum.requests, 3);
        assert_eq!(sum.errors, 1);
        assert_eq!(sum.min_ms, Some(1000.0));
        assert_eq!(sum.max_ms, Some(1002.0));
        assert_eq!(sum.average_ms, Some(1001.0));
        assert_eq!(sum.std_dev_ms, Some(1.0));
        assert_eq!(sum.error_kinds.get("connect"), Some(&1));
    }

    #[test]
    fn nearest_rank_p99() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[5.0], 99.0), Some(5.0));
        assert_eq!(percentile(&[], 99.0), None);
    }
}
