//! Benchmark report (not a test): `cargo bench -p graceful-app --bench app_bench`.
//!
//! In one run, on this machine:
//! 1. throughput at work time 0 of the release app versus a bare hyper hello-world, both as
//!    separate processes loaded by the same in-process load generator (loadgen); the ratio,
//!    p50 and p99 of both;
//! 2. drain time after SIGTERM with requests in flight whose remaining work is known, against
//!    the longest remainder;
//! 3. resident memory (VmRSS) idle and with 1,000 open keep-alive connections.
//!
//! Knobs (env): BENCH_SECONDS (load per round, default 2), BENCH_CONCURRENCY (default 64),
//! BENCH_ROUNDS (rounds per server, alternating, default 7), BENCH_ONLY (throughput, drain or
//! memory: run one part only).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::{App, connect, read_response, send_get};
use loadgen::Report;
use nix::sys::signal::Signal;
use support::{env_u64, line, load_path, ms, vm_rss_kib};

const HELLO_ROLE: &str = "GRACEFUL_BENCH_ROLE";

fn main() -> anyhow::Result<()> {
    if std::env::var(HELLO_ROLE).as_deref() == Ok("hello") {
        return hello::serve();
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: skip the long run then.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!(
            "app_bench: a report, not a test; run `cargo bench -p graceful-app --bench app_bench`"
        );
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(report())
}

async fn report() -> anyhow::Result<()> {
    let seconds = env_u64("BENCH_SECONDS", 2);
    let concurrency = env_u64("BENCH_CONCURRENCY", 64) as usize;
    let rounds = env_u64("BENCH_ROUNDS", 7);
    println!(
        "graceful-app benchmark ({} cores)",
        std::thread::available_parallelism()?.get()
    );
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wanted = |part: &str| only.is_empty() || only == part;
    if wanted("throughput") {
        println!();
        throughput(seconds, concurrency, rounds).await?;
    }
    if wanted("drain") {
        println!();
        drain_time()?;
    }
    if wanted("memory") {
        println!();
        memory()?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1. Throughput

async fn load(target: SocketAddr, seconds: u64, concurrency: usize) -> anyhow::Result<Report> {
    load_path(target, "/", seconds, concurrency).await
}

async fn throughput(seconds: u64, concurrency: usize, rounds: u64) -> anyhow::Result<()> {
    println!(
        "1. throughput, work 0, {concurrency} keep-alive clients, {seconds} s per round, {rounds} round(s) each, alternating"
    );
    let app = App::start_with_log_level(&["--work-ms", "0"], "warn")?;
    let hello = hello::start()?;
    // Warm both up (connections, caches, CPU frequency).
    load(app.main, 1, concurrency).await?;
    load(hello.addr, 1, concurrency).await?;
    let mut app_runs = Vec::new();
    let mut hello_runs = Vec::new();
    for round in 1..=rounds {
        let a = load(app.main, seconds, concurrency).await?;
        println!("  round {round}: {}", line("graceful-app", &a));
        let h = load(hello.addr, seconds, concurrency).await?;
        println!("  round {round}: {}", line("bare hyper", &h));
        app_runs.push(a);
        hello_runs.push(h);
    }
    let best = |runs: &[Report]| -> anyhow::Result<Report> {
        runs.iter()
            .max_by(|a, b| a.throughput().total_cmp(&b.throughput()))
            .cloned()
            .context("no rounds")
    };
    let best_app = best(&app_runs)?;
    let best_hello = best(&hello_runs)?;
    // Each round pairs two back-to-back runs, so the ratio per round cancels most of the drift
    // of a shared machine; the median of those ratios is the headline figure.
    let mut ratios: Vec<f64> = app_runs
        .iter()
        .zip(&hello_runs)
        .map(|(a, h)| a.throughput() / h.throughput())
        .collect();
    ratios.sort_by(f64::total_cmp);
    println!("  best:    {}", line("graceful-app", &best_app));
    println!("  best:    {}", line("bare hyper", &best_hello));
    println!(
        "  ratio graceful-app / bare hyper: median of per-round ratios {:.3} (min {:.3}, max {:.3}), best vs best {:.3} (goal >= 0.9)",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1],
        best_app.throughput() / best_hello.throughput()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Drain time

fn drain_time() -> anyhow::Result<()> {
    const WORK_MS: [u64; 3] = [300, 600, 900];
    const SIGTERM_AFTER: Duration = Duration::from_millis(200);
    const RUNS: usize = 5;
    println!(
        "2. drain time: requests of {WORK_MS:?} ms in flight, SIGTERM {} ms after they start, {RUNS} runs",
        SIGTERM_AFTER.as_millis()
    );
    let mut overheads = Vec::new();
    for run in 1..=RUNS {
        let mut app = App::start_with_log_level(
            &["--drain-delay-ms", "0", "--shutdown-timeout-ms", "5000"],
            "warn",
        )?;
        let mut idle = Vec::new();
        for _ in 0..10 {
            let mut stream = connect(app.main)?;
            send_get(&mut stream, "/", false)?;
            read_response(&mut stream)?;
            idle.push(stream);
        }
        let mut busy: Vec<(TcpStream, Instant, u64)> = Vec::new();
        for work in WORK_MS {
            let mut stream = connect(app.main)?;
            let sent = Instant::now();
            send_get(&mut stream, &format!("/?work_ms={work}"), false)?;
            busy.push((stream, sent, work));
        }
        std::thread::sleep(SIGTERM_AFTER);
        let sigterm_at = Instant::now();
        app.signal(Signal::SIGTERM)?;
        let status = app.wait_after_signal()?;
        let drain = sigterm_at.elapsed();
        let longest_remainder = busy
            .iter()
            .map(|(_, sent, work)| {
                (*sent + Duration::from_millis(*work)).saturating_duration_since(sigterm_at)
            })
            .max()
            .unwrap_or_default();
        for (stream, _, work) in &mut busy {
            let response = read_response(stream)?;
            if response.status != 200 {
                bail!("request of {work} ms got {}", response.status);
            }
        }
        if !status.success() {
            bail!("app exited with {status}");
        }
        let overhead = drain.saturating_sub(longest_remainder);
        println!(
            "  run {run}: drain {:>7.1} ms, longest remainder {:>7.1} ms, overhead {:>5.1} ms",
            ms(drain),
            ms(longest_remainder),
            ms(overhead)
        );
        overheads.push(overhead);
    }
    overheads.sort();
    println!(
        "  overhead over the longest remainder: median {:.1} ms, max {:.1} ms (goal <= 50 ms)",
        ms(overheads[overheads.len() / 2]),
        ms(overheads[overheads.len() - 1])
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Memory

fn memory() -> anyhow::Result<()> {
    const CONNECTIONS: usize = 1_000;
    println!("3. resident memory (VmRSS)");
    let app = App::start_with_log_level(&[], "warn")?;
    let pid = app.pid().as_raw();
    // One request first, so the idle figure includes the first-request allocations.
    common::get(app.main, "/")?;
    std::thread::sleep(Duration::from_millis(300));
    let idle = vm_rss_kib(pid)?;
    println!(
        "  idle:                        {:>8.2} MiB (goal < 10 MiB)",
        idle as f64 / 1024.0
    );
    let mut open = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let mut stream = connect(app.main)?;
        send_get(&mut stream, "/", false)?;
        read_response(&mut stream)?;
        open.push(stream);
    }
    std::thread::sleep(Duration::from_millis(300));
    let loaded = vm_rss_kib(pid)?;
    println!(
        "  with {CONNECTIONS} open keep-alive conns: {:>8.2} MiB ({:.1} KiB per connection)",
        loaded as f64 / 1024.0,
        (loaded.saturating_sub(idle)) as f64 / CONNECTIONS as f64
    );
    drop(open);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The bare hyper hello-world, run as a child process of this bench binary.

mod hello {
    use super::*;

    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;

    pub struct Hello {
        child: Child,
        pub addr: SocketAddr,
    }

    impl Drop for Hello {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    pub fn start() -> anyhow::Result<Hello> {
        let mut child = Command::new(std::env::current_exe()?)
            .env(HELLO_ROLE, "hello")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first)?;
        let addr = first
            .trim()
            .strip_prefix("hello listening ")
            .context("no listening line")?
            .parse()?;
        Ok(Hello { child, addr })
    }

    /// The simplest correct hyper server: same body, no limits, no draining, no metrics.
    pub fn serve() -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            println!("hello listening {}", listener.local_addr()?);
            let body = Bytes::from_static(b"hello from graceful-app\n");
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                let body = body.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |_request: Request<hyper::body::Incoming>| {
                        let body = body.clone();
                        async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
    }
}
