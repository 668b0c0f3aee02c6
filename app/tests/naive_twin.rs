//! Proof 2: the same scenario against the app with draining turned off does lose requests, so
//! the zero-error test (drain_under_load.rs) is able to fail.

mod common;

use common::drain_under_load;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_exit_under_the_same_load_loses_requests() -> anyhow::Result<()> {
    let run = drain_under_load(&["--shutdown-mode", "immediate"]).await?;
    for (name, report) in run.reports() {
        eprintln!("{name} requests:\n{report}\n");
    }
    assert!(run.readyz_turned_503);
    assert!(
        run.long.in_flight_at(run.sigterm_at) > 0,
        "SIGTERM hit no request in flight"
    );
    assert!(
        !run.long.failures_started_before(run.sigterm_at).is_empty(),
        "the naive twin lost nothing: the scenario cannot tell graceful from naive"
    );
    Ok(())
}
