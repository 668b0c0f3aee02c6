//! Helpers of the operator's end-to-end tests: the operator as a host process, CRD install,
//! polling, and watch recorders that keep the API server's order (resourceVersion).

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use graceful_operator::{GracefulService, GracefulServiceSpec};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use testbed::Testbed;

/// The operator binary running against the testbed, scoped to one namespace; SIGKILLed on drop.
pub struct Operator {
    child: Child,
    /// Port of its /metrics listener on 127.0.0.1.
    pub metrics_port: u16,
    /// Port of its /healthz and /readyz listener on 127.0.0.1.
    #[allow(dead_code)]
    // used by operator/readiness.rs, not by every binary that includes this file
    pub health_port: u16,
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
            // GRACEFUL_OPERATOR_LOG: a bench measures the operator at info.
            .env(
                "RUST_LOG",
                std::env::var("GRACEFUL_OPERATOR_LOG")
                    .unwrap_or_else(|_| "info,graceful_operator=debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("start graceful-operator")?;
        Ok(Self {
            child,
            metrics_port,
            health_port,
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

    /// Whether the process has exited (by itself: a crash).
    #[allow(dead_code)] // used by lost_node.rs, not by every binary that includes this file
    pub fn has_exited(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_some())
    }

    /// The last `n` lines of the operator's log, for an error that needs them to be understood.
    #[allow(dead_code)] // not every binary that includes this file explains a failure this way
    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(n)..].join("\n");
        format!("--- last lines of {} ---\n{tail}", self.log.display())
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
            eprintln!("{}", self.log_tail(40));
        }
    }
}

/// The messages of the core/v1 Events of `ns` with `reason`, one per line (`kubectl get events`,
/// as a user would look).
#[allow(dead_code)] // not every binary that includes this file looks at Events
pub fn event_messages(tb: &Testbed, ns: &str, reason: &str) -> Result<Vec<String>> {
    let mut events = tb.kubectl();
    events.args(["get", "events", "-n", ns, "--field-selector"]);
    events.arg(format!("reason={reason}"));
    events.args(["-o", "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}"]);
    Ok(run(events)?.lines().map(str::to_string).collect())
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
    // Right after an apply the CRD may have no status.conditions yet, which `kubectl wait`
    // reports as an error rather than waiting: try again for a while.
    let mut last = None;
    for _ in 0..40 {
        let mut wait = tb.kubectl();
        wait.args([
            "wait",
            "--for=condition=established",
            "--timeout=60s",
            "crd/gracefulservices.graceful.dev",
        ]);
        match run(wait) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("the CRD was never established")))
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

pub use e2e::eventually;

/// Short shutdown timings keep scale-downs quick: 1 s drain, 1 s longest request, 4 s grace.
pub fn quick_spec(replicas: i32) -> GracefulServiceSpec {
    let mut spec = GracefulServiceSpec {
        replicas,
        ..GracefulServiceSpec::default()
    };
    spec.shutdown.drain_delay_seconds = 1;
    spec.shutdown.max_request_seconds = 1;
    spec.shutdown.termination_grace_period_seconds = 4;
    spec
}
