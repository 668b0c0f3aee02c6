//! Node-port listeners: each accepted TCP connection goes to one endpoint, chosen once, and stays
//! there until either side closes it (copy_bidirectional); no endpoint means an immediate reset.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::table::{Table, choose};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Closes a client connection with RST, like a refused connection.
fn reset(client: TcpStream) {
    if let Err(e) = client.set_zero_linger() {
        tracing::debug!(error = %e, "cannot set zero linger");
    }
    drop(client);
}

async fn relay(
    table: Arc<RwLock<Table>>,
    node_port: u16,
    turn: usize,
    mut client: TcpStream,
    peer: SocketAddr,
) {
    let backend = {
        let table = table.read().unwrap_or_else(|p| p.into_inner());
        choose(&table.backends(node_port), turn)
    };
    let Some(backend) = backend else {
        tracing::debug!(node_port, %peer, "no endpoint: reset");
        reset(client);
        return;
    };
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(node_port, %backend, error = %e, "endpoint refused: reset");
            reset(client);
            return;
        }
        Err(_) => {
            tracing::debug!(node_port, %backend, "endpoint connect timed out: reset");
            reset(client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let mut upstream = upstream;
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(node_port, %backend, error = %e, "connection ended with error");
    }
}

/// Accepts on `<ip>:<node_port>` until the task is aborted.
pub async fn serve(ip: IpAddr, node_port: u16, table: Arc<RwLock<Table>>) {
    // Another testbed's proxy on this machine may hold the port: keep trying, loudly.
    let listener = loop {
        match TcpListener::bind((ip, node_port)).await {
            Ok(l) => break l,
            Err(e) => {
                tracing::error!(node_port, error = %e, "cannot listen on node port; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    tracing::info!(%ip, node_port, "node port open");
    let turns = AtomicUsize::new(0);
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                let turn = turns.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(relay(table.clone(), node_port, turn, client, peer));
            }
            Err(e) => {
                tracing::warn!(node_port, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
