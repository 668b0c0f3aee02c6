//! One pod's life on the node: network setup, service-account projection, container starts and
//! restarts, probes, truthful status, and the graceful termination on deletion.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::context::AgentContext;
use super::image::resolve;
use super::journal::{PodKey, Step};
use super::netns::{self, PodNetwork, veth_name};
use super::process;
use super::slot::{Msg, Slot};
use super::status::{PodView, State, pod_status};

const TICK: Duration = Duration::from_millis(250);

pub(super) struct Worker {
    pub(super) ctx: Arc<AgentContext>,
    pub(super) pod: Pod,
    pub(super) key: PodKey,
    pub(super) net: PodNetwork,
    pub(super) view: PodView,
    pub(super) slots: Vec<Slot>,
    pub(super) pod_dir: PathBuf,
    /// None until the token was projected; Some(None) when the pod opted out.
    pub(super) service_account: Option<Option<PathBuf>>,
    pub(super) last_status: Option<Value>,
    pub(super) terminating: bool,
    pub(super) tx: mpsc::Sender<Msg>,
}

/// Runs a pod until it is deleted. `pods` carries the newest object; it closes when the object
/// disappeared from the API (force deletion).
pub async fn run(ctx: Arc<AgentContext>, mut pods: watch::Receiver<Pod>) {
    let pod = pods.borrow_and_update().clone();
    let key = PodKey {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        pod: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
    };
    let Some((ip, n)) = ctx.lock_ipam().allocate() else {
        tracing::error!(pod = %key.pod, "pod CIDR exhausted");
        return;
    };
    let net = PodNetwork {
        netns: format!("{}-{n}", ctx.netns_prefix),
        host_veth: veth_name(&ctx.netns_prefix, n),
        ip,
        prefix: ctx.cidr.prefix,
        gateway: ctx.gateway,
        bridge: ctx.bridge.clone(),
    };
    let spec = pod.spec.clone().unwrap_or_default();
    let slots = spec
        .containers
        .iter()
        .map(|c| {
            let image = c.image.clone().unwrap_or_default();
            let command = c.command.clone().unwrap_or_default();
            let args = c.args.clone().unwrap_or_default();
            Slot::new(c.clone(), resolve(&ctx.images, &image, &command, &args))
        })
        .collect::<Vec<_>>();
    let (tx, rx) = mpsc::channel(64);
    let mut worker = Worker {
        pod_dir: ctx
            .run_dir
            .join("pods")
            .join(format!("{}_{}", key.namespace, key.pod)),
        view: PodView {
            pod_ip: None,
            host_ip: ctx.gateway,
            start_time: Timestamp::now(),
            restart_policy: spec.restart_policy.clone(),
            containers: slots.iter().map(|s| s.view.clone()).collect(),
            ready_since: Timestamp::now(),
        },
        ctx,
        pod,
        key,
        net,
        slots,
        service_account: None,
        last_status: None,
        terminating: false,
        tx,
    };
    tracing::info!(pod = %worker.key.pod, namespace = %worker.key.namespace, ip = %ip, netns = %worker.net.netns, "pod accepted");
    let gone = worker.live(&mut pods, rx).await;
    worker.finish(gone).await;
}

impl Worker {
    /// The main loop; returns true when the API object vanished under us.
    async fn live(&mut self, pods: &mut watch::Receiver<Pod>, mut rx: mpsc::Receiver<Msg>) -> bool {
        if self.pod.metadata.deletion_timestamp.is_some() {
            return false;
        }
        if let Err(e) = netns::create(&self.net).await {
            tracing::error!(error = %e, pod = %self.key.pod, "pod network setup failed");
            for slot in &mut self.slots {
                slot.view.state = State::waiting("CreatePodSandboxError", Some(format!("{e:#}")));
                slot.next_start = None;
            }
        } else {
            self.view.pod_ip = Some(self.net.ip);
        }
        for slot in &self.slots {
            for err in &slot.probe_errors {
                self.ctx.event(
                    &self.pod,
                    true,
                    "Unhealthy",
                    "Probe",
                    format!("probe of container {} ignored: {err}", slot.spec.name),
                );
            }
        }
        let mut tick = tokio::time::interval(TICK);
        loop {
            if !self.terminating {
                self.start_due().await;
            }
            self.sync_status().await;
            if self.terminating && self.slots.iter().all(|s| s.pid.is_none()) {
                return false;
            }
            tokio::select! {
                changed = pods.changed() => {
                    if changed.is_err() {
                        self.force_kill(&mut rx).await;
                        return true;
                    }
                    self.pod = pods.borrow_and_update().clone();
                    if self.pod.metadata.deletion_timestamp.is_some() && !self.terminating {
                        self.begin_termination();
                    }
                }
                Some(msg) = rx.recv() => self.handle(msg),
                _ = tick.tick() => {}
            }
        }
    }

    pub(super) fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Exited {
                idx,
                generation,
                code,
                signal,
            } => self.on_exit(idx, generation, code, signal),
            Msg::Probe {
                idx,
                generation,
                kind,
                result,
            } => self.on_probe(idx, generation, kind, result),
        }
    }

    async fn sync_status(&mut self) {
        let mut changed_ready = self.view.all_ready();
        self.view.containers = self.slots.iter().map(|s| s.view.clone()).collect();
        changed_ready ^= self.view.all_ready();
        if changed_ready {
            self.view.ready_since = Timestamp::now();
        }
        let status = pod_status(&self.view);
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.key.namespace);
        let patch = Patch::Merge(json!({"status": status}));
        match pods
            .patch_status(&self.key.pod, &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => self.last_status = Some(status),
            Err(e) => tracing::warn!(error = %e, pod = %self.key.pod, "status patch failed"),
        }
    }

    /// Tears down the pod's network, then removes the pod object (grace 0, this very pod only),
    /// so that `pod_deleted` in the journal means nothing of the pod is left on the node.
    async fn finish(&mut self, gone: bool) {
        for slot in &mut self.slots {
            slot.stop_probes();
            if let Some(pid) = slot.pid.take() {
                process::kill_group(pid);
                self.ctx.track_pid(pid, false);
            }
        }
        netns::delete(&self.net).await;
        self.ctx.lock_ipam().release(self.net.ip);
        if !gone {
            self.delete_object().await;
        }
        tracing::info!(pod = %self.key.pod, namespace = %self.key.namespace, "pod removed");
    }

    /// Deletes the API object, retrying transient errors; gone or replaced counts as done.
    async fn delete_object(&self) {
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.key.namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.key.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        for attempt in 1..=10u32 {
            match pods.delete(&self.key.pod, &params).await {
                Ok(_) => break,
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => break,
                Err(e) => {
                    tracing::warn!(error = %e, pod = %self.key.pod, attempt, "pod delete failed");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
            }
        }
        let netns = Some(self.net.netns.clone());
        self.ctx
            .journal
            .record(&self.key, None, Step::PodDeleted, None, None, netns);
    }
}
