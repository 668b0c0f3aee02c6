//! Stopping a container the kubelet's way: preStop hook (httpGet or sleep), SIGTERM, and SIGKILL
//! when the grace period (counted from the deletion, hook included) runs out.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod};
use nix::sys::signal::Signal;
use tokio::sync::watch;
use tokio::time::Instant;

use super::context::AgentContext;
use super::journal::{PodKey, Step};
use super::{probes, process, timeline};

/// One container to stop.
pub struct KillOrder {
    pub key: PodKey,
    /// The pod, for events about it.
    pub pod: Pod,
    pub container: Container,
    pub pid: i32,
    pub pod_ip: Ipv4Addr,
    pub grace: Duration,
    /// When the deletion (or liveness failure) was observed: the grace period counts from here.
    pub since: Instant,
    /// Turns true when the container's process has exited.
    pub exited: watch::Receiver<bool>,
}

/// Runs the preStop hook; returns a short description of how it ended.
async fn run_prestop(handler: &LifecycleHandler, container: &Container, ip: Ipv4Addr) -> String {
    if let Some(sleep) = &handler.sleep {
        tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64)).await;
        return format!("slept {}s", sleep.seconds);
    }
    if let Some(http) = &handler.http_get {
        let port = match probes::resolve_port(container, &http.port) {
            Ok(p) => p,
            Err(e) => return format!("failed: {e}"),
        };
        let host = http
            .host
            .as_deref()
            .and_then(|h| h.parse::<Ipv4Addr>().ok())
            .unwrap_or(ip);
        let path = http.path.as_deref().unwrap_or("/");
        return match probes::http_get(host, port, path).await {
            Ok(status) if (200..400).contains(&status) => format!("http {status}"),
            Ok(status) => format!("failed: http {status}"),
            Err(e) => format!("failed: {e}"),
        };
    }
    "failed: only httpGet and sleep preStop handlers are supported".to_string()
}

/// Stops one container; the caller learns of the exit through its own process watcher.
pub async fn stop(ctx: Arc<AgentContext>, order: KillOrder) {
    let name = order.container.name.clone();
    let journal = &ctx.journal;
    let prestop = order
        .container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.clone());
    let mut exited = order.exited.clone();
    if let Some(handler) = &prestop {
        journal.record(
            &order.key,
            Some(&name),
            Step::PrestopSent,
            Some(order.pid),
            None,
            None,
        );
        let budget = timeline::prestop_budget(order.grace).saturating_sub(order.since.elapsed());
        let outcome = match tokio::time::timeout(
            budget,
            run_prestop(handler, &order.container, order.pod_ip),
        )
        .await
        {
            Ok(outcome) => outcome,
            Err(_) => format!(
                "still running when the grace period of {:?} ran out",
                order.grace
            ),
        };
        if outcome.starts_with("failed") || outcome.starts_with("still running") {
            let note = format!("PreStopHook of container {name} failed: {outcome}");
            ctx.event(&order.pod, true, "FailedPreStopHook", "PreStop", note);
        }
        journal.record(
            &order.key,
            Some(&name),
            Step::PrestopDone,
            Some(order.pid),
            None,
            Some(outcome),
        );
    }
    if !*exited.borrow() {
        journal.record(
            &order.key,
            Some(&name),
            Step::SigtermSent,
            Some(order.pid),
            None,
            None,
        );
        process::signal(order.pid, Signal::SIGTERM);
    }
    let wait = timeline::sigkill_after(order.grace, order.since.elapsed(), prestop.is_some());
    let gone = tokio::time::timeout(wait, exited.wait_for(|e| *e)).await;
    if gone.is_err() {
        journal.record(
            &order.key,
            Some(&name),
            Step::SigkillSent,
            Some(order.pid),
            None,
            Some(format!("grace period {:?} ran out", order.grace)),
        );
        process::kill_group(order.pid);
    }
}
