//! The drain proxy keeps the product's contract: bad flags exit 2 with a message; it is ready
//! only while the app behind it accepts connections; it forwards the app's answers; the preStop
//! token guards it as it guards graceful-app; an app that fails gets a 502, counted.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{App, PROXY_BIN, eventually, get};

#[test]
fn bad_flags_exit_2_with_a_message() -> anyhow::Result<()> {
    let cases: &[&[&str]] = &[
        &[],
        &["--upstream", "not-an-address"],
        &["--upstream", "0.0.0.0:8080"],
        &["--upstream", "127.0.0.1:8080", "--max-request-ms", "0"],
        &["--upstream", "127.0.0.1:8080", "--upstream-protocol", "h3"],
        &["--upstream", "127.0.0.1:8080", "--prestop-token", ""],
    ];
    for args in cases {
        let output = Command::new(PROXY_BIN)
            .args(*args)
            .env_remove("GRACEFUL_PROXY_UPSTREAM")
            .stdin(Stdio::null())
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("error"), "{args:?}: no message: {stderr}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_with_the_app_and_guarded_by_the_token() -> anyhow::Result<()> {
    let mut app = App::start(&["--shutdown-mode", "immediate"])?;
    let proxy = App::start_proxy(
        app.main,
        &["--prestop-token", "t0ken", "--drain-delay-ms", "200"],
    )?;
    let ready = || get(proxy.admin, "/readyz").is_ok_and(|response| response.status == 200);
    assert!(
        eventually(Duration::from_secs(5), ready).await,
        "never ready"
    );

    let answer = get(proxy.main, "/?work_ms=5")?;
    assert_eq!(answer.status, 200);
    assert!(
        String::from_utf8_lossy(&answer.body).starts_with("hello from"),
        "not the app's answer: {answer:?}"
    );
    assert_eq!(get(proxy.main, "/nowhere")?.status, 404, "the app's 404");

    let refused = get(proxy.admin, "/prestop")?;
    assert_eq!(refused.status, 403, "preStop without the token");
    assert!(ready(), "a refused preStop changed readiness");

    app.signal(nix::sys::signal::Signal::SIGKILL)?;
    app.wait_exit(Duration::from_secs(5)).await?;
    let unready = || get(proxy.admin, "/readyz").is_ok_and(|response| response.status == 503);
    assert!(
        eventually(Duration::from_secs(5), unready).await,
        "still ready with the app gone"
    );
    assert_eq!(get(proxy.main, "/")?.status, 502, "no app, yet not a 502");
    let metrics = String::from_utf8_lossy(&get(proxy.admin, "/metrics")?.body).into_owned();
    assert!(
        metrics.contains("graceful_proxy_upstream_errors_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("graceful_prestop_refused_total 1"),
        "{metrics}"
    );
    Ok(())
}
