//! Footprint and scale of the operator: a benchmark report, not a timed test (`#[ignore]`; run
//! by `scripts/bench-operator.sh`, which prints the Markdown report).
//!
//! 1. 100 GracefulServices (replicas 0 or 1, so the nodes stay light): operator RSS and
//!    reconcile latency p50/p99 from its `graceful_operator_reconcile_duration_seconds`.
//! 2. API writes per scale-down step, counted at the API server: the testbed's audit log records
//!    every write with its user; the operator runs with a kubeconfig impersonating a user of its
//!    own (bound to `operator/rbac.yaml`), so its writes are told apart from the controllers'
//!    and the kubelets'. Walks of 10 -> 1 with `preferIdlePods` on (default) and off.
//! 3. A large service (`BENCH_LARGE_REPLICAS`, default 200) stepped down to 1
//!    (`BENCH_LARGE_STEP`, default 1 replica per step).

#[allow(dead_code)]
#[path = "operator/support.rs"]
mod support;

#[path = "footprint/measure.rs"]
mod measure;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Result;
use graceful_operator::GracefulService;
use graceful_operator::crd::Phase;
use kube::api::{Api, Patch, PatchParams};
use measure::{Scrape, audit_mark, bucket_delta, memory_kib, quantile, writes_since};
use support::{
    Operator, create_gsvc, ensure_schedulable, eventually, install_crd, quick_spec,
    restricted_kubeconfig,
};

const HISTOGRAM: &str = "graceful_operator_reconcile_duration_seconds";

fn env_or(name: &str, default: i32) -> i32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Waits (up to `limit`) until every GracefulService of the namespace is Stable at its replicas.
async fn all_stable(api: &Api<GracefulService>, limit: Duration) -> Result<()> {
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

fn ms(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".into(),
        Some(s) if s.is_infinite() => "> 5 s (beyond the last bucket)".into(),
        Some(s) => format!("{:.1} ms", s * 1000.0),
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The report's row for a walk: writes per step by resource.
fn writes_table(out: &mut String, title: &str, writes: &BTreeMap<String, u64>, steps: u64) {
    let total: u64 = writes
        .iter()
        .filter(|(what, _)| !what.starts_with('('))
        .map(|(_, n)| n)
        .sum();
    let _ = writeln!(
        out,
        "\n**{title}**: {total} writes for {steps} steps ({:.2} per step)\n",
        total as f64 / steps as f64
    );
    let _ = writeln!(out, "| verb resource | writes | per step |\n|---|---|---|");
    for (what, n) in writes {
        let _ = writeln!(out, "| {what} | {n} | {:.2} |", *n as f64 / steps as f64);
    }
}

/// A namespace with its own operator, which runs as user `graceful-operator-<ns>`.
struct Scoped {
    ns: String,
    operator: Operator,
    user: String,
}

struct Bench {
    tb: &'static testbed::Testbed,
    client: kube::Client,
}

impl Bench {
    /// A namespace and an operator scoped to it, running as user `graceful-operator-<ns>`.
    async fn namespace_with_operator(&self, prefix: &str) -> Result<Scoped> {
        let ns = self.tb.create_namespace(&self.client, prefix).await?;
        let user = format!("graceful-operator-{ns}");
        let kubeconfig = restricted_kubeconfig(self.tb, &self.client, &user).await?;
        let operator = Operator::start_as(self.tb, &ns, &[], &kubeconfig)?;
        Ok(Scoped { ns, operator, user })
    }

    /// Walks `name` from its current replicas to 1; returns (steps, seconds, writes by the
    /// operator's user, reconcile histogram delta).
    async fn walk(
        &self,
        scoped: &Scoped,
        name: &str,
        from: i32,
        step: i32,
        limit: Duration,
    ) -> Result<(u64, f64, BTreeMap<String, u64>, Vec<(f64, f64)>)> {
        let Scoped { ns, operator, user } = scoped;
        let audit = self.tb.run_dir().join(testbed::controlplane::AUDIT_LOG);
        let api: Api<GracefulService> = Api::namespaced(self.client.clone(), ns);
        let mark = audit_mark(&audit);
        let before = Scrape::take(operator.metrics_port)?;
        let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
            Api::namespaced(self.client.clone(), ns);
        let generation_before = deployments
            .get(name)
            .await?
            .metadata
            .generation
            .unwrap_or(0);
        let started = Instant::now();
        let patch = serde_json::json!({"spec": {"replicas": 1}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        all_stable(&api, limit).await?;
        let seconds = started.elapsed().as_secs_f64();
        // Writes that trail the last step (status, Event) are part of it.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = Scrape::take(operator.metrics_port)?;
        let steps = (after.value("graceful_operator_scale_down_steps_total")
            - before.value("graceful_operator_scale_down_steps_total")) as u64;
        let expected = ((from - 1) + step - 1) / step;
        anyhow::ensure!(
            steps == expected as u64,
            "{steps} steps, expected {expected}"
        );
        let mut writes = writes_since(&audit, mark, user)?;
        // Server-side apply answers 200 also when nothing changed; the generation counts the
        // applies that changed the Deployment's spec.
        let generation_after = deployments
            .get(name)
            .await?
            .metadata
            .generation
            .unwrap_or(0);
        writes.insert(
            "(of which changed the Deployment spec: generation +N)".into(),
            (generation_after - generation_before) as u64,
        );
        let delta = bucket_delta(&before.buckets(HISTOGRAM), &after.buckets(HISTOGRAM));
        Ok((steps, seconds, writes, delta))
    }
}

#[tokio::test]
#[ignore = "benchmark report: scripts/bench-operator.sh"]
async fn operator_footprint_report() -> Result<()> {
    testbed::skip_without_cluster!();
    let tb = testbed::shared()?;
    let client = tb.client().await?;
    install_crd(tb)?;
    ensure_schedulable(tb, &client).await?;
    let bench = Bench {
        tb,
        client: client.clone(),
    };
    let mut report = String::from("# Operator footprint\n");
    let _ = writeln!(
        report,
        "\nMeasured on the testbed (debug build of graceful-operator, one process per namespace, \
         {} cores), {}.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        String::from_utf8_lossy(
            &std::process::Command::new("date")
                .arg("-u")
                .output()?
                .stdout
        )
        .trim()
    );

    // 1. 100 GracefulServices.
    let scoped = bench.namespace_with_operator("bench-many").await?;
    let ns = scoped.ns.clone();
    let operator = &scoped.operator;
    let api: Api<GracefulService> = Api::namespaced(client.clone(), &ns);
    // The operator's RSS once it serves /metrics and has listed its (empty) namespace.
    eventually(Duration::from_secs(30), "operator /metrics", || async {
        Ok(Scrape::take(operator.metrics_port).ok().map(|_| ()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = memory_kib(operator.pid())?;
    let started = Instant::now();
    for i in 0..100 {
        create_gsvc(&client, &ns, &format!("svc-{i:03}"), quick_spec(i % 2)).await?;
    }
    all_stable(&api, Duration::from_secs(600)).await?;
    let settle = started.elapsed().as_secs_f64();
    let after_create = Scrape::take(operator.metrics_port)?;
    let busy = memory_kib(operator.pid())?;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let quiet = Scrape::take(operator.metrics_port)?;
    let rest = memory_kib(operator.pid())?;
    let buckets = after_create.buckets(HISTOGRAM);
    let _ = writeln!(
        report,
        "\n## 100 GracefulServices (50 with 1 replica, 50 with 0)\n"
    );
    let _ = writeln!(report, "| what | figure |\n|---|---|");
    let _ = writeln!(
        report,
        "| operator RSS before the first object | {} |",
        mib(idle.0)
    );
    let _ = writeln!(
        report,
        "| operator RSS when all 100 were Stable | {} (peak {}) |",
        mib(busy.0),
        mib(busy.1)
    );
    let _ = writeln!(
        report,
        "| operator RSS 30 s later | {} (peak {}) |",
        mib(rest.0),
        mib(rest.1)
    );
    let _ = writeln!(report, "| created -> all Stable | {settle:.1} s |");
    let _ = writeln!(
        report,
        "| reconciles until all Stable | {} |",
        after_create.value("graceful_operator_reconciles_total")
    );
    let _ = writeln!(
        report,
        "| reconciles in the 30 s after | {} |",
        quiet.value("graceful_operator_reconciles_total")
            - after_create.value("graceful_operator_reconciles_total")
    );
    let _ = writeln!(
        report,
        "| reconcile latency p50 / p99, creation burst (all 100 at once) | {} / {} |",
        ms(quantile(&buckets, 0.5)),
        ms(quantile(&buckets, 0.99))
    );
    let steady = bucket_delta(&buckets, &quiet.buckets(HISTOGRAM));
    let _ = writeln!(
        report,
        "| reconcile latency p50 / p99, the 30 s after (all Stable) | {} / {} |",
        ms(quantile(&steady, 0.5)),
        ms(quantile(&steady, 0.99))
    );
    eprintln!("{report}");
    // Free the nodes for what follows.
    drop(scoped);
    let mut delete = tb.kubectl();
    delete.args(["delete", "namespace", &ns, "--wait=true", "--timeout=180s"]);
    support::run(delete)?;

    // 2. Writes per scale-down step.
    let _ = writeln!(
        report,
        "\n## API writes per scale-down step (10 -> 1, step 1), counted in the API server's audit log\n"
    );
    for prefer_idle in [true, false] {
        let scoped = bench.namespace_with_operator("bench-walk").await?;
        let ns = &scoped.ns;
        let api: Api<GracefulService> = Api::namespaced(client.clone(), ns);
        let mut spec = quick_spec(10);
        spec.scale_down.prefer_idle_pods = prefer_idle;
        create_gsvc(&client, ns, "walk", spec).await?;
        all_stable(&api, Duration::from_secs(300)).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (steps, seconds, writes, _) = bench
            .walk(&scoped, "walk", 10, 1, Duration::from_secs(300))
            .await?;
        writes_table(
            &mut report,
            &format!("preferIdlePods: {prefer_idle}, walk {seconds:.1} s"),
            &writes,
            steps,
        );
        drop(scoped);
        eprintln!("{report}");
    }

    // 3. A large service stepped down to 1.
    let replicas = env_or("BENCH_LARGE_REPLICAS", 200);
    let step = env_or("BENCH_LARGE_STEP", 1);
    let scoped = bench.namespace_with_operator("bench-large").await?;
    let (ns, operator) = (&scoped.ns, &scoped.operator);
    let api: Api<GracefulService> = Api::namespaced(client.clone(), ns);
    let mut spec = quick_spec(replicas);
    spec.scale_down.step_size = step;
    let started = Instant::now();
    create_gsvc(&client, ns, "large", spec).await?;
    all_stable(&api, Duration::from_secs(1200)).await?;
    let up = started.elapsed().as_secs_f64();
    let at_size = memory_kib(operator.pid())?;
    let app_kib = app_rss_kib(&client, ns).await;
    let (steps, seconds, writes, delta) = bench
        .walk(&scoped, "large", replicas, step, Duration::from_secs(1800))
        .await?;
    let end = memory_kib(operator.pid())?;
    let _ = writeln!(
        report,
        "\n## One service of {replicas} replicas stepped down to 1 (step {step})\n"
    );
    let _ = writeln!(report, "| what | figure |\n|---|---|");
    let _ = writeln!(
        report,
        "| created -> {replicas} Ready, Stable | {up:.1} s |"
    );
    let _ = writeln!(
        report,
        "| app processes at {replicas}: RSS sum / per pod | {} / {} |",
        mib(app_kib.0),
        mib(app_kib.0 / app_kib.1.max(1))
    );
    let _ = writeln!(
        report,
        "| operator RSS at {replicas} / after the walk (peak) | {} / {} ({}) |",
        mib(at_size.0),
        mib(end.0),
        mib(end.1)
    );
    let _ = writeln!(
        report,
        "| walk {replicas} -> 1 | {steps} steps in {seconds:.1} s ({:.2} s per step) |",
        seconds / steps as f64
    );
    let _ = writeln!(
        report,
        "| reconcile latency during the walk p50 / p99 | {} / {} |",
        ms(quantile(&delta, 0.5)),
        ms(quantile(&delta, 0.99))
    );
    writes_table(
        &mut report,
        "operator writes during the walk",
        &writes,
        steps,
    );
    drop(scoped);
    println!("\n{report}");
    Ok(())
}

/// Sum of VmRSS of the namespace's running app processes (found through each pod's cgroup on
/// its node) and their number.
async fn app_rss_kib(client: &kube::Client, ns: &str) -> (u64, u64) {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
    let Ok(list) = pods.list(&Default::default()).await else {
        return (0, 0);
    };
    list.items
        .iter()
        .filter_map(|pod| pod.metadata.uid.as_deref())
        .flat_map(testbed::node::host::pod_processes)
        .filter(|pid| {
            testbed::node::host::cmdline_of(*pid).starts_with("/usr/local/bin/graceful-app")
        })
        .filter_map(|pid| memory_kib(pid as u32).ok())
        .fold((0, 0), |(sum, n), (rss, _)| (sum + rss, n + 1))
}
