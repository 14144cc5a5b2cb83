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
    let options = Options {
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
        log_dir: std::env::var_os("BERTH_TEST_LOGS").map(Into::into),
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
}

impl Agent {
    pub fn start(cluster: &Cluster, root: &Path, name: &str, extra: &[&str]) -> Self {
        let mut agent = Self {
            name: name.to_string(),
            data_dir: root.join(name),
            log: root.join(format!("{name}.log")),
            addrs: cluster.addrs().join(","),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
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
        let child = Command::new(BIN)
            .args(["--server", &self.addrs, "agent", "--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--address", "127.0.0.1", "--cpu", "4", "--memory", "4Gi"])
            .args(["--lease-interval", "500ms", "--status-interval", "2s"])
            .args(["--crash-backoff", "1s", "--crash-backoff-max", "4s"])
            .args(&self.extra)
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
        if let Some(cgroups) = Cgroups::detect(Path::new("/sys/fs/cgroup")) {
            let _ = cgroups.remove(Path::new(&self.name));
        }
    }
}

/// A name no earlier run left cgroups under.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}
