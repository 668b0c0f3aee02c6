//! Readiness and liveness probes: the kubelet's threshold state machine (pure) and the probe
//! actions (httpGet, tcpSocket) against the pod's address.

use std::net::Ipv4Addr;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Timing and thresholds of one probe, with the kubelet's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub action: ProbeAction,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAction {
    HttpGet { port: u16, path: String },
    TcpSocket { port: u16 },
}

/// Resolves a port given by number or by the container's port name.
pub fn resolve_port(container: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} out of range")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("container has no port named {name:?}")),
    }
}

impl ProbeSpec {
    /// Reads a probe from the pod spec; exec and grpc probes are not supported and give an error.
    pub fn from_probe(container: &Container, probe: &Probe) -> Result<Self, String> {
        let action = if let Some(http) = &probe.http_get {
            ProbeAction::HttpGet {
                port: resolve_port(container, &http.port)?,
                path: http.path.clone().unwrap_or_else(|| "/".to_string()),
            }
        } else if let Some(tcp) = &probe.tcp_socket {
            ProbeAction::TcpSocket {
                port: resolve_port(container, &tcp.port)?,
            }
        } else {
            return Err("only httpGet and tcpSocket probes are supported".to_string());
        };
        let secs =
            |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
        Ok(ProbeSpec {
            action,
            initial_delay: secs(probe.initial_delay_seconds, 0),
            period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: probe.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1) as u32,
        })
    }
}

/// The kubelet's probe result with thresholds: the result flips only after `success_threshold`
/// consecutive successes or `failure_threshold` consecutive failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeState {
    pub healthy: bool,
    successes: u32,
    failures: u32,
}

impl ProbeState {
    /// Readiness starts failing (not ready until proven), liveness starts healthy.
    pub fn new(initially_healthy: bool) -> Self {
        ProbeState {
            healthy: initially_healthy,
            successes: 0,
            failures: 0,
        }
    }

    /// Records one probe outcome; returns true when the result changed.
    pub fn observe(&mut self, spec: &ProbeSpec, success: bool) -> bool {
        if success {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.healthy && self.successes >= spec.success_threshold {
                self.healthy = true;
                return true;
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.healthy && self.failures >= spec.failure_threshold {
                self.healthy = false;
                return true;
            }
        }
        false
    }
}

/// Runs one probe action against the pod; Err carries the kubelet-style failure message.
pub async fn run_once(ip: Ipv4Addr, spec: &ProbeSpec) -> Result<(), String> {
    match tokio::time::timeout(spec.timeout, attempt(ip, &spec.action)).await {
        Ok(result) => result,
        Err(_) => Err(format!("probe timed out after {:?}", spec.timeout)),
    }
}

async fn attempt(ip: Ipv4Addr, action: &ProbeAction) -> Result<(), String> {
    match action {
        ProbeAction::TcpSocket { port } => tokio::net::TcpStream::connect((ip, *port))
            .await
            .map(drop)
            .map_err(|e| format!("dial tcp {ip}:{port}: {e}")),
        ProbeAction::HttpGet { port, path } => {
            let status = http_get(ip, *port, path).await?;
            if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {status}"))
            }
        }
    }
}

/// One HTTP/1.1 GET on a fresh connection; returns the status code.
pub async fn http_get(ip: Ipv4Addr, port: u16, path: &str) -> Result<u16, String> {
    let url = format!("http://{ip}:{port}{path}");
    let stream = tokio::net::TcpStream::connect((ip, port))
        .await
        .map_err(|e| format!("Get {url:?}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("Get {url:?}: {e}"))?;
    let driver = tokio::spawn(conn);
    let request = http::Request::get(path)
        .header(http::header::HOST, format!("{ip}:{port}"))
        .header(http::header::USER_AGENT, "kube-probe/testbed")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("Get {url:?}: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("Get {url:?}: {e}"));
    driver.abort();
    Ok(response?.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(success: u32, failure: u32) -> ProbeSpec {
        ProbeSpec {
            action: ProbeAction::TcpSocket { port: 1 },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn readiness_needs_success_threshold_in_a_row() {
        let spec = spec(2, 3);
        let mut s = ProbeState::new(false);
        assert!(!s.observe(&spec, true));
        assert!(!s.observe(&spec, false));
        assert!(!s.observe(&spec, true));
        assert!(s.observe(&spec, true));
        assert!(s.healthy);
    }

    #[test]
    fn failure_threshold_in_a_row_flips_to_unhealthy() {
        let spec = spec(1, 3);
        let mut s = ProbeState::new(true);
        assert!(!s.observe(&spec, false));
        assert!(!s.observe(&spec, false));
        assert!(!s.observe(&spec, true));
        assert!(!s.observe(&spec, false));
        assert!(!s.observe(&spec, false));
        assert!(s.observe(&spec, false));
        assert!(!s.healthy);
        assert!(s.observe(&spec, true));
    }

    #[test]
    fn defaults_and_named_ports() {
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "app", "ports": [{"name": "admin", "containerPort": 9090}]
        }))
        .unwrap();
        let probe: Probe = serde_json::from_value(serde_json::json!({
            "httpGet": {"path": "/readyz", "port": "admin"}
        }))
        .unwrap();
        let spec = ProbeSpec::from_probe(&container, &probe).unwrap();
        assert_eq!(
            spec.action,
            ProbeAction::HttpGet {
                port: 9090,
                path: "/readyz".into()
            }
        );
        assert_eq!(
            (spec.period, spec.success_threshold, spec.failure_threshold),
            (Duration::from_secs(10), 1, 3)
        );
        let exec: Probe =
            serde_json::from_value(serde_json::json!({"exec": {"command": ["true"]}})).unwrap();
        assert!(ProbeSpec::from_probe(&container, &exec).is_err());
    }
}
