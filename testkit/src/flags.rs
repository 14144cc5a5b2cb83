//! The command lines of `berth server`, `agent`, `scheduler` and `dev`, as
//! types: a test says what it wants (`no_scheduler: true`), and only this
//! file knows how the flag is spelt. Unset fields leave Berth's defaults.

use std::path::PathBuf;
use std::time::Duration;

fn duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Appends `--flag value` when `value` is set.
fn opt<T>(args: &mut Vec<String>, flag: &str, value: &Option<T>, show: impl Fn(&T) -> String) {
    if let Some(v) = value {
        args.push(flag.into());
        args.push(show(v));
    }
}

fn switch(args: &mut Vec<String>, flag: &str, on: bool) {
    if on {
        args.push(flag.into());
    }
}

/// What every controller of a cluster is started with, beside its own id,
/// addresses, data dir and membership (which [`crate::Cluster`] gives).
#[derive(Clone, Debug, Default)]
pub struct ServerFlags {
    pub no_scheduler: bool,
    pub no_reconcilers: bool,
    pub node_grace_period: Option<Duration>,
    pub pod_eviction_timeout: Option<Duration>,
    pub watch_history: Option<usize>,
    pub snapshot_logs: Option<u64>,
    pub logs_to_keep: Option<u64>,
    pub request_timeout: Option<Duration>,
    pub unsafe_stale_reads: bool,
    /// `--insecure`: plain TCP and no authorization (benchmarks only).
    pub insecure: bool,
    /// `--cert-ttl`: short in renewal tests.
    pub cert_ttl: Option<Duration>,
    /// Flags a user handed through as they are (`berth bench failover`'s
    /// `--server-arg`).
    pub passthrough: Vec<String>,
}

/// How a controller becomes a member.
#[derive(Clone, Debug)]
pub enum Membership {
    /// `--peers 1=ADDR,...`: one of the first voters.
    Peers(Vec<(u64, String)>),
    /// `--join ADDR`: added to the cluster ADDR belongs to.
    Join(String),
}

/// One `berth server` command line.
#[derive(Clone, Debug)]
pub struct ServerCommand {
    pub id: u64,
    pub listen: String,
    pub metrics_listen: Option<String>,
    pub data_dir: PathBuf,
    pub membership: Membership,
    /// `--token`: the shared bootstrap secret, or a join token.
    pub token: Option<String>,
    pub flags: ServerFlags,
}

impl ServerCommand {
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "server".into(),
            "--id".into(),
            self.id.to_string(),
            "--listen".into(),
            self.listen.clone(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
        ];
        opt(
            &mut args,
            "--metrics-listen",
            &self.metrics_listen,
            String::clone,
        );
        match &self.membership {
            Membership::Peers(peers) => {
                let list: Vec<String> = peers.iter().map(|(id, a)| format!("{id}={a}")).collect();
                args.extend(["--peers".into(), list.join(",")]);
            }
            Membership::Join(via) => args.extend(["--join".into(), via.clone()]),
        }
        let f = &self.flags;
        switch(&mut args, "--no-scheduler", f.no_scheduler);
        switch(&mut args, "--no-reconcilers", f.no_reconcilers);
        opt(
            &mut args,
            "--node-grace-period",
            &f.node_grace_period,
            |d| duration(*d),
        );
        opt(
            &mut args,
            "--pod-eviction-timeout",
            &f.pod_eviction_timeout,
            |d| duration(*d),
        );
        opt(
            &mut args,
            "--watch-history",
            &f.watch_history,
            usize::to_string,
        );
        opt(
            &mut args,
            "--snapshot-logs",
            &f.snapshot_logs,
            u64::to_string,
        );
        opt(&mut args, "--logs-to-keep", &f.logs_to_keep, u64::to_string);
        opt(&mut args, "--request-timeout", &f.request_timeout, |d| {
            duration(*d)
        });
        switch(&mut args, "--unsafe-stale-reads", f.unsafe_stale_reads);
        switch(&mut args, "--insecure", f.insecure);
        opt(&mut args, "--cert-ttl", &f.cert_ttl, |d| duration(*d));
        opt(&mut args, "--token", &self.token, String::clone);
        args.extend(f.passthrough.iter().cloned());
        args
    }
}

/// A node agent's runtime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Runtime {
    #[default]
    Process,
    Docker,
    Sim,
}

impl Runtime {
    fn flag(self) -> &'static str {
        match self {
            Runtime::Process => "process",
            Runtime::Docker => "docker",
            Runtime::Sim => "sim",
        }
    }
}

/// Pod networking of an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// Pods share the node's network (tests that must not touch the host's
    /// network use it).
    Host,
    /// Each pod gets a network namespace and an address on the node's
    /// bridge.
    Bridge,
}

impl Network {
    fn flag(self) -> &'static str {
        match self {
            Network::Host => "host",
            Network::Bridge => "bridge",
        }
    }
}

/// One `berth agent` command line.
#[derive(Clone, Debug, Default)]
pub struct AgentFlags {
    pub servers: Vec<String>,
    pub data_dir: PathBuf,
    /// The node's name (one agent).
    pub name: Option<String>,
    /// Simulated nodes: `--count` of them named `--name-prefix` + index.
    pub sim_nodes: Option<(String, u32)>,
    pub address: Option<String>,
    pub cpu: Option<String>,
    pub memory: Option<String>,
    pub max_pods: Option<u32>,
    pub runtime: Runtime,
    pub network: Option<Network>,
    /// `--dns-upstream`; `none` for no resolver outside the cluster.
    pub dns_upstream: Option<String>,
    pub pause_image: Option<String>,
    pub lease_interval: Option<Duration>,
    pub status_interval: Option<Duration>,
    pub crash_backoff: Option<Duration>,
    pub crash_backoff_max: Option<Duration>,
    pub volume_sync_interval: Option<Duration>,
    pub sim_start_delay: Option<Duration>,
    /// Its log filter (`BERTH_LOG`), when not Berth's default.
    pub log: Option<String>,
    /// A join token for its first start.
    pub token: Option<String>,
    pub insecure: bool,
}

impl AgentFlags {
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--server".into(),
            self.servers.join(","),
            "agent".into(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--runtime".into(),
            self.runtime.flag().into(),
        ];
        opt(&mut args, "--name", &self.name, String::clone);
        opt(&mut args, "--token", &self.token, String::clone);
        switch(&mut args, "--insecure", self.insecure);
        if let Some((prefix, count)) = &self.sim_nodes {
            args.extend([
                "--name-prefix".into(),
                prefix.clone(),
                "--count".into(),
                count.to_string(),
            ]);
        }
        opt(&mut args, "--address", &self.address, String::clone);
        opt(&mut args, "--cpu", &self.cpu, String::clone);
        opt(&mut args, "--memory", &self.memory, String::clone);
        opt(&mut args, "--max-pods", &self.max_pods, u32::to_string);
        opt(&mut args, "--network", &self.network, |n| n.flag().into());
        opt(
            &mut args,
            "--dns-upstream",
            &self.dns_upstream,
            String::clone,
        );
        opt(&mut args, "--pause-image", &self.pause_image, String::clone);
        opt(&mut args, "--lease-interval", &self.lease_interval, |d| {
            duration(*d)
        });
        opt(&mut args, "--status-interval", &self.status_interval, |d| {
            duration(*d)
        });
        opt(&mut args, "--crash-backoff", &self.crash_backoff, |d| {
            duration(*d)
        });
        opt(
            &mut args,
            "--crash-backoff-max",
            &self.crash_backoff_max,
            |d| duration(*d),
        );
        opt(
            &mut args,
            "--volume-sync-interval",
            &self.volume_sync_interval,
            |d| duration(*d),
        );
        opt(&mut args, "--sim-start-delay", &self.sim_start_delay, |d| {
            duration(*d)
        });
        args
    }
}

/// One standalone `berth scheduler` command line.
#[derive(Clone, Debug, Default)]
pub struct SchedulerFlags {
    pub servers: Vec<String>,
    pub id: Option<String>,
    pub metrics_listen: Option<String>,
    pub lease_duration: Option<Duration>,
    pub renew_interval: Option<Duration>,
    /// Schedules without the lease (fencing tests: two active at once).
    pub force_active: bool,
    /// Its credentials (`--config`); None with `insecure`.
    pub credentials: Option<PathBuf>,
    pub insecure: bool,
}

impl SchedulerFlags {
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--server".into(),
            self.servers.join(","),
            "scheduler".into(),
        ];
        opt(&mut args, "--config", &self.credentials, |p| {
            p.display().to_string()
        });
        switch(&mut args, "--insecure", self.insecure);
        opt(&mut args, "--id", &self.id, String::clone);
        opt(
            &mut args,
            "--metrics-listen",
            &self.metrics_listen,
            String::clone,
        );
        opt(&mut args, "--lease-duration", &self.lease_duration, |d| {
            duration(*d)
        });
        opt(&mut args, "--renew-interval", &self.renew_interval, |d| {
            duration(*d)
        });
        switch(&mut args, "--force-active", self.force_active);
        args
    }
}

/// One `berth dev` command line.
#[derive(Clone, Debug, Default)]
pub struct DevFlags {
    pub data_dir: PathBuf,
    pub controllers: Option<u64>,
    /// The first controller's port; the others follow.
    pub port_base: Option<u16>,
    pub agents: Option<u32>,
    pub runtime: Option<Runtime>,
    pub network: Option<Network>,
    pub apply: Vec<PathBuf>,
}

impl DevFlags {
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "dev".into(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
        ];
        opt(
            &mut args,
            "--controllers",
            &self.controllers,
            u64::to_string,
        );
        opt(&mut args, "--port-base", &self.port_base, u16::to_string);
        opt(&mut args, "--agents", &self.agents, u32::to_string);
        opt(&mut args, "--runtime", &self.runtime, |r| r.flag().into());
        opt(&mut args, "--network", &self.network, |n| n.flag().into());
        for file in &self.apply {
            args.extend(["--apply".into(), file.display().to_string()]);
        }
        args
    }

    /// The addresses its controllers listen on.
    pub fn addrs(&self) -> Vec<String> {
        let base = self.port_base.unwrap_or(7001);
        (0..self.controllers.unwrap_or(3) as u16)
            .map(|i| format!("127.0.0.1:{}", base + i))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_flags_are_left_out_and_set_ones_spelt_as_berth_parses_them() {
        let cmd = ServerCommand {
            id: 2,
            listen: "127.0.0.1:1".into(),
            metrics_listen: Some("127.0.0.1:2".into()),
            data_dir: "/d".into(),
            token: None,
            membership: Membership::Peers(vec![(1, "a:1".into()), (2, "b:2".into())]),
            flags: ServerFlags {
                no_scheduler: true,
                node_grace_period: Some(Duration::from_millis(1500)),
                ..Default::default()
            },
        };
        assert_eq!(
            cmd.args().join(" "),
            "server --id 2 --listen 127.0.0.1:1 --data-dir /d --metrics-listen 127.0.0.1:2 \
             --peers 1=a:1,2=b:2 --no-scheduler --node-grace-period 1s 500ms"
        );
        let agent = AgentFlags {
            servers: vec!["a:1".into(), "b:2".into()],
            data_dir: "/a".into(),
            name: Some("n1".into()),
            network: Some(Network::Host),
            ..Default::default()
        };
        assert_eq!(
            agent.args().join(" "),
            "--server a:1,b:2 agent --data-dir /a --runtime process --name n1 --network host"
        );
    }
}
