//! Two operator replicas with leader election.
//!
//! 1. The leader SIGKILLed mid-scale-down. The standby takes the lease once it expires (15 s
//!    lease) and finishes the walk without a skipped or repeated step. The failover time (kill ->
//!    standby holds the lease) and the gap until the next step are measured and printed; only a
//!    generous bound is asserted.
//! 2. The leader cut off from the API server mid-scale-down (its traffic goes through a relay
//!    that stops forwarding). It must stop on its own before the standby can take the lease, and
//!    the API server's audit log must show no write of it after the standby's first. The relay
//!    is healed after the takeover, so writes an old leader still held would reach the API
//!    server and the log.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

use super::common::{API_RESTART, quick_spec, rounds, scale, setup};
use super::recording::{check_walk, record};
use super::support::{Operator, create_gsvc, eventually, restricted_kubeconfig, wait_stable};

#[allow(dead_code)]
#[path = "../audit/mod.rs"]
mod audit;
#[path = "relay.rs"]
mod relay;

const FROM: i32 = 10;
/// Lease duration 15 s plus the standby's retry and a loaded machine.
const FAILOVER_BOUND: Duration = Duration::from_secs(45);

/// The last `lines` lines of a log file (empty if it cannot be read).
fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

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
    testbed::skip_without_cluster!();
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

/// The API server's address, from the testbed's kubeconfig.
fn apiserver_addr(tb: &testbed::Testbed) -> Result<std::net::SocketAddr> {
    let config = kube::config::Kubeconfig::read_from(tb.kubeconfig())?;
    let server = config
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .context("no server in the testbed kubeconfig")?;
    let hostport = server.trim_start_matches("https://").trim_end_matches('/');
    Ok(hostport.parse()?)
}

/// A copy of the kubeconfig at `path` that reaches the API server at `addr`.
fn through(path: &std::path::Path, addr: std::net::SocketAddr) -> Result<std::path::PathBuf> {
    let mut config = kube::config::Kubeconfig::read_from(path)?;
    for cluster in config
        .clusters
        .iter_mut()
        .filter_map(|c| c.cluster.as_mut())
    {
        cluster.server = Some(format!("https://{addr}"));
    }
    let out = path.with_extension("relayed");
    std::fs::write(&out, serde_json::to_vec_pretty(&config)?)?;
    Ok(out)
}

#[tokio::test]
async fn leader_cut_off_from_the_api_stops_before_the_standby_takes_over() -> Result<()> {
    testbed::skip_without_cluster!();
    let _shared = API_RESTART.read().await;
    let s = setup("fault-leader-cut").await?;
    // Two users bound to operator/rbac.yaml only, so the audit log tells the two processes apart.
    let leader_user = format!("e2e-leader-{}", s.ns);
    let standby_user = format!("e2e-standby-{}", s.ns);
    let relay = relay::Relay::start(apiserver_addr(s.tb)?).await?;
    let leader_config = through(
        &restricted_kubeconfig(s.tb, &s.client, &leader_user).await?,
        relay.addr,
    )?;
    let standby_config = restricted_kubeconfig(s.tb, &s.client, &standby_user).await?;
    let args = ["--leader-election", "on", "--lease-namespace", &s.ns];
    let leases: Api<Lease> = Api::namespaced(s.client.clone(), &s.ns);
    let mut leader = Operator::start_as(s.tb, &s.ns, &args, &leader_config)?;
    eventually(Duration::from_secs(30), "first operator leads", || async {
        Ok(holder(&leases).await?.filter(|h| holds(h, &leader)))
    })
    .await?;
    let standby = Operator::start_as(s.tb, &s.ns, &args, &standby_config)?;
    create_gsvc(&s.client, &s.ns, "web", quick_spec(FROM)).await?;
    wait_stable(&s.client, &s.ns, "web", FROM).await?;

    let log = s.tb.run_dir().join(testbed::controlplane::AUDIT_LOG);
    let mark = audit::mark(&log);
    let (rec, tasks) = record(&s.client, &s.ns, "web").await?;
    scale(&s.client, &s.ns, "web", 1).await?;
    eventually(Duration::from_secs(60), "replicas down to 7", || async {
        let at = rec.lock().unwrap().replicas.last().map(|r| r.1);
        Ok(at.filter(|r| *r <= 7))
    })
    .await?;
    let cut_at = rec.lock().unwrap().replicas.last().map(|r| r.1);
    let cut = Instant::now();
    relay.cut();
    let mut leader_gone = None;
    let takeover = loop {
        if leader_gone.is_none() && leader.has_exited()? {
            leader_gone = Some(cut.elapsed());
        }
        if holder(&leases).await?.is_some_and(|h| holds(&h, &standby)) {
            break cut.elapsed();
        }
        if cut.elapsed() > FAILOVER_BOUND {
            bail!("standby not leading {FAILOVER_BOUND:?} after the cut");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Whatever the old leader still holds now reaches the API server.
    relay.heal();
    if let Err(error) = wait_stable(&s.client, &s.ns, "web", 1).await {
        // Once in CI (2026-12-06) the walk did not end within 180 s after the takeover; what
        // the two operators logged is what tells why.
        let walk: Vec<i32> = rec.lock().unwrap().replicas.iter().map(|r| r.1).collect();
        eprintln!(
            "walk so far {walk:?}\n--- standby log (last 60 lines):\n{}\n--- cut-off leader log (last 20 lines):\n{}",
            tail(&standby.log, 60),
            tail(&leader.log, 20)
        );
        return Err(error);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    tasks.iter().for_each(|t| t.abort());
    if leader_gone.is_none() && leader.has_exited()? {
        leader_gone = Some(cut.elapsed());
    }
    let rec = rec.lock().unwrap().clone();
    let writes: Vec<audit::Write> = audit::read_since(&log, mark)?
        .into_iter()
        .filter(|w| w.writer == leader_user || w.writer == standby_user)
        .collect();
    let runs = audit::one_writer_at_a_time(&writes);
    let leader_log = std::fs::read_to_string(&leader.log)?;
    eprintln!(
        "leader cut off at replicas {cut_at:?}: it exited {leader_gone:?} after the cut, the standby leads after {:.1} s; walk {:?}; audit runs {runs:?}",
        takeover.as_secs_f64(),
        rec.replicas.iter().map(|r| r.1).collect::<Vec<_>>()
    );
    if let Ok(runs) = &runs
        && runs.len() == 2
    {
        eprintln!(
            "audit: the leader's last write was answered {:.3} s before the standby's first write arrived",
            (runs[1].first_received - runs[0].last_completed) as f64 / 1e6
        );
    }
    let gone = leader_gone.context("the cut-off leader was still running at the end")?;
    ensure!(
        gone < takeover,
        "the cut-off leader exited {gone:?} after the cut, not before the standby took over ({takeover:?})"
    );
    ensure!(
        leader_log.contains("leadership lost"),
        "the leader exited without saying it lost the lease"
    );
    let runs = runs?;
    ensure!(
        runs.len() == 2 && runs[0].writer == leader_user && runs[1].writer == standby_user,
        "expected the leader's writes, then the standby's: {runs:?}"
    );
    check_walk(&rec, FROM, 1)?;
    drop(leader);
    drop(standby);
    Ok(())
}
