//! The `berth` binary's library half: the client used by the CLI verbs, and
//! a harness that runs controllers as child processes (for `berth bench`
//! and the end-to-end tests).

pub mod client;
pub mod harness;
pub mod objects;
