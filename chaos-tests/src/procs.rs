//! The `berth` processes of a run, each started inside its member's network
//! namespace (`nsenter --net`, which execs in place: the child's pid is
//! berth's, so signals reach it), with its output appended to a log file.

use std::path::Path;
use std::path::PathBuf;
use std::process::Stdio;

use nix::sys::signal::kill;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::process::Command;

use crate::fabric::Member;

pub struct Proc {
    pub name: String,
    pub member: Member,
    binary: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Proc {
    pub fn new(
        name: &str,
        member: Member,
        binary: &Path,
        args: Vec<String>,
        log_dir: &Path,
    ) -> Self {
        Self {
            name: name.to_string(),
            member,
            binary: binary.to_path_buf(),
            args,
            log: log_dir.join(format!("{name}.log")),
            child: None,
            paused: false,
        }
    }

    pub fn start(&mut self) -> std::io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.member.netns_path().display()))
            .arg("--")
            .arg(&self.binary)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    fn pid(&self) -> Option<Pid> {
        self.child.as_ref()?.id().map(|p| Pid::from_raw(p as i32))
    }

    /// SIGKILL, and reap.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        self.paused = false;
    }

    pub fn pause(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, Signal::SIGSTOP);
            self.paused = true;
        }
    }

    pub fn resume(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, Signal::SIGCONT);
        }
        self.paused = false;
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A stopped process dies of SIGKILL only once continued.
        self.resume();
    }
}
