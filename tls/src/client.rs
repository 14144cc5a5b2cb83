//! The connecting side: a tonic connector that dials TCP and then TLS with
//! a rustls configuration, so that Berth chooses the roots, the client
//! certificate (renewed in place) and, for a joiner's first question and
//! for HTTPS probes only, no verification at all.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::client::danger::ServerCertVerified;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::ServerName;
use rustls::pki_types::UnixTime;
use rustls::ClientConfig;
use rustls::DigitallySignedStruct;
use rustls::SignatureScheme;
use tokio::net::TcpStream;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a process reaches controllers and agents.
#[derive(Clone)]
pub enum Transport {
    /// `--insecure`: HTTP/2 over plain TCP, for benchmarks against peers
    /// that run without TLS.
    Insecure,
    /// TLS with this configuration (roots: the cluster CA).
    Tls(Arc<ClientConfig>),
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Insecure => "Transport::Insecure",
            Transport::Tls(_) => "Transport::Tls",
        })
    }
}

impl Transport {
    /// Accepts whatever certificate the server shows. Only for a joiner's
    /// first question (the cluster's CA), whose answer the joiner checks
    /// against its token before it trusts anything said over it.
    pub fn unverified() -> Self {
        Transport::Tls(unverified_config(crate::alpn()))
    }

    pub fn is_secure(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// An endpoint for `addr` (HOST:PORT), with the scheme this transport
    /// speaks.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, tonic::transport::Error> {
        let scheme = match self {
            Transport::Insecure => "http",
            Transport::Tls(_) => "https",
        };
        Endpoint::from_shared(format!("{scheme}://{addr}"))
    }

    /// A channel that connects on first use, and again after a failure.
    pub fn lazy(&self, endpoint: Endpoint) -> Channel {
        match self {
            Transport::Insecure => endpoint.connect_lazy(),
            Transport::Tls(config) => endpoint.connect_with_connector_lazy(Connector {
                config: config.clone(),
            }),
        }
    }

    /// A channel connected now.
    pub async fn connect(&self, endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
        match self {
            Transport::Insecure => endpoint.connect().await,
            Transport::Tls(config) => {
                endpoint
                    .connect_with_connector(Connector {
                        config: config.clone(),
                    })
                    .await
            }
        }
    }
}

#[derive(Clone)]
struct Connector {
    config: Arc<ClientConfig>,
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move {
            let host = uri.host().ok_or("the address has no host")?;
            let port = uri.port_u16().unwrap_or(443);
            // An IPv6 host comes bracketed in a URI.
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(host.to_string())?;
            let tcp = TcpStream::connect((host, port)).await?;
            // As tonic's own connector: no Nagle delay on small frames.
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(connector.config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// A client for HTTPS probes: HTTP/1.1, no client certificate, and any
/// server certificate, as the kubelet's probes skip verification (a
/// container's certificate is its own business). Never for a link of the
/// cluster.
pub fn probe_client_config() -> Arc<ClientConfig> {
    unverified_config(vec![b"http/1.1".to_vec()])
}

/// A client speaking `alpn` that accepts whatever certificate the server
/// shows, checking only the handshake's signatures.
fn unverified_config(alpn: Vec<Vec<u8>>) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_no_client_auth();
    config.alpn_protocols = alpn;
    Arc::new(config)
}

/// Verifies nothing: see `Transport::unverified`.
#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &crate::provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &crate::provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crate::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
