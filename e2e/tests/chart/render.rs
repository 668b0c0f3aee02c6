//! The chart offline: it lints, renders hardened manifests, grants exactly operator/rbac.yaml,
//! always runs leader election, refuses bad values, and carries the generated CRD as a template
//! (kept on uninstall, switched off by `crds.install=false`).

use anyhow::{Context as _, ensure};

use super::common::{KUBE_VERSION, RELEASE, chart, ok, rbac_rules, run};

/// `helm template` of the chart with `args`.
pub fn template(tb: &testbed::Testbed, args: &[&str]) -> anyhow::Result<String> {
    let mut template = tb.helm();
    template
        .args(["template", RELEASE])
        .args(KUBE_VERSION)
        .args(args)
        .arg(chart());
    ok(template)
}

/// The rendered RBAC templates without comment lines.
fn rendered_rbac(tb: &testbed::Testbed, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["--show-only", "templates/rbac.yaml"];
    all.extend_from_slice(args);
    Ok(template(tb, &all)?
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n"))
}

#[test]
fn chart_lints_and_renders_least_privilege_hardened_manifests() -> anyhow::Result<()> {
    testbed::skip_without_cluster!();
    let tb = testbed::shared()?;
    let mut lint = tb.helm();
    lint.args(["lint", "--strict"]).arg(chart());
    ok(lint)?;

    let rendered = template(tb, &["--namespace", "graceful-system", "--include-crds"])?;
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
    let rbac = rendered_rbac(tb, &[])?;
    let operator_rbac = std::fs::read_to_string(chart().join("../../operator/rbac.yaml"))?;
    let chart_rules = rbac_rules(&rbac)?;
    ensure!(chart_rules.len() >= 10, "parsed only {chart_rules:?}");
    ensure!(
        chart_rules == rbac_rules(&operator_rbac)?,
        "the chart's RBAC rules differ from operator/rbac.yaml (every permission the operator uses)"
    );
    ensure!(
        chart_rules.contains(&(
            "graceful.dev".to_string(),
            "gracefulservices/finalizers".to_string(),
            "update".to_string()
        )),
        "no update on gracefulservices/finalizers: OwnerReferencesPermissionEnforcement refuses the children"
    );
    ensure!(
        !rbac.contains("secrets"),
        "the chart's RBAC mentions secrets"
    );
    ensure!(!rbac.contains('*'), "the chart's RBAC grants a wildcard");

    // A namespaced install: the same rules, as Roles in each listed namespace, no ClusterRole;
    // the operator is told its namespaces. Bad or repeated names are refused by the schema.
    let namespaced = rendered_rbac(tb, &["--set", "watchNamespaces={team-a,team-b}"])?;
    ensure!(
        rbac_rules(&namespaced)? == chart_rules,
        "the namespaced install grants other rules than operator/rbac.yaml"
    );
    ensure!(
        !namespaced.contains("kind: ClusterRole"),
        "the namespaced install has a ClusterRole"
    );
    for ns in ["team-a", "team-b"] {
        ensure!(
            namespaced.contains(&format!("namespace: {ns}")),
            "no Role or RoleBinding in {ns}"
        );
    }
    ensure!(
        template(tb, &["--set", "watchNamespaces={team-a,team-b}"])?
            .contains("--namespace=team-a,team-b")
    );
    for bad in ["watchNamespaces={Team_A}", "watchNamespaces={a,a}"] {
        let mut refused = tb.helm();
        refused
            .args(["template", RELEASE, "--set", bad])
            .args(KUBE_VERSION)
            .arg(chart());
        ensure!(
            !run(refused)?.status.success(),
            "values.schema.json accepted {bad}"
        );
    }

    // Leader election is on whatever the replica count: a `helm upgrade` rolls the Deployment,
    // and for a moment two pods run.
    for replicas in ["replicaCount=1", "replicaCount=2"] {
        let out = template(tb, &["--set", replicas])?;
        ensure!(
            out.contains("--leader-election=on") && !out.contains("--leader-election=off"),
            "{replicas} renders without leader election"
        );
    }
    // A bad value is refused by values.schema.json.
    let mut bad = tb.helm();
    bad.args(["template", RELEASE, "--set", "logFormat=xml"])
        .args(KUBE_VERSION)
        .arg(chart());
    ensure!(
        !run(bad)?.status.success(),
        "values.schema.json accepted logFormat=xml"
    );

    // The chart's CRD is the generated one, kept on uninstall, and left out on request.
    let crd = template(tb, &["--show-only", "templates/crd.yaml"])?;
    let mut crd: serde_yaml::Value = serde_yaml::from_str(&crd)?;
    let metadata = crd
        .get_mut("metadata")
        .and_then(|m| m.as_mapping_mut())
        .context("CRD without metadata")?;
    let annotations = metadata.remove("annotations");
    metadata.remove("labels");
    ensure!(
        annotations
            .as_ref()
            .and_then(|a| a.get("helm.sh/resource-policy"))
            == Some(&serde_yaml::Value::from("keep")),
        "the chart's CRD is not kept on uninstall: {annotations:?}"
    );
    let generated: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(
        chart().join("../../crds/gracefulservice.yaml"),
    )?)?;
    ensure!(
        crd == generated,
        "templates/crd.yaml differs from crds/gracefulservice.yaml: run scripts/gen-crd.sh"
    );
    ensure!(
        !template(tb, &["--set", "crds.install=false"])?.contains("kind: CustomResourceDefinition"),
        "crds.install=false still renders the CRD"
    );
    Ok(())
}
