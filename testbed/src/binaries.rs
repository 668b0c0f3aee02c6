//! Finding the control-plane binaries: the build script builds them once into a cache folder
//! keyed by the Go module, and prints that folder; later calls return at once.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};

use crate::process::spawn_guarded;

/// The folder holding etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet,
/// kube-proxy, the pause program and helm.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub dir: PathBuf,
}

/// A cold build of the whole set takes minutes on 2 cores; this bounds a stuck one.
const BUILD_LIMIT: Duration = Duration::from_secs(90 * 60);
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

pub const COMPONENTS: [&str; 9] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kubelet",
    "kube-proxy",
    "pause",
    "helm",
];

/// The private folder of containerd, runc, the CNI plugins and umoci
/// (`scripts/install-node-runtime.sh`, which also installs iptables, nftables and conntrack).
#[derive(Debug, Clone)]
pub struct NodeRuntime {
    pub dir: PathBuf,
}

pub fn runtime_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-node-runtime.sh")
}

impl NodeRuntime {
    /// Uses `TESTBED_NODE_RUNTIME_DIR` if set, else runs the install script (at once when its
    /// stamp is there).
    pub async fn locate_or_install() -> Result<Self> {
        let dir = match std::env::var_os("TESTBED_NODE_RUNTIME_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => run_script(&runtime_script(), "node runtime install").await?,
        };
        for tool in [
            "bin/containerd",
            "bin/containerd-shim-runc-v2",
            "bin/ctr",
            "bin/runc",
            "bin/umoci",
            "cni/bridge",
            "cni/host-local",
            "cni/loopback",
        ] {
            if !dir.join(tool).is_file() {
                bail!(
                    "{} is missing; reinstall with {}",
                    dir.join(tool).display(),
                    runtime_script().display()
                );
            }
        }
        Ok(Self { dir })
    }
}

/// `scripts/build-tool.sh`: builds a Go tool of the testbed from `go/<name>` (KWOK,
/// metrics-server).
pub fn tool_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-tool.sh")
}

/// The folder of the Go tool `name`: the environment variable `env` if set, else what
/// `build-tool.sh <name>` prints (at once when built); each of `files` must be in it.
pub(crate) async fn locate_tool(env: &str, name: &str, files: &[&str]) -> Result<PathBuf> {
    let dir = match std::env::var_os(env) {
        Some(dir) => PathBuf::from(dir),
        None => run_script_with(&tool_script(), &[name], &format!("{name} build")).await?,
    };
    for file in files {
        if !dir.join(file).is_file() {
            bail!(
                "{} is missing; rebuild with {} {name}",
                dir.join(file).display(),
                tool_script().display()
            );
        }
    }
    Ok(dir)
}

pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-controlplane.sh")
}

impl Binaries {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Uses `TESTBED_CONTROLPLANE_DIR` (or `TESTBED_BIN_DIR`, which scripts/test.sh exports) if
    /// set, else runs the build script (progress on stderr).
    pub async fn locate_or_build() -> Result<Self> {
        let preset = std::env::var_os("TESTBED_CONTROLPLANE_DIR")
            .or_else(|| std::env::var_os("TESTBED_BIN_DIR"));
        let dir = match preset {
            Some(dir) => PathBuf::from(dir),
            None => {
                let started = Instant::now();
                let _lock = build_lock(started).await?;
                wait_for_foreign_build(started).await?;
                run_script(&build_script(), "control-plane build").await?
            }
        };
        let binaries = Self { dir };
        for name in COMPONENTS {
            let path = binaries.path(name);
            if !path.is_file() {
                bail!(
                    "{} is missing; rebuild with {}",
                    path.display(),
                    build_script().display()
                );
            }
        }
        Ok(binaries)
    }
}

/// Kills the build's process group if the build is abandoned (Ctrl-C during the build).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = self.0.wait();
        }
    }
}

/// Runs `script` (progress on stderr) and returns the folder it prints last.
async fn run_script(script: &Path, what: &str) -> Result<PathBuf> {
    run_script_with(script, &[], what).await
}

/// Runs `script` with `args`; see [`run_script`].
async fn run_script_with(script: &Path, args: &[&str], what: &str) -> Result<PathBuf> {
    let started = Instant::now();
    let mut command = Command::new("bash");
    command
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(path) = path_with_go() {
        command.env("PATH", path);
    }
    let mut build = KillOnDrop(
        spawn_guarded(command).with_context(|| format!("cannot run {}", script.display()))?,
    );
    let mut last_note = Instant::now();
    let status = loop {
        if let Some(status) = build.0.try_wait()? {
            break status;
        }
        if started.elapsed() > BUILD_LIMIT {
            bail!(
                "{} did not finish within {} minutes",
                script.display(),
                BUILD_LIMIT.as_secs() / 60
            );
        }
        if last_note.elapsed() >= PROGRESS_EVERY {
            eprintln!(
                "testbed: {what} still running ({} s so far)",
                started.elapsed().as_secs()
            );
            last_note = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stdout = String::new();
    if let Some(mut out) = build.0.stdout.take() {
        out.read_to_string(&mut stdout)?;
    }
    if !status.success() {
        bail!(
            "{} failed ({status}); its output is above",
            script.display()
        );
    }
    let dir = stdout
        .lines()
        .last()
        .context("the build script printed no folder")?;
    tracing::info!(
        dir,
        seconds = started.elapsed().as_secs_f32(),
        "{what} done"
    );
    Ok(PathBuf::from(dir))
}

/// The script's cache root (same rule as in the script).
fn cache_root() -> PathBuf {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("GRACEFUL_CACHE").unwrap_or_else(|| {
        var("XDG_CACHE_HOME")
            .or_else(|| var("HOME").map(|home| home.join(".cache")))
            .unwrap_or_else(std::env::temp_dir)
            .join("graceful-operator")
    })
}

/// Serializes this crate's calls of the build script across processes (two test binaries or
/// runs starting at once with a cold cache would otherwise build twice). Released on drop.
async fn build_lock(started: Instant) -> Result<Flock<std::fs::File>> {
    let root = cache_root();
    std::fs::create_dir_all(&root)?;
    let path = root.join(".build.lock");
    let mut file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut last_note: Option<Instant> = None;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((returned, _)) => file = returned,
        }
        if started.elapsed() > BUILD_LIMIT {
            bail!("{} is still locked by another build", path.display());
        }
        if last_note.is_none_or(|note| note.elapsed() >= PROGRESS_EVERY) {
            eprintln!(
                "testbed: waiting for another testbed's control-plane build ({})",
                path.display()
            );
            last_note = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Never run two Go builds of the control plane at once (2 cores, GBs of memory each): wait for
/// one started elsewhere (by another test binary, or by hand) to finish.
async fn wait_for_foreign_build(started: Instant) -> Result<()> {
    let mut last_note: Option<Instant> = None;
    while let Some(pid) = foreign_build_pid() {
        if started.elapsed() > BUILD_LIMIT {
            bail!("another control-plane build (pid {pid}) is still running");
        }
        if last_note.is_none_or(|note| note.elapsed() >= PROGRESS_EVERY) {
            eprintln!(
                "testbed: waiting for a control-plane build already running (pid {pid}, {} s so far)",
                started.elapsed().as_secs()
            );
            last_note = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(())
}

fn foreign_build_pid() -> Option<u32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                cmdline
                    .split(|byte| *byte == 0)
                    .take(2)
                    .any(|arg| arg.ends_with(b"build-controlplane.sh"))
            })
        })
}

/// PATH with Go's usual install folder appended when `go` is not on PATH already.
fn path_with_go() -> Option<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    let has_go = path
        .split(':')
        .any(|dir| Path::new(dir).join("go").is_file());
    let fallback = Path::new("/usr/local/go/bin");
    (!has_go && fallback.join("go").is_file()).then(|| format!("{path}:{}", fallback.display()))
}
