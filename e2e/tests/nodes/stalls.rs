//! A walk never stalls on a pod that serves nothing. Mid-walk, under load through a node port:
//! a Pending pod (every node cordoned, a pod replaced) and a crash-looping pod (its app killed
//! and its port taken, so every restart fails). Before, `settled` waited for every pod to be
//! ready and no step was ever taken; now the unready surplus goes first, in one step, and the
//! walk ends. The load must lose nothing (the unready pods were out of the Service already).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use graceful_operator::GracefulService;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};

use super::recording::record;
use super::support::{self, Operator, create_gsvc, eventually, wait_stable};
use super::{NODES, node_port, setup, spec, start_load, stop_load};

const FROM: i32 = 5;
/// The unready pod's grace (10 s), a step's settle (about 5 s) per step, and a loaded machine.
const BOUND: Duration = Duration::from_secs(120);

/// Uncordons the nodes when dropped, also when the test fails.
struct Cordoned<'a>(&'a testbed::Testbed, Vec<String>);

impl Drop for Cordoned<'_> {
    fn drop(&mut self) {
        let mut uncordon = self.0.kubectl();
        uncordon.arg("uncordon").args(&self.1);
        if let Err(error) = support::run(uncordon) {
            eprintln!("uncordon failed: {error}");
        }
    }
}

/// A process holding the app's port inside a pod's network namespace; killed when dropped.
struct PortSquatter(Child);

impl Drop for PortSquatter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Walks `FROM -> 1` and returns the recorded replicas and how long the walk took.
async fn walk_to_one(client: &kube::Client, ns: &str) -> Result<(Vec<i32>, Duration)> {
    let (rec, tasks) = record(client, ns, "web").await?;
    let gsvcs: Api<GracefulService> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    let patch = serde_json::json!({"spec": {"replicas": 1}});
    gsvcs
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let outcome = tokio::time::timeout(BOUND, wait_stable(client, ns, "web", 1)).await;
    tasks.iter().for_each(|t| t.abort());
    let steps: Vec<i32> = rec
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .replicas
        .iter()
        .map(|r| r.1)
        .collect();
    let status = gsvcs.get("web").await?.status.unwrap_or_default();
    let conditions: Vec<String> = status
        .conditions
        .iter()
        .map(|c| format!("{}={} ({})", c.type_, c.status, c.message))
        .collect();
    outcome
        .with_context(|| {
            format!("the walk did not end within {BOUND:?}: steps {steps:?}, {conditions:?}")
        })?
        .with_context(|| format!("steps {steps:?}"))?;
    Ok((steps, started.elapsed()))
}

type Load = (
    loadgen::Control,
    tokio::task::JoinHandle<Result<loadgen::Report>>,
);

/// A GracefulService of `FROM` pods with its operator, serving load through a node port.
async fn serving(prefix: &str) -> Result<(super::common::Setup, Operator, Load)> {
    let s = setup(prefix).await?;
    let operator = Operator::start(s.tb, &s.ns)?;
    create_gsvc(&s.client, &s.ns, "web", spec(FROM)).await?;
    wait_stable(&s.client, &s.ns, "web", FROM).await?;
    let port = node_port(&s.client, &s.ns, "web").await?;
    let load = start_load(port).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok((s, operator, load))
}

/// Walks to 1 past the `what` pod `pod`: the walk must end, its first step must remove that pod
/// alone, and the load must lose nothing.
async fn walk_past(
    client: &kube::Client,
    ns: &str,
    (control, load): Load,
    what: &str,
    pod: &str,
) -> Result<()> {
    let (steps, took) = walk_to_one(client, ns).await?;
    let report = stop_load(control, load).await?;
    eprintln!(
        "{what} pod mid-walk: steps {steps:?} in {:.1} s; load {report}",
        took.as_secs_f64()
    );
    ensure!(
        steps.get(1) == Some(&(FROM - 1)),
        "the first step removes only the {what} pod: {steps:?}"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    ensure!(
        pods.get_opt(pod).await?.is_none(),
        "the {what} pod is still there"
    );
    ensure!(
        report.errors() == 0,
        "{report}\nfailed at {:?}",
        super::failure_times(&report, 10)
    );
    Ok(())
}

#[tokio::test]
async fn a_pending_pod_mid_walk_is_removed_first_and_the_walk_ends() -> Result<()> {
    testbed::skip_without_cluster!();
    let _turn = NODES.lock().await;
    let (s, _operator, load) = serving("stall-pending").await?;

    let nodes: Vec<String> = Api::<k8s_openapi::api::core::v1::Node>::all(s.client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    let mut cordon = s.tb.kubectl();
    cordon.arg("cordon").args(&nodes);
    support::run(cordon)?;
    let _cordoned = Cordoned(s.tb, nodes);
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let selector = ListParams::default().labels("graceful.dev/service=web");
    let victim = pods.list(&selector).await?.items[0]
        .metadata
        .name
        .clone()
        .context("pod without name")?;
    pods.delete(&victim, &DeleteParams::default()).await?;
    let pending = eventually(Duration::from_secs(30), "a Pending replacement", || async {
        let list = pods.list(&selector).await?;
        Ok(list.items.into_iter().find_map(|p| {
            let unbound = p.spec.as_ref().is_some_and(|s| s.node_name.is_none());
            unbound.then_some(p.metadata.name?)
        }))
    })
    .await?;
    eprintln!("{victim} deleted; its replacement {pending} is Pending (nodes cordoned)");

    walk_past(&s.client, &s.ns, load, "Pending", &pending).await
}

/// The crash-looping pod goes first, the walk ends, and the load loses nothing.
#[tokio::test]
async fn a_crash_looping_pod_mid_walk_loses_nothing() -> Result<()> {
    testbed::skip_without_cluster!();
    let _turn = NODES.lock().await;
    crash_loop_mid_walk().await
}

/// A pod taken out of the Service (its preStop called), then made to crash-loop, in the middle
/// of a walk 5 -> 1 under load.
async fn crash_loop_mid_walk() -> Result<()> {
    let (s, _operator, load) = serving("stall-crash").await?;

    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let selector = ListParams::default().labels("graceful.dev/service=web");
    let victim = pods
        .list(&selector)
        .await?
        .items
        .into_iter()
        .find(ready)
        .context("no ready pod")?;
    let name = victim.metadata.name.clone().context("pod without name")?;
    let uid = victim.metadata.uid.clone().context("pod without uid")?;
    let ip = victim
        .status
        .and_then(|s| s.pod_ip)
        .context("pod without IP")?;
    // Out of the Service first, as the kubelet would do it: the preStop call, with the token the
    // kubelet's hook carries, flips readiness.
    let deployment: Api<Deployment> = Api::namespaced(s.client.clone(), &s.ns);
    let token =
        graceful_operator::manifests::pod::recorded_token(Some(&deployment.get("web").await?))
            .context("no preStop token")?;
    let header = format!(
        "{}: {token}",
        graceful_operator::manifests::pod::TOKEN_HEADER
    );
    let mut curl = Command::new("curl");
    curl.args(["-sf", "-m", "10", "-H", &header])
        .arg(format!("http://{ip}:9090/prestop"));
    // Off the runtime: the call holds for the drain delay (5 s), and the load runs on this
    // runtime. Blocking it froze every client for 5 s, and the request in flight then lost to
    // its own 5-s timeout (the "timeout" this test reported in 2 of 3 runs).
    let prestop = tokio::task::spawn_blocking(move || curl.output()).await??;
    ensure!(prestop.status.success(), "preStop call failed: {prestop:?}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Then the crash loop: the app killed, its port taken in the pod's network namespace.
    let processes = testbed::node::host::pod_processes(&uid);
    let find = |prefix: &str| {
        processes
            .iter()
            .copied()
            .find(|pid| testbed::node::host::cmdline_of(*pid).starts_with(prefix))
    };
    let pause = find("/pause").context("no pause process")?;
    // The squatter retries its bind every 2 ms while the app is killed again and again, until
    // it holds the port between a kill and the kubelet's restart (SO_REUSEADDR, as the app: the
    // port's TIME_WAIT connections must not stop it; a listening app still does).
    let squat = "import socket,sys,time\n\
        end=time.time()+30\n\
        while True:\n\
        \x20s=socket.socket()\n\
        \x20s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
        \x20try:\n\
        \x20\x20s.bind(('0.0.0.0',8080)); s.listen(); break\n\
        \x20except OSError:\n\
        \x20\x20s.close()\n\
        \x20\x20if time.time()>end: sys.exit(1)\n\
        \x20\x20time.sleep(0.002)\n\
        print('bound',flush=True)\n\
        time.sleep(300)\n";
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/proc/{pause}/ns/net"))
        .args(["python3", "-c", squat])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("nsenter python3")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let _squatter = PortSquatter(child);
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = bound_tx.send(line);
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while bound_rx.try_recv().is_err() {
        ensure!(Instant::now() < deadline, "the port was never taken");
        let pids = testbed::node::host::pod_processes(&uid);
        for pid in pids {
            if testbed::node::host::cmdline_of(pid).starts_with("/usr/local/bin/graceful-app") {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let why = eventually(Duration::from_secs(60), "the pod crash-looping", || async {
        let pod = pods.get(&name).await?;
        let status = pod.status.unwrap_or_default();
        let restarts: i32 = status
            .container_statuses
            .iter()
            .flatten()
            .map(|c| c.restart_count)
            .sum();
        let waiting = status
            .container_statuses
            .iter()
            .flatten()
            .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone());
        Ok(waiting.filter(|w| w == "CrashLoopBackOff" && restarts >= 2))
    })
    .await?;
    eprintln!("{name}: {why}");

    walk_past(&s.client, &s.ns, load, "crash-looping", &name).await
}
