//! Leader election on a coordination.k8s.io Lease, so two replicas of the operator can run while
//! only one reconciles, and a leader that can no longer renew stops before anyone may take over.
//!
//! kube-lease-manager acquires and renews the Lease. What it does not do (read in its 0.13.1
//! source, `LeaseManager::watch`, `changed` and `watcher_step`): when a renewal fails, because the
//! API is unreachable, the token was revoked or the request times out, its task logs the error,
//! backs off (1 s doubling to 30 s) and tries again, and its channel keeps saying "leader". It
//! only reports a loss after a read of the Lease succeeds again and shows another holder. A leader
//! cut off from the API would keep reconciling from its caches, and its writes could land when the
//! network heals while a standby that took the expired Lease writes too.
//!
//! So this module keeps a deadline of its own, the rule of client-go's `renewDeadline`: a guard
//! task reads the Lease every second, and each read that shows this replica as holder moves the
//! deadline to the Lease's `renewTime` + duration - [`SAFETY_MARGIN_SECONDS`]. `renewTime` is
//! written by this process with its own clock, so the deadline needs no clock agreement with the
//! API server. When no read has confirmed a renewal by then, or a read shows another holder,
//! [`Leadership::lost`] resolves; the caller then has [`STOP_GRACE`] to stop its writes, which is
//! less than the margin, so it has stopped before a standby can see the Lease expire.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Seconds a lease stays valid after its last renewal.
pub const LEASE_DURATION_SECONDS: u64 = 15;
/// Seconds before expiry at which the holder renews: every 5 s, so two renewals can fail or be
/// late before the renew deadline.
pub const LEASE_GRACE_SECONDS: u64 = 10;
/// A leader stops writing this long before its lease would expire when no renewal is confirmed.
pub const SAFETY_MARGIN_SECONDS: u64 = 5;
/// How long the caller may take to stop after [`Leadership::lost`] resolves; below the margin.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often the guard reads the Lease.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Bound on one read of the Lease; the deadline itself is never delayed by a hanging read.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

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

/// A held lease, renewed by a background task and watched by a guard for as long as this value
/// lives.
pub struct Leadership {
    receiver: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
    guard: watch::Receiver<bool>,
    guard_task: JoinHandle<()>,
}

/// Resolves once `receiver` holds `false` or its sender is gone.
async fn until_false(mut receiver: watch::Receiver<bool>) {
    loop {
        if !*receiver.borrow_and_update() {
            return;
        }
        if receiver.changed().await.is_err() {
            return;
        }
    }
}

impl Leadership {
    /// A future that resolves once this replica no longer holds the lease, or can no longer be
    /// sure to hold it (no renewal confirmed within the renew deadline, see the module doc).
    pub fn lost(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let manager = self.receiver.clone();
        let guard = self.guard.clone();
        async move {
            tokio::select! {
                () = until_false(manager) => {}
                () = until_false(guard) => {}
            }
        }
    }

    /// Releases the lease so a standby replica takes over at once rather than after expiry.
    /// Call after every future from [`Leadership::lost`] is dropped.
    pub async fn release(self) {
        self.guard_task.abort();
        // Closing the last receiver makes the lease task release the lock and end.
        drop(self.receiver);
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(_))) => tracing::info!("lease released"),
            Ok(Ok(Err(error))) => tracing::warn!(%error, "lease release failed"),
            Ok(Err(error)) => tracing::warn!(%error, "lease task failed"),
            Err(_) => tracing::warn!("lease release timed out"),
        }
    }

    /// Stops renewing without touching the Lease: after a loss there is nothing of ours to
    /// release, and a late release could clear the lock a standby has just taken.
    pub fn abandon(self) {
        self.guard_task.abort();
        self.task.abort();
    }
}

/// Waits until this replica holds the lease; see [`Leadership`].
pub async fn acquire(
    client: Client,
    config: &LeaseConfig,
) -> Result<Leadership, LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(client.clone(), &config.name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(LEASE_DURATION_SECONDS)
        .with_grace(LEASE_GRACE_SECONDS)
        .build()
        .await?;
    let (mut receiver, task) = manager.watch().await;
    loop {
        if *receiver.borrow_and_update() {
            break;
        }
        tracing::info!(lease = %config.name, identity = %config.identity, "waiting for leadership");
        if receiver.changed().await.is_err() {
            return Err(LeaseManagerError::InconsistentState(
                "lease task ended before leadership was acquired".to_string(),
            ));
        }
    }
    let (guard_tx, guard) = watch::channel(true);
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let guard_task = tokio::spawn(guard_lease(
        api,
        config.name.clone(),
        config.identity.clone(),
        guard_tx,
    ));
    Ok(Leadership {
        receiver,
        task,
        guard,
        guard_task,
    })
}

/// What one read of the Lease says about this replica's leadership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// We hold it; without a later renewal we must stop `remaining` from now.
    Held {
        /// Time left until the renew deadline.
        remaining: Duration,
    },
    /// We no longer hold it, or must act as if we did not.
    Lost(String),
}

/// Reads a Lease as of `now` (this process's clock, the one `renewTime` was written with).
pub fn read_lease(lease: &Lease, identity: &str, now: SystemTime) -> Reading {
    let Some(spec) = lease.spec.as_ref() else {
        return Reading::Lost("the lease has no spec".to_string());
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == identity => {}
        Some(other) => return Reading::Lost(format!("the lease is held by {other}")),
        None => return Reading::Lost("the lease has no holder".to_string()),
    }
    let Some(renewed) = spec.renew_time.as_ref() else {
        return Reading::Lost("the lease has no renewTime".to_string());
    };
    let seconds = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .unwrap_or(LEASE_DURATION_SECONDS);
    let renewed: SystemTime = renewed.0.into();
    let deadline = renewed + Duration::from_secs(seconds.saturating_sub(SAFETY_MARGIN_SECONDS));
    match deadline.duration_since(now) {
        Ok(remaining) if !remaining.is_zero() => Reading::Held { remaining },
        _ => Reading::Lost(format!(
            "no renewal of the lease confirmed within {} s",
            seconds.saturating_sub(SAFETY_MARGIN_SECONDS)
        )),
    }
}

/// The guard (see the module doc): sets `held` to false, and ends, once the lease is lost or its
/// renew deadline has passed without a confirmed renewal.
async fn guard_lease(api: Api<Lease>, name: String, identity: String, held: watch::Sender<bool>) {
    let renew_deadline = Duration::from_secs(LEASE_DURATION_SECONDS - SAFETY_MARGIN_SECONDS);
    let mut deadline = Instant::now() + renew_deadline;
    let mut failed_reads = 0u32;
    let why = loop {
        let read = tokio::select! {
            read = tokio::time::timeout(CHECK_TIMEOUT, api.get_opt(&name)) => read,
            () = tokio::time::sleep_until(deadline) => {
                break format!("no renewal of the lease confirmed within {} s", renew_deadline.as_secs());
            }
            () = held.closed() => return,
        };
        match read {
            Ok(Ok(Some(lease))) => match read_lease(&lease, &identity, SystemTime::now()) {
                Reading::Held { remaining } => {
                    deadline = Instant::now() + remaining;
                    failed_reads = 0;
                }
                Reading::Lost(why) => break why,
            },
            Ok(Ok(None)) => break "the lease was deleted".to_string(),
            Ok(Err(error)) => {
                failed_reads += 1;
                tracing::warn!(%error, failed_reads, "cannot read the lease; stopping at the renew deadline unless a read succeeds");
            }
            Err(_) => {
                failed_reads += 1;
                tracing::warn!(failed_reads, timeout = ?CHECK_TIMEOUT, "reading the lease timed out; stopping at the renew deadline unless a read succeeds");
            }
        }
        let next = deadline.min(Instant::now() + CHECK_INTERVAL);
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = held.closed() => return,
        }
    };
    tracing::error!(lease = %name, %identity, reason = %why, "leadership lost: stopping every write");
    let _ = held.send(false);
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(holder: Option<&str>, renewed: Option<SystemTime>) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                renew_time: renewed.and_then(|t| t.try_into().ok()).map(MicroTime),
                lease_duration_seconds: Some(15),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn a_fresh_renewal_leaves_the_rest_of_the_renew_deadline() {
        let now = SystemTime::now();
        let renewed = now - Duration::from_secs(4);
        assert_eq!(
            read_lease(&lease(Some("me"), Some(renewed)), "me", now),
            Reading::Held {
                remaining: Duration::from_secs(6)
            }
        );
    }

    // The cases that must stop the leader: each would fail if the reading said Held.
    #[test]
    fn a_renewal_older_than_duration_minus_margin_is_a_loss() {
        let now = SystemTime::now();
        let renewed = now - Duration::from_secs(10);
        assert!(matches!(
            read_lease(&lease(Some("me"), Some(renewed)), "me", now),
            Reading::Lost(why) if why.contains("within 10 s")
        ));
    }

    #[test]
    fn another_holder_or_none_is_a_loss() {
        let now = SystemTime::now();
        assert_eq!(
            read_lease(&lease(Some("other"), Some(now)), "me", now),
            Reading::Lost("the lease is held by other".to_string())
        );
        assert!(matches!(
            read_lease(&lease(None, Some(now)), "me", now),
            Reading::Lost(_)
        ));
        assert!(matches!(
            read_lease(&lease(Some("me"), None), "me", now),
            Reading::Lost(_)
        ));
        assert!(matches!(
            read_lease(&Lease::default(), "me", now),
            Reading::Lost(_)
        ));
    }

    #[test]
    fn the_margin_leaves_time_to_stop() {
        const { assert!(STOP_GRACE.as_secs() < SAFETY_MARGIN_SECONDS) };
        const {
            assert!(
                LEASE_DURATION_SECONDS - LEASE_GRACE_SECONDS
                    < LEASE_DURATION_SECONDS - SAFETY_MARGIN_SECONDS
            )
        };
    }
}
