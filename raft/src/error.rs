//! Errors of the replicated store, each saying what went wrong and what the
//! caller can do about it, and how each maps to a gRPC status.

use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;

/// A watch asked for a revision the hub's buffer no longer holds.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error(
    "revision {requested} is no longer available: this controller keeps changes from revision {oldest} on; list again and watch from the list's revision"
)]
pub struct Compacted {
    pub requested: u64,
    pub oldest: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error(
        "no leader could be reached within {0:?}: fewer than a quorum of controllers are up or reachable; check `berth cluster status` and start the missing controllers"
    )]
    NoQuorum(Duration),
    #[error(
        "the write was not confirmed within {0:?} ({1}); it may or may not have been applied: read the key to find out before retrying"
    )]
    Indeterminate(Duration, String),
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Compacted(#[from] Compacted),
    #[error("this controller is shutting down; retry on another controller")]
    ShuttingDown,
    #[error(
        "storage failure on this controller: {0}; retry on another controller and check its logs"
    )]
    Storage(String),
}

impl From<StoreError> for tonic::Status {
    fn from(e: StoreError) -> Self {
        let msg = e.to_string();
        match e {
            StoreError::NoQuorum(_) | StoreError::Indeterminate(..) | StoreError::ShuttingDown => {
                tonic::Status::unavailable(msg)
            }
            StoreError::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            StoreError::Compacted(_) => tonic::Status::out_of_range(msg),
            StoreError::Storage(_) => tonic::Status::internal(msg),
        }
    }
}

/// A forwarded write's failure as the leader reports it to a follower.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ForwardFailure {
    /// Not appended: safe to send to `leader`.
    NotLeader {
        leader: Option<u64>,
    },
    /// Appended, then the leader lost its term: the outcome is unknown.
    Indeterminate(String),
    Storage(String),
}
