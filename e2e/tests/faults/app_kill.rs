//! An app process SIGKILLed during a scale-down. The kubelet restarts the container (restart
//! policy Always); until the pod is Ready again the Deployment is not whole, and the operator
//! must not take the next step. Checked in the API server's order (resourceVersions): no step
//! between the pod turning unready and it turning Ready again.
//!
//! What no controller can see is a kill its kubelet has not reported yet (it notices on its next
//! relist, every 1 s): a step written in that window is not a fault of the operator's, and is
//! printed, not failed (found when a step began to settle on the old pod's containers stopping
//! rather than on its removal, which left the kubelet less time). At least one kill per run
//! must have held the next step until the pod was Ready again, so the waiting is still shown.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use super::common::Watched;
use super::common::{API_RESTART, quick_spec, rounds, scale, setup, watch};
use super::recording::{Recording, check_walk, record};
use super::support::{Operator, create_gsvc, eventually, wait_stable};

const FROM: i32 = 8;
/// Kill an app process right after the Deployment reached each of these steps.
const KILL_AT: [i32; 3] = [7, 5, 3];

struct Kill {
    pod: String,
    at: Instant,
    /// Index of the next replicas change in the recording at the moment of the kill.
    next_step: usize,
}

/// The pid of the pod's running app process on its node: the process in the pod's cgroup that
/// runs the image's entrypoint.
async fn app_pid(pods: &Api<Pod>, pod: &str) -> Result<i32> {
    let uid = pods
        .get(pod)
        .await?
        .metadata
        .uid
        .context("pod without uid")?;
    testbed::node::host::pod_processes(&uid)
        .into_iter()
        .find(|pid| {
            testbed::node::host::cmdline_of(*pid).starts_with("/usr/local/bin/graceful-app")
        })
        .with_context(|| format!("no app process of {pod}"))
}

/// Once a step's pod is terminating, picks a Ready pod that is not and SIGKILLs its app process.
async fn kill_one(pods: &Api<Pod>) -> Result<(String, Instant)> {
    let selector = ListParams::default().labels("graceful.dev/service=web");
    let victim = eventually(
        Duration::from_secs(30),
        "a step's pod terminating",
        || async {
            let list = pods.list(&selector).await?;
            let terminating = list
                .items
                .iter()
                .any(|p| p.metadata.deletion_timestamp.is_some());
            let ready = list.items.iter().find(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            });
            Ok(ready
                .filter(|_| terminating)
                .and_then(|p| p.metadata.name.clone()))
        },
    )
    .await?;
    let pid = app_pid(pods, &victim).await?;
    let at = Instant::now();
    let mut kill = std::process::Command::new("kill");
    kill.args(["-KILL", &pid.to_string()]);
    super::support::run(kill)?;
    Ok((victim, at))
}

#[tokio::test]
async fn app_sigkilled_mid_scale_down_step_waits_until_whole() -> Result<()> {
    testbed::skip_without_cluster!();
    let _shared = API_RESTART.read().await;
    let s = setup("fault-appkill").await?;
    let operator = Operator::start(s.tb, &s.ns)?;
    create_gsvc(&s.client, &s.ns, "web", quick_spec(FROM)).await?;
    wait_stable(&s.client, &s.ns, "web", FROM).await?;
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let mut held = 0;
    for round in 1..=rounds() {
        let (rec, rec_tasks) = record(&s.client, &s.ns, "web").await?;
        let (seen, seen_tasks) = watch(&s.client, &s.ns, "web");
        scale(&s.client, &s.ns, "web", 1).await?;
        let mut kills = Vec::new();
        for target in KILL_AT {
            eventually(Duration::from_secs(60), "the step", || async {
                let at = rec.lock().unwrap().replicas.last().map(|r| r.1);
                Ok(at.filter(|r| *r == target))
            })
            .await?;
            let next_step = rec.lock().unwrap().replicas.len();
            let (pod, at) = kill_one(&pods).await?;
            kills.push(Kill { pod, at, next_step });
        }
        wait_stable(&s.client, &s.ns, "web", 1).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        rec_tasks.iter().chain(&seen_tasks).for_each(|t| t.abort());
        let rec = rec.lock().unwrap().clone();
        check_walk(&rec, FROM, 1)?;
        held += check_kills(round, &rec, &seen.lock().unwrap(), &kills)?;
        if round < rounds() {
            scale(&s.client, &s.ns, "web", FROM).await?;
            wait_stable(&s.client, &s.ns, "web", FROM).await?;
        }
    }
    ensure!(
        held > 0,
        "no kill held the next step: the test showed no waiting"
    );
    drop(operator);
    Ok(())
}

/// For each kill: the pod turned unready, then Ready again after a restart, and the next step
/// came after that, or before the kubelet reported the kill (in resourceVersion order; the step
/// may then remove the killed pod itself). Returns how many kills held the next step.
fn check_kills(round: usize, rec: &Recording, seen: &Watched, kills: &[Kill]) -> Result<usize> {
    let mut held = 0;
    for kill in kills {
        let after: Vec<_> = seen
            .pods
            .iter()
            .filter(|p| p.name == kill.pod && p.at >= kill.at)
            .collect();
        let unready = after
            .iter()
            .find(|p| !p.ready)
            .with_context(|| format!("{} never turned unready", kill.pod))?;
        let &(step_rev, step_value) = rec
            .replicas
            .get(kill.next_step)
            .context("no step after the kill")?;
        let whole = after.iter().find(|p| p.ready && p.restarts >= 1);
        let removed = rec.terminating.iter().find(|(_, pod)| *pod == kill.pod);
        // A step written before the kubelet reported the kill may take the killed pod itself:
        // the ReplicaSet controller deletes unready pods first. It never comes back then.
        if let (None, Some((removed_rev, _))) = (whole, removed) {
            ensure!(
                step_rev < unready.rev,
                "round {round}: step (rev {step_rev}) taken while {} was reported down (unready rev {})",
                kill.pod,
                unready.rev
            );
            eprintln!(
                "round {round}: app of {} SIGKILLed; the step (rev {step_rev}) came before the kubelet reported it unready (rev {}), and the pod was the one removed (rev {removed_rev})",
                kill.pod, unready.rev
            );
            continue;
        }
        let whole =
            whole.with_context(|| format!("{} never Ready again after a restart", kill.pod))?;
        let step_at = seen
            .replicas
            .iter()
            .find(|r| r.2 == step_value)
            .map_or(kill.at, |r| r.1);
        eprintln!(
            "round {round}: app of {} SIGKILLed; Ready again (restart {}) after {:.2} s, next step after {:.2} s",
            kill.pod,
            whole.restarts,
            whole.at.duration_since(kill.at).as_secs_f64(),
            step_at.saturating_duration_since(kill.at).as_secs_f64()
        );
        ensure!(
            unready.rev < whole.rev,
            "round {round}: {} Ready again (rev {}) before it turned unready (rev {})",
            kill.pod,
            whole.rev,
            unready.rev
        );
        ensure!(
            step_rev < unready.rev || step_rev > whole.rev,
            "round {round}: step (rev {step_rev}) taken while {} was reported down (unready rev {}, Ready again rev {})",
            kill.pod,
            unready.rev,
            whole.rev
        );
        if step_rev < unready.rev {
            eprintln!(
                "round {round}: the step (rev {step_rev}) came before the kubelet reported {} unready (rev {}): nothing to see yet",
                kill.pod, unready.rev
            );
        } else {
            held += 1;
        }
    }
    Ok(held)
}
