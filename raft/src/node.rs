//! One controller's Raft node: opens the data dir, recovers the log and the
//! state machine, and starts openraft with Berth's timing.

use std::path::PathBuf;
use std::sync::Arc;

use openraft::SnapshotPolicy;

use crate::identity::Identity;
use crate::identity::IdentityError;
use crate::network::Channels;
use crate::network::Network;
use crate::rules::BindRules;
use crate::service::RaftService;
use crate::storage::db;
use crate::storage::state_machine::applied_revision;
use crate::storage::LogStore;
use crate::storage::StateMachine;
use crate::store::Store;
use crate::store::StoreConfig;
use crate::types::NodeId;
use crate::types::Raft;
use crate::watch::WatchHub;
use crate::watch::DEFAULT_BUFFER_BYTES;
use crate::watch::DEFAULT_BUFFER_EVENTS;

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    pub data_dir: PathBuf,
    /// Leader heartbeat period.
    pub heartbeat_ms: u64,
    /// A follower that hears nothing from the leader for a random time in
    /// this range starts a (pre-)election.
    pub election_timeout_ms: (u64, u64),
    /// Build a snapshot after this many log entries.
    pub snapshot_logs: u64,
    /// Log entries kept behind the last snapshot for slow followers.
    pub logs_to_keep: u64,
    /// Recent changes kept so that watchers can resume from a revision.
    pub watch_history_events: usize,
    pub store: StoreConfig,
}

impl NodeConfig {
    pub fn new(id: NodeId, data_dir: PathBuf) -> Self {
        Self {
            id,
            data_dir,
            heartbeat_ms: 30,
            election_timeout_ms: (120, 200),
            snapshot_logs: 10_000,
            logs_to_keep: 1_000,
            watch_history_events: DEFAULT_BUFFER_EVENTS,
            store: StoreConfig::default(),
        }
    }

    fn raft_config(&self) -> Result<openraft::Config, NodeError> {
        let config = openraft::Config {
            cluster_name: "berth".to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_ms.0,
            election_timeout_max: self.election_timeout_ms.1,
            // A candidate that cannot win (partitioned, restarted, behind)
            // must not raise the term and depose a healthy leader.
            enable_pre_vote: Some(true),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs),
            max_in_snapshot_log_to_keep: self.logs_to_keep,
            // A follower further behind than this gets a snapshot.
            replication_lag_threshold: self.snapshot_logs.max(1_000) * 2,
            install_snapshot_timeout: 120_000,
            // Bounded so that an append always fits MAX_RAFT_MESSAGE_BYTES.
            max_payload_entries: 64,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| NodeError::Config(e.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Open(#[from] db::OpenError),
    #[error("could not prepare {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid Raft settings: {0}")]
    Config(String),
    #[error("raft failed to start: {0}")]
    Start(String),
}

pub struct Node {
    pub raft: Raft,
    pub store: Store,
    pub identity: Identity,
    snapshot_dir: PathBuf,
}

impl Node {
    /// Opens the data dir and starts Raft; `rules` decide binds, and
    /// `transport` is how this controller reaches its peers (TLS with its
    /// controller certificate, or `--insecure` plain TCP).
    pub async fn open(
        config: NodeConfig,
        rules: Box<dyn BindRules>,
        transport: berth_tls::Transport,
    ) -> Result<Self, NodeError> {
        let io = |path: &PathBuf| {
            let path = path.display().to_string();
            move |source| NodeError::Io { path, source }
        };
        crate::identity::create_private_dir(&config.data_dir).map_err(io(&config.data_dir))?;
        let identity = Identity::load_or_create(&config.data_dir, config.id)?;
        let database = db::open(&config.data_dir.join("db"))?;
        let snapshot_dir = config.data_dir.join("snapshots");
        let revision = applied_revision(&database).map_err(io(&config.data_dir))?;
        let hub = WatchHub::new(revision, config.watch_history_events, DEFAULT_BUFFER_BYTES);
        let log_store = LogStore::new(database.clone());
        let state_machine =
            StateMachine::new(database.clone(), snapshot_dir.clone(), hub.clone(), rules)
                .map_err(io(&snapshot_dir))?;
        let channels = Channels::new(transport);
        let network = Network::new(identity.clone(), channels.clone());
        let raft = Raft::new(
            config.id,
            Arc::new(config.raft_config()?),
            network,
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| NodeError::Start(e.to_string()))?;
        let store = Store::new(
            raft.clone(),
            database,
            hub,
            identity.clone(),
            channels,
            config.store.clone(),
        );
        crate::metrics::spawn_reporter(raft.clone());
        Ok(Self {
            raft,
            store,
            identity,
            snapshot_dir,
        })
    }

    pub fn raft_service(&self) -> RaftService {
        RaftService::new(self.store.clone(), self.snapshot_dir.clone())
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
    }
}
