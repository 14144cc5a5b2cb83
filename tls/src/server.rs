//! The accepting side: TCP connections are handed to TLS handshakes that
//! run beside the accept loop (a client that stalls its handshake delays
//! no one), and each finished connection carries its peer's identity, read
//! once from its certificate, to every request on it. At most so many
//! connections are open at once: one more is closed as it is accepted, so
//! that a flood of clients exhausts a limit and not the process's file
//! descriptors or memory.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use berth_pki::Identity;
use futures::Stream;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// A client gets this long to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const READY_BACKLOG: usize = 128;

#[derive(Clone)]
pub enum Acceptor {
    /// `--insecure`: plain TCP, and no identities.
    Insecure,
    Tls(Arc<rustls::ServerConfig>),
}

/// Who is at the other end of a connection: a request extension on every
/// request it carries.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: Option<SocketAddr>,
    /// The identity its certificate names; None for a client that showed
    /// no certificate, and on an insecure server.
    pub identity: Option<Arc<Identity>>,
    /// Whether the server checks identities at all (not `--insecure`).
    pub secure: bool,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An accepted connection, TLS or (insecure) plain.
pub struct Conn {
    io: Io,
    peer: Peer,
    /// Its place under the connection limit, given back when the server
    /// drops the connection.
    _slot: Slot,
}

/// A connection's place under the limit; the open-connections gauge
/// follows them.
struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        metrics::gauge!("berth_tls_connections").increment(1.0);
        Self { _permit: permit }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!("berth_tls_connections").decrement(1.0);
    }
}

impl Conn {
    pub fn peer(&self) -> &Peer {
        &self.peer
    }
}

impl Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connections `listener` accepts, handshaken, for
/// `serve_with_incoming`, at most `max_connections` open at once. Ends when
/// the server drops it.
pub fn incoming(
    listener: TcpListener,
    acceptor: Acceptor,
    max_connections: usize,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(READY_BACKLOG);
    let slots = Arc::new(Semaphore::new(max_connections));
    tokio::spawn(async move {
        let mut warned: Option<std::time::Instant> = None;
        loop {
            let (tcp, addr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, mostly: pause, not spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics::counter!("berth_tls_connections_refused_total").increment(1);
                if warned.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(%addr, max_connections, "connection refused: as many connections as allowed are open (raise --max-connections)");
                    warned = Some(std::time::Instant::now());
                }
                continue;
            };
            // Nagle would hold a response's second frame until the
            // peer's delayed ACK (up to 40 ms).
            let _ = tcp.set_nodelay(true);
            let tx = tx.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Some(conn) = handshake(tcp, addr, acceptor, Slot::new(slot)).await {
                    let _ = tx.send(Ok(conn)).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

async fn handshake(
    tcp: TcpStream,
    addr: SocketAddr,
    acceptor: Acceptor,
    slot: Slot,
) -> Option<Conn> {
    let config = match acceptor {
        Acceptor::Insecure => {
            return Some(Conn {
                io: Io::Plain(tcp),
                peer: Peer {
                    addr: Some(addr),
                    identity: None,
                    secure: false,
                },
                _slot: slot,
            })
        }
        Acceptor::Tls(config) => config,
    };
    let accepted = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_rustls::TlsAcceptor::from(config).accept(tcp),
    )
    .await;
    let tls = match accepted {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            metrics::counter!("berth_tls_handshake_failures_total").increment(1);
            tracing::debug!(%addr, error = %e, "TLS handshake refused");
            return None;
        }
        Err(_) => {
            metrics::counter!("berth_tls_handshake_failures_total").increment(1);
            tracing::debug!(%addr, "TLS handshake timed out");
            return None;
        }
    };
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|leaf| match berth_pki::peer_identity(leaf) {
            Ok(identity) => Some(Arc::new(identity)),
            Err(e) => {
                tracing::debug!(%addr, error = %e, "a client certificate names no identity");
                None
            }
        });
    Some(Conn {
        io: Io::Tls(Box::new(tls)),
        peer: Peer {
            addr: Some(addr),
            identity,
            secure: true,
        },
        _slot: slot,
    })
}
