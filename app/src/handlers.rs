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
    let delay = match requested_work(request.uri().query(), work.default_work, work.max_work) {
        Ok(delay) => delay,
        Err(message) => return Ok(ctx.respond(StatusCode::BAD_REQUEST, message)),
    };
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
    let Some(query) = query else {
        return Ok(default);
    };
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "work_ms" {
            let millis: u64 = value.parse().map_err(|_| {
                format!("work_ms must be a whole number of milliseconds, got {value:?}\n")
            })?;
            return Ok(Duration::from_millis(millis).min(cap));
        }
    }
    Ok(default)
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
    fn malformed_value_is_an_error() {
        assert!(requested_work(Some("work_ms=abc"), DEFAULT, CAP).is_err());
        assert!(requested_work(Some("work_ms=-5"), DEFAULT, CAP).is_err());
        assert!(requested_work(Some("work_ms"), DEFAULT, CAP).is_err());
    }
}
