//! Leader election on a coordination.k8s.io Lease (kube-lease-manager), so two replicas of the
//! operator can run while only one reconciles.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

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

/// A held lease, renewed by a background task for as long as this value lives.
pub struct Leadership {
    receiver: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
}

impl Leadership {
    /// A future that resolves once this replica no longer holds the lease (or the lease task
    /// ended).
    pub fn lost(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut receiver = self.receiver.clone();
        async move {
            loop {
                if !*receiver.borrow_and_update() {
                    return;
                }
                if receiver.changed().await.is_err() {
                    return;
                }
            }
        }
    }

    /// Releases the lease so a standby replica takes over at once rather than after expiry.
    /// Call after every future from [`Leadership::lost`] is dropped.
    pub async fn release(self) {
        // Closing the last receiver makes the lease task release the lock and end.
        drop(self.receiver);
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(_))) => tracing::info!("lease released"),
            Ok(Ok(Err(error))) => tracing::warn!(%error, "lease release failed"),
            Ok(Err(error)) => tracing::warn!(%error, "lease task failed"),
            Err(_) => tracing::warn!("lease release timed out"),
        }
    }
}

/// Waits until this replica holds the lease; see [`Leadership`].
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
    let (mut receiver, task) = manager.watch().await;
    loop {
        if *receiver.borrow_and_update() {
            return Ok(Leadership { receiver, task });
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
