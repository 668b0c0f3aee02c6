//! What real nodes change outside their run folder and network namespaces, and how it is undone:
//! kernel sysctls the kubelet sets, a FORWARD guard, cgroups, mounts, and a few paths the kubelet
//! and the CNI plugins hard-code. Each undo is idempotent and also runs from `testbed cleanup` and
//! from the next run's start, so a SIGKILLed supervisor leaves nothing for long.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The host-wide (not per network namespace) sysctls kubelet's container manager sets at start
/// (`setupKernelTunables` in pkg/kubelet/cm/container_manager_linux.go, 1.34).
pub const KUBELET_SYSCTLS: [&str; 6] = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// Where the first run of the machine records the values it found: `<registry>/host/sysctl/`.
fn sysctl_record(registry: &Path) -> PathBuf {
    registry.join("host/sysctl")
}

/// Records each sysctl's current value unless a record exists (a run is live, or a dead run's
/// value is still to be restored: the record then holds the original, not the kubelet's).
pub fn record_sysctls(registry: &Path) -> Result<()> {
    let dir = sysctl_record(registry);
    std::fs::create_dir_all(&dir)?;
    for name in KUBELET_SYSCTLS {
        let record = dir.join(name.replace('/', "."));
        if record.exists() {
            continue;
        }
        let value = std::fs::read_to_string(Path::new("/proc/sys").join(name))
            .with_context(|| format!("cannot read sysctl {name}"))?;
        std::fs::write(&record, value.trim())?;
    }
    Ok(())
}

/// Writes the recorded values back and drops the record. Called when no live run remains.
pub fn restore_sysctls(registry: &Path) {
    let dir = sysctl_record(registry);
    for name in KUBELET_SYSCTLS {
        let record = dir.join(name.replace('/', "."));
        let Ok(value) = std::fs::read_to_string(&record) else {
            continue;
        };
        let path = Path::new("/proc/sys").join(name);
        match std::fs::write(&path, value.trim()) {
            Ok(()) => {
                let _ = std::fs::remove_file(&record);
            }
            Err(error) => tracing::warn!(%error, sysctl = name, "cannot restore"),
        }
    }
    let _ = std::fs::remove_dir(&dir);
    let _ = std::fs::remove_dir(registry.join("host"));
}

/// The nftables table that keeps the run's bridge from being a router: anything the host would
/// forward into or out of the bridge from or to another interface is dropped (traffic between
/// the nodes on the bridge is untouched). Nodes have no default route, so this is a second net,
/// for hosts that forward. A table of its own, so that teardown deletes it whole and leaves the
/// host's own rules as they were.
fn guard_table(bridge: &str) -> String {
    format!("{bridge}-guard")
}

fn nft(script: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .arg("-f")
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot run nft")?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft failed: {}\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn add_forward_guard(bridge: &str) -> Result<()> {
    remove_forward_guard(bridge);
    let table = guard_table(bridge);
    nft(&format!(
        "table inet {table} {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter - 10; policy accept;\n\
         \t\tiifname \"{bridge}\" oifname != \"{bridge}\" drop\n\
         \t\toifname \"{bridge}\" iifname != \"{bridge}\" drop\n\
         \t}}\n\
         }}\n"
    ))
}

/// Whether the run's guard table exists (tests check that teardown removed it).
pub fn forward_guard_exists(bridge: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", &guard_table(bridge)])
        .output()
        .is_ok_and(|out| out.status.success())
}

pub fn remove_forward_guard(bridge: &str) {
    if forward_guard_exists(bridge) {
        let _ = nft(&format!("delete table inet {}\n", guard_table(bridge)));
    }
}

/// The mounted cgroup hierarchies: the v1 ones (`/sys/fs/cgroup/<name>`) and, on a hybrid
/// mount, the v2 one beside them (runc creates the node's cgroups there too); or the v2 root
/// alone.
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        return vec![base.to_path_buf()];
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == "cgroup" || kind == "cgroup2").then(|| PathBuf::from(point))
        })
        .collect()
}

/// Creates `/<name>` in every hierarchy; in cpuset, copies `cpus` and `mems` from the parent
/// (a v1 cpuset cgroup without them accepts no task).
pub fn create_cgroup_root(name: &str) -> Result<()> {
    for hierarchy in cgroup_hierarchies() {
        let dir = hierarchy.join(name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create cgroup {}", dir.display()))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = std::fs::read_to_string(hierarchy.join(file)) {
                std::fs::write(dir.join(file), value.trim())
                    .with_context(|| format!("cannot set {}", dir.join(file).display()))?;
            }
        }
    }
    Ok(())
}

/// Kills every process in the tree under `/<name>` in every hierarchy and removes the cgroups,
/// deepest first. Idempotent.
pub fn remove_cgroup_root(name: &str) {
    for hierarchy in cgroup_hierarchies() {
        let root = hierarchy.join(name);
        if !root.exists() {
            continue;
        }
        let mut dirs = Vec::new();
        collect_dirs(&root, &mut dirs);
        for _ in 0..50 {
            let mut left = 0;
            for dir in &dirs {
                for pid in procs(dir) {
                    left += 1;
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            if left == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // Deepest first: children were pushed after their parents.
        for dir in dirs.iter().rev() {
            if let Err(error) = std::fs::remove_dir(dir) {
                tracing::warn!(%error, cgroup = %dir.display(), "cannot remove cgroup");
            }
        }
    }
}

/// Cgroup roots named `<prefix>...` at the top of any hierarchy (a dead run's nodes).
pub fn cgroup_roots_with_prefix(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = cgroup_hierarchies()
        .iter()
        .filter_map(|h| std::fs::read_dir(h).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort();
    names.dedup();
    names
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
}

fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

/// Mount points at or under `dir`, deepest first (`/proc/self/mountinfo`, octal escapes undone).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .map(|point| PathBuf::from(unescape_mount(point)))
        .filter(|point| point.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// Detaches every mount under `dir` (container root filesystems, pod network namespaces,
/// kubelet's volume tmpfs), so that the folder can be removed.
pub fn unmount_under(dir: &Path) {
    for point in mounts_under(dir) {
        if let Err(error) = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(%error, mount = %point.display(), "cannot unmount");
        }
    }
}

fn unescape_mount(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(code) = u8::from_str_radix(&text[i + 1..i + 4], 8)
        {
            out.push(code as char);
            i += 4;
            continue;
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

/// Removes what a run's kubelets and CNI plugins wrote outside the run folder, at paths that
/// are hard-coded upstream: the symlinks in /var/log/containers that point into `run_dir`, and
/// the CNI result caches in /var/lib/cni/results whose sandbox lies in `run_dir`.
pub fn remove_run_traces(run_dir: &Path) {
    if let Ok(entries) = std::fs::read_dir("/var/log/containers") {
        for entry in entries.flatten() {
            if std::fs::read_link(entry.path()).is_ok_and(|target| target.starts_with(run_dir)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let sandbox = format!("\"sandbox\":\"{}/", run_dir.display());
    if let Ok(entries) = std::fs::read_dir("/var/lib/cni/results") {
        for entry in entries.flatten() {
            if std::fs::read_to_string(entry.path()).is_ok_and(|text| text.contains(&sandbox)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Once no run is live: removes the shim sockets in /run/containerd/s that nothing listens on
/// (shims of runs that were killed), kubelet's hard-coded device-plugin socket, and the folders
/// this leaves empty. Nothing else in these folders is touched.
pub fn sweep_machine_paths() {
    let listening = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir("/run/containerd/s") {
        for entry in entries.flatten() {
            let path = entry.path().display().to_string();
            if !listening.lines().any(|line| line.ends_with(&path)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let _ = std::fs::remove_file("/var/lib/kubelet/device-plugins/kubelet.sock");
    for dir in [
        "/var/log/containers",
        "/var/lib/cni/results",
        "/var/lib/cni",
        "/var/lib/kubelet/device-plugins",
        "/var/lib/kubelet",
        "/run/containerd/s",
        "/run/containerd",
    ] {
        let _ = std::fs::remove_dir(dir); // only if empty
    }
}

/// The live processes of a pod's containers on this machine (the sandbox's pause included):
/// those whose cgroup path names the pod's UID, as the cgroupfs driver lays it out
/// (`.../kubepods/<qos>/pod<uid>/<container id>`).
pub fn pod_processes(pod_uid: &str) -> Vec<i32> {
    let needle = format!("pod{pod_uid}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|cgroup| cgroup.contains(&needle))
        })
        .filter(|pid| crate::process::is_alive(*pid))
        .collect()
}

/// The command line of a process, arguments joined by spaces.
pub fn cmdline_of(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            String::from_utf8_lossy(&raw)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mount(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }

    #[test]
    fn guard_table_name_is_the_bridges() {
        assert_eq!(guard_table("gtb7"), "gtb7-guard");
    }

    #[test]
    fn sysctls_are_recorded_once() -> Result<()> {
        let registry = std::env::temp_dir().join(format!("testbed-host-{}", std::process::id()));
        record_sysctls(&registry)?;
        let record = sysctl_record(&registry).join("kernel.panic");
        let found = std::fs::read_to_string(&record)?;
        std::fs::write(&record, "original")?;
        record_sysctls(&registry)?; // a record exists: kept
        assert_eq!(std::fs::read_to_string(&record)?, "original");
        std::fs::write(&record, &found)?;
        std::fs::remove_dir_all(&registry)?;
        Ok(())
    }
}
