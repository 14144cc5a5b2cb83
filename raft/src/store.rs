//! The replicated store as the rest of Berth uses it: transactions,
//! linearizable or serializable range reads, and watches.
//!
//! Writes from all clients of a controller enter one queue. A proposer takes
//! whatever is queued when a slot frees up and proposes it as one Raft entry,
//! with a bounded number of entries in flight, so under load many writes
//! share an entry and its fsync; with no load a write goes out alone at
//! once. On a follower the same batches are forwarded to the leader.
//! Linearizable reads use read-index: the leader confirms its leadership
//! with a quorum and names a log index; the serving controller waits until
//! it has applied that index and then reads its own state.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use futures::stream::BoxStream;
use futures::StreamExt;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::ClientWriteError;
use openraft::errors::LinearizableReadError;
use openraft::errors::RaftError;
use openraft::ReadPolicy;
use rocksdb::Direction;
use rocksdb::IteratorMode;
use rocksdb::DB;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::sync::Semaphore;
use tonic::transport::Channel;

use berth_proto::raft as pb;
use berth_proto::raft::raft_client::RaftClient;

use crate::codec;
use crate::error::ForwardFailure;
use crate::error::StoreError;
use crate::identity::Identity;
use crate::network::request;
use crate::network::Channels;
use crate::network::MAX_RAFT_MESSAGE_BYTES;
use crate::storage::db::cf;
use crate::storage::db::CF_KV;
use crate::storage::state_machine::snapshot_revision;
use crate::storage::StoredValue;
use crate::types::validate_txn;
use crate::types::KeyRange;
use crate::types::KeyValue;
use crate::types::NodeId;
use crate::types::Raft;
use crate::types::Request;
use crate::types::Txn;
use crate::types::TxnOutcome;
use crate::watch::WatchBatch;
use crate::watch::WatchHub;

#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// How long a write may wait for a leader and a quorum.
    pub write_timeout: Duration,
    /// How long a linearizable read may wait for a leader and a quorum.
    pub read_timeout: Duration,
    /// Most transactions coalesced into one Raft entry.
    pub max_batch_txns: usize,
    /// Most bytes coalesced into one Raft entry.
    pub max_batch_bytes: usize,
    /// Most Raft entries this controller has in flight at once.
    pub max_inflight_batches: usize,
    /// Serve every read from local state, skipping read-index: reads may
    /// then be stale. Only for proving that the chaos tests' checkers catch
    /// a stale read; never for a real cluster.
    pub unsafe_stale_reads: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            write_timeout: Duration::from_secs(3),
            read_timeout: Duration::from_secs(3),
            max_batch_txns: 1024,
            max_batch_bytes: 1 << 20,
            max_inflight_batches: 32,
            unsafe_stale_reads: false,
        }
    }
}

pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    pub revision: u64,
    pub more: bool,
}

struct Pending {
    txn: Txn,
    done: oneshot::Sender<Result<TxnOutcome, StoreError>>,
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    raft: Raft,
    db: Arc<DB>,
    hub: WatchHub,
    identity: Identity,
    channels: Channels,
    queue: mpsc::Sender<Pending>,
    /// Linearizable reads waiting for the next read-index round.
    read_rounds: mpsc::Sender<oneshot::Sender<ReadIndexResult>>,
    config: StoreConfig,
}

type ReadIndexResult = Result<u64, ForwardFailure>;

impl Store {
    pub fn new(
        raft: Raft,
        db: Arc<DB>,
        hub: WatchHub,
        identity: Identity,
        channels: Channels,
        config: StoreConfig,
    ) -> Self {
        let (queue, rx) = mpsc::channel(64 * 1024);
        let (read_rounds, read_rx) = mpsc::channel(64 * 1024);
        let inner = Arc::new(Inner {
            raft,
            db,
            hub,
            identity,
            channels,
            queue,
            read_rounds,
            config,
        });
        tokio::spawn(run_proposer(Arc::downgrade(&inner), rx));
        tokio::spawn(run_read_rounds(Arc::downgrade(&inner), read_rx));
        Self { inner }
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    pub fn channels(&self) -> &Channels {
        &self.inner.channels
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// The revision of the state this controller has applied.
    pub fn revision(&self) -> u64 {
        self.inner.hub.revision()
    }

    /// Commits `txn`, or reports why it did not commit. Precondition
    /// failures are an `Ok(TxnOutcome::Failed)`: they are answers, not errors.
    pub async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        validate_txn(&txn).map_err(|f| StoreError::InvalidArgument(f.to_string()))?;
        let (done, rx) = oneshot::channel();
        self.inner
            .queue
            .send(Pending { txn, done })
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// Proposes an already coalesced batch through this controller's Raft,
    /// which must be the leader. Used for batches forwarded by followers.
    pub async fn propose_as_leader(&self, req: Request) -> Result<Vec<TxnOutcome>, ForwardFailure> {
        propose_local(&self.inner.raft, req).await
    }

    /// The index a linearizable read must have applied, as the leader.
    /// Served to followers' read-index rounds.
    pub async fn read_index(&self) -> Result<u64, ForwardFailure> {
        leader_read_index(&self.inner.raft).await
    }

    /// Reads `range` at one revision.
    pub async fn range(
        &self,
        range: KeyRange,
        limit: usize,
        serializable: bool,
    ) -> Result<RangeResult, StoreError> {
        if !serializable && !self.inner.config.unsafe_stale_reads {
            self.linearize().await?;
        }
        let db = self.inner.db.clone();
        if range.end.is_none() {
            // A point read is two lookups, nearly always in memory: cheaper
            // here than a hop to the blocking pool (which every create's
            // namespace check made; the pool grew to ~140 threads under
            // `berth bench schedule`).
            return read_range(&db, &range, limit);
        }
        tokio::task::spawn_blocking(move || read_range(&db, &range, limit))
            .await
            .map_err(|e| StoreError::Storage(e.to_string()))?
    }

    /// Waits until this controller's state reflects every write committed
    /// before the call.
    pub async fn linearize(&self) -> Result<(), StoreError> {
        let timeout = self.inner.config.read_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(StoreError::NoQuorum(timeout));
            }
            let (tx, rx) = oneshot::channel();
            self.inner
                .read_rounds
                .send(tx)
                .await
                .map_err(|_| StoreError::ShuttingDown)?;
            let index = match tokio::time::timeout(remaining, rx).await {
                Ok(Ok(index)) => index,
                Ok(Err(_)) => return Err(StoreError::ShuttingDown),
                Err(_) => return Err(StoreError::NoQuorum(timeout)),
            };
            match index {
                Ok(index) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    return self
                        .inner
                        .raft
                        .wait(Some(remaining))
                        .applied_index_at_least(Some(index), "linearizable read")
                        .await
                        .map(|_| ())
                        .map_err(|_| StoreError::NoQuorum(timeout));
                }
                // No leader, or it changed or is unreachable: give the
                // cluster a moment before the next round.
                Err(ForwardFailure::NotLeader { .. }) | Err(ForwardFailure::Indeterminate(_)) => {
                    tokio::time::sleep(Duration::from_millis(10).min(remaining)).await;
                }
                Err(ForwardFailure::Storage(e)) => return Err(StoreError::Storage(e)),
            }
        }
    }

    /// Changes in `range` from `start_revision` (0: from now), in batches.
    /// The stream ends with an error when the watcher fell too far behind
    /// or the state was replaced by a snapshot; the caller lists again.
    pub fn watch(
        &self,
        range: KeyRange,
        start_revision: u64,
    ) -> Result<BoxStream<'static, Result<WatchBatch, StoreError>>, StoreError> {
        let batches = self.inner.hub.watch(range, start_revision)?;
        Ok(Box::pin(batches.map(|b| b.map_err(StoreError::from))))
    }
}

/// Serves linearizable reads in rounds: one read index, obtained after
/// every read of the round arrived, answers them all. Reads that arrive
/// while a round is under way wait for the next one, so no read is given
/// an index the leader confirmed before the read began.
async fn run_read_rounds(
    inner: std::sync::Weak<Inner>,
    mut rx: mpsc::Receiver<oneshot::Sender<ReadIndexResult>>,
) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let Some(inner) = inner.upgrade() else { return };
        metrics::histogram!("berth_store_read_round_reads").record(waiters.len() as f64);
        // A stuck round must not hold the next ones up for long.
        let bound = inner.config.read_timeout.min(Duration::from_secs(1));
        let result = tokio::time::timeout(bound, read_index_round(&inner, bound))
            .await
            .unwrap_or_else(|_| {
                Err(ForwardFailure::Indeterminate(
                    "read-index round timed out".into(),
                ))
            });
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

async fn read_index_round(inner: &Inner, timeout: Duration) -> ReadIndexResult {
    let Some((leader, addr)) = current_leader(&inner.raft) else {
        return Err(ForwardFailure::NotLeader { leader: None });
    };
    if leader == inner.identity.node_id() {
        return leader_read_index(&inner.raft).await;
    }
    let channel = inner
        .channels
        .get(&addr)
        .map_err(|e| ForwardFailure::Indeterminate(e.to_string()))?;
    let req = request(&inner.identity, pb::ReadIndexRequest {}, Some(timeout));
    match raft_client(channel).read_index(req).await {
        Ok(resp) => Ok(resp.into_inner().index),
        Err(s) if s.code() == tonic::Code::FailedPrecondition => {
            Err(ForwardFailure::NotLeader { leader: None })
        }
        Err(s) => Err(ForwardFailure::Indeterminate(s.message().to_string())),
    }
}

/// The index a linearizable read must have applied, as the leader.
async fn leader_read_index(raft: &Raft) -> ReadIndexResult {
    match raft.get_read_linearizer(ReadPolicy::ReadIndex).await {
        Ok(l) => Ok(l.read_log_id().index()),
        Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
            Err(ForwardFailure::NotLeader {
                leader: f.leader_id,
            })
        }
        Err(e) => Err(ForwardFailure::Indeterminate(e.to_string())),
    }
}

fn raft_client(channel: Channel) -> RaftClient<Channel> {
    RaftClient::new(channel)
        .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
}

fn current_leader(raft: &Raft) -> Option<(NodeId, String)> {
    // Borrowed, not cloned: this runs for every batch and read round.
    let rx = raft.metrics();
    let m = rx.borrow_watched();
    let id = m.current_leader?;
    let addr = m.membership_config.get_node(&id)?.addr.clone();
    Some((id, addr))
}

async fn wait_for_leader_change(raft: &Raft, max: Duration) {
    let mut rx = raft.metrics();
    let _ = tokio::time::timeout(max.min(Duration::from_millis(200)), rx.changed()).await;
}

fn read_range(db: &DB, range: &KeyRange, limit: usize) -> Result<RangeResult, StoreError> {
    let storage = |e: &dyn std::fmt::Display| StoreError::Storage(e.to_string());
    let snap = db.snapshot();
    let revision = snapshot_revision(db, &snap).map_err(|e| storage(&e))?;
    let kv = cf(db, CF_KV);
    let mut kvs = Vec::new();
    let mut more = false;
    if range.end.is_none() {
        if let Some(bytes) = snap.get_cf(kv, &range.start).map_err(|e| storage(&e))? {
            let v: StoredValue = codec::decode("stored value", &bytes).map_err(|e| storage(&e))?;
            kvs.push(v.into_kv(range.start.clone()));
        }
    } else {
        let it = snap.iterator_cf(kv, IteratorMode::From(&range.start, Direction::Forward));
        for item in it {
            let (key, bytes) = item.map_err(|e| storage(&e))?;
            if !range.contains(&key) {
                break;
            }
            if limit > 0 && kvs.len() == limit {
                more = true;
                break;
            }
            let v: StoredValue = codec::decode("stored value", &bytes).map_err(|e| storage(&e))?;
            kvs.push(v.into_kv(key.to_vec()));
        }
    }
    Ok(RangeResult {
        kvs,
        revision,
        more,
    })
}

async fn propose_local(raft: &Raft, req: Request) -> Result<Vec<TxnOutcome>, ForwardFailure> {
    let n = req.txns.len();
    match raft.client_write(req).await {
        Ok(resp) if resp.data.outcomes.len() == n => Ok(resp.data.outcomes),
        Ok(resp) => Err(ForwardFailure::Storage(format!(
            "state machine answered {} outcomes for {n} transactions",
            resp.data.outcomes.len()
        ))),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(ForwardFailure::NotLeader {
                leader: f.leader_id,
            })
        }
        Err(e) => Err(ForwardFailure::Indeterminate(e.to_string())),
    }
}

async fn run_proposer(inner: std::sync::Weak<Inner>, mut rx: mpsc::Receiver<Pending>) {
    let slots = {
        let Some(i) = inner.upgrade() else { return };
        Arc::new(Semaphore::new(i.config.max_inflight_batches))
    };
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else { return };
        let Some(inner) = inner.upgrade() else { return };
        // Let the writers that are already running enqueue before the batch
        // is cut: costs a scheduler turn, saves a Raft entry per writer.
        tokio::task::yield_now().await;
        let mut bytes = first.txn.encoded_len();
        let mut batch = vec![first];
        while batch.len() < inner.config.max_batch_txns && bytes < inner.config.max_batch_bytes {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.txn.encoded_len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        metrics::histogram!("berth_store_batch_txns").record(batch.len() as f64);
        tokio::spawn(async move {
            submit(&inner, batch).await;
            drop(permit);
        });
    }
}

async fn submit(inner: &Inner, batch: Vec<Pending>) {
    let (txns, dones): (Vec<Txn>, Vec<_>) = batch.into_iter().map(|p| (p.txn, p.done)).unzip();
    let started = Instant::now();
    let result = propose(inner, Request { txns }).await;
    metrics::histogram!("berth_store_propose_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    match result {
        Ok(outcomes) => {
            for (done, outcome) in dones.into_iter().zip(outcomes) {
                let _ = done.send(Ok(outcome));
            }
        }
        Err(e) => {
            for done in dones {
                let _ = done.send(Err(e.clone()));
            }
        }
    }
}

/// Gets `req` committed by the leader, wherever it is. Only failures that
/// guarantee the entry was not appended are retried.
async fn propose(inner: &Inner, req: Request) -> Result<Vec<TxnOutcome>, StoreError> {
    let timeout = inner.config.write_timeout;
    let deadline = Instant::now() + timeout;
    let mut sent = false;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(if sent {
                StoreError::Indeterminate(timeout, "no answer from the leader".into())
            } else {
                StoreError::NoQuorum(timeout)
            });
        }
        let Some((leader, addr)) = current_leader(&inner.raft) else {
            wait_for_leader_change(&inner.raft, remaining).await;
            continue;
        };
        let attempt = if leader == inner.identity.node_id() {
            sent = true;
            match tokio::time::timeout(remaining, propose_local(&inner.raft, req.clone())).await {
                Ok(r) => r,
                Err(_) => continue,
            }
        } else {
            match forward(inner, &addr, &req, remaining).await {
                Ok(r) => {
                    sent = true;
                    r
                }
                Err(status) if not_delivered(&status) => {
                    tracing::debug!(leader, error = %status.message(), "forward not delivered; retrying");
                    tokio::time::sleep(Duration::from_millis(20).min(remaining)).await;
                    continue;
                }
                Err(status) => {
                    sent = true;
                    tracing::debug!(leader, error = %status.message(), "forward failed after sending");
                    Err(ForwardFailure::Indeterminate(status.message().to_string()))
                }
            }
        };
        match attempt {
            Ok(outcomes) => return Ok(outcomes),
            Err(ForwardFailure::NotLeader { .. }) => {
                // A new leader refuses writes until a quorum has acknowledged
                // it; waiting on metrics here would spin, as they change often.
                tokio::time::sleep(Duration::from_millis(5).min(remaining)).await;
            }
            Err(ForwardFailure::Indeterminate(m)) => {
                return Err(StoreError::Indeterminate(timeout, m))
            }
            Err(ForwardFailure::Storage(m)) => return Err(StoreError::Storage(m)),
        }
    }
}

/// Whether a failed call certainly never reached the peer: the
/// connection could not be made, or the peer refused it before handling.
fn not_delivered(status: &tonic::Status) -> bool {
    match status.code() {
        tonic::Code::FailedPrecondition => true,
        tonic::Code::Unavailable => {
            let m = status.message().to_ascii_lowercase();
            m.contains("connect") || m.contains("refused")
        }
        _ => false,
    }
}

async fn forward(
    inner: &Inner,
    addr: &str,
    req: &Request,
    timeout: Duration,
) -> Result<Result<Vec<TxnOutcome>, ForwardFailure>, tonic::Status> {
    let channel = inner
        .channels
        .get(addr)
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let msg = pb::RaftMessage {
        data: codec::encode(req).into(),
    };
    let resp = raft_client(channel)
        .forward(request(&inner.identity, msg, Some(timeout)))
        .await?;
    codec::decode("forward response", &resp.into_inner().data)
        .map_err(|e| tonic::Status::internal(e.to_string()))
}
