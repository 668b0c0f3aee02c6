//! A TCP relay between one operator process and the API server that a test can cut and heal.
//!
//! While cut, the relay keeps every connection open but forwards nothing: bytes already sent stay
//! in the relay, new connections are accepted and then hang. That is a network partition as a
//! node sees it (requests time out; nothing is refused at once), the hardest case for a leader
//! to notice. Healing forwards whatever was held, so a process that kept writing during the cut
//! has its writes delivered then, where the API server's audit log shows them.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// A running relay; stops, closing every connection, when dropped.
pub struct Relay {
    /// Where clients connect (127.0.0.1, a SAN of the API server's certificate).
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Relays 127.0.0.1:<free port> to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, open) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                connections.spawn(relay(inbound, upstream, open.clone()));
            }
        });
        Ok(Self { addr, cut, task })
    }

    /// From now on nothing passes in either direction.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards again, held bytes first.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

/// Returns once the relay is not cut.
async fn wait_open(cut: &mut watch::Receiver<bool>) {
    let _ = cut.wait_for(|cut| !*cut).await;
}

async fn relay(inbound: TcpStream, upstream: SocketAddr, mut cut: watch::Receiver<bool>) {
    wait_open(&mut cut).await;
    let Ok(outbound) = TcpStream::connect(upstream)
        .await
        .with_context(|| format!("relay to {upstream}"))
    else {
        return;
    };
    let (from_client, to_client) = inbound.into_split();
    let (from_server, to_server) = outbound.into_split();
    tokio::join!(
        pump(from_client, to_server, cut.clone()),
        pump(from_server, to_client, cut)
    );
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        wait_open(&mut cut).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
