//! Bounded HTTP load generator (HTTP/1.1, or h2c) with latency statistics.
//!
//! Test and benchmark tooling (never shipped). [`run`] drives N concurrent workers against one
//! address until a request budget or a deadline is used up, whichever comes first. Every
//! request is recorded: when it started, how long it took, its status or the kind of error. A
//! failed request is an error, never silently retried; a worker only opens a new connection
//! when the server closed the previous one between requests (`Connection: close` or EOF, and
//! for HTTP/2 a GOAWAY).
//!
//! One exception, in [`ConnectionMode::Http2`] only: a request the server provably did not
//! process (hyper never wrote it because the connection had received GOAWAY or closed, the
//! server refused its stream with REFUSED_STREAM, or its stream is above the last stream id of
//! the server's GOAWAY) is sent once more on a new connection and
//! recorded as one request whose latency includes both attempts. Real gRPC and h2 clients
//! retry such requests transparently, since the server never saw them; without it a server
//! that drains with GOAWAY could not be told apart from one that drops calls.
//!
//! Why the h2 mode runs its workers on a single-threaded runtime of its own: hyper 1.12's h2
//! client, after opening a request's stream, checks the connection once more and, if a GOAWAY
//! arrived in between (only possible when another thread runs the connection), fails the
//! request with the GOAWAY's error although the request was sent and the server may be running
//! it. That error is the one h2 gives a stream the GOAWAY refused, which is safe to send again.
//! On one thread the race cannot happen, so that error always means "refused" and is retried;
//! tests/http2.rs counts what the server ran to show that no call runs twice.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let spec = loadgen::LoadSpec::new("127.0.0.1:8080".parse()?, "/?work_ms=100")
//!     .concurrency(50)
//!     .max_requests(10_000)
//!     .duration(std::time::Duration::from_secs(10));
//! let report = loadgen::run(spec, loadgen::Control::new()).await?;
//! println!("{report}");
//! # Ok(()) }
//! ```

mod conn;
mod control;
mod record;
mod report;
mod spec;
mod stats;
mod worker;

pub use control::Control;
pub use record::{ErrorKind, RequestRecord};
pub use report::{Report, TimelineSample};
pub use spec::{ConnectionMode, LoadSpec};
pub use stats::LatencyStats;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use tokio::runtime::RuntimeFlavor;

/// Runs the load described by `spec` and returns every request's record.
///
/// `control` lets the caller stop the run early (see [`Control`]). The run ends when the
/// request budget is used, the deadline passed, or the control said stop; requests already in
/// flight then finish (each bounded by the request timeout), so every started request has a
/// record.
pub async fn run(spec: LoadSpec, control: Control) -> anyhow::Result<Report> {
    spec.validate()?;
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|handle| handle.runtime_flavor() != RuntimeFlavor::CurrentThread);
    if spec.mode == ConnectionMode::Http2 && multi_thread {
        return run_on_own_thread(spec, control).await;
    }
    run_here(spec, control).await
}

/// Runs the load on a current-thread runtime in a thread of its own (see the crate docs).
async fn run_on_own_thread(spec: LoadSpec, control: Control) -> anyhow::Result<Report> {
    let (done, report) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("loadgen-h2".to_owned())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| runtime.block_on(run_here(spec, control)));
            // The caller may have stopped waiting; then nobody needs the report.
            let _ = done.send(result);
        })?;
    report.await?
}

async fn run_here(spec: LoadSpec, control: Control) -> anyhow::Result<Report> {
    let started = Instant::now();
    let deadline = started + spec.duration;
    let budget = Arc::new(AtomicU64::new(0));
    let spec = Arc::new(spec);
    let mut workers = tokio::task::JoinSet::new();
    for id in 0..spec.concurrency {
        let job = worker::Worker {
            id,
            spec: spec.clone(),
            control: control.clone(),
            budget: budget.clone(),
            start: started + spec.start_offset(id),
            deadline,
        };
        workers.spawn(job.run());
    }
    let mut records = Vec::new();
    while let Some(joined) = workers.join_next().await {
        records.extend(joined?);
    }
    records.sort_by_key(|record| record.start);
    Ok(Report::new(started, Instant::now(), records))
}
