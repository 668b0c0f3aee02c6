//! Footprint and scale of the operator: a benchmark report, not a timed test (`#[ignore]`; run
//! by `scripts/bench-operator.sh`, which builds in release mode, starts a testbed with KWOK
//! nodes and prints the Markdown report).
//!
//! 1. Many GracefulServices (`BENCH_COUNTS`, default 10,100,1000; one replica each, on KWOK
//!    nodes) created at once, then left alone: operator RSS and CPU, reconcile latency p50/p99
//!    from its `graceful_operator_reconcile_duration_seconds`, reconciles when nothing changes.
//! 2. One GracefulService walked down to 1 on KWOK nodes (`BENCH_WALKS`, default
//!    `10:1,100:1,1000:1,1000:10%`, replicas:stepSize): steps, time and CPU per step, and API
//!    writes per step counted at the API server: the testbed's audit log records every write
//!    with its user; the operator runs with a kubeconfig impersonating a user of its own (bound
//!    to `operator/rbac.yaml`), so its writes are told apart from the controllers' and KWOK's.
//! 3. Writes per step on the real nodes, with the app and `preferIdlePods` on and off (10 -> 1).

#[allow(dead_code)]
#[path = "operator/support.rs"]
mod support;

#[path = "footprint/measure.rs"]
mod measure;
#[path = "footprint/scale.rs"]
mod scale;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result};
use graceful_operator::GracefulService;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, Patch, PatchParams};
use measure::{Scrape, audit_mark, bucket_delta, quantile, writes_since};
use scale::{HISTOGRAM, ManyFigures, WalkFigures, all_stable};
use support::{
    Operator, create_gsvc, ensure_schedulable, install_crd, quick_spec, restricted_kubeconfig,
};

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

fn p50_p99(buckets: &[(f64, f64)]) -> String {
    format!(
        "{} / {}",
        ms(quantile(buckets, 0.5)),
        ms(quantile(buckets, 0.99))
    )
}

/// The report's table of a walk: writes per step by resource.
fn writes_table(out: &mut String, title: &str, writes: &BTreeMap<String, u64>, steps: u64) {
    let total: u64 = writes
        .iter()
        .filter(|(what, _)| !what.starts_with('('))
        .map(|(_, n)| n)
        .sum();
    let _ = writeln!(
        out,
        "\n**{title}**: {total} writes for {steps} steps ({:.2} per step)\n",
        total as f64 / steps.max(1) as f64
    );
    let _ = writeln!(out, "| verb resource | writes | per step |\n|---|---|---|");
    for (what, n) in writes {
        let _ = writeln!(
            out,
            "| {what} | {n} | {:.2} |",
            *n as f64 / steps.max(1) as f64
        );
    }
}

/// A namespace with its own operator, which runs as user `graceful-operator-<ns>`.
struct Scoped {
    ns: String,
    operator: Operator,
    user: String,
}

impl Scoped {
    fn handle(&self) -> (u32, u16) {
        (self.operator.pid(), self.operator.metrics_port)
    }
}

struct Bench {
    tb: &'static testbed::Testbed,
    client: kube::Client,
}

impl Bench {
    /// A namespace and an operator scoped to it, running as user `graceful-operator-<ns>`;
    /// returns once the operator serves /metrics.
    async fn namespace_with_operator(&self, prefix: &str) -> Result<Scoped> {
        let ns = self.tb.create_namespace(&self.client, prefix).await?;
        let user = format!("graceful-operator-{ns}");
        let kubeconfig = restricted_kubeconfig(self.tb, &self.client, &user).await?;
        let operator = Operator::start_as(self.tb, &ns, &[], &kubeconfig)?;
        support::eventually(Duration::from_secs(30), "operator /metrics", || async {
            Ok(Scrape::take(operator.metrics_port).ok().map(|_| ()))
        })
        .await?;
        // Its RSS once it has listed its (empty) namespace.
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(Scoped { ns, operator, user })
    }

    /// Stops the operator and deletes its namespace, waiting for it to be gone.
    fn finish(&self, scoped: Scoped) -> Result<()> {
        let ns = scoped.ns.clone();
        drop(scoped);
        let mut delete = self.tb.kubectl();
        delete.args(["delete", "namespace", &ns, "--wait=true", "--timeout=600s"]);
        support::run(delete).map(drop)
    }

    fn audit(&self) -> std::path::PathBuf {
        self.tb.run_dir().join(testbed::controlplane::AUDIT_LOG)
    }
}

fn list_env(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `replicas:stepSize`, e.g. `1000:10%`.
fn parse_walk(text: &str) -> Result<(i32, IntOrString)> {
    let (from, step) = text
        .split_once(':')
        .with_context(|| format!("BENCH_WALKS entry {text:?} is not replicas:stepSize"))?;
    let step = match step.parse::<i32>() {
        Ok(pods) => IntOrString::Int(pods),
        Err(_) => IntOrString::String(step.to_string()),
    };
    Ok((from.parse()?, step))
}

fn step_text(step: &IntOrString) -> String {
    match step {
        IntOrString::Int(n) => n.to_string(),
        IntOrString::String(s) => s.clone(),
    }
}

fn many_row(out: &mut String, f: &ManyFigures) {
    let burst = f.settled.metrics.buckets(HISTOGRAM);
    let steady = bucket_delta(&burst, &f.quiet.metrics.buckets(HISTOGRAM));
    let _ = writeln!(
        out,
        "| {} | {:.1} s | {} / {} ({}) / {} | {:.1} s | {:.0} | {} | {:.0} in {} s | {} |",
        f.count,
        f.settle_seconds,
        mib(f.idle.rss_kib),
        mib(f.settled.rss_kib),
        mib(f.settled.peak_kib),
        mib(f.quiet.rss_kib),
        f.settled.cpu_seconds - f.idle.cpu_seconds,
        f.settled.reconciles() - f.idle.reconciles(),
        p50_p99(&burst),
        f.quiet.reconciles() - f.settled.reconciles(),
        f.quiet_window.as_secs(),
        p50_p99(&steady),
    );
}

fn walk_row(out: &mut String, f: &WalkFigures) {
    let steps = f.steps.max(1) as f64;
    let writes: u64 = f.writes.values().sum();
    let _ = writeln!(
        out,
        "| {} | {} | {:.1} s | {} | {:.1} s | {:.2} s | {:.2} | {:.3} s | {} / {} ({}) | {} |",
        f.from,
        step_text(&f.step),
        f.up_seconds,
        f.steps,
        f.seconds,
        f.seconds / steps,
        writes as f64 / steps,
        (f.after.cpu_seconds - f.at_size.cpu_seconds) / steps,
        mib(f.at_size.rss_kib),
        mib(f.after.rss_kib),
        mib(f.after.peak_kib),
        p50_p99(&f.latency()),
    );
}

#[tokio::test]
#[ignore = "benchmark report: scripts/bench-operator.sh"]
async fn operator_footprint_report() -> Result<()> {
    testbed::skip_without_cluster!();
    let tb = testbed::shared()?;
    anyhow::ensure!(
        !tb.info().kwok_nodes.is_empty(),
        "the scale sections need KWOK nodes: run scripts/bench-operator.sh, or set \
         TESTBED_UP_ARGS=\"--nodes 1 --kwok-nodes 4\""
    );
    let client = tb.client().await?;
    install_crd(tb)?;
    ensure_schedulable(tb, &client).await?;
    let bench = Bench {
        tb,
        client: client.clone(),
    };
    let operator_bin = testbed::bin_path("graceful-operator")?;
    let profile = operator_bin
        .parent()
        .and_then(|d| d.file_name())
        .map_or_else(|| "?".into(), |n| n.to_string_lossy().into_owned());
    let mut report = String::from("# Operator footprint\n");
    let _ = writeln!(
        report,
        "\nMeasured on the testbed with the {profile} build of graceful-operator ({}), one \
         process per namespace, {} real nodes and {} KWOK nodes, {} cores, {}.",
        operator_bin.display(),
        tb.info().nodes.len(),
        tb.info().kwok_nodes.len(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        String::from_utf8_lossy(
            &std::process::Command::new("date")
                .arg("-u")
                .output()?
                .stdout
        )
        .trim()
    );

    // 1. Many GracefulServices.
    let quiet = Duration::from_secs(30);
    let _ = writeln!(
        report,
        "\n## GracefulServices created at once (1 replica each, on KWOK nodes), then left alone\n\n\
         | GracefulServices | created -> all Stable | RSS before / all Stable (peak) / {q} s later | \
         CPU until all Stable | reconciles until all Stable | reconcile p50 / p99 until all Stable | \
         reconciles when nothing changes | their p50 / p99 |\n|---|---|---|---|---|---|---|---|",
        q = quiet.as_secs()
    );
    for count in list_env("BENCH_COUNTS", "10,100,1000") {
        let count: usize = count.parse().context("BENCH_COUNTS")?;
        let scoped = bench.namespace_with_operator("bench-many").await?;
        let figures = scale::many(&client, &scoped.ns, scoped.handle(), count, quiet).await?;
        many_row(&mut report, &figures);
        eprintln!("{report}");
        bench.finish(scoped)?;
    }

    // 2. Walks on KWOK nodes.
    let _ = writeln!(
        report,
        "\n## One GracefulService walked down to 1 on KWOK nodes (pods go at once: the step's cost \
         is ours and the control plane's)\n\n| replicas | stepSize | created -> Ready | steps | walk | \
         per step | operator writes per step | operator CPU per step | RSS at size / after (peak) | \
         reconcile p50 / p99 |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    let mut details = String::new();
    for walk in list_env("BENCH_WALKS", "10:1,100:1,1000:1,1000:10%") {
        let (from, step) = parse_walk(&walk)?;
        let scoped = bench.namespace_with_operator("bench-walk").await?;
        let f = scale::walk(
            &client,
            &scoped.ns,
            scoped.handle(),
            &scoped.user,
            &bench.audit(),
            (from, step),
        )
        .await?;
        walk_row(&mut report, &f);
        writes_table(
            &mut details,
            &format!("{} -> 1, stepSize {}", f.from, step_text(&f.step)),
            &f.writes,
            f.steps,
        );
        eprintln!("{report}{details}");
        bench.finish(scoped)?;
    }
    report.push_str(&details);

    // 3. Writes per scale-down step on the real nodes, with the app.
    let _ = writeln!(
        report,
        "\n## API writes per scale-down step on the real nodes (10 -> 1, step 1), counted in the API server's audit log\n"
    );
    for prefer_idle in [true, false] {
        let scoped = bench.namespace_with_operator("bench-real").await?;
        let (steps, seconds, writes) = real_walk(&bench, &scoped, prefer_idle).await?;
        let per_step = seconds / steps as f64;
        let drain = f64::from(quick_spec(1).shutdown.drain_delay_seconds);
        writes_table(
            &mut report,
            &format!(
                "preferIdlePods: {prefer_idle}, walk {seconds:.1} s: {per_step:.2} s per step, \
                 the drain delay ({drain:.0} s) + {:.0} ms",
                (per_step - drain) * 1000.0
            ),
            &writes,
            steps,
        );
        eprintln!("{report}");
        bench.finish(scoped)?;
    }
    println!("\n{report}");
    Ok(())
}

/// Walks a service of 10 replicas on the real nodes to 1; returns (steps, seconds, writes).
async fn real_walk(
    bench: &Bench,
    scoped: &Scoped,
    prefer_idle: bool,
) -> Result<(u64, f64, BTreeMap<String, u64>)> {
    let Scoped { ns, operator, user } = scoped;
    let api: Api<GracefulService> = Api::namespaced(bench.client.clone(), ns);
    let mut spec = quick_spec(10);
    spec.scale_down.prefer_idle_pods = prefer_idle;
    create_gsvc(&bench.client, ns, "walk", spec).await?;
    all_stable(&api, Duration::from_secs(300)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let audit = bench.audit();
    let mark = audit_mark(&audit);
    let before = Scrape::take(operator.metrics_port)?;
    let started = std::time::Instant::now();
    let patch = serde_json::json!({"spec": {"replicas": 1}});
    api.patch("walk", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    all_stable(&api, Duration::from_secs(300)).await?;
    let seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = Scrape::take(operator.metrics_port)?;
    let steps = (after.value("graceful_operator_scale_down_steps_total")
        - before.value("graceful_operator_scale_down_steps_total")) as u64;
    anyhow::ensure!(steps == 9, "{steps} steps, expected 9");
    Ok((steps, seconds, writes_since(&audit, mark, user)?))
}
