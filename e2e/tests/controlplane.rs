//! The control-plane half of the testbed against itself: the real API answers, kubectl works,
//! objects round-trip through etcd, RBAC is really enforced, and a supervisor with a running pod
//! leaves nothing behind however it ends (signal, death of the watched parent, SIGKILL plus
//! cleanup): no process, container, network namespace, bridge, cgroup, mount, nft table, log link
//! or CNI cache of its own, and the kernel settings its kubelet changed are back once no run is
//! live.
//!
//! Needs the workspace binaries: `cargo build --workspace --bins` first.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use testbed::supervisor::{RUN_INFO_FILE, RunInfo};

#[tokio::test]
async fn api_answers_and_kubectl_lists_namespaces() -> Result<()> {
    testbed::skip_without_cluster!();
    let tb = testbed::shared()?;
    let client = tb.client().await?;
    let version = client.apiserver_version().await?;
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "34")
    );

    let out = tb.kubectl().args(["get", "ns", "-o", "name"]).output()?;
    ensure!(
        out.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = String::from_utf8(out.stdout)?;
    for ns in ["namespace/default", "namespace/kube-system"] {
        assert!(
            names.lines().any(|line| line == ns),
            "{ns} missing in {names}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn namespace_and_configmap_round_trip() -> Result<()> {
    testbed::skip_without_cluster!();
    let tb = testbed::shared()?;
    let client = tb.client().await?;
    let ns = tb.create_namespace(&client, "cp-roundtrip").await?;
    let maps: Api<ConfigMap> = Api::namespaced(client, &ns);
    let map = ConfigMap {
        metadata: ObjectMeta {
            name: Some("settings".into()),
            ..Default::default()
        },
        data: Some([("greeting".to_string(), "hello".to_string())].into()),
        ..Default::default()
    };
    maps.create(&PostParams::default(), &map).await?;
    let read = maps.get("settings").await?;
    assert_eq!(
        read.data
            .and_then(|d| d.get("greeting").cloned())
            .as_deref(),
        Some("hello")
    );
    // kubectl sees the same object.
    let out = tb
        .kubectl()
        .args([
            "get",
            "configmap",
            "settings",
            "-n",
            &ns,
            "-o",
            "jsonpath={.data.greeting}",
        ])
        .output()?;
    assert_eq!(String::from_utf8(out.stdout)?, "hello");
    Ok(())
}

#[tokio::test]
async fn rbac_forbids_an_unprivileged_service_account() -> Result<()> {
    testbed::skip_without_cluster!();
    let tb = testbed::shared()?;
    let admin = tb.client().await?;
    let ns = tb.create_namespace(&admin, "cp-rbac").await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns);
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("nobody".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    accounts.create(&PostParams::default(), &account).await?;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = accounts
        .create_token_request("nobody", &PostParams::default(), &request)
        .await?
        .status
        .context("token request has no status")?
        .token;

    let kubeconfig = token_kubeconfig(tb.run_dir(), &tb.info().server, &tb.info().ca_file, &token)?;
    let nobody = testbed::kubeconfig::client(&kubeconfig).await?;
    let maps: Api<ConfigMap> = Api::namespaced(nobody, &ns);
    match maps.list(&Default::default()).await {
        // 403, not 401: the token authenticates, and RBAC denies.
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => bail!("expected 403 Forbidden for an unprivileged account, got {other:?}"),
    }
    Ok(())
}

fn token_kubeconfig(dir: &Path, server: &str, ca: &Path, token: &str) -> Result<PathBuf> {
    let path = dir.join(format!(
        "token-{}.kubeconfig",
        testbed::fixture::unique_name("rbac")
    ));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: {server}\n    \
             certificate-authority: {}\nusers:\n- name: t\n  user:\n    token: {token}\ncontexts:\n\
             - name: t\n  context:\n    cluster: t\n    user: t\ncurrent-context: t\n",
            ca.display()
        ),
    )?;
    Ok(path)
}

/// A supervisor of its own (not the shared one), started by this test, with one pod running.
struct OwnRun {
    supervisor: Child,
    info: RunInfo,
    children: Vec<i32>,
    /// The pod's processes (pause and app), which are not the supervisor's children.
    pod_processes: Vec<i32>,
    /// The kubelet's sysctls before the run, when no other run was live (else `None`).
    sysctls_before: Option<Vec<String>>,
}

fn kubelet_sysctls() -> Vec<String> {
    testbed::node::host::KUBELET_SYSCTLS
        .iter()
        .map(|name| std::fs::read_to_string(Path::new("/proc/sys").join(name)).unwrap_or_default())
        .collect()
}

/// Whether any testbed run is registered on the machine.
fn any_run_registered() -> bool {
    std::fs::read_dir(testbed::slot::registry_dir()).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u8>().is_ok())
        })
    })
}

/// Starts one app pod on the run and returns its processes once it is Ready.
fn start_pod(info: &RunInfo) -> Result<Vec<i32>> {
    let kubectl = |args: &[&str]| -> Result<String> {
        let out = Command::new(info.controlplane_dir.join("kubectl"))
            .env("KUBECONFIG", &info.kubeconfig)
            .args(args)
            .output()?;
        ensure!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    kubectl(&[
        "run",
        "leftover",
        "--image=ghcr.io/graceful-dev/graceful-app:0.1.0",
        "--image-pull-policy=Never",
    ])?;
    kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/leftover",
        "--timeout=60s",
    ])?;
    let uid = kubectl(&["get", "pod", "leftover", "-o", "jsonpath={.metadata.uid}"])?;
    let processes = testbed::node::host::pod_processes(uid.trim());
    ensure!(
        processes.len() >= 2,
        "pause and app expected: {processes:?}"
    );
    Ok(processes)
}

impl OwnRun {
    fn start(watch_parent: u32) -> Result<Self> {
        let sysctls_before = (!any_run_registered()).then(kubelet_sysctls);
        let mut supervisor = Command::new(testbed::bin_path("testbed")?)
            .args([
                "up",
                "--nodes",
                "1",
                "--watch-parent",
                &watch_parent.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = supervisor.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(path) = line.strip_prefix("KUBECONFIG=") {
                    let _ = tx.send(PathBuf::from(path));
                }
            }
        });
        let Ok(kubeconfig) = rx.recv_timeout(Duration::from_secs(180)) else {
            let _ = supervisor.kill();
            bail!("own supervisor did not become ready within 180 s");
        };
        let info: RunInfo =
            serde_json::from_slice(&std::fs::read(kubeconfig.with_file_name(RUN_INFO_FILE))?)?;
        let children = children_of(supervisor.id() as i32);
        ensure!(
            children.len() >= 7,
            "expected the control plane's and the node's processes, got {children:?}"
        );
        let pod_processes = start_pod(&info)?;
        Ok(Self {
            supervisor,
            info,
            children,
            pod_processes,
            sysctls_before,
        })
    }

    /// What of the run is still there, described; empty when nothing is.
    fn leftovers(&mut self) -> Result<Vec<String>> {
        use testbed::node::host;
        let mut left = Vec::new();
        if self.supervisor.try_wait()?.is_none() {
            left.push("supervisor running".into());
        }
        let alive: Vec<i32> = self
            .children
            .iter()
            .chain(&self.pod_processes)
            .copied()
            .filter(|pid| alive(*pid))
            .collect();
        if !alive.is_empty() {
            left.push(format!("processes {alive:?}"));
        }
        let netns = testbed::network::netns_with_prefix(&self.info.netns_prefix);
        if !netns.is_empty() {
            left.push(format!("netns {netns:?}"));
        }
        if testbed::network::link_exists(&self.info.bridge) {
            left.push("bridge".into());
        }
        if self.info.run_dir.exists() {
            left.push("run dir".into());
        }
        let cgroups = host::cgroup_roots_with_prefix(&self.info.netns_prefix);
        if !cgroups.is_empty() {
            left.push(format!("cgroups {cgroups:?}"));
        }
        let mounts = host::mounts_under(&self.info.run_dir);
        if !mounts.is_empty() {
            left.push(format!("mounts {mounts:?}"));
        }
        if host::forward_guard_exists(&self.info.bridge) {
            left.push("nft guard table".into());
        }
        let links: Vec<_> = std::fs::read_dir("/var/log/containers")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(&self.info.run_dir))
            })
            .map(|e| e.path())
            .collect();
        if !links.is_empty() {
            left.push(format!("log links {links:?}"));
        }
        let run = self.info.run_dir.display().to_string();
        let caches: Vec<_> = std::fs::read_dir("/var/lib/cni/results")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(&run)))
            .map(|e| e.path())
            .collect();
        if !caches.is_empty() {
            left.push(format!("CNI caches {caches:?}"));
        }
        if let Some(before) = &self.sysctls_before
            && !any_run_registered()
            && kubelet_sysctls() != *before
        {
            left.push(format!("sysctls {:?}, were {before:?}", kubelet_sysctls()));
        }
        Ok(left)
    }

    /// Waits (bounded) until the run has left nothing (see [`OwnRun::leftovers`]).
    fn assert_gone(mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let left = self.leftovers()?;
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("left behind after {limit:?}: {}", left.join("; "));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
                status.lines().any(|line| {
                    line.split_whitespace().collect::<Vec<_>>() == ["PPid:", &parent.to_string()]
                })
            })
        })
        .collect()
}

fn alive(pid: i32) -> bool {
    testbed::process::is_alive(pid)
}

/// Sends a signal through `kill(1)` (the e2e crate has no libc binding of its own).
fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill {signal} {pid} failed");
    Ok(())
}

#[test]
fn sigterm_tears_everything_down() -> Result<()> {
    testbed::skip_without_cluster!();
    let run = OwnRun::start(std::process::id())?;
    signal(run.supervisor.id(), "-TERM")?;
    run.assert_gone(Duration::from_secs(60))
}

#[test]
fn death_of_the_watched_parent_tears_everything_down() -> Result<()> {
    testbed::skip_without_cluster!();
    let mut parent = Command::new("sleep").arg("600").spawn()?;
    let run = OwnRun::start(parent.id())?;
    parent.kill()?;
    parent.wait()?;
    run.assert_gone(Duration::from_secs(60))
}

#[test]
fn sigkilled_supervisor_leaves_nothing_after_cleanup() -> Result<()> {
    testbed::skip_without_cluster!();
    let run = OwnRun::start(std::process::id())?;
    signal(run.supervisor.id(), "-KILL")?;
    // The children die with their parent (PR_SET_PDEATHSIG); the containers and shims, which
    // containerd daemonized, and the bridge, namespaces, cgroups, mounts and run dir are removed
    // by the next run's startup, or by `testbed cleanup`.
    let mut run = run;
    run.supervisor.wait()?;
    std::thread::sleep(Duration::from_secs(1));
    ensure!(
        run.pod_processes.iter().any(|pid| alive(*pid)),
        "the pod died with the supervisor: this test no longer shows that cleanup removes it"
    );
    let status = Command::new(testbed::bin_path("testbed")?)
        .arg("cleanup")
        .status()?;
    ensure!(status.success(), "testbed cleanup failed: {status}");
    run.assert_gone(Duration::from_secs(30))
}
