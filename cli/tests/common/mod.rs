//! Helpers the end-to-end test binaries share: a three-controller cluster
//! ready for objects, requests, and waiting for a condition.

#![allow(dead_code)]

use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use berth::harness::Cluster;
use berth::harness::Options;
use berth::objects::ClientKind;
use berth_agent::runtime::cgroup::Cgroups;
use berth_agent::runtime::shim::PidRecord;
use berth_api::pb;
use nix::sys::signal::kill;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_berth");

/// Three controllers with `extra` flags, once they have a leader and their
/// built-in namespaces.
pub async fn start(root: &Path, extra: &[&str]) -> Cluster {
    start_on(root, extra, None).await
}

/// `start`, the controllers listening on `host` (127.0.0.1 when None).
pub async fn start_on(root: &Path, extra: &[&str], host: Option<&str>) -> Cluster {
    let options = Options {
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
        log_dir: std::env::var_os("BERTH_TEST_LOGS").map(Into::into),
        host: host.map(Into::into),
    };
    let cluster = Cluster::start(BIN.as_ref(), root, 3, options);
    cluster
        .wait_for_leader(&[1, 2, 3], Duration::from_secs(20))
        .await
        .expect("a leader");
    let ch = channel(&cluster).await;
    eventually(
        "namespace berth-system exists",
        Duration::from_secs(20),
        || {
            let ch = ch.clone();
            async move {
                pb::Namespace::get(ch, get_req("", "berth-system"))
                    .await
                    .is_ok()
            }
        },
    )
    .await;
    cluster
}

pub async fn channel(cluster: &Cluster) -> Channel {
    berth::client::connect(&cluster.addrs())
        .await
        .expect("connect")
        .1
}

pub fn get_req(ns: &str, name: &str) -> pb::GetRequest {
    pb::GetRequest {
        namespace: ns.into(),
        name: name.into(),
        serializable: false,
    }
}

/// Polls `check` every 100 ms until it holds; panics after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `berth agent` (process runtime unless `extra` says otherwise).
/// Dropping it kills the agent and every process or container its pods
/// still run, and removes its cgroups.
pub struct Agent {
    pub name: String,
    pub data_dir: PathBuf,
    log: PathBuf,
    addrs: String,
    extra: Vec<String>,
    child: Option<Child>,
    /// The network namespace the agent runs in (the host's when None).
    netns: Option<PathBuf>,
    address: String,
}

impl Agent {
    pub fn start(cluster: &Cluster, root: &Path, name: &str, extra: &[&str]) -> Self {
        Self::start_in(cluster, root, name, None, "127.0.0.1", extra)
    }

    /// An agent inside the network namespace `netns`, its node address
    /// `address`.
    pub fn start_in(
        cluster: &Cluster,
        root: &Path,
        name: &str,
        netns: Option<&Path>,
        address: &str,
        extra: &[&str],
    ) -> Self {
        let mut agent = Self {
            name: name.to_string(),
            data_dir: root.join(name),
            log: root.join(format!("{name}.log")),
            addrs: cluster.addrs().join(","),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            netns: netns.map(Path::to_path_buf),
            address: address.to_string(),
        };
        agent.spawn();
        agent
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("--").arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = cmd
            .args(["--server", &self.addrs, "agent", "--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--address", &self.address, "--cpu", "4", "--memory", "4Gi"])
            .args(["--lease-interval", "500ms", "--status-interval", "2s"])
            .args(["--crash-backoff", "1s", "--crash-backoff-max", "4s"])
            .args(&self.extra)
            // Tests never touch the host's own network.
            .args(if self.extra.iter().any(|a| a == "--network") {
                &[][..]
            } else {
                &["--network", "host"][..]
            })
            .env("BERTH_LOG", "info,berth_agent=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start berth agent");
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every container process the agent's runtime started that still runs.
    pub fn live_processes(&self) -> Vec<PidRecord> {
        berth_agent::runtime::process::running_processes(&self.data_dir)
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        for p in self.live_processes() {
            let _ = kill(Pid::from_raw(-p.pid), Signal::SIGKILL);
        }
        if self.extra.iter().any(|a| a == "docker") {
            berth::harness::remove_docker_containers(&self.name);
        }
        if std::thread::panicking() {
            eprintln!("--- agent {} log ---\n{}", self.name, self.log_tail());
        }
        std::thread::sleep(Duration::from_millis(200));
        for uid in pod_network_uids(&self.data_dir) {
            let ns = berth_agent::network::netns::path(&berth_agent::network::netns_name(&uid));
            let _ = berth_agent::network::netns::remove(&ns);
        }
        if let Some(cgroups) = Cgroups::detect(Path::new("/sys/fs/cgroup")) {
            let _ = cgroups.remove(Path::new(&self.name));
        }
    }
}

/// Pods that hold an address of the agent's pod network.
pub fn pod_network_uids(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(data_dir.join("network/ips"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name() != "last")
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect()
}

/// A name no earlier run left cgroups under.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Runs `cmd` to its end and returns its output; panics with its stderr
/// if it failed.
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
