//! `berth server`: flags to a controller configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use anyhow::Context;
use berth_client::connect::Connector;
use berth_controller::ipam::NetworkConfig;
use berth_controller::ConnectionLimits;
use berth_controller::ServerConfig;
use berth_raft::NodeConfig;
use berth_raft::StoreConfig;
use clap::Args;

#[derive(Args)]
pub struct ServerArgs {
    /// This controller's id, unique in the cluster and stable across restarts.
    #[arg(long)]
    id: u64,
    /// Address for the gRPC API and Raft traffic.
    #[arg(long)]
    listen: SocketAddr,
    /// Address the other controllers use to reach this one (default: --listen,
    /// or this id's entry in --peers).
    #[arg(long)]
    advertise: Option<String>,
    #[arg(long)]
    data_dir: PathBuf,
    /// Initial voters, ID=HOST:PORT,...; the first start bootstraps, a restart reuses the data dir.
    #[arg(long, conflicts_with = "join")]
    peers: Option<String>,
    /// Join the cluster that HOST:PORT belongs to as a new member.
    #[arg(long)]
    join: Option<String>,
    /// Address for HTTP /metrics and /healthz.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Leader heartbeat period, in milliseconds.
    #[arg(long, default_value_t = 30)]
    heartbeat_ms: u64,
    /// Shortest election timeout, in milliseconds.
    #[arg(long, default_value_t = 120)]
    election_timeout_min_ms: u64,
    /// Longest election timeout, in milliseconds.
    #[arg(long, default_value_t = 200)]
    election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_logs: u64,
    /// Log entries kept behind the last snapshot for slow followers.
    #[arg(long, default_value_t = 1_000)]
    logs_to_keep: u64,
    /// Most Raft entries of coalesced writes this controller has in flight;
    /// fewer means larger batches under load.
    #[arg(long, default_value_t = 32)]
    max_inflight_batches: usize,
    /// Recent changes kept for watchers that resume from a revision; a
    /// watcher further behind lists again.
    #[arg(long, default_value_t = 100_000)]
    watch_history: usize,
    /// How long a write or linearizable read waits for a quorum before it fails with UNAVAILABLE.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// Do not run a scheduler in this controller (run `berth scheduler`
    /// elsewhere, or bind pods yourself).
    #[arg(long)]
    no_scheduler: bool,
    /// Do not run the reconcilers (node lifecycle, deployments, endpoints,
    /// garbage collection) in this controller: the other controllers' take
    /// over through the leases; with none running anywhere, deployments are
    /// not rolled out and lost nodes' pods are not failed.
    #[arg(long)]
    no_reconcilers: bool,
    /// Settings for this controller's scheduler (YAML or JSON).
    #[arg(long)]
    scheduler_config: Option<PathBuf>,
    /// A node whose agent has not renewed its lease for this long is
    /// marked NotReady.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    node_grace_period: Duration,
    /// A node NotReady for this long has its pods failed (NodeLost), so
    /// that their deployments replace them elsewhere.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pod_eviction_timeout: Duration,
    /// Pod addresses: each node gets a --node-cidr-size slice of it.
    /// Every controller of a cluster must be given the same plan.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: ipnet::Ipv4Net,
    /// Prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_size: u8,
    /// Service ClusterIPs come from this range.
    #[arg(long, default_value = "10.96.0.0/16")]
    service_cidr: ipnet::Ipv4Net,
    /// Test only: answer reads from local state without read-index, so
    /// that a partitioned controller serves stale data. berth-chaos uses it
    /// to prove that its linearizability checker catches stale reads.
    #[arg(long, hide = true)]
    unsafe_stale_reads: bool,
    /// Test only: let controllers write API objects through the raw KV
    /// service, skipping validation, so that tests can check that agents
    /// refuse what the API would never have stored.
    #[arg(long, hide = true)]
    unsafe_raw_registry_writes: bool,
    /// With --join: a join token (`berth token create --role controller`).
    /// With --peers: a secret shared by all of them, so that they can
    /// trust the CA the first one makes. A single controller needs none.
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Lifetime of the certificates this controller issues to itself, to
    /// joining controllers and to nodes; each is renewed when a third of
    /// it is left.
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    cert_ttl: Duration,
    /// More names (IPs or DNS names) for this controller's certificate,
    /// beside its --advertise host and --listen address.
    #[arg(long, value_delimiter = ',')]
    tls_san: Vec<String>,
    /// The audit log: a JSON line for every call that changes the cluster
    /// (default DATA_DIR/audit.log).
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// The audit log is rotated when it reaches this size (bytes, or with
    /// Ki, Mi, Gi).
    #[arg(long, default_value = "100Mi", value_parser = parse_size)]
    audit_log_max_size: u64,
    /// Rotated audit logs kept (AUDIT_LOG.1 the newest).
    #[arg(long, default_value_t = 10)]
    audit_log_max_backups: usize,
    /// Open client connections this controller accepts; more are closed
    /// as they arrive (each agent node holds one).
    #[arg(long, default_value_t = ConnectionLimits::default().max_connections)]
    max_connections: usize,
    /// Concurrent calls (watches included) on one connection; a client
    /// queues those beyond it.
    #[arg(long, default_value_t = ConnectionLimits::default().max_streams_per_connection)]
    max_streams_per_connection: u32,
}

/// `100Mi` (or `1000`, `64Ki`, `1Gi`) in bytes.
fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let shift = match unit {
        "" => 0,
        "Ki" => 10,
        "Mi" => 20,
        "Gi" => 30,
        _ => {
            return Err(format!(
                "{text:?}: a size is a number of bytes, optionally with Ki, Mi or Gi"
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            format!("{text:?}: a size is a positive number of bytes, optionally with Ki, Mi or Gi")
        })
}

/// Parses `1=127.0.0.1:7001,2=...`.
fn parse_peers(s: &str) -> anyhow::Result<Vec<(u64, String)>> {
    let mut peers: Vec<(u64, String)> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((id, addr)) = item.split_once('=') else {
            bail!("--peers entry {item:?} is not ID=HOST:PORT");
        };
        let id: u64 = id
            .parse()
            .with_context(|| format!("--peers entry {item:?}: {id:?} is not a numeric id"))?;
        if addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            bail!("--peers entry {item:?}: {addr:?} is not HOST:PORT");
        }
        if peers.iter().any(|(p, _)| *p == id) {
            bail!("--peers lists id {id} twice");
        }
        peers.push((id, addr.to_string()));
    }
    Ok(peers)
}

impl ServerArgs {
    fn into_config(self, insecure: bool) -> anyhow::Result<ServerConfig> {
        if self.cert_ttl < Duration::from_secs(10) {
            bail!("--cert-ttl must be at least 10s");
        }
        let peers = match &self.peers {
            Some(p) => parse_peers(p)?,
            None => Vec::new(),
        };
        if !peers.is_empty() && !peers.iter().any(|(id, _)| *id == self.id) {
            bail!("--peers must include this controller (--id {})", self.id);
        }
        if self.election_timeout_min_ms <= self.heartbeat_ms * 2
            || self.election_timeout_max_ms <= self.election_timeout_min_ms
        {
            bail!("election timeouts must satisfy 2 x heartbeat < min < max");
        }
        let advertise = self
            .advertise
            .clone()
            .or_else(|| {
                peers
                    .iter()
                    .find(|(id, _)| *id == self.id)
                    .map(|(_, a)| a.clone())
            })
            .unwrap_or_else(|| self.listen.to_string());
        let mut audit = berth_controller::audit::AuditConfig::in_dir(&self.data_dir);
        if let Some(path) = self.audit_log.clone() {
            audit.path = path;
        }
        audit.max_bytes = self.audit_log_max_size;
        audit.max_backups = self.audit_log_max_backups;
        let mut node = NodeConfig::new(self.id, self.data_dir.clone());
        node.heartbeat_ms = self.heartbeat_ms;
        node.election_timeout_ms = (self.election_timeout_min_ms, self.election_timeout_max_ms);
        node.snapshot_logs = self.snapshot_logs;
        node.logs_to_keep = self.logs_to_keep;
        node.watch_history_events = self.watch_history.max(1);
        node.store = StoreConfig {
            write_timeout: self.request_timeout,
            read_timeout: self.request_timeout,
            max_inflight_batches: self.max_inflight_batches.max(1),
            unsafe_stale_reads: self.unsafe_stale_reads,
            ..StoreConfig::default()
        };
        Ok(ServerConfig {
            id: self.id,
            listen: self.listen,
            advertise,
            data_dir: self.data_dir,
            peers,
            join: self.join,
            metrics_listen: self.metrics_listen,
            node,
            network: NetworkConfig::new(self.cluster_cidr, self.node_cidr_size, self.service_cidr)?,
            insecure,
            token: self.token.filter(|t| !t.trim().is_empty()),
            cert_ttl: self.cert_ttl,
            tls_sans: self.tls_san,
            audit,
            unsafe_raw_registry_writes: self.unsafe_raw_registry_writes,
            connections: ConnectionLimits {
                max_connections: self.max_connections.max(1),
                max_streams_per_connection: self.max_streams_per_connection.max(1),
            },
        })
    }
}

pub async fn run(args: ServerArgs, insecure: bool) -> anyhow::Result<()> {
    if args.unsafe_raw_registry_writes {
        tracing::warn!("--unsafe-raw-registry-writes: the raw KV service writes API objects without validation; for tests only");
    }
    if args.unsafe_stale_reads {
        tracing::warn!("--unsafe-stale-reads: reads skip read-index and may return stale data; for chaos tests only");
    }
    let scheduler = match args.no_scheduler {
        true => None,
        false => Some(crate::scheduler_cmd::load_config(
            args.scheduler_config.as_ref(),
        )?),
    };
    let mut reconcile = berth_reconcilers::ReconcileConfig::new(String::new());
    reconcile.node_grace_period = args.node_grace_period;
    reconcile.pod_eviction_timeout = args.pod_eviction_timeout;
    let run_reconcilers = !args.no_reconcilers;
    let config = args.into_config(insecure)?;
    let start_clients = clients(&config, scheduler, run_reconcilers.then_some(reconcile));
    berth_controller::run(config, crate::signals::shutdown(), start_clients).await?;
    Ok(())
}

/// What starts this controller's scheduler and reconcilers once it has
/// its certificate: they reach the cluster as this controller.
pub fn clients(
    config: &ServerConfig,
    scheduler: Option<berth_scheduler::SchedulerConfig>,
    reconcile: Option<berth_reconcilers::ReconcileConfig>,
) -> berth_controller::server::StartClients {
    let (config, addrs) = (config.clone(), config.addrs_self_first());
    Box::new(move |transport| {
        let conn = match Connector::new(addrs, transport) {
            Ok(conn) => conn,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the scheduler and reconcilers");
                return;
            }
        };
        if let Some(scheduler) = scheduler {
            if let Err(e) = spawn_scheduler(&config, conn.clone(), scheduler) {
                tracing::error!(error = %e, "cannot start the scheduler");
            }
        }
        if let Some(reconcile) = reconcile {
            spawn_reconcilers(&config, conn, reconcile);
        }
    })
}

/// The controller's reconcilers (node lifecycle, deployments, garbage
/// collection), each active where it holds its lease.
fn spawn_reconcilers(
    config: &ServerConfig,
    conn: Connector,
    mut reconcile: berth_reconcilers::ReconcileConfig,
) {
    reconcile.identity = crate::scheduler_cmd::identity(&format!("controller-{}", config.id));
    berth_reconcilers::spawn(conn, reconcile);
}

/// The controller's own scheduler.
fn spawn_scheduler(
    config: &ServerConfig,
    conn: Connector,
    scheduler: berth_scheduler::SchedulerConfig,
) -> anyhow::Result<()> {
    let identity = crate::scheduler_cmd::identity(&format!("controller-{}", config.id));
    crate::scheduler_cmd::spawn(conn, scheduler, berth_scheduler::election_config(identity))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_peers_and_names_bad_entries() {
        let p = parse_peers("1=127.0.0.1:7001, 2=127.0.0.1:7002").unwrap();
        assert_eq!(
            p,
            vec![(1, "127.0.0.1:7001".into()), (2, "127.0.0.1:7002".into())]
        );
        let e = parse_peers("1=127.0.0.1:7001,x=h:1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"x=h:1\""), "{e}");
        assert!(parse_peers("1=nohost").is_err());
        assert!(parse_peers("1=a:1,1=b:2").is_err());
    }
}
