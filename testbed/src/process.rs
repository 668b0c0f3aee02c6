//! Child processes of the supervisor: spawned so that they cannot outlive it, stopped in a
//! bounded way.
//!
//! Every child is spawned from one dedicated thread that lives as long as the process, because
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process: a
//! child forked from a tokio worker would get SIGKILL whenever that worker is retired. Each child
//! also leads its own process group, so that Ctrl-C in a terminal reaches only the supervisor
//! (which then stops the children in order) and so that stopping a child also stops helpers it
//! forked into its group (e.g. `go build` under the build script).

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// The long-lived spawner thread's inbox.
fn spawner() -> &'static mpsc::SyncSender<SpawnRequest> {
    static SPAWNER: OnceLock<mpsc::SyncSender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel::<SpawnRequest>(0);
        std::thread::Builder::new()
            .name("testbed-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
                // The senders live in a static, so this loop never ends: the thread (and with it
                // the parent-death link of every child) lasts as long as the process.
            })
            .expect("cannot start the spawner thread");
        tx
    })
}

/// Spawns `command` from the spawner thread, in its own process group, with SIGKILL as its
/// parent-death signal.
pub fn spawn_guarded(mut command: Command) -> io::Result<Child> {
    let parent = std::process::id() as i32;
    command.process_group(0);
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe functions
    // (prctl, getppid, _exit).
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            // The parent may have died before prctl took effect.
            if nix::unistd::getppid().as_raw() != parent {
                nix::libc::_exit(1);
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner()
        .send((command, reply_tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread dropped the request"))?
}

/// How to start a child: kept, so that it can be started again the same way.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Added to the supervisor's environment.
    pub env: Vec<(String, String)>,
    /// A network namespace file (`/run/netns/<name>`) to run in, through `nsenter --net`, which
    /// enters and execs without forking, so the parent-death signal still holds.
    pub netns: Option<PathBuf>,
}

impl Launch {
    pub fn new(program: &Path, args: &[String]) -> Self {
        Self {
            program: program.to_path_buf(),
            args: args.to_vec(),
            ..Self::default()
        }
    }

    fn command(&self) -> Command {
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("nsenter");
                command
                    .arg(format!("--net={}", netns.display()))
                    .arg("--")
                    .arg(&self.program);
                command
            }
            None => Command::new(&self.program),
        };
        command.args(&self.args).envs(self.env.iter().cloned());
        command
    }
}

/// A named child with its log file.
#[derive(Debug)]
pub struct Supervised {
    pub name: String,
    pub log: PathBuf,
    launch: Launch,
    child: Child,
    exited: Option<ExitStatus>,
}

impl Supervised {
    /// Starts `program args...` with stdout and stderr appended to `log`.
    pub fn start(name: &str, program: &Path, args: &[String], log: &Path) -> Result<Self> {
        Self::launch(name, Launch::new(program, args), log)
    }

    /// Starts `launch` with stdout and stderr appended to `log`.
    pub fn launch(name: &str, launch: Launch, log: &Path) -> Result<Self> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open log file {}", log.display()))?;
        let err = out.try_clone()?;
        let mut command = launch.command();
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = spawn_guarded(command)
            .with_context(|| format!("cannot start {name} ({})", launch.program.display()))?;
        tracing::info!(name, pid = child.id(), log = %log.display(), "started");
        Ok(Self {
            name: name.to_string(),
            log: log.to_path_buf(),
            launch,
            child,
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the child has exited (reaping it).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// An error naming the log to read if the child has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.exit_status() {
            Some(status) => anyhow::bail!(
                "{} exited ({status}); read its log: {}",
                self.name,
                self.log.display()
            ),
            None => Ok(()),
        }
    }

    /// SIGTERM to the child's process group, then SIGKILL after `grace`. Bounded by
    /// `grace` plus one second.
    pub fn stop(&mut self, grace: Duration) {
        if self.exit_status().is_some() {
            signal_group(self.pid(), Signal::SIGKILL); // helpers left in its group
            return;
        }
        signal_group(self.pid(), Signal::SIGTERM);
        if !self.wait_for_exit(grace) {
            tracing::warn!(name = %self.name, "did not stop on SIGTERM; sending SIGKILL");
        }
        signal_group(self.pid(), Signal::SIGKILL);
        self.wait_for_exit(Duration::from_secs(1));
        tracing::info!(name = %self.name, status = ?self.exited, "stopped");
    }

    fn wait_for_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.exit_status().is_some() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Told each new child's pid and name.
type OnStart = Box<dyn Fn(u32, &str) + Send + Sync>;

/// The supervisor's children in start order; stopped in reverse order.
pub struct Children {
    list: std::sync::Mutex<Vec<Supervised>>,
    on_start: OnStart,
}

impl Children {
    /// `on_start` is told each new child's pid and name (to record it for crash cleanup).
    pub fn new(on_start: impl Fn(u32, &str) + Send + Sync + 'static) -> Self {
        Self {
            list: std::sync::Mutex::new(Vec::new()),
            on_start: Box::new(on_start),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Supervised>> {
        self.list
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn start(&self, name: &str, program: &Path, args: &[String], log: &Path) -> Result<u32> {
        self.launch(name, Launch::new(program, args), log)
    }

    pub fn launch(&self, name: &str, launch: Launch, log: &Path) -> Result<u32> {
        let child = Supervised::launch(name, launch, log)?;
        let pid = child.pid();
        (self.on_start)(pid, name);
        self.lock().push(child);
        Ok(pid)
    }

    /// Stops the child named `name` (SIGTERM, SIGKILL after `grace`) and starts it again with
    /// the same program, arguments and log file; returns the new pid. Used by tests that need a
    /// component to go away and come back (e.g. kube-apiserver) while the run goes on.
    pub fn restart(&self, name: &str, grace: Duration) -> Result<u32> {
        let mut list = self.lock();
        let child = list
            .iter_mut()
            .find(|child| child.name == name)
            .with_context(|| format!("no child named {name}"))?;
        child.stop(grace);
        let fresh = Supervised::launch(&child.name, child.launch.clone(), &child.log)?;
        let pid = fresh.pid();
        *child = fresh;
        drop(list);
        (self.on_start)(pid, name);
        Ok(pid)
    }

    /// Stops the child named `name` for good and forgets it (it no longer fails the run).
    pub fn stop_one(&self, name: &str, grace: Duration) -> Result<()> {
        let mut list = self.lock();
        let index = list
            .iter()
            .position(|child| child.name == name)
            .with_context(|| format!("no child named {name}"))?;
        let mut child = list.remove(index);
        drop(list);
        child.stop(grace);
        Ok(())
    }

    /// An error naming the log of the first child that has exited, if any.
    pub fn ensure_running(&self) -> Result<()> {
        self.lock()
            .iter_mut()
            .try_for_each(Supervised::ensure_running)
    }

    /// Stops all children in reverse start order; `grace` gives each one's SIGTERM grace.
    pub fn stop_all(&self, grace: impl Fn(&str) -> Duration) {
        let mut children = std::mem::take(&mut *self.lock());
        while let Some(mut child) = children.pop() {
            child.stop(grace(&child.name));
        }
    }
}

fn signal_group(pid: u32, signal: Signal) {
    let pid = Pid::from_raw(pid as i32);
    if killpg(pid, signal).is_err() {
        let _ = kill(pid, signal);
    }
}

/// Whether `pid` names a live process (a zombie counts as gone).
pub fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_field(&stat, 3).is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat), which
/// together with the pid identifies a process across pid reuse.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_field(&stat, 22)?.parse().ok()
}

/// Field `n` (1-based, as in proc(5)) of a /proc/PID/stat line; the command name in field 2 may
/// contain spaces and parentheses, so fields are counted after its closing parenthesis.
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n.checked_sub(3)?)
}

/// Kills a process recorded earlier (by a dead run), unless its pid now names another process.
pub fn kill_recorded(pid: i32, recorded_start: u64) {
    if start_time(pid) == Some(recorded_start) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 777 1000";
        assert_eq!(stat_field(stat, 3), Some("S"));
        assert_eq!(stat_field(stat, 4), Some("1"));
        assert_eq!(stat_field(stat, 22), Some("777"));
    }

    #[test]
    fn own_process_is_alive_with_a_start_time() {
        let me = std::process::id() as i32;
        assert!(is_alive(me));
        assert!(start_time(me).is_some());
    }

    #[test]
    fn guarded_child_is_stopped() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("testbed-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let log = dir.join("sleep.log");
        let mut child = Supervised::start("sleep", Path::new("sleep"), &["30".into()], &log)?;
        assert!(child.ensure_running().is_ok());
        child.stop(Duration::from_secs(2));
        assert!(child.exit_status().is_some());
        assert!(child.ensure_running().is_err());
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn restart_replaces_the_child_with_the_same_command() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("testbed-restart-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let log = dir.join("sleep.log");
        let children = Children::new(|_, _| {});
        let first = children.start("sleep", Path::new("sleep"), &["30".into()], &log)?;
        let second = children.restart("sleep", Duration::from_secs(2))?;
        assert_ne!(first, second);
        assert!(!is_alive(first as i32), "old child still runs");
        assert!(is_alive(second as i32));
        assert!(children.ensure_running().is_ok());
        assert!(children.restart("nothing", Duration::from_secs(1)).is_err());
        children.stop_all(|_| Duration::from_secs(2));
        assert!(!is_alive(second as i32));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
