//! Hostile input, part 3: signals at awkward moments. idle_close.rs already sends SIGTERM,
//! SIGTERM, SIGINT without a preStop; here: SIGTERM while /prestop holds (with requests in
//! flight on both listeners, then more signals during the drain), and SIGINT first followed by
//! a storm of signals. In every case the in-flight requests complete and the exit code is 0.

mod common;

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{App, RawResponse, connect, get, read_response, send_get};
use nix::sys::signal::Signal;

/// Starts `GET path` on its own connection on a thread; the result comes with its duration.
fn in_flight(
    addr: std::net::SocketAddr,
    path: &'static str,
) -> JoinHandle<anyhow::Result<(RawResponse, Duration)>> {
    std::thread::spawn(move || {
        let begun = Instant::now();
        let mut stream = connect(addr)?;
        send_get(&mut stream, path, false)?;
        let response = read_response(&mut stream)?;
        Ok((response, begun.elapsed()))
    })
}

fn joined(
    handle: JoinHandle<anyhow::Result<(RawResponse, Duration)>>,
) -> anyhow::Result<(RawResponse, Duration)> {
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("request thread panicked"))?
}

#[test]
fn sigterm_during_the_prestop_hold_ends_it_and_drains_in_flight_requests() -> anyhow::Result<()> {
    let mut app = App::start(&[
        "--drain-delay-ms",
        "10000",
        "--shutdown-timeout-ms",
        "15000",
    ])?;
    let work: Vec<_> = (0..6)
        .map(|_| in_flight(app.main, "/?work_ms=1500"))
        .collect();
    let prestops = vec![
        in_flight(app.admin, "/prestop"),
        in_flight(app.admin, "/prestop"),
    ];
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        get(app.admin, "/readyz")?.status,
        503,
        "not unready during the hold"
    );

    let sigterm_at = Instant::now();
    app.signal(Signal::SIGTERM)?;
    // More signals during the drain, as an impatient supervisor would send them.
    std::thread::sleep(Duration::from_millis(50));
    app.signal(Signal::SIGTERM)?;
    std::thread::sleep(Duration::from_millis(50));
    app.signal(Signal::SIGINT)?;

    for prestop in prestops {
        let (response, took) = joined(prestop)?;
        eprintln!(
            "/prestop: {} after {} ms",
            response.status,
            took.as_millis()
        );
        assert_eq!(response.status, 200);
        assert!(
            took < Duration::from_secs(5),
            "/prestop held {took:?} despite SIGTERM (drain delay 10 s)"
        );
    }
    for request in work {
        let (response, took) = joined(request)?;
        assert_eq!(response.status, 200, "in-flight request failed");
        assert!(
            response.says_close(),
            "in-flight response lacks Connection: close"
        );
        assert!(
            took >= Duration::from_millis(1_500),
            "work cut short: {took:?}"
        );
    }
    let exit = app.wait_exit_blocking(Duration::from_secs(20))?;
    let log = app.log();
    eprintln!(
        "exit {:?} {} ms after the first SIGTERM",
        exit.code(),
        sigterm_at.elapsed().as_millis()
    );
    assert_eq!(exit.code(), Some(0), "log:\n{log}");
    let ignored = log.matches("already draining").count();
    eprintln!("signals logged as ignored during the drain: {ignored} of 2 sent");
    // Two SIGTERMs close together may coalesce into one delivery; at least one is logged.
    assert!(ignored >= 1, "no later signal logged as ignored:\n{log}");
    Ok(())
}

#[test]
fn sigint_then_a_storm_of_signals_still_drains_and_exits_0() -> anyhow::Result<()> {
    let mut app = App::start(&["--shutdown-timeout-ms", "15000"])?;
    let work: Vec<_> = (0..8)
        .map(|_| in_flight(app.main, "/?work_ms=1000"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    app.signal(Signal::SIGINT)?;
    let mut sent = 1;
    for round in 0..20 {
        std::thread::sleep(Duration::from_millis(20));
        let signal = if round % 2 == 0 {
            Signal::SIGTERM
        } else {
            Signal::SIGINT
        };
        // The process may already be gone near the end; only the exit code matters then.
        if app.signal(signal).is_ok() {
            sent += 1;
        }
    }
    for request in work {
        let (response, took) = joined(request)?;
        assert_eq!(response.status, 200, "in-flight request failed");
        assert!(
            took >= Duration::from_millis(1_000),
            "work cut short: {took:?}"
        );
    }
    let exit = app.wait_exit_blocking(Duration::from_secs(20))?;
    let log = app.log();
    eprintln!(
        "{sent} signals sent; {} logged as ignored (signals that arrive together may coalesce)",
        log.matches("already draining").count()
    );
    assert_eq!(exit.code(), Some(0), "log:\n{log}");
    assert!(log.contains("SIGINT"), "first signal not named:\n{log}");
    Ok(())
}

/// Slow senders caught by the drain: connections with half a request head (and one sending
/// nothing) when SIGTERM comes must not hold the drain past the header read timeout, while the
/// request in flight beside them completes.
#[test]
fn slow_senders_during_the_drain_do_not_hold_it() -> anyhow::Result<()> {
    use std::io::Write;
    let mut app = App::start(&[
        "--header-read-timeout-ms",
        "1000",
        "--first-request-grace-ms",
        "300",
        "--shutdown-timeout-ms",
        "10000",
    ])?;
    let work = in_flight(app.main, "/?work_ms=500");
    let mut slow = Vec::new();
    for addr in [app.main, app.admin] {
        for _ in 0..5 {
            let mut stream = connect(addr)?;
            stream.write_all(b"GET / HTTP/1.1\r\nHost: sl")?;
            slow.push(stream);
        }
        slow.push(connect(addr)?); // sends nothing at all
    }
    std::thread::sleep(Duration::from_millis(100));
    let sigterm_at = Instant::now();
    app.signal(Signal::SIGTERM)?;
    // They keep trickling during the drain.
    let trickle = std::thread::spawn(move || {
        for _ in 0..60 {
            for stream in &mut slow {
                let _ = stream.write_all(b"o");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let (response, _) = joined(work)?;
    assert_eq!(response.status, 200, "in-flight request failed");
    let exit = app.wait_exit_blocking(Duration::from_secs(15))?;
    let took = sigterm_at.elapsed();
    eprintln!(
        "exit {:?} {} ms after SIGTERM with 12 slow senders",
        exit.code(),
        took.as_millis()
    );
    assert_eq!(exit.code(), Some(0), "log:\n{}", app.log());
    // Bounded by the header read timeout (1 s) plus scheduling, well below the 10 s timeout.
    assert!(took < Duration::from_secs(4), "drain took {took:?}");
    trickle
        .join()
        .map_err(|_| anyhow::anyhow!("trickle thread panicked"))?;
    Ok(())
}
