//! The results: a Markdown table like the post's, and the raw numbers as JSON.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use crate::load::{LoadResult, Summary};
use crate::timeline::Event;

/// One scenario run with one setup, everything the table, the plot and the JSON need.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub scenario: String,
    pub setup: String,
    pub replicas_before: i32,
    pub replicas_after: i32,
    pub work_ms: u64,
    pub clients: usize,
    /// Requests started after the warm-up: the table's figures.
    pub summary: Summary,
    /// Every request, warm-up included.
    pub whole_run: Summary,
    pub warmup_ms: f64,
    /// The clients' start was spread over this long.
    pub ramp_ms: f64,
    /// Milliseconds from the change until the rollout (or scale-down) was complete.
    pub change_to_complete_ms: Option<f64>,
    pub events: Vec<Event>,
    #[serde(skip)]
    pub load: LoadResult,
}

/// The Markdown table: one row per scenario x setup.
pub fn markdown_table(runs: &[RunReport]) -> String {
    let mut out = String::new();
    out.push_str(
        "| scenario | setup | replicas | handler | clients | requests | average | min | max | std dev | p99 | errors | change took |\n",
    );
    out.push_str("|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in runs {
        let s = &r.summary;
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
        let _ = writeln!(
            out,
            "| {} | {} | {} -> {} | {} ms | {} | {} | {} | {} | {} | {} | {} | {} ({:.3} %) | {} |",
            r.scenario,
            r.setup,
            r.replicas_before,
            r.replicas_after,
            r.work_ms,
            r.clients,
            s.requests,
            ms(s.average_ms),
            ms(s.min_ms),
            ms(s.max_ms),
            ms(s.std_dev_ms),
            ms(s.p99_ms),
            s.errors,
            s.error_percent(),
            r.change_to_complete_ms
                .map_or("-".to_string(), |v| format!("{:.1} s", v / 1000.0)),
        );
    }
    out.push_str("\nWhole run, warm-up included:\n\n");
    out.push_str("| scenario | setup | warm-up | requests | average | max | p99 | errors |\n");
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|\n");
    for r in runs {
        let s = &r.whole_run;
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} s | {} | {} | {} | {} | {} |",
            r.scenario,
            r.setup,
            r.warmup_ms / 1000.0,
            s.requests,
            ms(s.average_ms),
            ms(s.max_ms),
            ms(s.p99_ms),
            s.errors,
        );
    }
    let ramp_ms = runs.first().map_or(0.0, |r| r.ramp_ms);
    let _ = writeln!(
        out,
        "\nThe first table counts requests started after the warm-up; requests counts every \
         request sent; latency figures are over the successful ones; an error is any request that \
         got no complete 2xx response (refused, reset, closed early, non-2xx, timeout). The \
         clients started spread over {ramp_ms:.0} ms, each first request timed from its client's \
         start (its connect included).",
    );
    out
}

/// Writes `results.md`, `results.json` (summaries and events) and one `samples-<scenario>-<setup>.json`
/// per run (every request: start, latency, error) into `dir`.
pub fn write_all(dir: &Path, command: &str, runs: &[RunReport]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let table = markdown_table(runs);
    let md = format!("# Rollout experiment\n\nCommand: `{command}`\n\n{table}");
    std::fs::write(dir.join("results.md"), md)?;
    let json = serde_json::json!({ "command": command, "runs": runs });
    std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(&json)?)?;
    for r in runs {
        let path = dir.join(format!("samples-{}-{}.json", r.scenario, r.setup));
        std::fs::write(&path, serde_json::to_vec(&r.load.samples)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
