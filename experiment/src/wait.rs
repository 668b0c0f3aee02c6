//! Polling with a deadline, for conditions the API shows only in status.

use std::future::Future;
use std::time::Duration;

use anyhow::bail;

/// Polls `check` every 250 ms until it returns true; errors from `check` are retried (the API
/// server may be busy) and the last one is reported on timeout.
pub async fn until<F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_error = Some(e),
        }
        if tokio::time::Instant::now() >= deadline {
            match last_error {
                Some(e) => bail!("timed out after {timeout:?}; last error: {e:#}"),
                None => bail!("timed out after {timeout:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
