//! One container of a pod across its restarts: its process, probes, back-off and reported state.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use k8s_openapi::jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::image::{ImageError, Invocation, repository};
use super::probes::{self, ProbeSpec, ProbeState};
use super::restart::Backoff;
use super::status::{ContainerView, State};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Readiness,
    Liveness,
}

/// What a pod worker hears from its containers' helper tasks.
pub enum Msg {
    Exited {
        idx: usize,
        generation: u64,
        code: Option<i32>,
        signal: Option<i32>,
    },
    Probe {
        idx: usize,
        generation: u64,
        kind: ProbeKind,
        result: Result<(), String>,
    },
}

pub struct Slot {
    pub spec: Container,
    pub invocation: Result<Invocation, ImageError>,
    pub view: ContainerView,
    pub pid: Option<i32>,
    /// Increments at every start, so stale probe results and exits are ignored.
    pub generation: u64,
    pub started: Option<Instant>,
    /// When the next start is due (None: not scheduled).
    pub next_start: Option<Instant>,
    pub backoff: Backoff,
    pub readiness: Option<(ProbeSpec, ProbeState)>,
    pub liveness: Option<(ProbeSpec, ProbeState)>,
    pub probe_tasks: Vec<JoinHandle<()>>,
    pub exited: watch::Sender<bool>,
    /// A liveness kill is under way (do not start another).
    pub killing: bool,
    /// The last image error was already reported once (then ImagePullBackOff).
    pub pull_failed_before: bool,
    /// Probes that cannot be run (exec, grpc, bad port) are reported once and ignored.
    pub probe_errors: Vec<String>,
    /// The previous run's end, reported as `lastState` after a restart.
    pub last_terminated: Option<State>,
}

impl Slot {
    pub fn new(spec: Container, invocation: Result<Invocation, ImageError>) -> Self {
        let image = spec.image.clone().unwrap_or_default();
        let image_id = match &invocation {
            Ok(inv) => format!("testbed://{}@{}", repository(&image), inv.program.display()),
            Err(_) => String::new(),
        };
        let mut probe_errors = Vec::new();
        let mut load = |probe: &Option<k8s_openapi::api::core::v1::Probe>, initially: bool| {
            probe
                .as_ref()
                .and_then(|p| match ProbeSpec::from_probe(&spec, p) {
                    Ok(s) => Some((s, ProbeState::new(initially))),
                    Err(e) => {
                        probe_errors.push(e);
                        None
                    }
                })
        };
        let readiness = load(&spec.readiness_probe, false);
        let liveness = load(&spec.liveness_probe, true);
        let (exited, _) = watch::channel(false);
        Slot {
            view: ContainerView {
                name: spec.name.clone(),
                image,
                image_id,
                container_id: None,
                state: State::waiting("ContainerCreating", None),
                last_state: None,
                ready: false,
                restart_count: 0,
                ever_started: false,
            },
            spec,
            invocation,
            pid: None,
            generation: 0,
            started: None,
            next_start: Some(Instant::now()),
            backoff: Backoff::default(),
            readiness,
            liveness,
            probe_tasks: Vec::new(),
            exited,
            killing: false,
            pull_failed_before: false,
            probe_errors,
            last_terminated: None,
        }
    }

    /// Ready = running and (no readiness probe, or its result is healthy).
    pub fn refresh_ready(&mut self) {
        let running = matches!(self.view.state, State::Running { .. });
        let probe_ok = self.readiness.as_ref().is_none_or(|(_, s)| s.healthy);
        self.view.ready = running && probe_ok;
    }

    /// Records a successful start of `pid`.
    pub fn mark_started(&mut self, pid: i32, program: &Path) {
        if self.view.ever_started {
            self.view.restart_count += 1;
            self.view.last_state = self.last_terminated.take();
        }
        self.generation += 1;
        self.pid = Some(pid);
        self.killing = false;
        self.started = Some(Instant::now());
        self.next_start = None;
        self.view.ever_started = true;
        self.view.container_id = Some(format!("testbed://{pid}"));
        self.view.state = State::Running {
            started_at: Timestamp::now(),
        };
        if let Some((_, s)) = &mut self.readiness {
            *s = ProbeState::new(false);
        }
        if let Some((_, s)) = &mut self.liveness {
            *s = ProbeState::new(true);
        }
        let (exited, _) = watch::channel(false);
        self.exited = exited;
        tracing::debug!(container = %self.spec.name, pid, program = %program.display(), "started");
        self.refresh_ready();
    }

    /// Starts the probe loops of the current run.
    pub fn spawn_probes(&mut self, idx: usize, ip: Ipv4Addr, tx: &mpsc::Sender<Msg>) {
        for (kind, probe) in [
            (ProbeKind::Readiness, &self.readiness),
            (ProbeKind::Liveness, &self.liveness),
        ] {
            let Some((spec, _)) = probe else { continue };
            let spec = spec.clone();
            let tx = tx.clone();
            let generation = self.generation;
            self.probe_tasks.push(tokio::spawn(async move {
                tokio::time::sleep(spec.initial_delay).await;
                loop {
                    let result = probes::run_once(ip, &spec).await;
                    let msg = Msg::Probe {
                        idx,
                        generation,
                        kind,
                        result,
                    };
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(spec.period).await;
                }
            }));
        }
    }

    pub fn stop_probes(&mut self) {
        for task in self.probe_tasks.drain(..) {
            task.abort();
        }
    }

    /// How long the run that just ended lasted.
    pub fn ran_for(&self) -> Duration {
        self.started.map(|s| s.elapsed()).unwrap_or_default()
    }
}

impl Slot {
    /// Keeps the previous run's terminated state while the container waits in back-off.
    pub fn set_terminated(&mut self, state: State) {
        self.last_terminated = Some(state.clone());
        self.view.state = state;
    }
}
