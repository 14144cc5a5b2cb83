//! The `berth` binary's library half: a harness that runs controllers as
//! child processes (for `berth bench` and the end-to-end tests). The client
//! lives in `berth-client`, re-exported here for the verbs and tests.

#![forbid(unsafe_code)]

pub use berth_client::connect as client;
pub use berth_client::for_kind;
pub use berth_client::objects;
pub mod harness;
