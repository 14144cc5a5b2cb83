//! Durable state: the RocksDB instance, the Raft log store, the state
//! machine and its snapshot files.

pub mod db;
pub mod log_store;
pub mod snapshot;
pub mod state_machine;

pub use log_store::LogStore;
pub use snapshot::SnapshotFile;
pub use state_machine::StateMachine;
pub use state_machine::StoredValue;
