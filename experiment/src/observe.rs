//! Watching a run as it happens: the pods and the Deployment are cached for the settle check,
//! their deletions and replica steps go onto the timeline; a status line on stderr shows
//! requests, errors, rate and pods.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use loadgen::Control;

use crate::timeline::{EventKind, Timeline};

/// The namespace's pods and Deployments as the watchers last saw them, and the task that keeps
/// them current (aborted on drop).
pub struct Watched {
    pub pods: Store<Pod>,
    pub deployments: Store<Deployment>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches the namespace's pods and Deployment into caches, and records deletions and replica
/// changes on the timeline.
pub fn spawn_watchers(client: &Client, ns: &str, timeline: Timeline) -> Watched {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let (pod_store, pod_writer) = reflector::store();
    let (deployment_store, deployment_writer) = reflector::store();
    let t1 = timeline.clone();
    let task = tokio::spawn(async move {
        let pod_events = async {
            let mut deleting = std::collections::HashSet::new();
            let mut stream = watcher(pods, watcher::Config::default())
                .reflect(pod_writer)
                .boxed();
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(watcher::Event::Apply(pod)) | Ok(watcher::Event::InitApply(pod)) => {
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        if pod.metadata.deletion_timestamp.is_some()
                            && deleting.insert(name.clone())
                        {
                            t1.record(EventKind::PodDeletionStarted { pod: name });
                        }
                    }
                    Ok(watcher::Event::Delete(pod)) => {
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        if deleting.insert(name.clone()) {
                            t1.record(EventKind::PodDeletionStarted { pod: name.clone() });
                        }
                        t1.record(EventKind::PodRemoved { pod: name });
                    }
                    _ => {}
                }
            }
        };
        let deployment_events = async {
            let mut last: Option<i32> = None;
            let mut stream = watcher(deployments, watcher::Config::default())
                .reflect(deployment_writer)
                .boxed();
            while let Some(ev) = stream.next().await {
                if let Ok(watcher::Event::Apply(d)) | Ok(watcher::Event::InitApply(d)) = ev {
                    let replicas = d.spec.and_then(|s| s.replicas).unwrap_or(1);
                    if last.is_some_and(|l| l != replicas) {
                        timeline.record(EventKind::DeploymentReplicas { replicas });
                    }
                    last = Some(replicas);
                }
            }
        };
        futures::join!(pod_events, deployment_events);
    });
    Watched {
        pods: pod_store,
        deployments: deployment_store,
        task,
    }
}

/// A status line on stderr: elapsed, requests, errors, rate, pods.
/// The pods come from the watchers' cache: the status line sends nothing to the API server.
pub async fn progress(label: String, origin: Instant, control: Control, pods: Store<Pod>) {
    let tty = std::io::stderr().is_terminal();
    let mut last_sent = 0;
    let mut tick = 0u64;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tick += 1;
        let sent = control.finished();
        let errors = control.failed();
        let pods = pods.state();
        let terminating = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some())
            .count();
        let running = pods.len() - terminating;
        let line = format!(
            "  {label}  {:>5.0} s  requests {sent:>8}  errors {errors:>6}  {:>5} req/s  pods {running} (+{terminating} terminating)",
            origin.elapsed().as_secs_f64(),
            sent - last_sent,
        );
        last_sent = sent;
        if tty {
            eprint!("\r{line}   ");
        } else if tick.is_multiple_of(5) {
            eprintln!("{line}");
        }
    }
}
