//! berth-controller is the controller process (`berth server`): it opens
//! the replicated store, bootstraps or joins the controller group, and
//! serves the gRPC API (store, cluster administration, internal Raft),
//! `/metrics` and `/healthz`, and keeps the audit log. The reconcilers are a crate of their own
//! (berth-reconcilers), clients of this API like any other.

#![forbid(unsafe_code)]

mod api;
pub mod audit;
pub mod bind_rules;
mod bootstrap;
mod cluster_service;
mod config;
pub mod http;
pub mod ipam;
mod kv_service;
pub mod security;
pub mod server;

pub use config::ConnectionLimits;
pub use config::ServerConfig;
pub use server::run;
pub use server::ServerError;
