//! The process runtime's shim: `berth agent-shim DIR`, one per container
//! instance, in a session of its own. It starts the container's process,
//! waits for it and records how it ended, so that the exit code and an OOM
//! kill are known even when the agent was down at the time (only a parent
//! can collect a child's exit status, and the agent must be free to
//! restart without taking its workloads down). The files it shares with
//! the driver live in the instance's directory:
//!
//! - `launch.json`, written by the driver: what to run;
//! - `pid`, written by the shim once the process runs: its pid and kernel
//!   start time (so a recycled pid is never mistaken for it);
//! - `exit.json`, written by the shim when the process has ended.
//!
//! Everything the child needs is prepared before the fork: std builds argv
//! and envp first, the log file and the cgroup files are opened first, and
//! between fork and exec the child only makes `write` system calls. Its
//! stdout and stderr are pipes the shim copies into `output.log` as
//! records stamped with their time (`log_format`).

use std::fs;
use std::fs::File;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use super::log_format;
use super::log_format::Stream;

use serde::Deserialize;
use serde::Serialize;

pub const LAUNCH_FILE: &str = "launch.json";
pub const PID_FILE: &str = "pid";
pub const EXIT_FILE: &str = "exit.json";
pub const LOG_FILE: &str = "output.log";

/// Exit code reported when the process could not be started at all.
pub const START_ERROR_CODE: i32 = 128;

/// Environment every container process starts from; its own `env` is
/// applied on top.
pub const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Launch {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
    /// The `cgroup.procs` files of the container's group in each hierarchy.
    pub cgroup_procs: Vec<PathBuf>,
    /// The file whose `oom_kill N` line counts the group's OOM kills.
    pub oom_events: Option<PathBuf>,
    pub grace_period_secs: u64,
    /// The pod's network namespace and resolver; None: the node's.
    #[serde(default)]
    pub network: Option<super::SandboxNetwork>,
    /// The pod's volumes where this container mounts them.
    #[serde(default)]
    pub mounts: Vec<super::Mount>,
    /// Who the process runs as, what it may do.
    #[serde(default)]
    pub security: super::Security,
}

/// The empty directory, in an instance's directory, that the shim mounts
/// on while it makes the container's view (see `mounts`).
pub const SCRATCH_DIR: &str = "scratch";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExitRecord {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub start_error: Option<String>,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: u64,
}

/// The running process as the shim recorded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidRecord {
    pub pid: i32,
    pub start_ticks: u64,
    pub started_at_ms: u64,
}

impl PidRecord {
    fn render(&self) -> String {
        format!("{} {} {}\n", self.pid, self.start_ticks, self.started_at_ms)
    }

    pub fn parse(text: &str) -> Option<Self> {
        let mut it = text.split_whitespace().map(str::parse::<u64>);
        let pid = i32::try_from(it.next()?.ok()?).ok()?;
        Some(Self {
            pid,
            start_ticks: it.next()?.ok()?,
            started_at_ms: it.next()?.ok()?,
        })
    }

    /// Whether this very process (not a later one with its pid) lives.
    pub fn is_alive(&self) -> bool {
        start_ticks(self.pid) == Some(self.start_ticks)
    }
}

/// A process's start time in clock ticks since boot (field 22 of
/// /proc/PID/stat), or None when there is no such process or it is a
/// zombie.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    if fields.next()? == "Z" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Writes `data` to `path` so that readers see all of it or nothing.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, data)?;
    fs::rename(&tmp, path)
}

/// Entry point of `berth agent-shim DIR`; returns the shim's exit code.
pub fn main(dir: &Path) -> i32 {
    // Out of the agent's session and process group: signals meant for the
    // agent (a Ctrl-C, a kill of its group) do not reach the workload.
    let _ = nix::unistd::setsid();
    let launch: Launch = match fs::read(dir.join(LAUNCH_FILE))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(l) => l,
        Err(e) => {
            eprintln!("berth agent-shim: cannot read {}: {e}", dir.display());
            return 2;
        }
    };
    let record = supervise(dir, &launch);
    match serde_json::to_vec(&record).map(|b| write_atomic(&dir.join(EXIT_FILE), &b)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("berth agent-shim: cannot record the exit: {e}");
            1
        }
        Err(e) => {
            eprintln!("berth agent-shim: {e}");
            1
        }
    }
}

/// How long the output of an ended process is still copied.
const COPY_GRACE: Duration = Duration::from_secs(2);

/// Copies what the container writes to `pipe` into the log as records, a
/// line (or a part of a long one) each, stamped when it was read.
fn copy_lines(
    pipe: impl io::Read + Send + 'static,
    stream: Stream,
    log: Arc<Mutex<File>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = io::BufReader::new(pipe);
        let mut line = Vec::with_capacity(1024);
        loop {
            line.clear();
            let mut limited = io::Read::take(&mut reader, log_format::MAX_LINE as u64);
            match io::BufRead::read_until(&mut limited, b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let full = line.last() == Some(&b'\n');
            if full {
                line.pop();
            }
            let record = log_format::record(SystemTime::now(), stream, &line, !full);
            let mut file = log.lock().unwrap_or_else(|e| e.into_inner());
            if io::Write::write_all(&mut *file, &record).is_err() {
                return;
            }
        }
    })
}

fn start_error(message: String) -> ExitRecord {
    ExitRecord {
        exit_code: START_ERROR_CODE,
        signal: None,
        oom_killed: false,
        start_error: Some(message),
        started_at_ms: None,
        finished_at_ms: unix_ms(SystemTime::now()),
    }
}

fn supervise(dir: &Path, launch: &Launch) -> ExitRecord {
    let Some(program) = launch.argv.first() else {
        return start_error("the container has no command: set command (or args)".into());
    };
    let log = match OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(LOG_FILE))
    {
        Ok(f) => f,
        Err(e) => return start_error(format!("cannot open the log file: {e}")),
    };
    let groups: Vec<File> = match launch
        .cgroup_procs
        .iter()
        .map(|p| OpenOptions::new().write(true).open(p))
        .collect()
    {
        Ok(g) => g,
        Err(e) => return start_error(format!("cannot join the container's cgroup: {e}")),
    };
    if !launch.mounts.is_empty() {
        if let Err(e) = fs::create_dir_all(dir.join(SCRATCH_DIR)) {
            return start_error(format!("cannot make the container's view: {e}"));
        }
    }
    if let Err(e) = super::mounts::enter(
        launch.network.as_ref(),
        &launch.mounts,
        &dir.join(SCRATCH_DIR),
    ) {
        return start_error(format!("cannot set up the pod's network and volumes: {e}"));
    }
    let ooms_before = oom_kills(launch);
    let mut cmd = Command::new(program);
    cmd.args(&launch.argv[1..])
        .env_clear()
        .env("PATH", BASE_PATH)
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .process_group(0);
    if let Some(wd) = &launch.working_dir {
        cmd.current_dir(wd);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    join_cgroups(&mut cmd, groups.iter().map(AsRawFd::as_raw_fd).collect());
    take_identity(&mut cmd, &launch.security);
    let started = SystemTime::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return start_error(format!("cannot run {program:?}: {e}")),
    };
    drop(groups);
    let log = Arc::new(Mutex::new(log));
    let copiers = [
        child
            .stdout
            .take()
            .map(|p| copy_lines(p, Stream::Stdout, log.clone())),
        child
            .stderr
            .take()
            .map(|p| copy_lines(p, Stream::Stderr, log.clone())),
    ];
    let pid = child.id() as i32;
    let record = PidRecord {
        pid,
        start_ticks: start_ticks(pid).unwrap_or(0),
        started_at_ms: unix_ms(started),
    };
    if let Err(e) = write_atomic(&dir.join(PID_FILE), record.render().as_bytes()) {
        eprintln!("berth agent-shim: cannot record the pid: {e}");
    }
    let status = loop {
        match child.wait() {
            Ok(s) => break Some(s),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break None,
        }
    };
    // The last lines are in the log before the exit is: a reader that
    // stops at the exit misses none. A process the container left behind
    // may hold the pipes open; it is not waited for long.
    let deadline = Instant::now() + COPY_GRACE;
    while copiers.iter().flatten().any(|c| !c.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let signal = status.and_then(|s| s.signal());
    ExitRecord {
        exit_code: status
            .and_then(|s| s.code())
            .unwrap_or_else(|| 128 + signal.unwrap_or(0)),
        signal,
        oom_killed: oom_kills(launch) > ooms_before,
        start_error: None,
        started_at_ms: Some(record.started_at_ms),
        finished_at_ms: unix_ms(SystemTime::now()),
    }
}

fn oom_kills(launch: &Launch) -> u64 {
    launch
        .oom_events
        .as_ref()
        .and_then(|p| fs::read_to_string(p).ok())
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Makes the child write itself into each cgroup (`0` names the writer)
/// before it execs, so that it never runs a moment outside its limits.
/// The files were opened before the fork and close on exec.
#[allow(unsafe_code)]
pub fn join_cgroups(cmd: &mut Command, fds: Vec<RawFd>) {
    if fds.is_empty() {
        return;
    }
    // SAFETY: the closure runs between fork and exec, where only
    // async-signal-safe calls are allowed: it makes `write` system calls
    // on descriptors opened before the fork and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &fds {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Makes the child give up what `security` takes from it, then become its
/// user, before it execs (after it joined its cgroup, which needs root):
/// capabilities dropped from the bounding set (a root process regains
/// only those at exec), no_new_privs, then groups, group and user.
#[allow(unsafe_code)]
pub fn take_identity(cmd: &mut Command, security: &super::Security) {
    let drop: Vec<libc::c_ulong> = security
        .dropped()
        .into_iter()
        .map(libc::c_ulong::from)
        .collect();
    let no_new_privs = security.no_new_privs;
    let groups: Vec<libc::gid_t> = security.groups.clone();
    let (user, group) = (security.user, security.group);
    let sets_identity = security.sets_identity();
    if drop.is_empty() && !no_new_privs && !sets_identity {
        return;
    }
    // SAFETY: between fork and exec only prctl, setgroups, setgid and
    // setuid system calls run, on values made before the fork; nothing
    // allocates.
    unsafe {
        cmd.pre_exec(move || {
            for cap in &drop {
                // A capability this kernel lacks is no capability to drop.
                if libc::prctl(libc::PR_CAPBSET_DROP, *cap, 0, 0, 0) != 0
                    && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
                {
                    return Err(io::Error::last_os_error());
                }
            }
            if no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if sets_identity {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if let Some(g) = group.or(user.map(|_| 0)) {
                    if libc::setgid(g) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if let Some(u) = user {
                    if libc::setuid(u) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
            Ok(())
        });
    }
}

/// Makes the child enter a container's namespaces before it execs (an
/// exec probe): the network namespace open as `net`, the mount namespace
/// open as `mnt`, then `cwd` within it (entering a mount namespace moves
/// to its root).
#[allow(unsafe_code)]
pub fn join_namespaces(
    cmd: &mut Command,
    net: Option<RawFd>,
    mnt: Option<RawFd>,
    cwd: std::ffi::CString,
) {
    // SAFETY: between fork and exec only setns and chdir system calls run,
    // on descriptors and a string made before the fork; nothing allocates.
    unsafe {
        cmd.pre_exec(move || {
            for (fd, kind) in [(net, libc::CLONE_NEWNET), (mnt, libc::CLONE_NEWNS)] {
                if let Some(fd) = fd {
                    if libc::setns(fd, kind) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
            if mnt.is_some() && libc::chdir(cwd.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_records_round_trip_and_reject_garbage() {
        let r = PidRecord {
            pid: 42,
            start_ticks: 12345,
            started_at_ms: 1_700_000_000_000,
        };
        assert_eq!(PidRecord::parse(&r.render()), Some(r));
        assert_eq!(PidRecord::parse("42 x 1"), None);
        assert_eq!(PidRecord::parse(""), None);
    }

    #[test]
    fn our_own_start_time_is_read_and_a_recycled_pid_is_not_us() {
        let me = std::process::id() as i32;
        let ticks = start_ticks(me).expect("our own /proc entry");
        let alive = PidRecord {
            pid: me,
            start_ticks: ticks,
            started_at_ms: 0,
        };
        assert!(alive.is_alive());
        let recycled = PidRecord {
            start_ticks: ticks + 1,
            ..alive
        };
        assert!(!recycled.is_alive());
    }

    #[test]
    fn a_container_runs_as_its_security_context_says() {
        let dir = tempfile::tempdir().unwrap();
        let launch = Launch {
            argv: [
                "/bin/sh",
                "-c",
                "id -u; id -G; grep NoNewPrivs /proc/self/status",
            ]
            .map(String::from)
            .to_vec(),
            env: vec![],
            working_dir: None,
            cgroup_procs: vec![],
            oom_events: None,
            grace_period_secs: 1,
            network: None,
            mounts: vec![],
            security: super::super::Security {
                user: Some(1000),
                group: Some(3000),
                groups: vec![2000],
                no_new_privs: true,
                ..Default::default()
            },
        };
        let exit = supervise(dir.path(), &launch);
        assert_eq!((exit.exit_code, exit.start_error), (0, None));
        let log = output(dir.path());
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines[..2], ["1000", "3000 2000"], "{log}");
        assert_eq!(lines[2].split_whitespace().last(), Some("1"), "{log}");
    }

    /// The container's output, as `berth logs` shows it.
    fn output(dir: &Path) -> String {
        let log = fs::read(dir.join(LOG_FILE)).unwrap();
        let mut reader = log_format::Reader::new(&Default::default());
        String::from_utf8(reader.feed(&log)).unwrap()
    }

    #[test]
    fn a_shim_records_exit_codes_signals_and_start_errors() {
        let dir = tempfile::tempdir().unwrap();
        let run = |argv: &[&str]| {
            let launch = Launch {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                env: vec![("GREETING".into(), "hello".into())],
                working_dir: None,
                cgroup_procs: vec![],
                oom_events: None,
                grace_period_secs: 1,
                network: None,
                mounts: vec![],
                security: Default::default(),
            };
            supervise(dir.path(), &launch)
        };
        let ok = run(&["/bin/sh", "-c", "echo $GREETING; exit 3"]);
        assert_eq!((ok.exit_code, ok.signal, ok.start_error), (3, None, None));
        assert_eq!(output(dir.path()), "hello\n");
        let pid = PidRecord::parse(&fs::read_to_string(dir.path().join(PID_FILE)).unwrap());
        assert!(pid.is_some_and(|p| !p.is_alive()));
        let killed = run(&["/bin/sh", "-c", "kill -9 $$"]);
        assert_eq!((killed.exit_code, killed.signal), (137, Some(9)));
        let missing = run(&["/nonexistent/program"]);
        assert_eq!(missing.exit_code, START_ERROR_CODE);
        assert!(missing
            .start_error
            .unwrap()
            .contains("/nonexistent/program"));
    }
}
