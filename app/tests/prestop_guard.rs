//! The preStop path's guards, seen from outside: the token (a stranger cannot take the pod out
//! of its Service), the revert (a drain that no SIGTERM follows ends), and the configurable
//! admin paths.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::{App, BIN, RawResponse, connect, get, read_response, send_get};
use nix::sys::signal::Signal;

const TOKEN: &str = "s3cret-Token_0f9a";
const HEADER: &str = "X-Graceful-Prestop-Token";

/// One request with extra headers on a fresh connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<RawResponse> {
    let mut stream = connect(addr)?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    if method == "POST" {
        head.push_str("Content-Length: 0\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.flush()?;
    read_response(&mut stream)
}

/// The value of one unlabelled metric, read from the admin listener.
pub fn metric(admin: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let text = String::from_utf8(get(admin, "/metrics")?.body)?;
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .with_context(|| format!("no {name} in:\n{text}"))?;
    Ok(value.trim().parse()?)
}

#[test]
fn prestop_without_the_token_is_refused_and_changes_nothing() -> anyhow::Result<()> {
    let app = App::start(&["--prestop-token", TOKEN, "--drain-delay-ms", "100"])?;
    let attempts: [(&str, &[(&str, &str)]); 4] = [
        ("GET", &[]),
        ("POST", &[]),
        ("GET", &[(HEADER, "s3cret-Token_0f9")]),
        ("POST", &[(HEADER, "wrong")]),
    ];
    for (method, headers) in attempts {
        let response = request(app.admin, method, "/prestop", headers)?;
        assert_eq!(response.status, 403, "{method} {headers:?} not refused");
        // The pod stays ready and keeps its keep-alive connections.
        assert_eq!(
            get(app.admin, "/readyz")?.status,
            200,
            "{method} {headers:?}"
        );
        assert!(!keep_alive_says_close(&app)?, "{method} {headers:?}");
    }
    assert_eq!(metric(app.admin, "graceful_prestop_refused_total")?, 4.0);
    assert_eq!(metric(app.admin, "graceful_ready")?, 1.0);
    assert_eq!(metric(app.admin, "graceful_draining")?, 0.0);
    // Probes and metrics stay readable without a token.
    assert_eq!(get(app.admin, "/livez")?.status, 200);

    let accepted = request(app.admin, "POST", "/prestop", &[(HEADER, TOKEN)])?;
    assert_eq!(accepted.status, 200);
    assert_eq!(get(app.admin, "/readyz")?.status, 503);
    assert!(keep_alive_says_close(&app)?);
    assert_eq!(metric(app.admin, "graceful_prestop_refused_total")?, 4.0);

    let log = app.log();
    assert!(!log.contains(TOKEN), "the token was logged:\n{log}");
    assert!(!log.contains("unauthenticated"), "{log}");
    Ok(())
}

#[test]
fn without_a_token_prestop_is_open_and_the_app_says_so_once() -> anyhow::Result<()> {
    let app = App::start(&["--drain-delay-ms", "100"])?;
    assert_eq!(get(app.admin, "/prestop")?.status, 200);
    assert_eq!(get(app.admin, "/readyz")?.status, 503);
    let log = app.log();
    let warnings = log
        .lines()
        .filter(|line| line.contains("preStop path is unauthenticated"))
        .count();
    assert_eq!(warnings, 1, "{log}");
    Ok(())
}

#[test]
fn help_hides_the_token_value() -> anyhow::Result<()> {
    let output = Command::new(BIN)
        .arg("--help")
        .env("GRACEFUL_PRESTOP_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .output()?;
    let help = String::from_utf8(output.stdout)?;
    assert!(output.status.success(), "{help}");
    assert!(help.contains("GRACEFUL_PRESTOP_TOKEN"), "{help}");
    assert!(!help.contains(TOKEN), "--help shows the token:\n{help}");
    Ok(())
}

#[test]
fn admin_paths_follow_the_flags() -> anyhow::Result<()> {
    let app = App::start(&[
        "--drain-delay-ms",
        "100",
        "--prestop-path",
        "/hooks/pre-stop",
        "--readiness-path",
        "/health/ready",
        "--liveness-path",
        "/health/live",
    ])?;
    for old in ["/prestop", "/readyz", "/livez"] {
        assert_eq!(get(app.admin, old)?.status, 404, "{old} still routed");
    }
    assert_eq!(get(app.admin, "/health/live")?.status, 200);
    assert_eq!(get(app.admin, "/health/ready")?.status, 200);
    assert_eq!(get(app.admin, "/metrics")?.status, 200);
    assert_eq!(
        request(app.admin, "POST", "/health/ready", &[])?.status,
        405
    );
    assert_eq!(
        request(app.admin, "DELETE", "/hooks/pre-stop", &[])?.status,
        405
    );
    assert_eq!(request(app.admin, "POST", "/metrics", &[])?.status, 405);
    assert_eq!(get(app.admin, "/health/ready")?.status, 200, "405 drained");

    assert_eq!(get(app.admin, "/hooks/pre-stop")?.status, 200);
    assert_eq!(get(app.admin, "/health/ready")?.status, 503);
    Ok(())
}

/// Whether a keep-alive request to the main listener is told to close its connection (the
/// drain's signal to clients). `get` asks for `Connection: close` itself, so it cannot tell.
fn keep_alive_says_close(app: &App) -> anyhow::Result<bool> {
    let mut stream = connect(app.main)?;
    send_get(&mut stream, "/", false)?;
    Ok(read_response(&mut stream)?.says_close())
}

/// Calls the preStop path on a thread (it holds for the drain delay).
fn prestop_in_background(app: &App) -> JoinHandle<anyhow::Result<RawResponse>> {
    let admin = app.admin;
    std::thread::spawn(move || get(admin, "/prestop"))
}

#[test]
fn a_drain_that_no_sigterm_follows_turns_ready_again_counted_from_the_last_call()
-> anyhow::Result<()> {
    let mut app = App::start(&["--drain-delay-ms", "300", "--prestop-revert-ms", "2000"])?;
    let first = prestop_in_background(&app);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(get(app.admin, "/readyz")?.status, 503);
    std::thread::sleep(Duration::from_millis(900));
    // A second call (a restarted kubelet runs the hook again) restarts the 2 s timer.
    let second_at = Instant::now();
    let second = prestop_in_background(&app);
    assert_eq!(
        first
            .join()
            .map_err(|_| anyhow::anyhow!("panicked"))??
            .status,
        200
    );
    std::thread::sleep(Duration::from_millis(1_500));
    // 2.5 s after the first call: reverted already if the second call had not restarted it.
    assert_eq!(get(app.admin, "/readyz")?.status, 503, "reverted too early");
    assert!(keep_alive_says_close(&app)?);
    assert_eq!(
        second
            .join()
            .map_err(|_| anyhow::anyhow!("panicked"))??
            .status,
        200
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    while get(app.admin, "/readyz")?.status != 200 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "never ready again:\n{}",
            app.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = second_at.elapsed();
    assert!(
        took >= Duration::from_millis(2_000),
        "reverted after {took:?}"
    );
    assert!(!keep_alive_says_close(&app)?, "still Connection: close");
    assert_eq!(metric(app.admin, "graceful_prestop_reverted_total")?, 1.0);
    assert_eq!(metric(app.admin, "graceful_draining")?, 0.0);
    assert!(app.log().contains("no SIGTERM followed"), "{}", app.log());

    // The app is as before: a SIGTERM now still drains cleanly.
    app.signal(Signal::SIGTERM)?;
    assert_eq!(
        app.wait_exit_blocking(Duration::from_secs(15))?.code(),
        Some(0)
    );
    Ok(())
}

#[test]
fn a_sigterm_after_prestop_is_never_reverted() -> anyhow::Result<()> {
    let mut app = App::start(&[
        "--drain-delay-ms",
        "100",
        "--prestop-revert-ms",
        "400",
        "--shutdown-timeout-ms",
        "15000",
    ])?;
    let mut slow = connect(app.main)?;
    send_get(&mut slow, "/?work_ms=1500", false)?;
    assert_eq!(get(app.admin, "/prestop")?.status, 200);
    app.signal(Signal::SIGTERM)?;
    // The request ends well past the revert bound; it must still be told to close, since the
    // process is terminating, and the process must exit.
    let response = read_response(&mut slow)?;
    assert_eq!(response.status, 200);
    assert!(
        response.says_close(),
        "terminating was undone: {response:?}"
    );
    assert_eq!(
        app.wait_exit_blocking(Duration::from_secs(15))?.code(),
        Some(0)
    );
    let log = app.log();
    assert!(!log.contains("no SIGTERM followed"), "{log}");
    Ok(())
}
