//! Test fixture: the real graceful-app binary as a child process on loopback, killed on drop
//! (also when a test panics), and a tiny blocking HTTP/1.1 client on raw sockets, so tests see
//! exactly what the server put on the wire (EOF versus reset, `Connection: close`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub const BIN: &str = env!("CARGO_BIN_EXE_graceful-app");
pub const PROXY_BIN: &str = env!("CARGO_BIN_EXE_graceful-drain-proxy");

/// A running graceful-app. Dropping it kills the process.
pub struct App {
    child: Child,
    pub main: SocketAddr,
    pub admin: SocketAddr,
    log: PathBuf,
}

static NEXT_LOG: AtomicUsize = AtomicUsize::new(0);

impl App {
    /// Starts the app on 127.0.0.1 with ports picked by the kernel, plus `args`, and waits for
    /// its "listening" line.
    pub fn start(args: &[&str]) -> anyhow::Result<App> {
        Self::start_with_log_level(args, "debug")
    }

    /// Like [`App::start`] with a given `RUST_LOG` (the benchmark runs at `warn`).
    pub fn start_with_log_level(args: &[&str], level: &str) -> anyhow::Result<App> {
        Self::spawn(Some("127.0.0.1"), args, level)
    }

    /// Like [`App::start`] with `--bind <bind>`.
    pub fn start_on(bind: &str, args: &[&str]) -> anyhow::Result<App> {
        Self::spawn(Some(bind), args, "debug")
    }

    /// Like [`App::start`] without `--bind`, so the app binds its default address.
    pub fn start_default_bind(args: &[&str]) -> anyhow::Result<App> {
        Self::spawn(None, args, "debug")
    }

    /// Starts graceful-drain-proxy in front of `upstream`, like [`App::start`].
    pub fn start_proxy(upstream: SocketAddr, args: &[&str]) -> anyhow::Result<App> {
        Self::start_proxy_with_log_level(upstream, args, "debug")
    }

    /// Like [`App::start_proxy`] with a given `RUST_LOG` (the benchmark runs at `warn`: at
    /// `debug`, hyper's connection pool logs every request).
    pub fn start_proxy_with_log_level(
        upstream: SocketAddr,
        args: &[&str],
        level: &str,
    ) -> anyhow::Result<App> {
        let upstream = upstream.to_string();
        let mut all = vec!["--upstream", upstream.as_str()];
        all.extend_from_slice(args);
        Self::spawn_program(PROXY_BIN, Some("127.0.0.1"), &all, level)
    }

    fn spawn(bind: Option<&str>, args: &[&str], level: &str) -> anyhow::Result<App> {
        Self::spawn_program(BIN, bind, args, level)
    }

    fn spawn_program(
        program: &str,
        bind: Option<&str>,
        args: &[&str],
        level: &str,
    ) -> anyhow::Result<App> {
        let log = std::env::temp_dir().join(format!(
            "graceful-app-test-{}-{}.log",
            std::process::id(),
            NEXT_LOG.fetch_add(1, Ordering::SeqCst)
        ));
        let log_file = std::fs::File::create(&log)?;
        let mut command = Command::new(program);
        if let Some(bind) = bind {
            command.args(["--bind", bind]);
        }
        let mut child = command
            .args(["--port", "0", "--admin-port", "0"])
            .args(args)
            .env("RUST_LOG", level)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("spawning {program}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains(" listening main=") {
                    let _ = tx.send(line);
                }
            }
        });
        let mut app = App {
            child,
            main: "0.0.0.0:0".parse()?,
            admin: "0.0.0.0:0".parse()?,
            log,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| anyhow!("no listening line; log:\n{}", app.log()))?;
        (app.main, app.admin) = parse_listening_line(&line)?;
        Ok(app)
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        kill(self.pid(), signal).context("sending a signal")
    }

    /// Waits (polling, bounded) for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("still running after {limit:?}; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Blocking variant of [`App::wait_exit`] for tests without a runtime.
    pub fn wait_exit_blocking(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("still running after {limit:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Blocks until the process exits, for precise timing. Only after a signal: the app's own
    /// shutdown timeout bounds the wait.
    pub fn wait_after_signal(&mut self) -> anyhow::Result<ExitStatus> {
        Ok(self.child.wait()?)
    }

    /// The app's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

pub fn parse_listening_line(line: &str) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let field = |name: &str| -> anyhow::Result<SocketAddr> {
        let value = line
            .split_whitespace()
            .find_map(|part| part.strip_prefix(name))
            .with_context(|| format!("no {name} in {line:?}"))?;
        Ok(value.parse()?)
    };
    Ok((field("main=")?, field("admin=")?))
}

/// A response as read from the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn says_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|value| value.eq_ignore_ascii_case("close"))
    }
}

/// Connects with bounded read and write timeouts.
pub fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(stream)
}

/// Sends `GET path` on an open connection (keep-alive unless `close`).
pub fn send_get(stream: &mut TcpStream, path: &str, close: bool) -> std::io::Result<()> {
    let connection = if close { "close" } else { "keep-alive" };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: {connection}\r\n\r\n"
    )?;
    stream.flush()
}

/// Reads one response (head plus Content-Length body). No pipelining: nothing may follow it.
pub fn read_response(stream: &mut TcpStream) -> anyhow::Result<RawResponse> {
    let mut buffer = Vec::new();
    let mut chunk = [0_u8; 4096];
    let head_end = loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            break end;
        }
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            bail!(
                "EOF before a complete response head ({} bytes)",
                buffer.len()
            );
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = std::str::from_utf8(&buffer[..head_end])?.to_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().context("empty head")?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse())
        .transpose()?
        .unwrap_or(0);
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            bail!("EOF inside the body");
        }
        body.extend_from_slice(&chunk[..read]);
    }
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// One request on a fresh connection.
pub fn get(addr: SocketAddr, path: &str) -> anyhow::Result<RawResponse> {
    let mut stream = connect(addr)?;
    send_get(&mut stream, path, true)?;
    read_response(&mut stream)
}

/// What the next read on a connection shows.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadEnd {
    /// A clean close: FIN, read returned 0.
    Eof,
    /// The peer reset the connection.
    Reset,
    /// Bytes arrived.
    Data(usize),
    /// Nothing within the read timeout.
    TimedOut,
}

pub fn read_end(stream: &mut TcpStream) -> ReadEnd {
    let mut chunk = [0_u8; 1024];
    match stream.read(&mut chunk) {
        Ok(0) => ReadEnd::Eof,
        Ok(n) => ReadEnd::Data(n),
        Err(error) => match error.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ReadEnd::TimedOut,
            _ => ReadEnd::Reset,
        },
    }
}

/// Polls `check` every 10 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

/// Outcome of the preStop-then-SIGTERM scenario under load.
pub struct DrainRun {
    /// 200 keep-alive clients, 100 ms requests.
    pub short: loadgen::Report,
    /// 20 keep-alive clients, 2,000 ms requests: these are in flight when SIGTERM comes.
    pub long: loadgen::Report,
    pub sigterm_at: Instant,
    pub exit: ExitStatus,
    pub prestop_status: u16,
    pub readyz_turned_503: bool,
    pub log: String,
}

impl DrainRun {
    pub fn reports(&self) -> [(&'static str, &loadgen::Report); 2] {
        [("short", &self.short), ("long", &self.long)]
    }

    /// The requests the app says it answered, from its "drained" log line.
    pub fn answered_by_app(&self) -> Option<usize> {
        let (_, after) = self.log.split_once("requests_answered=")?;
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    /// The requests the clients got an answer to.
    pub fn answered_to_clients(&self) -> usize {
        self.reports()
            .iter()
            .map(|(_, report)| report.count() - report.errors())
            .sum()
    }
}

fn load_spec(
    target: SocketAddr,
    work_ms: u64,
    clients: usize,
    mode: loadgen::ConnectionMode,
) -> loadgen::LoadSpec {
    loadgen::LoadSpec::new(target, format!("/?work_ms={work_ms}"))
        .mode(mode)
        .concurrency(clients)
        .max_requests(200_000)
        .duration(Duration::from_secs(30))
        .request_timeout(Duration::from_secs(10))
}

/// The kubelet's sequence under constant keep-alive load, with the load generator in the role
/// of the proxy:
/// 1. /prestop is called (it holds for the 1 s drain delay) and /readyz turns 503;
/// 2. 300 ms later the proxy has removed the endpoint: no new connection reaches the app,
///    while connections already open keep delivering requests (kube-proxy balances per
///    connection); every response now says `Connection: close`, so those connections end;
/// 3. when /prestop returns, SIGTERM. The 2 s requests are still in flight then.
pub async fn drain_under_load(extra_args: &[&str]) -> anyhow::Result<DrainRun> {
    drain_under_load_with(loadgen::ConnectionMode::KeepAlive, extra_args).await
}

/// [`drain_under_load`] with clients of another connection mode (h2c, for one).
pub async fn drain_under_load_with(
    mode: loadgen::ConnectionMode,
    extra_args: &[&str],
) -> anyhow::Result<DrainRun> {
    let mut args = vec!["--drain-delay-ms", "1000", "--shutdown-timeout-ms", "15000"];
    args.extend_from_slice(extra_args);
    let mut app = App::start(&args)?;
    let proxy = loadgen::Control::new();
    let short = tokio::spawn(loadgen::run(
        load_spec(app.main, 100, 200, mode),
        proxy.clone(),
    ));
    // Constant load for a while before the drain starts.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // Long requests start 0.5 s before /prestop and run 2 s: SIGTERM comes ~1 s after
    // /prestop, so they are in flight then, with ~0.5 s of work left.
    let long = tokio::spawn(loadgen::run(
        load_spec(app.main, 2_000, 20, mode),
        proxy.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let admin = app.admin;
    let prestop_called = Instant::now();
    let prestop = tokio::task::spawn_blocking(move || get(admin, "/prestop"));
    let readyz_turned_503 = eventually(Duration::from_secs(5), || {
        get(admin, "/readyz").is_ok_and(|response| response.status == 503)
    })
    .await;
    tokio::time::sleep_until((prestop_called + Duration::from_millis(300)).into()).await;
    proxy.stop_new_connections();
    let settled = proxy.new_connections_settled(Duration::from_secs(10)).await;
    anyhow::ensure!(settled, "connects still under way after 10 s");
    let prestop_status = prestop.await??.status;

    let sigterm_at = Instant::now();
    app.signal(Signal::SIGTERM)?;
    let exit = app.wait_exit(Duration::from_secs(30)).await?;
    let short = tokio::time::timeout(Duration::from_secs(40), short).await???;
    let long = tokio::time::timeout(Duration::from_secs(40), long).await???;
    Ok(DrainRun {
        short,
        long,
        sigterm_at,
        exit,
        prestop_status,
        readyz_turned_503,
        log: app.log(),
    })
}
