//! `loadgen`: run a bounded load against one address and print the report.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use loadgen::{ConnectionMode, Control, LoadSpec};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    KeepAlive,
    Close,
    /// h2c with prior knowledge: one HTTP/2 connection per worker, one stream at a time.
    #[value(name = "h2")]
    Http2,
}

/// Bounded HTTP load (HTTP/1.1, or h2c): stops after --requests or --duration-ms, whichever
/// comes first.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about)]
struct Args {
    /// Address to load, e.g. 127.0.0.1:8080.
    #[arg(long)]
    target: SocketAddr,
    /// Path and query of every request.
    #[arg(long, default_value = "/")]
    path: String,
    /// Concurrent workers (one connection each).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    concurrency: u64,
    /// Most requests in total.
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// Most time, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    duration_ms: u64,
    /// Reuse HTTP/1.1 connections (keep-alive), open one per request (close), or use one h2c
    /// connection per worker (h2).
    #[arg(long, value_enum, default_value_t = Mode::KeepAlive)]
    mode: Mode,
    /// Bound on one request, in milliseconds.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// Start the workers spread evenly over this many milliseconds instead of all at once.
    #[arg(long, default_value_t = 0)]
    ramp_ms: u64,
    /// Also print one line per second: offset, requests, errors, p50 ms, p99 ms.
    #[arg(long)]
    timeline: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let spec = LoadSpec::new(args.target, args.path)
        .concurrency(usize::try_from(args.concurrency)?)
        .max_requests(args.requests)
        .duration(Duration::from_millis(args.duration_ms))
        .request_timeout(Duration::from_millis(args.timeout_ms))
        .ramp(Duration::from_millis(args.ramp_ms))
        .mode(match args.mode {
            Mode::KeepAlive => ConnectionMode::KeepAlive,
            Mode::Close => ConnectionMode::Close,
            Mode::Http2 => ConnectionMode::Http2,
        });
    let report = loadgen::run(spec, Control::new()).await?;
    println!("{report}");
    if args.timeline {
        println!("second requests errors p50_ms p99_ms");
        for sample in report.timeline(Duration::from_secs(1)) {
            let (p50, p99) = sample.latency.map_or((f64::NAN, f64::NAN), |s| {
                (s.p50.as_secs_f64() * 1e3, s.p99.as_secs_f64() * 1e3)
            });
            println!(
                "{} {} {} {p50:.3} {p99:.3}",
                sample.offset.as_secs(),
                sample.requests,
                sample.errors
            );
        }
    }
    Ok(())
}
