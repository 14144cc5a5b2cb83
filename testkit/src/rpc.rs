//! Raw calls to one controller, each with a deadline: its Raft status, and
//! single KV writes and reads (benchmarks and tests that count on which
//! member they talk to, not the client's leader following).

use std::time::Duration;

use berth_client::Transport;
use berth_proto::cluster as cpb;
use berth_proto::cluster::cluster_client::ClusterClient;
use berth_proto::kv as kpb;
use berth_proto::kv::kv_client::KvClient;
use tonic::transport::Channel;

async fn channel(transport: &Transport, addr: &str) -> Option<Channel> {
    let endpoint = berth_client::connect::endpoint(transport, addr)
        .ok()?
        .connect_timeout(Duration::from_millis(300));
    transport.connect(endpoint).await.ok()
}

/// The controller's view of the cluster, if it answers within a second.
pub async fn status(transport: &Transport, addr: &str) -> Option<cpb::StatusResponse> {
    let ch = channel(transport, addr).await?;
    let mut req = tonic::Request::new(cpb::StatusRequest {});
    req.set_timeout(Duration::from_secs(1));
    ClusterClient::new(ch)
        .status(req)
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// A KV client of this one controller (the KV service is for
/// controllers: see `Cluster::controller_transport`).
pub async fn kv(transport: &Transport, addr: &str) -> Option<KvClient<Channel>> {
    Some(KvClient::new(channel(transport, addr).await?))
}

/// One put with a deadline; the revision it made.
pub async fn put(
    client: &mut KvClient<Channel>,
    key: &str,
    value: &[u8],
    timeout: Duration,
) -> Result<u64, tonic::Status> {
    let mut req = tonic::Request::new(kpb::PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.to_vec(),
        precondition: None,
    });
    req.set_timeout(timeout);
    Ok(client.put(req).await?.into_inner().revision)
}

/// One read of a key, linearizable unless `serializable`.
pub async fn get(
    client: &mut KvClient<Channel>,
    key: &str,
    serializable: bool,
    timeout: Duration,
) -> Result<Option<kpb::KeyValue>, tonic::Status> {
    let mut req = tonic::Request::new(kpb::RangeRequest {
        key: key.as_bytes().to_vec(),
        serializable,
        ..Default::default()
    });
    req.set_timeout(timeout);
    Ok(client.range(req).await?.into_inner().kvs.into_iter().next())
}

/// A counter or gauge from a Prometheus `/metrics` endpoint at `addr`
/// (summed over its label sets when `series` names none); 0 while the
/// endpoint is not up or the series does not exist yet.
pub async fn metric(addr: &str, series: &str) -> f64 {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return 0.0;
    };
    if s.write_all(b"GET /metrics HTTP/1.0\r\nHost: berth\r\n\r\n")
        .await
        .is_err()
    {
        return 0.0;
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text).await;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(name, _)| {
            *name == series
                || (!series.contains('{')
                    && name
                        .strip_prefix(series)
                        .is_some_and(|r| r.starts_with('{')))
        })
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}
