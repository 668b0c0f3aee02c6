//! Starting a pod's containers and reacting to their exits: image and env resolution, the
//! service-account projection, restarts per restartPolicy with the crash-loop back-off.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

use super::env::{PodFacts, container_env};
use super::journal::Step;
use super::restart::should_restart;
use super::security::{Identity, identity};
use super::slot::Msg;
use super::status::State;
use super::worker::Worker;
use super::{process, token};

const PULL_RETRY: Duration = Duration::from_secs(20);
const CONFIG_RETRY: Duration = Duration::from_secs(2);

impl Worker {
    pub(super) fn facts(&self) -> PodFacts {
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
            home: String::new(),
        }
    }

    /// Starts every container whose start is due.
    pub(super) async fn start_due(&mut self) {
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

    pub(super) fn start(&mut self, i: usize) {
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
        let security = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref());
        let identity = match identity(security, &slot.spec) {
            Ok(identity) => identity,
            Err(e) => {
                slot.view.state = State::waiting("CreateContainerConfigError", Some(e));
                slot.next_start = Some(Instant::now() + CONFIG_RETRY);
                return;
            }
        };
        let home = self.pod_dir.join("home").join(&slot.spec.name);
        if let Err(e) = make_home(&home, identity.as_ref()) {
            slot.view.state = State::waiting("CreateContainerConfigError", Some(e));
            slot.next_start = Some(Instant::now() + CONFIG_RETRY);
            return;
        }
        let facts = PodFacts {
            home: home.display().to_string(),
            ..facts
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
            identity: identity.as_ref(),
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

    pub(super) fn on_exit(
        &mut self,
        idx: usize,
        generation: u64,
        code: Option<i32>,
        signal: Option<i32>,
    ) {
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
}

/// Creates the container's private HOME, owned by the user it runs as.
fn make_home(home: &std::path::Path, identity: Option<&Identity>) -> Result<(), String> {
    std::fs::create_dir_all(home).map_err(|e| format!("creating {}: {e}", home.display()))?;
    if let Some(id) = identity {
        std::os::unix::fs::chown(home, Some(id.uid), Some(id.gid))
            .map_err(|e| format!("chown {}: {e}", home.display()))?;
    }
    Ok(())
}
