//! The state machine: Berth's ordered key space in column family `kv`, with
//! the global revision, the last applied log id and the membership in
//! `sm_meta`, all written in one RocksDB batch per applied batch of entries
//! so that they never disagree.
//!
//! Every transaction is validated here, when it applies, against the state
//! as it is at that point in the log: preconditions hold however stale the
//! proposer's view was, and every controller reaches the same outcome.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use futures::TryStreamExt;
use openraft::entry::RaftEntry;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use rocksdb::IteratorMode;
use rocksdb::WriteBatch;
use rocksdb::DB;
use serde::Deserialize;
use serde::Serialize;

use super::db::cf;
use super::db::CF_KV;
use super::db::CF_SM_META;
use super::snapshot;
use super::snapshot::SnapshotFile;
use crate::codec;
use crate::codec::io_error;
use crate::rules::BindOp;
use crate::rules::BindRefusal;
use crate::rules::BindRules;
use crate::types::validate_txn;
use crate::types::Event;
use crate::types::EventKind;
use crate::types::KeyValue;
use crate::types::LogId;
use crate::types::Op;
use crate::types::Precondition;
use crate::types::Response;
use crate::types::SnapshotMeta;
use crate::types::StoredMembership;
use crate::types::Txn;
use crate::types::TxnFailure;
use crate::types::TxnOutcome;
use crate::types::TypeConfig;
use crate::types::MAX_KEY_BYTES;
use crate::watch::WatchHub;

const KEY_APPLIED: &[u8] = b"last_applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
const KEY_REVISION: &[u8] = b"revision";

pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>;

/// A key's value and history as stored; the key itself is the RocksDB key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StoredValue {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

impl StoredValue {
    pub fn into_kv(self, key: Vec<u8>) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
        }
    }
}

pub struct StateMachine {
    db: Arc<DB>,
    snapshot_dir: PathBuf,
    hub: WatchHub,
    revision: u64,
    rules: Box<dyn BindRules>,
}

/// Reads the applied state of a state machine meta column family.
fn read_meta<T: serde::de::DeserializeOwned>(
    get: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error>,
    key: &[u8],
) -> io::Result<Option<T>> {
    get(key)
        .map_err(io_error)?
        .map(|b| codec::decode("state machine metadata", &b).map_err(io_error))
        .transpose()
}

/// The store's revision as last applied to `db`.
pub fn applied_revision(db: &DB) -> io::Result<u64> {
    Ok(read_meta(|k| db.get_cf(cf(db, CF_SM_META), k), KEY_REVISION)?.unwrap_or(0))
}

/// The store's revision as of a RocksDB snapshot of `db`.
pub fn snapshot_revision(db: &DB, snap: &rocksdb::Snapshot<'_>) -> io::Result<u64> {
    Ok(read_meta(|k| snap.get_cf(cf(db, CF_SM_META), k), KEY_REVISION)?.unwrap_or(0))
}

impl StateMachine {
    pub fn new(
        db: Arc<DB>,
        snapshot_dir: PathBuf,
        hub: WatchHub,
        rules: Box<dyn BindRules>,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(&snapshot_dir)?;
        snapshot::remove_partials(&snapshot_dir)?;
        let revision = applied_revision(&db)?;
        let mut sm = Self {
            db,
            snapshot_dir,
            hub,
            revision,
            rules,
        };
        sm.rebuild_rules()?;
        Ok(sm)
    }

    /// Shows the bind rules every stored key they watch, so that what they
    /// derive matches the state exactly (at start, after a snapshot).
    fn rebuild_rules(&mut self) -> io::Result<()> {
        let started = Instant::now();
        self.rules.reset();
        let prefix = self.rules.observed_prefix();
        let iter = self.db.iterator_cf(
            cf(&self.db, CF_KV),
            IteratorMode::From(prefix, rocksdb::Direction::Forward),
        );
        let mut keys = 0usize;
        for item in iter {
            let (key, raw) = item.map_err(io_error)?;
            if !key.starts_with(prefix) {
                break;
            }
            let stored: StoredValue = codec::decode("stored value", &raw).map_err(io_error)?;
            self.rules.observe(&key, Some(&stored.value));
            keys += 1;
        }
        tracing::info!(keys, elapsed = ?started.elapsed(), "bind rules rebuilt from the key space");
        Ok(())
    }

    fn current(
        &self,
        overlay: &HashMap<Vec<u8>, Option<StoredValue>>,
        key: &[u8],
    ) -> io::Result<Option<StoredValue>> {
        if let Some(v) = overlay.get(key) {
            return Ok(v.clone());
        }
        self.db
            .get_pinned_cf(cf(&self.db, CF_KV), key)
            .map_err(io_error)?
            .map(|b| codec::decode("stored value", &b).map_err(io_error))
            .transpose()
    }

    /// Applies one transaction on top of `overlay` (the batch's writes so
    /// far), or leaves everything untouched and says why not.
    fn apply_txn(
        &mut self,
        txn: &Txn,
        overlay: &mut HashMap<Vec<u8>, Option<StoredValue>>,
        batch: &mut WriteBatch,
        events: &mut Vec<Event>,
        revision: &mut u64,
    ) -> io::Result<TxnOutcome> {
        if let Err(failure) = validate_txn(txn) {
            return Ok(TxnOutcome::Failed(failure));
        }
        let rev = *revision + 1;
        // Ops see the effects of earlier ops of the same transaction.
        let mut local: HashMap<Vec<u8>, Option<StoredValue>> = HashMap::new();
        let mut prev = Vec::with_capacity(txn.ops.len());
        let mut txn_events = Vec::new();
        for (i, op) in txn.ops.iter().enumerate() {
            let key = op.key();
            let cur = match local.get(key) {
                Some(v) => v.clone(),
                None => self.current(overlay, key)?,
            };
            if let Err(f) = check(i as u32, key, op.precondition(), cur.as_ref()) {
                return Ok(TxnOutcome::Failed(f));
            }
            let new_value = match op {
                Op::Put { value, .. } => Some(value.clone()),
                Op::Bind {
                    node, epoch, time, ..
                } => {
                    let bind = BindOp {
                        pod_key: key,
                        node,
                        epoch: *epoch,
                        time,
                    };
                    match self.decide_bind(&bind, overlay, &local)? {
                        Ok(value) => Some(value),
                        Err((reason, message)) => {
                            return Ok(TxnOutcome::Failed(TxnFailure::BindRefused {
                                op: i as u32,
                                reason,
                                message,
                            }))
                        }
                    }
                }
                Op::Delete { .. } | Op::Check { .. } => None,
            };
            match op {
                Op::Put { .. } | Op::Bind { .. } => {
                    let stored = StoredValue {
                        value: new_value.unwrap_or_default(),
                        create_revision: cur.as_ref().map_or(rev, |c| c.create_revision),
                        mod_revision: rev,
                        version: cur.as_ref().map_or(1, |c| c.version + 1),
                    };
                    txn_events.push(Event {
                        kind: EventKind::Put,
                        kv: stored.clone().into_kv(key.to_vec()),
                    });
                    local.insert(key.to_vec(), Some(stored));
                }
                Op::Delete { .. } => {
                    if let Some(c) = &cur {
                        let mut last = c.clone();
                        last.mod_revision = rev;
                        txn_events.push(Event {
                            kind: EventKind::Delete,
                            kv: last.into_kv(key.to_vec()),
                        });
                        local.insert(key.to_vec(), None);
                    }
                }
                Op::Check { .. } => {}
            }
            prev.push(cur.map(|c| c.into_kv(key.to_vec())));
        }
        if txn_events.is_empty() {
            // Deletes of absent keys change nothing and take no revision.
            return Ok(TxnOutcome::Committed {
                revision: *revision,
                prev,
            });
        }
        let kv = cf(&self.db, CF_KV);
        let observed = self.rules.observed_prefix();
        for (key, value) in local {
            match &value {
                Some(v) => batch.put_cf(kv, &key, codec::encode(v)),
                None => batch.delete_cf(kv, &key),
            }
            if key.starts_with(observed) {
                self.rules
                    .observe(&key, value.as_ref().map(|v| v.value.as_slice()));
            }
            overlay.insert(key, value);
        }
        events.extend(txn_events);
        *revision = rev;
        Ok(TxnOutcome::Committed {
            revision: rev,
            prev,
        })
    }

    /// Asks the rules about a bind, letting them read any key as this
    /// transaction sees it.
    fn decide_bind(
        &self,
        bind: &BindOp<'_>,
        overlay: &HashMap<Vec<u8>, Option<StoredValue>>,
        local: &HashMap<Vec<u8>, Option<StoredValue>>,
    ) -> io::Result<Result<Vec<u8>, (BindRefusal, String)>> {
        let mut read = |key: &[u8]| -> io::Result<Option<Vec<u8>>> {
            let cur = match local.get(key) {
                Some(v) => v.clone(),
                None => self.current(overlay, key)?,
            };
            Ok(cur.map(|c| c.value))
        };
        self.rules.bind(bind, &mut read)
    }

    fn meta(&self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let get = |k: &[u8]| self.db.get_cf(cf(&self.db, CF_SM_META), k);
        let applied = read_meta(get, KEY_APPLIED)?;
        let membership = read_meta(get, KEY_MEMBERSHIP)?.unwrap_or_default();
        Ok((applied, membership))
    }
}

fn check(
    op: u32,
    key: &[u8],
    pre: Precondition,
    cur: Option<&StoredValue>,
) -> Result<(), TxnFailure> {
    match (pre, cur) {
        (Precondition::None, _) => Ok(()),
        (Precondition::Absent, None) => Ok(()),
        (Precondition::Absent, Some(_)) => Err(TxnFailure::AlreadyExists {
            op,
            key: key.to_vec(),
        }),
        (Precondition::Present | Precondition::ModRevision(_), None) => Err(TxnFailure::NotFound {
            op,
            key: key.to_vec(),
        }),
        (Precondition::Present, Some(_)) => Ok(()),
        (Precondition::ModRevision(expected), Some(c)) if c.mod_revision == expected => Ok(()),
        (Precondition::ModRevision(expected), Some(c)) => Err(TxnFailure::RevisionMismatch {
            op,
            key: key.to_vec(),
            expected,
            actual: c.mod_revision,
        }),
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        self.meta()
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let started = Instant::now();
        let mut batch = WriteBatch::default();
        let mut overlay = HashMap::new();
        let mut events = Vec::new();
        let mut revision = self.revision;
        let mut last_applied = None;
        let mut membership = None;
        let mut responses = Vec::new();
        let mut txns = 0usize;
        while let Some((entry, responder)) = entries.try_next().await? {
            last_applied = Some(entry.log_id());
            let response = match &entry.payload {
                EntryPayload::Blank => Response::default(),
                EntryPayload::Normal(req) => {
                    let mut outcomes = Vec::with_capacity(req.txns.len());
                    for txn in &req.txns {
                        outcomes.push(self.apply_txn(
                            txn,
                            &mut overlay,
                            &mut batch,
                            &mut events,
                            &mut revision,
                        )?);
                    }
                    txns += req.txns.len();
                    Response { outcomes }
                }
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id()), m.clone()));
                    Response::default()
                }
            };
            if let Some(r) = responder {
                responses.push((r, response));
            }
        }
        let Some(last_applied) = last_applied else {
            return Ok(());
        };
        let meta = cf(&self.db, CF_SM_META);
        batch.put_cf(meta, KEY_APPLIED, codec::encode(&last_applied));
        batch.put_cf(meta, KEY_REVISION, codec::encode(&revision));
        if let Some(m) = &membership {
            batch.put_cf(meta, KEY_MEMBERSHIP, codec::encode(m));
        }
        // Not synced: the entries are durable in the log, and what a crash
        // loses here is applied again from it on restart.
        self.db.write(batch).map_err(io_error)?;
        self.revision = revision;
        self.hub.publish(events, revision);
        for (responder, response) in responses {
            responder.send(response);
        }
        metrics::histogram!("berth_raft_apply_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("berth_raft_applied_txns_total").increment(txns as u64);
        metrics::gauge!("berth_store_revision").set(revision as f64);
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            dir: self.snapshot_dir.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: SnapshotFile,
    ) -> io::Result<()> {
        let db = self.db.clone();
        let dir = self.snapshot_dir.clone();
        let meta = meta.clone();
        let revision = tokio::task::spawn_blocking(move || install(&db, &dir, &meta, &data.path))
            .await
            .map_err(io_error)??;
        self.revision = revision;
        self.rebuild_rules()?;
        self.hub.reset(revision);
        metrics::counter!("berth_raft_snapshots_installed_total").increment(1);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let Some(path) = snapshot::latest(&self.snapshot_dir)? else {
            return Ok(None);
        };
        let header = snapshot::read_meta(&path)?;
        Ok(Some(Snapshot {
            meta: header.meta,
            snapshot: SnapshotFile { path },
        }))
    }
}

/// Replaces the whole state with the snapshot at `path`, atomically.
fn install(
    db: &DB,
    dir: &std::path::Path,
    meta: &SnapshotMeta,
    path: &std::path::Path,
) -> io::Result<u64> {
    let kv = cf(db, CF_KV);
    let mut batch = WriteBatch::default();
    // Every key is at most MAX_KEY_BYTES long, so this end is past them all.
    batch.delete_range_cf(kv, Vec::<u8>::new(), vec![0xffu8; MAX_KEY_BYTES + 1]);
    let header = snapshot::read(path, |k, v| batch.put_cf(kv, k, v))?;
    if header.meta.last_log_id != meta.last_log_id {
        return Err(io_error(format!(
            "snapshot file holds log position {:?}, but {:?} was announced",
            header.meta.last_log_id, meta.last_log_id
        )));
    }
    let m = cf(db, CF_SM_META);
    if let Some(applied) = &meta.last_log_id {
        batch.put_cf(m, KEY_APPLIED, codec::encode(applied));
    }
    batch.put_cf(m, KEY_MEMBERSHIP, codec::encode(&meta.last_membership));
    batch.put_cf(m, KEY_REVISION, codec::encode(&header.revision));
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts).map_err(io_error)?;
    let target = dir.join(snapshot::file_name(meta));
    if path != target {
        std::fs::rename(path, &target)?;
    }
    snapshot::prune(dir)?;
    Ok(header.revision)
}

pub struct SnapshotBuilder {
    db: Arc<DB>,
    dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let db = self.db.clone();
        let dir = self.dir.clone();
        let started = Instant::now();
        let (meta, path) = tokio::task::spawn_blocking(move || build(&db, &dir))
            .await
            .map_err(io_error)??;
        metrics::counter!("berth_raft_snapshots_built_total").increment(1);
        metrics::histogram!("berth_raft_snapshot_build_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        tracing::info!(path = %path.display(), last_log_id = ?meta.last_log_id, "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: SnapshotFile { path },
        })
    }
}

/// Writes the state as of one RocksDB snapshot, so data and metadata agree
/// even while entries keep being applied.
fn build(db: &DB, dir: &std::path::Path) -> io::Result<(SnapshotMeta, PathBuf)> {
    let snap = db.snapshot();
    let get = |k: &[u8]| snap.get_cf(cf(db, CF_SM_META), k);
    let last_log_id: Option<LogId> = read_meta(get, KEY_APPLIED)?;
    let last_membership: StoredMembership = read_meta(get, KEY_MEMBERSHIP)?.unwrap_or_default();
    let revision = snapshot_revision(db, &snap)?;
    let meta = SnapshotMeta {
        last_log_id,
        last_membership,
    };
    let header = snapshot::Header {
        meta: meta.clone(),
        revision,
    };
    let records = snap
        .iterator_cf(cf(db, CF_KV), IteratorMode::Start)
        .map(|item| item.map_err(io_error));
    let path = snapshot::write(dir, &header, records)?;
    snapshot::prune(dir)?;
    Ok((meta, path))
}

#[cfg(test)]
mod tests {
    use futures::stream;
    use openraft::impls::leader_id_adv::LeaderId;
    use openraft::Entry;

    use super::*;
    use crate::storage::db;

    fn put(key: &str, value: &str, precondition: Precondition) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            precondition,
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        sm: StateMachine,
        hub: WatchHub,
        index: u64,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let database = db::open(&dir.path().join("db")).unwrap();
            let hub = WatchHub::new(0, 1000, usize::MAX);
            let sm = StateMachine::new(
                database,
                dir.path().join("snapshots"),
                hub.clone(),
                Box::new(crate::rules::NoBinds),
            )
            .unwrap();
            Self {
                _dir: dir,
                sm,
                hub,
                index: 0,
            }
        }

        /// Applies one entry holding `txns`.
        async fn apply(&mut self, txns: Vec<Txn>) {
            self.index += 1;
            let log_id = LogId::new(
                LeaderId {
                    term: 1,
                    node_id: 1,
                },
                self.index,
            );
            let entry = Entry {
                log_id,
                payload: EntryPayload::Normal(crate::types::Request { txns }),
            };
            self.sm
                .apply(stream::iter(vec![Ok((entry, None))]))
                .await
                .unwrap();
        }

        fn get(&self, key: &str) -> Option<StoredValue> {
            let db = &self.sm.db;
            db.get_cf(cf(db, CF_KV), key.as_bytes())
                .unwrap()
                .map(|b| codec::decode("v", &b).unwrap())
        }
    }

    #[tokio::test]
    async fn revisions_versions_and_preconditions() {
        let mut f = Fixture::new();
        f.apply(vec![Txn {
            ops: vec![put("a", "1", Precondition::Absent)],
        }])
        .await;
        let a = f.get("a").unwrap();
        assert_eq!((a.create_revision, a.mod_revision, a.version), (1, 1, 1));

        // A failed create and a stale CAS change nothing and take no revision.
        f.apply(vec![
            Txn {
                ops: vec![put("a", "x", Precondition::Absent)],
            },
            Txn {
                ops: vec![put("a", "y", Precondition::ModRevision(7))],
            },
        ])
        .await;
        assert_eq!(f.get("a").unwrap().value, b"1");
        assert_eq!(f.sm.revision, 1);

        // A CAS at the current revision, batched with another write.
        f.apply(vec![
            Txn {
                ops: vec![put("a", "2", Precondition::ModRevision(1))],
            },
            Txn {
                ops: vec![put("b", "1", Precondition::None)],
            },
        ])
        .await;
        let a = f.get("a").unwrap();
        assert_eq!(
            (
                a.value.as_slice(),
                a.create_revision,
                a.mod_revision,
                a.version
            ),
            (&b"2"[..], 1, 2, 2)
        );
        assert_eq!(f.get("b").unwrap().mod_revision, 3);

        // Deleting an absent key takes no revision; deleting a present one does.
        f.apply(vec![Txn {
            ops: vec![Op::Delete {
                key: b"zz".to_vec(),
                precondition: Precondition::None,
            }],
        }])
        .await;
        assert_eq!(f.sm.revision, 3);
        f.apply(vec![Txn {
            ops: vec![Op::Delete {
                key: b"b".to_vec(),
                precondition: Precondition::Present,
            }],
        }])
        .await;
        assert!(f.get("b").is_none());
        assert_eq!(f.sm.revision, 4);
        assert_eq!(applied_revision(&f.sm.db).unwrap(), 4);
    }

    #[tokio::test]
    async fn a_transaction_is_all_or_nothing_and_sees_its_own_writes() {
        let mut f = Fixture::new();
        f.apply(vec![Txn {
            ops: vec![
                put("k", "1", Precondition::None),
                put("exists", "1", Precondition::None),
            ],
        }])
        .await;
        // Second op fails: the first must not be applied.
        f.apply(vec![Txn {
            ops: vec![
                put("new", "1", Precondition::Absent),
                put("exists", "2", Precondition::Absent),
            ],
        }])
        .await;
        assert!(f.get("new").is_none());
        // An op sees the effect of an earlier op in the same transaction.
        f.apply(vec![Txn {
            ops: vec![
                put("c", "1", Precondition::Absent),
                put("c", "2", Precondition::Present),
            ],
        }])
        .await;
        let c = f.get("c").unwrap();
        assert_eq!((c.value.as_slice(), c.version), (&b"2"[..], 2));
        // Both ops of one transaction share its revision.
        assert_eq!(
            f.get("k").unwrap().mod_revision,
            f.get("exists").unwrap().mod_revision
        );
    }

    #[tokio::test]
    async fn snapshots_round_trip_and_reset_watchers() {
        let mut f = Fixture::new();
        for i in 0..50 {
            f.apply(vec![Txn {
                ops: vec![put(&format!("key/{i}"), "v", Precondition::None)],
            }])
            .await;
        }
        let snap =
            f.sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
        assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(50));

        let mut g = Fixture::new();
        g.apply(vec![Txn {
            ops: vec![put("stale", "v", Precondition::None)],
        }])
        .await;
        g.sm.install_snapshot(&snap.meta, snap.snapshot.clone())
            .await
            .unwrap();
        assert!(
            g.get("stale").is_none(),
            "install replaces the whole key space"
        );
        assert!(g.get("key/49").is_some());
        assert_eq!(g.sm.revision, 50);
        assert!(
            g.hub.subscribe(1).is_err(),
            "history before the snapshot is gone"
        );
        let (applied, _) = g.sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(50));
    }

    #[test]
    fn postcard_round_trips_raft_messages() {
        let entry: crate::types::Entry = Entry {
            log_id: LogId::new(
                LeaderId {
                    term: 3,
                    node_id: 2,
                },
                9,
            ),
            payload: EntryPayload::Normal(crate::types::Request {
                txns: vec![Txn {
                    ops: vec![put("a", "b", Precondition::ModRevision(4))],
                }],
            }),
        };
        let bytes = codec::encode(&entry);
        let back: crate::types::Entry = codec::decode("entry", &bytes).unwrap();
        assert_eq!(back, entry);
        let vote = crate::types::Vote::new(3, 2);
        let back: crate::types::Vote = codec::decode("vote", &codec::encode(&vote)).unwrap();
        assert_eq!(back, vote);
    }
}
