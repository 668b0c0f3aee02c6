//! The bundled app's main listener: `GET /` answers a small body after an artificial work time.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};

use crate::config::AppConfig;
use crate::context::{AppContext, HttpResponse};

/// The app's own work: how long a request takes, and what it answers.
pub struct AppWork {
    pub default_work: Duration,
    pub max_work: Duration,
    /// Body of `GET /`, computed once.
    pub hello_body: Bytes,
}

impl AppWork {
    pub fn new(config: &AppConfig) -> Self {
        // HOSTNAME is the pod name in Kubernetes: it tells a client which replica answered.
        let instance = std::env::var("HOSTNAME").unwrap_or_else(|_| "graceful-app".to_owned());
        Self {
            default_work: config.default_work(),
            max_work: config.max_work(),
            hello_body: Bytes::from(format!("hello from {instance}\n")),
        }
    }
}

/// Handles one request on the main listener.
pub async fn main_handler<B>(
    ctx: &AppContext,
    work: &AppWork,
    request: Request<B>,
) -> Result<HttpResponse, Infallible> {
    let _in_flight = ctx.metrics.request_started();
    if request.uri().path() != "/" {
        return Ok(ctx.respond(StatusCode::NOT_FOUND, "not found\n"));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(ctx.respond(StatusCode::METHOD_NOT_ALLOWED, "use GET\n"));
    }
    let query = request.uri().query();
    let (delay, cpu) = match (
        requested_work(query, work.default_work, work.max_work),
        requested_cpu(query, work.max_work),
    ) {
        (Ok(delay), Ok(cpu)) => (delay, cpu),
        (Err(message), _) | (_, Err(message)) => {
            return Ok(ctx.respond(StatusCode::BAD_REQUEST, message));
        }
    };
    if !cpu.is_zero() {
        // On a blocking thread: the async workers keep serving the other connections.
        let _ = tokio::task::spawn_blocking(move || burn(cpu)).await;
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    // The drain state is read after the work, so a request that started before the drain
    // still tells its client to reconnect elsewhere.
    Ok(ctx.respond(StatusCode::OK, work.hello_body.clone()))
}
/// The work time a request asks for: `work_ms=N` from the query (capped at `cap`), or the
/// default when absent.
pub fn requested_work(
    query: Option<&str>,
    default: Duration,
    cap: Duration,
) -> Result<Duration, String> {
    Ok(millis_param(query, "work_ms", cap)?.unwrap_or(default))
}

/// The CPU time a request asks to burn before its work time: `cpu_ms=N` (capped at `cap`), 0
/// when absent. It makes the app's CPU use follow its load, as a HorizontalPodAutoscaler on CPU
/// expects of a real service.
pub fn requested_cpu(query: Option<&str>, cap: Duration) -> Result<Duration, String> {
    Ok(millis_param(query, "cpu_ms", cap)?.unwrap_or(Duration::ZERO))
}

/// The value of `name=N` milliseconds in `query`, capped at `cap`; None when absent.
fn millis_param(
    query: Option<&str>,
    name: &str,
    cap: Duration,
) -> Result<Option<Duration>, String> {
    for pair in query.unwrap_or_default().split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == name {
            let millis: u64 = value.parse().map_err(|_| {
                format!("{name} must be a whole number of milliseconds, got {value:?}\n")
            })?;
            return Ok(Some(Duration::from_millis(millis).min(cap)));
        }
    }
    Ok(None)
}

/// Keeps one core busy for `time` (wall clock, which equals CPU time unless the core is shared).
fn burn(time: Duration) {
    let started = std::time::Instant::now();
    let mut x: u64 = 1;
    while started.elapsed() < time {
        for _ in 0..1_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: Duration = Duration::from_millis(7);
    const CAP: Duration = Duration::from_millis(1_000);

    #[test]
    fn absent_query_uses_the_default() {
        assert_eq!(requested_work(None, DEFAULT, CAP), Ok(DEFAULT));
        assert_eq!(requested_work(Some("a=b"), DEFAULT, CAP), Ok(DEFAULT));
    }

    #[test]
    fn query_value_is_used_and_capped() {
        assert_eq!(
            requested_work(Some("work_ms=100"), DEFAULT, CAP),
            Ok(Duration::from_millis(100))
        );
        assert_eq!(
            requested_work(Some("x=1&work_ms=0"), DEFAULT, CAP),
            Ok(Duration::ZERO)
        );
        assert_eq!(
            requested_work(Some("work_ms=999999"), DEFAULT, CAP),
            Ok(CAP)
        );
    }

    #[test]
    fn cpu_time_is_read_and_capped_and_absent_means_none() {
        assert_eq!(requested_cpu(None, CAP), Ok(Duration::ZERO));
        assert_eq!(
            requested_cpu(Some("work_ms=5&cpu_ms=20"), CAP),
            Ok(Duration::from_millis(20))
        );
        assert_eq!(requested_cpu(Some("cpu_ms=999999"), CAP), Ok(CAP));
        assert!(requested_cpu(Some("cpu_ms=x"), CAP).is_err());
    }

    #[test]
    fn burning_takes_the_time_asked() {
        let started = std::time::Instant::now();
        burn(Duration::from_millis(5));
        assert!(started.elapsed() >= Duration::from_millis(5));
    }

    #[test]
    fn malformed_value_is_an_error() {
        assert!(requested_work(Some("work_ms=abc"), DEFAULT, CAP).is_err());
        assert!(requested_work(Some("work_ms=-5"), DEFAULT, CAP).is_err());
        assert!(requested_work(Some("work_ms"), DEFAULT, CAP).is_err());
    }
}
