//! The test fixture: one testbed per test binary, shared by its tests.
//!
//! [`shared`] starts `testbed up --watch-parent <this pid>` once per process (or reuses a running
//! testbed named by `TESTBED_KUBECONFIG`). The supervisor is a separate process, so it tears down
//! when the test binary exits however it exits: success, panic, abort or SIGKILL.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::Namespace;

use crate::kubeconfig;
use crate::supervisor::{RUN_INFO_FILE, RunInfo};

/// A running testbed, as the tests see it.
#[derive(Debug, Clone)]
pub struct Testbed {
    info: RunInfo,
}

/// Bounds the whole startup, including a cold Go build of the control plane.
const STARTUP_LIMIT: Duration = Duration::from_secs(100 * 60);

/// Why no cluster can be had here, if so: the local testbed needs root (network namespaces,
/// cgroups, containerd) unless `TESTBED_KUBECONFIG` names a running one.
pub fn unavailable() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if root || std::env::var_os("TESTBED_KUBECONFIG").is_some() {
        return None;
    }
    Some("the testbed runs real nodes and needs root (or TESTBED_KUBECONFIG); run ./scripts/test.sh as root".into())
}

/// First line of every cluster test: without root (and no `TESTBED_KUBECONFIG`) the test prints
/// why and returns Ok, so `cargo test` as a contributor without root runs everything else and
/// passes, instead of failing on a testbed it cannot start.
#[macro_export]
macro_rules! skip_without_cluster {
    () => {
        if let Some(why) = $crate::fixture::unavailable() {
            eprintln!("skipped (no cluster): {why}");
            return Ok(());
        }
    };
}

/// The testbed of this test binary, started on first use. Blocks while it starts; all tests of
/// the binary get the same one (or the same startup error).
pub fn shared() -> Result<&'static Testbed> {
    shared_with(&[])
}

/// [`shared`], started with `testbed up` flags of the test binary's own (e.g.
/// `--metrics-server`); every test of a binary must ask for the same flags.
pub fn shared_with(flags: &[&str]) -> Result<&'static Testbed> {
    static SHARED: OnceLock<std::result::Result<Testbed, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let started = match std::env::var_os("TESTBED_KUBECONFIG") {
                Some(path) => Testbed::from_kubeconfig(Path::new(&path)),
                None => Testbed::spawn(flags),
            };
            started.map_err(|error| format!("{error:#}"))
        })
        .as_ref()
        .map_err(|error| anyhow!("testbed did not start: {error}"))
}

impl Testbed {
    /// Attaches to a running testbed through its kubeconfig (`testbed.json` lies next to it).
    pub fn from_kubeconfig(path: &Path) -> Result<Self> {
        let info_path = path
            .parent()
            .context("kubeconfig path has no parent")?
            .join(RUN_INFO_FILE);
        let info = std::fs::read(&info_path).with_context(|| {
            format!(
                "{} not found: is this a testbed kubeconfig?",
                info_path.display()
            )
        })?;
        Ok(Self {
            info: serde_json::from_slice(&info)?,
        })
    }

    /// Starts a supervisor watching this process and waits for its `KUBECONFIG=` line.
    fn spawn(flags: &[&str]) -> Result<Self> {
        let testbed = bin_path("testbed")?;
        // `TESTBED_UP_ARGS` adds flags, e.g. `--nodes 1 --kwok-nodes 4` for a scale bench.
        let extra = std::env::var("TESTBED_UP_ARGS").unwrap_or_default();
        let mut child = Command::new(&testbed)
            .args(["up", "--watch-parent", &std::process::id().to_string()])
            .args(flags)
            .args(extra.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", testbed.display()))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Keeps draining so that the supervisor never writes into a closed pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(path) = line.strip_prefix("KUBECONFIG=") {
                    let _ = tx.send(PathBuf::from(path));
                }
            }
        });
        match rx.recv_timeout(STARTUP_LIMIT) {
            Ok(kubeconfig) => Self::from_kubeconfig(&kubeconfig),
            Err(_) => {
                let status = child.try_wait().ok().flatten();
                let _ = child.kill();
                bail!(
                    "`testbed up` ended or timed out before printing KUBECONFIG (exit: {status:?}); \
                     its log is on stderr above"
                )
            }
        }
    }

    pub fn info(&self) -> &RunInfo {
        &self.info
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.info.kubeconfig
    }

    pub fn run_dir(&self) -> &Path {
        &self.info.run_dir
    }

    /// Where a node port answers from the host: on node 0's address (every node's serves it).
    pub fn node_port_addr(&self, port: u16) -> std::net::SocketAddr {
        let ip = self
            .info
            .nodes
            .first()
            .map_or(Ipv4Addr::LOCALHOST, |node| node.ip);
        (ip, port).into()
    }

    /// Every node's address.
    pub fn node_ips(&self) -> Vec<Ipv4Addr> {
        self.info.nodes.iter().map(|node| node.ip).collect()
    }

    /// Makes `repository:tag` an image on every node: the image the testbed built for
    /// `repository`, rebuilt with a label naming the tag (same files, its own digest), so that
    /// a test can roll a Deployment to a new tag and see the kubelet report it.
    pub fn tag_image(&self, repository: &str, tag: &str) -> Result<()> {
        let runtime = &self.info.node_runtime_dir;
        let image = self
            .info
            .images
            .iter()
            .find(|image| image.repository == repository)
            .with_context(|| format!("the testbed built no image of {repository}"))?;
        if tag == crate::images::TAG {
            return Ok(());
        }
        crate::images::add_tag(
            &runtime.join("bin/umoci"),
            &image.archive,
            crate::images::TAG,
            tag,
        )?;
        for node in &self.info.nodes {
            crate::node::import_image(runtime, &node.containerd_socket, image)?;
        }
        Ok(())
    }

    /// The bridge address the apiserver binds and pods route through.
    pub fn gateway(&self) -> Ipv4Addr {
        self.info.gateway
    }

    /// A fresh client; make one per test (clients are bound to the runtime that made them).
    pub async fn client(&self) -> Result<kube::Client> {
        kubeconfig::client(&self.info.kubeconfig).await
    }

    /// The pinned `kubectl` (built with the control plane) with `KUBECONFIG` pointing at this
    /// testbed.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(self.info.controlplane_dir.join("kubectl"));
        command.env("KUBECONFIG", &self.info.kubeconfig);
        command
    }

    /// The control plane's `helm`, with its config, cache and data inside the run dir.
    pub fn helm(&self) -> Command {
        let mut command = Command::new(self.info.controlplane_dir.join("helm"));
        let home = self.info.run_dir.join("helm");
        command
            .env("KUBECONFIG", &self.info.kubeconfig)
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"));
        command
    }

    /// Restarts this testbed's kube-apiserver (same port, certificates and etcd) and returns once
    /// it answers ready again, with how long that took the supervisor. Other tests of the binary
    /// see the API go away too: serialize such tests against the others.
    pub async fn restart_apiserver(&self) -> Result<Duration> {
        self.restart_component("kube-apiserver").await
    }

    /// Restarts a component of the run (`kube-apiserver`, or a node's `containerd-node-N`,
    /// `kubelet-node-N`, `kube-proxy-node-N`): SIGTERM, SIGKILL after 10 s, started again the
    /// same way. Returns how long that took.
    pub async fn restart_component(&self, name: &str) -> Result<Duration> {
        crate::control::ask(
            &self.info.run_dir,
            self.info.supervisor_pid,
            crate::control::Verb::Restart,
            name,
            Duration::from_secs(150),
        )
        .await
    }

    /// Stops a component for good, e.g. `kubelet-node-2` to lose that node.
    pub async fn stop_component(&self, name: &str) -> Result<Duration> {
        crate::control::ask(
            &self.info.run_dir,
            self.info.supervisor_pid,
            crate::control::Verb::Stop,
            name,
            Duration::from_secs(60),
        )
        .await
    }

    /// Creates a namespace `<prefix>-<unique suffix>` and returns its name. Namespaces are not
    /// deleted by the fixture: the testbed goes away with the test binary.
    pub async fn create_namespace(&self, client: &kube::Client, prefix: &str) -> Result<String> {
        let name = unique_name(prefix);
        let namespaces: kube::Api<Namespace> = kube::Api::all(client.clone());
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "graceful.dev/test": "true" } }
        }))?;
        namespaces.create(&Default::default(), &namespace).await?;
        Ok(name)
    }
}

/// A workspace binary built into the same target dir as the running test executable
/// (`target/<profile>/deps/<test>` -> `target/<profile>/<name>`).
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("test executable has no parent")?;
    if dir.ends_with("deps") {
        dir = dir.parent().context("deps has no parent")?;
    }
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is not built; run `cargo build --workspace --bins` before the tests",
            path.display()
        );
    }
    Ok(path)
}

/// `<prefix>-<pid>-<n>`, cut to the 63 bytes of a DNS label.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let suffix = format!("-{}-{n}", std::process::id());
    let keep = 63usize.saturating_sub(suffix.len());
    let prefix: String = prefix.chars().take(keep).collect();
    format!("{}{suffix}", prefix.trim_end_matches('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_dns_labels() {
        let a = unique_name("rollout");
        let b = unique_name("rollout");
        assert_ne!(a, b);
        assert!(a.starts_with("rollout-"));
        assert!(unique_name(&"x".repeat(100)).len() <= 63);
    }
}
