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
