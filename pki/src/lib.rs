//! Berth's public key infrastructure: the cluster's certificate authority,
//! the identities its certificates carry, join tokens that pin it, and
//! credentials files in kubeconfig's shape, and the keyring that encrypts
//! Secrets at rest.
//!
//! As in Docker Swarm, the controller that creates a cluster makes its CA,
//! and every controller, node and user holds a certificate from it. As in
//! Kubernetes, a certificate's subject is its identity: the common name is
//! the user name and the organizations are its groups, so that
//! `system:node:NAME` in group `system:nodes` is node NAME.
//!
//! This crate does no I/O: it makes, parses and checks. The controller keeps
//! the CA and issues; servers and clients load what it issued into rustls.

#![forbid(unsafe_code)]

mod ca;
mod credentials;
mod identity;
mod keyring;
mod token;

pub use ca::cert_der;
pub use ca::fingerprint;
pub use ca::key_request;
pub use ca::not_after;
pub use ca::Ca;
pub use ca::Fingerprint;
pub use ca::Issued;
pub use credentials::Credentials;
pub use credentials::Resolved;
pub use identity::peer_identity;
pub use identity::Identity;
pub use identity::NODES_GROUP;
pub use keyring::is_sealed;
pub use keyring::Keyring;
pub use keyring::SealError;
pub use token::bootstrap_proof;
pub use token::same_secret;
pub use token::same_secret_bytes;
pub use token::JoinToken;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("not a PEM certificate: {0}")]
    Pem(String),
    #[error("not a certificate Berth can read: {0}")]
    Certificate(String),
    #[error("the certificate names no identity: {0}")]
    Identity(String),
    #[error("not a join token: {0} (a token looks like BERTH1-<ca hash>-<id>.<secret>: ask `berth token create` for one)")]
    Token(String),
    #[error("not a certificate request Berth can sign: {0}")]
    Request(String),
    #[error("credentials file: {0}")]
    Credentials(String),
}
