//! Leader election on a coordination.k8s.io Lease (kube-lease-manager), so two replicas of the
//! operator can run while only one reconciles.

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;

/// Seconds a lease stays valid after its last renewal.
pub const LEASE_DURATION_SECONDS: u64 = 15;
/// Seconds before expiry at which the holder renews.
pub const LEASE_GRACE_SECONDS: u64 = 5;

/// Where the lease lives and who we are.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// Unique identity of this replica (pod name, else hostname and pid).
    pub identity: String,
}

/// A held lease: `lost()` resolves when leadership ends.
pub struct Leadership {
    receiver: watch::Receiver<bool>,
}

impl Leadership {
    /// Resolves once this replica no longer holds the lease (or the lease task ended).
    pub async fn lost(mut self) {
        loop {
            if !*self.receiver.borrow_and_update() {
                return;
            }
            if self.receiver.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Waits until this replica holds the lease. The lease is renewed in the background for as long
/// as the returned [`Leadership`] (its channel receiver) lives, and released when it is dropped.
pub async fn acquire(
    client: Client,
    config: &LeaseConfig,
) -> Result<Leadership, LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(client, &config.name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(LEASE_DURATION_SECONDS)
        .with_grace(LEASE_GRACE_SECONDS)
        .build()
        .await?;
    let (mut receiver, _task) = manager.watch().await;
    loop {
        if *receiver.borrow_and_update() {
            return Ok(Leadership { receiver });
        }
        tracing::info!(lease = %config.name, identity = %config.identity, "waiting for leadership");
        if receiver.changed().await.is_err() {
            return Err(LeaseManagerError::InconsistentState(
                "lease task ended before leadership was acquired".to_string(),
            ));
        }
    }
}

/// Identity of this replica: `POD_NAME`, else hostname and pid.
pub fn default_identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "graceful-operator".to_string());
        format!("{host}-{}", std::process::id())
    })
}
