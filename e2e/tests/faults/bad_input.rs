//! Bad input with the operator running: the 24 specs the API server refuses
//! (`operator/invalid.rs`) plus 8 that pass the schema and that only the operator can refuse
//! (reserved or duplicate env, malformed images, node ports the API server will not allocate).
//! Each of the 8 must end `Degraded` with reason `InvalidSpec`; the operator must stay up, and its
//! reconcile count (`graceful_operator_reconciles_total` from its /metrics) must stay bounded.

use std::time::Duration;

use anyhow::{Result, ensure};
use graceful_operator::crd::{Phase, ServiceType};
use graceful_operator::{GracefulService, GracefulServiceSpec};
use k8s_openapi::api::core::v1::EnvVar;
use kube::api::Api;

use super::common::{API_RESTART, alive, quick_spec, setup};
use super::invalid;
use super::support::{Operator, create_gsvc, eventually, wait_stable};

fn env(pairs: &[(&str, &str)]) -> Vec<EnvVar> {
    pairs
        .iter()
        .map(|(name, value)| EnvVar {
            name: name.to_string(),
            value: Some(value.to_string()),
            value_from: None,
        })
        .collect()
}

/// (name, spec, text the Degraded message must contain)
fn status_cases(
    free_port: i32,
    outside_port: i32,
) -> Vec<(&'static str, GracefulServiceSpec, String)> {
    let with = |change: &dyn Fn(&mut GracefulServiceSpec)| {
        let mut spec = quick_spec(1);
        change(&mut spec);
        spec
    };
    vec![
        (
            "reserved-port-env",
            with(&|s| s.env = env(&[("GRACEFUL_PORT", "1")])),
            "GRACEFUL_PORT".into(),
        ),
        (
            "reserved-timeout-env",
            with(&|s| s.env = env(&[("GRACEFUL_SHUTDOWN_TIMEOUT_MS", "0")])),
            "GRACEFUL_SHUTDOWN_TIMEOUT_MS".into(),
        ),
        (
            "duplicate-env",
            with(&|s| s.env = env(&[("FOO", "1"), ("FOO", "2")])),
            "FOO".into(),
        ),
        (
            "image-whitespace",
            with(&|s| s.image = "ghcr.io/graceful-dev/graceful-app :1".into()),
            "whitespace".into(),
        ),
        (
            "image-uppercase",
            with(&|s| s.image = "ghcr.io/Graceful/App:1".into()),
            "lowercase".into(),
        ),
        (
            "image-no-repository",
            with(&|s| s.image = ":1.0".into()),
            "repository".into(),
        ),
        (
            "node-port-outside-range",
            with(&|s| {
                s.service.type_ = ServiceType::NodePort;
                s.service.node_port = Some(outside_port);
            }),
            outside_port.to_string(),
        ),
        (
            "node-port-taken",
            with(&|s| {
                s.service.type_ = ServiceType::NodePort;
                s.service.node_port = Some(free_port);
            }),
            "allocated".into(),
        ),
    ]
}

/// The message of the `Degraded=True, reason InvalidSpec` condition, once phase is Degraded.
async fn invalid_spec_message(api: &Api<GracefulService>, name: &str) -> Result<Option<String>> {
    let g = api.get(name).await?;
    Ok(g.status.and_then(|st| {
        (st.phase == Phase::Degraded).then_some(())?;
        st.conditions
            .into_iter()
            .find(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == "InvalidSpec")
            .map(|c| c.message)
    }))
}

#[tokio::test]
async fn invalid_specs_neither_crash_nor_hot_loop_the_operator() -> Result<()> {
    testbed::skip_without_cluster!();
    let _shared = API_RESTART.read().await;
    let s = setup("fault-badinput").await?;
    let operator = Operator::start(s.tb, &s.ns)?;
    let api: Api<GracefulService> = Api::namespaced(s.client.clone(), &s.ns);

    // 24 refused by the API server (and 5 valid neighbours created, which the operator runs).
    invalid::refused_by_schema(&s.client, &s.ns).await?;

    // A node port of this testbed's block held by a valid service, and one outside the block.
    let (first, last) = s.tb.info().node_ports;
    let taken = i32::from(first) + 1;
    let outside = if first > 30000 {
        i32::from(first) - 1
    } else {
        i32::from(last) + 1
    };
    let mut owner = quick_spec(1);
    owner.service.type_ = ServiceType::NodePort;
    owner.service.node_port = Some(taken);
    create_gsvc(&s.client, &s.ns, "port-owner", owner).await?;
    wait_stable(&s.client, &s.ns, "port-owner", 1).await?;

    let cases = status_cases(taken, outside);
    for (name, spec, _) in &cases {
        create_gsvc(&s.client, &s.ns, name, spec.clone()).await?;
    }
    let mut failures = Vec::new();
    for (name, _, expected) in &cases {
        let message = eventually(
            Duration::from_secs(60),
            &format!("{name} InvalidSpec"),
            || invalid_spec_message(&api, name),
        )
        .await?;
        if !message.contains(expected.as_str()) {
            failures.push(format!("{name}: message {message:?} lacks {expected:?}"));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!(
        "invalid specs: {} refused by the API server, {} reported in status as InvalidSpec",
        24,
        cases.len()
    );

    // Let the valid ones settle (Stable, or Degraded if their node port is outside the block).
    let objects = api.list(&Default::default()).await?.items.len();
    eventually(Duration::from_secs(120), "every object settled", || async {
        let list = api.list(&Default::default()).await?;
        Ok(list
            .items
            .iter()
            .all(|g| {
                g.status
                    .as_ref()
                    .is_some_and(|s| matches!(s.phase, Phase::Stable | Phase::Degraded))
            })
            .then_some(()))
    })
    .await?;

    // No hot loop: over 15 s, at most two reconciles per object (the watches of pods and
    // EndpointSlices may still deliver a late status change); a hot loop makes thousands.
    let total_before = operator
        .metric("graceful_operator_reconciles_total")
        .await?;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let total_after = operator
        .metric("graceful_operator_reconciles_total")
        .await?;
    let in_window = total_after - total_before;
    eprintln!(
        "reconciles: {total_after} in all for {objects} objects, {in_window} in the last 15 s"
    );
    ensure!(
        in_window <= 2.0 * objects as f64,
        "{in_window} reconciles in 15 s for {objects} objects"
    );
    ensure!(
        total_after <= 40.0 * objects as f64,
        "{total_after} reconciles in all for {objects} objects"
    );
    ensure!(alive(operator.pid()), "operator exited");
    ensure!(
        operator
            .metric("graceful_operator_invalid_specs_total")
            .await?
            >= cases.len() as f64
    );
    Ok(())
}
