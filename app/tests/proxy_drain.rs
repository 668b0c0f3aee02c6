//! The drain proxy's proof: an app that knows nothing of the protocol (graceful-app with
//! `--shutdown-mode immediate`: it exits at once on SIGTERM, dropping whatever it serves) loses
//! no request behind the proxy, through the kubelet's sequence under keep-alive load; the same
//! app with no proxy in front, under the same load and sequence, does (the naive twin).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{App, eventually, get};
use loadgen::ConnectionMode;
use nix::sys::signal::Signal;

/// What one run of the sequence showed.
struct Run {
    short: loadgen::Report,
    long: loadgen::Report,
    prestop_called: Instant,
    readyz_turned_503: bool,
    upstream_errors: Option<String>,
    proxy_exit: Option<std::process::ExitStatus>,
}

fn load(
    target: SocketAddr,
    work_ms: u64,
    clients: usize,
    mode: ConnectionMode,
) -> loadgen::LoadSpec {
    loadgen::LoadSpec::new(target, format!("/?work_ms={work_ms}"))
        .mode(mode)
        .concurrency(clients)
        .max_requests(200_000)
        .duration(Duration::from_secs(30))
        .request_timeout(Duration::from_secs(10))
}

/// The kubelet's sequence, with the load generator in the role of the Service's proxies:
/// preStop on the admin port (the proxy's, or the naive app's own) holds 1 s; 300 ms in, no new
/// connection reaches the pod any more; when preStop returns, the app gets SIGTERM (and exits at
/// once), then the proxy gets its own, as a native sidecar does after the main containers.
async fn sequence(with_proxy: bool, mode: ConnectionMode) -> anyhow::Result<Run> {
    let mut app = App::start(&["--shutdown-mode", "immediate", "--drain-delay-ms", "1000"])?;
    let mut proxy = if with_proxy {
        Some(App::start_proxy(
            app.main,
            &["--drain-delay-ms", "1000", "--max-request-ms", "5000"],
        )?)
    } else {
        None
    };
    let (target, admin) = match &proxy {
        Some(proxy) => (proxy.main, proxy.admin),
        None => (app.main, app.admin),
    };
    anyhow::ensure!(
        eventually(Duration::from_secs(5), || {
            get(admin, "/readyz").is_ok_and(|response| response.status == 200)
        })
        .await,
        "never ready"
    );
    let control = loadgen::Control::new();
    let short = tokio::spawn(loadgen::run(load(target, 100, 100, mode), control.clone()));
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    // 2 s requests, started 0.5 s before preStop: in flight when the hold ends.
    let long = tokio::spawn(loadgen::run(load(target, 2_000, 10, mode), control.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let prestop_called = Instant::now();
    let prestop = tokio::task::spawn_blocking(move || get(admin, "/prestop"));
    let readyz_turned_503 = eventually(Duration::from_secs(5), || {
        get(admin, "/readyz").is_ok_and(|response| response.status == 503)
    })
    .await;
    tokio::time::sleep_until((prestop_called + Duration::from_millis(300)).into()).await;
    control.stop_new_connections();
    anyhow::ensure!(
        control
            .new_connections_settled(Duration::from_secs(10))
            .await,
        "connects still under way after 10 s"
    );
    let status = prestop.await??.status;
    anyhow::ensure!(status == 200, "preStop answered {status}");

    let upstream_errors = match &proxy {
        Some(proxy) => Some(
            get(proxy.admin, "/metrics")?
                .body
                .split(|&byte| byte == b'\n')
                .map(String::from_utf8_lossy)
                .find(|line| line.starts_with("graceful_proxy_upstream_errors_total"))
                .map(|line| line.into_owned())
                .unwrap_or_default(),
        ),
        None => None,
    };
    app.signal(Signal::SIGTERM)?;
    app.wait_exit(Duration::from_secs(10)).await?;
    let proxy_exit = match proxy.as_mut() {
        Some(proxy) => {
            proxy.signal(Signal::SIGTERM)?;
            Some(proxy.wait_exit(Duration::from_secs(10)).await?)
        }
        None => None,
    };
    control.stop();
    let short = tokio::time::timeout(Duration::from_secs(40), short).await???;
    let long = tokio::time::timeout(Duration::from_secs(40), long).await???;
    Ok(Run {
        short,
        long,
        prestop_called,
        readyz_turned_503,
        upstream_errors,
        proxy_exit,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_exits_at_once_loses_nothing_behind_the_proxy() -> anyhow::Result<()> {
    assert_lossless(sequence(true, ConnectionMode::KeepAlive).await?)
}

/// h2c clients in front, HTTP/1.1 to the app: GOAWAY moves the clients, the wait covers the
/// app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_lose_nothing_behind_the_proxy() -> anyhow::Result<()> {
    assert_lossless(sequence(true, ConnectionMode::Http2).await?)
}

fn assert_lossless(run: Run) -> anyhow::Result<()> {
    eprintln!("short:\n{}\nlong:\n{}", run.short, run.long);
    assert!(run.readyz_turned_503, "the proxy never turned unready");
    let hold_end = run.prestop_called + Duration::from_millis(1_000);
    assert!(
        run.long.in_flight_at(hold_end) > 0,
        "no long request in flight when the hold ended: the test proves nothing"
    );
    // That preStop returned only once the app had answered them shows as no error: the app
    // exits at once on SIGTERM, which cuts whatever it still serves (the twin below). The
    // clients' own clocks are no measure of it: they read the last bytes after the proxy has
    // them, later still on a busy machine.
    for report in [&run.short, &run.long] {
        assert_eq!(report.errors(), 0, "{:?}", report.errors_by_kind());
    }
    assert!(run.short.count() > 500, "too little load to prove anything");
    assert_eq!(
        run.upstream_errors.as_deref(),
        Some("graceful_proxy_upstream_errors_total 0")
    );
    assert_eq!(run.proxy_exit.and_then(|status| status.code()), Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_app_without_the_proxy_loses_requests() -> anyhow::Result<()> {
    let run = sequence(false, ConnectionMode::KeepAlive).await?;
    eprintln!("short:\n{}\nlong:\n{}", run.short, run.long);
    assert!(
        run.short.errors() + run.long.errors() > 0,
        "the naive twin lost nothing: the scenario cannot tell the proxy's worth"
    );
    Ok(())
}
