//! Watches pods bound to this agent's nodes and hands each to its own worker.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;

use super::context::AgentContext;
use super::worker;

/// Workers by pod uid; a worker ends (dropping its receiver) once its pod is gone.
#[derive(Default)]
struct Dispatcher {
    workers: HashMap<String, watch::Sender<Pod>>,
    finished: HashSet<String>,
    relist: Option<HashSet<String>>,
}

impl Dispatcher {
    fn apply(&mut self, ctx: &Arc<AgentContext>, pod: Pod) {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        if !node.is_some_and(|n| ctx.node_names.contains(n)) {
            return;
        }
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        if let Some(seen) = &mut self.relist {
            seen.insert(uid.clone());
        }
        if let Some(tx) = self.workers.get(&uid) {
            if tx.send(pod).is_err() {
                self.workers.remove(&uid);
                self.finished.insert(uid);
            }
            return;
        }
        if self.finished.contains(&uid) {
            return;
        }
        let (tx, rx) = watch::channel(pod);
        tokio::spawn(worker::run(ctx.clone(), rx));
        self.workers.insert(uid, tx);
    }

    fn delete(&mut self, pod: &Pod) {
        if let Some(uid) = &pod.metadata.uid {
            // dropping the sender tells the worker the object is gone
            if self.workers.remove(uid).is_some() {
                self.finished.insert(uid.clone());
            }
        }
    }

    fn relist_done(&mut self) {
        if let Some(seen) = self.relist.take() {
            let gone: Vec<String> = self
                .workers
                .keys()
                .filter(|u| !seen.contains(*u))
                .cloned()
                .collect();
            for uid in gone {
                self.workers.remove(&uid);
                self.finished.insert(uid);
            }
        }
    }
}

/// Runs until the watch stream ends (never, under normal operation).
pub async fn watch_pods(ctx: Arc<AgentContext>) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut dispatcher = Dispatcher::default();
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(pod)) | Ok(Event::InitApply(pod)) => dispatcher.apply(&ctx, pod),
            Ok(Event::Delete(pod)) => dispatcher.delete(&pod),
            Ok(Event::Init) => dispatcher.relist = Some(HashSet::new()),
            Ok(Event::InitDone) => dispatcher.relist_done(),
            Err(e) => tracing::warn!(error = %e, "pod watch error"),
        }
    }
}
