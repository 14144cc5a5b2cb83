//! The one RocksDB instance a controller keeps: the Raft log, Raft metadata
//! and the state machine live in column families of it, so that they share
//! one write-ahead log and one fsync orders them all.

use std::path::Path;
use std::sync::Arc;

use rocksdb::ColumnFamilyDescriptor;
use rocksdb::Options;
use rocksdb::DB;

pub const CF_LOGS: &str = "logs";
pub const CF_RAFT_META: &str = "raft_meta";
pub const CF_KV: &str = "kv";
pub const CF_SM_META: &str = "sm_meta";

#[derive(Debug, thiserror::Error)]
#[error(
    "could not open the store at {path}: {source}. Is another `berth server` using this data dir?"
)]
pub struct OpenError {
    path: String,
    source: rocksdb::Error,
}

pub fn open(path: &Path) -> Result<Arc<DB>, OpenError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    // Log entries and metadata are synced by the log store's writer; RocksDB
    // itself must not batch WAL writes in user space, or a sync could miss
    // a write that `append` already returned for.
    opts.set_manual_wal_flush(false);
    opts.increase_parallelism(2);
    let cfs = [CF_LOGS, CF_RAFT_META, CF_KV, CF_SM_META]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, cf_options(name)));
    DB::open_cf_descriptors(&opts, path, cfs)
        .map(Arc::new)
        .map_err(|source| OpenError {
            path: path.display().to_string(),
            source,
        })
}

fn cf_options(name: &str) -> Options {
    let mut opts = Options::default();
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    if name == CF_LOGS {
        // Log entries are written once in index order and deleted in ranges.
        opts.set_write_buffer_size(64 << 20);
    }
    opts
}

pub fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name)
        .unwrap_or_else(|| panic!("column family {name} is created at open"))
}
