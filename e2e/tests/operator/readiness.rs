//! /readyz answers ready only once the controller's caches synced: an operator whose lists are
//! forbidden stays unready, says why at warn level and counts the watch errors; the same binary
//! with the documented RBAC becomes ready (the twin that shows the probe can pass).

use std::time::Duration;

use anyhow::Result;

use super::setup;
use super::support::*;

fn readyz(operator: &Operator) -> Result<String> {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://127.0.0.1:{}/readyz", operator.health_port),
        ])
        .output()?;
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test]
async fn an_operator_that_cannot_list_is_not_ready_and_says_why() -> Result<()> {
    testbed::skip_without_cluster!();
    let s = setup("op-ready").await?;
    // A user bound to nothing: every list is forbidden.
    let user = format!("nobody-{}", s.ns);
    let mut config = kube::config::Kubeconfig::read_from(s.tb.kubeconfig())?;
    for auth in &mut config.auth_infos {
        if let Some(info) = auth.auth_info.as_mut() {
            info.impersonate = Some(user.clone());
        }
    }
    let path = s.tb.run_dir().join(format!("kubeconfig-{user}"));
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    let forbidden = Operator::start_as(s.tb, &s.ns, &[], &path)?;
    eventually(Duration::from_secs(20), "a counted watch error", || async {
        let errors = forbidden
            .metric("graceful_operator_watch_errors_total")
            .await
            .unwrap_or(0.0);
        Ok((errors > 0.0).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(readyz(&forbidden)?, "503", "ready without a synced cache");
    let log = std::fs::read_to_string(&forbidden.log)?;
    let warned = log
        .lines()
        .any(|l| l.contains("WARN") && l.contains("watch failed") && l.contains("forbidden"));
    assert!(warned, "no warning about the forbidden watch:\n{log}");

    let user = format!("graceful-operator-{}", s.ns);
    let allowed = restricted_kubeconfig(s.tb, &s.client, &user).await?;
    let operator = Operator::start_as(s.tb, &s.ns, &[], &allowed)?;
    eventually(Duration::from_secs(30), "ready with the RBAC", || async {
        Ok((readyz(&operator)? == "200").then_some(()))
    })
    .await
    .map_err(|e| e.context(operator.log_tail(40)))
}
