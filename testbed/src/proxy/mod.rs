//! The service proxy: stands in for kube-proxy. For each NodePort Service it listens on the node
//! port and forwards each TCP connection to one endpoint of the Service's EndpointSlices, with a
//! view of the API that lags by a configurable propagation delay.

pub mod feed;
pub mod listener;
pub mod table;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio::task::JoinHandle;

use table::Table;

/// Flags of `svc-proxy` (stable: the supervisor passes them).
#[derive(Debug, Parser)]
#[command(
    name = "svc-proxy",
    about = "Forwards node ports to Service endpoints (kube-proxy stand-in)"
)]
pub struct Args {
    /// Kubeconfig of an identity allowed to list and watch Services and EndpointSlices.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// How long each observed change waits before the proxy acts on it.
    #[arg(long, default_value_t = 1000)]
    pub propagation_delay_ms: u64,
    /// Address the node ports listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub listen_ip: IpAddr,
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let kc = kube::config::Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    let client = kube::Client::try_from(config)?;
    let delay = Duration::from_millis(args.propagation_delay_ms);
    let table = Arc::new(RwLock::new(Table::default()));
    let mut changes = feed::watch(client);
    let mut listeners: HashMap<u16, JoinHandle<()>> = HashMap::new();
    let shutdown = crate::agent::shutdown_signal();
    tokio::pin!(shutdown);
    tracing::info!(delay_ms = args.propagation_delay_ms, listen_ip = %args.listen_ip, "service proxy running");
    loop {
        tokio::select! {
            change = feed::next_due(&mut changes, delay) => {
                let Some(change) = change else { break };
                let wanted = {
                    let mut table = table.write().unwrap_or_else(|p| p.into_inner());
                    change.apply(&mut table);
                    table.node_ports()
                };
                listeners.retain(|port, task| {
                    let keep = wanted.contains_key(port);
                    if !keep {
                        tracing::info!(node_port = port, "node port closed");
                        task.abort();
                    }
                    keep
                });
                for port in wanted.keys() {
                    listeners
                        .entry(*port)
                        .or_insert_with(|| tokio::spawn(listener::serve(args.listen_ip, *port, table.clone())));
                }
            }
            result = &mut shutdown => {
                result?;
                break;
            }
        }
    }
    for task in listeners.values() {
        task.abort();
    }
    Ok(())
}
