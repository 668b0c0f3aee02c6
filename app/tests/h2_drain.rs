//! HTTP/2 over cleartext: long-lived h2c connections under load through preStop then SIGTERM
//! lose no call, because the drain sends GOAWAY and lets open streams finish; the naive twin
//! (immediate exit on SIGTERM) loses the calls in flight.
//!
//! Streams that a GOAWAY refused (above its last stream id) are sent again by loadgen, as gRPC
//! clients do (see loadgen's crate docs); the app's own count of answered requests shows that
//! none of them ran twice.

mod common;

use common::drain_under_load_with;
use loadgen::ConnectionMode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_calls_survive_the_drain_with_goaway() -> anyhow::Result<()> {
    let run = drain_under_load_with(ConnectionMode::Http2, &[]).await?;
    assert!(run.readyz_turned_503);
    for (name, report) in run.reports() {
        eprintln!("{name} h2c calls:\n{report}\n");
        assert_eq!(
            report.errors(),
            0,
            "{name}: {:?}\n{}",
            report.errors_by_kind(),
            run.log
        );
    }
    assert!(
        run.short.count() > 1_000,
        "too little load to prove anything"
    );
    assert!(
        run.long.in_flight_at(run.sigterm_at) > 0,
        "SIGTERM hit no call in flight, so the test proves nothing"
    );
    // 200 clients open 200 connections; any more were opened after a GOAWAY.
    let connections = run
        .short
        .records
        .iter()
        .filter(|r| r.new_connection)
        .count();
    assert!(
        connections > 200,
        "no client saw GOAWAY ({connections} connections)"
    );
    assert_eq!(run.exit.code(), Some(0), "{}", run.log);
    assert_eq!(
        run.answered_by_app(),
        Some(run.answered_to_clients()),
        "the app answered a call twice, or one no client got\n{}",
        run.log
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_calls_are_lost_without_goaway_and_drain() -> anyhow::Result<()> {
    let run =
        drain_under_load_with(ConnectionMode::Http2, &["--shutdown-mode", "immediate"]).await?;
    for (name, report) in run.reports() {
        eprintln!("{name} h2c calls:\n{report}\n");
    }
    assert!(
        !run.long.failures_started_before(run.sigterm_at).is_empty(),
        "the naive twin lost no call: the scenario cannot tell graceful from naive"
    );
    Ok(())
}
