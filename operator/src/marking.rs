//! The I/O of "the idlest pod goes first": scrape each pod's requests in flight from the app's
//! admin `/metrics`, let [`victims::choose`] pick, and write the deletion-cost annotations it asks
//! for. Runs only at step time, right before the Deployment's replicas drop.
//!
//! Everything here is best effort and bounded: each scrape has [`SCRAPE_TIMEOUT`], at most
//! [`SCRAPE_CONCURRENCY`] run at once, a pod that does not answer counts as busy, and a failed
//! patch is logged; none of it fails the reconcile or holds the step.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::StreamExt;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use crate::error::Error;
use crate::victims::{self, CostChange, DELETION_COST, PodLoad};

/// Bound on one scrape, connect to last byte.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);
/// Scrapes in flight at once.
pub const SCRAPE_CONCURRENCY: usize = 16;
/// Largest /metrics body read.
const MAX_BODY: usize = 1 << 20;

/// Marks the `count` idlest running pods among `pods` and unmarks earlier marks; `count` 0 only
/// takes earlier marks back (and scrapes nothing). Returns the pods chosen.
pub async fn mark_idlest(
    client: &Client,
    ns: &str,
    pods: &[Pod],
    admin_port: i32,
    count: usize,
) -> Vec<String> {
    // Owned inputs: the scrape futures must not borrow `pods` (the controller needs them Send).
    let running: Vec<(PodLoad, Option<SocketAddr>)> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|pod| {
            let load = PodLoad {
                name: pod.metadata.name.clone().unwrap_or_default(),
                in_flight: None,
                cost: pod
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(DELETION_COST).cloned()),
            };
            let addr = pod_addr(pod, admin_port).filter(|_| count > 0);
            (load, addr)
        })
        .collect();
    let loads: Vec<PodLoad> = futures::stream::iter(running)
        .map(|(load, addr)| async move {
            let in_flight = match addr {
                Some(addr) => in_flight(addr).await,
                None => None,
            };
            PodLoad { in_flight, ..load }
        })
        .buffer_unordered(SCRAPE_CONCURRENCY)
        .collect()
        .await;
    if count > 0 && victims::all_equally_idle(&loads) {
        tracing::debug!(
            ns,
            pods = loads.len(),
            "all pods equally idle: no mark, the ReplicaSet chooses"
        );
        return Vec::new();
    }
    let marking = victims::choose(&loads, count);
    if count > 0 {
        let seen: Vec<String> = loads
            .iter()
            .map(|l| match l.in_flight {
                Some(n) => format!("{}={n}", l.name),
                None => format!("{}=?", l.name),
            })
            .collect();
        tracing::info!(ns, victims = ?marking.victims, in_flight = ?seen, "idlest pods marked for removal");
    }
    for change in &marking.changes {
        let (name, cost) = match change {
            CostChange::Mark(name) => (name, Some(victims::MARK_COST)),
            CostChange::Unmark(name) => (name, None),
        };
        if let Err(error) = set_deletion_cost(client, ns, name, cost).await {
            tracing::warn!(ns, pod = %name, %error, "could not write the pod-deletion-cost");
        }
    }
    marking.victims
}

/// Sets (Some) or removes (None) a pod's `controller.kubernetes.io/pod-deletion-cost`. A JSON
/// merge patch rather than an apply: a pod that vanished meanwhile answers 404 (ignored here)
/// instead of an apply trying to create it. Only the annotation is sent.
async fn set_deletion_cost(
    client: &Client,
    ns: &str,
    pod: &str,
    cost: Option<&str>,
) -> Result<(), Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let body = serde_json::json!({"metadata": {"annotations": {DELETION_COST: cost}}});
    match pods
        .patch(pod, &PatchParams::default(), &Patch::Merge(&body))
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        other => other.map(|_| ()).map_err(Error::from),
    }
}

fn pod_addr(pod: &Pod, port: i32) -> Option<SocketAddr> {
    let ip: IpAddr = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
    Some(SocketAddr::new(ip, u16::try_from(port).ok()?))
}

/// Requests in flight on the pod at `addr`, or None if it does not answer in time.
async fn in_flight(addr: SocketAddr) -> Option<u64> {
    match tokio::time::timeout(SCRAPE_TIMEOUT, scrape(addr)).await {
        Ok(Ok(text)) => victims::parse_in_flight(&text),
        Ok(Err(error)) => {
            tracing::debug!(%addr, %error, "metrics scrape failed");
            None
        }
        Err(_) => {
            tracing::debug!(%addr, "metrics scrape timed out");
            None
        }
    }
}

async fn scrape(addr: SocketAddr) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection task dies with this future, also when the timeout drops it.
    let _driver = AbortOnDrop(tokio::spawn(connection));
    let request = hyper::Request::get("/metrics")
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()).into());
    }
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await?
        .to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
