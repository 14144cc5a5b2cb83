//! Reaching a cluster from the command line: try each address in turn.

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
