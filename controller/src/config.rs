//! What a controller is told at start: who it is, where it listens and
//! keeps its data, whom it joins, and its address plan.

use berth_raft::NodeConfig;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub id: u64,
    pub listen: SocketAddr,
    /// The address other controllers and clients use to reach this one.
    pub advertise: String,
    pub data_dir: PathBuf,
    pub peers: Vec<(u64, String)>,
    pub join: Option<String>,
    pub metrics_listen: Option<SocketAddr>,
    pub node: NodeConfig,
    /// The address plan: cluster, node and service CIDRs.
    pub network: crate::ipam::NetworkConfig,
    /// `--insecure`: plain TCP, no identities, no authorization.
    pub insecure: bool,
    /// `--token`: a join token (with `--join`) or the secret shared by the
    /// controllers of a `--peers` bootstrap.
    pub token: Option<String>,
    /// Lifetime of the certificates this controller issues to itself, to
    /// joining controllers and to nodes.
    pub cert_ttl: std::time::Duration,
    /// Extra names for this controller's certificate (`--tls-san`).
    pub tls_sans: Vec<String>,
    /// Where the audit log goes (`--audit-log`) and how much is kept.
    pub audit: crate::audit::AuditConfig,
    pub connections: ConnectionLimits,
    /// Test only: the raw KV service writes API keys, so that tests can
    /// plant objects the API would refuse and see agents refuse them.
    pub unsafe_raw_registry_writes: bool,
}

/// How much of a controller clients may hold, so that many or greedy
/// clients exhaust a limit and get a clear refusal, not the process.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Open connections (`--max-connections`); one more is closed as it
    /// is accepted.
    pub max_connections: usize,
    /// Concurrent calls on one connection, watches included
    /// (`--max-streams-per-connection`): HTTP/2's
    /// SETTINGS_MAX_CONCURRENT_STREAMS, which clients queue behind.
    pub max_streams_per_connection: u32,
}

impl Default for ConnectionLimits {
    /// Room for Kubernetes' 5,000 nodes with an agent connection each and
    /// their clients; a connection's streams for a busy reconciler's
    /// watches and calls.
    fn default() -> Self {
        Self {
            max_connections: 16_384,
            max_streams_per_connection: 1_024,
        }
    }
}

impl ServerConfig {
    /// This controller first (its watches are served locally), then its
    /// `--peers`.
    pub fn addrs_self_first(&self) -> Vec<String> {
        let mut addrs = vec![self.advertise.clone()];
        addrs.extend(
            self.peers
                .iter()
                .map(|(_, a)| a.clone())
                .filter(|a| *a != self.advertise),
        );
        addrs
    }
}
