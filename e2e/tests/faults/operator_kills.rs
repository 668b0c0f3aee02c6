//! The operator SIGKILLed at random moments during a 20 -> 1 scale-down, at least ten times per
//! walk, restarted after each kill: every step still happens once, in order, each after the
//! previous step's pod is gone, and the walk ends at 1.

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use graceful_operator::GracefulService;
use graceful_operator::crd::Phase;
use kube::api::Api;

use super::common::{API_RESTART, Rng, quick_spec, rounds, scale, setup};
use super::recording::{check_walk, record};
use super::support::{Operator, create_gsvc, wait_stable};

const FROM: i32 = 20;
const MIN_KILLS: usize = 10;

/// Whether the GracefulService settled at `replicas`.
pub async fn stable_at(api: &Api<GracefulService>, name: &str, replicas: i32) -> Result<bool> {
    let g = api.get(name).await?;
    Ok(g.status.is_some_and(|s| {
        s.phase == Phase::Stable && s.ready_replicas == replicas && s.step_target == Some(replicas)
    }))
}

#[tokio::test]
async fn operator_sigkilled_at_random_moments_during_twenty_to_one() -> Result<()> {
    testbed::skip_without_cluster!();
    let _shared = API_RESTART.read().await;
    let s = setup("fault-opkill").await?;
    let mut rng = Rng::from_env_or_clock("operator kills");
    let mut operator = Operator::start(s.tb, &s.ns)?;
    create_gsvc(&s.client, &s.ns, "web", quick_spec(FROM)).await?;
    wait_stable(&s.client, &s.ns, "web", FROM).await?;
    let gsvcs: Api<GracefulService> = Api::namespaced(s.client.clone(), &s.ns);
    for round in 1..=rounds() {
        let (rec, tasks) = record(&s.client, &s.ns, "web").await?;
        scale(&s.client, &s.ns, "web", 1).await?;
        let started = Instant::now();
        let mut kills = Vec::new();
        loop {
            tokio::time::sleep(rng.millis(200, 1500)).await;
            if stable_at(&gsvcs, "web", 1).await? {
                break;
            }
            operator.kill();
            kills.push(rec.lock().unwrap().replicas.last().map_or(FROM, |r| r.1));
            // Sometimes no operator runs for a while; the cluster must stay where it was left.
            tokio::time::sleep(rng.millis(0, 800)).await;
            operator = Operator::start(s.tb, &s.ns)?;
            if started.elapsed() > Duration::from_secs(240) {
                bail!(
                    "round {round}: no end after 240 s and {} kills",
                    kills.len()
                );
            }
        }
        wait_stable(&s.client, &s.ns, "web", 1).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        tasks.iter().for_each(|t| t.abort());
        let rec = rec.lock().unwrap().clone();
        let sequence: Vec<i32> = rec.replicas.iter().map(|r| r.1).collect();
        eprintln!(
            "round {round}: {} SIGKILLs (at steps {kills:?}), walk {sequence:?} in {:.1} s",
            kills.len(),
            started.elapsed().as_secs_f64()
        );
        check_walk(&rec, FROM, 1)?;
        ensure!(
            kills.len() >= MIN_KILLS,
            "round {round}: the walk ended after only {} kills",
            kills.len()
        );
        if round < rounds() {
            scale(&s.client, &s.ns, "web", FROM).await?;
            wait_stable(&s.client, &s.ns, "web", FROM).await?;
        }
    }
    Ok(())
}
