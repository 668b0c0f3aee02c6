//! The testbed's real nodes (containerd, kubelet, kube-proxy) against the live control plane:
//! pods of the images built from this repository run on every node as non-root and serve through
//! node ports and cluster IPs; `kubectl logs`, `exec` and `port-forward` work; the kubelet sends
//! the preStop hook before SIGTERM and SIGKILL at the end of the grace period; an unready pod
//! leaves the EndpointSlice and kube-proxy's rotation; and a naive rolling update under load
//! really loses requests while its graceful twin loses none.
//!
//! Needs the workspace binaries: `cargo build --workspace --bins` first.

mod testbed_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, LogParams, WatchEvent, WatchParams};
use testbed_support::*;

#[tokio::test]
async fn pods_from_local_images_run_on_every_node_and_serve_everywhere() -> Result<()> {
    testbed::skip_without_cluster!();
    let tb = testbed::shared()?;
    let client = tb.client().await?;
    let ns = namespace(&client, "tb-serve").await?;
    let ns = ns.name.as_str();
    let opts = AppPods {
        replicas: 3,
        ..AppPods::default()
    };
    apply_deployment(&client, ns, "web", &opts).await?;
    let port = apply_node_port_service(&client, ns, "web").await?;
    let pods = ready_pods(&client, ns, "web", 3).await?;
    let node_ips: Vec<String> = tb.node_ips().iter().map(ToString::to_string).collect();
    for pod in &pods {
        let status = pod.status.as_ref().context("no status")?;
        let host_ip = status.host_ip.clone().unwrap_or_default();
        ensure!(
            node_ips.contains(&host_ip),
            "host IP {host_ip} is no node's"
        );
        let node = &tb.info().nodes[node_ips.iter().position(|ip| *ip == host_ip).unwrap_or(0)];
        let pod_ip = pod_ip(pod)?.to_string();
        let prefix = node.pod_cidr.trim_end_matches(".0/24");
        ensure!(
            pod_ip.starts_with(prefix),
            "{pod_ip} outside {}",
            node.pod_cidr
        );
        let cs = &status
            .container_statuses
            .as_ref()
            .context("no container statuses")?[0];
        ensure!(cs.ready && cs.restart_count == 0, "{cs:?}");
        assert_eq!(cs.image, format!("{APP_IMAGE}:v1"));
        assert!(cs.image_id.starts_with("sha256:"), "{}", cs.image_id);
        // The Dockerfile's user and entrypoint, as containerd runs them.
        let processes = pod_processes(pod);
        let app: Vec<i32> = processes
            .iter()
            .copied()
            .filter(|pid| cmdline_of(*pid).starts_with("/usr/local/bin/graceful-app"))
            .collect();
        ensure!(
            app.len() == 1,
            "app processes of {}: {processes:?}",
            pod_name(pod)
        );
        assert_eq!(uid_of(app[0]), Some(65532), "the app runs as nonroot");
    }

    // Every node's address serves the node port (kube-proxy on each node), and the cluster IP
    // answers from the host through the run's route to node 0.
    let names: Vec<String> = pods.iter().map(pod_name).collect();
    for ip in tb.node_ips() {
        let addr = SocketAddr::from((ip, port));
        let seen = eventually(
            Duration::from_secs(20),
            &format!("{addr} to reach every pod"),
            || {
                let names = names.clone();
                async move {
                    let mut seen = std::collections::BTreeSet::new();
                    for _ in 0..30 {
                        let (status, body) = get(addr, "/").await?;
                        ensure!(status == 200, "status {status}");
                        if let Some(n) = names.iter().find(|n| body.contains(n.as_str())) {
                            seen.insert(n.clone());
                        }
                    }
                    Ok((seen.len() == 3).then_some(seen))
                }
            },
        )
        .await?;
        assert_eq!(seen.len(), 3);
    }
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), ns);
    let cluster_ip: std::net::Ipv4Addr = services
        .get("web")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .context("no cluster IP")?
        .parse()?;
    let (status, _) = get(SocketAddr::from((cluster_ip, 80)), "/").await?;
    assert_eq!(status, 200);

    // Scale down: the removed pods' processes (app and pause) are gone.
    scale(&client, ns, "web", 1).await?;
    let kept = pod_name(&ready_pods(&client, ns, "web", 1).await?[0]);
    for pod in pods.iter().filter(|p| pod_name(p) != kept) {
        eventually(
            Duration::from_secs(40),
            "the removed pod's processes to end",
            || async { Ok(pod_processes(pod).is_empty().then_some(())) },
        )
        .await?;
    }
    Ok(())
}

/// What users do first when a pod misbehaves works: the API server reaches each kubelet at the
/// node's address with its client certificate.
#[tokio::test]
async fn kubectl_logs_exec_and_port_forward_reach_pods() -> Result<()> {
    testbed::skip_without_cluster!();
    let tb = testbed::shared()?;
    let client = tb.client().await?;
    let ns = namespace(&client, "tb-kubectl").await?;
    let ns = ns.name.as_str();
    apply_deployment(
        &client,
        ns,
        "web",
        &AppPods {
            replicas: 1,
            ..AppPods::default()
        },
    )
    .await?;
    let pod = pod_name(&ready_pods(&client, ns, "web", 1).await?[0]);

    let logs = tb.kubectl().args(["logs", "-n", ns, &pod]).output()?;
    let text = String::from_utf8_lossy(&logs.stdout);
    ensure!(
        logs.status.success() && text.contains("listening"),
        "kubectl logs: {text}"
    );

    let exec = tb
        .kubectl()
        .args([
            "exec",
            "-n",
            ns,
            &pod,
            "--",
            "/usr/local/bin/graceful-app",
            "--version",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&exec.stdout);
    ensure!(
        exec.status.success() && text.contains("graceful-app"),
        "kubectl exec: {text}"
    );

    let local = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut forward = tb
        .kubectl()
        .args([
            "port-forward",
            "-n",
            ns,
            &format!("pod/{pod}"),
            &format!("{local}:8080"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let answered = eventually(
        Duration::from_secs(20),
        "the forwarded port to answer",
        || {
            let pod = pod.clone();
            async move {
                let (status, body) = get(SocketAddr::from(([127, 0, 0, 1], local)), "/").await?;
                Ok((status == 200 && body.contains(&pod)).then_some(()))
            }
        },
    )
    .await;
    let _ = forward.kill();
    let _ = forward.wait();
    answered
}

/// The kubelet's order with the app's hook: preStop (the app turns unready and holds for its
/// drain delay), then SIGTERM, then SIGKILL when the grace period (counted from the deletion,
/// preStop included) runs out, because an in-flight request keeps the app draining longer.
#[tokio::test]
async fn prestop_precedes_sigterm_and_sigkill_ends_the_grace_period() -> Result<()> {
    testbed::skip_without_cluster!();
    let tb = testbed::shared()?;
    let client = tb.client().await?;
    let ns = namespace(&client, "tb-prestop").await?;
    let ns = ns.name.as_str();
    let opts = AppPods {
        replicas: 1,
        prestop: true,
        grace_seconds: 4,
        env: vec![
            ("GRACEFUL_DRAIN_DELAY_MS", "1000"),
            ("GRACEFUL_SHUTDOWN_TIMEOUT_MS", "60000"),
        ],
        ..AppPods::default()
    };
    apply_deployment(&client, ns, "slow", &opts).await?;
    let pod = ready_pods(&client, ns, "slow", 1).await?.remove(0);
    let name = pod_name(&pod);
    let ip = pod_ip(&pod)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);

    // The app's own log lines, followed until the container ends.
    let follow = LogParams {
        follow: true,
        ..LogParams::default()
    };
    let mut lines = pods.log_stream(&name, &follow).await?.lines();
    let logs = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some(Ok(line))) =
            tokio::time::timeout(Duration::from_secs(30), lines.next()).await
        {
            seen.push(line);
        }
        seen
    });
    // The pod's last status before it disappears.
    let watch = WatchParams::default().fields(&format!("metadata.name={name}"));
    let version = pod.metadata.resource_version.clone().unwrap_or_default();
    let mut events = pods.watch(&watch, &version).await?.boxed();

    // A request that outlives the grace period keeps the drain going (a client that waits).
    let long = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect((ip, 8080)).await?;
        stream
            .write_all(b"GET /?work_ms=20000 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut sink)).await;
        anyhow::Ok(())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deleted = Instant::now();
    pods.delete(&name, &DeleteParams::default()).await?;
    let mut exit = None;
    let mut exited_after = None;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), events.try_next()).await;
        let Ok(Ok(Some(event))) = next else {
            break;
        };
        match event {
            WatchEvent::Modified(p) | WatchEvent::Deleted(p) => {
                let terminated = p
                    .status
                    .and_then(|s| s.container_statuses)
                    .and_then(|cs| cs.into_iter().next())
                    .and_then(|cs| cs.state)
                    .and_then(|s| s.terminated);
                if let Some(t) = terminated
                    && exit.is_none()
                {
                    exit = Some(t.exit_code);
                    exited_after = Some(deleted.elapsed());
                }
            }
            _ => {}
        }
        if pods.get_opt(&name).await?.is_none() {
            break;
        }
    }
    long.abort();
    let lines = logs.await?;
    let at = |needle: &str| -> Result<i64> {
        let line = lines
            .iter()
            .find(|l| l.contains(needle))
            .with_context(|| format!("no log line with {needle:?} in {lines:#?}"))?;
        let value: serde_json::Value = serde_json::from_str(line)?;
        let ts = value["timestamp"].as_str().context("no timestamp")?;
        parse_rfc3339_ms(ts)
    };
    let prestop = at("preStop: readiness off")?;
    let sigterm = at("\"signal\":\"SIGTERM\"")?;
    assert!(
        sigterm - prestop >= 900,
        "SIGTERM only {} ms after preStop (drain delay 1 s)",
        sigterm - prestop
    );
    assert_eq!(exit, Some(137), "killed by SIGKILL; log: {lines:#?}");
    let after = exited_after.context("no terminated status seen")?;
    assert!(
        (Duration::from_millis(3500)..=Duration::from_secs(8)).contains(&after),
        "container ended {after:?} after the deletion (grace 4 s)"
    );
    assert!(
        pods.get_opt(&name).await?.is_none(),
        "pod object left behind"
    );
    Ok(())
}

/// Milliseconds since the epoch of an RFC 3339 UTC timestamp such as the app logs
/// (`2026-12-01T23:55:46.832581Z`).
fn parse_rfc3339_ms(ts: &str) -> Result<i64> {
    let time: k8s_openapi::jiff::Timestamp = ts.parse()?;
    Ok(time.as_millisecond())
}

/// Failing readiness (the app's /prestop flips it) takes the pod out of the EndpointSlice and,
/// once kube-proxy synced, out of the rotation for new connections.
#[tokio::test]
async fn unready_pod_leaves_endpoint_slice_and_gets_no_new_connections() -> Result<()> {
    testbed::skip_without_cluster!();
    let tb = testbed::shared()?;
    let client = tb.client().await?;
    let ns = namespace(&client, "tb-unready").await?;
    let ns = ns.name.as_str();
    let opts = AppPods {
        env: vec![("GRACEFUL_DRAIN_DELAY_MS", "500")],
        ..AppPods::default()
    };
    apply_deployment(&client, ns, "web", &opts).await?;
    let port = apply_node_port_service(&client, ns, "web").await?;
    let pods = ready_pods(&client, ns, "web", 2).await?;
    let (drained, other) = (&pods[0], &pods[1]);
    let drained_ip = pod_ip(drained)?;

    let (status, _) = get(SocketAddr::from((drained_ip, 9090)), "/prestop").await?;
    assert_eq!(status, 200);

    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels("kubernetes.io/service-name=web");
    eventually(
        Duration::from_secs(20),
        "the drained pod to be not ready in the EndpointSlice",
        || {
            let slices = slices.clone();
            let lp = lp.clone();
            let ip = drained_ip.to_string();
            async move {
                let unready = slices
                    .list(&lp)
                    .await?
                    .items
                    .into_iter()
                    .flat_map(|s| s.endpoints)
                    .any(|e| {
                        e.addresses.contains(&ip)
                            && e.conditions.as_ref().and_then(|c| c.ready) == Some(false)
                    });
                Ok(unready.then_some(()))
            }
        },
    )
    .await?;
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), ns);
    assert!(
        !is_ready(&pod_api.get(&pod_name(drained)).await?),
        "pod still Ready"
    );
    // kube-proxy syncs at most once a second (minSyncPeriod); then every new connection, on
    // every node, goes to the other pod.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for ip in tb.node_ips() {
        for _ in 0..10 {
            let (status, body) = get(SocketAddr::from((ip, port)), "/").await?;
            assert_eq!(status, 200);
            assert!(
                body.contains(&pod_name(other)),
                "{ip} answered by {body:?}, not by {}",
                pod_name(other)
            );
        }
    }
    Ok(())
}

/// The failure this project exists to remove, on real kubelets and kube-proxy: a plain
/// Deployment without preStop hook or readiness probe, rolled to a new tag under load through a
/// node port, loses requests, because SIGTERM closes the listener while kube-proxy still sends it
/// connections, and a new pod gets connections before it listens.
#[tokio::test]
async fn naive_rolling_update_under_load_loses_requests() -> Result<()> {
    testbed::skip_without_cluster!();
    let client = testbed::shared()?.client().await?;
    let ns = namespace(&client, "tb-naive").await?;
    let naive = AppPods {
        replicas: 3,
        readiness: false,
        prestop: false,
        env: vec![("GRACEFUL_SHUTDOWN_TIMEOUT_MS", "5000")],
        ..AppPods::default()
    };
    let report = rollout_under_load(&ns.name, "naive", &naive).await?;
    println!("naive rollout under load: {report}");
    assert!(
        report.errors() > 0,
        "a naive rollout lost no request: {report} (the testbed no longer reproduces the race)"
    );
    Ok(())
}

/// The twin that shows the errors above come from the missing hook, not from the testbed: the
/// same rollout with a readiness probe and the app's preStop hold loses nothing.
#[tokio::test]
async fn rolling_update_with_prestop_and_readiness_loses_nothing() -> Result<()> {
    testbed::skip_without_cluster!();
    let client = testbed::shared()?.client().await?;
    let ns = namespace(&client, "tb-graceful").await?;
    let graceful = AppPods {
        replicas: 3,
        readiness: true,
        prestop: true,
        env: vec![
            ("GRACEFUL_DRAIN_DELAY_MS", "4000"),
            ("GRACEFUL_SHUTDOWN_TIMEOUT_MS", "10000"),
        ],
        ..AppPods::default()
    };
    let report = rollout_under_load(&ns.name, "graceful", &graceful).await?;
    println!("rollout with preStop and readiness under load: {report}");
    assert_eq!(report.errors(), 0, "{report}");
    Ok(())
}
