//! The idlest pod goes first: with one pod kept busy by long requests, a scale-down step removes
//! an idle pod (`scaleDown.preferIdlePods`, the default), and the busy pod's requests complete.
//!
//! The busy pod is made the newest one on purpose: the ReplicaSet controller's own order (after
//! pending, unready and deletion cost) removes the most recently ready pod first, so the twin with
//! `preferIdlePods: false` deterministically removes the busy pod. That proves the marking is
//! what saves it, and that the test can fail.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use graceful_operator::GracefulService;
use graceful_operator::victims::{DELETION_COST, MARK_COST, parse_in_flight};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::support::*;
use super::{quick_spec, setup};

/// Concurrent long requests sent straight to the busy pod.
const BUSY_REQUESTS: usize = 4;
/// Handler time of each long request (below the app's 30 s cap and the spec's max request).
const BUSY_WORK_MS: u64 = 20_000;

struct Outcome {
    busy: String,
    removed: Vec<String>,
    /// HTTP status of every long request (or the error text).
    responses: Vec<std::result::Result<u16, String>>,
    /// From the scale-down write to the gsvc Stable at 3 (reported, not asserted).
    step_seconds: f64,
}

#[tokio::test]
async fn scale_down_removes_an_idle_pod_and_the_busy_pods_requests_complete() -> Result<()> {
    testbed::skip_without_cluster!();
    let out = scale_down_with_one_busy_pod("op-idle", true).await?;
    eprintln!(
        "preferIdlePods on: busy {}, removed {:?}, responses {:?}, step settled in {:.1} s",
        out.busy, out.removed, out.responses, out.step_seconds
    );
    assert_eq!(out.removed.len(), 1, "one step of one pod");
    assert_ne!(out.removed[0], out.busy, "the busy pod was removed");
    assert_eq!(out.responses, vec![Ok(200); BUSY_REQUESTS]);
    Ok(())
}

#[tokio::test]
async fn without_prefer_idle_pods_the_newest_busy_pod_is_removed() -> Result<()> {
    testbed::skip_without_cluster!();
    let out = scale_down_with_one_busy_pod("op-idle-off", false).await?;
    eprintln!(
        "preferIdlePods off: busy {}, removed {:?}, responses {:?}, step settled in {:.1} s",
        out.busy, out.removed, out.responses, out.step_seconds
    );
    assert_eq!(
        out.removed,
        std::slice::from_ref(&out.busy),
        "the ReplicaSet's own order removes the newest pod"
    );
    Ok(())
}

/// 3 pods, then a 4th (the newest, made busy), then a scale-down to 3 while it serves
/// [`BUSY_REQUESTS`] long requests. Returns which pod went and how the long requests ended.
async fn scale_down_with_one_busy_pod(prefix: &str, prefer_idle: bool) -> Result<Outcome> {
    let s = setup(prefix).await?;
    let operator = Operator::start(s.tb, &s.ns)?;
    let mut spec = quick_spec(3);
    spec.shutdown.max_request_seconds = 25;
    spec.shutdown.termination_grace_period_seconds = 30;
    spec.scale_down.prefer_idle_pods = prefer_idle;
    create_gsvc(&s.client, &s.ns, "web", spec).await?;
    wait_stable(&s.client, &s.ns, "web", 3).await?;
    // Let the first pods age so the 4th is in a later ready-time bucket (log2 seconds).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let before = running_pods(&pods).await?;
    let gsvcs: Api<GracefulService> = Api::namespaced(s.client.clone(), &s.ns);
    set_replicas(&gsvcs, 4).await?;
    wait_stable(&s.client, &s.ns, "web", 4).await?;
    let all = running_pods(&pods).await?;
    let busy = all
        .iter()
        .find(|p| !before.iter().any(|b| b.name == p.name))
        .context("the 4th pod")?
        .clone();

    let requests: Vec<_> = (0..BUSY_REQUESTS)
        .map(|_| tokio::spawn(long_request(busy.main)))
        .collect();
    eventually(
        Duration::from_secs(10),
        "long requests in flight on the busy pod",
        || async {
            let n = in_flight(busy.admin).await?;
            Ok((n == BUSY_REQUESTS as u64).then_some(()))
        },
    )
    .await?;
    let step_start = std::time::Instant::now();
    set_replicas(&gsvcs, 3).await?;
    wait_stable(&s.client, &s.ns, "web", 3).await?;
    let step_seconds = step_start.elapsed().as_secs_f64();
    let after = running_pods(&pods).await?;
    let kept: BTreeSet<&str> = after.iter().map(|p| p.name.as_str()).collect();
    let removed: Vec<String> = all
        .iter()
        .filter(|p| !kept.contains(p.name.as_str()))
        .map(|p| p.name.clone())
        .collect();
    let mut responses = Vec::new();
    for r in requests {
        responses.push(r.await?.map_err(|e| format!("{e:#}")));
    }
    // The survivors carry no mark: a mark is only ever on a pod about to go.
    assert!(
        after.iter().all(|p| p.cost.as_deref() != Some(MARK_COST)),
        "a surviving pod is marked"
    );
    let log = std::fs::read_to_string(&operator.log)?;
    assert_eq!(
        log.contains("idlest pods marked for removal"),
        prefer_idle,
        "marking logged iff preferIdlePods"
    );
    Ok(Outcome {
        busy: busy.name,
        removed,
        responses,
        step_seconds,
    })
}

#[derive(Clone)]
struct RunningPod {
    name: String,
    main: SocketAddr,
    admin: SocketAddr,
    cost: Option<String>,
}

async fn running_pods(pods: &Api<Pod>) -> Result<Vec<RunningPod>> {
    let list = pods
        .list(&ListParams::default().labels("graceful.dev/service=web"))
        .await?;
    list.items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let ip: std::net::IpAddr = p
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .context("pod IP")?
                .parse()?;
            Ok(RunningPod {
                name: p.metadata.name.clone().context("name")?,
                main: SocketAddr::new(ip, 8080),
                admin: SocketAddr::new(ip, 9090),
                cost: p
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(DELETION_COST).cloned()),
            })
        })
        .collect()
}

async fn set_replicas(gsvcs: &Api<GracefulService>, replicas: i32) -> Result<()> {
    let patch = serde_json::json!({"spec": {"replicas": replicas}});
    gsvcs
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// One HTTP/1.0 GET (no chunking, the server closes), bounded by a minute; status and raw text.
async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .context("no status line")?
            .parse()?;
        anyhow::Ok((status, text))
    };
    match tokio::time::timeout(Duration::from_secs(60), exchange).await {
        Ok(result) => result,
        Err(_) => bail!("GET {addr}{path} took over 60 s"),
    }
}

async fn long_request(addr: SocketAddr) -> Result<u16> {
    Ok(get(addr, &format!("/?work_ms={BUSY_WORK_MS}")).await?.0)
}

async fn in_flight(admin: SocketAddr) -> Result<u64> {
    let (status, text) = get(admin, "/metrics").await?;
    anyhow::ensure!(status == 200, "metrics answered {status}");
    parse_in_flight(&text).context("no in-flight gauge in /metrics")
}
