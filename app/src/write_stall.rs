//! A bound on how long a write may stay blocked because the peer stopped reading.
//!
//! hyper's header read timeout covers clients that are slow to send; nothing covers a client
//! that sends (or pipelines) requests and never reads the answers. Its socket buffers fill, the
//! server's write waits forever, and the connection pins a slot of the connection limit and
//! turns every graceful drain into a timed-out one (exit 1). This wrapper fails a write that
//! made no progress for the limit, which ends the connection. A slow reader that still makes
//! progress is not affected: every accepted byte restarts the clock.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// An I/O stream whose writes fail after `limit` without progress.
pub struct WriteStallGuard<T> {
    inner: T,
    limit: Duration,
    /// Running while a write (or flush) is blocked; reset by any progress.
    stalled_since: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteStallGuard<T> {
    pub fn new(inner: T, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled_since: None,
        }
    }

    /// Maps a pending write to an error once the stall lasted `limit`.
    fn check<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match poll {
            Poll::Ready(result) => {
                self.stalled_since = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .stalled_since
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "peer stopped reading: write stalled past the write timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteStallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteStallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_write_nobody_reads_fails_after_the_limit() {
        // A 64-byte pipe whose other end never reads.
        let (near, _far) = tokio::io::duplex(64);
        let mut guarded = WriteStallGuard::new(near, Duration::from_millis(50));
        let outcome = tokio::time::timeout(Duration::from_secs(5), guarded.write_all(&[0; 1024]))
            .await
            .expect("the guard did not fire");
        assert_eq!(outcome.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_slow_reader_that_keeps_reading_is_not_cut() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut guarded = WriteStallGuard::new(near, Duration::from_millis(100));
        let reader = tokio::spawn(async move {
            let mut total = 0;
            let mut chunk = [0_u8; 16];
            while total < 1024 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                total += far.read(&mut chunk).await.unwrap();
            }
        });
        // 1 KiB through a 64-byte pipe at 16 bytes per 5 ms: about 320 ms in all, far beyond
        // the 100 ms limit, but never stalled for 100 ms.
        guarded.write_all(&[0; 1024]).await.unwrap();
        reader.await.unwrap();
    }
}
