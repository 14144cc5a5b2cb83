//! Node agents and standalone schedulers as real processes. An agent's
//! pods outlive it on purpose (a restarted agent adopts them), so dropping
//! a test's agent also removes what its pods left: processes, containers,
//! network namespaces and cgroups.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use berth_agent::runtime::cgroup::Cgroups;
use berth_agent::runtime::shim::PidRecord;
use nix::sys::signal::kill;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::flags::AgentFlags;
use crate::flags::Network;
use crate::flags::Runtime;
use crate::flags::SchedulerFlags;
use crate::process::Process;
use crate::Cluster;

pub struct Agent {
    pub name: String,
    pub data_dir: PathBuf,
    runtime: Runtime,
    pub process: Process,
}

impl Agent {
    /// What a test agent of node `name` runs with: the process runtime on
    /// the host's network (tests never touch the host's own), quick leases
    /// and crash back-off, room for a few pods. Data under `root/name`.
    pub fn flags(cluster: &Cluster, root: &Path, name: &str) -> AgentFlags {
        AgentFlags {
            servers: cluster.addrs(),
            data_dir: root.join(name),
            name: Some(name.into()),
            address: Some("127.0.0.1".into()),
            cpu: Some("4".into()),
            memory: Some("4Gi".into()),
            network: Some(Network::Host),
            lease_interval: Some(Duration::from_millis(500)),
            status_interval: Some(Duration::from_secs(2)),
            crash_backoff: Some(Duration::from_secs(1)),
            crash_backoff_max: Some(Duration::from_secs(4)),
            volume_sync_interval: Some(Duration::from_secs(1)),
            log: Some("info,berth_agent=debug".into()),
            insecure: cluster.is_insecure(),
            ..Default::default()
        }
    }

    /// A running agent of node `name` with [`Agent::flags`].
    pub fn start(cluster: &Cluster, root: &Path, name: &str) -> Self {
        let flags = Self::flags(cluster, root, name);
        Self::start_with(cluster, root, flags, None).expect("start berth agent")
    }

    /// A running agent of `cluster`'s binary with `flags` (one named
    /// node), inside the network namespace `netns` when given; its log is
    /// `root/NAME.log`.
    pub fn start_with(
        cluster: &Cluster,
        root: &Path,
        flags: AgentFlags,
        netns: Option<&Path>,
    ) -> std::io::Result<Self> {
        let mut flags = flags;
        let joined = flags.data_dir.join("agent.conf").exists();
        if flags.token.is_none() && !flags.insecure && !joined {
            flags.token = Some(cluster.join_token("agent"));
        }
        let name = flags.name.clone().unwrap_or_default();
        let mut process = Process::new(
            &format!("agent {name}"),
            cluster.binary(),
            flags.args(),
            root.join(format!("{name}.log")),
        );
        if let Some(filter) = &flags.log {
            process = process.env("BERTH_LOG", filter);
        }
        if let Some(ns) = netns {
            process = process.in_netns(ns);
        }
        let mut agent = Self {
            name,
            data_dir: flags.data_dir.clone(),
            runtime: flags.runtime,
            process,
        };
        agent.process.start()?;
        Ok(agent)
    }

    /// Starts it again, after a kill.
    pub fn spawn(&mut self) {
        self.process.start().expect("start berth agent");
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Every container process the agent's runtime started that still runs.
    pub fn live_processes(&self) -> Vec<PidRecord> {
        berth_agent::runtime::process::running_processes(&self.data_dir)
    }

    /// Pods that hold an address of the agent's pod network.
    pub fn pod_network_uids(&self) -> Vec<String> {
        std::fs::read_dir(self.data_dir.join("network/ips"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name() != "last")
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        // A shim the agent started just before it died records its
        // process a moment later: look again until a look finds none.
        for round in 0..20 {
            let live = self.live_processes();
            if live.is_empty() && round > 0 {
                break;
            }
            for p in live {
                let _ = kill(Pid::from_raw(-p.pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if self.runtime == Runtime::Docker {
            crate::images::remove_docker_containers(&self.name);
        }
        // Killed processes leave their namespaces and cgroups a moment
        // later.
        std::thread::sleep(Duration::from_millis(200));
        for uid in self.pod_network_uids() {
            let ns = berth_agent::network::netns::path(&berth_agent::network::netns_name(&uid));
            let _ = berth_agent::network::netns::remove(&ns);
        }
        if let Some(cgroups) = Cgroups::detect(Path::new("/sys/fs/cgroup")) {
            let _ = cgroups.remove(Path::new(&self.name));
        }
        // The tmpfs of its pods' Secret and Memory volumes.
        for node in std::fs::read_dir(self.data_dir.join("volumes"))
            .into_iter()
            .flatten()
            .flatten()
        {
            berth_agent::volumes::remove_all(&node.path());
        }
    }
}

/// A standalone `berth scheduler`, killed when dropped.
pub struct Scheduler {
    pub flags: SchedulerFlags,
    pub process: Process,
}

impl Scheduler {
    /// A running scheduler of `cluster` (its binary) with `flags` (servers and a metrics
    /// address filled in when unset); its log is `root/scheduler-ID.log`.
    pub fn start(
        cluster: &Cluster,
        root: &Path,
        mut flags: SchedulerFlags,
    ) -> std::io::Result<Self> {
        if flags.servers.is_empty() {
            flags.servers = cluster.addrs();
        }
        if cluster.is_insecure() {
            flags.insecure = true;
        } else if flags.credentials.is_none() {
            flags.credentials = Some(cluster.admin_conf());
        }
        if flags.metrics_listen.is_none() {
            flags.metrics_listen = Some(format!("127.0.0.1:{}", crate::free_port()));
        }
        let id = flags.id.clone().unwrap_or_default();
        let mut process = Process::new(
            &format!("scheduler {id}"),
            cluster.binary(),
            flags.args(),
            root.join(format!("scheduler-{id}.log")),
        )
        .env("BERTH_LOG", "info,berth_scheduler=debug");
        process.start()?;
        Ok(Self { flags, process })
    }

    /// A series of its `/metrics` (0 before it exists).
    pub async fn metric(&self, series: &str) -> f64 {
        let addr = self.flags.metrics_listen.as_deref().unwrap_or_default();
        crate::rpc::metric(addr, series).await
    }
}
