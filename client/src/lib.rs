//! berth-client is how programs reach a Berth cluster: connecting to the
//! first controller that answers and then following the leader, typed calls
//! of the `berth.v1` API for every kind, and a watcher that lists, follows
//! changes, resumes after a lost controller and lists again when its
//! revision has been compacted away, leader election through a Lease, and
//! a controller runtime for reconcilers. The CLI, the scheduler, the agent
//! and the reconcilers build on it.

#![forbid(unsafe_code)]

pub mod connect;
pub mod controller;
pub mod credentials;
pub mod election;
pub mod objects;
pub mod reflector;
pub mod watcher;

pub use berth_tls::Transport;
pub use connect::connect;
pub use connect::parse_addrs;
pub use connect::ClientError;
pub use objects::ClientKind;
