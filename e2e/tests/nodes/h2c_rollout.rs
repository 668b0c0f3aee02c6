//! h2c (the transport of gRPC) on real nodes: long-lived HTTP/2 connections through kube-proxy
//! lose no call through a rolling update and a stepped scale-down of the bundled app, whose
//! drain sends GOAWAY at preStop and lets open streams finish. The twin has no GOAWAY and no
//! drain: `Sleep` mode (preStop only sleeps) and an app that exits at once on SIGTERM.
//! loadgen sends a stream that a GOAWAY refused once more, as gRPC clients do (see its crate
//! docs).

use anyhow::Result;
use graceful_operator::crd::ShutdownMode;

use super::NODES;
use super::sidecar_mode::{NAIVE_APP, rollout_and_walk};

const H2C: loadgen::ConnectionMode = loadgen::ConnectionMode::Http2;

#[tokio::test]
async fn h2c_calls_survive_a_rollout_and_a_walk_with_goaway() -> Result<()> {
    testbed::skip_without_cluster!();
    let _turn = NODES.lock().await;
    let report = rollout_and_walk("h2c", ShutdownMode::Admin, &[], H2C).await?;
    eprintln!("h2c, Admin mode, rollout of 4 + walk 4 -> 1: {report}");
    super::assert_lossless(&report);
    Ok(())
}

/// The twin: no GOAWAY, immediate exit.
#[tokio::test]
async fn h2c_calls_are_lost_without_goaway() -> Result<()> {
    testbed::skip_without_cluster!();
    let _turn = NODES.lock().await;
    let report = rollout_and_walk("h2c-naive", ShutdownMode::Sleep, &NAIVE_APP, H2C).await?;
    eprintln!("h2c, Sleep mode, app exits at once, rollout of 4 + walk 4 -> 1: {report}");
    assert!(report.errors() > 0, "no call lost without GOAWAY: {report}");
    Ok(())
}
