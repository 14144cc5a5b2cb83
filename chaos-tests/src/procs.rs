//! The `berth` processes of a run: testkit's supervisor, each process
//! started inside its member's network namespace, with its output appended
//! to a log file of the run.

use std::path::Path;

use berth_testkit::Process;

use crate::fabric::Member;

pub struct Proc {
    pub name: String,
    pub member: Member,
    process: Process,
}

impl Proc {
    pub fn new(
        name: &str,
        member: Member,
        binary: &Path,
        args: Vec<String>,
        log_dir: &Path,
    ) -> Self {
        let log = log_dir.join(format!("{name}.log"));
        let process = Process::new(name, binary, args, log).in_netns(&member.netns_path());
        Self {
            name: name.to_string(),
            member,
            process,
        }
    }

    pub fn start(&mut self) -> std::io::Result<()> {
        self.process.start()
    }

    /// Started and not killed since.
    pub fn is_running(&self) -> bool {
        self.process.is_started()
    }

    pub fn is_paused(&self) -> bool {
        self.process.is_paused()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    pub fn pause(&mut self) {
        self.process.pause();
    }

    pub fn resume(&mut self) {
        self.process.resume();
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}
