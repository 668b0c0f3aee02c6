//! Proof 4: bad flags exit 2 with a message; malformed or slow HTTP on either port gets a 4xx
//! or a closed connection, and the process keeps serving others; connection limits hold.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{App, BIN, ReadEnd, connect, get, read_end, read_response, send_get};

/// Runs the binary with `args` and `env`, bounded: a case that wrongly starts the server (on
/// loopback, ports picked by the kernel) is killed after 10 s and fails the test.
fn run_with(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(Option<i32>, String)> {
    let mut child = Command::new(BIN)
        .args(args)
        .env("GRACEFUL_BIND", "127.0.0.1")
        .env("GRACEFUL_PORT", "0")
        .env("GRACEFUL_ADMIN_PORT", "0")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("{args:?} {env:?}: still running after 10 s instead of exiting 2");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr)?;
    }
    Ok((status.code(), stderr))
}

/// Flags, environment, and a word the error message must contain.
type BadCase<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn bad_flags_exit_2_with_a_message() -> anyhow::Result<()> {
    let cases: &[BadCase] = &[
        (&["--port", "http"], &[], "--port"),
        (&["--log-format", "xml"], &[], "xml"),
        (&["--no-such-flag"], &[], "--no-such-flag"),
        (
            &["--header-read-timeout-ms", "0"],
            &[],
            "--header-read-timeout-ms",
        ),
        (&["--drain-delay-ms", "soon"], &[], "--drain-delay-ms"),
        (
            &["--port", "7000", "--admin-port", "7000"],
            &[],
            "must differ",
        ),
        (&[], &[("GRACEFUL_PORT", "eighty")], "eighty"),
        (&["--prestop-path", "prestop"], &[], "--prestop-path"),
        (
            &[],
            &[("GRACEFUL_READINESS_PATH", "/ready z")],
            "--readiness-path",
        ),
        (&["--liveness-path", "/metrics"], &[], "/metrics"),
        (
            &["--prestop-path", "/x", "--readiness-path", "/x"],
            &[],
            "must differ",
        ),
        (
            &["--drain-delay-ms", "5000", "--prestop-revert-ms", "4000"],
            &[],
            "--prestop-revert-ms",
        ),
        (&[], &[("GRACEFUL_PRESTOP_TOKEN", "")], "--prestop-token"),
    ];
    for (args, env, needle) in cases {
        let (code, stderr) = run_with(args, env)?;
        assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: message lacks {needle:?}: {stderr}"
        );
    }
    Ok(())
}

#[test]
fn a_malformed_token_is_refused_without_being_printed() -> anyhow::Result<()> {
    // A token read from a file with its trailing newline: the typical mistake.
    let token = "s3cret-from-a-file\n";
    let (code, stderr) = run_with(&[], &[("GRACEFUL_PRESTOP_TOKEN", token)])?;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--prestop-token"), "{stderr}");
    assert!(
        !stderr.contains("s3cret"),
        "the token was printed: {stderr}"
    );
    Ok(())
}

/// Sends raw bytes and reports what came back: a status code, or how the connection ended.
fn send_raw(addr: SocketAddr, bytes: &[u8]) -> anyhow::Result<Result<u16, ReadEnd>> {
    let mut stream = connect(addr)?;
    // A server may close before reading everything: that is an acceptable answer too.
    if stream.write_all(bytes).is_err() {
        return Ok(Err(ReadEnd::Reset));
    }
    match read_response(&mut stream) {
        Ok(response) => Ok(Ok(response.status)),
        Err(_) => Ok(Err(read_end(&mut stream))),
    }
}

fn assert_rejected(outcome: Result<u16, ReadEnd>, what: &str) {
    match outcome {
        Ok(status) => assert!((400..500).contains(&status), "{what}: got {status}"),
        Err(end) => assert!(
            matches!(end, ReadEnd::Eof | ReadEnd::Reset),
            "{what}: connection neither answered nor closed: {end:?}"
        ),
    }
}

#[test]
fn malformed_and_slow_clients_cannot_pin_either_listener() -> anyhow::Result<()> {
    let app = App::start(&[
        "--header-read-timeout-ms",
        "300",
        "--max-header-bytes",
        "4096",
    ])?;
    let huge_header = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    for (addr, healthy) in [(app.main, "/"), (app.admin, "/livez")] {
        assert_rejected(send_raw(addr, b"GARBAGE\r\n\r\n")?, "garbage");
        assert_rejected(send_raw(addr, b"GET / HTTP/9.9\r\n\r\n")?, "bad version");
        assert_rejected(send_raw(addr, huge_header.as_bytes())?, "huge header");

        // A slow client that never finishes its headers is cut off by the header read timeout.
        let mut slow = connect(addr)?;
        slow.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n")?;
        slow.set_read_timeout(Some(Duration::from_secs(10)))?;
        let end = read_end(&mut slow);
        assert!(
            matches!(end, ReadEnd::Eof | ReadEnd::Reset | ReadEnd::Data(_)),
            "slow client not cut off: {end:?}"
        );

        assert_eq!(get(addr, healthy)?.status, 200, "listener stopped serving");
    }
    Ok(())
}

/// With a limit of `limit` connections, one more client waits until a slot frees up.
fn check_connection_limit(addr: SocketAddr, path: &str, limit: usize) -> anyhow::Result<()> {
    let mut held = Vec::new();
    for _ in 0..limit {
        let mut stream = connect(addr)?;
        send_get(&mut stream, path, false)?;
        assert_eq!(read_response(&mut stream)?.status, 200);
        held.push(stream);
    }
    let mut waiting = connect(addr)?; // the kernel backlog accepts it
    send_get(&mut waiting, path, false)?;
    waiting.set_read_timeout(Some(Duration::from_millis(500)))?;
    assert_eq!(
        read_end(&mut waiting),
        ReadEnd::TimedOut,
        "limit not enforced"
    );
    drop(held.pop());
    waiting.set_read_timeout(Some(Duration::from_secs(10)))?;
    assert_eq!(read_response(&mut waiting)?.status, 200, "no slot freed");
    Ok(())
}

#[test]
fn connection_limits_hold_on_both_listeners() -> anyhow::Result<()> {
    let app = App::start(&["--max-connections", "3", "--admin-max-connections", "2"])?;
    check_connection_limit(app.main, "/", 3)?;
    check_connection_limit(app.admin, "/livez", 2)?;
    Ok(())
}
