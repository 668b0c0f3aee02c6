//! Command-line flags. Every flag also reads an environment variable, because the operator
//! configures the container through env vars (see docs/architecture.md, "The app's contract").
//!
//! [`ServerConfig`] holds what both binaries share (listeners, the drain, the preStop guards,
//! the limits on hostile clients); `app.rs` and `proxy.rs` add what only one of them needs.

mod app;
mod proxy;

pub use app::AppConfig;
pub use proxy::{ProxyConfig, UpstreamProtocol};

use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

use crate::prestop::PrestopToken;

/// The admin path that is not configurable: scrapers find metrics at the usual place.
pub const METRICS_PATH: &str = "/metrics";

/// How the process reacts to SIGTERM/SIGINT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ShutdownMode {
    /// Stop accepting, finish every in-flight request, close idle connections, exit 0.
    Graceful,
    /// Exit at once, dropping in-flight requests. Exists only as the naive twin that proves the
    /// zero-error test can fail; never use it in production.
    Immediate,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, for local runs.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The flags of the listeners and the drain, shared by the app and the drain proxy.
#[derive(Clone, Debug, Args)]
pub struct ServerConfig {
    /// Address both listeners bind to. Without it: `::` dual-stack (IPv6 and IPv4 alike, so a
    /// pod answers whichever family the cluster uses), falling back to `0.0.0.0` on a host
    /// without IPv6. Given explicitly, exactly that address is bound, or the process fails.
    #[arg(long, env = "GRACEFUL_BIND")]
    pub bind: Option<IpAddr>,

    /// Port of the main (workload) listener; 0 picks a free port.
    #[arg(long, env = "GRACEFUL_PORT", default_value_t = 8080)]
    pub port: u16,

    /// Port of the admin listener (/prestop, /readyz, /livez, /metrics); 0 picks a free port.
    #[arg(long, env = "GRACEFUL_ADMIN_PORT", default_value_t = 9090)]
    pub admin_port: u16,

    /// How long /prestop holds after flipping readiness to false, in milliseconds, so the
    /// endpoint can leave every proxy before the kubelet sends SIGTERM.
    #[arg(long, env = "GRACEFUL_DRAIN_DELAY_MS", default_value_t = 5_000)]
    pub drain_delay_ms: u64,

    /// Admin path of the preStop hook (GET or POST). Configurable so that the app can share a
    /// port layout with an existing convention; the operator sets the same path in the hook.
    #[arg(long, env = "GRACEFUL_PRESTOP_PATH", default_value = "/prestop")]
    pub prestop_path: String,

    /// Admin path of the readiness probe.
    #[arg(long, env = "GRACEFUL_READINESS_PATH", default_value = "/readyz")]
    pub readiness_path: String,

    /// Admin path of the liveness probe.
    #[arg(long, env = "GRACEFUL_LIVENESS_PATH", default_value = "/livez")]
    pub liveness_path: String,

    /// Shared secret for the preStop path: when set, only a request whose
    /// `X-Graceful-Prestop-Token` header equals it starts a drain; others get 403. Without it,
    /// any client that reaches the admin port can take the pod out of its Service.
    #[arg(long, env = "GRACEFUL_PRESTOP_TOKEN", hide_env_values = true)]
    pub prestop_token: Option<PrestopToken>,

    /// How long a drain started by preStop lasts without a following SIGTERM/SIGINT, in
    /// milliseconds, counted from the last accepted preStop call; then the pod turns ready again
    /// (a hook that ran while the kubelet gave up on the kill, or a stray call, must not leave
    /// the pod out of its Service forever). 0 never reverts. Must exceed the drain delay.
    #[arg(long, env = "GRACEFUL_PRESTOP_REVERT_MS", default_value_t = 60_000)]
    pub prestop_revert_ms: u64,

    /// Bound on the drain after SIGTERM, in milliseconds; past it the process exits 1. 0 is
    /// accepted (the operator may compute it from a tight grace period) and means no drain.
    #[arg(long, env = "GRACEFUL_SHUTDOWN_TIMEOUT_MS", default_value_t = 20_000)]
    pub shutdown_timeout_ms: u64,

    /// Time a client gets to send complete request headers, in milliseconds. It also bounds how
    /// long an idle keep-alive connection stays open (the timer starts when the connection waits
    /// for its next request).
    #[arg(long, env = "GRACEFUL_HEADER_READ_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_ms: u64,

    /// The same bound on the admin listener, kept short: its only clients (the kubelet's probes
    /// and preStop call, a metrics scraper) send their request at once, and a few idle or slow
    /// connections must not hold the admin slots long enough to starve the probes.
    #[arg(long, env = "GRACEFUL_ADMIN_HEADER_READ_TIMEOUT_MS", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub admin_header_read_timeout_ms: u64,

    /// How long a write to a client may stay blocked without progress, in milliseconds, before
    /// the connection is closed: bounds a client that sends requests but never reads the
    /// answers (it would otherwise hold a connection slot forever and stall the drain).
    #[arg(long, env = "GRACEFUL_WRITE_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub write_timeout_ms: u64,

    /// Largest accepted request head (request line plus headers), in bytes; larger gets 431.
    #[arg(long, env = "GRACEFUL_MAX_HEADER_BYTES", default_value_t = 16_384,
          value_parser = clap::value_parser!(u64).range(1024..=1_048_576))]
    pub max_header_bytes: u64,

    /// Once the drain began, how long a connection that has not sent its first request yet
    /// (accepted just before SIGTERM) may still send it, in milliseconds. Connections that
    /// already served a request and are idle close at once.
    #[arg(long, env = "GRACEFUL_FIRST_REQUEST_GRACE_MS", default_value_t = 500)]
    pub first_request_grace_ms: u64,

    /// Most open connections on the main listener; further clients wait in the kernel backlog.
    #[arg(long, env = "GRACEFUL_MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,

    /// Most open connections on the admin listener.
    #[arg(long, env = "GRACEFUL_ADMIN_MAX_CONNECTIONS", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub admin_max_connections: u64,

    /// What SIGTERM/SIGINT do: `graceful` drains, `immediate` exits at once (naive twin).
    #[arg(long, env = "GRACEFUL_SHUTDOWN_MODE", value_enum, default_value_t = ShutdownMode::Graceful)]
    pub shutdown_mode: ShutdownMode,

    /// Log format.
    #[arg(long, env = "GRACEFUL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Parses flags and env vars into `T`; on bad input (clap's own, or `validate`'s) prints the
/// message and exits with code 2.
pub fn parse_or_exit<T: Parser>(validate: impl Fn(&T) -> Result<(), String>) -> T {
    let config = T::parse();
    if let Err(message) = validate(&config) {
        T::command()
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit();
    }
    config
}

impl ServerConfig {
    /// Checks rules that span several flags.
    pub fn validate(&self) -> Result<(), String> {
        if self.port != 0 && self.port == self.admin_port {
            return Err(format!(
                "--port and --admin-port must differ (both are {})",
                self.port
            ));
        }
        self.validate_admin_paths()?;
        if let Some(token) = &self.prestop_token {
            // The message never quotes the token: it is a secret even when malformed.
            token.validate()?;
        }
        if self.prestop_revert_ms != 0 && self.prestop_revert_ms <= self.drain_delay_ms {
            return Err(format!(
                "--prestop-revert-ms ({}) must exceed --drain-delay-ms ({}), or be 0 to never \
                 revert: the preStop hold itself lasts the drain delay",
                self.prestop_revert_ms, self.drain_delay_ms
            ));
        }
        Ok(())
    }

    /// Each admin path must be one the router can match (absolute, no whitespace, no query or
    /// fragment), and all must differ, or one endpoint would silently shadow another.
    fn validate_admin_paths(&self) -> Result<(), String> {
        let paths = [
            ("--prestop-path", self.prestop_path.as_str()),
            ("--readiness-path", self.readiness_path.as_str()),
            ("--liveness-path", self.liveness_path.as_str()),
        ];
        for (flag, path) in paths {
            if !path.starts_with('/') {
                return Err(format!("{flag} must start with '/' (got {path:?})"));
            }
            if path
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
            {
                return Err(format!(
                    "{flag} must not contain whitespace, '?' or '#' (got {path:?})"
                ));
            }
            if path == METRICS_PATH {
                return Err(format!("{flag} must differ from {METRICS_PATH}"));
            }
        }
        for (i, (flag, path)) in paths.iter().enumerate() {
            if let Some((other, _)) = paths[i + 1..].iter().find(|(_, p)| p == path) {
                return Err(format!(
                    "{flag} and {other} must differ (both are {path:?})"
                ));
            }
        }
        Ok(())
    }

    pub fn prestop_revert(&self) -> Duration {
        Duration::from_millis(self.prestop_revert_ms)
    }

    pub fn drain_delay(&self) -> Duration {
        Duration::from_millis(self.drain_delay_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    pub fn first_request_grace(&self) -> Duration {
        Duration::from_millis(self.first_request_grace_ms)
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    pub fn admin_header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.admin_header_read_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ServerConfig, clap::Error> {
        AppConfig::try_parse_from(std::iter::once("graceful-app").chain(args.iter().copied()))
            .map(|config| config.server)
    }

    #[test]
    fn defaults_match_the_contract() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.port, 8080);
        assert_eq!(config.admin_port, 9090);
        assert_eq!(config.drain_delay_ms, 5_000);
        assert_eq!(config.shutdown_timeout_ms, 20_000);
        assert_eq!(config.shutdown_mode, ShutdownMode::Graceful);
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.bind, None);
        assert_eq!(config.prestop_path, "/prestop");
        assert_eq!(config.readiness_path, "/readyz");
        assert_eq!(config.liveness_path, "/livez");
        assert!(config.prestop_token.is_none());
        assert_eq!(config.prestop_revert_ms, 60_000);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn admin_paths_must_be_absolute_clean_and_distinct() {
        let invalid: &[&[&str]] = &[
            &["--prestop-path", "prestop"],
            &["--readiness-path", "/ready z"],
            &["--liveness-path", "/live\tz"],
            &["--prestop-path", "/pre?stop"],
            &["--readiness-path", "/metrics"],
            &["--prestop-path", "/livez"],
            &["--readiness-path", "/x", "--liveness-path", "/x"],
        ];
        for args in invalid {
            let config = parse(args).unwrap();
            assert!(config.validate().is_err(), "{args:?} accepted");
        }
        let custom = parse(&[
            "--prestop-path",
            "/hooks/pre-stop",
            "--readiness-path",
            "/health/ready",
            "--liveness-path",
            "/health/live",
        ])
        .unwrap();
        assert!(custom.validate().is_ok());
    }

    #[test]
    fn revert_must_outlast_the_drain_delay_unless_disabled() {
        let short = parse(&["--drain-delay-ms", "5000", "--prestop-revert-ms", "5000"]).unwrap();
        let message = short.validate().unwrap_err();
        assert!(message.contains("--prestop-revert-ms"), "{message}");
        let disabled = parse(&["--drain-delay-ms", "90000", "--prestop-revert-ms", "0"]).unwrap();
        assert!(disabled.validate().is_ok());
        let long = parse(&["--drain-delay-ms", "5000", "--prestop-revert-ms", "5001"]).unwrap();
        assert!(long.validate().is_ok());
    }

    #[test]
    fn a_bad_token_is_refused_without_quoting_it() {
        for token in ["", "has space", "trailing-newline\n", "caf\u{e9}"] {
            let config = parse(&["--prestop-token", token]).unwrap();
            let message = config.validate().unwrap_err();
            assert!(
                token.is_empty() || !message.contains(token),
                "token quoted: {message}"
            );
        }
        let good = parse(&["--prestop-token", "s3cr3t-Token_42"]).unwrap();
        assert!(good.validate().is_ok());
        assert!(
            !format!("{good:?}").contains("s3cr3t"),
            "Debug shows the token"
        );
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse(&["--port", "http"]).is_err());
        assert!(parse(&["--log-format", "xml"]).is_err());
        assert!(parse(&["--shutdown-timeout-ms", "-1"]).is_err());
        assert!(parse(&["--header-read-timeout-ms", "0"]).is_err());
        assert!(parse(&["--max-header-bytes", "10"]).is_err());
        assert!(parse(&["--bind", "not-an-ip"]).is_err());
    }

    #[test]
    fn same_port_twice_is_invalid_but_zero_twice_is_fine() {
        let same = parse(&["--port", "7000", "--admin-port", "7000"]).unwrap();
        assert!(same.validate().is_err());
        let zeros = parse(&["--port", "0", "--admin-port", "0"]).unwrap();
        assert!(zeros.validate().is_ok());
    }
}
