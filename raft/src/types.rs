//! The Raft type configuration and the commands the state machine applies.

use std::fmt;

use serde::Deserialize;
use serde::Serialize;

use crate::rules::BindRefusal;

openraft::declare_raft_types!(
    /// Berth's openraft configuration: node ids are `u64`, nodes are known by
    /// their gRPC address, and one log entry carries a batch of transactions.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig, crate::storage::StateMachine>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;

/// Longest key the store accepts.
pub const MAX_KEY_BYTES: usize = 3 * 1024;
/// Largest value the store accepts. The typed API refuses objects over
/// 1 MiB before they get here; this bound protects the log itself.
pub const MAX_VALUE_BYTES: usize = 3 * 1024 * 1024 / 2;
/// Most operations in one transaction.
pub const MAX_TXN_OPS: usize = 1024;

/// A condition on a key's current state, evaluated when the write applies.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precondition {
    #[default]
    None,
    Absent,
    Present,
    ModRevision(u64),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        precondition: Precondition,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        precondition: Precondition,
    },
    /// Writes nothing: the transaction commits only if the precondition
    /// holds (an object's namespace still exists, unchanged).
    Check {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        precondition: Precondition,
    },
    /// Places a pending pod on a node, decided at apply by the store's
    /// `BindRules` (fencing epoch, node state, resources).
    Bind {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        node: String,
        epoch: u64,
        time: String,
    },
}

impl Op {
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. }
            | Op::Delete { key, .. }
            | Op::Check { key, .. }
            | Op::Bind { key, .. } => key,
        }
    }

    pub fn precondition(&self) -> Precondition {
        match self {
            Op::Put { precondition, .. }
            | Op::Delete { precondition, .. }
            | Op::Check { precondition, .. } => *precondition,
            Op::Bind { .. } => Precondition::Present,
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Op::Put { key, value, .. } => key.len() + value.len() + 16,
            Op::Delete { key, .. } | Op::Check { key, .. } => key.len() + 16,
            Op::Bind {
                key, node, time, ..
            } => key.len() + node.len() + time.len() + 24,
        }
    }
}

/// Operations that commit together at one revision, or not at all.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Txn {
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn encoded_len(&self) -> usize {
        self.ops.iter().map(Op::encoded_len).sum()
    }
}

/// One Raft entry's payload: transactions from many clients coalesced.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Request {
    pub txns: Vec<Txn>,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Request({} txns)", self.txns.len())
    }
}

/// A key's stored state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

/// Why a transaction did not commit. Decided by the state machine, so every
/// controller decides the same.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum TxnFailure {
    /// Operation `op` required the key to be absent.
    AlreadyExists {
        op: u32,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Operation `op` required the key to exist.
    NotFound {
        op: u32,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Operation `op` required another mod_revision.
    RevisionMismatch {
        op: u32,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        expected: u64,
        actual: u64,
    },
    /// The transaction is malformed (empty key, too large, too many ops).
    Invalid { reason: String },
    /// The store's bind rules refused operation `op`.
    BindRefused {
        op: u32,
        reason: BindRefusal,
        message: String,
    },
}

impl fmt::Display for TxnFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = |key: &[u8]| String::from_utf8_lossy(key).into_owned();
        match self {
            TxnFailure::AlreadyExists { key, .. } => write!(f, "key {:?} already exists", k(key)),
            TxnFailure::NotFound { key, .. } => write!(f, "key {:?} not found", k(key)),
            TxnFailure::RevisionMismatch {
                key,
                expected,
                actual,
                ..
            } => write!(
                f,
                "key {:?} is at revision {actual}, not {expected}: read it again and retry",
                k(key)
            ),
            TxnFailure::Invalid { reason } => f.write_str(reason),
            TxnFailure::BindRefused { message, .. } => f.write_str(message),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    Committed {
        revision: u64,
        /// Each operation's key as it was before, if it existed.
        prev: Vec<Option<KeyValue>>,
    },
    Failed(TxnFailure),
}

/// The state machine's answer to one entry: one outcome per transaction.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Response {
    pub outcomes: Vec<TxnOutcome>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One applied change, as published to watchers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// For a delete: the key's last value, with `mod_revision` set to the
    /// deleting revision.
    pub kv: KeyValue,
}

impl Event {
    pub fn revision(&self) -> u64 {
        self.kv.mod_revision
    }
}

/// Checks what can be checked without state. Run by the API before
/// proposing, and again by the state machine so that a bad entry in the log
/// can never apply differently on different controllers.
pub fn validate_txn(txn: &Txn) -> Result<(), TxnFailure> {
    let invalid = |reason: String| Err(TxnFailure::Invalid { reason });
    if txn.ops.is_empty() {
        return invalid("a transaction needs at least one operation".into());
    }
    if txn.ops.len() > MAX_TXN_OPS {
        return invalid(format!(
            "a transaction has {} operations; at most {MAX_TXN_OPS} are allowed",
            txn.ops.len()
        ));
    }
    if txn
        .ops
        .iter()
        .filter(|op| matches!(op, Op::Bind { .. }))
        .count()
        > 1
    {
        // The bind rules see the state before the transaction, so a second
        // bind in it could not count the first.
        return invalid("a transaction may hold at most one bind".into());
    }
    for op in &txn.ops {
        let key = op.key();
        if key.is_empty() {
            return invalid("keys must not be empty".into());
        }
        if key.len() > MAX_KEY_BYTES {
            return invalid(format!(
                "a key of {} bytes is over the {MAX_KEY_BYTES}-byte limit",
                key.len()
            ));
        }
        if let Op::Put { value, .. } = op {
            if value.len() > MAX_VALUE_BYTES {
                return invalid(format!(
                    "a value of {} bytes is over the {MAX_VALUE_BYTES}-byte limit",
                    value.len()
                ));
            }
        }
    }
    Ok(())
}

/// A key range: `[start, end)`, or the single key `start` when `end` is None.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        Self {
            start: key.into(),
            end: None,
        }
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let start: Vec<u8> = prefix.into();
        let mut end = start.clone();
        // The smallest key greater than every key with this prefix.
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                return Self {
                    start,
                    end: Some(end),
                };
            }
        }
        Self {
            start,
            end: Some(Vec::new()),
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            None => key == self.start.as_slice(),
            // An empty end means "to the end of the key space".
            Some(end) => key >= self.start.as_slice() && (end.is_empty() || key < end.as_slice()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Op` as it was encoded before its byte fields were marked
    /// `serde_bytes`: logs and snapshots written then must still decode.
    #[derive(Serialize)]
    enum OpBefore {
        Put {
            key: Vec<u8>,
            value: Vec<u8>,
            precondition: Precondition,
        },
        Delete {
            key: Vec<u8>,
            precondition: Precondition,
        },
    }

    #[test]
    fn byte_fields_encode_as_before() {
        let now = Op::Put {
            key: b"/registry/pods/default/web".to_vec(),
            value: vec![0, 1, 2, 255],
            precondition: Precondition::ModRevision(7),
        };
        let before = OpBefore::Put {
            key: b"/registry/pods/default/web".to_vec(),
            value: vec![0, 1, 2, 255],
            precondition: Precondition::ModRevision(7),
        };
        assert_eq!(crate::codec::encode(&now), crate::codec::encode(&before));
        let now = Op::Delete {
            key: b"k".to_vec(),
            precondition: Precondition::Absent,
        };
        let before = OpBefore::Delete {
            key: b"k".to_vec(),
            precondition: Precondition::Absent,
        };
        assert_eq!(crate::codec::encode(&now), crate::codec::encode(&before));
    }
}
