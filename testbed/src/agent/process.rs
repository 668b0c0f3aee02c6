//! Starting a container as a local process inside its pod's network namespace, with the
//! service-account directory bind-mounted where in-cluster clients look for it, and signalling it.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::image::Invocation;

/// Where in-cluster clients (client-go, kube-rs) read the token, CA and namespace.
pub const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Everything needed to start one container process.
pub struct Launch<'a> {
    pub invocation: &'a Invocation,
    pub env: &'a [(String, String)],
    pub netns_path: &'a str,
    /// Per-pod directory with token, ca.crt and namespace, bind-mounted at SERVICE_ACCOUNT_MOUNT.
    pub service_account_dir: Option<&'a Path>,
    pub log_path: &'a Path,
    /// User and groups to switch to (None: keep root).
    pub identity: Option<&'a super::security::Identity>,
}

/// Makes sure the mount point exists on the host (an empty directory; each pod sees its own
/// files there through a private mount namespace).
pub fn prepare_mount_point() -> std::io::Result<()> {
    std::fs::create_dir_all(SERVICE_ACCOUNT_MOUNT)
}

fn cstring(path: &Path) -> anyhow::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).context("path contains NUL")
}

/// Spawns the container. The child joins the pod's network namespace, gets a private mount
/// namespace with the service-account bind mount, switches to the pod's user, leads its own
/// process group (so a Ctrl-C on the supervisor's terminal reaches the agent, not the pods
/// directly) and dies with the agent.
pub fn spawn(launch: &Launch<'_>) -> anyhow::Result<tokio::process::Child> {
    let netns: OwnedFd = File::open(launch.netns_path)
        .with_context(|| format!("opening {}", launch.netns_path))?
        .into();
    if let Some(parent) = launch.log_path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(launch.log_path)
        .with_context(|| format!("opening {}", launch.log_path.display()))?;
    let log_err = log.try_clone()?;
    // Everything the child needs is prepared here: no allocation after fork.
    let bind = match launch.service_account_dir {
        Some(dir) => Some((cstring(dir)?, cstring(Path::new(SERVICE_ACCOUNT_MOUNT))?)),
        None => None,
    };
    let root = CString::new("/")?;
    let identity = launch.identity.cloned();

    let mut cmd = tokio::process::Command::new(&launch.invocation.program);
    cmd.args(&launch.invocation.args)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .process_group(0)
        .kill_on_drop(false);
    // SAFETY: the closure only makes raw system calls on values prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            nix::sched::setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)?;
            if let Some((source, target)) = &bind {
                nix::sched::unshare(CloneFlags::CLONE_NEWNS)?;
                nix::mount::mount(
                    None::<&std::ffi::CStr>,
                    root.as_c_str(),
                    None::<&std::ffi::CStr>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&std::ffi::CStr>,
                )?;
                nix::mount::mount(
                    Some(source.as_c_str()),
                    target.as_c_str(),
                    None::<&std::ffi::CStr>,
                    MsFlags::MS_BIND,
                    None::<&std::ffi::CStr>,
                )?;
            }
            if let Some(id) = &identity {
                let groups: &[nix::libc::gid_t] = &id.groups;
                // Plain system calls on prepared values (groups first, uid last).
                let failed = nix::libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || nix::libc::setgid(id.gid) != 0
                    || nix::libc::setuid(id.uid) != 0;
                if failed {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", launch.invocation.program.display()))
}

/// Sends a signal to the container's main process (what a runtime does on stop).
pub fn signal(pid: i32, signal: Signal) {
    if let Err(e) = nix::sys::signal::kill(Pid::from_raw(pid), signal) {
        tracing::debug!(pid, ?signal, error = %e, "signal not delivered");
    }
}

/// Kills the container's whole process group (what removing a container's cgroup does).
pub fn kill_group(pid: i32) {
    let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
}

/// The log file of one container: `<run-dir>/pods/<ns>_<pod>/<container>.log`.
pub fn log_path(run_dir: &Path, namespace: &str, pod: &str, container: &str) -> PathBuf {
    run_dir
        .join("pods")
        .join(format!("{namespace}_{pod}"))
        .join(format!("{container}.log"))
}
