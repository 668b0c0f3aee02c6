//! The lifecycle journal: one JSON line per step of a container's life (started, preStop sent,
//! SIGTERM sent, SIGKILL sent, exited), appended to `<run-dir>/agent-events.jsonl` and mirrored as
//! a structured tracing line, so tests can assert the order of steps.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One step of a container's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Started,
    PrestopSent,
    PrestopDone,
    SigtermSent,
    SigkillSent,
    Exited,
    PodDeleted,
}

/// A journal line as written (and read back by tests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub container: Option<String>,
    pub step: Step,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Free text: the pod's netns name for `started` and `pod_deleted`, the hook's outcome for
    /// `prestop_done`, the reason for `sigkill_sent`, the signal for `exited`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Who a journal line is about.
#[derive(Debug, Clone)]
pub struct PodKey {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
}

pub struct Journal {
    path: PathBuf,
    file: Mutex<File>,
}

impl Journal {
    pub fn open(run_dir: &Path) -> std::io::Result<Self> {
        let path = run_dir.join("agent-events.jsonl");
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Journal {
            path,
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn record(
        &self,
        key: &PodKey,
        container: Option<&str>,
        step: Step,
        pid: Option<i32>,
        exit_code: Option<i32>,
        detail: Option<String>,
    ) {
        let entry = Entry {
            ts_ms: k8s_openapi::jiff::Timestamp::now().as_millisecond(),
            namespace: key.namespace.clone(),
            pod: key.pod.clone(),
            uid: key.uid.clone(),
            container: container.map(str::to_string),
            step,
            pid,
            exit_code,
            detail,
        };
        tracing::info!(
            target: "lifecycle",
            namespace = %entry.namespace,
            pod = %entry.pod,
            container = entry.container.as_deref().unwrap_or(""),
            step = ?entry.step,
            pid = entry.pid,
            exit_code = entry.exit_code,
            detail = entry.detail.as_deref().unwrap_or(""),
            "lifecycle"
        );
        let Ok(mut line) = serde_json::to_string(&entry) else {
            return;
        };
        line.push('\n');
        let mut file = match self.file.lock() {
            Ok(f) => f,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Err(e) = file.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, path = %self.path.display(), "cannot append to the journal");
        }
    }
}

/// Reads a journal file (for tests and tools); unparsable lines are skipped.
pub fn read(path: &Path) -> std::io::Result<Vec<Entry>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}
