//! berth-tls owns how Berth's processes speak TLS: rustls configurations
//! made from the cluster's PKI (`berth-pki`), a certificate slot that
//! renewal swaps without a restart, the accepting side (TLS handshakes off
//! the accept loop, the peer's identity read once per connection) and the
//! connecting side (a tonic connector, and one HTTP/1.1 GET to an agent's
//! log port), and `--insecure`'s plain TCP.
//!
//! Every connection verifies its peer against the cluster's CA alone; the
//! web's roots are never trusted. The one exception is the first question a
//! joiner asks (`berth_tls::Transport::unverified`), whose answer the
//! joiner checks against its token before it trusts anything.
//!
//! rustls runs on *ring*: aws-lc-rs would add post-quantum key exchange but
//! builds a C library with cmake, which the build machines lack.

#![forbid(unsafe_code)]
// rustls 0.23.48 deprecates its ring provider for want of post-quantum key
// exchange; see the crate doc for why Berth keeps it.
#![allow(deprecated)]

mod client;
pub mod http1;
pub mod join;
mod keys;
mod server;
mod verify;

pub use client::probe_client_config;
pub use client::Transport;
pub use keys::CertSlot;
pub use server::incoming;
pub use server::Acceptor;
pub use server::Conn;
pub use server::Peer;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} is not PEM Berth can read: {why}")]
    Pem { what: &'static str, why: String },
    #[error("the private key does not fit TLS: {0}")]
    Key(String),
    #[error("cannot build the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("cannot build the client certificate check: {0}")]
    Verifier(String),
}

/// The TLS failure somewhere behind `error` (a connection error), if any:
/// an unknown CA, a name the certificate does not hold, a server that
/// speaks no TLS. Another attempt would meet it again.
pub fn tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if let Some(tls) = inner {
            return Some(tls.to_string());
        }
        source = e.source();
    }
    None
}

/// How long to wait before renewing a certificate that expires at
/// `not_after`: until a third of what is left remains (a fresh
/// certificate is renewed at two thirds of its life).
pub fn renew_after(not_after: std::time::SystemTime) -> std::time::Duration {
    let left = not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    (left * 2 / 3).max(std::time::Duration::from_millis(100))
}

/// The one crypto provider every configuration uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The cluster CA as rustls' trust roots.
pub fn roots(ca_pem: &str) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in keys::certs(ca_pem, "the cluster CA")? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            what: "the cluster CA",
            why: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

/// Protocols both sides offer: gRPC is HTTP/2, and standard gRPC clients
/// (grpcio, grpc-go) refuse a TLS server that does not negotiate it.
pub(crate) fn alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec()]
}

/// A controller's or agent's server side: its certificate from `slot`, and
/// client certificates checked against `ca_pem` when given. A client without
/// a certificate still completes the handshake, so that joiners can ask
/// for theirs; the authorization layer refuses it everything else.
pub fn server_config(
    ca_pem: &str,
    slot: Arc<CertSlot>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    serving(ca_pem, slot, false, alpn())
}

/// An agent's log server: its node certificate from `slot`, HTTP/1.1, and
/// only clients with a certificate of the cluster's CA complete the
/// handshake.
pub fn https_server_config(
    ca_pem: &str,
    slot: Arc<CertSlot>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    serving(ca_pem, slot, true, vec![b"http/1.1".to_vec()])
}

/// A server presenting `slot` that checks client certificates against
/// `ca_pem`, and refuses clients without one when `certificate_required`.
fn serving(
    ca_pem: &str,
    slot: Arc<CertSlot>,
    certificate_required: bool,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider());
    let verifier = match certificate_required {
        true => verifier,
        false => verifier.allow_unauthenticated(),
    }
    .build()
    .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(slot);
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}

/// A client of controllers: it trusts the cluster CA, presents the
/// certificate in `slot` (none: a joiner, before it has one), and accepts
/// only a controller's certificate at the other end, so that a node or a
/// user, whose certificates the same CA signs, cannot pose as one.
pub fn client_config(
    ca_pem: &str,
    slot: Option<Arc<CertSlot>>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    client_of(ca_pem, slot, verify::ServerRole::Controller)
}

/// A client of agents (their log servers), as `client_config`, that
/// accepts only a node's certificate at the other end.
pub fn agent_client_config(
    ca_pem: &str,
    slot: Option<Arc<CertSlot>>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    client_of(ca_pem, slot, verify::ServerRole::Node)
}

fn client_of(
    ca_pem: &str,
    slot: Option<Arc<CertSlot>>,
    role: verify::ServerRole,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let verifier = verify::RoleVerifier::new(roots(ca_pem)?, role)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match slot {
        Some(slot) => builder.with_client_cert_resolver(slot),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn();
    Ok(Arc::new(config))
}
