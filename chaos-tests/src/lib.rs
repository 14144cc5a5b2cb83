//! berth-chaos breaks a real Berth cluster on purpose and checks that
//! nothing was lost or doubled, in the manner of Jepsen: controllers and
//! agents run as `berth` processes in network namespaces of their own on a
//! fabric this crate builds (`fabric`, `procs`); clients record every
//! operation they make through the public API (`workload`, `history`);
//! a nemesis kills, pauses, partitions and degrades them from a seed
//! (`nemesis`); checkers judge the history and the cluster's state
//! (`linear` for linearizability, `checks` for lost writes, placements,
//! allocatable and addresses); `report` shows the result.
//!
//! Nothing is sent outside the namespaces the run creates, and they are
//! removed at the end, also after a failure.

#![forbid(unsafe_code)]

pub mod checks;
pub mod fabric;
pub mod history;
pub mod linear;
pub mod nemesis;
pub mod procs;
pub mod report;
pub mod run;
pub mod workload;
