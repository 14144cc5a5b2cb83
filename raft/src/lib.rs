//! berth-raft owns the replicated store under Berth's control plane:
//! openraft's type configuration, the RocksDB log store and state machine,
//! snapshots, the gRPC Raft transport, and the store API on top (revisions,
//! compare-and-set, transactions, linearizable reads, the watch hub).
//!
//! openraft is pinned to `=0.10.0-alpha.37`: the 0.10 line is where openraft
//! develops (streamed append, read-index, pre-vote); 0.9 only takes fixes.

#![forbid(unsafe_code)]

pub mod codec;
pub mod error;
pub mod identity;
mod metrics;
pub mod network;
pub mod node;
pub mod rules;
pub mod service;
pub mod storage;
pub mod store;
pub mod types;
pub mod watch;

pub use error::StoreError;
pub use identity::Identity;
pub use node::Node;
pub use node::NodeConfig;
pub use rules::BindOp;
pub use rules::BindRefusal;
pub use rules::BindRules;
pub use store::Store;
pub use store::StoreConfig;
pub use types::Event;
pub use types::EventKind;
pub use types::KeyRange;
pub use types::KeyValue;
pub use types::Op;
pub use types::Precondition;
pub use types::Txn;
pub use types::TxnFailure;
pub use types::TxnOutcome;
pub use watch::WatchBatch;
