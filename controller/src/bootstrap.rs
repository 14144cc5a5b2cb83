//! How a controller becomes a member of its cluster.
//!
//! - A data dir that already holds a membership restarts as it was; its
//!   `--peers` are only checked to belong to the same cluster.
//! - `--join ADDR`: learn the cluster id from ADDR, then ask the leader to
//!   add this controller (as a learner that catches up, then as a voter).
//! - `--peers` on an empty data dir: if a peer already serves a cluster,
//!   this controller lost its data and rejoins as with `--join`; otherwise
//!   the lowest id among the peers creates the cluster with all peers as
//!   voters and the others adopt it when it first contacts them.
//! - Neither: wait until `berth cluster add-member` adds this controller.
//!
//! A controller rejoining with an empty data dir must not vote until it has
//! been removed and added again: it forgot the votes it cast before, and a
//! second vote in the same term could elect two leaders.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_proto::cluster as pb;
use berth_proto::cluster::cluster_client::ClusterClient;
use berth_raft::network::endpoint;
use berth_raft::Node;
use berth_retry::Backoff;
use berth_tls::Transport;
use openraft::BasicNode;

use crate::config::ServerConfig;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(
        "data dir {dir} belongs to cluster {ours}, but peer {peer} serves cluster {theirs}: point --peers at this cluster's controllers, or start with an empty data dir to join cluster {theirs}"
    )]
    OtherCluster {
        dir: String,
        ours: String,
        peer: String,
        theirs: String,
    },
    #[error(
        "data dir {dir} belongs to another cluster than peer {peer}, whose certificate its CA did not issue ({why}): point --peers at this cluster's controllers, or start with an empty data dir to join theirs"
    )]
    OtherCa {
        dir: String,
        peer: String,
        why: String,
    },
    #[error("could not join through {target}: {message}")]
    Join { target: String, message: String },
    #[error("could not create the cluster: {0}")]
    Initialize(String),
    #[error("could not record the cluster id: {0}")]
    Identity(#[from] std::io::Error),
}

/// Returns once this controller is a member, or is waiting to be added.
pub async fn ensure_member(
    node: &Node,
    config: &ServerConfig,
    transport: &Transport,
) -> Result<(), BootstrapError> {
    let initialized = node
        .raft
        .is_initialized()
        .await
        .map_err(|e| BootstrapError::Initialize(e.to_string()))?;
    let peers = other_peers(config);
    if initialized {
        if let Some(ours) = node.identity.cluster_id() {
            check_same_cluster(config, transport, &peers, &ours).await?;
        }
        return Ok(());
    }
    if let Some(target) = &config.join {
        return join(node, config, transport, target).await;
    }
    if config.peers.is_empty() {
        tracing::info!(
            "no --peers or --join: waiting to be added with `berth cluster add-member {} {}`",
            config.id,
            config.advertise
        );
        return Ok(());
    }
    if let Some(found) = find_cluster(transport, &peers, config.id).await {
        if let Some(ours) = node.identity.cluster_id() {
            if ours != found.cluster_id {
                return Err(BootstrapError::OtherCluster {
                    dir: config.data_dir.display().to_string(),
                    ours,
                    peer: found.addr,
                    theirs: found.cluster_id,
                });
            }
        }
        if found.we_replicated {
            tracing::warn!(peer = %found.addr, cluster_id = %found.cluster_id,
                "this controller's data was lost: rejoining with an empty data dir");
            return join(node, config, transport, &found.addr).await;
        }
        // The cluster was created while this controller was starting; it
        // never acknowledged anything, so it simply takes the leader's log.
        // (Refusing votes here could leave a new cluster without a quorum
        // of voters for its first election.)
        node.identity.set_cluster_id(&found.cluster_id)?;
        return Ok(());
    }
    let lowest = config.peers.iter().map(|(id, _)| *id).min();
    if lowest != Some(config.id) {
        tracing::info!("waiting for controller {lowest:?} to create the cluster");
        return Ok(());
    }
    let cluster_id = match node.identity.cluster_id() {
        Some(id) => id,
        None => {
            let id = uuid::Uuid::new_v4().to_string();
            node.identity.set_cluster_id(&id)?;
            id
        }
    };
    let members: BTreeMap<u64, BasicNode> = config
        .peers
        .iter()
        .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
        .collect();
    tracing::info!(%cluster_id, ?members, "creating the cluster");
    match node.raft.initialize(members).await {
        Ok(()) => Ok(()),
        Err(e) => Err(BootstrapError::Initialize(e.to_string())),
    }
}

fn other_peers(config: &ServerConfig) -> Vec<String> {
    let mut addrs: Vec<String> = config
        .peers
        .iter()
        .filter(|(id, _)| *id != config.id)
        .map(|(_, a)| a.clone())
        .collect();
    addrs.extend(config.join.iter().cloned());
    addrs
}

/// The TLS failure, if any, of a connection to `addr`.
async fn tls_refusal(transport: &Transport, addr: &str) -> Option<String> {
    let endpoint = endpoint(transport, addr).ok()?;
    match transport.connect(endpoint).await {
        Ok(_) => None,
        Err(e) => berth_tls::tls_failure(&e),
    }
}

async fn status(transport: &Transport, addr: &str) -> Option<pb::StatusResponse> {
    let channel = transport
        .connect(endpoint(transport, addr).ok()?)
        .await
        .ok()?;
    let mut req = tonic::Request::new(pb::StatusRequest {});
    req.set_timeout(Duration::from_secs(2));
    ClusterClient::new(channel)
        .status(req)
        .await
        .ok()
        .map(|r| r.into_inner())
}

struct FoundCluster {
    addr: String,
    cluster_id: String,
    /// The leader has acknowledged log entries from this controller's id.
    we_replicated: bool,
}

/// Looks for a peer that already serves a cluster, and asks its leader
/// whether this controller's id ever acknowledged entries.
async fn find_cluster(transport: &Transport, peers: &[String], me: u64) -> Option<FoundCluster> {
    for addr in peers {
        let Some(s) = status(transport, addr).await else {
            continue;
        };
        if !s.initialized || s.cluster_id.is_empty() {
            continue;
        }
        let leader_status = match s.leader.and_then(|l| s.members.iter().find(|m| m.id == l)) {
            Some(m) if m.id != s.id => status(transport, &m.addr).await.unwrap_or(s.clone()),
            _ => s.clone(),
        };
        let we_replicated = leader_status
            .members
            .iter()
            .any(|m| m.id == me && m.matched_index.is_some());
        return Some(FoundCluster {
            addr: addr.clone(),
            cluster_id: s.cluster_id,
            we_replicated,
        });
    }
    None
}

async fn check_same_cluster(
    config: &ServerConfig,
    transport: &Transport,
    peers: &[String],
    ours: &str,
) -> Result<(), BootstrapError> {
    for addr in peers {
        // A peer whose certificate this controller's CA did not issue
        // belongs to another cluster as surely as a peer that says so.
        if let Some(why) = tls_refusal(transport, addr).await {
            return Err(BootstrapError::OtherCa {
                dir: config.data_dir.display().to_string(),
                peer: addr.clone(),
                why,
            });
        }
        if let Some(s) = status(transport, addr).await {
            if !s.cluster_id.is_empty() && s.cluster_id != ours {
                return Err(BootstrapError::OtherCluster {
                    dir: config.data_dir.display().to_string(),
                    ours: ours.to_string(),
                    peer: addr.clone(),
                    theirs: s.cluster_id,
                });
            }
        }
    }
    Ok(())
}

/// Asks the cluster at `target` to add this controller, retrying while the
/// cluster has no leader or is busy.
async fn join(
    node: &Node,
    config: &ServerConfig,
    transport: &Transport,
    target: &str,
) -> Result<(), BootstrapError> {
    let err = |message: String| BootstrapError::Join {
        target: target.to_string(),
        message,
    };
    let mut delay = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let remote = loop {
        match status(transport, target).await {
            Some(s) if !s.cluster_id.is_empty() => break s,
            _ => {
                tracing::info!(%target, "waiting for the cluster to answer");
                delay.wait().await;
            }
        }
    };
    match node.identity.cluster_id() {
        Some(ours) if ours != remote.cluster_id => {
            return Err(BootstrapError::OtherCluster {
                dir: config.data_dir.display().to_string(),
                ours,
                peer: target.to_string(),
                theirs: remote.cluster_id,
            })
        }
        Some(_) => {}
        None => node.identity.set_cluster_id(&remote.cluster_id)?,
    }
    node.identity.set_voting(false);
    let channel = transport.lazy(endpoint(transport, target).map_err(|e| err(e.to_string()))?);
    let mut client = ClusterClient::new(channel);
    loop {
        let mut req = tonic::Request::new(pb::AddMemberRequest {
            id: config.id,
            addr: config.advertise.clone(),
            fresh: true,
        });
        req.set_timeout(Duration::from_secs(300));
        match client.add_member(req).await {
            Ok(_) => {
                node.identity.set_voting(true);
                tracing::info!(%target, "joined the cluster");
                return Ok(());
            }
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Aborted
                ) =>
            {
                tracing::warn!(%target, error = %s.message(), "join not possible yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(s) => return Err(err(s.message().to_string())),
        }
    }
}
