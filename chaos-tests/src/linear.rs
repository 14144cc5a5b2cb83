//! Linearizability of register histories: Wing and Gong's search with
//! Lowe's just-in-time linearization and a cache of visited states, as in
//! Porcupine, run per register (a history of independent registers is
//! linearizable if each register's is).
//!
//! An operation whose outcome is unknown (Info) has no return: it may take
//! effect at any point after its invoke, or never. An operation that failed
//! did not happen and is left out, as in Knossos: a read that failed says
//! nothing, and a cas fails for reasons that say nothing of the register
//! too (its controller refused the connection).

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::time::Duration;
use std::time::Instant;

use crate::history::Op;
use crate::history::OpKind;
use crate::history::Outcome;

/// What the search found for one register or for all.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Linearizable,
    /// No order of the operations explains what clients saw.
    Violation(String),
    /// The search ran out of time: neither proven nor refuted.
    Unknown(String),
}

/// A register operation as the model sees it.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// A read that returned this value.
    Read(i64),
    Write(i64),
    /// A cas that succeeded.
    CasOk {
        expect: i64,
        new: i64,
    },
    /// A cas with unknown outcome: it applied if the register held `expect`.
    CasMaybe {
        expect: i64,
        new: i64,
    },
}

impl Step {
    fn of(op: &Op) -> Option<Self> {
        let value = op.value?;
        match (op.kind, op.outcome) {
            (OpKind::Read, Outcome::Ok) => Some(Step::Read(value)),
            (OpKind::Write, Outcome::Ok | Outcome::Info) => Some(Step::Write(value)),
            (OpKind::Cas, Outcome::Ok) => Some(Step::CasOk {
                expect: op.expect?,
                new: value,
            }),
            (OpKind::Cas, Outcome::Info) => Some(Step::CasMaybe {
                expect: op.expect?,
                new: value,
            }),
            _ => None,
        }
    }

    /// The register after this step from `state`, or None if the step
    /// cannot happen there.
    fn apply(self, state: i64) -> Option<i64> {
        match self {
            Step::Read(v) => (v == state).then_some(state),
            Step::Write(v) => Some(v),
            Step::CasOk { expect, new } => (expect == state).then_some(new),
            Step::CasMaybe { expect, new } => Some(if expect == state { new } else { state }),
        }
    }
}

/// Checks every register in `ops` (kinds read, write and cas), each
/// starting at `initial`, within `budget` in all.
pub fn check(ops: &[Op], initial: i64, budget: Duration) -> Verdict {
    let deadline = Instant::now() + budget;
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        if matches!(op.kind, OpKind::Read | OpKind::Write | OpKind::Cas) {
            by_key.entry(&op.key).or_default().push(op);
        }
    }
    let mut unknown = Vec::new();
    for (key, ops) in by_key {
        match check_register(&ops, initial, deadline) {
            Verdict::Linearizable => {}
            Verdict::Violation(why) => return Verdict::Violation(format!("{key}: {why}")),
            Verdict::Unknown(why) => unknown.push(format!("{key}: {why}")),
        }
    }
    match unknown.is_empty() {
        true => Verdict::Linearizable,
        false => Verdict::Unknown(unknown.join("; ")),
    }
}

const NIL: usize = usize::MAX;

/// One invoke or return in time order; the list the search lifts
/// operations out of.
struct Events {
    /// (operation index, is the call).
    event: Vec<(usize, bool)>,
    /// Index of each call's return event.
    ret: Vec<usize>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// The sentinel before the first event.
    head: usize,
}

impl Events {
    fn new(calls: &[f64], returns: &[f64]) -> Self {
        let mut order: Vec<(f64, bool, usize)> = Vec::with_capacity(calls.len() * 2);
        for (i, (c, r)) in calls.iter().zip(returns).enumerate() {
            order.push((*c, true, i));
            order.push((*r, false, i));
        }
        // Calls before returns at the same instant: the two overlap.
        order.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
        let n = order.len();
        let head = n;
        let mut ret = vec![0; calls.len()];
        let mut event = Vec::with_capacity(n);
        for (index, (_, is_call, op)) in order.iter().enumerate() {
            if !is_call {
                ret[*op] = index;
            }
            event.push((*op, *is_call));
        }
        let mut next: Vec<usize> = (1..=n).collect();
        next[n - 1] = NIL;
        next.push(if n == 0 { NIL } else { 0 });
        let mut prev: Vec<usize> = (0..n).map(|i| if i == 0 { head } else { i - 1 }).collect();
        prev.push(NIL);
        Self {
            event,
            ret,
            next,
            prev,
            head,
        }
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NIL {
            self.prev[n] = e;
        }
    }

    /// Takes a call and its return out of the list.
    fn lift(&mut self, call: usize) {
        let op = self.event[call].0;
        self.unlink(call);
        self.unlink(self.ret[op]);
    }

    /// Undoes `lift`.
    fn unlift(&mut self, call: usize) {
        let op = self.event[call].0;
        self.relink(self.ret[op]);
        self.relink(call);
    }
}

fn check_register(ops: &[&Op], initial: i64, deadline: Instant) -> Verdict {
    let mut steps = Vec::new();
    let mut kept: Vec<&Op> = Vec::new();
    for op in ops {
        if let Some(step) = Step::of(op) {
            steps.push(step);
            kept.push(op);
        }
    }
    if steps.is_empty() {
        return Verdict::Linearizable;
    }
    let calls: Vec<f64> = kept.iter().map(|o| o.invoke_ms).collect();
    let returns: Vec<f64> = kept
        .iter()
        .map(|o| o.complete_ms.unwrap_or(f64::INFINITY))
        .collect();
    let mut events = Events::new(&calls, &returns);
    let words = steps.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, i64)> = HashSet::new();
    let mut stack: Vec<(usize, i64)> = Vec::new();
    let mut state = initial;
    let mut entry = events.next[events.head];
    // The deepest point the search reached, to say where it got stuck.
    let mut deepest = (0usize, NIL);
    let mut rounds = 0u64;
    while events.next[events.head] != NIL {
        rounds += 1;
        if rounds % 4096 == 1 && Instant::now() >= deadline {
            return Verdict::Unknown(format!(
                "search stopped after {rounds} steps, {} of {} operations placed",
                stack.len(),
                steps.len()
            ));
        }
        let (op, is_call) = events.event[entry];
        if is_call {
            if let Some(next_state) = steps[op].apply(state) {
                let (word, bit) = (op / 64, 1u64 << (op % 64));
                linearized[word] |= bit;
                if cache.insert((linearized.clone(), next_state)) {
                    stack.push((entry, state));
                    state = next_state;
                    events.lift(entry);
                    entry = events.next[events.head];
                    continue;
                }
                linearized[word] &= !bit;
            }
            entry = events.next[entry];
        } else {
            if stack.len() >= deepest.0 {
                deepest = (stack.len(), op);
            }
            let Some((call, previous)) = stack.pop() else {
                return Verdict::Violation(stuck(&kept, deepest.1, steps.len()));
            };
            let op = events.event[call].0;
            linearized[op / 64] &= !(1u64 << (op % 64));
            state = previous;
            events.unlift(call);
            entry = events.next[call];
        }
    }
    Verdict::Linearizable
}

fn stuck(ops: &[&Op], op: usize, total: usize) -> String {
    let Some(op) = ops.get(op) else {
        return format!("no order of its {total} operations explains the results");
    };
    format!(
        "no order of its {total} operations explains the results; the search could not place op {} ({:?} {:?} value {:?}{}, {:?}, {:.0}-{} ms, via {})",
        op.id,
        op.kind,
        op.outcome,
        op.value,
        op.expect.map(|e| format!(" expecting {e}")).unwrap_or_default(),
        op.process,
        op.invoke_ms,
        op.complete_ms.map_or("?".into(), |c| format!("{c:.0}")),
        op.controller
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: OpKind, value: i64, span: (f64, Option<f64>), outcome: Outcome) -> Op {
        Op::made(0, kind, "r", value, span, outcome)
    }

    fn ok(kind: OpKind, value: i64, from: f64, to: f64) -> Op {
        op(kind, value, (from, Some(to)), Outcome::Ok)
    }

    fn cas(expect: i64, new: i64, from: f64, to: Option<f64>, outcome: Outcome) -> Op {
        let mut o = op(OpKind::Cas, new, (from, to), outcome);
        o.expect = Some(expect);
        o
    }

    fn verdict(mut ops: Vec<Op>) -> Verdict {
        for (i, o) in ops.iter_mut().enumerate() {
            o.id = i;
        }
        check(&ops, 0, Duration::from_secs(5))
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let ops = vec![
            ok(OpKind::Write, 1, 0.0, 1.0),
            ok(OpKind::Read, 1, 2.0, 3.0),
            cas(1, 2, 4.0, Some(5.0), Outcome::Ok),
            cas(1, 3, 6.0, Some(7.0), Outcome::Fail),
            ok(OpKind::Read, 2, 8.0, 9.0),
        ];
        assert_eq!(verdict(ops), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_is_a_violation() {
        // The write of 2 completed before the read began, yet it read 1.
        let ops = vec![
            ok(OpKind::Write, 1, 0.0, 1.0),
            ok(OpKind::Write, 2, 2.0, 3.0),
            ok(OpKind::Read, 1, 4.0, 5.0),
        ];
        assert!(matches!(verdict(ops), Verdict::Violation(_)));
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        let ops = vec![
            ok(OpKind::Write, 1, 0.0, 10.0),
            ok(OpKind::Read, 0, 1.0, 2.0),
            ok(OpKind::Read, 1, 3.0, 4.0),
            ok(OpKind::Write, 2, 5.0, 12.0),
            ok(OpKind::Read, 2, 6.0, 7.0),
            ok(OpKind::Read, 2, 13.0, 14.0),
        ];
        assert_eq!(verdict(ops), Verdict::Linearizable);
    }

    #[test]
    fn unknown_writes_may_have_happened_or_not() {
        let happened = vec![
            op(OpKind::Write, 5, (0.0, None), Outcome::Info),
            ok(OpKind::Read, 5, 10.0, 11.0),
        ];
        assert_eq!(verdict(happened), Verdict::Linearizable);
        let never = vec![
            op(OpKind::Write, 5, (0.0, None), Outcome::Info),
            ok(OpKind::Read, 0, 10.0, 11.0),
        ];
        assert_eq!(verdict(never), Verdict::Linearizable);
        // But not before it was invoked.
        let early = vec![
            ok(OpKind::Read, 5, 0.0, 1.0),
            op(OpKind::Write, 5, (2.0, None), Outcome::Info),
        ];
        assert!(matches!(verdict(early), Verdict::Violation(_)));
    }

    #[test]
    fn a_lost_acknowledged_write_is_a_violation() {
        let ops = vec![
            ok(OpKind::Write, 1, 0.0, 1.0),
            cas(1, 2, 2.0, Some(3.0), Outcome::Ok),
            ok(OpKind::Read, 1, 4.0, 5.0),
        ];
        assert!(matches!(verdict(ops), Verdict::Violation(_)));
    }

    #[test]
    fn a_cas_that_failed_did_not_happen() {
        let ops = vec![
            ok(OpKind::Write, 1, 0.0, 1.0),
            cas(1, 2, 2.0, Some(3.0), Outcome::Fail),
            ok(OpKind::Read, 1, 4.0, 5.0),
        ];
        assert_eq!(verdict(ops), Verdict::Linearizable);
        let applied_anyway = vec![
            ok(OpKind::Write, 1, 0.0, 1.0),
            cas(1, 2, 2.0, Some(3.0), Outcome::Fail),
            ok(OpKind::Read, 2, 4.0, 5.0),
        ];
        assert!(matches!(verdict(applied_anyway), Verdict::Violation(_)));
    }

    #[test]
    fn registers_are_checked_apart() {
        let mut other = ok(OpKind::Read, 0, 4.0, 5.0);
        other.key = "s".into();
        let ops = vec![ok(OpKind::Write, 1, 0.0, 1.0), other];
        assert_eq!(verdict(ops), Verdict::Linearizable);
    }

    #[test]
    fn an_exhausted_budget_is_unknown_not_a_pass() {
        let ops = vec![
            ok(OpKind::Write, 1, 0.0, 1.0),
            ok(OpKind::Read, 1, 2.0, 3.0),
        ];
        assert!(matches!(
            check(&ops, 0, Duration::ZERO),
            Verdict::Unknown(_)
        ));
    }
}
