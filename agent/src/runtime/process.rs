//! The `process` runtime: a container is its command, run on the host in
//! a process group of its own, in a cgroup with its cpu and memory limits,
//! its output appended to a file under the data dir. The image field is not
//! used. Each instance is watched over by a shim (see `shim`), so the
//! agent can stop and start again while its workloads keep running.
//!
//! On disk, under `<data-dir>/pods`:
//! `<pod uid>/pod.json` (which pod) and
//! `<pod uid>/<container>/<attempt>/` (the shim's files and the log).

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use nix::sys::signal::kill;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;

use super::cgroup::Cgroups;
use super::cgroup::Limits;
use super::log_format;
use super::shim;
use super::shim::ExitRecord;
use super::shim::Launch;
use super::shim::PidRecord;
use super::ContainerSpec;
use super::Exit;
use super::Instance;
use super::InstanceState;
use super::LogOptions;
use super::LogStream;
use super::PodRef;
use super::Runtime;
use super::RuntimeError;

const POD_FILE: &str = "pod.json";
/// The shim's pid and start time, written by the driver right after it
/// spawned the shim.
const SHIM_FILE: &str = "shim";
/// An instance with no pid file yet is still starting for this long; then
/// its start is taken as failed.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// After SIGKILL, how long `stop` waits for the shim to record the exit.
const KILL_WAIT: Duration = Duration::from_secs(5);

pub struct ProcessRuntime {
    node: String,
    pods_dir: PathBuf,
    /// The `berth` binary, run as `berth agent-shim DIR`.
    shim_program: PathBuf,
    cgroups: Option<Cgroups>,
}

impl ProcessRuntime {
    pub fn new(
        node: &str,
        data_dir: &Path,
        shim_program: PathBuf,
        cgroups: Option<Cgroups>,
    ) -> io::Result<Self> {
        let pods_dir = data_dir.join("pods");
        fs::create_dir_all(&pods_dir)?;
        Ok(Self {
            node: node.to_string(),
            pods_dir,
            shim_program,
            cgroups,
        })
    }

    fn pod_dir(&self, pod: &PodRef) -> PathBuf {
        self.pods_dir.join(safe(&pod.uid))
    }

    fn instance_dir(&self, pod: &PodRef, container: &str, attempt: u32) -> PathBuf {
        self.pod_dir(pod)
            .join(safe(container))
            .join(attempt.to_string())
    }

    fn pod_group(&self, pod: &PodRef) -> PathBuf {
        Path::new(&safe(&self.node)).join(safe(&pod.uid))
    }

    fn container_group(&self, pod: &PodRef, container: &str) -> PathBuf {
        self.pod_group(pod).join(safe(container))
    }

    /// Kills whatever is left in the container's cgroup.
    fn kill_group_members(&self, pod: &PodRef, container: &str) {
        if let Some(cg) = &self.cgroups {
            for pid in cg.pids(&self.container_group(pod, container)) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }

    fn launch(&self, spec: &ContainerSpec) -> Result<Launch, RuntimeError> {
        let mut launch = Launch {
            argv: spec.command.iter().chain(&spec.args).cloned().collect(),
            env: spec.env.clone(),
            working_dir: spec.working_dir.clone(),
            cgroup_procs: Vec::new(),
            oom_events: None,
            grace_period_secs: spec.grace_period.as_secs(),
            network: spec.network.clone(),
            mounts: spec.mounts.clone(),
            security: spec.security.clone(),
        };
        if let Some(cg) = &self.cgroups {
            let group = self.container_group(&spec.pod, &spec.container);
            // A process of an earlier attempt that outlived its main
            // process must not share the new attempt's memory limit.
            self.kill_group_members(&spec.pod, &spec.container);
            let limits = Limits {
                cpu_limit_millis: spec.cpu_limit_millis,
                cpu_request_millis: spec.cpu_request_millis,
                memory_limit_bytes: spec.memory_limit_bytes,
            };
            cg.create(&group, limits).map_err(|e| RuntimeError::Start {
                reason: "StartError".into(),
                message: format!("cannot set up the container's cgroup: {e}"),
            })?;
            launch.cgroup_procs = cg.procs_files(&group);
            launch.oom_events = Some(match cg {
                Cgroups::V1 { memory, .. } => memory.join(&group).join("memory.oom_control"),
                Cgroups::V2 { root } => root.join(&group).join("memory.events"),
            });
        }
        Ok(launch)
    }

    fn read_instance(&self, pod: &PodRef, container: &str, attempt: u32, dir: &Path) -> Instance {
        Instance {
            pod: pod.clone(),
            container: container.to_string(),
            attempt,
            id: format!("process://{}/{}/{}", pod.uid, container, attempt),
            image: String::new(),
            image_id: String::new(),
            state: instance_state(dir),
            labels: Default::default(),
        }
    }

    /// Sends `signal` to the instance's process group, if it still runs.
    fn signal(&self, dir: &Path, signal: Signal) -> bool {
        match read_pid(dir) {
            Some(p) if p.is_alive() => {
                let _ = kill(Pid::from_raw(-p.pid), signal);
                true
            }
            _ => false,
        }
    }
}

/// What the process runtime cannot do of a container's securityContext is
/// refused by name, not ignored: its containers run on the node's own
/// root, and a process that is not root keeps no capabilities at exec.
fn check_security(spec: &ContainerSpec) -> Result<(), RuntimeError> {
    let s = &spec.security;
    let refuse = |what: &str, why: &str| {
        Err(RuntimeError::Start {
            reason: crate::pods::env::CONFIG_ERROR.into(),
            message: format!("{what} needs the docker runtime: the process runtime {why}"),
        })
    };
    const NO_CAPS: &str = "cannot give capabilities to a process that is not root";
    // Without runAsUser, the process runs as the agent does.
    let agent_uid = || fs::metadata("/proc/self").map_or(0, |m| m.uid());
    let uid = s.user.unwrap_or_else(agent_uid);
    if s.read_only_root {
        return refuse(
            "readOnlyRootFilesystem",
            "runs containers on the node's own root",
        );
    }
    if uid != 0 && !s.add.is_empty() {
        return refuse("capabilities.add with runAsUser", NO_CAPS);
    }
    if uid != 0 && s.privileged {
        return refuse("privileged with runAsUser", NO_CAPS);
    }
    if s.non_root && uid == 0 {
        return Err(super::runs_as_root(&spec.pod, &spec.container));
    }
    Ok(())
}

/// The container processes still running under an agent's `data_dir`
/// (for tools that clean up after an agent: tests, benchmarks).
pub fn running_processes(data_dir: &Path) -> Vec<PidRecord> {
    let children = |p: &Path| {
        fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    for pod in children(&data_dir.join("pods")) {
        for container in children(&pod) {
            for attempt in children(&container) {
                out.extend(read_pid(&attempt).filter(PidRecord::is_alive));
            }
        }
    }
    out
}

/// Pod uids and container names are checked by the API; this keeps a path
/// component a path component whatever reaches the driver.
pub(crate) fn safe(name: &str) -> String {
    name.replace(['/', '\0'], "_").replace("..", "__")
}

fn read_pid(dir: &Path) -> Option<PidRecord> {
    PidRecord::parse(&fs::read_to_string(dir.join(shim::PID_FILE)).ok()?)
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn instance_state(dir: &Path) -> InstanceState {
    if let Some(exit) = fs::read(dir.join(shim::EXIT_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<ExitRecord>(&b).ok())
    {
        return InstanceState::Exited(Exit {
            exit_code: exit.exit_code,
            signal: exit.signal,
            oom_killed: exit.oom_killed,
            start_error: exit.start_error.map(|m| ("StartError".to_string(), m)),
            started_at: exit.started_at_ms.map(from_ms),
            finished_at: from_ms(exit.finished_at_ms),
        });
    }
    let shim_alive = fs::read_to_string(dir.join(SHIM_FILE))
        .ok()
        .and_then(|t| PidRecord::parse(&t))
        .is_some_and(|p| p.is_alive());
    match read_pid(dir) {
        Some(p) if p.is_alive() || shim_alive => InstanceState::Running {
            started_at: from_ms(p.started_at_ms),
        },
        Some(p) => lost(Some(from_ms(p.started_at_ms))),
        None => {
            // A listing may find the directory a moment before its launch
            // file is written: the directory is as young as the start.
            let launched = fs::metadata(dir.join(shim::LAUNCH_FILE))
                .or_else(|_| fs::metadata(dir))
                .and_then(|m| m.modified())
                .unwrap_or(UNIX_EPOCH);
            let young = launched.elapsed().unwrap_or_default() < START_TIMEOUT;
            if shim_alive || young {
                InstanceState::Creating
            } else {
                InstanceState::Exited(Exit {
                    start_error: Some((
                        "StartError".into(),
                        "the container's shim ended before starting it".into(),
                    )),
                    ..unknown_exit()
                })
            }
        }
    }
}

fn unknown_exit() -> Exit {
    Exit {
        exit_code: 255,
        signal: None,
        oom_killed: false,
        start_error: None,
        started_at: None,
        finished_at: SystemTime::now(),
    }
}

/// A process that is gone with nobody left to record how it ended (its
/// shim was killed too).
fn lost(started_at: Option<SystemTime>) -> InstanceState {
    InstanceState::Exited(Exit {
        exit_code: 255,
        start_error: Some((
            "Unknown".into(),
            "the process ended while nothing watched it (its shim was killed); the exit code is unknown"
                .into(),
        )),
        started_at,
        ..unknown_exit()
    })
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn version(&self) -> String {
        let cg = self.cgroups.as_ref().map_or("no-cgroups", |c| c.version());
        format!("process://{}-cgroup-{cg}", env!("CARGO_PKG_VERSION"))
    }

    async fn create_sandbox(
        &self,
        pod: &PodRef,
        _network: bool,
    ) -> Result<Option<PathBuf>, RuntimeError> {
        let dir = self.pod_dir(pod);
        fs::create_dir_all(&dir)?;
        shim::write_atomic(
            &dir.join(POD_FILE),
            &serde_json::to_vec(pod).map_err(|e| RuntimeError::Other(e.to_string()))?,
        )?;
        Ok(None)
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        check_security(spec)?;
        if !self.pod_dir(&spec.pod).join(POD_FILE).exists() {
            self.create_sandbox(&spec.pod, false).await?;
        }
        let launch = self.launch(spec)?;
        let dir = self.instance_dir(&spec.pod, &spec.container, spec.attempt);
        if dir.exists() {
            // Left by a start that did not finish: begin afresh.
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir)?;
        let bytes = serde_json::to_vec(&launch).map_err(|e| RuntimeError::Other(e.to_string()))?;
        shim::write_atomic(&dir.join(shim::LAUNCH_FILE), &bytes)?;
        let child = tokio::process::Command::new(&self.shim_program)
            .arg("agent-shim")
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(fs::File::create(dir.join("shim.log"))?)
            .spawn()
            .map_err(|e| RuntimeError::Start {
                reason: "StartError".into(),
                message: format!("cannot run the shim {}: {e}", self.shim_program.display()),
            })?;
        if let Some(pid) = child.id().map(|p| p as i32) {
            let rec = format!(
                "{} {} {}",
                pid,
                shim::start_ticks(pid).unwrap_or(0),
                shim::unix_ms(SystemTime::now())
            );
            shim::write_atomic(&dir.join(SHIM_FILE), rec.as_bytes())?;
        }
        // Dropped, the child is reaped by tokio when it exits.
        drop(child);
        // Report once the process runs (or failed to), so that a status
        // written right after shows it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut pause =
            berth_retry::Backoff::new(Duration::from_millis(1), Duration::from_millis(50)).exact();
        while !dir.join(shim::PID_FILE).exists()
            && !dir.join(shim::EXIT_FILE).exists()
            && tokio::time::Instant::now() < deadline
        {
            pause.wait().await;
        }
        Ok(())
    }

    async fn stop(
        &self,
        pod: &PodRef,
        container: &str,
        attempt: u32,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        let dir = self.instance_dir(pod, container, attempt);
        let exited = |dir: &Path| matches!(instance_state(dir), InstanceState::Exited(_));
        // One still starting gets its pid file soon; wait for it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while matches!(instance_state(&dir), InstanceState::Creating)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.signal(&dir, Signal::SIGTERM) {
            let deadline = tokio::time::Instant::now() + grace;
            while tokio::time::Instant::now() < deadline
                && read_pid(&dir).is_some_and(|p| p.is_alive())
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            self.signal(&dir, Signal::SIGKILL);
        }
        self.kill_group_members(pod, container);
        let deadline = tokio::time::Instant::now() + KILL_WAIT;
        while !exited(&dir) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Instance>, RuntimeError> {
        let mut out = Vec::new();
        for pod_entry in fs::read_dir(&self.pods_dir)?.flatten() {
            let pod_dir = pod_entry.path();
            let Some(pod) = fs::read(pod_dir.join(POD_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice::<PodRef>(&b).ok())
            else {
                continue;
            };
            for c in fs::read_dir(&pod_dir)?.flatten() {
                if !c.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let container = c.file_name().to_string_lossy().into_owned();
                for a in fs::read_dir(c.path())?.flatten() {
                    let Ok(attempt) = a.file_name().to_string_lossy().parse::<u32>() else {
                        continue;
                    };
                    out.push(self.read_instance(&pod, &container, attempt, &a.path()));
                }
            }
        }
        Ok(out)
    }

    async fn remove(
        &self,
        pod: &PodRef,
        container: &str,
        attempt: u32,
    ) -> Result<(), RuntimeError> {
        match fs::remove_dir_all(self.instance_dir(pod, container, attempt)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn remove_sandbox(&self, pod: &PodRef) -> Result<(), RuntimeError> {
        if let Some(cg) = &self.cgroups {
            let group = self.pod_group(pod);
            if let Ok(entries) = fs::read_dir(self.pod_dir(pod)) {
                for c in entries.flatten().filter(|e| e.path().is_dir()) {
                    self.kill_group_members(pod, &c.file_name().to_string_lossy());
                }
            }
            // The kernel empties a group a moment after its last kill.
            let mut tries = 0;
            while let Err(e) = cg.remove(&group) {
                tries += 1;
                if tries > 50 {
                    tracing::warn!(pod = %pod.name, error = %e, "cannot remove the pod's cgroup");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        match fs::remove_dir_all(self.pod_dir(pod)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn logs(
        &self,
        pod: &PodRef,
        container: &str,
        attempt: u32,
        options: &LogOptions,
    ) -> Result<LogStream, RuntimeError> {
        let dir = self.instance_dir(pod, container, attempt);
        let file = match tokio::fs::File::open(dir.join(shim::LOG_FILE)).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(RuntimeError::NotFound {
                    pod: pod.name.clone(),
                    container: container.into(),
                    attempt,
                })
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Box::pin(tail(file, dir, options.clone())))
    }

    async fn exec(
        &self,
        pod: &PodRef,
        container: &str,
        attempt: u32,
        argv: &[String],
        timeout: Duration,
    ) -> Result<i32, RuntimeError> {
        let dir = self.instance_dir(pod, container, attempt);
        let launch: Launch = fs::read(dir.join(shim::LAUNCH_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| RuntimeError::NotFound {
                pod: pod.name.clone(),
                container: container.into(),
                attempt,
            })?;
        let Some(program) = argv.first() else {
            return Err(RuntimeError::Other("an exec probe needs a command".into()));
        };
        let groups: Vec<fs::File> = launch
            .cgroup_procs
            .iter()
            .map(|p| fs::OpenOptions::new().write(true).open(p))
            .collect::<Result<_, _>>()?;
        let mut cmd = std::process::Command::new(program);
        cmd.args(&argv[1..])
            .env_clear()
            .env("PATH", shim::BASE_PATH)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        shim::join_cgroups(
            &mut cmd,
            groups.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect(),
        );
        let netns = match &launch.network {
            Some(n) => Some(fs::File::open(&n.netns)?),
            None => None,
        };
        // The container's own view of the files, where it has one.
        let mntns = match (&launch.network, launch.mounts.is_empty()) {
            (None, true) => None,
            _ => {
                let main = read_pid(&dir)
                    .filter(PidRecord::is_alive)
                    .ok_or_else(|| RuntimeError::Other("the container is not running".into()))?;
                Some(fs::File::open(format!("/proc/{}/ns/mnt", main.pid))?)
            }
        };
        if netns.is_some() || mntns.is_some() {
            let cwd = launch.working_dir.clone().unwrap_or_else(|| "/".into());
            let cwd = std::ffi::CString::new(cwd.into_os_string().into_encoded_bytes())
                .map_err(|e| RuntimeError::Other(format!("working directory: {e}")))?;
            let fd = |f: &Option<fs::File>| f.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
            shim::join_namespaces(&mut cmd, fd(&netns), fd(&mntns), cwd);
        }
        if let (None, Some(wd)) = (&mntns, &launch.working_dir) {
            cmd.current_dir(wd);
        }
        shim::take_identity(&mut cmd, &launch.security);
        let mut child = tokio::process::Command::from(cmd).spawn()?;
        drop(groups);
        drop((netns, mntns));
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => Ok(status?.code().unwrap_or(128)),
            Err(_) => {
                if let Some(pid) = child.id() {
                    let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
                }
                let _ = child.wait().await;
                Err(RuntimeError::Other(format!(
                    "command timed out after {}",
                    humantime::format_duration(timeout)
                )))
            }
        }
    }
}

/// A log file read as `options` asks: its records as the container's
/// output; following, new records as they are appended until the
/// instance has exited and everything is read.
fn tail(
    file: tokio::fs::File,
    dir: PathBuf,
    options: LogOptions,
) -> impl futures::Stream<Item = io::Result<bytes::Bytes>> + Send {
    let reading = Reading {
        file,
        reader: log_format::Reader::new(&options),
        caught_up: false,
        exited: false,
    };
    futures::stream::unfold(Some(reading), move |reading| {
        let (dir, follow) = (dir.clone(), options.follow);
        async move {
            let mut r = reading?;
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match r.file.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => return Some((Err(e), None)),
                };
                let out = if n > 0 {
                    r.reader.feed(&buf[..n])
                } else if !r.caught_up {
                    r.caught_up = true;
                    r.reader.caught_up()
                } else if !follow || r.exited {
                    return None;
                } else {
                    // Once it has exited, one more read: the last records
                    // may have landed between the read and the exit.
                    r.exited = matches!(instance_state(&dir), InstanceState::Exited(_));
                    if !r.exited {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    continue;
                };
                if !out.is_empty() {
                    return Some((Ok(bytes::Bytes::from(out)), Some(r)));
                }
            }
        }
    })
}

struct Reading {
    file: tokio::fs::File,
    reader: log_format::Reader,
    /// The backlog is read (and what `tail` kept is sent).
    caught_up: bool,
    exited: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A start makes the instance's directory before its launch file; a
    /// listing in between must not take the container for one whose shim
    /// died, which would end a pod with restartPolicy Never.
    #[test]
    fn an_instance_directory_without_its_launch_file_is_starting_until_it_is_old() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("0");
        fs::create_dir(&dir).unwrap();
        assert_eq!(instance_state(&dir), InstanceState::Creating);

        let long_ago = SystemTime::now() - 2 * START_TIMEOUT;
        fs::File::open(&dir)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        match instance_state(&dir) {
            InstanceState::Exited(exit) => {
                assert_eq!(exit.start_error.map(|e| e.0).as_deref(), Some("StartError"))
            }
            other => panic!("a start abandoned long ago is over, not {other:?}"),
        }
    }
}
