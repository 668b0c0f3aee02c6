//! What a run measured, and the questions tests ask of it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use crate::record::{ErrorKind, RequestRecord};
use crate::stats::LatencyStats;

/// Every request of one run, in start order.
#[derive(Clone, Debug)]
pub struct Report {
    pub started: Instant,
    pub finished: Instant,
    pub records: Vec<RequestRecord>,
}

/// One bucket of the timeline, by request start time.
#[derive(Clone, Debug, PartialEq)]
pub struct TimelineSample {
    /// Start of the bucket, from the start of the run.
    pub offset: Duration,
    pub requests: usize,
    pub errors: usize,
    /// Latency stats of the successful requests that started in this bucket.
    pub latency: Option<LatencyStats>,
}

impl Report {
    pub fn new(started: Instant, finished: Instant, records: Vec<RequestRecord>) -> Self {
        Self {
            started,
            finished,
            records,
        }
    }

    pub fn count(&self) -> usize {
        self.records.len()
    }

    pub fn errors(&self) -> usize {
        self.records.iter().filter(|r| !r.is_ok()).count()
    }

    pub fn errors_by_kind(&self) -> BTreeMap<ErrorKind, usize> {
        let mut by_kind = BTreeMap::new();
        for kind in self.records.iter().filter_map(|r| r.error) {
            *by_kind.entry(kind).or_insert(0) += 1;
        }
        by_kind
    }

    /// Latency statistics over the successful requests.
    pub fn latency(&self) -> Option<LatencyStats> {
        let latencies: Vec<Duration> = self
            .records
            .iter()
            .filter(|r| r.is_ok())
            .map(|r| r.latency)
            .collect();
        LatencyStats::from_latencies(&latencies)
    }

    pub fn elapsed(&self) -> Duration {
        self.finished.saturating_duration_since(self.started)
    }

    /// Successful requests per second over the whole run.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed().as_secs_f64();
        if secs > 0.0 {
            (self.count() - self.errors()) as f64 / secs
        } else {
            0.0
        }
    }

    /// Requests that started before `instant` and failed. Empty means "every request started
    /// before T completed": a run records every request it started, in flight ones included.
    pub fn failures_started_before(&self, instant: Instant) -> Vec<&RequestRecord> {
        self.records
            .iter()
            .filter(|r| r.start < instant && !r.is_ok())
            .collect()
    }

    /// Requests that had started but not finished at `instant`.
    pub fn in_flight_at(&self, instant: Instant) -> usize {
        self.records
            .iter()
            .filter(|r| r.start < instant && r.end() > instant)
            .count()
    }

    /// Per-bucket counts and latencies, by start time, for plotting.
    pub fn timeline(&self, bucket: Duration) -> Vec<TimelineSample> {
        if bucket.is_zero() {
            return Vec::new();
        }
        let mut buckets: BTreeMap<u64, (usize, usize, Vec<Duration>)> = BTreeMap::new();
        for record in &self.records {
            let offset = record.start.saturating_duration_since(self.started);
            let index = (offset.as_nanos() / bucket.as_nanos()) as u64;
            let entry = buckets.entry(index).or_default();
            entry.0 += 1;
            if record.is_ok() {
                entry.2.push(record.latency);
            } else {
                entry.1 += 1;
            }
        }
        buckets
            .into_iter()
            .map(|(index, (requests, errors, latencies))| TimelineSample {
                offset: bucket.saturating_mul(u32::try_from(index).unwrap_or(u32::MAX)),
                requests,
                errors,
                latency: LatencyStats::from_latencies(&latencies),
            })
            .collect()
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors = self.errors();
        let pct = if self.count() > 0 {
            100.0 * errors as f64 / self.count() as f64
        } else {
            0.0
        };
        writeln!(f, "requests:    {}", self.count())?;
        writeln!(f, "errors:      {errors} ({pct:.3} %)")?;
        for (kind, count) in self.errors_by_kind() {
            writeln!(f, "  {kind}: {count}")?;
        }
        writeln!(f, "elapsed:     {:.3} s", self.elapsed().as_secs_f64())?;
        writeln!(f, "throughput:  {:.1} req/s", self.throughput())?;
        match self.latency() {
            Some(stats) => {
                writeln!(f, "latency avg: {:.3} ms", ms(stats.mean))?;
                writeln!(f, "latency min: {:.3} ms", ms(stats.min))?;
                writeln!(f, "latency max: {:.3} ms", ms(stats.max))?;
                writeln!(f, "latency sd:  {:.3} ms", ms(stats.std_dev))?;
                writeln!(f, "latency p50: {:.3} ms", ms(stats.p50))?;
                write!(f, "latency p99: {:.3} ms", ms(stats.p99))
            }
            None => write!(f, "latency:     no successful request"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(
        start: Instant,
        offset_ms: u64,
        latency_ms: u64,
        error: Option<ErrorKind>,
    ) -> RequestRecord {
        RequestRecord {
            worker: 0,
            start: start + Duration::from_millis(offset_ms),
            latency: Duration::from_millis(latency_ms),
            status: error.is_none().then_some(200),
            error,
            new_connection: false,
            connection_close: false,
        }
    }

    #[test]
    fn questions_about_an_instant() {
        let t0 = Instant::now();
        let report = Report::new(
            t0,
            t0 + Duration::from_millis(3_000),
            vec![
                record(t0, 0, 100, None),
                record(t0, 500, 1_000, None),
                record(t0, 1_200, 10, Some(ErrorKind::ConnectRefused)),
                record(t0, 2_100, 10, Some(ErrorKind::Reset)),
            ],
        );
        let t = t0 + Duration::from_millis(1_000);
        assert!(report.failures_started_before(t).is_empty());
        assert_eq!(report.in_flight_at(t), 1);
        let later = t0 + Duration::from_millis(2_000);
        assert_eq!(report.failures_started_before(later).len(), 1);
        assert_eq!(report.errors(), 2);
        assert_eq!(report.errors_by_kind()[&ErrorKind::Reset], 1);
        let timeline = report.timeline(Duration::from_secs(1));
        assert_eq!(timeline.len(), 3);
        assert_eq!(timeline[0].requests, 2);
        assert_eq!(timeline[1].errors, 1);
        assert_eq!(timeline[2].offset, Duration::from_secs(2));
        assert_eq!(report.latency().unwrap().count, 2);
    }
}
