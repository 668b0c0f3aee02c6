//! Benchmark report (not a test): `cargo bench -p graceful-app --bench proxy_bench`.
//!
//! What the drain proxy costs, measured against the app alone in the same run: the same
//! graceful-app process is loaded directly and through a graceful-drain-proxy in front of it,
//! in alternating rounds, by the same in-process load generator; per round, the throughput ratio
//! (through the proxy / direct) and the p50 and p99 differences; the median over rounds is the
//! headline. The proxy's CPU time per forwarded request (from /proc) is the figure that does
//! not depend on how many cores the load generator, the app and the proxy share. Then the
//! proxy's resident memory, after the load and with 1,000 open client connections: what the
//! sidecar adds to each pod.
//!
//! Knobs (env): BENCH_SECONDS (per round, default 2), BENCH_CONCURRENCY (default 64),
//! BENCH_ROUNDS (default 7), BENCH_WORK_MS (comma-separated work times, default "0,5"),
//! BENCH_PROXY_THREADS (the proxy's `--worker-threads`, default its own default, 1).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::Duration;

use common::{App, connect, read_response, send_get};
use support::{env_u64, line, load_path, median, ms, vm_rss_kib};

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|arg| arg == "--bench") {
        println!(
            "proxy_bench: a report, not a test; run `cargo bench -p graceful-app --bench proxy_bench`"
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
    let works: Vec<u64> = std::env::var("BENCH_WORK_MS")
        .unwrap_or_else(|_| "0,5".to_owned())
        .split(',')
        .filter_map(|w| w.trim().parse().ok())
        .collect();
    let threads = std::env::var("BENCH_PROXY_THREADS").unwrap_or_else(|_| "1".to_owned());
    println!(
        "graceful-drain-proxy benchmark ({} cores), {concurrency} keep-alive clients, {seconds} s per round, {rounds} rounds, proxy threads {threads}",
        std::thread::available_parallelism()?.get()
    );
    let app = App::start_with_log_level(&[], "warn")?;
    let proxy_args = ["--worker-threads", threads.as_str()];
    let proxy = App::start_proxy_with_log_level(app.main, &proxy_args, "warn")?;
    for work in works {
        let path = format!("/?work_ms={work}");
        load_path(app.main, &path, 1, concurrency).await?;
        load_path(proxy.main, &path, 1, concurrency).await?;
        let (mut ratios, mut p50s, mut p99s) = (Vec::new(), Vec::new(), Vec::new());
        let (mut proxy_cpu, mut proxied_requests) = (Duration::ZERO, 0_usize);
        println!("\nwork {work} ms:");
        for round in 1..=rounds {
            let direct = load_path(app.main, &path, seconds, concurrency).await?;
            let cpu_before = cpu_time(proxy.pid().as_raw())?;
            let proxied = load_path(proxy.main, &path, seconds, concurrency).await?;
            proxy_cpu += cpu_time(proxy.pid().as_raw())?.saturating_sub(cpu_before);
            proxied_requests += proxied.count();
            println!("  round {round}: {}", line("app alone", &direct));
            println!("  round {round}: {}", line("via proxy", &proxied));
            anyhow::ensure!(
                direct.errors() == 0 && proxied.errors() == 0,
                "errors under load"
            );
            let (Some(d), Some(p)) = (direct.latency(), proxied.latency()) else {
                anyhow::bail!("no latency");
            };
            ratios.push(proxied.throughput() / direct.throughput());
            p50s.push(ms(p.p50) - ms(d.p50));
            p99s.push(ms(p.p99) - ms(d.p99));
        }
        println!(
            "  median over rounds: throughput ratio {:.3} (goal >= 0.9), p50 {:+.3} ms, p99 {:+.3} ms (goal <= +1 ms)",
            median(&mut ratios),
            median(&mut p50s),
            median(&mut p99s)
        );
        println!(
            "  proxy CPU time per forwarded request: {:.1} us",
            proxy_cpu.as_secs_f64() * 1e6 / proxied_requests.max(1) as f64
        );
    }
    memory(&proxy)
}

/// User plus system CPU time of a process so far (fields 14 and 15 of /proc/<pid>/stat, in
/// clock ticks of 1/100 s, the value on Linux for every common architecture).
fn cpu_time(pid: i32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after its ')' are plain.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("short stat"))?
            .parse()?)
    };
    // After ')' the fields start at 3 (state): utime is field 14, stime 15.
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

fn memory(proxy: &App) -> anyhow::Result<()> {
    const CONNECTIONS: usize = 1_000;
    let pid = proxy.pid().as_raw();
    std::thread::sleep(Duration::from_millis(300));
    let busy = vm_rss_kib(pid)?;
    let mut open = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let mut stream = connect(proxy.main)?;
        send_get(&mut stream, "/", false)?;
        read_response(&mut stream)?;
        open.push(stream);
    }
    std::thread::sleep(Duration::from_millis(300));
    let loaded = vm_rss_kib(pid)?;
    println!(
        "\nproxy VmRSS after the load rounds: {:.2} MiB; with {CONNECTIONS} open keep-alive connections: {:.2} MiB",
        busy as f64 / 1024.0,
        loaded as f64 / 1024.0
    );
    drop(open);
    Ok(())
}
