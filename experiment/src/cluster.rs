//! The cluster the experiment runs on: a testbed it starts (through the testbed's supervisor,
//! `testbed up`, which tears everything down when we exit) or one named by a kubeconfig, and the
//! operator installed on it (by the Helm chart, or as a host process when asked).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// Helm release and namespace of the operator.
pub const OPERATOR_RELEASE: &str = "graceful-operator";
pub const OPERATOR_NAMESPACE: &str = "graceful-system";
pub const CRD_NAME: &str = "gracefulservices.graceful.dev";

/// A live cluster and whatever processes we started for it (killed on drop).
pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub client: kube::Client,
    /// The testbed's run info, when the cluster is a testbed (gives its helm).
    pub testbed: Option<testbed::Testbed>,
    supervisor: Option<Child>,
    operator_process: Option<Child>,
}

/// Makes a client for `kubeconfig`.
pub async fn client_for(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

impl Cluster {
    /// Where the host reaches a node port: node 0's address on a testbed with real nodes,
    /// `fallback` otherwise (what `--node-address` says).
    pub fn node_address(&self, fallback: std::net::IpAddr) -> std::net::IpAddr {
        self.testbed
            .as_ref()
            .and_then(|tb| tb.node_ips().first().copied())
            .map_or(fallback, std::net::IpAddr::V4)
    }

    /// Makes the app image's tags the scenarios use exist on every node of a testbed (each a
    /// rebuilt image of its own digest). Another cluster must have them already.
    pub fn prepare_app_tags(&self, tags: &[&str]) -> anyhow::Result<()> {
        if let Some(tb) = &self.testbed {
            for tag in tags {
                tb.tag_image(crate::workloads::APP_IMAGE_REPO, tag)?;
            }
        }
        Ok(())
    }

    /// Uses an existing cluster.
    pub async fn connect(kubeconfig: PathBuf) -> anyhow::Result<Cluster> {
        let client = client_for(&kubeconfig).await?;
        Ok(Cluster {
            testbed: testbed::Testbed::from_kubeconfig(&kubeconfig).ok(),
            kubeconfig,
            client,
            supervisor: None,
            operator_process: None,
        })
    }

    /// Starts a testbed with its supervisor (`testbed up --watch-parent <our pid>`) and waits for
    /// the `KUBECONFIG=<path>` line it prints once the API is ready. The supervisor tears the
    /// testbed down when we exit, however we exit.
    pub async fn start_testbed(
        testbed_bin: &Path,
        proxy_mode: &str,
        timeout: Duration,
    ) -> anyhow::Result<Cluster> {
        eprintln!("==> starting the testbed ({} up)", testbed_bin.display());
        let mut child = Command::new(testbed_bin)
            .arg("up")
            .arg("--watch-parent")
            .arg(std::process::id().to_string())
            .arg("--proxy-mode")
            .arg(proxy_mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", testbed_bin.display()))?;
        let stdout = child.stdout.take().context("testbed stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let kubeconfig = tokio::time::timeout(timeout, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(path) = line.trim().strip_prefix("KUBECONFIG=") {
                    return Ok(PathBuf::from(path));
                }
            }
            bail!("the testbed supervisor exited before printing KUBECONFIG=")
        })
        .await
        .context("timed out waiting for the testbed's KUBECONFIG= line")??;
        // Keep draining its stdout so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let client = client_for(&kubeconfig).await?;
        eprintln!("==> testbed ready: KUBECONFIG={}", kubeconfig.display());
        Ok(Cluster {
            testbed: Some(testbed::Testbed::from_kubeconfig(&kubeconfig)?),
            kubeconfig,
            client,
            supervisor: Some(child),
            operator_process: None,
        })
    }

    /// `helm upgrade --install` of the operator chart; waits for the operator Deployment to be
    /// available and the CRD to be established.
    pub async fn install_chart(
        &self,
        helm: Option<&Path>,
        chart: &Path,
        image_tag: Option<&str>,
    ) -> anyhow::Result<()> {
        eprintln!(
            "==> helm install {} ({})",
            OPERATOR_RELEASE,
            chart.display()
        );
        let mut cmd = Command::from(self.helm(helm));
        cmd.args(["upgrade", "--install", OPERATOR_RELEASE])
            .arg(chart)
            .args(["--namespace", OPERATOR_NAMESPACE, "--create-namespace"])
            .args(["--set", "logFormat=text"]);
        if let Some(tag) = image_tag {
            cmd.args(["--set", &format!("image.tag={tag}")]);
        }
        let status = cmd
            .args(["--wait", "--timeout", "180s"])
            .status()
            .await
            .context("running helm")?;
        if !status.success() {
            bail!("helm install of {} failed ({status})", chart.display());
        }
        self.wait_crd_established(Duration::from_secs(60)).await?;
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), OPERATOR_NAMESPACE);
        let ready = crate::wait::until(Duration::from_secs(120), || async {
            let list = deployments.list(&Default::default()).await?;
            Ok(list.items.iter().any(|d| {
                d.status
                    .as_ref()
                    .and_then(|s| s.available_replicas)
                    .unwrap_or(0)
                    >= 1
            }))
        })
        .await;
        ready.context("the operator Deployment never became available")?;
        Ok(())
    }

    /// A helm command for this cluster: the testbed's own (its config and cache in the run dir),
    /// else `helm` (or the given binary) with our kubeconfig.
    pub fn helm(&self, helm: Option<&Path>) -> std::process::Command {
        match (&self.testbed, helm) {
            (Some(tb), None) => tb.helm(),
            (_, bin) => {
                let mut cmd = std::process::Command::new(bin.unwrap_or(Path::new("helm")));
                cmd.env("KUBECONFIG", &self.kubeconfig);
                cmd
            }
        }
    }

    /// `helm uninstall` of the operator release (the CRD stays, as Helm leaves `crds/` alone).
    pub async fn uninstall_chart(&self, helm: Option<&Path>) -> anyhow::Result<()> {
        let status = Command::from(self.helm(helm))
            .args([
                "uninstall",
                OPERATOR_RELEASE,
                "--namespace",
                OPERATOR_NAMESPACE,
                "--wait",
            ])
            .status()
            .await?;
        if !status.success() {
            bail!("helm uninstall failed ({status})");
        }
        Ok(())
    }

    /// Fallback: runs the operator binary on the host with the admin kubeconfig, after applying
    /// the CRD with kubectl. Used only when asked (`--operator host`).
    pub async fn run_operator_on_host(
        &mut self,
        operator_bin: &Path,
        crd: &Path,
    ) -> anyhow::Result<()> {
        eprintln!(
            "==> applying {} and starting {} on the host",
            crd.display(),
            operator_bin.display()
        );
        // A testbed's pinned kubectl, else the one on PATH.
        let kubectl = self.testbed.as_ref().map_or_else(
            || PathBuf::from("kubectl"),
            |tb| tb.info().controlplane_dir.join("kubectl"),
        );
        let status = Command::new(kubectl)
            .args(["apply", "--server-side", "-f"])
            .arg(crd)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .status()
            .await?;
        if !status.success() {
            bail!("kubectl apply of the CRD failed ({status})");
        }
        self.wait_crd_established(Duration::from_secs(60)).await?;
        let child = Command::new(operator_bin)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", operator_bin.display()))?;
        self.operator_process = Some(child);
        Ok(())
    }

    async fn wait_crd_established(&self, timeout: Duration) -> anyhow::Result<()> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        crate::wait::until(timeout, || async {
            let Some(crd) = crds.get_opt(CRD_NAME).await? else {
                return Ok(false);
            };
            Ok(crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True"))
        })
        .await
        .with_context(|| format!("CRD {CRD_NAME} not established"))
    }

    /// Stops what we started: the host operator, then the testbed supervisor (SIGTERM, so it
    /// tears down its processes and namespaces), waiting for it to finish.
    pub async fn shutdown(mut self) {
        if let Some(mut op) = self.operator_process.take() {
            let _ = op.kill().await;
        }
        if let Some(mut sup) = self.supervisor.take() {
            if let Some(pid) = sup.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            if tokio::time::timeout(Duration::from_secs(60), sup.wait())
                .await
                .is_err()
            {
                let _ = sup.kill().await;
            }
        }
    }
}
