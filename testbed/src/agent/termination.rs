//! Stopping a pod's containers: liveness failures (restart), deletion (preStop, SIGTERM, SIGKILL
//! after the grace period) and the object vanishing under us (immediate kill).

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::journal::Step;
use super::kill::{KillOrder, stop};
use super::slot::{Msg, ProbeKind};
use super::worker::Worker;
use super::{process, timeline};

impl Worker {
    pub(super) fn on_probe(
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

    pub(super) fn grace(&self) -> Duration {
        timeline::grace_period(
            self.pod.metadata.deletion_grace_period_seconds,
            self.pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds),
        )
    }

    pub(super) fn spawn_stop(&self, idx: usize, since: Instant) {
        let slot = &self.slots[idx];
        let Some(pid) = slot.pid else { return };
        let order = KillOrder {
            key: self.key.clone(),
            pod: self.pod.clone(),
            container: slot.spec.clone(),
            pid,
            pod_ip: self.net.ip,
            grace: self.grace(),
            since,
            exited: slot.exited.subscribe(),
        };
        tokio::spawn(stop(self.ctx.clone(), order));
    }

    pub(super) fn begin_termination(&mut self) {
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
    pub(super) async fn force_kill(&mut self, rx: &mut mpsc::Receiver<Msg>) {
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
}
