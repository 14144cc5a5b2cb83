//! The `berth` binary's library half: the client, re-exported from
//! `berth-client` for the verbs and the end-to-end tests. Processes for
//! benchmarks and tests come from `berth-testkit`.

#![forbid(unsafe_code)]

pub use berth_client::connect as client;
pub use berth_client::for_kind;
pub use berth_client::objects;
