//! The API server's audit log as evidence of who wrote what, and when.
//!
//! The testbed's audit policy records the metadata of every write (create, update, patch, delete)
//! in `<run>/logs/audit.log`, one `audit.k8s.io/v1` Event per line. That log is written by the API
//! server itself, so it sees every write that took effect, whichever process sent it and through
//! whatever network path; a test that only watched objects could miss a write that changed
//! nothing visible. Tests here use it to prove that two operator processes never write at the same
//! time. Each check has unit tests with logs that must fail it.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// One write the API server finished answering (stage `ResponseComplete`).
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// Who, as precisely as the log says: the pod of a pod-bound ServiceAccount token, else the
    /// impersonated user, else the authenticated user.
    pub writer: String,
    /// The authenticated user.
    pub user: String,
    pub verb: String,
    /// `resource` or `resource/subresource`.
    pub resource: String,
    pub namespace: String,
    pub name: String,
    /// HTTP status code of the answer.
    pub code: u16,
    /// The error message of a refused write (empty on success).
    pub message: String,
    /// When the API server received the request, in microseconds since the epoch.
    pub received: i64,
    /// When it finished answering, in microseconds since the epoch.
    pub completed: i64,
}

impl Write {
    /// Whether the write took effect (2xx).
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

/// Lines of the log so far: pass to [`read_since`] to read only what comes after.
pub fn mark(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// Every completed write logged after line `mark`.
pub fn read_since(path: &Path, mark: usize) -> Result<Vec<Write>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the audit log {}", path.display()))?;
    Ok(text.lines().skip(mark).filter_map(parse_line).collect())
}

/// One log line as a [`Write`]; `None` for other stages and lines that are not audit events.
pub fn parse_line(line: &str) -> Option<Write> {
    let event: serde_json::Value = serde_json::from_str(line).ok()?;
    if event["stage"] != "ResponseComplete" {
        return None;
    }
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let user = text(&event["user"]["username"]);
    let pod = &event["user"]["extra"]["authentication.kubernetes.io/pod-name"][0];
    let impersonated = &event["impersonatedUser"]["username"];
    let writer = if pod.is_string() {
        text(pod)
    } else if impersonated.is_string() {
        text(impersonated)
    } else {
        user.clone()
    };
    let object = &event["objectRef"];
    let mut resource = text(&object["resource"]);
    if let Some(sub) = object["subresource"].as_str() {
        resource = format!("{resource}/{sub}");
    }
    Some(Write {
        writer,
        user,
        verb: text(&event["verb"]),
        resource,
        namespace: text(&object["namespace"]),
        name: text(&object["name"]),
        code: event["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
        message: text(&event["responseStatus"]["message"]),
        received: micros(event["requestReceivedTimestamp"].as_str()?)?,
        completed: micros(event["stageTimestamp"].as_str()?)?,
    })
}

/// `2026-12-02T14:38:33.123456Z` (RFC 3339, UTC, as the API server writes it) in microseconds
/// since the Unix epoch.
pub fn micros(ts: &str) -> Option<i64> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, min, s) = (t.next()??, t.next()??, t.next()??);
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(6).collect();
    let frac: i64 = digits.parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + min) * 60_000_000 + s * 1_000_000 + frac)
}

/// One writer's uninterrupted run of writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub writer: String,
    pub writes: usize,
    /// When the API server received the run's first write (microseconds since the epoch).
    pub first_received: i64,
    /// When it finished the run's last write.
    pub last_completed: i64,
}

/// Checks that the successful `writes` came from one writer at any moment: ordered by when the
/// API server received them, each writer's writes form a single run, and each run was finished
/// (its last write answered) before the next run's first write arrived. Returns the runs.
pub fn one_writer_at_a_time(writes: &[Write]) -> Result<Vec<Run>> {
    let mut ordered: Vec<&Write> = writes.iter().filter(|w| w.succeeded()).collect();
    ordered.sort_by_key(|w| w.received);
    let mut runs: Vec<Run> = Vec::new();
    for w in ordered {
        match runs.last_mut() {
            Some(run) if run.writer == w.writer => {
                run.writes += 1;
                run.last_completed = run.last_completed.max(w.completed);
            }
            _ => {
                if let Some(earlier) = runs.iter().find(|r| r.writer == w.writer) {
                    bail!(
                        "{} wrote again ({} {} {}/{}) after another writer took over; runs so far: {runs:?} (first run of it: {earlier:?})",
                        w.writer,
                        w.verb,
                        w.resource,
                        w.namespace,
                        w.name
                    );
                }
                if let Some(previous) = runs.last()
                    && previous.last_completed > w.received
                {
                    bail!(
                        "{} began writing ({} {} {}/{}) {} µs before {}'s last write was answered: two writers at once",
                        w.writer,
                        w.verb,
                        w.resource,
                        w.namespace,
                        w.name,
                        previous.last_completed - w.received,
                        previous.writer
                    );
                }
                runs.push(Run {
                    writer: w.writer.clone(),
                    writes: 1,
                    first_received: w.received,
                    last_completed: w.completed,
                });
            }
        }
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(writer: &str, received: i64, completed: i64) -> Write {
        Write {
            writer: writer.to_string(),
            user: "u".to_string(),
            verb: "patch".to_string(),
            resource: "deployments".to_string(),
            namespace: "ns".to_string(),
            name: "web".to_string(),
            code: 200,
            message: String::new(),
            received,
            completed,
        }
    }

    #[test]
    fn timestamps_count_microseconds_since_the_epoch() {
        assert_eq!(micros("1970-01-01T00:00:00.000000Z"), Some(0));
        assert_eq!(micros("1970-01-02T00:00:01.5Z"), Some(86_401_500_000));
        // 2026-12-02T14:38:33Z is 1796222313 s after the epoch (date -u -d ... +%s).
        assert_eq!(
            micros("2026-12-02T14:38:33.123456Z"),
            Some(1_796_222_313_123_456)
        );
        assert_eq!(micros("2026-12-02 14:38:33"), None);
    }

    #[test]
    fn a_handover_is_one_writer_at_a_time() {
        let writes = [w("a", 1, 2), w("a", 3, 5), w("b", 6, 7), w("b", 8, 9)];
        let runs = one_writer_at_a_time(&writes).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!((runs[0].writes, runs[1].writes), (2, 2));
    }

    // Twins: the logs the check exists to catch.
    #[test]
    fn an_old_writer_writing_again_fails_the_check() {
        let writes = [w("a", 1, 2), w("b", 3, 4), w("a", 5, 6)];
        let error = one_writer_at_a_time(&writes).unwrap_err().to_string();
        assert!(error.contains("a wrote again"), "{error}");
    }

    #[test]
    fn overlapping_writes_fail_the_check() {
        let writes = [w("a", 1, 10), w("b", 5, 6)];
        let error = one_writer_at_a_time(&writes).unwrap_err().to_string();
        assert!(error.contains("two writers at once"), "{error}");
    }

    #[test]
    fn refused_writes_do_not_count() {
        let mut refused = w("a", 5, 6);
        refused.code = 403;
        assert_eq!(
            one_writer_at_a_time(&[w("a", 1, 2), w("b", 3, 4), refused])
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn a_log_line_names_the_pod_of_a_service_account_token() {
        let line = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"x","stage":"ResponseComplete","requestURI":"/apis/apps/v1/namespaces/a/deployments/web","verb":"patch","user":{"username":"system:serviceaccount:r:op","groups":["system:serviceaccounts"],"extra":{"authentication.kubernetes.io/pod-name":["op-7d9-abc"],"authentication.kubernetes.io/pod-uid":["u"]}},"objectRef":{"resource":"deployments","namespace":"a","name":"web","apiGroup":"apps","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":200},"requestReceivedTimestamp":"2026-12-02T14:38:33.000001Z","stageTimestamp":"2026-12-02T14:38:33.000002Z"}"#;
        let write = parse_line(line).unwrap();
        assert_eq!(write.writer, "op-7d9-abc");
        assert_eq!(write.resource, "deployments");
        assert!(write.succeeded());
        assert_eq!(write.completed - write.received, 1);
        let started = line.replace("ResponseComplete", "ResponseStarted");
        assert_eq!(parse_line(&started), None);
    }
}
