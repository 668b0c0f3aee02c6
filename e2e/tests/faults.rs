//! Faults the operator must survive, on the testbed's real control plane: the operator SIGKILLed
//! again and again during a scale-down, kube-apiserver restarted during a rollout and a
//! scale-down, the leader of two replicas SIGKILLed, an app process SIGKILLed during a
//! scale-down, and a pile of invalid specs. Each fault is repeated (`FAULTS_ROUNDS`, default 2)
//! within bounded time.
//!
//! The helpers of the operator tests (`operator/support.rs`, `operator/recording.rs`,
//! `operator/invalid.rs`) are reused as they are. Tests that restart kube-apiserver take the
//! write half of [`common::API_RESTART`] and all others the read half, so no other test sees the
//! API vanish under it.
//!
//!     cargo build --workspace --bins && cargo test -p e2e --test faults -- --nocapture

#[allow(dead_code)]
#[path = "operator/invalid.rs"]
mod invalid;
#[allow(dead_code)]
#[path = "operator/recording.rs"]
mod recording;
#[allow(dead_code)]
#[path = "operator/support.rs"]
mod support;

#[path = "faults/apiserver.rs"]
mod apiserver;
#[path = "faults/app_kill.rs"]
mod app_kill;
#[path = "faults/bad_input.rs"]
mod bad_input;
#[path = "faults/common.rs"]
mod common;
#[path = "faults/leader.rs"]
mod leader;
#[path = "faults/operator_kills.rs"]
mod operator_kills;
