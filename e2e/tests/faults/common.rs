//! What the fault tests share: setup, the lock that keeps kube-apiserver restarts away from the
//! other tests, a seeded random source, operator log counting, and watch recorders that survive
//! an API server restart (they back off and re-watch instead of stopping at the first error).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use graceful_operator::{GracefulService, GracefulServiceSpec};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use super::support::{ensure_schedulable, install_crd};

/// Tests that restart kube-apiserver hold the write half, every other test the read half.
pub static API_RESTART: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

pub struct Setup {
    pub tb: &'static testbed::Testbed,
    pub client: kube::Client,
    pub ns: String,
}

pub async fn setup(prefix: &str) -> Result<Setup> {
    let tb = testbed::shared()?;
    let client = tb.client().await?;
    install_crd(tb)?;
    ensure_schedulable(tb, &client).await?;
    let ns = tb.create_namespace(&client, prefix).await?;
    Ok(Setup { tb, client, ns })
}

/// How many times each fault is repeated (`FAULTS_ROUNDS`, default 2).
pub fn rounds() -> usize {
    std::env::var("FAULTS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(2)
}

/// Short shutdown timings keep scale-downs quick: 1 s drain, 1 s longest request, 4 s grace.
/// Idle-pod preference is off: these tests are about faults, not about which pod goes.
pub fn quick_spec(replicas: i32) -> GracefulServiceSpec {
    let mut spec = super::support::quick_spec(replicas);
    spec.scale_down.prefer_idle_pods = false;
    spec
}

/// Sets `spec.replicas` of a GracefulService.
pub async fn scale(client: &kube::Client, ns: &str, name: &str, replicas: i32) -> Result<()> {
    let api: Api<GracefulService> = Api::namespaced(client.clone(), ns);
    let patch = serde_json::json!({"spec": {"replicas": replicas}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// A small xorshift generator: random kill moments that a failing run can replay
/// (`FAULTS_SEED`); the seed is printed.
pub struct Rng(u64);

impl Rng {
    pub fn from_env_or_clock(what: &str) -> Self {
        let seed = std::env::var("FAULTS_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            })
            | 1;
        eprintln!("{what}: FAULTS_SEED={seed}");
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A duration uniformly between `low` and `high` milliseconds.
    pub fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.next() % (high - low + 1))
    }
}

/// Lines of an operator log at WARN or ERROR level, and lines mentioning an error at any level.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LogCount {
    pub warn_or_error: usize,
    pub mentioning_error: usize,
    pub lines: usize,
}

pub fn count_log(path: &Path) -> Result<LogCount> {
    let text = std::fs::read_to_string(path)?;
    Ok(count_text(&text))
}

/// The text of a line without ANSI colour sequences (`ESC [ ... m`), which the operator's text
/// log format writes even into a file.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn count_text(text: &str) -> LogCount {
    let mut count = LogCount::default();
    for line in text.lines() {
        let line = plain(line);
        count.lines += 1;
        if line.contains(" WARN ") || line.contains(" ERROR ") {
            count.warn_or_error += 1;
        }
        if line.to_ascii_lowercase().contains("error") {
            count.mentioning_error += 1;
        }
    }
    count
}

/// Whether a process runs (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    testbed::process::is_alive(pid as i32)
}

fn revision(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

/// One observation of a pod.
#[derive(Debug, Clone)]
pub struct PodSeen {
    pub rev: u64,
    pub at: Instant,
    pub name: String,
    pub ready: bool,
    pub restarts: i32,
}

/// Every change of the Deployment's `spec.replicas` (revision, when, value) and every pod
/// update of the service, recorded by watches that survive API server restarts.
#[derive(Debug, Default)]
pub struct Watched {
    pub replicas: Vec<(u64, Instant, i32)>,
    pub pods: Vec<PodSeen>,
}

impl Watched {
    pub fn replica_values(&self) -> Vec<i32> {
        self.replicas.iter().map(|r| r.2).collect()
    }
}

/// Watches Deployment `name` and its pods until the returned tasks are aborted.
pub fn watch(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> (Arc<Mutex<Watched>>, Vec<tokio::task::JoinHandle<()>>) {
    let seen = Arc::new(Mutex::new(Watched::default()));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let s = seen.clone();
    let dep = tokio::spawn(async move {
        let mut stream = watcher::watcher(deployments, config)
            .default_backoff()
            .boxed();
        while let Some(event) = stream.next().await {
            let (Ok(Event::Apply(d)) | Ok(Event::InitApply(d))) = event else {
                continue;
            };
            let value = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(-1);
            let mut s = s.lock().unwrap();
            if s.replicas.last().map(|r| r.2) != Some(value) {
                s.replicas
                    .push((revision(&d.metadata), Instant::now(), value));
            }
        }
    });
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let config = watcher::Config::default().labels(&format!("graceful.dev/service={name}"));
    let s = seen.clone();
    let pod = tokio::spawn(async move {
        let mut stream = watcher::watcher(pods, config).default_backoff().boxed();
        while let Some(event) = stream.next().await {
            let (Ok(Event::Apply(p)) | Ok(Event::InitApply(p))) = event else {
                continue;
            };
            let status = p.status.clone().unwrap_or_default();
            let ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let restarts = status
                .container_statuses
                .iter()
                .flatten()
                .map(|c| c.restart_count)
                .sum();
            s.lock().unwrap().pods.push(PodSeen {
                rev: revision(&p.metadata),
                at: Instant::now(),
                name: p.metadata.name.clone().unwrap_or_default(),
                ready,
                restarts,
            });
        }
    });
    (seen, vec![dep, pod])
}

#[test]
fn log_counting_sees_levels_and_error_words() {
    let text = "2026-01-01T00:00:00Z  INFO graceful_operator: started\n\
                2026-01-01T00:00:01Z  WARN graceful_operator::controller: reconcile error\n\
                2026-01-01T00:00:02Z DEBUG graceful_operator::controller: reconcile failed error=x\n\
                2026-01-01T00:00:03Z ERROR graceful_operator: stopped\n\
                \u{1b}[2m2026-01-01T00:00:04Z\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m \u{1b}[2mx\u{1b}[0m: y\n";
    let count = count_text(text);
    assert_eq!(count.lines, 5);
    assert_eq!(count.warn_or_error, 3);
    assert_eq!(count.mentioning_error, 3);
}
