//! `berth agent`: flags to a node agent (or, with the sim runtime and
//! `--count`, many), and `berth agent-shim`, the process runtime's
//! per-container supervisor.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use anyhow::Context;
use berth_agent::http::AgentLogs;
use berth_agent::runtime::cgroup::Cgroups;
use berth_agent::runtime::process::ProcessRuntime;
use berth_agent::runtime::sim::SimRuntime;
use berth_agent::NodeConfig;
use berth_agent::PodIndex;
use berth_agent::Runtime;
use berth_client::connect::Connector;
use clap::Args;
use clap::ValueEnum;
use tokio::net::TcpListener;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    Process,
    Docker,
    Sim,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NetworkMode {
    Bridge,
    Host,
}

#[derive(Args)]
pub struct AgentArgs {
    /// The node's name (default: the host's name).
    #[arg(long)]
    name: Option<String>,
    /// Where the agent keeps its state and the containers' logs.
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, value_enum, default_value = "process")]
    runtime: RuntimeKind,
    /// Pod networking: `bridge` gives each pod its own network namespace
    /// and address from the node's pod CIDR (default when run as root with
    /// the process or docker runtime); `host` runs pods in the node's
    /// network.
    #[arg(long, value_enum)]
    network: Option<NetworkMode>,
    /// The cluster's pod CIDR (as given to the controllers); traffic from
    /// pods leaving it is masqueraded.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: ipnet::Ipv4Net,
    /// The controllers' --service-cidr: routed into the service rules.
    #[arg(long, default_value = "10.96.0.0/16")]
    service_cidr: ipnet::Ipv4Net,
    /// Service names are NAME.NAMESPACE.svc.DOMAIN.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Resolvers for names outside the cluster domain, IP[:PORT],... or
    /// `none` (default: the nameservers of this host's /etc/resolv.conf).
    #[arg(long, value_delimiter = ',')]
    dns_upstream: Vec<String>,
    /// Docker runtime with --network bridge: the image of the container
    /// that holds each pod's network namespace (it must run a process that
    /// waits forever; pulled if missing).
    #[arg(long, default_value = "registry.k8s.io/pause:3.10")]
    pause_image: String,
    /// CPUs offered to pods (default: the host's).
    #[arg(long)]
    cpu: Option<String>,
    /// Memory offered to pods, e.g. 8Gi (default: the host's).
    #[arg(long)]
    memory: Option<String>,
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// The node's address for clients and peers (default: the local address
    /// that reaches the first controller).
    #[arg(long)]
    address: Option<String>,
    /// Node labels, k=v,...
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Address of the agent's HTTPS port for container logs (default: the
    /// node address, a free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address for plain HTTP /metrics and /healthz (none by default).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// How often the node lease is renewed.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    lease_interval: Duration,
    /// How often the node status is refreshed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    status_interval: Duration,
    /// Wait before restarting a crashed container; doubles per crash.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    crash_backoff: Duration,
    /// Longest crash back-off.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    crash_backoff_max: Duration,
    /// How often mounted ConfigMaps, Secrets and pod fields are brought up
    /// to date in running pods, and emptyDirs checked against their
    /// sizeLimit.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    volume_sync_interval: Duration,
    /// Let containers with `securityContext.privileged` run here (every
    /// capability and device of the node); refused otherwise.
    #[arg(long)]
    allow_privileged: bool,
    /// Sim runtime only: run this many agents in this process.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Sim runtime with --count: node names are PREFIX0, PREFIX1, ...
    #[arg(long, default_value = "sim-")]
    name_prefix: String,
    /// A join token (`berth token create --role agent`), for the first
    /// start: the agent checks the cluster's CA against it, gets its node
    /// certificate and keeps it in DIR/agent.conf.
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Sim runtime: how long a container takes to start.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    sim_start_delay: Duration,
}

fn parse_labels(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .filter(|i| !i.trim().is_empty())
        .map(|i| match i.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => bail!("--labels entry {i:?} is not KEY=VALUE"),
        })
        .collect()
}

/// The local address this host uses to reach `controller` (a UDP socket
/// is connected, which sends nothing).
fn local_address(controller: &str) -> Option<String> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    let target = std::net::ToSocketAddrs::to_socket_addrs(controller)
        .ok()?
        .find(|a| a.is_ipv4())?;
    socket.connect(target).ok()?;
    Some(socket.local_addr().ok()?.ip().to_string())
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "node".into())
}

/// The process runtime for node `name`, its state under `data_dir`.
pub fn process_runtime(name: &str, data_dir: &Path) -> anyhow::Result<Arc<dyn Runtime>> {
    let cgroups = Cgroups::detect(Path::new("/sys/fs/cgroup"));
    match &cgroups {
        Some(c) => tracing::info!(version = c.version(), "cgroups found: cpu and memory limits are enforced"),
        None => tracing::warn!("no writable cpu and memory cgroups: container limits are NOT enforced (run as root on a host with cgroups)"),
    }
    let shim = std::env::current_exe().context("find the berth binary for the shim")?;
    let rt = ProcessRuntime::new(name, data_dir, shim, cgroups)
        .with_context(|| format!("use data dir {}", data_dir.display()))?;
    Ok(Arc::new(rt))
}

/// One agent to run: its node settings, runtime, pod index, and how it
/// reaches the cluster.
pub struct AgentPlan {
    pub node: NodeConfig,
    /// Plain TCP until `identities` gives the node its own credentials
    /// (an `--insecure` agent keeps it).
    pub transport: berth_client::Transport,
    pub sync: berth_agent::SyncConfig,
    pub runtime: Arc<dyn Runtime>,
    pub index: PodIndex,
    /// Pod networking; None: pods share the node's network.
    pub network: Option<berth_agent::BridgeConfig>,
}

impl AgentPlan {
    pub fn logs(&self) -> AgentLogs {
        AgentLogs {
            pods: self.index.clone(),
            runtime: self.runtime.clone(),
        }
    }
}

/// Binds the agents' log port and serves their logs from it, over TLS
/// with `tls`; returns the port.
pub async fn serve_logs(
    listen: SocketAddr,
    agents: Vec<AgentLogs>,
    tls: Option<(Arc<rustls::ServerConfig>, berth_agent::http::LogAccess)>,
) -> anyhow::Result<u16> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen on {listen} (--listen)"))?;
    let port = listener.local_addr()?.port();
    tokio::spawn(berth_agent::http::serve(listener, agents, tls));
    Ok(port)
}

/// Serves `/metrics` and `/healthz`, plain HTTP, on `listen`.
async fn serve_metrics(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen on {listen} (--metrics-listen)"))?;
    let prometheus = berth_controller::http::prometheus();
    let render: berth_agent::http::RenderMetrics = Arc::new(move || {
        prometheus.run_upkeep();
        prometheus.render()
    });
    tokio::spawn(berth_agent::http::serve_metrics(listener, render));
    Ok(())
}

/// Starts `plans` against `addrs`; they run until the process ends or
/// their tasks are aborted.
/// How many nodes of a sim agent join the cluster at once.
const CONCURRENT_JOINS: usize = 16;

/// Gives each planned node its own identity (joining with `token` where it
/// has none yet); returns the first node's credentials, whose certificate
/// the log server presents.
pub async fn identities(
    data_dir: &Path,
    plans: &mut [AgentPlan],
    address: &str,
    token: Option<&str>,
    servers: &[String],
) -> anyhow::Result<crate::node_tls::NodeCredentials> {
    use futures::StreamExt;
    let one_of_many = plans.len() > 1;
    let joins = plans.iter().map(|p| {
        let path = crate::node_tls::conf_path(data_dir, &p.node.name, one_of_many);
        crate::node_tls::node_credentials(path, &p.node.name, address, token, servers)
    });
    let mut all: Vec<_> = futures::stream::iter(joins)
        .buffered(CONCURRENT_JOINS)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    for (plan, creds) in plans.iter_mut().zip(&all) {
        plan.transport = creds.transport.clone();
    }
    Ok(all.swap_remove(0))
}

/// The log server's TLS and access checks, made with node `creds`.
pub fn log_tls(
    creds: &crate::node_tls::NodeCredentials,
    servers: &[String],
) -> anyhow::Result<(Arc<rustls::ServerConfig>, berth_agent::http::LogAccess)> {
    let config = berth_tls::https_server_config(&creds.ca_pem, creds.slot.clone())?;
    let conn = Connector::new(servers.to_vec(), creds.transport.clone())?;
    Ok((config, berth_agent::http::LogAccess::new(conn)))
}

/// Runs each planned agent, over a connection of its own identity.
pub fn spawn_agents(
    addrs: &[String],
    plans: Vec<AgentPlan>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    berth_agent::describe_metrics();
    plans
        .into_iter()
        .map(|p| {
            let conn = Connector::new(addrs.to_vec(), p.transport)?;
            Ok(tokio::spawn(berth_agent::run(
                conn, p.node, p.sync, p.runtime, p.index, p.network,
            )))
        })
        .collect()
}

pub fn node_config(
    name: String,
    address: String,
    capacity: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
) -> NodeConfig {
    NodeConfig {
        name,
        address,
        capacity,
        labels,
        runtime_version: String::new(),
        http_port: None,
        lease_interval: Duration::from_secs(2),
        status_interval: Duration::from_secs(10),
    }
}

/// `bridge` when the agent can build it (root, process runtime), else
/// `host`; an explicit `bridge` it cannot build is refused.
fn network_mode(args: &AgentArgs) -> anyhow::Result<NetworkMode> {
    let root = nix::unistd::geteuid().is_root();
    match (args.network, args.runtime) {
        (Some(NetworkMode::Bridge), RuntimeKind::Sim) => {
            bail!("the sim runtime runs no processes, so its pods have no network: drop --network bridge")
        }
        (Some(NetworkMode::Bridge), _) if !root => {
            bail!("--network bridge needs root (it creates a bridge, namespaces and nftables rules): run as root or use --network host")
        }
        (Some(mode), _) => Ok(mode),
        (None, RuntimeKind::Sim) => Ok(NetworkMode::Host),
        (None, _) if root => Ok(NetworkMode::Bridge),
        (None, _) => {
            tracing::warn!("not root: pods share the node's network (--network host)");
            Ok(NetworkMode::Host)
        }
    }
}

fn dns_upstream(items: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    if items.is_empty() {
        return Ok(berth_agent::network::dns::host_upstream());
    }
    if items.iter().any(|i| i == "none") {
        return Ok(Vec::new());
    }
    items
        .iter()
        .map(|i| {
            i.parse::<SocketAddr>()
                .or_else(|_| {
                    i.parse::<std::net::IpAddr>()
                        .map(|ip| SocketAddr::new(ip, 53))
                })
                .with_context(|| format!("--dns-upstream entry {i:?} is not IP or IP:PORT"))
        })
        .collect()
}

pub async fn run(
    mut args: AgentArgs,
    server_flag: Option<Vec<String>>,
    insecure: bool,
) -> anyhow::Result<()> {
    berth_raft::identity::create_private_dir(&args.data_dir)
        .with_context(|| format!("create {}", args.data_dir.display()))?;
    // Absolute: container shims and mounts resolve it from other roots.
    args.data_dir = args.data_dir.canonicalize()?;
    let given = server_flag
        .clone()
        .unwrap_or_else(crate::env_or_default_servers);
    let network = match network_mode(&args)? {
        NetworkMode::Host => None,
        NetworkMode::Bridge => Some(berth_agent::BridgeConfig {
            bridge: "berth0".into(),
            cluster_cidr: args.cluster_cidr.trunc(),
            service_cidr: args.service_cidr.trunc(),
            cluster_domain: args.cluster_domain.trim_matches('.').to_string(),
            dns_upstream: dns_upstream(&args.dns_upstream)?,
            dir: args.data_dir.join("network"),
        }),
    };
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    if args.count > 1 && args.runtime != RuntimeKind::Sim {
        bail!("--count runs many agents in one process, which only the sim runtime allows: add --runtime sim or drop --count");
    }
    if args.lease_interval.is_zero() || args.status_interval < args.lease_interval {
        bail!("--lease-interval must be positive and no longer than --status-interval");
    }
    let capacity =
        berth_agent::node::capacity(args.cpu.as_deref(), args.memory.as_deref(), args.max_pods)?;
    let labels = parse_labels(&args.labels)?;
    let address = match args.address.clone() {
        Some(a) => a,
        None => given.first().and_then(|a| local_address(a)).context(
            "cannot tell this node's address from the route to the controllers: pass --address",
        )?,
    };
    let names: Vec<String> = if args.count > 1 {
        (0..args.count)
            .map(|i| format!("{}{i}", args.name_prefix))
            .collect()
    } else {
        vec![args.name.clone().unwrap_or_else(host_name)]
    };
    let mut plans = Vec::new();
    for name in names {
        let runtime: Arc<dyn Runtime> = match args.runtime {
            RuntimeKind::Process => process_runtime(&name, &args.data_dir)?,
            RuntimeKind::Sim => Arc::new(SimRuntime::new(args.sim_start_delay)),
            RuntimeKind::Docker => Arc::new(
                berth_agent::runtime::docker::DockerRuntime::connect(&name, &args.pause_image)
                    .await?,
            ),
        };
        let mut node = node_config(name, address.clone(), capacity.clone(), labels.clone());
        node.lease_interval = args.lease_interval;
        node.status_interval = args.status_interval;
        node.runtime_version = runtime.version().await;
        let mut sync = berth_agent::sync_config(&node, &args.data_dir);
        sync.backoff_initial = args.crash_backoff;
        sync.backoff_max = args.crash_backoff_max.max(args.crash_backoff);
        sync.volume_sync_interval = args.volume_sync_interval;
        sync.allow_privileged = args.allow_privileged;
        plans.push(AgentPlan {
            node,
            transport: berth_client::Transport::Insecure,
            sync,
            runtime,
            index: PodIndex::default(),
            network: network.clone(),
        });
    }
    let (addrs, tls) = if insecure {
        tracing::warn!("--insecure: this agent speaks plain TCP to controllers run --insecure, and serves logs to anyone");
        (given, None)
    } else {
        let token = args.token.as_deref().filter(|t| !t.trim().is_empty());
        let creds = identities(&args.data_dir, &mut plans, &address, token, &given).await?;
        let servers = server_flag.unwrap_or(creds.servers.clone());
        let tls = log_tls(&creds, &servers)?;
        (servers, Some(tls))
    };
    let listen = match args.listen {
        Some(l) => l,
        None => SocketAddr::new(
            address.parse().context("--address is not an IP address")?,
            0,
        ),
    };
    let port = serve_logs(listen, plans.iter().map(AgentPlan::logs).collect(), tls).await?;
    for p in &mut plans {
        p.node.http_port = Some(port);
    }
    if let Some(listen) = args.metrics_listen {
        serve_metrics(listen).await?;
    }
    tracing::info!(agents = plans.len(), %address, http_port = port, servers = %addrs.join(","), "agent starting");
    let _agents = spawn_agents(&addrs, plans)?;
    crate::signals::shutdown().await;
    // Workloads outlive the agent on purpose: the next agent adopts them.
    tracing::info!("agent stopping; its containers keep running");
    Ok(())
}

/// `berth agent-shim DIR`.
pub fn shim(dir: &Path) -> std::process::ExitCode {
    std::process::ExitCode::from(berth_agent::runtime::shim::main(dir).clamp(0, 255) as u8)
}
