//! One HTTP/1.1 GET to an agent's log port, over the transport a process
//! reaches the cluster with: the agent shows its node certificate (naming
//! its address) and takes the caller's. The caller may also name the one
//! identity it expects there (the node the pod is on), so that another
//! node at that address, with a certificate of its own, is not believed.

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
    #[error("{addr} answered as {found}, not as {expected}: another server holds that address")]
    WrongServer {
        addr: String,
        found: String,
        expected: String,
    },
}

/// GETs `path` from `host:port`, whose certificate must name `server`
/// when given; the response's body streams as it comes.
pub async fn get(
    transport: &Transport,
    host: &str,
    port: u16,
    path: &str,
    server: Option<&berth_pki::Identity>,
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
            if let Some(expected) = server {
                let found = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|cert| berth_pki::peer_identity(cert).ok());
                if found.as_ref() != Some(expected) {
                    return Err(GetError::WrongServer {
                        addr,
                        found: found.map_or_else(|| "no identity".into(), |i| i.to_string()),
                        expected: expected.to_string(),
                    });
                }
            }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use berth_pki::Ca;
    use berth_pki::Identity;

    use super::*;
    use crate::CertSlot;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    /// A log port at 127.0.0.1 answering with node `node`'s certificate,
    /// which names that address; it completes the TLS handshake and hangs
    /// up, which is all the identity check needs.
    async fn agent_port(ca: &Ca, node: &str) -> u16 {
        let issued = ca
            .issue(&Identity::Node(node.into()), &["127.0.0.1".into()], DAY)
            .unwrap();
        let config =
            crate::https_server_config(ca.cert_pem(), CertSlot::new(&issued).unwrap()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            while let Ok((stream, _)) = listener.accept().await {
                let _ = acceptor.accept(stream).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn a_node_answering_for_another_is_not_believed() {
        let ca = Ca::generate("test").unwrap();
        let caller = ca.issue(&Identity::Controller(1), &[], DAY).unwrap();
        let transport = Transport::Tls(
            crate::agent_client_config(ca.cert_pem(), Some(CertSlot::new(&caller).unwrap()))
                .unwrap(),
        );
        let port = agent_port(&ca, "n2").await;
        let expect = |n: &str| Identity::Node(n.into());
        let wrong = get(&transport, "127.0.0.1", port, "/", Some(&expect("n1"))).await;
        match wrong {
            Err(GetError::WrongServer { found, .. }) => assert_eq!(found, "system:node:n2"),
            other => panic!("expected WrongServer, got {:?}", other.map(|r| r.status())),
        }
        // The right node gets as far as HTTP, which this port does not speak.
        let right = get(&transport, "127.0.0.1", port, "/", Some(&expect("n2"))).await;
        assert!(
            matches!(right, Err(GetError::Http { .. })),
            "{:?}",
            right.map(|r| r.status())
        );
    }
}
