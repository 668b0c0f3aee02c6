//! Proof 3: keep-alive connections are closed cleanly during the drain. A response written
//! during the drain carries `Connection: close` and is followed by EOF; an idle connection is
//! closed at once on SIGTERM with a FIN, never a reset.

mod common;

use std::time::Duration;

use common::{App, ReadEnd, connect, get, read_end, read_response, send_get};
use nix::sys::signal::Signal;

#[test]
fn idle_keep_alive_connections_see_a_clean_close() -> anyhow::Result<()> {
    let mut app = App::start(&["--drain-delay-ms", "200"])?;
    let mut connections = Vec::new();
    for _ in 0..5 {
        let mut stream = connect(app.main)?;
        send_get(&mut stream, "/", false)?;
        let response = read_response(&mut stream)?;
        assert_eq!(response.status, 200);
        assert!(
            !response.says_close(),
            "closed before any drain: {response:?}"
        );
        connections.push(stream);
    }

    let prestop = get(app.admin, "/prestop")?;
    assert_eq!(prestop.status, 200);
    assert_eq!(get(app.admin, "/readyz")?.status, 503);

    // A request on a kept-alive connection during the drain: answered, told to close, then EOF.
    let mut draining = connections.remove(0);
    send_get(&mut draining, "/", false)?;
    let response = read_response(&mut draining)?;
    assert_eq!(response.status, 200);
    assert!(
        response.says_close(),
        "no Connection: close during drain: {response:?}"
    );
    assert_eq!(read_end(&mut draining), ReadEnd::Eof);

    // Idle connections stay usable until SIGTERM, then close at once with EOF.
    app.signal(Signal::SIGTERM)?;
    for mut idle in connections {
        idle.set_read_timeout(Some(Duration::from_secs(10)))?;
        assert_eq!(read_end(&mut idle), ReadEnd::Eof, "log:\n{}", app.log());
    }
    let exit = app.wait_exit_blocking(Duration::from_secs(30))?;
    assert_eq!(exit.code(), Some(0), "log:\n{}", app.log());
    Ok(())
}

#[test]
fn sigterm_without_prestop_finishes_in_flight_and_survives_a_second_signal() -> anyhow::Result<()> {
    let mut app = App::start(&["--drain-delay-ms", "5000"])?;
    let mut busy = connect(app.main)?;
    send_get(&mut busy, "/?work_ms=700", false)?;
    let mut idle = connect(app.main)?;
    send_get(&mut idle, "/", false)?;
    assert_eq!(read_response(&mut idle)?.status, 200);
    std::thread::sleep(Duration::from_millis(200));

    app.signal(Signal::SIGTERM)?;
    std::thread::sleep(Duration::from_millis(50));
    app.signal(Signal::SIGTERM)?;
    app.signal(Signal::SIGINT)?;

    assert_eq!(read_end(&mut idle), ReadEnd::Eof);
    let response = read_response(&mut busy)?;
    assert_eq!(response.status, 200);
    assert!(
        response.says_close(),
        "in-flight response lacks Connection: close"
    );
    assert_eq!(read_end(&mut busy), ReadEnd::Eof);
    // After SIGTERM nothing new is accepted.
    assert!(get(app.main, "/").is_err());

    let exit = app.wait_exit_blocking(Duration::from_secs(30))?;
    let log = app.log();
    assert_eq!(exit.code(), Some(0), "log:\n{log}");
    assert!(
        log.contains("already draining"),
        "second signal not logged:\n{log}"
    );
    Ok(())
}

#[test]
fn drain_past_the_shutdown_timeout_exits_non_zero() -> anyhow::Result<()> {
    let mut app = App::start(&["--shutdown-timeout-ms", "300"])?;
    let mut busy = connect(app.main)?;
    send_get(&mut busy, "/?work_ms=5000", false)?;
    std::thread::sleep(Duration::from_millis(200));
    app.signal(Signal::SIGTERM)?;
    let exit = app.wait_exit_blocking(Duration::from_secs(30))?;
    let log = app.log();
    assert_eq!(exit.code(), Some(1), "log:\n{log}");
    assert!(log.contains("shutdown timed out"), "log:\n{log}");
    Ok(())
}

#[test]
fn a_client_that_connected_before_sigterm_still_gets_its_answer() -> anyhow::Result<()> {
    let mut app = App::start(&["--first-request-grace-ms", "2000"])?;
    // Connected before the signal, request written after it (a client that was just slow).
    let mut late = connect(app.main)?;
    // Connected before the signal, never sends anything: closed after the grace.
    let mut silent = connect(app.main)?;
    std::thread::sleep(Duration::from_millis(200));
    app.signal(Signal::SIGTERM)?;
    std::thread::sleep(Duration::from_millis(100));
    send_get(&mut late, "/", false)?;
    let response = read_response(&mut late)?;
    assert_eq!(response.status, 200);
    assert!(response.says_close());
    assert_eq!(read_end(&mut late), ReadEnd::Eof);
    assert_eq!(read_end(&mut silent), ReadEnd::Eof);
    let exit = app.wait_exit_blocking(Duration::from_secs(30))?;
    assert_eq!(exit.code(), Some(0), "log:\n{}", app.log());
    Ok(())
}
