//! Two operator replicas with leader election; the leader SIGKILLed mid-scale-down. The standby
//! takes the lease once it expires (15 s lease) and finishes the walk without a skipped or
//! repeated step. The failover time (kill -> standby holds the lease) and the gap until the next
//! step are measured and printed; only a generous bound is asserted.

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

use super::common::{API_RESTART, quick_spec, rounds, scale, setup};
use super::recording::{check_walk, record};
use super::support::{Operator, create_gsvc, eventually, wait_stable};

const FROM: i32 = 10;
/// Lease duration 15 s plus the standby's retry and a loaded machine.
const FAILOVER_BOUND: Duration = Duration::from_secs(45);

async fn holder(leases: &Api<Lease>) -> Result<Option<String>> {
    Ok(leases
        .get_opt("graceful-operator")
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty()))
}

fn holds(holder: &str, operator: &Operator) -> bool {
    holder.ends_with(&format!("-{}", operator.pid()))
}

#[tokio::test]
async fn leader_sigkilled_mid_scale_down_standby_takes_over() -> Result<()> {
    let _shared = API_RESTART.read().await;
    let s = setup("fault-leader").await?;
    let args = ["--leader-election", "on", "--lease-namespace", &s.ns];
    let leases: Api<Lease> = Api::namespaced(s.client.clone(), &s.ns);
    let mut leader = Operator::start_with(s.tb, &s.ns, &args)?;
    eventually(Duration::from_secs(30), "first operator leads", || async {
        Ok(holder(&leases).await?.filter(|h| holds(h, &leader)))
    })
    .await?;
    let mut standby = Operator::start_with(s.tb, &s.ns, &args)?;
    create_gsvc(&s.client, &s.ns, "web", quick_spec(FROM)).await?;
    wait_stable(&s.client, &s.ns, "web", FROM).await?;
    let mut failovers = Vec::new();
    for round in 1..=rounds() {
        let (rec, tasks) = record(&s.client, &s.ns, "web").await?;
        scale(&s.client, &s.ns, "web", 1).await?;
        eventually(Duration::from_secs(60), "replicas down to 7", || async {
            let at = rec.lock().unwrap().replicas.last().map(|r| r.1);
            Ok(at.filter(|r| *r <= 7))
        })
        .await?;
        let at_kill = rec.lock().unwrap().replicas.len();
        let killed = Instant::now();
        leader.kill();
        let takeover = loop {
            if holder(&leases).await?.is_some_and(|h| holds(&h, &standby)) {
                break killed.elapsed();
            }
            if killed.elapsed() > FAILOVER_BOUND {
                bail!("round {round}: standby not leading {FAILOVER_BOUND:?} after the kill");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let next_step = loop {
            if rec.lock().unwrap().replicas.len() > at_kill {
                break killed.elapsed();
            }
            if killed.elapsed() > FAILOVER_BOUND + Duration::from_secs(30) {
                bail!("round {round}: no step after the failover");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        wait_stable(&s.client, &s.ns, "web", 1).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        tasks.iter().for_each(|t| t.abort());
        let rec = rec.lock().unwrap().clone();
        let sequence: Vec<i32> = rec.replicas.iter().map(|r| r.1).collect();
        eprintln!(
            "failover round {round}: leader SIGKILLed at {:?}; standby leads after {:.1} s, next step after {:.1} s; walk {sequence:?}",
            sequence.get(at_kill - 1),
            takeover.as_secs_f64(),
            next_step.as_secs_f64()
        );
        check_walk(&rec, FROM, 1)?;
        failovers.push(takeover.as_secs_f64());
        // The survivor leads; a new standby joins for the next round.
        leader = standby;
        standby = Operator::start_with(s.tb, &s.ns, &args)?;
        if round < rounds() {
            scale(&s.client, &s.ns, "web", FROM).await?;
            wait_stable(&s.client, &s.ns, "web", FROM).await?;
        }
    }
    eprintln!("leader failover times (s): {failovers:?}");
    ensure!(!failovers.is_empty());
    Ok(())
}
