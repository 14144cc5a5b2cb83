//! The hook through which the state machine decides binds.
//!
//! The store itself knows keys and bytes, not pods and nodes; whoever
//! embeds it (the controller) supplies `BindRules` that decode objects,
//! keep whatever index they need (every pod's share of its node) and decide
//! each `Op::Bind` when it applies. Because they run inside the state
//! machine, on every controller, over the same log, the decision is the
//! same everywhere, however stale the scheduler that proposed the bind.

use std::io;

use serde::Deserialize;
use serde::Serialize;

/// Why the state machine refused a bind. The scheduler acts on the reason:
/// a stale epoch means it lost its lease; a bound or missing pod is dropped
/// from its queue; the others send the pod back to be placed again.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BindRefusal {
    StaleEpoch,
    PodNotFound,
    AlreadyBound,
    NodeNotFound,
    NodeNotReady,
    NodeUnschedulable,
    Insufficient,
    Invalid,
}

impl BindRefusal {
    /// A short label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BindRefusal::StaleEpoch => "stale_epoch",
            BindRefusal::PodNotFound => "pod_not_found",
            BindRefusal::AlreadyBound => "already_bound",
            BindRefusal::NodeNotFound => "node_not_found",
            BindRefusal::NodeNotReady => "node_not_ready",
            BindRefusal::NodeUnschedulable => "node_unschedulable",
            BindRefusal::Insufficient => "insufficient",
            BindRefusal::Invalid => "invalid",
        }
    }
}

/// Reads a key's current value as the transaction sees it.
pub type ReadKey<'a> = dyn FnMut(&[u8]) -> io::Result<Option<Vec<u8>>> + 'a;

pub trait BindRules: Send + Sync + 'static {
    /// Keys under this prefix are passed to `observe`.
    fn observed_prefix(&self) -> &'static [u8];

    /// Forgets everything derived and starts again from an empty key space
    /// (before a snapshot's keys are observed, or at start).
    fn reset(&mut self);

    /// A key under `observed_prefix` now holds `value`, or was deleted.
    fn observe(&mut self, key: &[u8], value: Option<&[u8]>);

    /// Decides `Op::Bind`: the pod's new value, or why not.
    fn bind(
        &self,
        bind: &BindOp,
        read: &mut ReadKey<'_>,
    ) -> io::Result<Result<Vec<u8>, (BindRefusal, String)>>;
}

/// The fields of `Op::Bind`, as passed to the rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindOp<'a> {
    pub pod_key: &'a [u8],
    pub node: &'a str,
    pub epoch: u64,
    /// The proposer's clock, for the PodScheduled condition: the state
    /// machine must not read a clock of its own.
    pub time: &'a str,
}

/// Rules for a store that holds no objects: every bind is refused.
pub struct NoBinds;

impl BindRules for NoBinds {
    fn observed_prefix(&self) -> &'static [u8] {
        b"\xff"
    }

    fn reset(&mut self) {}

    fn observe(&mut self, _key: &[u8], _value: Option<&[u8]>) {}

    fn bind(
        &self,
        _bind: &BindOp,
        _read: &mut ReadKey<'_>,
    ) -> io::Result<Result<Vec<u8>, (BindRefusal, String)>> {
        Ok(Err((
            BindRefusal::Invalid,
            "this store has no bind rules".into(),
        )))
    }
}
