//! The Helm chart as a user meets it: it lints and renders; `helm install` into the testbed
//! brings up an operator pod that a real kubelet runs from the operator image, with its
//! ServiceAccount's projected token, so the chart's RBAC is what the operator really gets; `kubectl auth can-i` shows that account
//! can do what the operator needs and nothing broad; a GracefulService applied after install
//! gets its Deployment, Service and PodDisruptionBudget. Everything is uninstalled at the end.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use experiment::wait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};

const RELEASE: &str = "graceful";
/// The chart's full name for release `graceful` (`<release>-<chart>` unless one contains the other).
const FULLNAME: &str = "graceful-graceful-operator";

/// `helm template` renders offline against helm's built-in Kubernetes version, which the
/// testbed's helm build leaves at 1.20; the chart requires >= 1.30, so name the testbed's.
const KUBE_VERSION: [&str; 2] = ["--kube-version", "1.34.3"];

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/graceful-operator")
}

/// Every (apiGroup, resource, verb) granted by the Roles and ClusterRoles in a YAML stream.
fn rbac_rules(yaml: &str) -> anyhow::Result<std::collections::BTreeSet<(String, String, String)>> {
    let mut out = std::collections::BTreeSet::new();
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

fn run(mut cmd: Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    Ok(out)
}

fn ok(cmd: Command) -> anyhow::Result<String> {
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

#[test]
fn chart_lints_and_renders_least_privilege_hardened_manifests() -> anyhow::Result<()> {
    let tb = testbed::shared()?;
    let mut lint = tb.helm();
    lint.args(["lint", "--strict"]).arg(chart());
    ok(lint)?;

    let mut template = tb.helm();
    template
        .args([
            "template",
            RELEASE,
            "--namespace",
            "graceful-system",
            "--include-crds",
        ])
        .args(KUBE_VERSION)
        .arg(chart());
    let rendered = ok(template)?;
    for kind in [
        "kind: CustomResourceDefinition",
        "kind: ServiceAccount",
        "kind: ClusterRole\n",
        "kind: ClusterRoleBinding",
        "kind: Role\n",
        "kind: RoleBinding",
        "kind: Deployment",
    ] {
        ensure!(
            rendered.contains(kind),
            "`{}` missing from the rendered chart",
            kind.trim()
        );
    }
    for hardening in [
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "livenessProbe:",
        "readinessProbe:",
    ] {
        ensure!(
            rendered.contains(hardening),
            "`{hardening}` missing from the operator Deployment"
        );
    }
    ensure!(
        rendered.contains("drop: [\"ALL\"]") || rendered.contains("- ALL"),
        "the operator container keeps capabilities"
    );
    let mut rbac = tb.helm();
    rbac.args(["template", RELEASE, "--show-only", "templates/rbac.yaml"])
        .args(KUBE_VERSION)
        .arg(chart());
    let rbac: String = ok(rbac)?
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let operator_rbac = std::fs::read_to_string(chart().join("../../operator/rbac.yaml"))?;
    let chart_rules = rbac_rules(&rbac)?;
    ensure!(chart_rules.len() >= 10, "parsed only {chart_rules:?}");
    ensure!(
        chart_rules == rbac_rules(&operator_rbac)?,
        "the chart's RBAC rules differ from operator/rbac.yaml (every permission the operator uses)"
    );
    ensure!(
        !rbac.contains("secrets"),
        "the chart's RBAC mentions secrets"
    );
    ensure!(!rbac.contains('*'), "the chart's RBAC grants a wildcard");
    ensure!(
        rendered.contains("--leader-election=off"),
        "one replica runs without leader election"
    );

    // Two replicas turn leader election on; a bad value is refused by values.schema.json.
    let mut two = tb.helm();
    two.args(["template", RELEASE, "--set", "replicaCount=2"])
        .args(KUBE_VERSION)
        .arg(chart());
    ensure!(ok(two)?.contains("--leader-election=on"));
    let mut bad = tb.helm();
    bad.args(["template", RELEASE, "--set", "logFormat=xml"])
        .args(KUBE_VERSION)
        .arg(chart());
    ensure!(
        !run(bad)?.status.success(),
        "values.schema.json accepted logFormat=xml"
    );

    // The chart's CRD is the generated one.
    let generated = std::fs::read_to_string(chart().join("../../crds/gracefulservice.yaml"))?;
    let in_chart = std::fs::read_to_string(chart().join("crds/gracefulservice.yaml"))?;
    ensure!(
        generated == in_chart,
        "charts/graceful-operator/crds differs from crds/"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_runs_the_operator_with_its_own_least_privilege_account() -> anyhow::Result<()>
{
    let tb = testbed::shared()?;
    let client = tb.client().await?;
    let ns = testbed::fixture::unique_name("graceful-system");
    let result = install_and_check(tb, &client, &ns).await;
    // Cleanup, also after a failure: uninstall, then the namespaces.
    let mut uninstall = tb.helm();
    uninstall.args(["uninstall", RELEASE, "--namespace", &ns, "--wait"]);
    let uninstalled = ok(uninstall);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for name in [ns.clone(), format!("{ns}-app")] {
        let _ = namespaces.delete(&name, &DeleteParams::default()).await;
    }
    result?;
    uninstalled?;
    Ok(())
}

async fn install_and_check(
    tb: &testbed::Testbed,
    client: &kube::Client,
    ns: &str,
) -> anyhow::Result<()> {
    let mut install = tb.helm();
    install
        .args(["install", RELEASE])
        .arg(chart())
        .args([
            "--namespace",
            ns,
            "--create-namespace",
            "--wait",
            "--timeout",
            "180s",
        ])
        .args(["--set", "logFormat=text"]);
    ok(install)?;

    // The operator pod runs and is Ready, with a projected token and no kubeconfig of ours.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods.list(&ListParams::default()).await?;
    ensure!(
        list.items.len() == 1,
        "expected one operator pod, got {}",
        list.items.len()
    );
    let pod = &list.items[0];
    let spec = pod.spec.as_ref().context("pod spec")?;
    ensure!(spec.service_account_name.as_deref() == Some(FULLNAME));
    let env = spec.containers[0].env.clone().unwrap_or_default();
    ensure!(
        env.iter().all(|e| e.name != "KUBECONFIG"),
        "the operator pod is given a kubeconfig"
    );

    can_i_checks(tb, ns)?;

    // A GracefulService applied after install gets its Deployment, Service and PDB.
    let app_ns = format!("{ns}-app");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": { "name": app_ns }
            }))?,
        )
        .await?;
    apply_gsvc(tb, &app_ns, "hello")?;
    wait_for_children(client, &app_ns, "hello", Duration::from_secs(90)).await?;

    // The operator acts with its ServiceAccount's rights, not an admin's: without its
    // ClusterRoleBinding a new GracefulService gets nothing; with it back, it gets its objects.
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let binding = bindings.get(FULLNAME).await?;
    bindings.delete(FULLNAME, &DeleteParams::default()).await?;
    let restore = async {
        apply_gsvc(tb, &app_ns, "denied")?;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &app_ns);
        ensure!(
            deployments.get_opt("denied").await?.is_none(),
            "the operator created a Deployment without its ClusterRoleBinding: it is not using its own account"
        );
        anyhow::Ok(())
    }
    .await;
    let mut binding = binding;
    binding.metadata.resource_version = None;
    binding.metadata.uid = None;
    binding.metadata.creation_timestamp = None;
    binding.metadata.managed_fields = None;
    bindings.create(&PostParams::default(), &binding).await?;
    restore?;
    wait_for_children(client, &app_ns, "denied", Duration::from_secs(180)).await?;
    Ok(())
}

fn apply_gsvc(tb: &testbed::Testbed, ns: &str, name: &str) -> anyhow::Result<()> {
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

async fn wait_for_children(
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

/// `kubectl auth can-i` as the operator's ServiceAccount: what it needs is allowed, everything
/// broad is denied.
fn can_i_checks(tb: &testbed::Testbed, ns: &str) -> anyhow::Result<()> {
    let who = format!("system:serviceaccount:{ns}:{FULLNAME}");
    let can = |args: &[&str]| -> anyhow::Result<bool> {
        let mut cmd = tb.kubectl();
        cmd.args(["auth", "can-i"]).args(args).args(["--as", &who]);
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
    };
    let allowed: &[&[&str]] = &[
        &["watch", "gracefulservices.graceful.dev", "--all-namespaces"],
        &[
            "patch",
            "gracefulservices.graceful.dev",
            "--subresource=status",
            "-n",
            "team-a",
        ],
        &["create", "deployments.apps", "-n", "team-a"],
        &["patch", "deployments.apps", "-n", "team-a"],
        &["patch", "services", "-n", "team-a"],
        &["patch", "poddisruptionbudgets.policy", "-n", "team-a"],
        &["watch", "pods", "--all-namespaces"],
        // The pod-deletion-cost annotation of the idlest pods (scaleDown.preferIdlePods).
        &["patch", "pods", "-n", "team-a"],
        &[
            "watch",
            "endpointslices.discovery.k8s.io",
            "--all-namespaces",
        ],
        &["create", "events.events.k8s.io", "-n", "team-a"],
        &["patch", "leases.coordination.k8s.io", "-n", ns],
    ];
    let denied: &[&[&str]] = &[
        &["get", "secrets", "-n", ns],
        &["list", "secrets", "--all-namespaces"],
        &["get", "configmaps", "-n", "team-a"],
        &["create", "pods", "-n", "team-a"],
        &["delete", "pods", "-n", "team-a"],
        &["delete", "deployments.apps", "-n", "team-a"],
        &["patch", "gracefulservices.graceful.dev", "-n", "team-a"],
        &["delete", "gracefulservices.graceful.dev", "-n", "team-a"],
        &["patch", "customresourcedefinitions.apiextensions.k8s.io"],
        &["create", "clusterrolebindings.rbac.authorization.k8s.io"],
        &["create", "rolebindings.rbac.authorization.k8s.io", "-n", ns],
        &["patch", "nodes"],
        &["create", "namespaces"],
        &["patch", "leases.coordination.k8s.io", "-n", "kube-system"],
        &["create", "serviceaccounts/token", "-n", ns],
        &["*", "*"],
    ];
    let mut wrong = Vec::new();
    for args in allowed {
        if !can(args)? {
            wrong.push(format!("denied but needed: {args:?}"));
        }
    }
    for args in denied {
        if can(args)? {
            wrong.push(format!("allowed but too broad: {args:?}"));
        }
    }
    ensure!(
        wrong.is_empty(),
        "RBAC of the operator's account:\n{}",
        wrong.join("\n")
    );
    Ok(())
}
