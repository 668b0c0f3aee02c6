//! Latency statistics: the figures of the experiment's table.

use std::time::Duration;

/// Summary of a set of latencies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencyStats {
    pub count: usize,
    pub min: Duration,
    pub max: Duration,
    pub mean: Duration,
    /// Population standard deviation.
    pub std_dev: Duration,
    pub p50: Duration,
    pub p99: Duration,
}

impl LatencyStats {
    /// Computes the summary; `None` for an empty set.
    pub fn from_latencies(latencies: &[Duration]) -> Option<Self> {
        if latencies.is_empty() {
            return None;
        }
        let mut sorted = latencies.to_vec();
        sorted.sort_unstable();
        let count = sorted.len();
        let secs: Vec<f64> = sorted.iter().map(Duration::as_secs_f64).collect();
        let mean = secs.iter().sum::<f64>() / count as f64;
        let variance = secs.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / count as f64;
        Some(Self {
            count,
            min: sorted[0],
            max: sorted[count - 1],
            mean: Duration::from_secs_f64(mean),
            std_dev: Duration::from_secs_f64(variance.sqrt()),
            p50: percentile(&sorted, 50.0),
            p99: percentile(&sorted, 99.0),
        })
    }
}

/// Nearest-rank percentile of an ascending, non-empty slice.
pub fn percentile(sorted: &[Duration], pct: f64) -> Duration {
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|v| Duration::from_millis(*v)).collect()
    }

    #[test]
    fn empty_has_no_stats() {
        assert_eq!(LatencyStats::from_latencies(&[]), None);
    }

    #[test]
    fn known_values() {
        let stats = LatencyStats::from_latencies(&ms(&[2, 4, 4, 4, 5, 5, 7, 9])).unwrap();
        assert_eq!(stats.count, 8);
        assert_eq!(stats.min, Duration::from_millis(2));
        assert_eq!(stats.max, Duration::from_millis(9));
        assert_eq!(stats.mean, Duration::from_millis(5));
        assert_eq!(stats.std_dev.as_millis(), 2);
        assert_eq!(stats.p50, Duration::from_millis(4));
        assert_eq!(stats.p99, Duration::from_millis(9));
    }

    #[test]
    fn percentiles_of_one_to_hundred() {
        let values: Vec<u64> = (1..=100).collect();
        let sorted = ms(&values);
        assert_eq!(percentile(&sorted, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&sorted, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&sorted, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&sorted, 0.0), Duration::from_millis(1));
    }
}
