//! Requests to a running supervisor to restart or stop one of its components (kube-apiserver,
//! or a node's containerd, kubelet or kube-proxy), for tests of what survives that.
//!
//! The asker appends `<id> <verb> <component>` to `<run>/control/requests` and sends SIGUSR1;
//! the supervisor carries out every request it has not seen yet and appends
//! `<id> <seconds> ok` (or `<id> <seconds> error <message>`) to `<run>/control/done`. Files, so
//! that a person can do the same with `echo` and `kill -USR1`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::controlplane;
use crate::process::Children;

/// What to do with a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Stop (SIGTERM, SIGKILL after the grace) and start again with the same command.
    Restart,
    /// Stop for good (a lost node's kubelet); the supervisor no longer watches it.
    Stop,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Restart => "restart",
            Verb::Stop => "stop",
        }
    }
}

fn dir(run_dir: &Path) -> PathBuf {
    run_dir.join("control")
}

/// One request as a line of `requests`.
pub fn request_line(id: &str, verb: Verb, component: &str) -> String {
    format!("{id} {} {component}\n", verb.as_str())
}

/// Parses a request line: (id, verb, component).
pub fn parse_request(line: &str) -> Option<(String, Verb, String)> {
    let mut fields = line.split_whitespace();
    let id = fields.next()?.to_string();
    let verb = match fields.next()? {
        "restart" => Verb::Restart,
        "stop" => Verb::Stop,
        _ => return None,
    };
    let component = fields.next()?.to_string();
    fields.next().is_none().then_some((id, verb, component))
}

/// The supervisor's side: carries out the requests after the first `handled` ones; returns the
/// new count. A failed request is reported in `done`, it does not end the run.
pub async fn serve(
    run_dir: &Path,
    kubeconfig: &Path,
    children: &Children,
    handled: usize,
) -> Result<usize> {
    let text = std::fs::read_to_string(dir(run_dir).join("requests")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    for line in lines.iter().skip(handled) {
        let started = Instant::now();
        let outcome = match parse_request(line) {
            Some((_, verb, component)) => {
                carry_out(run_dir, kubeconfig, children, verb, &component).await
            }
            None => Err(anyhow::anyhow!("cannot parse {line:?}")),
        };
        let id = line.split_whitespace().next().unwrap_or("?");
        let seconds = started.elapsed().as_secs_f64();
        let result = match outcome {
            Ok(()) => format!("{id} {seconds:.3} ok\n"),
            Err(error) => format!("{id} {seconds:.3} error {error:#}\n"),
        };
        tracing::info!(request = line, result = result.trim(), "control request");
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir(run_dir).join("done"))?
            .write_all(result.as_bytes())?;
    }
    Ok(lines.len())
}

async fn carry_out(
    run_dir: &Path,
    kubeconfig: &Path,
    children: &Children,
    verb: Verb,
    component: &str,
) -> Result<()> {
    match (verb, component) {
        (Verb::Restart, "kube-apiserver") => {
            controlplane::restart_apiserver(run_dir, kubeconfig, children).await
        }
        (Verb::Restart, name) => {
            tokio::task::block_in_place(|| children.restart(name, Duration::from_secs(10)))?;
            Ok(())
        }
        (Verb::Stop, name) => {
            tokio::task::block_in_place(|| children.stop_one(name, Duration::from_secs(10)))
        }
    }
}

/// The asker's side: sends one request to the supervisor `pid` of `run_dir` and waits (bounded
/// by `limit`) for its outcome; returns how long it took the supervisor.
pub async fn ask(
    run_dir: &Path,
    pid: u32,
    verb: Verb,
    component: &str,
    limit: Duration,
) -> Result<Duration> {
    let control = dir(run_dir);
    std::fs::create_dir_all(&control)?;
    let id = crate::fixture::unique_name("req");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(control.join("requests"))?
        .write_all(request_line(&id, verb, component).as_bytes())?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .context("cannot signal the testbed supervisor")?;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let done = std::fs::read_to_string(control.join("done")).unwrap_or_default();
        if let Some(line) = done
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&id))
        {
            let mut fields = line.splitn(3, ' ').skip(1);
            let seconds: f64 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
            return match fields.next() {
                Some("ok") => Ok(Duration::from_secs_f64(seconds)),
                other => bail!(
                    "{} {component} failed: {}",
                    verb.as_str(),
                    other.unwrap_or("")
                ),
            };
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{} {component}: no answer within {limit:?}; read {}",
                verb.as_str(),
                run_dir.join("logs").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_round_trip() {
        let line = request_line("r-1", Verb::Stop, "kubelet-node-2");
        assert_eq!(
            parse_request(&line),
            Some(("r-1".into(), Verb::Stop, "kubelet-node-2".into()))
        );
        assert_eq!(parse_request("r-2 reboot x"), None);
        assert_eq!(parse_request("r-3 restart"), None);
        assert_eq!(parse_request("r-4 restart a b"), None);
    }
}
