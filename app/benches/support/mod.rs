//! What both benchmark reports share: bounded keep-alive load, a one-line summary, VmRSS.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use loadgen::{Control, LoadSpec, Report};

/// Keep-alive load on `path` for `seconds`, bounded in count and time.
pub async fn load_path(
    target: SocketAddr,
    path: &str,
    seconds: u64,
    concurrency: usize,
) -> anyhow::Result<Report> {
    let spec = LoadSpec::new(target, path)
        .concurrency(concurrency)
        .max_requests(u64::MAX / 2)
        .duration(Duration::from_secs(seconds))
        .request_timeout(Duration::from_secs(10));
    loadgen::run(spec, Control::new()).await
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn line(name: &str, report: &Report) -> String {
    let stats = report.latency();
    format!(
        "{name:<12} {:>10.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  errors {}",
        report.throughput(),
        stats.map_or(f64::NAN, |s| ms(s.p50)),
        stats.map_or(f64::NAN, |s| ms(s.p99)),
        report.errors()
    )
}

pub fn vm_rss_kib(pid: i32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The middle value of `values` (sorted here).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}
