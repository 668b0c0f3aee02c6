//! The load, through the workspace's `loadgen` (keep-alive workers, every request recorded, no
//! retries), and the table's figures computed from its records.
//!
//! This module only converts: loadgen's records become [`Sample`]s on the timeline's clock
//! (milliseconds since the load started, serializable for the JSON), and loadgen's latency
//! statistics become the table's [`Summary`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use loadgen::{Control, LatencyStats, LoadSpec, RequestRecord};
use serde::Serialize;

/// One request as the client saw it, on the timeline's clock.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Start, in milliseconds since the load started.
    pub start_ms: f64,
    /// Time to the complete response (or to the failure), connect included.
    pub latency_ms: f64,
    /// Why it failed (loadgen's error kind); `None` for a complete 2xx response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the request opened a new connection (its latency includes the connect), so a
    /// slow request can be told apart from a slow reconnect.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub new_connection: bool,
}

impl Sample {
    fn of(record: &RequestRecord, origin: Instant) -> Sample {
        Sample {
            start_ms: ms(record.start.saturating_duration_since(origin)),
            latency_ms: ms(record.latency),
            error: record.error.map(|e| e.to_string()),
            new_connection: record.new_connection,
        }
    }
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
    /// Hard bound on requests started, over all clients.
    pub max_requests: u64,
    /// Hard bound on the load's duration, whatever the caller's stop does.
    pub max_duration: Duration,
    /// Bound on one request (connect, send, full response).
    pub request_timeout: Duration,
    /// The clients start spread evenly over this long (see [`LoadSpec::ramp`]).
    pub ramp: Duration,
}

/// Runs the load until `control.stop()`, `max_duration` or `max_requests`; sample times count
/// from `origin`.
pub async fn run(cfg: LoadConfig, origin: Instant, control: Control) -> anyhow::Result<LoadResult> {
    let spec = LoadSpec::new(cfg.target, cfg.path)
        .concurrency(cfg.clients)
        .max_requests(cfg.max_requests)
        .duration(cfg.max_duration)
        .request_timeout(cfg.request_timeout)
        .ramp(cfg.ramp);
    let report = loadgen::run(spec, control).await?;
    Ok(LoadResult {
        samples: report
            .records
            .iter()
            .map(|r| Sample::of(r, origin))
            .collect(),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
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
    pub error_kinds: BTreeMap<String, u64>,
}

impl Summary {
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Summary {
        let mut ok = Vec::new();
        let mut error_kinds = BTreeMap::new();
        let mut requests = 0u64;
        for s in samples {
            requests += 1;
            match &s.error {
                None => ok.push(Duration::from_secs_f64(s.latency_ms / 1000.0)),
                Some(e) => *error_kinds.entry(e.clone()).or_insert(0) += 1,
            }
        }
        let stats = LatencyStats::from_latencies(&ok);
        Summary {
            requests,
            errors: requests - ok.len() as u64,
            average_ms: stats.map(|s| ms(s.mean)),
            min_ms: stats.map(|s| ms(s.min)),
            max_ms: stats.map(|s| ms(s.max)),
            std_dev_ms: stats.map(|s| ms(s.std_dev)),
            p99_ms: stats.map(|s| ms(s.p99)),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn s(latency_ms: f64, error: Option<&str>) -> Sample {
        Sample {
            start_ms: 0.0,
            latency_ms,
            error: error.map(str::to_string),
            new_connection: false,
        }
    }

    #[test]
    fn summary_counts_errors_apart_from_latency() {
        let sum = Summary::of(&vec![
            s(1000.0, None),
            s(1002.0, None),
            s(3.0, Some("connect_refused")),
        ]);
        assert_eq!(sum.requests, 3);
        assert_eq!(sum.errors, 1);
        assert_eq!(sum.min_ms, Some(1000.0));
        assert_eq!(sum.max_ms, Some(1002.0));
        assert!((sum.average_ms.unwrap() - 1001.0).abs() < 1e-6);
        assert!((sum.std_dev_ms.unwrap() - 1.0).abs() < 1e-6);
        assert_eq!(sum.error_kinds.get("connect_refused"), Some(&1));
    }
}
