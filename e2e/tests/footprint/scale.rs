//! The scale sections of the footprint report, on KWOK nodes (`testbed up --kwok-nodes N`):
//! many GracefulServices at once, and one GracefulService walked down from many replicas. KWOK
//! pods run nothing, so these figures are the operator's and the control plane's alone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::{StreamExt, TryStreamExt};
use graceful_operator::GracefulService;
use graceful_operator::GracefulServiceSpec;
use graceful_operator::crd::Phase;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, Patch, PatchParams};

use super::measure::{Scrape, audit_mark, bucket_delta, cpu_seconds, memory_kib, writes_since};
use super::support::{create_gsvc, eventually, quick_spec};

pub const HISTOGRAM: &str = "graceful_operator_reconcile_duration_seconds";

/// A spec whose pods go to the KWOK nodes only. `preferIdlePods` is off: a KWOK pod has no app
/// whose requests in flight could be read (each scrape would wait for its timeout).
pub fn on_kwok(replicas: i32) -> Result<GracefulServiceSpec> {
    let mut spec = quick_spec(replicas);
    spec.scale_down.prefer_idle_pods = false;
    spec.template = Some(serde_json::from_value(serde_json::json!({
        "spec": {
            "nodeSelector": {"type": "kwok"},
            "tolerations": [{"key": testbed::kwok::TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
        }
    }))?);
    Ok(spec)
}

/// Waits (up to `limit`) until every GracefulService of the namespace is Stable at its replicas.
pub async fn all_stable(api: &Api<GracefulService>, limit: Duration) -> Result<()> {
    eventually(limit, "all Stable", || async {
        let list = api.list(&Default::default()).await?;
        Ok(list
            .items
            .iter()
            .all(|g| {
                g.status.as_ref().is_some_and(|s| {
                    s.phase == Phase::Stable
                        && s.ready_replicas == g.spec.replicas
                        && s.step_target == Some(g.spec.replicas)
                })
            })
            .then_some(()))
    })
    .await
}

/// What one operator process cost over a phase of the bench.
pub struct Usage {
    pub rss_kib: u64,
    pub peak_kib: u64,
    pub cpu_seconds: f64,
    pub metrics: Scrape,
}

impl Usage {
    pub fn take(pid: u32, metrics_port: u16) -> Result<Self> {
        let (rss_kib, peak_kib) = memory_kib(pid)?;
        Ok(Self {
            rss_kib,
            peak_kib,
            cpu_seconds: cpu_seconds(pid)?,
            metrics: Scrape::take(metrics_port)?,
        })
    }

    pub fn reconciles(&self) -> f64 {
        self.metrics.value("graceful_operator_reconciles_total")
    }
}

/// Figures of `count` GracefulServices of one replica each, created at once, then left alone.
pub struct ManyFigures {
    pub count: usize,
    pub idle: Usage,
    pub settled: Usage,
    pub quiet: Usage,
    pub settle_seconds: f64,
    pub quiet_window: Duration,
}

/// Creates `count` GracefulServices (16 creates in flight) and waits for all to be Stable, then
/// watches `quiet_window` in which nothing changes.
pub async fn many(
    client: &kube::Client,
    ns: &str,
    operator: (u32, u16),
    count: usize,
    quiet_window: Duration,
) -> Result<ManyFigures> {
    let (pid, port) = operator;
    let api: Api<GracefulService> = Api::namespaced(client.clone(), ns);
    let idle = Usage::take(pid, port)?;
    let started = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| async move {
            create_gsvc(client, ns, &format!("svc-{i:04}"), on_kwok(1)?).await?;
            anyhow::Ok(())
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    all_stable(&api, Duration::from_secs(60 + count as u64)).await?;
    let settle_seconds = started.elapsed().as_secs_f64();
    let settled = Usage::take(pid, port)?;
    tokio::time::sleep(quiet_window).await;
    let quiet = Usage::take(pid, port)?;
    Ok(ManyFigures {
        count,
        idle,
        settled,
        quiet,
        settle_seconds,
        quiet_window,
    })
}

/// Figures of one walk from `from` replicas to 1.
pub struct WalkFigures {
    pub from: i32,
    pub step: IntOrString,
    pub up_seconds: f64,
    pub at_size: Usage,
    pub after: Usage,
    pub steps: u64,
    pub seconds: f64,
    pub writes: BTreeMap<String, u64>,
}

impl WalkFigures {
    /// Reconcile latency buckets observed during the walk.
    pub fn latency(&self) -> Vec<(f64, f64)> {
        bucket_delta(
            &self.at_size.metrics.buckets(HISTOGRAM),
            &self.after.metrics.buckets(HISTOGRAM),
        )
    }
}

/// Creates `name` at `from` replicas on the KWOK nodes, waits for it, walks it to 1 and counts
/// the writes of `user` (the operator's impersonated user) in the audit log.
pub async fn walk(
    client: &kube::Client,
    ns: &str,
    operator: (u32, u16),
    user: &str,
    audit: &std::path::Path,
    (from, step): (i32, IntOrString),
) -> Result<WalkFigures> {
    let (pid, port) = operator;
    let api: Api<GracefulService> = Api::namespaced(client.clone(), ns);
    let name = "walk";
    let mut spec = on_kwok(from)?;
    spec.scale_down.step_size = step.clone();
    let started = Instant::now();
    create_gsvc(client, ns, name, spec).await?;
    all_stable(&api, Duration::from_secs(120 + from as u64)).await?;
    let up_seconds = started.elapsed().as_secs_f64();
    let at_size = Usage::take(pid, port)?;
    let mark = audit_mark(audit);
    let started = Instant::now();
    let patch = serde_json::json!({"spec": {"replicas": 1}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    all_stable(&api, Duration::from_secs(120 + 3 * from as u64)).await?;
    let seconds = started.elapsed().as_secs_f64();
    // Writes that trail the last step (status, Event) are part of it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = Usage::take(pid, port)?;
    let steps = (after
        .metrics
        .value("graceful_operator_scale_down_steps_total")
        - at_size
            .metrics
            .value("graceful_operator_scale_down_steps_total")) as u64;
    let writes = writes_since(audit, mark, user)?;
    Ok(WalkFigures {
        from,
        step,
        up_seconds,
        at_size,
        after,
        steps,
        seconds,
        writes,
    })
}
