//! berth-controller is the controller process (`berth server`): it opens
//! the replicated store, bootstraps or joins the controller group, and
//! serves the gRPC API (store, cluster administration, internal Raft),
//! `/metrics` and `/healthz`, and runs the reconcilers (`reconcile`).

mod api;
pub mod bind_rules;
mod bootstrap;
mod cluster_service;
pub mod http;
pub mod ipam;
mod kv_service;
pub mod reconcile;
pub mod server;

pub use server::run;
pub use server::ServerConfig;
pub use server::ServerError;
