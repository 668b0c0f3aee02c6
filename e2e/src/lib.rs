//! Helpers shared by the end-to-end tests in `tests/`; the tests themselves live there.

use std::future::Future;
use std::time::Duration;

use anyhow::{Result, bail};

/// Polls `check` every 250 ms until it yields a value or `limit` passes; the error names `what`
/// and the last error `check` returned, so a timed-out test says what it was waiting for.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what} (last error: {last_error:?})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
