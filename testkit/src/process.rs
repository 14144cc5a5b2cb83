//! One supervisor for every process a test or benchmark starts: its output
//! goes to a log file (appended across restarts), it may run inside a
//! network namespace (`nsenter --net`, which execs in place: the child's
//! pid is berth's, so signals reach it), it can be paused, continued,
//! signalled and killed, and when a test panics the end of its log is
//! printed, so that a failure in CI says what the process was doing.

use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::ExitStatus;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use nix::sys::signal::kill;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Lines of a log printed when a test fails.
const TAIL_LINES: usize = 40;

pub struct Process {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    netns: Option<PathBuf>,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Process {
    /// A process (not started yet) that runs `program args`, logging to
    /// `log`.
    pub fn new(name: &str, program: &Path, args: Vec<String>, log: PathBuf) -> Self {
        Self {
            name: name.to_string(),
            program: program.to_path_buf(),
            args,
            env: Vec::new(),
            netns: None,
            log,
            child: None,
            paused: false,
        }
    }

    /// Runs it inside the network namespace at `path` (/run/netns/NAME).
    pub fn in_netns(mut self, path: &Path) -> Self {
        self.netns = Some(path.to_path_buf());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Starts it (again, after a kill).
    pub fn start(&mut self) -> std::io::Result<()> {
        if let Some(dir) = self.log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net={}", ns.display()))
                    .arg("--")
                    .arg(&self.program);
                cmd
            }
            None => Command::new(&self.program),
        };
        let child = cmd
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("start {}: {e}", self.program.display()))
            })?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// Started and not killed since (it may have exited by itself).
    pub fn is_started(&self) -> bool {
        self.child.is_some()
    }

    /// Started, and has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }

    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, signal);
        }
    }

    /// SIGSTOP: it keeps its sockets but answers nothing.
    pub fn pause(&mut self) {
        if self.child.is_some() {
            self.signal(Signal::SIGSTOP);
            self.paused = true;
        }
    }

    pub fn resume(&mut self) {
        self.signal(Signal::SIGCONT);
        self.paused = false;
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A stopped process dies of SIGKILL only once continued.
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// Waits up to `timeout` for it to exit by itself; its status, or None
    /// if it still runs (or never started).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.child.as_mut()?.try_wait().ok()?;
            if let Some(status) = status {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Prints the end of its log to stderr.
    pub fn print_log_tail(&self) {
        eprintln!(
            "--- last lines of {} ({}):\n{}",
            self.name,
            self.log.display(),
            self.log_tail(TAIL_LINES)
        );
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() && self.log.exists() {
            self.print_log_tail();
        }
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(dir: &Path, script: &str) -> Process {
        Process::new(
            "sh",
            Path::new("/bin/sh"),
            vec!["-c".into(), script.into()],
            dir.join("sh.log"),
        )
    }

    #[tokio::test]
    async fn logs_append_across_restarts_and_exits_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = shell(dir.path(), "echo out; echo err >&2; exit 3");
        p.start().unwrap();
        let status = p.wait_exit(Duration::from_secs(10)).await.unwrap();
        assert_eq!(status.code(), Some(3));
        assert!(!p.is_started());
        p.start().unwrap();
        p.wait_exit(Duration::from_secs(10)).await.unwrap();
        assert_eq!(p.log_tail(10), "out\nerr\nout\nerr");
        assert_eq!(p.log_tail(1), "err");
    }

    #[tokio::test]
    async fn a_paused_process_is_killed_and_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = shell(dir.path(), "exec sleep 60");
        p.start().unwrap();
        assert!(p.is_running());
        assert!(p.wait_exit(Duration::from_millis(200)).await.is_none());
        p.pause();
        assert!(p.is_paused());
        let pid = p.pid().unwrap();
        p.kill();
        assert!(!p.is_started() && !p.is_paused());
        assert!(kill(pid, None).is_err(), "the process is gone and reaped");
    }
}
