//! The flags that only the drain proxy has: where it forwards to, and its longest request.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use super::ServerConfig;

/// How the proxy speaks to the app behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive: what almost every HTTP server speaks.
    Http1,
    /// HTTP/2 over cleartext with prior knowledge: for gRPC servers.
    H2c,
}

/// The drain proxy: the protocol of graceful-app in front of an app that knows nothing of it.
/// Its main listener (HTTP/1.1 and h2c) forwards every request to `--upstream`; its admin
/// listener has the same preStop, readiness, liveness and metrics as graceful-app, and its
/// preStop returns only once no request is in flight to the app, so that the SIGTERM the
/// kubelet sends the app next finds it idle.
#[derive(Clone, Debug, Parser)]
#[command(name = "graceful-drain-proxy", version, about)]
pub struct ProxyConfig {
    #[command(flatten)]
    pub server: ServerConfig,

    /// Address of the app, over the pod's loopback (for example 127.0.0.1:8080).
    #[arg(long, env = "GRACEFUL_PROXY_UPSTREAM")]
    pub upstream: SocketAddr,

    /// Protocol spoken to the app.
    #[arg(long, env = "GRACEFUL_PROXY_UPSTREAM_PROTOCOL", value_enum,
          default_value_t = UpstreamProtocol::Http1)]
    pub upstream_protocol: UpstreamProtocol,

    /// Longest request the app may take, in milliseconds: a forwarded request gets 504 past it,
    /// and preStop waits at most this long for the requests in flight.
    #[arg(long, env = "GRACEFUL_MAX_REQUEST_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_request_ms: u64,

    /// Threads that serve connections. 1 (the default) runs the whole proxy on one thread, as
    /// a sidecar should: it never takes more than one core from the app beside it, and a
    /// request is read, forwarded and answered on the same thread. Raise it only for an app
    /// that serves more than one core's worth of proxying.
    #[arg(long, env = "GRACEFUL_PROXY_WORKER_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_threads: u16,
}

impl ProxyConfig {
    /// Parses flags and env vars; on bad input prints the message and exits with code 2.
    pub fn from_args() -> Self {
        super::parse_or_exit(ProxyConfig::validate)
    }

    pub fn validate(&self) -> Result<(), String> {
        self.server.validate()?;
        if self.upstream.ip().is_unspecified() || self.upstream.port() == 0 {
            return Err(format!(
                "--upstream must name a host and a port to connect to (got {})",
                self.upstream
            ));
        }
        Ok(())
    }

    pub fn max_request(&self) -> Duration {
        Duration::from_millis(self.max_request_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ProxyConfig, clap::Error> {
        ProxyConfig::try_parse_from(
            std::iter::once("graceful-drain-proxy").chain(args.iter().copied()),
        )
    }

    #[test]
    fn upstream_is_required_and_must_be_connectable() {
        assert!(parse(&[]).is_err(), "no upstream accepted");
        assert!(parse(&["--upstream", "localhost:8080"]).is_err());
        for bad in ["0.0.0.0:8080", "127.0.0.1:0", "[::]:80"] {
            let config = parse(&["--upstream", bad]).unwrap();
            assert!(config.validate().is_err(), "{bad} accepted");
        }
        let good = parse(&["--upstream", "127.0.0.1:8080"]).unwrap();
        assert!(good.validate().is_ok());
        assert_eq!(good.upstream_protocol, UpstreamProtocol::Http1);
        assert_eq!(good.max_request_ms, 30_000);
        assert_eq!(good.worker_threads, 1);
        assert!(parse(&["--upstream", "127.0.0.1:1", "--worker-threads", "0"]).is_err());
        assert!(parse(&["--upstream", "127.0.0.1:1", "--max-request-ms", "0"]).is_err());
        assert!(parse(&["--upstream", "127.0.0.1:1", "--upstream-protocol", "h3"]).is_err());
    }
}
