//! Helpers of the operator's end-to-end tests: the operator as a host process, CRD install,
//! polling, and watch recorders that keep the API server's order (resourceVersion).

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use graceful_operator::{GracefulService, GracefulServiceSpec};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use kube::runtime::watcher::{self, Event};
use testbed::Testbed;

/// The operator binary running against the testbed, scoped to one namespace; SIGKILLed on drop.
pub struct Operator {
    child: Child,
    /// Port of its /metrics listener on 127.0.0.1.
    pub metrics_port: u16,
    /// Its log file.
    pub log: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Operator {
    pub fn start(tb: &Testbed, namespace: &str) -> Result<Self> {
        Self::start_with(tb, namespace, &[])
    }

    /// Process id, which is part of the leader-election identity (`<hostname>-<pid>`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start_with(tb: &Testbed, namespace: &str, extra: &[&str]) -> Result<Self> {
        Self::start_as(tb, namespace, extra, tb.kubeconfig())
    }

    /// Starts with another kubeconfig (e.g. one impersonating a user with limited RBAC).
    pub fn start_as(
        tb: &Testbed,
        namespace: &str,
        extra: &[&str],
        kubeconfig: &std::path::Path,
    ) -> Result<Self> {
        let metrics_port = free_port()?;
        let health_port = free_port()?;
        let log = tb
            .run_dir()
            .join(format!("operator-{namespace}-{metrics_port}.log"));
        let out = File::create(&log)?;
        let child = Command::new(testbed::bin_path("graceful-operator")?)
            .args(["--namespace", namespace, "--log-format", "text"])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(["--health-addr", &format!("127.0.0.1:{health_port}")])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,graceful_operator=debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("start graceful-operator")?;
        Ok(Self {
            child,
            metrics_port,
            log,
        })
    }

    /// SIGTERM, then waits (up to 20 s) for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> Result<Option<i32>> {
        run({
            let mut kill = Command::new("kill");
            kill.args(["-TERM", &self.child.id().to_string()]);
            kill
        })?;
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("operator did not exit within 20 s of SIGTERM")
    }

    /// SIGKILL: no chance to clean up, as when a node dies.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Value of a metric line (`name value`) from /metrics.
    pub async fn metric(&self, name: &str) -> Result<f64> {
        let out = Command::new("curl")
            .args([
                "-s",
                &format!("http://127.0.0.1:{}/metrics", self.metrics_port),
            ])
            .output()?;
        let text = String::from_utf8(out.stdout)?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .with_context(|| format!("metric {name} not found in:\n{text}"))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of {} ---", self.log.display());
            tail.iter().rev().for_each(|l| eprintln!("{l}"));
        }
    }
}

/// Runs a command, failing with its stderr when it fails.
pub fn run(mut command: Command) -> Result<String> {
    let out = command.output()?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Applies crds/ and waits for the CRD to be served; idempotent, every test calls it.
pub fn install_crd(tb: &Testbed) -> Result<()> {
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/");
    let mut apply = tb.kubectl();
    apply.args(["apply", "--server-side", "--force-conflicts", "-f", crds]);
    run(apply)?;
    let mut wait = tb.kubectl();
    wait.args([
        "wait",
        "--for=condition=established",
        "--timeout=60s",
        "crd/gracefulservices.graceful.dev",
    ]);
    run(wait)?;
    Ok(())
}

/// Waits until no node carries the `not-ready` NoSchedule taint. The taint is added when a node
/// registers; if the testbed's agent leaves it in place, it is removed here (and said so).
pub async fn ensure_schedulable(tb: &Testbed, client: &kube::Client) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    for attempt in 0..60 {
        let tainted = nodes
            .list(&Default::default())
            .await?
            .items
            .iter()
            .any(|n| {
                n.spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .is_some_and(|t| t.iter().any(|t| t.key == "node.kubernetes.io/not-ready"))
            });
        if !tainted {
            return Ok(());
        }
        if attempt == 20 {
            eprintln!("nodes still tainted not-ready after 10 s: removing the taint");
            let mut untaint = tb.kubectl();
            untaint.args([
                "taint",
                "nodes",
                "--all",
                "node.kubernetes.io/not-ready:NoSchedule-",
            ]);
            let _ = untaint.output();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("nodes stay tainted not-ready")
}

/// Polls `check` every 250 ms until it yields a value or `limit` passes.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what} (last error: {last_error:?})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Creates a GracefulService named `name`.
pub async fn create_gsvc(
    client: &kube::Client,
    ns: &str,
    name: &str,
    spec: GracefulServiceSpec,
) -> Result<GracefulService> {
    let api: Api<GracefulService> = Api::namespaced(client.clone(), ns);
    Ok(api
        .create(&PostParams::default(), &GracefulService::new(name, spec))
        .await?)
}

/// Waits until the GracefulService reports phase Stable with `replicas` ready.
pub async fn wait_stable(client: &kube::Client, ns: &str, name: &str, replicas: i32) -> Result<()> {
    let api: Api<GracefulService> = Api::namespaced(client.clone(), ns);
    eventually(
        Duration::from_secs(180),
        &format!("{name} Stable at {replicas}"),
        || async {
            let g = api.get(name).await?;
            Ok(g.status.filter(|s| {
                s.phase == graceful_operator::crd::Phase::Stable
                    && s.ready_replicas == replicas
                    && s.step_target == Some(replicas)
                    && s.observed_generation == g.metadata.generation
            }))
        },
    )
    .await
    .map(|_| ())
}

/// An etcd revision: resourceVersions of one API server are etcd revisions, so comparing them
/// orders events across two watches exactly (test-only reliance on an implementation detail).
fn revision(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

/// What happened during a scale-down, in API server order.
#[derive(Default, Debug, Clone)]
pub struct Recording {
    /// (revision, spec.replicas) each time the Deployment's replicas changed.
    pub replicas: Vec<(u64, i32)>,
    /// (revision, pod) when a pod was first seen with a deletion timestamp.
    pub terminating: Vec<(u64, String)>,
    /// (revision, pod) when a pod was removed from the API.
    pub deleted: Vec<(u64, String)>,
    /// Deployment status (replicas, updated, ready, available) carried by each replicas change:
    /// a spec update leaves status as it was, so this is what the operator saw when it stepped.
    pub status_at_change: Vec<(i32, i32, i32, i32)>,
    /// Human-readable timeline: seconds since the recording started, what happened.
    pub timeline: Vec<(f64, String)>,
}

/// Watches the Deployment and its pods from now on; `synced` resolves once both watches listed.
pub async fn record(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<(Arc<Mutex<Recording>>, Vec<tokio::task::JoinHandle<()>>)> {
    let rec = Arc::new(Mutex::new(Recording::default()));
    let started = std::time::Instant::now();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(2);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let r = rec.clone();
    let tx = ready_tx.clone();
    let dep_cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let dep_task = tokio::spawn(async move {
        let mut stream = watcher::watcher(deployments, dep_cfg).boxed();
        while let Some(Ok(event)) = stream.next().await {
            let (d, initial) = match event {
                Event::InitDone => {
                    let _ = tx.send(()).await;
                    continue;
                }
                Event::InitApply(d) => (d, true),
                Event::Apply(d) => (d, false),
                _ => continue,
            };
            let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(-1);
            let mut rec = r.lock().unwrap();
            if rec.replicas.last().map(|l| l.1) != Some(replicas)
                && (initial || !rec.replicas.is_empty())
            {
                rec.replicas.push((revision(&d.metadata), replicas));
                let st = d.status.clone().unwrap_or_default();
                rec.status_at_change.push((
                    st.replicas.unwrap_or(0),
                    st.updated_replicas.unwrap_or(0),
                    st.ready_replicas.unwrap_or(0),
                    st.available_replicas.unwrap_or(0),
                ));
                let at = started.elapsed().as_secs_f64();
                rec.timeline
                    .push((at, format!("Deployment replicas {replicas}")));
            }
        }
    });
    let r = rec.clone();
    let pod_cfg = watcher::Config::default().labels(&format!("graceful.dev/service={name}"));
    let pod_task = tokio::spawn(async move {
        let mut stream = watcher::watcher(pods, pod_cfg).boxed();
        while let Some(Ok(event)) = stream.next().await {
            match event {
                Event::InitDone => {
                    let _ = ready_tx.send(()).await;
                }
                Event::Apply(p) if p.metadata.deletion_timestamp.is_some() => {
                    let pod = p.metadata.name.clone().unwrap_or_default();
                    let mut rec = r.lock().unwrap();
                    if !rec.terminating.iter().any(|(_, n)| *n == pod) {
                        let at = started.elapsed().as_secs_f64();
                        rec.timeline.push((at, format!("pod {pod} terminating")));
                        rec.terminating.push((revision(&p.metadata), pod));
                    }
                }
                Event::Delete(p) => {
                    let pod = p.metadata.name.clone().unwrap_or_default();
                    let mut rec = r.lock().unwrap();
                    let at = started.elapsed().as_secs_f64();
                    rec.timeline.push((at, format!("pod {pod} deleted")));
                    rec.deleted.push((revision(&p.metadata), pod));
                }
                _ => {}
            }
        }
    });
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(30), ready_rx.recv())
            .await
            .context("watches did not sync")?;
    }
    Ok((rec, vec![dep_task, pod_task]))
}

/// Checks a recorded scale-down from `from` to `to` with step 1: every step in order, each taken
/// only after the pod of the previous step was gone, exactly one pod removed per step.
pub fn check_walk(rec: &Recording, from: i32, to: i32) -> Result<()> {
    let values: Vec<i32> = rec.replicas.iter().map(|r| r.1).collect();
    let expected: Vec<i32> = (to..=from).rev().collect();
    if values != expected {
        bail!("replicas went {values:?}, expected {expected:?}");
    }
    let steps: Vec<u64> = rec.replicas.iter().skip(1).map(|r| r.0).collect();
    let mut deleted: Vec<u64> = rec.deleted.iter().map(|d| d.0).collect();
    deleted.sort_unstable();
    let mut terminating: Vec<u64> = rec.terminating.iter().map(|t| t.0).collect();
    terminating.sort_unstable();
    if deleted.len() != steps.len() || terminating.len() != steps.len() {
        bail!(
            "{} steps but {} pods terminated and {} deleted: {rec:?}",
            steps.len(),
            terminating.len(),
            deleted.len()
        );
    }
    for (k, step) in steps.iter().enumerate() {
        // step k < its pod starts terminating < its pod is gone < step k+1
        if !(terminating[k] > *step && deleted[k] > terminating[k]) {
            bail!("step {k} (rev {step}) not followed by one pod's termination: {rec:?}");
        }
        if let Some(next) = steps.get(k + 1)
            && *next < deleted[k]
        {
            bail!(
                "step {} (rev {next}) taken before the pod of step {k} was gone (rev {}): {rec:?}",
                k + 1,
                deleted[k]
            );
        }
    }
    Ok(())
}

/// Applies operator/rbac.yaml, binds it to `user`, and writes a kubeconfig impersonating `user`.
/// The kubeconfig is written as JSON, which is valid YAML.
pub async fn restricted_kubeconfig(
    tb: &Testbed,
    client: &kube::Client,
    user: &str,
) -> Result<PathBuf> {
    use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
    let rbac = concat!(env!("CARGO_MANIFEST_DIR"), "/../operator/rbac.yaml");
    let mut apply = tb.kubectl();
    apply.args(["apply", "--server-side", "--force-conflicts", "-f", rbac]);
    run(apply)?;
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": user},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "graceful-operator"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))?;
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    bindings
        .patch(
            user,
            &kube::api::PatchParams::apply("e2e").force(),
            &kube::api::Patch::Apply(&binding),
        )
        .await?;
    let mut config = kube::config::Kubeconfig::read_from(tb.kubeconfig())?;
    for auth in &mut config.auth_infos {
        if let Some(info) = auth.auth_info.as_mut() {
            info.impersonate = Some(user.to_string());
        }
    }
    let path = tb.run_dir().join(format!("kubeconfig-{user}"));
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    Ok(path)
}
