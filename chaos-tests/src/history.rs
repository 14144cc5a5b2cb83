//! What happened during a run: every client operation with the time it was
//! invoked and completed and how it ended, and every fault with its window.
//! Times are milliseconds since the run started, on a monotonic clock.

use std::sync::Mutex;
use std::time::Instant;

use serde::Deserialize;
use serde::Serialize;

/// What an operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Linearizable read of a register.
    Read,
    /// Unconditional write of a register.
    Write,
    /// Compare-and-set of a register: write `value` if it holds `expect`.
    Cas,
    /// Create of an object that did not exist (a ConfigMap, Node or Service).
    Create,
    /// Delete of an object.
    Delete,
    /// A deployment's replicas set to `value`.
    Scale,
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It happened.
    Ok,
    /// It did not happen.
    Fail,
    /// Unknown: it timed out or the connection broke after it was sent, so
    /// it may have happened or not.
    Info,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    pub id: usize,
    /// The client that ran it. A client whose operation ended Info takes a
    /// new process number, as in Jepsen: the old one may still be running.
    pub process: u64,
    pub kind: OpKind,
    /// The register, or `Kind/name` of an object.
    pub key: String,
    /// The value written (write, cas, scale) or read (read).
    pub value: Option<i64>,
    /// The value a cas expected.
    pub expect: Option<i64>,
    pub invoke_ms: f64,
    /// None when the outcome is Info.
    pub complete_ms: Option<f64>,
    pub outcome: Outcome,
    pub error: Option<String>,
    /// The controller the client talked to.
    pub controller: String,
}

impl Op {
    /// A hand-made operation for checkers' tests.
    #[cfg(test)]
    pub fn made(
        id: usize,
        kind: OpKind,
        key: &str,
        value: i64,
        span: (f64, Option<f64>),
        outcome: Outcome,
    ) -> Self {
        Op {
            id,
            process: 0,
            kind,
            key: key.into(),
            value: Some(value),
            expect: None,
            invoke_ms: span.0,
            complete_ms: span.1,
            outcome,
            error: None,
            controller: String::new(),
        }
    }

    /// How long the operation took, or None if it never completed.
    pub fn latency_ms(&self) -> Option<f64> {
        self.complete_ms.map(|c| c - self.invoke_ms)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultWindow {
    /// kill, pause, partition, netem or agent.
    pub kind: String,
    /// What exactly: whom, which sides.
    pub detail: String,
    pub start_ms: f64,
    pub end_ms: f64,
}

/// A line of history.jsonl.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    Op(Op),
    Fault(FaultWindow),
}

/// The history as the run records it; shared by every client.
pub struct Recorder {
    start: Instant,
    inner: Mutex<Recorded>,
}

#[derive(Default)]
struct Recorded {
    ops: Vec<Op>,
    faults: Vec<FaultWindow>,
}

/// An operation between invoke and completion.
pub struct Pending {
    process: u64,
    kind: OpKind,
    key: String,
    value: Option<i64>,
    expect: Option<i64>,
    invoke_ms: f64,
    controller: String,
}

impl Pending {
    pub fn expecting(mut self, expect: i64) -> Self {
        self.expect = Some(expect);
        self
    }

    pub fn controller(mut self, controller: &str) -> Self {
        self.controller = controller.to_string();
        self
    }
}

impl Recorder {
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            inner: Mutex::default(),
        }
    }

    pub fn now_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }

    pub fn invoke(&self, process: u64, kind: OpKind, key: &str, value: Option<i64>) -> Pending {
        Pending {
            process,
            kind,
            key: key.to_string(),
            value,
            expect: None,
            invoke_ms: self.now_ms(),
            controller: String::new(),
        }
    }

    /// Records how `pending` ended; `value` replaces the invoked value when
    /// given (what a read returned).
    pub fn complete(
        &self,
        pending: Pending,
        outcome: Outcome,
        value: Option<i64>,
        error: Option<String>,
    ) -> Op {
        let complete_ms = (outcome != Outcome::Info).then(|| self.now_ms());
        let mut inner = self.inner.lock().expect("history lock");
        let op = Op {
            id: inner.ops.len(),
            process: pending.process,
            kind: pending.kind,
            key: pending.key,
            value: value.or(pending.value),
            expect: pending.expect,
            invoke_ms: pending.invoke_ms,
            complete_ms,
            outcome,
            error,
            controller: pending.controller,
        };
        inner.ops.push(op.clone());
        op
    }

    pub fn fault(&self, window: FaultWindow) {
        self.inner.lock().expect("history lock").faults.push(window);
    }

    pub fn ops(&self) -> Vec<Op> {
        self.inner.lock().expect("history lock").ops.clone()
    }

    pub fn faults(&self) -> Vec<FaultWindow> {
        self.inner.lock().expect("history lock").faults.clone()
    }
}
