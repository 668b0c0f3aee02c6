//! One pod's life on the node: network setup, service-account projection, container starts and
//! restarts, probes, truthful status, and the graceful termination on deletion.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::context::AgentContext;
use super::env::{PodFacts, container_env};
use super::image::resolve;
use super::journal::{PodKey, Step};
use super::kill::{KillOrder, stop};
use super::netns::{self, PodNetwork, veth_name};
use super::restart::should_restart;
use super::slot::{Msg, ProbeKind, Slot};
use super::status::{PodView, State, pod_status};
use super::{process, timeline, token};

const TICK: Duration = Duration::from_millis(250);
const PULL_RETRY: Duration = Duration::from_secs(20);
const CONFIG_RETRY: Duration = Duration::from_secs(2);

struct Worker {
    ctx: Arc<AgentContext>,
    pod: Pod,
    key: PodKey,
    net: PodNetwork,
    view: PodView,
    slots: Vec<Slot>,
    pod_dir: PathBuf,
    /// None until the token was projected; Some(None) when the pod opted out.
    service_account: Option<Option<PathBuf>>,
    last_status: Option<Value>,
    terminating: bool,
    tx: mpsc::Sender<Msg>,
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

    fn facts(&self) -> PodFacts {
        let spec = self.pod.spec.as_ref();
        PodFacts {
            name: self.key.pod.clone(),
            namespace: self.key.namespace.clone(),
            uid: self.key.uid.clone(),
            node_name: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            pod_ip: self.net.ip.to_string(),
            host_ip: self.ctx.gateway.to_string(),
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
        }
    }

    /// Starts every container whose start is due.
    async fn start_due(&mut self) {
        let now = Instant::now();
        let due: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                self.slots[i].pid.is_none() && self.slots[i].next_start.is_some_and(|t| t <= now)
            })
            .collect();
        if due.is_empty() || self.view.pod_ip.is_none() {
            return;
        }
        if self.service_account.is_none() {
            match token::project(
                &self.ctx.client,
                &self.pod,
                &self.ctx.ca_file,
                &self.pod_dir,
            )
            .await
            {
                Ok(dir) => self.service_account = Some(dir),
                Err(e) => {
                    for &i in &due {
                        let slot = &mut self.slots[i];
                        slot.view.state =
                            State::waiting("CreateContainerConfigError", Some(format!("{e:#}")));
                        slot.next_start = Some(now + CONFIG_RETRY);
                    }
                    return;
                }
            }
        }
        for i in due {
            self.start(i);
        }
    }

    fn start(&mut self, i: usize) {
        let facts = self.facts();
        let sa_dir = self.service_account.clone().flatten();
        let api = sa_dir.as_ref().map(|_| self.ctx.api.clone());
        let log_path = process::log_path(
            &self.ctx.run_dir,
            &self.key.namespace,
            &self.key.pod,
            &self.slots[i].spec.name,
        );
        let netns_path = self.net.netns_path();
        let slot = &mut self.slots[i];
        let invocation = match &slot.invocation {
            Ok(inv) => inv.clone(),
            Err(e) => {
                let reason = if slot.pull_failed_before {
                    "ImagePullBackOff"
                } else {
                    e.reason()
                };
                if !slot.pull_failed_before {
                    self.ctx
                        .event(&self.pod, true, "Failed", "Pull", e.message());
                }
                slot.pull_failed_before = true;
                slot.view.state = State::waiting(reason, Some(e.message()));
                slot.next_start = Some(Instant::now() + PULL_RETRY);
                return;
            }
        };
        let env = match container_env(&self.pod, &slot.spec, &facts, api.as_ref()) {
            Ok(env) => env,
            Err(e) => {
                slot.view.state = State::waiting("CreateContainerConfigError", Some(e));
                slot.next_start = Some(Instant::now() + CONFIG_RETRY);
                return;
            }
        };
        let launch = process::Launch {
            invocation: &invocation,
            env: &env,
            netns_path: &netns_path,
            service_account_dir: sa_dir.as_deref(),
            log_path: &log_path,
        };
        let mut child = match process::spawn(&launch) {
            Ok(child) => child,
            Err(e) => {
                let delay = slot.backoff.next_delay(Duration::ZERO).max(CONFIG_RETRY);
                slot.view.state = State::waiting("RunContainerError", Some(format!("{e:#}")));
                slot.next_start = Some(Instant::now() + delay);
                return;
            }
        };
        let Some(pid) = child.id().map(|p| p as i32) else {
            return;
        };
        self.ctx.track_pid(pid, true);
        slot.mark_started(pid, &invocation.program);
        let generation = slot.generation;
        let exited = slot.exited.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = exited.send(true);
            let (code, signal) = match status {
                Ok(s) => (s.code(), s.signal()),
                Err(_) => (None, None),
            };
            let _ = tx
                .send(Msg::Exited {
                    idx: i,
                    generation,
                    code,
                    signal,
                })
                .await;
        });
        slot.spawn_probes(i, self.net.ip, &self.tx);
        let name = slot.spec.name.clone();
        self.ctx.journal.record(
            &self.key,
            Some(&name),
            Step::Started,
            Some(pid),
            None,
            Some(self.net.netns.clone()),
        );
        self.ctx.event(
            &self.pod,
            false,
            "Started",
            "Start",
            format!("Started container {name}"),
        );
    }

    fn handle(&mut self, msg: Msg) {
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

    fn on_exit(&mut self, idx: usize, generation: u64, code: Option<i32>, signal: Option<i32>) {
        let slot = &mut self.slots[idx];
        if slot.generation != generation {
            return;
        }
        let pid = slot.pid.take();
        if let Some(pid) = pid {
            self.ctx.track_pid(pid, false);
            process::kill_group(pid);
        }
        slot.stop_probes();
        let exit_code = code.unwrap_or_else(|| 128 + signal.unwrap_or(0));
        let started_at = match &slot.view.state {
            State::Running { started_at } => Some(*started_at),
            _ => None,
        };
        let reason = if exit_code == 0 { "Completed" } else { "Error" };
        slot.set_terminated(State::Terminated {
            exit_code,
            signal,
            reason: reason.into(),
            started_at,
            finished_at: Timestamp::now(),
        });
        slot.refresh_ready();
        let name = slot.spec.name.clone();
        let detail = signal.map(|s| format!("signal {s}"));
        self.ctx.journal.record(
            &self.key,
            Some(&name),
            Step::Exited,
            pid,
            Some(exit_code),
            detail,
        );
        if self.terminating {
            return;
        }
        let policy = self.view.restart_policy.clone();
        if should_restart(policy.as_deref(), exit_code) {
            let delay = slot.backoff.next_delay(slot.ran_for());
            slot.next_start = Some(Instant::now() + delay);
            if !delay.is_zero() {
                let message = format!(
                    "back-off {}s restarting failed container={name} pod={}",
                    delay.as_secs(),
                    self.key.pod
                );
                slot.view.last_state = slot.last_terminated.clone();
                slot.view.state = State::waiting("CrashLoopBackOff", Some(message.clone()));
                self.ctx.event(&self.pod, true, "BackOff", "Start", message);
            }
        }
    }

    fn on_probe(
        &mut self,
        idx: usize,
        generation: u64,
        kind: ProbeKind,
        result: Result<(), String>,
    ) {
        let slot = &mut self.slots[idx];
        if slot.generation != generation || slot.pid.is_none() {
            return;
        }
        let probe = match kind {
            ProbeKind::Readiness => &mut slot.readiness,
            ProbeKind::Liveness => &mut slot.liveness,
        };
        let Some((spec, state)) = probe else { return };
        let changed = state.observe(spec, result.is_ok());
        let healthy = state.healthy;
        if let Err(e) = &result {
            let what = if kind == ProbeKind::Readiness {
                "Readiness"
            } else {
                "Liveness"
            };
            self.ctx.event(
                &self.pod,
                true,
                "Unhealthy",
                "Probe",
                format!("{what} probe failed: {e}"),
            );
        }
        slot.refresh_ready();
        if changed && kind == ProbeKind::Liveness && !healthy && !slot.killing && !self.terminating
        {
            slot.killing = true;
            let name = slot.spec.name.clone();
            self.ctx.event(
                &self.pod,
                false,
                "Killing",
                "Kill",
                format!("Container {name} failed liveness probe, will be restarted"),
            );
            self.spawn_stop(idx, Instant::now());
        }
    }

    fn grace(&self) -> Duration {
        timeline::grace_period(
            self.pod.metadata.deletion_grace_period_seconds,
            self.pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds),
        )
    }

    fn spawn_stop(&self, idx: usize, since: Instant) {
        let slot = &self.slots[idx];
        let Some(pid) = slot.pid else { return };
        let order = KillOrder {
            key: self.key.clone(),
            container: slot.spec.clone(),
            pid,
            pod_ip: self.net.ip,
            grace: self.grace(),
            since,
            exited: slot.exited.subscribe(),
        };
        tokio::spawn(stop(self.ctx.clone(), order));
    }

    fn begin_termination(&mut self) {
        self.terminating = true;
        let since = Instant::now();
        tracing::info!(pod = %self.key.pod, grace = ?self.grace(), "pod deletion observed");
        for idx in 0..self.slots.len() {
            let slot = &mut self.slots[idx];
            slot.next_start = None;
            if slot.pid.is_some() {
                let name = slot.spec.name.clone();
                self.ctx.event(
                    &self.pod,
                    false,
                    "Killing",
                    "Kill",
                    format!("Stopping container {name}"),
                );
                self.spawn_stop(idx, since);
            }
        }
    }

    /// The object is gone (force deletion): kill at once and wait for the exits.
    async fn force_kill(&mut self, rx: &mut mpsc::Receiver<Msg>) {
        self.terminating = true;
        for slot in &self.slots {
            if let Some(pid) = slot.pid {
                self.ctx.journal.record(
                    &self.key,
                    Some(&slot.spec.name),
                    Step::SigkillSent,
                    Some(pid),
                    None,
                    Some("pod object removed".into()),
                );
                process::signal(pid, Signal::SIGKILL);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.slots.iter().any(|s| s.pid.is_some()) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(msg)) => self.handle(msg),
                _ => break,
            }
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

    /// Removes the pod object (grace 0, this very pod only) and its network.
    async fn finish(&mut self, gone: bool) {
        for slot in &mut self.slots {
            slot.stop_probes();
            if let Some(pid) = slot.pid.take() {
                process::kill_group(pid);
                self.ctx.track_pid(pid, false);
            }
        }
        if !gone {
            let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.key.namespace);
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.key.uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match pods.delete(&self.key.pod, &params).await {
                Ok(_) => self.ctx.journal.record(
                    &self.key,
                    None,
                    Step::PodDeleted,
                    None,
                    None,
                    Some(self.net.netns.clone()),
                ),
                Err(e) => tracing::warn!(error = %e, pod = %self.key.pod, "pod delete failed"),
            }
        }
        netns::delete(&self.net).await;
        self.ctx.lock_ipam().release(self.net.ip);
        tracing::info!(pod = %self.key.pod, namespace = %self.key.namespace, "pod removed");
    }
}
