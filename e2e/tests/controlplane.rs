//! The control-plane half of the testbed against itself: the real API answers, kubectl works,
//! objects round-trip through etcd, RBAC is really enforced, and a supervisor leaves nothing
//! behind however it ends (signal, death of the watched parent, SIGKILL plus cleanup).
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

/// A supervisor of its own (not the shared one), started by this test.
struct OwnRun {
    supervisor: Child,
    info: RunInfo,
    children: Vec<i32>,
}

impl OwnRun {
    fn start(watch_parent: u32) -> Result<Self> {
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
            children.len() >= 4,
            "expected the control plane's processes, got {children:?}"
        );
        Ok(Self {
            supervisor,
            info,
            children,
        })
    }

    /// Waits (bounded) until the run has left nothing: supervisor, children, namespaces,
    /// bridge, run dir.
    fn assert_gone(mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let supervisor_done = self.supervisor.try_wait()?.is_some();
            let alive: Vec<_> = self
                .children
                .iter()
                .copied()
                .filter(|pid| alive(*pid))
                .collect();
            let netns = testbed::network::netns_with_prefix(&self.info.netns_prefix);
            let bridge = testbed::network::link_exists(&self.info.bridge);
            let run_dir = self.info.run_dir.exists();
            if supervisor_done && alive.is_empty() && netns.is_empty() && !bridge && !run_dir {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "left behind after {limit:?}: supervisor running={}, processes={alive:?}, \
                     netns={netns:?}, bridge={bridge}, run dir={run_dir}",
                    !supervisor_done
                );
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
    let run = OwnRun::start(std::process::id())?;
    signal(run.supervisor.id(), "-TERM")?;
    run.assert_gone(Duration::from_secs(60))
}

#[test]
fn death_of_the_watched_parent_tears_everything_down() -> Result<()> {
    let mut parent = Command::new("sleep").arg("600").spawn()?;
    let run = OwnRun::start(parent.id())?;
    parent.kill()?;
    parent.wait()?;
    run.assert_gone(Duration::from_secs(60))
}

#[test]
fn sigkilled_supervisor_leaves_nothing_after_cleanup() -> Result<()> {
    let run = OwnRun::start(std::process::id())?;
    signal(run.supervisor.id(), "-KILL")?;
    // The children die with their parent (PR_SET_PDEATHSIG); the bridge, namespaces and run dir
    // are removed by the next run's startup, or by `testbed cleanup`.
    let mut supervisor = run.supervisor;
    supervisor.wait()?;
    let status = Command::new(testbed::bin_path("testbed")?)
        .arg("cleanup")
        .status()?;
    ensure!(status.success(), "testbed cleanup failed: {status}");
    OwnRun {
        supervisor,
        info: run.info,
        children: run.children,
    }
    .assert_gone(Duration::from_secs(30))
}
