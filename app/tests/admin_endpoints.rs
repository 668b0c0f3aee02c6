//! The admin listener's contract, seen from outside: readiness, liveness, metrics, preStop by
//! POST, and the main listener's routing.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{App, connect, get, read_response, send_get};

#[test]
fn admin_and_main_endpoints_answer_as_documented() -> anyhow::Result<()> {
    let app = App::start(&["--drain-delay-ms", "100", "--max-work-ms", "50"])?;
    assert_eq!(get(app.admin, "/readyz")?.status, 200);
    assert_eq!(get(app.admin, "/livez")?.status, 200);
    assert_eq!(get(app.admin, "/nope")?.status, 404);

    let hello = get(app.main, "/")?;
    assert_eq!(hello.status, 200);
    assert!(String::from_utf8_lossy(&hello.body).starts_with("hello from "));
    assert_eq!(get(app.main, "/?work_ms=abc")?.status, 400);
    assert_eq!(get(app.main, "/other")?.status, 404);
    // The cap bounds the work: a request for 60 s returns (the test would time out otherwise).
    assert_eq!(get(app.main, "/?work_ms=60000")?.status, 200);

    // One kept-alive main connection shows up in the metrics.
    let mut kept = connect(app.main)?;
    send_get(&mut kept, "/", false)?;
    assert_eq!(read_response(&mut kept)?.status, 200);
    let metrics = String::from_utf8(get(app.admin, "/metrics")?.body)?;
    for needle in [
        "graceful_requests_total 5",
        "graceful_requests_in_flight 0",
        "graceful_open_connections{listener=\"main\"} 1",
        "graceful_draining 0",
        "graceful_ready 1",
    ] {
        assert!(metrics.contains(needle), "{needle} missing in:\n{metrics}");
    }

    // preStop by POST flips readiness and the draining metric.
    let mut post = connect(app.admin)?;
    write!(
        post,
        "POST /prestop HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    post.set_read_timeout(Some(Duration::from_secs(10)))?;
    assert_eq!(read_response(&mut post)?.status, 200);
    assert_eq!(get(app.admin, "/readyz")?.status, 503);
    let metrics = String::from_utf8(get(app.admin, "/metrics")?.body)?;
    assert!(metrics.contains("graceful_draining 1"), "{metrics}");
    assert!(metrics.contains("graceful_ready 0"), "{metrics}");
    Ok(())
}
