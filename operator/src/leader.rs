//! Leader election on a coordination.k8s.io Lease, so two replicas of the operator can run while
//! only one reconciles, and a leader that can no longer renew stops before anyone may take over.
//!
//! The rules are client-go's `leaderelection` package, written out here because the one crate
//! we used (kube-lease-manager 0.13) broke the first two below, which a CI run of
//! `faults::leader_cut_off_from_the_api_stops_before_the_standby_takes_over` found, and read
//! expiry from the holder's clock instead of the third:
//! - **Every write carries the Lease's resourceVersion** (a `replace` of the object just read).
//!   A renewal held up in the network and delivered after a standby took the Lease is refused
//!   with 409 instead of setting `renewTime` back under the new holder's feet (the crate renewed
//!   with an unconditional patch).
//! - **The leader keeps a renew deadline of its own**: when no renewal has succeeded for
//!   [`RENEW_DEADLINE`] since it was sent, or a read shows another holder, [`Leadership::lost`]
//!   resolves; the caller then has [`STOP_GRACE`] to stop writing. The crate kept saying
//!   "leader" through any number of failed renewals.
//! - **A standby judges expiry by its own clock**: a Lease is free once its resourceVersion has
//!   not changed for its `leaseDurationSeconds`, as this replica observed it, so no two clocks
//!   have to agree. The leader stops at most `RENEW_DEADLINE + STOP_GRACE` after sending its last
//!   successful renewal, which a standby saw land after it was sent; that is before
//!   [`LEASE_DURATION_SECONDS`] have passed on any standby's clock.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Seconds a lease stays valid after its last renewal.
pub const LEASE_DURATION_SECONDS: i32 = 15;
/// A leader whose renewals have all failed for this long stops (client-go's `renewDeadline`).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often the leader renews and a standby tries to acquire (client-go's `retryPeriod`).
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// How long the caller may take to stop after [`Leadership::lost`] resolves.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// Bound on one attempt (a read and a write); the deadline itself never waits for it.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

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

/// What a read of the Lease lets this replica do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// We hold it: renew.
    Ours,
    /// Nobody holds it, or its holder let it expire: take it.
    Free,
    /// Another replica holds it.
    HeldBy(String),
}

/// Judges a Lease whose resourceVersion has not changed for `unchanged_for`, as this replica
/// observed it (see the module doc).
pub fn verdict(spec: Option<&LeaseSpec>, identity: &str, unchanged_for: Duration) -> Verdict {
    let Some(holder) = spec
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
    else {
        return Verdict::Free;
    };
    if holder == identity {
        return Verdict::Ours;
    }
    let seconds = spec
        .and_then(|s| s.lease_duration_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .unwrap_or(LEASE_DURATION_SECONDS as u64);
    if unchanged_for >= Duration::from_secs(seconds) {
        Verdict::Free
    } else {
        Verdict::HeldBy(holder.to_string())
    }
}

/// The spec that renews (when we hold it) or takes the Lease at `now`.
pub fn claimed(spec: Option<&LeaseSpec>, identity: &str, now: MicroTime) -> LeaseSpec {
    let mut next = spec.cloned().unwrap_or_default();
    if next.holder_identity.as_deref() != Some(identity) {
        let had_holder = next
            .holder_identity
            .as_deref()
            .is_some_and(|h| !h.is_empty());
        next.holder_identity = Some(identity.to_string());
        next.acquire_time = Some(now.clone());
        if had_holder {
            next.lease_transitions = Some(next.lease_transitions.unwrap_or(0) + 1);
        }
    }
    next.renew_time = Some(now);
    next.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
    next
}

/// The spec that hands the Lease back, so a standby takes it at its next attempt.
pub fn released(spec: Option<&LeaseSpec>) -> LeaseSpec {
    LeaseSpec {
        lease_transitions: spec.and_then(|s| s.lease_transitions),
        ..LeaseSpec::default()
    }
}

/// The outcome of one attempt to take or renew the Lease.
#[derive(Debug)]
enum Attempt {
    /// Our write landed.
    Claimed,
    /// Not ours now, and why.
    NotOurs(String),
}

/// The Lease as one replica sees it: its API and what it last read (resourceVersion, since when).
#[derive(Clone)]
struct Campaign {
    api: Api<Lease>,
    name: String,
    identity: String,
    seen: Option<(String, Instant)>,
}

impl Campaign {
    /// One read and, when the verdict allows, one write under the read's resourceVersion.
    async fn attempt(&mut self, leading: bool) -> Result<Attempt, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            if leading {
                return Ok(Attempt::NotOurs("the lease was deleted".to_string()));
            }
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(claimed(None, &self.identity, now)),
            };
            return match self.api.create(&write_params(), &lease).await {
                Ok(_) => Ok(Attempt::Claimed),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::NotOurs(
                    "another replica created the lease".to_string(),
                )),
                Err(e) => Err(e),
            };
        };
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let since = match &self.seen {
            Some((seen, since)) if *seen == version => *since,
            _ => Instant::now(),
        };
        self.seen = Some((version, since));
        match verdict(lease.spec.as_ref(), &self.identity, since.elapsed()) {
            Verdict::HeldBy(holder) => return Ok(Attempt::NotOurs(format!("held by {holder}"))),
            Verdict::Free if leading => {
                return Ok(Attempt::NotOurs(
                    "the lease was released or expired".to_string(),
                ));
            }
            Verdict::Ours | Verdict::Free => {}
        }
        lease.spec = Some(claimed(lease.spec.as_ref(), &self.identity, now));
        match self.api.replace(&self.name, &write_params(), &lease).await {
            Ok(_) => Ok(Attempt::Claimed),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::NotOurs(
                "the lease changed since it was read".to_string(),
            )),
            Err(e) => Err(e),
        }
    }

    /// The release write: only while we are the holder, under the read's resourceVersion.
    async fn release(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(false);
        };
        if verdict(lease.spec.as_ref(), &self.identity, Duration::ZERO) != Verdict::Ours {
            return Ok(false);
        }
        lease.spec = Some(released(lease.spec.as_ref()));
        self.api
            .replace(&self.name, &write_params(), &lease)
            .await
            .map(|_| true)
    }
}

/// A held lease, renewed by a background task for as long as this value lives.
pub struct Leadership {
    held: watch::Receiver<bool>,
    task: JoinHandle<()>,
    campaign: Campaign,
}

impl Leadership {
    /// A future that resolves once this replica no longer holds the lease, or can no longer be
    /// sure to hold it (no renewal within [`RENEW_DEADLINE`]).
    pub fn lost(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut held = self.held.clone();
        async move {
            while *held.borrow_and_update() {
                if held.changed().await.is_err() {
                    return;
                }
            }
        }
    }

    /// Hands the Lease back so a standby takes over at once rather than after expiry.
    pub async fn release(self) {
        self.task.abort();
        match tokio::time::timeout(ATTEMPT_TIMEOUT, self.campaign.release()).await {
            Ok(Ok(true)) => tracing::info!("lease released"),
            Ok(Ok(false)) => tracing::info!("lease no longer ours; nothing to release"),
            Ok(Err(error)) => tracing::warn!(%error, "lease release failed"),
            Err(_) => tracing::warn!("lease release timed out"),
        }
    }

    /// Stops renewing without touching the Lease: after a loss there is nothing of ours to
    /// release, and a late release could clear the lock a standby has just taken.
    pub fn abandon(self) {
        self.task.abort();
    }
}

/// Waits until this replica holds the lease, trying every [`RETRY_PERIOD`]; see [`Leadership`].
pub async fn acquire(client: Client, config: &LeaseConfig) -> Leadership {
    let mut campaign = Campaign {
        api: Api::namespaced(client, &config.namespace),
        name: config.name.clone(),
        identity: config.identity.clone(),
        seen: None,
    };
    let sent = loop {
        let sent = Instant::now();
        match tokio::time::timeout(ATTEMPT_TIMEOUT, campaign.attempt(false)).await {
            Ok(Ok(Attempt::Claimed)) => break sent,
            Ok(Ok(Attempt::NotOurs(why))) => {
                tracing::debug!(lease = %config.name, %why, "waiting for leadership");
            }
            Ok(Err(error)) => tracing::warn!(%error, "cannot read or take the lease"),
            Err(_) => tracing::warn!(timeout = ?ATTEMPT_TIMEOUT, "taking the lease timed out"),
        }
        tokio::time::sleep(RETRY_PERIOD).await;
    };
    let (held_tx, held) = watch::channel(true);
    let task = tokio::spawn(renew(campaign.clone(), sent, held_tx));
    Leadership {
        held,
        task,
        campaign,
    }
}

/// Renews every [`RETRY_PERIOD`]; sets `held` to false, and ends, once the lease is someone
/// else's or no renewal has succeeded within [`RENEW_DEADLINE`] of being sent.
async fn renew(mut campaign: Campaign, mut renewed: Instant, held: watch::Sender<bool>) {
    let mut next = renewed + RETRY_PERIOD;
    let why = loop {
        let deadline = renewed + RENEW_DEADLINE;
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = tokio::time::sleep_until(deadline) => break no_renewal(),
        }
        let sent = Instant::now();
        next = sent + RETRY_PERIOD;
        let outcome = tokio::select! {
            outcome = tokio::time::timeout(ATTEMPT_TIMEOUT, campaign.attempt(true)) => outcome,
            () = tokio::time::sleep_until(deadline) => break no_renewal(),
        };
        match outcome {
            Ok(Ok(Attempt::Claimed)) => renewed = sent,
            Ok(Ok(Attempt::NotOurs(why))) => break why,
            Ok(Err(error)) => {
                tracing::warn!(%error, "lease renewal failed; stopping at the renew deadline unless one succeeds")
            }
            Err(_) => {
                tracing::warn!(timeout = ?ATTEMPT_TIMEOUT, "lease renewal timed out; stopping at the renew deadline unless one succeeds")
            }
        }
    };
    tracing::error!(lease = %campaign.name, identity = %campaign.identity, reason = %why, "leadership lost: stopping every write");
    let _ = held.send(false);
}

/// Lease writes carry the operator's one field manager.
fn write_params() -> PostParams {
    PostParams {
        field_manager: Some(crate::FIELD_MANAGER.to_string()),
        ..PostParams::default()
    }
}

fn no_renewal() -> String {
    format!(
        "no lease renewal succeeded within {} s",
        RENEW_DEADLINE.as_secs()
    )
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
#[path = "leader_tests.rs"]
mod tests;
