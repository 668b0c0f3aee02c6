//! CRD upgrades through the chart. The CRD is a template of the chart (generated from
//! crds/gracefulservice.yaml by scripts/gen-crd.sh) with `helm.sh/resource-policy: keep`, so
//! `helm upgrade` applies a changed CRD and `helm uninstall` leaves it (and every GracefulService)
//! in place.
//!
//! The proof upgrades the installed release to a copy of the chart whose CRD has one more spec
//! field, and reads the field back from the API server. The twin is the layout the chart had
//! before: the same CRD, under another group so that it cannot touch the real one, in a chart's
//! `crds/` folder. After the same upgrade the API server still has the old schema, so the new
//! field would be pruned from every object.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::DeleteParams;

use super::common::{ONE_RELEASE, RELEASE, chart, helm_install, ok, uninstall};

const CRD: &str = "gracefulservices.graceful.dev";
const NEW_FIELD: &str = "upgradeProbe";

/// Copies the chart (following its symlinks) to `to`.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if std::fs::metadata(entry.path())?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// The CRD text with one more string property in `spec`, inserted before `args` (the first
/// property, in crdgen's alphabetical order) at its indentation.
fn with_new_field(crd: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut done = false;
    for line in crd.lines() {
        if !done && line.trim() == "args:" {
            let indent = &line[..line.len() - line.trim_start().len()];
            out.push_str(&format!(
                "{indent}{NEW_FIELD}:\n{indent}  description: Added by the CRD upgrade test.\n{indent}  type: string\n"
            ));
            done = true;
        }
        out.push_str(line);
        out.push('\n');
    }
    ensure!(done, "no `args:` property in the CRD");
    Ok(out)
}

/// Whether the served CRD `name` has the new field in its spec schema.
async fn has_new_field(client: &kube::Client, name: &str) -> anyhow::Result<bool> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crds.get(name).await?;
    let version = crd.spec.versions.first().context("CRD without versions")?;
    let spec = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| s.properties.as_ref())
        .and_then(|p| p.get("spec"))
        .and_then(|s| s.properties.as_ref())
        .context("CRD without a spec schema")?;
    Ok(spec.contains_key(NEW_FIELD))
}

fn scratch(tb: &testbed::Testbed, name: &str) -> anyhow::Result<PathBuf> {
    let dir = tb.run_dir().join(testbed::fixture::unique_name(name));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_upgrade_upgrades_the_crd_and_uninstall_keeps_it() -> anyhow::Result<()> {
    testbed::skip_without_cluster!();
    let _one = ONE_RELEASE.lock().await;
    let tb = testbed::shared()?;
    let client = tb.client().await?;
    let ns = testbed::fixture::unique_name("graceful-crd");
    let result = async {
        helm_install(tb, &chart(), &ns, &[])?;
        ensure!(
            !has_new_field(&client, CRD).await?,
            "the field is there before the upgrade"
        );
        let next = scratch(tb, "chart-next")?.join("graceful-operator");
        copy_dir(&chart(), &next)?;
        let template = next.join("templates/crd.yaml");
        std::fs::write(
            &template,
            with_new_field(&std::fs::read_to_string(&template)?)?,
        )?;
        let mut upgrade = tb.helm();
        upgrade.args(["upgrade", RELEASE]).arg(&next).args([
            "--namespace",
            &ns,
            "--reuse-values",
            "--wait",
            "--timeout",
            "180s",
        ]);
        ok(upgrade)?;
        ensure!(
            has_new_field(&client, CRD).await?,
            "helm upgrade left the CRD without the new field"
        );
        eprintln!("helm upgrade: the served CRD has spec.{NEW_FIELD}");
        anyhow::Ok(())
    }
    .await;
    let cleanup = uninstall(tb, &client, &ns, &[]).await;
    result?;
    cleanup?;
    // Uninstalled, the CRD stays (helm.sh/resource-policy: keep): GracefulServices survive.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    ensure!(
        crds.get_opt(CRD).await?.is_some(),
        "helm uninstall deleted the CRD"
    );
    Ok(())
}

/// The twin: a chart with the CRD in `crds/` (the old layout), upgraded to the new field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twin_a_crd_in_the_crds_folder_is_never_upgraded() -> anyhow::Result<()> {
    testbed::skip_without_cluster!();
    let tb = testbed::shared()?;
    let client = tb.client().await?;
    let ns = testbed::fixture::unique_name("graceful-crd-twin");
    let group = format!("{ns}.graceful.dev");
    let name = format!("gracefulservices.{group}");
    let original = std::fs::read_to_string(chart().join("../../crds/gracefulservice.yaml"))?
        .replace("graceful.dev", &group);
    let make_chart = |crd: &str, version: &str| -> anyhow::Result<PathBuf> {
        let dir = scratch(tb, "crd-twin")?.join("crd-twin");
        std::fs::create_dir_all(dir.join("crds"))?;
        std::fs::write(
            dir.join("Chart.yaml"),
            format!("apiVersion: v2\nname: crd-twin\nversion: {version}\n"),
        )?;
        std::fs::write(dir.join("crds/crd.yaml"), crd)?;
        Ok(dir)
    };
    let result = async {
        let mut install = tb.helm();
        install
            .args(["install", "crd-twin"])
            .arg(make_chart(&original, "0.1.0")?)
            .args(["--namespace", &ns, "--create-namespace", "--wait"]);
        ok(install)?;
        let mut upgrade = tb.helm();
        upgrade
            .args(["upgrade", "crd-twin"])
            .arg(make_chart(&with_new_field(&original)?, "0.2.0")?)
            .args(["--namespace", &ns, "--wait"]);
        ok(upgrade)?;
        let upgraded = has_new_field(&client, &name).await?;
        eprintln!(
            "twin (CRD in crds/): after helm upgrade the served CRD has the new field: {upgraded}"
        );
        ensure!(
            !upgraded,
            "Helm upgraded a CRD from crds/: the twin no longer shows why the CRD is a template"
        );
        anyhow::Ok(())
    }
    .await;
    let mut uninstall = tb.helm();
    uninstall.args(["uninstall", "crd-twin", "--namespace", &ns, "--wait"]);
    let uninstalled = ok(uninstall);
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let _ = crds.delete(&name, &DeleteParams::default()).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    result?;
    uninstalled.map(|_| ())
}
