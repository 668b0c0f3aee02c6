//! What the footprint report reads: process memory from /proc, the operator's reconcile
//! histogram from its /metrics, and the API server's audit log of writes.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};

/// (VmRSS, VmHWM) of a process in KiB, from /proc/<pid>/status.
pub fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("{name} missing in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU seconds (user + system) a process has used, from /proc/<pid>/stat.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("/proc/{pid}/stat has no field {}", i + 3))
    };
    let per_second = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    Ok((ticks(11)? + ticks(12)?) / per_second)
}

/// A scrape of the operator's /metrics.
pub struct Scrape(String);

impl Scrape {
    pub fn take(metrics_port: u16) -> Result<Self> {
        let out = std::process::Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{metrics_port}/metrics")])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "cannot scrape :{metrics_port}/metrics"
        );
        Ok(Self(String::from_utf8(out.stdout)?))
    }

    #[cfg(test)]
    pub fn from_text(text: &str) -> Self {
        Self(text.to_string())
    }

    /// Value of an unlabelled sample `name value`.
    pub fn value(&self, name: &str) -> f64 {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Cumulative buckets (upper bound, count) of histogram `name`.
    pub fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let prefix = format!("{name}_bucket{{le=\"");
        self.0
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(&prefix)?;
                let (le, count) = rest.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, count.split_whitespace().next()?.parse().ok()?))
            })
            .collect()
    }
}

/// Bucket counts observed between two scrapes.
pub fn bucket_delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|(le, n)| {
            let old = before.iter().find(|b| b.0 == *le).map_or(0.0, |b| b.1);
            (*le, n - old)
        })
        .collect()
}

/// The q-quantile of cumulative buckets, interpolated linearly inside the bucket it falls in
/// (as Prometheus' histogram_quantile does); `None` without observations. A quantile in the
/// +Inf bucket is infinite: all the histogram says is that it lies above the last bound.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(f64::INFINITY);
            }
            let inside = count - lower.1;
            let fraction = if inside > 0.0 {
                (rank - lower.1) / inside
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * fraction);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

/// Lines of the audit log so far (to read only what comes after).
pub fn audit_mark(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// Writes by `user` (the impersonated user of the operator's kubeconfig) since `mark`, counted
/// per "verb resource[/subresource]".
pub fn writes_since(path: &Path, mark: usize, user: &str) -> Result<BTreeMap<String, u64>> {
    let text = std::fs::read_to_string(path)?;
    let mut counts = BTreeMap::new();
    for line in text.lines().skip(mark) {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if event["impersonatedUser"]["username"] != user {
            continue;
        }
        let object = &event["objectRef"];
        let mut resource = object["resource"].as_str().unwrap_or("?").to_string();
        if let Some(sub) = object["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        let verb = event["verb"].as_str().unwrap_or("?");
        *counts.entry(format!("{verb} {resource}")).or_insert(0) += 1;
    }
    Ok(counts)
}

#[test]
fn quantiles_interpolate_inside_buckets() {
    let text = "x_bucket{le=\"0.01\"} 50\nx_bucket{le=\"0.1\"} 90\nx_bucket{le=\"1.0\"} 100\nx_bucket{le=\"+Inf\"} 100\n";
    let b = Scrape::from_text(text).buckets("x");
    assert_eq!(b.len(), 4);
    assert!((quantile(&b, 0.5).unwrap() - 0.01).abs() < 1e-9);
    assert!((quantile(&b, 0.7).unwrap() - 0.055).abs() < 1e-9);
    assert!((quantile(&b, 0.99).unwrap() - 0.91).abs() < 1e-9);
    assert_eq!(quantile(&bucket_delta(&b, &b), 0.5), None);
    let tail =
        Scrape::from_text("x_bucket{le=\"5.0\"} 98\nx_bucket{le=\"+Inf\"} 100\n").buckets("x");
    assert_eq!(quantile(&tail, 0.99), Some(f64::INFINITY));
}
