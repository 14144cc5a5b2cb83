//! Reaching a cluster: try each address in turn, then follow the leader.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;

use berth_proto::cluster::cluster_client::ClusterClient;
use berth_proto::cluster::WatchLeaderRequest;
use berth_proto::kv::kv_client::KvClient;
use berth_retry::Backoff;
use berth_tls::Transport;
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no controller reachable at {tried}: start one (`berth dev` for a local cluster) or pass --server ADDRS")]
    Unreachable { tried: String },
    #[error("{0:?} is not a HOST:PORT address")]
    BadAddress(String),
    #[error("the controllers at {tried} refused TLS ({why}): the credentials are for another cluster, or the cluster runs --insecure")]
    TlsRefused { tried: String, why: String },
}

/// Splits a comma-separated address list.
pub fn parse_addrs(addrs: &str) -> Vec<String> {
    addrs
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_start_matches("http://").to_string())
        .collect()
}

pub fn endpoint(transport: &Transport, addr: &str) -> Result<Endpoint, ClientError> {
    transport
        .endpoint(addr)
        .map_err(|_| ClientError::BadAddress(addr.to_string()))
        .map(|e| {
            e.connect_timeout(Duration::from_millis(1000))
                .tcp_nodelay(true)
        })
}

/// Connects to the first reachable controller of `addrs`.
pub async fn connect(
    addrs: &[String],
    transport: &Transport,
) -> Result<(String, Channel), ClientError> {
    let mut refused = None;
    for addr in addrs {
        match transport.connect(endpoint(transport, addr)?).await {
            Ok(ch) => return Ok((addr.clone(), ch)),
            // A TLS failure would meet the next try again: say which.
            Err(e) => refused = refused.or(berth_tls::tls_failure(&e)),
        }
    }
    Err(match refused {
        Some(why) => ClientError::TlsRefused {
            tried: addrs.join(", "),
            why,
        },
        None => ClientError::Unreachable {
            tried: addrs.join(", "),
        },
    })
}

pub async fn cluster(
    addrs: &[String],
    transport: &Transport,
) -> Result<(String, ClusterClient<Channel>), ClientError> {
    let (addr, ch) = connect(addrs, transport).await?;
    Ok((addr, ClusterClient::new(ch)))
}

pub async fn kv(
    addrs: &[String],
    transport: &Transport,
) -> Result<(String, KvClient<Channel>), ClientError> {
    let (addr, ch) = connect(addrs, transport).await?;
    Ok((addr, KvClient::new(ch)))
}

/// A connection to a cluster that follows the leader, and moves to the
/// next controller when the current one stops answering. Clones share it.
///
/// Any controller serves every call, but a follower forwards writes to the
/// leader (and asks it for a read index), which costs a hop and about a
/// quarter more server CPU per write. So once connected, a background task
/// watches the leader through the connected controller (`WatchLeader`) and,
/// whenever the leader is another controller that answers, moves the
/// connection there. Calls made meanwhile are still served, by forwarding.
#[derive(Clone)]
pub struct Connector {
    shared: Arc<Shared>,
}

struct Shared {
    addrs: Arc<[String]>,
    transport: Transport,
    state: tokio::sync::Mutex<Current>,
    /// Ticks whenever `Current::connected` changes, so that the follower
    /// stops watching a controller the connection has left. Dropped with
    /// the last clone, which ends the follower.
    moved: watch::Sender<()>,
    /// Whether the leader-following task was started (at first connection).
    following: AtomicBool,
}

#[derive(Default)]
struct Current {
    /// Where the next reconnection starts in `addrs`.
    index: usize,
    /// The connected controller: one of `addrs`, or the leader's address.
    connected: Option<(String, Channel)>,
}

/// Pauses between attempts to watch the leader.
const FOLLOW_RETRY: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));

impl Connector {
    pub fn new(addrs: Vec<String>, transport: Transport) -> Result<Self, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::Unreachable {
                tried: "(no addresses)".into(),
            });
        }
        for addr in &addrs {
            endpoint(&transport, addr)?;
        }
        Ok(Self {
            shared: Arc::new(Shared {
                addrs: addrs.into(),
                transport,
                state: Default::default(),
                moved: watch::Sender::new(()),
                following: AtomicBool::new(false),
            }),
        })
    }

    /// The current controller's channel, connecting (from the current
    /// address on, in turn) if there is none.
    pub async fn channel(&self) -> Result<Channel, ClientError> {
        let shared = &self.shared;
        let mut state = shared.state.lock().await;
        if let Some((_, ch)) = &state.connected {
            return Ok(ch.clone());
        }
        for i in 0..shared.addrs.len() {
            let index = (state.index + i) % shared.addrs.len();
            let addr = &shared.addrs[index];
            if let Ok(ch) = shared
                .transport
                .connect(endpoint(&shared.transport, addr)?)
                .await
            {
                state.index = index;
                state.connected = Some((addr.clone(), ch.clone()));
                drop(state);
                shared.moved.send_replace(());
                self.start_following();
                return Ok(ch);
            }
        }
        Err(ClientError::Unreachable {
            tried: shared.addrs.join(", "),
        })
    }

    /// How this connector reaches controllers.
    pub fn transport(&self) -> &Transport {
        &self.shared.transport
    }

    /// The address of the controller calls go to now, if connected.
    pub async fn addr(&self) -> Option<String> {
        let state = self.shared.state.lock().await;
        state.connected.as_ref().map(|(addr, _)| addr.clone())
    }

    /// Tells the connector a call failed; a failure that says the
    /// controller is gone makes the next call try the next controller.
    pub async fn failed(&self, status: &tonic::Status) {
        if is_transient(status) {
            let mut state = self.shared.state.lock().await;
            if state.connected.take().is_some() {
                state.index = (state.index + 1) % self.shared.addrs.len();
                self.shared.moved.send_replace(());
            }
        }
    }

    fn start_following(&self) {
        if !self.shared.following.swap(true, Ordering::Relaxed) {
            let moved = self.shared.moved.subscribe();
            tokio::spawn(follow_leader(Arc::downgrade(&self.shared), moved));
        }
    }
}

impl Shared {
    async fn connected(&self) -> Option<(String, Channel)> {
        self.state.lock().await.connected.clone()
    }

    async fn move_to(&self, addr: String, channel: Channel) {
        tracing::debug!(%addr, "following the leader");
        self.state.lock().await.connected = Some((addr, channel));
        self.moved.send_replace(());
    }
}

/// Watches the leader through the connected controller and moves the
/// connection to it, for as long as the connector lives.
async fn follow_leader(shared: Weak<Shared>, mut moved: watch::Receiver<()>) {
    let mut pause = FOLLOW_RETRY;
    loop {
        moved.borrow_and_update();
        let Some(current) = shared.upgrade() else {
            return;
        };
        let connected = current.connected().await;
        drop(current);
        let watched = match connected {
            Some(connected) => watch_once(&shared, connected, &mut moved).await,
            // Wait for the next connection.
            None => Watch::Left,
        };
        match watched {
            Watch::Left => {
                if moved.changed().await.is_err() {
                    return;
                }
                pause.reset();
            }
            Watch::Moved => pause.reset(),
            Watch::Unsupported | Watch::Gone => return,
            Watch::Ended { watched } => {
                if watched {
                    pause.reset();
                }
                // A call that failed meanwhile moves the connection: no
                // need to wait out the pause then.
                tokio::select! {
                    _ = pause.wait() => {}
                    changed = moved.changed() => if changed.is_err() { return },
                }
            }
        }
    }
}

enum Watch {
    /// The connection moved to the leader, or elsewhere after a failure:
    /// watch again from where it is now.
    Moved,
    /// There is no connection to watch through: wait for one.
    Left,
    /// The controller does not serve `WatchLeader` (an older version).
    Unsupported,
    /// Every clone of the connector was dropped.
    Gone,
    /// The call or its stream failed: the controller went away or
    /// stopped. `watched` if the stream had been opened.
    Ended { watched: bool },
}

async fn watch_once(
    shared: &Weak<Shared>,
    (addr, channel): (String, Channel),
    moved: &mut watch::Receiver<()>,
) -> Watch {
    let mut client = ClusterClient::new(channel);
    let mut updates = match client.watch_leader(WatchLeaderRequest {}).await {
        Ok(resp) => resp.into_inner(),
        Err(s) if s.code() == tonic::Code::Unimplemented => return Watch::Unsupported,
        Err(_) => return Watch::Ended { watched: false },
    };
    loop {
        let update = tokio::select! {
            update = updates.message() => update,
            changed = moved.changed() => {
                return if changed.is_ok() { Watch::Moved } else { Watch::Gone };
            }
        };
        let Ok(Some(update)) = update else {
            return Watch::Ended { watched: true };
        };
        if update.addr.is_empty() || update.addr == addr {
            continue;
        }
        // A leader this client cannot reach (an address only the
        // controllers can use) is not followed: forwarding still serves.
        let Some(current) = shared.upgrade() else {
            return Watch::Gone;
        };
        let transport = current.transport.clone();
        drop(current);
        let Ok(leader) = endpoint(&transport, &update.addr) else {
            continue;
        };
        if let Ok(ch) = transport.connect(leader).await {
            let Some(shared) = shared.upgrade() else {
                return Watch::Gone;
            };
            shared.move_to(update.addr, ch).await;
            return Watch::Moved;
        }
    }
}

/// A failure that another attempt, perhaps at another controller, may not
/// meet: the controller went away or the call was cut.
pub fn is_transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}
