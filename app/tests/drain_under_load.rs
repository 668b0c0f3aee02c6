//! Proof 1: under constant keep-alive load, preStop then SIGTERM loses no request.

mod common;

use common::drain_under_load;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prestop_then_sigterm_under_load_loses_no_request() -> anyhow::Result<()> {
    let run = drain_under_load(&[]).await?;
    let report = &run.report;
    let failed_before = report.failures_started_before(run.sigterm_at);
    let in_flight = report.in_flight_at(run.sigterm_at);
    eprintln!(
        "{report}\nin flight at SIGTERM: {in_flight}\nerrors by kind: {:?}",
        report.errors_by_kind()
    );
    assert!(
        run.readyz_turned_503,
        "/readyz never said 503 after /prestop"
    );
    assert_eq!(run.prestop_status, Some(200), "/prestop did not answer 200");
    assert!(report.count() > 1_000, "too little load to prove anything");
    assert!(
        in_flight > 0,
        "SIGTERM hit no request in flight, so the test proves nothing"
    );
    assert!(
        failed_before.is_empty(),
        "requests started before SIGTERM failed: {:?}\nlog:\n{}",
        failed_before.iter().take(5).collect::<Vec<_>>(),
        run.log
    );
    assert_eq!(report.errors(), 0, "errors: {:?}", report.errors_by_kind());
    assert_eq!(
        run.exit.code(),
        Some(0),
        "exit status {:?}\nlog:\n{}",
        run.exit,
        run.log
    );
    Ok(())
}
