//! Reaching a cluster: try each address in turn, or balance over all.

use std::time::Duration;

use berth_proto::cluster::cluster_client::ClusterClient;
use berth_proto::kv::kv_client::KvClient;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no controller reachable at {tried}: start one (`berth dev` for a local cluster) or pass --server ADDRS")]
    Unreachable { tried: String },
    #[error("{0:?} is not a HOST:PORT address")]
    BadAddress(String),
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

pub fn endpoint(addr: &str) -> Result<Endpoint, ClientError> {
    Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|_| ClientError::BadAddress(addr.to_string()))
        .map(|e| {
            e.connect_timeout(Duration::from_millis(1000))
                .tcp_nodelay(true)
        })
}

/// Connects to the first reachable controller of `addrs`.
pub async fn connect(addrs: &[String]) -> Result<(String, Channel), ClientError> {
    for addr in addrs {
        if let Ok(ch) = endpoint(addr)?.connect().await {
            return Ok((addr.clone(), ch));
        }
    }
    Err(ClientError::Unreachable {
        tried: addrs.join(", "),
    })
}

pub async fn cluster(addrs: &[String]) -> Result<(String, ClusterClient<Channel>), ClientError> {
    let (addr, ch) = connect(addrs).await?;
    Ok((addr, ClusterClient::new(ch)))
}

pub async fn kv(addrs: &[String]) -> Result<(String, KvClient<Channel>), ClientError> {
    let (addr, ch) = connect(addrs).await?;
    Ok((addr, KvClient::new(ch)))
}

/// A connection to a cluster that moves to the next controller when the
/// current one stops answering. Clones share it.
#[derive(Clone)]
pub struct Connector {
    addrs: std::sync::Arc<[String]>,
    state: std::sync::Arc<tokio::sync::Mutex<Current>>,
}

#[derive(Default)]
struct Current {
    index: usize,
    channel: Option<Channel>,
}

impl Connector {
    pub fn new(addrs: Vec<String>) -> Result<Self, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::Unreachable {
                tried: "(no addresses)".into(),
            });
        }
        for addr in &addrs {
            endpoint(addr)?;
        }
        Ok(Self {
            addrs: addrs.into(),
            state: Default::default(),
        })
    }

    /// The current controller's channel, connecting (from the current
    /// address on, in turn) if there is none.
    pub async fn channel(&self) -> Result<Channel, ClientError> {
        let mut state = self.state.lock().await;
        if let Some(ch) = &state.channel {
            return Ok(ch.clone());
        }
        for i in 0..self.addrs.len() {
            let index = (state.index + i) % self.addrs.len();
            if let Ok(ch) = endpoint(&self.addrs[index])?.connect().await {
                state.index = index;
                state.channel = Some(ch.clone());
                return Ok(ch);
            }
        }
        Err(ClientError::Unreachable {
            tried: self.addrs.join(", "),
        })
    }

    /// Tells the connector a call failed; a failure that says the
    /// controller is gone makes the next call try the next controller.
    pub async fn failed(&self, status: &tonic::Status) {
        if is_transient(status) {
            let mut state = self.state.lock().await;
            if state.channel.take().is_some() {
                state.index = (state.index + 1) % self.addrs.len();
            }
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
