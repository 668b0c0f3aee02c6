//! Latency over time as SVG, one panel per setup, with the rollout's events marked.
//!
//! Hand-written SVG keeps the dependency tree small; a full-length run has 100,000+ requests, so
//! the plot draws per-bucket bands (min..max, and the mean) rather than one dot per request, and
//! marks errors per bucket in red along the bottom.

use std::fmt::Write as _;

use crate::load::Sample;
use crate::report::RunReport;
use crate::timeline::EventKind;

const WIDTH: f64 = 1100.0;
const PANEL_HEIGHT: f64 = 300.0;
const MARGIN_LEFT: f64 = 80.0;
const MARGIN_RIGHT: f64 = 30.0;
const MARGIN_TOP: f64 = 50.0;
const MARGIN_BOTTOM: f64 = 50.0;

/// Per time bucket: how many requests started in it, their latencies, and errors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bucket {
    pub ok: u64,
    pub errors: u64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub sum_ms: f64,
}

/// Groups samples by start time into buckets of `width_ms`.
pub fn buckets(samples: &[Sample], width_ms: f64, span_ms: f64) -> Vec<Bucket> {
    let n = ((span_ms / width_ms).ceil() as usize).max(1);
    let mut out = vec![Bucket::default(); n];
    for s in samples {
        let i = ((s.start_ms / width_ms) as usize).min(n - 1);
        let b = &mut out[i];
        if s.error.is_some() {
            b.errors += 1;
            continue;
        }
        if b.ok == 0 {
            b.min_ms = s.latency_ms;
            b.max_ms = s.latency_ms;
        } else {
            b.min_ms = b.min_ms.min(s.latency_ms);
            b.max_ms = b.max_ms.max(s.latency_ms);
        }
        b.ok += 1;
        b.sum_ms += s.latency_ms;
    }
    out
}

/// A round axis maximum at or above `v`.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    for step in [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0] {
        if step * magnitude >= v {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One SVG for one scenario: a panel per run (graceful above naive), same time axis.
pub fn scenario_svg(title: &str, runs: &[&RunReport]) -> String {
    let span_ms = runs
        .iter()
        .flat_map(|r| {
            let last_sample = r
                .load
                .samples
                .iter()
                .map(|s| s.start_ms + s.latency_ms)
                .fold(0.0, f64::max);
            let last_event = r.events.iter().map(|e| e.at_ms).fold(0.0, f64::max);
            [last_sample, last_event]
        })
        .fold(1000.0, f64::max);
    // About 400 buckets across the plot, at least 50 ms each.
    let bucket_ms = (span_ms / 400.0).max(50.0);
    let height = MARGIN_TOP + runs.len() as f64 * (PANEL_HEIGHT + MARGIN_BOTTOM) + 20.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" font-size="16" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    for (i, run) in runs.iter().enumerate() {
        let top = MARGIN_TOP + i as f64 * (PANEL_HEIGHT + MARGIN_BOTTOM);
        panel(&mut svg, run, top, span_ms, bucket_ms);
    }
    svg.push_str("</svg>\n");
    svg
}

fn panel(svg: &mut String, run: &RunReport, top: f64, span_ms: f64, bucket_ms: f64) {
    let plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let bottom = top + PANEL_HEIGHT;
    let bs = buckets(&run.load.samples, bucket_ms, span_ms);
    let y_max = nice_ceiling(bs.iter().map(|b| b.max_ms).fold(0.0, f64::max) * 1.05);
    let x = |ms: f64| MARGIN_LEFT + ms / span_ms * plot_w;
    let y = |ms: f64| bottom - ms / y_max * PANEL_HEIGHT;
    let s = &run.summary;
    let _ = writeln!(
        svg,
        r#"<text x="{MARGIN_LEFT}" y="{}" font-size="13" font-weight="bold">{}: {} requests, {} errors, max {:.0} ms (after warm-up)</text>"#,
        top - 6.0,
        escape(&run.setup),
        s.requests,
        s.errors,
        s.max_ms.unwrap_or(0.0)
    );
    // Axes and grid.
    let _ = writeln!(
        svg,
        r##"<rect x="{MARGIN_LEFT}" y="{top}" width="{plot_w}" height="{PANEL_HEIGHT}" fill="none" stroke="#444"/>"##
    );
    for k in 0..=4 {
        let v = y_max * k as f64 / 4.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{MARGIN_LEFT}" x2="{}" y1="{yy}" y2="{yy}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{v:.0} ms</text>"##,
            MARGIN_LEFT + plot_w,
            MARGIN_LEFT - 6.0,
            y(v) + 4.0,
            yy = y(v),
        );
    }
    let step_s = nice_ceiling(span_ms / 1000.0 / 10.0);
    let mut t = 0.0;
    while t * 1000.0 <= span_ms {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{t:.0} s</text>"#,
            x(t * 1000.0),
            bottom + 16.0
        );
        t += step_s;
    }
    // Latency band (min..max) and mean.
    let w = (bucket_ms / span_ms * plot_w).max(1.0);
    let mut mean_path = String::new();
    for (i, b) in bs.iter().enumerate() {
        let x0 = x(i as f64 * bucket_ms);
        if b.ok > 0 {
            let _ = write!(
                svg,
                r##"<rect x="{x0:.1}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="#9ecae1"/>"##,
                y(b.max_ms),
                (y(b.min_ms) - y(b.max_ms)).max(1.0)
            );
            let mean = b.sum_ms / b.ok as f64;
            let cmd = if mean_path.is_empty() { 'M' } else { 'L' };
            let _ = write!(mean_path, "{cmd}{:.1},{:.1} ", x0 + w / 2.0, y(mean));
        }
        if b.errors > 0 {
            let _ = write!(
                svg,
                r##"<rect x="{x0:.1}" y="{:.1}" width="{w:.1}" height="10" fill="#d62728"><title>{} errors</title></rect>"##,
                bottom - 10.0,
                b.errors
            );
        }
    }
    svg.push('\n');
    if !mean_path.is_empty() {
        let _ = writeln!(
            svg,
            r##"<path d="{mean_path}" fill="none" stroke="#08519c" stroke-width="1.2"/>"##
        );
    }
    // Events; labels are staggered over three rows so neighbours stay readable.
    let mut labelled = 0usize;
    for e in &run.events {
        let (color, dash, label) = match &e.kind {
            EventKind::ChangeApplied { what } => ("#ff7f0e", "", Some(what.clone())),
            EventKind::RolloutComplete => ("#2ca02c", "", Some("complete".to_string())),
            EventKind::WarmupEnded => ("#17becf", "6,2", Some("warm-up end".to_string())),
            EventKind::PodDeletionStarted { .. } => ("#777", "3,3", None),
            EventKind::DeploymentReplicas { replicas } => {
                ("#9467bd", "1,3", Some(format!("{replicas}")))
            }
            _ => continue,
        };
        let xe = x(e.at_ms);
        let _ = writeln!(
            svg,
            r#"<line x1="{xe:.1}" x2="{xe:.1}" y1="{top}" y2="{bottom}" stroke="{color}" stroke-dasharray="{dash}"/>"#
        );
        if let Some(label) = label {
            let row = (labelled % 3) as f64;
            labelled += 1;
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{}" fill="{color}" font-size="10">{}</text>"#,
                xe + 2.0,
                top + 12.0 + row * 11.0,
                escape(&label)
            );
        }
    }
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" font-size="10" text-anchor="end" fill="#555">band: min..max per {bucket_ms:.0} ms, line: mean, red: errors, cyan: warm-up end, orange: change, grey: pod deletion, purple: Deployment replicas, green: complete</text>"##,
        MARGIN_LEFT + plot_w,
        bottom + 32.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(start_ms: f64, latency_ms: f64, error: bool) -> Sample {
        Sample {
            start_ms,
            latency_ms,
            error: error.then(|| "refused".to_string()),
            new_connection: false,
        }
    }

    #[test]
    fn buckets_split_by_start_time_and_count_errors_apart() {
        let s = [
            sample(10.0, 100.0, false),
            sample(90.0, 300.0, false),
            sample(120.0, 5.0, true),
            sample(150.0, 200.0, false),
        ];
        let b = buckets(&s, 100.0, 200.0);
        assert_eq!(b.len(), 2);
        assert_eq!(
            (b[0].ok, b[0].errors, b[0].min_ms, b[0].max_ms),
            (2, 0, 100.0, 300.0)
        );
        assert_eq!((b[1].ok, b[1].errors, b[1].min_ms), (1, 1, 200.0));
    }

    #[test]
    fn nice_ceiling_rounds_up() {
        assert_eq!(nice_ceiling(1040.0), 1200.0);
        assert_eq!(nice_ceiling(7.0), 8.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
    }
}
