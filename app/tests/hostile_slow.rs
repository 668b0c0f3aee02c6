//! Hostile input, part 2: oversized heads and slow senders on both listeners. bad_input.rs has
//! one 64 KiB header and one slow client; here: many headers, too many headers, a 1 MiB header,
//! a head just under the limit (must still work), and slowloris connections beyond the
//! connection limit, which the header read timeout must cut while others are still served.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{App, connect, get, read_response};

/// What came back for one oversized head: a status, or the connection ended without one.
fn send_head(addr: SocketAddr, head: &[u8]) -> anyhow::Result<Option<u16>> {
    let mut stream = connect(addr)?;
    // The server may answer 431 and close while we are still writing: a failed write is fine.
    let _ = stream.write_all(head);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(read_response(&mut stream)
        .ok()
        .map(|response| response.status))
}

/// The status of a complete request sent like a well-behaved client: without closing its write
/// side, which hyper (half-close off) may take for the connection's end before it answers.
fn send_whole(addr: SocketAddr, request: &[u8]) -> anyhow::Result<Option<u16>> {
    let mut stream = connect(addr)?;
    stream.write_all(request)?;
    Ok(read_response(&mut stream)
        .ok()
        .map(|response| response.status))
}

#[test]
fn oversized_heads_get_431_or_400_on_both_listeners() -> anyhow::Result<()> {
    let app = App::start(&["--max-header-bytes", "8192"])?;
    let many_small: String = (0..1_000).map(|i| format!("X-H{i}: v\r\n")).collect();
    // 150 headers in under 8 KiB: more than hyper's header count limit, fewer bytes than ours.
    let too_many: String = (0..150).map(|i| format!("X{i}: v\r\n")).collect();
    let cases: Vec<(&str, String)> = vec![
        (
            "1,000 headers",
            format!("GET / HTTP/1.1\r\nHost: t\r\n{many_small}\r\n"),
        ),
        (
            "150 tiny headers",
            format!("GET / HTTP/1.1\r\nHost: t\r\n{too_many}\r\n"),
        ),
        (
            "one 1 MiB header",
            format!(
                "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
                "a".repeat(1 << 20)
            ),
        ),
        (
            "100 KiB request line",
            format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "p".repeat(100 << 10)),
        ),
        (
            "1 MiB header name",
            format!(
                "GET / HTTP/1.1\r\nHost: t\r\n{}: v\r\n\r\n",
                "N".repeat(1 << 20)
            ),
        ),
    ];
    for (addr, healthy, port) in [(app.main, "/", "main"), (app.admin, "/livez", "admin")] {
        for (what, head) in &cases {
            let outcome = send_head(addr, head.as_bytes())?;
            eprintln!("{port}: {what} -> {outcome:?}");
            assert!(
                matches!(outcome, None | Some(400 | 414 | 431)),
                "{port}: {what}: got {outcome:?}"
            );
            assert_eq!(get(addr, healthy)?.status, 200, "{port} stopped serving");
        }
        // A head just under the limit is still served.
        let filler = "f".repeat(6_000);
        let fits = format!(
            "GET {healthy} HTTP/1.1\r\nHost: t\r\nX-Fill: {filler}\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            send_whole(addr, fits.as_bytes())?,
            Some(200),
            "{port}: a 6 KiB head under the 8 KiB limit was refused"
        );
    }
    assert!(
        nix::sys::signal::kill(app.pid(), None).is_ok(),
        "process gone"
    );
    Ok(())
}

/// A slowloris connection: sends its request one byte per tick and never finishes it.
struct Slow {
    stream: TcpStream,
    sent: usize,
    cut_after: Option<Duration>,
}

const SLOW_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: slowloris\r\nUser-Agent: one-byte-at-a-time\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// Whether the server closed the connection (EOF or reset), without blocking.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut byte = [0_u8; 512];
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let closed = match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false, // a 408 or similar: the close follows
        Err(error) => error.kind() != std::io::ErrorKind::WouldBlock,
    };
    let _ = stream.set_nonblocking(false);
    closed
}

#[test]
fn slowloris_beyond_the_connection_limit_is_cut_and_others_are_served() -> anyhow::Result<()> {
    const TIMEOUT_MS: u64 = 400;
    let app = App::start(&[
        "--header-read-timeout-ms",
        "400",
        "--admin-header-read-timeout-ms",
        "400",
        "--max-connections",
        "16",
        "--admin-max-connections",
        "4",
    ])?;
    // Twice the limit on each listener: the second half waits in the kernel backlog.
    let started = Instant::now();
    let mut slow: Vec<(&str, Slow)> = Vec::new();
    for (addr, count, port) in [(app.main, 32, "main"), (app.admin, 8, "admin")] {
        for _ in 0..count {
            slow.push((
                port,
                Slow {
                    stream: connect(addr)?,
                    sent: 0,
                    cut_after: None,
                },
            ));
        }
    }
    // The well-behaved client runs beside them, on its own thread; it gets its answer once the
    // timeout frees slots, so its read timeout covers a few timeout rounds.
    let (main, admin) = (app.main, app.admin);
    let good = std::thread::spawn(move || -> Vec<(String, Result<u16, String>, Duration)> {
        let mut results = Vec::new();
        for round in 0..6 {
            std::thread::sleep(Duration::from_millis(150));
            for (addr, path) in [(main, "/"), (admin, "/livez")] {
                let begun = Instant::now();
                let outcome = get(addr, path)
                    .map(|response| response.status)
                    .map_err(|error| format!("{error:#}"));
                results.push((format!("round {round} {path}"), outcome, begun.elapsed()));
            }
        }
        results
    });

    // One byte to every open slow connection every 50 ms, for at most 8 s.
    let tick = Duration::from_millis(50);
    while started.elapsed() < Duration::from_secs(8) {
        let mut open = 0;
        for (_, connection) in slow.iter_mut().filter(|(_, c)| c.cut_after.is_none()) {
            let byte = SLOW_REQUEST[connection.sent % SLOW_REQUEST.len()..][..1].to_vec();
            let wrote = connection.stream.write_all(&byte).is_ok();
            connection.sent += 1;
            if !wrote || closed_by_server(&mut connection.stream) {
                connection.cut_after = Some(started.elapsed());
            } else {
                open += 1;
            }
        }
        if open == 0 {
            break;
        }
        std::thread::sleep(tick);
    }
    let good = good
        .join()
        .map_err(|_| anyhow::anyhow!("good client panicked"))?;

    let mut cut_times: Vec<u128> = slow
        .iter()
        .filter_map(|(_, c)| c.cut_after.map(|d| d.as_millis()))
        .collect();
    cut_times.sort_unstable();
    let still_open = slow.iter().filter(|(_, c)| c.cut_after.is_none()).count();
    eprintln!(
        "slow connections: {} cut, {still_open} still open after 8 s; cut at (ms since start): {cut_times:?}",
        cut_times.len()
    );
    for (what, outcome, took) in &good {
        eprintln!("good client {what}: {outcome:?} in {} ms", took.as_millis());
    }
    for (what, outcome, _) in &good {
        assert_eq!(outcome, &Ok(200), "good client {what} not served");
    }
    assert_eq!(still_open, 0, "slow connections never cut");
    // Each listener serves its backlog in rounds of `limit`; 2x the limit plus the good
    // client's connections make about three rounds of the timeout. Generous bound for a
    // loaded machine.
    let latest = cut_times.last().copied().unwrap_or_default();
    assert!(
        latest < u128::from(TIMEOUT_MS) * 3 + 3_000,
        "slowest cut after {latest} ms"
    );
    assert_eq!(get(app.admin, "/livez")?.status, 200);
    assert_eq!(get(app.main, "/")?.status, 200);
    Ok(())
}

/// Reads `graceful_open_connections{listener="main"}` from /metrics.
fn main_connections_open(admin: SocketAddr) -> anyhow::Result<u64> {
    let body = String::from_utf8(get(admin, "/metrics")?.body)?;
    let prefix = "graceful_open_connections{listener=\"main\"} ";
    Ok(body
        .lines()
        .find_map(|line| line.strip_prefix(prefix))
        .ok_or_else(|| anyhow::anyhow!("no main connection gauge"))?
        .trim()
        .parse()?)
}

/// A client that pipelines requests and never reads the answers: the server's writes block
/// once the socket buffers are full. Before the write timeout existed, this connection stayed
/// open forever and a later SIGTERM ended in a timed-out drain (exit 1).
#[test]
fn a_client_that_never_reads_is_cut_by_the_write_timeout() -> anyhow::Result<()> {
    let mut app = App::start(&[
        "--write-timeout-ms",
        "500",
        "--header-read-timeout-ms",
        "400",
        "--shutdown-timeout-ms",
        "5000",
    ])?;
    let mut hog = connect(app.main)?;
    hog.set_write_timeout(Some(Duration::from_millis(200)))?;
    let batch = b"GET / HTTP/1.1\r\nHost: hog\r\n\r\n".repeat(1_000);
    let started = Instant::now();
    let mut sent = 0_usize;
    let cut_after = loop {
        match hog.write(&batch) {
            Ok(n) => sent += n,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break Some(started.elapsed()), // reset: the server closed it
        }
        if started.elapsed() > Duration::from_secs(15) {
            break None;
        }
    };
    eprintln!(
        "non-reading client: {sent} bytes of requests sent, server closed it after {cut_after:?}"
    );
    let cut_after = cut_after.ok_or_else(|| anyhow::anyhow!("connection never cut"))?;
    assert!(
        cut_after < Duration::from_secs(10),
        "cut after {cut_after:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while main_connections_open(app.admin)? > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(main_connections_open(app.admin)?, 0, "slot still held");
    assert_eq!(get(app.main, "/")?.status, 200);
    app.signal(nix::sys::signal::Signal::SIGTERM)?;
    let exit = app.wait_exit_blocking(Duration::from_secs(10))?;
    assert_eq!(exit.code(), Some(0), "log:\n{}", app.log());
    Ok(())
}
