//! Which run owns what: each supervisor claims a slot number (1..=254), from which its bridge,
//! namespace prefix and subnet derive, by creating `<registry>/<slot>/` atomically. The entry
//! records the owner's pid and start time, its run dir and the pids of its children, so that a
//! later run can clean up after a run that died without tearing down (SIGKILL, power loss of the
//! test process tree, a bug).
//!
//! The registry lives in `/run` (a tmpfs): it disappears on reboot together with the bridges and
//! namespaces it describes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::network::{self, NetworkPlan};
use crate::{node, process};

#[derive(Debug)]
pub struct Slot {
    pub number: u8,
    entry: PathBuf,
}

/// The machine-wide registry of runs, `/run/graceful-testbed` unless `TESTBED_REGISTRY` is set.
pub fn registry_dir() -> PathBuf {
    std::env::var_os("TESTBED_REGISTRY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/graceful-testbed"))
}

impl Slot {
    /// Cleans up dead runs, then claims the first slot whose subnet and bridge name are unused.
    pub fn claim(run_dir: &Path, keep: bool) -> Result<Self> {
        cleanup_dead_runs();
        let registry = registry_dir();
        std::fs::create_dir_all(&registry)
            .with_context(|| format!("cannot create {}", registry.display()))?;
        for number in 1..=254u8 {
            if NetworkPlan::for_slot(number).conflicts() {
                continue;
            }
            let entry = registry.join(number.to_string());
            match std::fs::create_dir(&entry) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(error) => return Err(error).context("cannot claim a slot"),
            }
            let me = std::process::id() as i32;
            let start = process::start_time(me).context("cannot read own start time")?;
            std::fs::write(
                entry.join("run-dir"),
                run_dir.as_os_str().as_encoded_bytes(),
            )?;
            if keep {
                std::fs::write(entry.join("keep"), b"")?;
            }
            // Written last: its presence marks the entry complete.
            std::fs::write(entry.join("owner"), format!("{me} {start}"))?;
            tracing::info!(slot = number, "claimed slot");
            return Ok(Self { number, entry });
        }
        bail!(
            "no free slot: 10.213.1-254.0/24 are all in use or claimed in {}",
            registry.display()
        )
    }

    pub fn plan(&self) -> NetworkPlan {
        NetworkPlan::for_slot(self.number)
    }

    /// Records a child so that a later run can kill it should this run die without teardown.
    pub fn record_child(&self, pid: u32, name: &str) {
        let start = process::start_time(pid as i32).unwrap_or(0);
        let written = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.entry.join("children"))
            .and_then(|mut file| writeln!(file, "{pid} {start} {name}"));
        if let Err(error) = written {
            tracing::warn!(%error, "cannot record child in the slot registry");
        }
    }

    /// Restores the host state that real nodes change machine-wide (sysctls, hard-coded
    /// kubelet and CNI paths) when no other live run needs it any more.
    pub fn undo_host_changes_if_last(&self) {
        if live_slots().iter().all(|n| *n == self.number) {
            undo_host_changes();
        }
    }

    /// Releases the slot after a complete teardown.
    pub fn release(self) {
        if let Err(error) = std::fs::remove_dir_all(&self.entry) {
            tracing::warn!(%error, entry = %self.entry.display(), "cannot release slot");
        }
    }
}

/// Tears down what runs left behind when their supervisor died: recorded children, namespaces,
/// bridge, run dir (unless kept), registry entry; also testbed bridges with no registry entry.
pub fn cleanup_dead_runs() {
    let registry = registry_dir();
    let Ok(entries) = std::fs::read_dir(&registry) else {
        return;
    };
    let mut claimed = Vec::new();
    for entry in entries.flatten() {
        let Some(number) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u8>().ok())
        else {
            continue;
        };
        claimed.push(number);
        if owner_is_alive(&entry.path()) {
            continue;
        }
        tracing::warn!(slot = number, "cleaning up after a dead run");
        clean_slot(number, &entry.path());
    }
    if live_slots().is_empty() {
        undo_host_changes();
    }
    for bridge in network::testbed_bridges() {
        if let Some(number) = network::slot_of_bridge(&bridge)
            && !claimed.contains(&number)
        {
            tracing::warn!(%bridge, "deleting a testbed bridge that no run owns");
            NetworkPlan::for_slot(number).destroy();
        }
    }
}

/// An entry without an owner file is being written by a starting run, unless it is old.
fn owner_is_alive(entry: &Path) -> bool {
    match std::fs::read_to_string(entry.join("owner")) {
        Ok(owner) => {
            let mut fields = owner.split_whitespace().map(str::parse::<u64>);
            match (fields.next(), fields.next()) {
                (Some(Ok(pid)), Some(Ok(start))) => {
                    process::start_time(pid as i32) == Some(start) && process::is_alive(pid as i32)
                }
                _ => false,
            }
        }
        Err(_) => std::fs::metadata(entry)
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age < Duration::from_secs(60)),
    }
}

/// Slots whose owner runs.
fn live_slots() -> Vec<u8> {
    let Ok(entries) = std::fs::read_dir(registry_dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| owner_is_alive(&entry.path()))
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

fn undo_host_changes() {
    node::host::restore_sysctls(&registry_dir());
    node::host::sweep_machine_paths();
}

fn clean_slot(number: u8, entry: &Path) {
    if let Ok(children) = std::fs::read_to_string(entry.join("children")) {
        for line in children.lines() {
            let mut fields = line.split_whitespace();
            if let (Some(Ok(pid)), Some(Ok(start))) = (
                fields.next().map(str::parse::<i32>),
                fields.next().map(str::parse::<u64>),
            ) {
                process::kill_recorded(pid, start);
            }
        }
    }
    let run_dir = std::fs::read_to_string(entry.join("run-dir"))
        .ok()
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from);
    let plan = NetworkPlan::for_slot(number);
    node::teardown(&plan, run_dir.as_deref());
    plan.destroy();
    if !entry.join("keep").exists()
        && let Some(run_dir) = run_dir
    {
        let _ = std::fs::remove_dir_all(run_dir);
    }
    let _ = std::fs::remove_dir_all(entry);
}
