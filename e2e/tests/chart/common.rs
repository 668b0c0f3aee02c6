//! What the chart tests share: the chart's path, helm and kubectl runners, the RBAC rule parser,
//! installs and their cleanup, and the lock that keeps one release of the operator at a time in
//! the testbed (two operators would reconcile each other's GracefulServices, and the CRD can
//! belong to one release only).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context as _, bail};
use experiment::wait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::api::DeleteParams;

pub const RELEASE: &str = "graceful";
/// The chart's full name for release `graceful` (`<release>-<chart>` unless one contains the other).
pub const FULLNAME: &str = "graceful-graceful-operator";

/// `helm template` renders offline against helm's built-in Kubernetes version, which the
/// testbed's helm build leaves at 1.20; the chart requires >= 1.30, so name the testbed's.
pub const KUBE_VERSION: [&str; 2] = ["--kube-version", "1.34.3"];

/// Held by every test that installs the chart (see the module doc).
pub static ONE_RELEASE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/graceful-operator")
}

/// Every (apiGroup, resource, verb) granted by the Roles and ClusterRoles in a YAML stream.
pub fn rbac_rules(yaml: &str) -> anyhow::Result<BTreeSet<(String, String, String)>> {
    let mut out = BTreeSet::new();
    for doc in yaml.split("\n---") {
        let value: serde_yaml::Value = serde_yaml::from_str(doc)?;
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default();
        if kind != "Role" && kind != "ClusterRole" {
            continue;
        }
        let strings = |v: Option<&serde_yaml::Value>| -> Vec<String> {
            v.and_then(|v| v.as_sequence())
                .map(|s| {
                    s.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let rules = value.get("rules").and_then(|r| r.as_sequence());
        for rule in rules.into_iter().flatten() {
            for group in strings(rule.get("apiGroups")) {
                for resource in strings(rule.get("resources")) {
                    for verb in strings(rule.get("verbs")) {
                        out.insert((group.clone(), resource.clone(), verb));
                    }
                }
            }
        }
    }
    Ok(out)
}

pub fn run(mut cmd: Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    Ok(out)
}

pub fn ok(cmd: Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = run(cmd)?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `helm install graceful <chart> -n <ns> --create-namespace --wait` with text logs and `extra`.
/// `--take-ownership` adopts the CRD that an earlier test's release left behind (it is kept on
/// uninstall, `helm.sh/resource-policy: keep`).
pub fn helm_install(
    tb: &testbed::Testbed,
    chart: &Path,
    ns: &str,
    extra: &[&str],
) -> anyhow::Result<()> {
    let mut install = tb.helm();
    install
        .args(["install", RELEASE])
        .arg(chart)
        .args([
            "--namespace",
            ns,
            "--create-namespace",
            "--wait",
            "--timeout",
            "180s",
            "--take-ownership",
        ])
        .args(["--set", "logFormat=text"])
        .args(extra);
    ok(install)?;
    Ok(())
}

/// Uninstalls the release of `ns` and deletes the namespaces `namespaces` (not waiting for them
/// to be gone). Runs after a failure too; returns the uninstall's error, if any.
pub async fn uninstall(
    tb: &testbed::Testbed,
    client: &kube::Client,
    ns: &str,
    namespaces: &[String],
) -> anyhow::Result<()> {
    let mut uninstall = tb.helm();
    uninstall.args(["uninstall", RELEASE, "--namespace", ns, "--wait"]);
    let uninstalled = ok(uninstall).map(|_| ());
    let api: Api<Namespace> = Api::all(client.clone());
    for name in namespaces.iter().map(String::as_str).chain([ns]) {
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
    uninstalled
}

/// `kubectl apply` of a one-replica GracefulService of the bundled app.
pub fn apply_gsvc(tb: &testbed::Testbed, ns: &str, name: &str) -> anyhow::Result<()> {
    let manifest = serde_json::json!({
        "apiVersion": "graceful.dev/v1alpha1",
        "kind": "GracefulService",
        "metadata": { "name": name, "namespace": ns },
        "spec": { "replicas": 1, "image": "ghcr.io/graceful-dev/graceful-app:v1" }
    });
    let path = tb.run_dir().join(format!("gsvc-{ns}-{name}.json"));
    std::fs::write(&path, serde_json::to_vec(&manifest)?)?;
    let mut apply = tb.kubectl();
    apply.args(["apply", "-f"]).arg(&path);
    ok(apply)?;
    Ok(())
}

/// Waits until GracefulService `ns/name` has its Deployment, Service and PodDisruptionBudget.
pub async fn wait_for_children(
    client: &kube::Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    wait::until(timeout, || async {
        Ok(deployments.get_opt(name).await?.is_some()
            && services.get_opt(name).await?.is_some()
            && pdbs.get_opt(name).await?.is_some())
    })
    .await
    .with_context(|| {
        format!("GracefulService {ns}/{name} did not get its Deployment, Service and PDB")
    })
}

/// `kubectl auth can-i <args> --as <who>`: true for "yes", false for "no", an error otherwise.
pub fn can_i(tb: &testbed::Testbed, who: &str, args: &[&str]) -> anyhow::Result<bool> {
    let mut cmd = tb.kubectl();
    cmd.args(["auth", "can-i"]).args(args).args(["--as", who]);
    let out = run(cmd)?;
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match answer.as_str() {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => bail!(
            "kubectl auth can-i {args:?}: {answer:?} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Checks `kubectl auth can-i` answers for `who`; lists every wrong answer at once.
pub fn expect_can_i(
    tb: &testbed::Testbed,
    who: &str,
    allowed: &[&[&str]],
    denied: &[&[&str]],
) -> anyhow::Result<()> {
    let mut wrong = Vec::new();
    for args in allowed {
        if !can_i(tb, who, args)? {
            wrong.push(format!("denied but needed: {args:?}"));
        }
    }
    for args in denied {
        if can_i(tb, who, args)? {
            wrong.push(format!("allowed but should not be: {args:?}"));
        }
    }
    anyhow::ensure!(wrong.is_empty(), "RBAC of {who}:\n{}", wrong.join("\n"));
    Ok(())
}
