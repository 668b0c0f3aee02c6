//! The pod a GracefulService runs, as a platform engineer's cluster sees it: it passes Pod
//! Security `restricted` with a template of the user's merged in, and its preStop endpoint is no
//! off switch for the other workloads that can reach it.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use graceful_operator::manifests::pod::{TOKEN_HEADER, recorded_token};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use super::setup;
use super::support::*;

const SELECTOR: &str = "graceful.dev/service=web";

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test]
async fn a_restricted_namespace_runs_a_gracefulservice_with_a_template() -> Result<()> {
    testbed::skip_without_cluster!();
    let s = setup("op-psa").await?;
    let mut label = s.tb.kubectl();
    label.args([
        "label",
        "namespace",
        &s.ns,
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    run(label)?;
    let mut extras = s.tb.kubectl();
    extras.args(["-n", &s.ns, "create", "serviceaccount", "web-sa"]);
    run(extras)?;
    let mut config = s.tb.kubectl();
    config.args(["-n", &s.ns, "create", "configmap", "web-config"]);
    config.arg("--from-literal=GREETING=hello");
    run(config)?;

    // The twin: a plain pod of the same image, without the operator's security defaults, is
    // refused by the namespace, so the enforcement this test relies on is real.
    let mut naive = s.tb.kubectl();
    naive.args(["-n", &s.ns, "run", "naive", "--restart=Never"]);
    naive.arg(format!("--image={}", graceful_operator::crd::DEFAULT_IMAGE));
    let refused = naive.output()?;
    let said = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && said.contains("violates PodSecurity \"restricted"),
        "a plain pod was not refused by Pod Security: {said}"
    );

    let mut spec = quick_spec(2);
    spec.template = Some(serde_json::from_value(serde_json::json!({
        "metadata": {"labels": {"team": "payments"}, "annotations": {"example.com/owner": "payments"}},
        "spec": {
            "serviceAccountName": "web-sa",
            "automountServiceAccountToken": false,
            "volumes": [{"name": "cache", "emptyDir": {}}],
            "containers": [
                {"name": "app",
                 "envFrom": [{"configMapRef": {"name": "web-config"}}],
                 "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]},
                {"name": "second", "image": graceful_operator::crd::DEFAULT_IMAGE,
                 "args": ["--port", "8181", "--admin-port", "9191"],
                 "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}
            ]
        }
    }))?);
    create_gsvc(&s.client, &s.ns, "web", spec).await?;
    let _operator = Operator::start(s.tb, &s.ns)?;
    wait_stable(&s.client, &s.ns, "web", 2).await?;

    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let list = pods.list(&ListParams::default().labels(SELECTOR)).await?;
    ensure!(list.items.len() == 2, "{} pods", list.items.len());
    for pod in &list.items {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("team").map(String::as_str), Some("payments"));
        let notes = pod.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            notes.get("example.com/owner").map(String::as_str),
            Some("payments")
        );
        let spec = pod.spec.as_ref().context("pod spec")?;
        assert_eq!(spec.service_account_name.as_deref(), Some("web-sa"));
        let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["app", "second"]);
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default();
        ensure!(
            statuses.len() == 2 && statuses.iter().all(|c| c.ready),
            "not every container is ready: {statuses:?}"
        );
    }
    eprintln!("restricted namespace: 2 pods Ready, template merged; a plain pod refused");
    Ok(())
}

/// Runs curl inside the network namespace of `pod` (another workload of the cluster), returning
/// the HTTP status it got.
fn curl_from(pod: &Pod, args: &[&str]) -> Result<String> {
    let uid = pod.metadata.uid.as_deref().context("pod without uid")?;
    let pause = testbed::node::host::pod_processes(uid)
        .into_iter()
        .find(|pid| testbed::node::host::cmdline_of(*pid).starts_with("/pause"))
        .context("no pause process")?;
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pause}/ns/net"))
        .args([
            "curl",
            "-s",
            "-m",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(args)
        .output()?;
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test]
async fn prestop_from_another_pod_is_refused_and_the_kubelets_token_is_not() -> Result<()> {
    testbed::skip_without_cluster!();
    let s = setup("op-guard").await?;
    create_gsvc(&s.client, &s.ns, "web", quick_spec(2)).await?;
    let _operator = Operator::start(s.tb, &s.ns)?;
    wait_stable(&s.client, &s.ns, "web", 2).await?;
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let list = pods.list(&ListParams::default().labels(SELECTOR)).await?;
    let [target, stranger] = &list.items[..] else {
        bail!("expected 2 pods, got {}", list.items.len())
    };
    let name = target.metadata.name.clone().context("pod without name")?;
    let ip = target
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("pod without IP")?;
    let url = format!("http://{ip}:9090/prestop");
    let wrong = format!("{TOKEN_HEADER}: guess");
    for (what, args) in [
        ("GET", vec![url.as_str()]),
        ("POST", vec!["-X", "POST", url.as_str()]),
        (
            "GET with a wrong token",
            vec!["-H", wrong.as_str(), url.as_str()],
        ),
    ] {
        let status = curl_from(stranger, &args)?;
        ensure!(
            status == "403",
            "{what} on preStop from another pod: {status}"
        );
    }
    let readyz = format!("http://{ip}:9090/readyz");
    ensure!(
        curl_from(stranger, &[&readyz])? == "200",
        "readiness stays readable"
    );
    // Stays Ready: longer than the readiness probe needs (1 s period, 1 failure) to notice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(is_ready(&pods.get(&name).await?), "{name} left the Service");

    // The twin: with the token the kubelet's hook carries, the same call drains the pod...
    let deployment: Api<Deployment> = Api::namespaced(s.client.clone(), &s.ns);
    let token = recorded_token(Some(&deployment.get("web").await?)).context("no token")?;
    let right = format!("{TOKEN_HEADER}: {token}");
    let status = curl_from(stranger, &["-H", &right, &url])?;
    ensure!(status == "200", "preStop with the token: {status}");
    eventually(Duration::from_secs(10), "the pod unready", || async {
        Ok((!is_ready(&pods.get(&name).await?)).then_some(()))
    })
    .await?;
    // ...and since no SIGTERM follows within the grace period (4 s), it turns ready again.
    eventually(Duration::from_secs(20), "the pod ready again", || async {
        Ok(is_ready(&pods.get(&name).await?).then_some(()))
    })
    .await?;
    eprintln!(
        "preStop: 3 stranger calls refused (403), the token drained {name}, revert made it ready again"
    );
    Ok(())
}
