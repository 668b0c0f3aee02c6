//! The zero-error rollout experiment, as a library so the end-to-end tests run the same code as
//! the command (`src/main.rs`).
//!
//! - [`cluster`]: the testbed (started or reused) and the operator on it
//! - [`workloads`]: the graceful and the naive setup as Kubernetes objects
//! - [`scenario`]: one scenario x setup from deploy to cleanup
//! - [`load`]: the keep-alive clients and the table's statistics
//! - [`settle`]: when a deploy or a change is complete
//! - [`timeline`]: the rollout's events on the load's clock
//! - [`observe`]: watchers that fill the timeline, and the progress line
//! - [`report`] and [`plot`]: Markdown, JSON and SVG

pub mod cluster;
pub mod load;
pub mod observe;
pub mod plot;
pub mod report;
pub mod scenario;
pub mod settle;
pub mod timeline;
pub mod wait;
pub mod workloads;

/// Raises the soft limit on open files to the hard limit: a thousand keep-alive clients need a
/// thousand sockets, beyond the usual soft limit of 1024. Returns the new soft limit.
pub fn raise_nofile_limit() -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}
