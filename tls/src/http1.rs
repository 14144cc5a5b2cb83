//! One HTTP/1.1 GET to an agent's log port, over the transport a process
//! reaches the cluster with: the agent shows its node certificate (naming
//! its address) and takes the caller's.

use std::sync::Arc;

use hyper::body::Incoming;

use crate::Transport;

#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0} is not a name TLS can verify")]
    Name(String),
    #[error("TLS with {addr}: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP with {addr}: {source}")]
    Http { addr: String, source: hyper::Error },
}

/// GETs `path` from `host:port`; the response's body streams as it comes.
pub async fn get(
    transport: &Transport,
    host: &str,
    port: u16,
    path: &str,
) -> Result<hyper::Response<Incoming>, GetError> {
    let addr = format!("{host}:{port}");
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|source| GetError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let http = |source| GetError::Http {
        addr: addr.clone(),
        source,
    };
    let mut sender = match transport {
        Transport::Insecure => handshake(stream).await.map_err(http)?,
        Transport::Tls(config) => {
            let mut config = (**config).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|_| GetError::Name(host.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, stream)
                .await
                .map_err(|source| GetError::Tls {
                    addr: addr.clone(),
                    source,
                })?;
            handshake(tls).await.map_err(http)?
        }
    };
    let req = hyper::Request::get(path)
        .header("host", &addr)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("a GET of a path is a valid request");
    sender.send_request(req).await.map_err(http)
}

/// Speaks HTTP/1.1 on `io`; the connection runs in a task of its own,
/// which ends when the response's body has been read or dropped.
async fn handshake<T>(
    io: T,
) -> Result<
    hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    hyper::Error,
>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
    tokio::spawn(conn);
    Ok(sender)
}
