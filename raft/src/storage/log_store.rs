//! The Raft log in RocksDB.
//!
//! Entries go to column family `logs` keyed by big-endian index; the vote,
//! the committed log id and the last purged log id go to `raft_meta`.
//! `append` writes entries to RocksDB before it returns (openraft reads them
//! back right away) but acknowledges them only once they are on disk: a
//! single writer thread takes every pending acknowledgement, issues one
//! `fsync` of the write-ahead log for all of them and then completes them in
//! order. Under load many appends share one fsync (group commit); a vote is
//! made durable through the same writer, so nothing is reordered.

use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use rocksdb::Direction;
use rocksdb::IteratorMode;
use rocksdb::WriteBatch;
use rocksdb::DB;
use tokio::sync::oneshot;

use super::db::cf;
use super::db::CF_LOGS;
use super::db::CF_RAFT_META;
use crate::codec;
use crate::codec::io_error;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::TypeConfig;
use crate::types::Vote;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

enum SyncWaiter {
    Append(IOFlushed<TypeConfig>, usize),
    Notify(oneshot::Sender<io::Result<()>>),
}

#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    sync_tx: mpsc::Sender<SyncWaiter>,
}

impl LogStore {
    pub fn new(db: Arc<DB>) -> Self {
        let (sync_tx, sync_rx) = mpsc::channel();
        let sync_db = db.clone();
        std::thread::Builder::new()
            .name("berth-log-sync".into())
            .spawn(move || run_sync_writer(sync_db, sync_rx))
            .expect("spawn the log sync thread");
        Self { db, sync_tx }
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        let bytes = self
            .db
            .get_cf(cf(&self.db, CF_RAFT_META), key)
            .map_err(io_error)?;
        bytes
            .map(|b| codec::decode("raft metadata", &b).map_err(io_error))
            .transpose()
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> io::Result<()> {
        self.db
            .put_cf(cf(&self.db, CF_RAFT_META), key, codec::encode(value))
            .map_err(io_error)
    }

    /// Waits until everything written so far is on disk.
    async fn sync(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.sync_tx
            .send(SyncWaiter::Notify(tx))
            .map_err(|_| io_error("the log sync thread has stopped"))?;
        rx.await
            .map_err(|_| io_error("the log sync thread has stopped"))?
    }

    fn last_entry_log_id(&self) -> io::Result<Option<LogId>> {
        let mut it = self
            .db
            .iterator_cf(cf(&self.db, CF_LOGS), IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(item) => {
                let (_, bytes) = item.map_err(io_error)?;
                let entry: Entry = codec::decode("log entry", &bytes).map_err(io_error)?;
                Ok(Some(entry.log_id()))
            }
        }
    }
}

fn run_sync_writer(db: Arc<DB>, rx: mpsc::Receiver<SyncWaiter>) {
    while let Ok(first) = rx.recv() {
        let mut waiters = vec![first];
        waiters.extend(rx.try_iter());
        let started = Instant::now();
        let result = db.flush_wal(true);
        metrics::histogram!("berth_raft_log_fsync_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        let entries: usize = waiters
            .iter()
            .map(|w| match w {
                SyncWaiter::Append(_, n) => *n,
                SyncWaiter::Notify(_) => 0,
            })
            .sum();
        metrics::histogram!("berth_raft_log_fsync_batch_entries").record(entries as f64);
        for waiter in waiters {
            let res = result.as_ref().map(|_| ()).map_err(io_error);
            match waiter {
                SyncWaiter::Append(cb, _) => cb.io_completed(res),
                SyncWaiter::Notify(tx) => {
                    let _ = tx.send(res);
                }
            }
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => *x + 1,
            Bound::Unbounded => 0,
        };
        let from = index_key(start);
        let mut entries = Vec::new();
        let it = self.db.iterator_cf(
            cf(&self.db, CF_LOGS),
            IteratorMode::From(&from, Direction::Forward),
        );
        for item in it {
            let (key, bytes) = item.map_err(io_error)?;
            let index = u64::from_be_bytes(key.as_ref().try_into().map_err(io_error)?);
            if !range.contains(&index) {
                break;
            }
            entries.push(codec::decode("log entry", &bytes).map_err(io_error)?);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.get_meta(KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_PURGED)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        self.put_meta(KEY_VOTE, vote)?;
        self.sync().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        // Not synced: after a crash an older committed id only means the
        // state machine is re-applied less far until the leader says more.
        match committed {
            Some(c) => self.put_meta(KEY_COMMITTED, &c),
            None => Ok(()),
        }
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        self.get_meta(KEY_COMMITTED)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let logs = cf(&self.db, CF_LOGS);
        let mut count = 0;
        for entry in entries {
            batch.put_cf(logs, index_key(entry.index()), codec::encode(&entry));
            count += 1;
        }
        self.db.write(batch).map_err(io_error)?;
        metrics::counter!("berth_raft_log_appended_entries_total").increment(count as u64);
        self.sync_tx
            .send(SyncWaiter::Append(callback, count))
            .map_err(|_| io_error("the log sync thread has stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map(|id| id.index() + 1).unwrap_or(0);
        self.db
            .delete_range_cf(cf(&self.db, CF_LOGS), index_key(from), index_key(u64::MAX))
            .map_err(io_error)?;
        // Deleting the last possible key too: the range end is exclusive.
        self.db
            .delete_cf(cf(&self.db, CF_LOGS), index_key(u64::MAX))
            .map_err(io_error)
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        // Record the purge point first: entries at or below it are ignored
        // on restart even if the range delete below did not complete.
        self.put_meta(KEY_PURGED, &log_id)?;
        self.db
            .delete_range_cf(
                cf(&self.db, CF_LOGS),
                index_key(0),
                index_key(log_id.index() + 1),
            )
            .map_err(io_error)
    }
}
