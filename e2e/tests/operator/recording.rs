//! Watch recorders for scale-downs, kept in the API server's order (resourceVersion), and the
//! checker of a recorded walk.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};

/// An etcd revision: resourceVersions of one API server are etcd revisions, so comparing them
/// orders events across two watches exactly (test-only reliance on an implementation detail).
fn revision(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

/// What happened during a scale-down, in API server order.
#[derive(Default, Debug, Clone)]
pub struct Recording {
    /// (revision, spec.replicas) each time the Deployment's replicas changed.
    pub replicas: Vec<(u64, i32)>,
    /// (revision, pod) when a pod was first seen with a deletion timestamp.
    pub terminating: Vec<(u64, String)>,
    /// (revision, pod) when a pod was removed from the API.
    pub deleted: Vec<(u64, String)>,
    /// (revision, pod) when a terminating pod was first seen with all its containers stopped
    /// (the kubelet removes the pod object later, after its housekeeping).
    pub stopped: Vec<(u64, String)>,
    /// Deployment status (replicas, updated, ready, available) carried by each replicas change:
    /// a spec update leaves status as it was, so this is what the operator saw when it stepped.
    pub status_at_change: Vec<(i32, i32, i32, i32)>,
    /// The `graceful.dev/last-step` stamp carried by each replicas change after the first.
    pub step_stamps: Vec<Option<String>>,
    /// Human-readable timeline: seconds since the recording started, what happened.
    pub timeline: Vec<(f64, String)>,
}

/// Watches the Deployment and its pods from now on; `synced` resolves once both watches listed.
pub async fn record(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<(Arc<Mutex<Recording>>, Vec<tokio::task::JoinHandle<()>>)> {
    let rec = Arc::new(Mutex::new(Recording::default()));
    let started = std::time::Instant::now();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(2);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let r = rec.clone();
    let tx = ready_tx.clone();
    let dep_cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let dep_task = tokio::spawn(async move {
        let mut stream = watcher::watcher(deployments, dep_cfg).boxed();
        while let Some(Ok(event)) = stream.next().await {
            let (d, initial) = match event {
                Event::InitDone => {
                    let _ = tx.send(()).await;
                    continue;
                }
                Event::InitApply(d) => (d, true),
                Event::Apply(d) => (d, false),
                _ => continue,
            };
            let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(-1);
            let mut rec = r.lock().unwrap();
            if rec.replicas.last().map(|l| l.1) != Some(replicas)
                && (initial || !rec.replicas.is_empty())
            {
                rec.replicas.push((revision(&d.metadata), replicas));
                if !initial {
                    let stamp = d
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("graceful.dev/last-step").cloned());
                    rec.step_stamps.push(stamp);
                }
                let st = d.status.clone().unwrap_or_default();
                rec.status_at_change.push((
                    st.replicas.unwrap_or(0),
                    st.updated_replicas.unwrap_or(0),
                    st.ready_replicas.unwrap_or(0),
                    st.available_replicas.unwrap_or(0),
                ));
                let at = started.elapsed().as_secs_f64();
                rec.timeline
                    .push((at, format!("Deployment replicas {replicas}")));
            }
        }
    });
    let r = rec.clone();
    let pod_cfg = watcher::Config::default().labels(&format!("graceful.dev/service={name}"));
    let pod_task = tokio::spawn(async move {
        let mut stream = watcher::watcher(pods, pod_cfg).boxed();
        while let Some(Ok(event)) = stream.next().await {
            match event {
                Event::InitDone => {
                    let _ = ready_tx.send(()).await;
                }
                Event::Apply(p) if p.metadata.deletion_timestamp.is_some() => {
                    let pod = p.metadata.name.clone().unwrap_or_default();
                    let mut rec = r.lock().unwrap();
                    let at = started.elapsed().as_secs_f64();
                    if !rec.terminating.iter().any(|(_, n)| *n == pod) {
                        rec.timeline.push((at, format!("pod {pod} terminating")));
                        rec.terminating.push((revision(&p.metadata), pod.clone()));
                    }
                    if containers_stopped(&p) && !rec.stopped.iter().any(|(_, n)| *n == pod) {
                        rec.timeline.push((at, format!("pod {pod} stopped")));
                        rec.stopped.push((revision(&p.metadata), pod));
                    }
                }
                Event::Delete(p) => {
                    let pod = p.metadata.name.clone().unwrap_or_default();
                    let mut rec = r.lock().unwrap();
                    let at = started.elapsed().as_secs_f64();
                    rec.timeline.push((at, format!("pod {pod} deleted")));
                    if !rec.stopped.iter().any(|(_, n)| *n == pod) {
                        rec.stopped.push((revision(&p.metadata), pod.clone()));
                    }
                    rec.deleted.push((revision(&p.metadata), pod));
                }
                _ => {}
            }
        }
    });
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(30), ready_rx.recv())
            .await
            .context("watches did not sync")?;
    }
    Ok((rec, vec![dep_task, pod_task]))
}

/// Whether the kubelet reports every container of `pod` terminated.
fn containers_stopped(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    let app = status.container_statuses.as_deref().unwrap_or_default();
    let init = status
        .init_container_statuses
        .as_deref()
        .unwrap_or_default();
    !app.is_empty()
        && app
            .iter()
            .chain(init)
            .all(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some()))
}

/// Checks a recorded scale-down from `from` to `to` with step 1: every step in order, each taken
/// only after the pod of the previous step had stopped (all its containers terminated, or the
/// pod gone), exactly one pod removed per step.
pub fn check_walk(rec: &Recording, from: i32, to: i32) -> Result<()> {
    let values: Vec<i32> = rec.replicas.iter().map(|r| r.1).collect();
    let expected: Vec<i32> = (to..=from).rev().collect();
    if values != expected {
        bail!("replicas went {values:?}, expected {expected:?}");
    }
    let steps: Vec<u64> = rec.replicas.iter().skip(1).map(|r| r.0).collect();
    let mut stopped: Vec<u64> = rec.stopped.iter().map(|d| d.0).collect();
    stopped.sort_unstable();
    let mut terminating: Vec<u64> = rec.terminating.iter().map(|t| t.0).collect();
    terminating.sort_unstable();
    if stopped.len() != steps.len() || terminating.len() != steps.len() {
        bail!(
            "{} steps but {} pods terminated and {} stopped: {rec:?}",
            steps.len(),
            terminating.len(),
            stopped.len()
        );
    }
    for (k, step) in steps.iter().enumerate() {
        // step k < its pod starts terminating <= its pod has stopped < step k+1. A pod already
        // down when the step came (an app killed by a fault test: the ReplicaSet controller
        // deletes unready pods first) starts terminating and is stopped in the same event.
        if !(terminating[k] > *step && stopped[k] >= terminating[k]) {
            bail!("step {k} (rev {step}) not followed by one pod's termination: {rec:?}");
        }
        if let Some(next) = steps.get(k + 1)
            && *next < stopped[k]
        {
            bail!(
                "step {} (rev {next}) taken before the pod of step {k} had stopped (rev {}): {rec:?}",
                k + 1,
                stopped[k]
            );
        }
    }
    Ok(())
}
