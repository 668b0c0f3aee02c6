//! What every pod worker shares: the API client, the agent's configuration, the address pool,
//! the lifecycle journal, the set of live processes (for shutdown) and the event recorder.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use super::env::ApiEndpoint;
use super::ipam::{Cidr, Ipam};
use super::journal::Journal;

pub struct AgentContext {
    pub client: kube::Client,
    pub node_names: BTreeSet<String>,
    pub images: BTreeMap<String, PathBuf>,
    pub bridge: String,
    pub gateway: Ipv4Addr,
    pub cidr: Cidr,
    pub netns_prefix: String,
    pub run_dir: PathBuf,
    pub api: ApiEndpoint,
    pub ca_file: PathBuf,
    pub ipam: Mutex<Ipam>,
    pub journal: Journal,
    /// Main pids of running containers, killed at agent shutdown.
    pub pids: Mutex<HashSet<i32>>,
    pub recorder: Recorder,
}

impl AgentContext {
    pub fn reporter(node: &str) -> Reporter {
        Reporter {
            controller: "kubelet".into(),
            instance: Some(node.into()),
        }
    }

    pub fn lock_ipam(&self) -> std::sync::MutexGuard<'_, Ipam> {
        self.ipam.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn track_pid(&self, pid: i32, live: bool) {
        let mut pids = self.pids.lock().unwrap_or_else(|p| p.into_inner());
        if live {
            pids.insert(pid);
        } else {
            pids.remove(&pid);
        }
    }

    pub fn live_pids(&self) -> Vec<i32> {
        self.pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }

    /// Publishes a kubelet-style event about the pod in the background; failures are only logged.
    pub fn event(&self, pod: &Pod, warning: bool, reason: &str, action: &str, note: String) {
        let recorder = self.recorder.clone();
        let reference = pod.object_ref(&());
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(note),
            action: action.to_string(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::debug!(error = %e, "event not published");
            }
        });
    }
}
