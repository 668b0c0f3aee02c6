//! Proof 1: under constant keep-alive load, preStop then SIGTERM loses no request, and every
//! request started before SIGTERM completes.

mod common;

use common::drain_under_load;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prestop_then_sigterm_under_load_loses_no_request() -> anyhow::Result<()> {
    let run = drain_under_load(&[]).await?;
    assert!(
        run.readyz_turned_503,
        "/readyz never said 503 after /prestop"
    );
    assert_eq!(run.prestop_status, 200, "/prestop did not answer 200");
    for (name, report) in run.reports() {
        let failed_before = report.failures_started_before(run.sigterm_at);
        eprintln!(
            "{name} requests:\n{report}\nin flight at SIGTERM: {}\n",
            report.in_flight_at(run.sigterm_at)
        );
        assert!(
            failed_before.is_empty(),
            "{name}: requests started before SIGTERM failed: {:?}\nfirst ones (kind, new connection, start and end relative to SIGTERM in ms): {:?}\nlog:\n{}",
            report.errors_by_kind(),
            failed_before
                .iter()
                .take(10)
                .map(|r| (
                    r.error,
                    r.new_connection,
                    -(run.sigterm_at.duration_since(r.start).as_secs_f64() * 1e3),
                    r.end()
                        .saturating_duration_since(run.sigterm_at)
                        .as_secs_f64()
                        * 1e3
                ))
                .collect::<Vec<_>>(),
            run.log
        );
        assert_eq!(report.errors(), 0, "{name}: {:?}", report.errors_by_kind());
    }
    assert!(
        run.short.count() > 1_000,
        "too little load to prove anything"
    );
    assert!(
        run.long.in_flight_at(run.sigterm_at) > 0,
        "SIGTERM hit no request in flight, so the test proves nothing"
    );
    assert_eq!(
        run.exit.code(),
        Some(0),
        "exit status {:?}\nlog:\n{}",
        run.exit,
        run.log
    );
    Ok(())
}
