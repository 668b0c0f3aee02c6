//! A namespaced install: `watchNamespaces: [a, b]` gives the operator a Role and a RoleBinding in
//! `a` and `b` only, no ClusterRole, and runs one controller per namespace. `kubectl auth can-i`
//! as its ServiceAccount: allowed in `a` and `b`, denied in `c` and cluster-wide. A
//! GracefulService in `a` gets its children while one in the unwatched `c`, applied first, is
//! left alone: no children, no status.

use std::time::Duration;

use anyhow::ensure;
use graceful_operator::GracefulService;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::PostParams;

use super::common::{
    FULLNAME, ONE_RELEASE, RELEASE, apply_gsvc, chart, expect_can_i, helm_install, ok, uninstall,
    wait_for_children,
};

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaced_install_reconciles_only_its_namespaces_with_roles_only() -> anyhow::Result<()> {
    testbed::skip_without_cluster!();
    let _one = ONE_RELEASE.lock().await;
    let tb = testbed::shared()?;
    let client = tb.client().await?;
    let ns = testbed::fixture::unique_name("graceful-ns");
    let [a, b, c] = ["a", "b", "c"].map(|x| format!("{ns}-{x}"));
    let result = async {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        for name in [&a, &b, &c] {
            namespaces
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(serde_json::json!({ "metadata": { "name": name } }))?,
                )
                .await?;
        }
        let watch = format!("watchNamespaces={{{a},{b}}}");
        helm_install(tb, &chart(), &ns, &["--set", &watch])?;

        let mut manifest = tb.helm();
        manifest.args(["get", "manifest", RELEASE, "--namespace", &ns]);
        let manifest = ok(manifest)?;
        ensure!(
            !manifest.contains("kind: ClusterRole"),
            "a namespaced install has a ClusterRole or ClusterRoleBinding"
        );
        ensure!(
            manifest.contains(&format!("--namespace={a},{b}")),
            "the operator is not told its namespaces"
        );

        let who = format!("system:serviceaccount:{ns}:{FULLNAME}");
        let mut allowed: Vec<Vec<String>> = Vec::new();
        for watched in [&a, &b] {
            for args in [
                vec!["watch", "gracefulservices.graceful.dev"],
                vec!["patch", "gracefulservices.graceful.dev", "--subresource=status"],
                vec!["update", "gracefulservices.graceful.dev", "--subresource=finalizers"],
                vec!["create", "deployments.apps"],
                vec!["patch", "services"],
                vec!["patch", "pods"],
                vec!["watch", "endpointslices.discovery.k8s.io"],
                vec!["create", "events.events.k8s.io"],
            ] {
                let mut args: Vec<String> = args.into_iter().map(str::to_string).collect();
                args.extend(["-n".to_string(), watched.to_string()]);
                allowed.push(args);
            }
        }
        allowed.push(
            ["update", "leases.coordination.k8s.io", "-n", ns.as_str()]
                .map(str::to_string)
                .to_vec(),
        );
        let denied: Vec<Vec<String>> = [
            vec!["watch", "gracefulservices.graceful.dev", "-n", c.as_str()],
            vec!["create", "deployments.apps", "-n", c.as_str()],
            vec!["patch", "pods", "-n", c.as_str()],
            vec!["watch", "gracefulservices.graceful.dev", "--all-namespaces"],
            vec!["list", "deployments.apps", "--all-namespaces"],
            vec!["watch", "pods", "--all-namespaces"],
            vec!["create", "deployments.apps", "-n", ns.as_str()],
            vec!["get", "secrets", "-n", a.as_str()],
            vec!["delete", "deployments.apps", "-n", a.as_str()],
        ]
        .into_iter()
        .map(|v| v.into_iter().map(str::to_string).collect())
        .collect();
        let allowed: Vec<Vec<&str>> = allowed.iter().map(|a| strs(a)).collect();
        let denied: Vec<Vec<&str>> = denied.iter().map(|a| strs(a)).collect();
        let allowed: Vec<&[&str]> = allowed.iter().map(Vec::as_slice).collect();
        let denied: Vec<&[&str]> = denied.iter().map(Vec::as_slice).collect();
        expect_can_i(tb, &who, &allowed, &denied)?;

        // The unwatched one first, so it has had every chance by the time the watched one is done.
        apply_gsvc(tb, &c, "left-alone")?;
        apply_gsvc(tb, &a, "hello")?;
        wait_for_children(&client, &a, "hello", Duration::from_secs(90)).await?;
        apply_gsvc(tb, &b, "hello")?;
        wait_for_children(&client, &b, "hello", Duration::from_secs(90)).await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &c);
        ensure!(
            deployments.get_opt("left-alone").await?.is_none(),
            "the operator created a Deployment in the unwatched namespace {c}"
        );
        let gsvcs: Api<GracefulService> = Api::namespaced(client.clone(), &c);
        let status = gsvcs.get("left-alone").await?.status;
        ensure!(
            status.is_none(),
            "the operator wrote the status of a GracefulService in the unwatched namespace {c}: {status:?}"
        );
        eprintln!("namespaced install: {a} and {b} reconciled; {c} left alone (no Deployment, no status)");
        anyhow::Ok(())
    }
    .await;
    let cleanup = uninstall(tb, &client, &ns, &[a, b, c]).await;
    result?;
    cleanup
}
