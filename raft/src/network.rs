//! The client half of the gRPC Raft transport.
//!
//! One lazily connected HTTP/2 channel per peer carries appends, heartbeats
//! and votes (tonic reconnects it after a failure); snapshots get a second
//! channel so that a large transfer never delays a heartbeat. Every call has
//! a deadline from openraft's RPC options, and an unreachable peer is
//! retried with openraft's back-off.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use berth_retry::Backoff;
use berth_tls::Transport;
use futures::Stream;
use futures::StreamExt;
use openraft::base::BoxFuture;
use openraft::base::BoxStream;
use openraft::errors::NetworkError;
use openraft::errors::RPCError;
use openraft::errors::ReplicationClosed;
use openraft::errors::StreamingError;
use openraft::errors::Unreachable;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::StreamAppendResult;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::BasicNode;
use openraft::OptionalSend;
use openraft::RaftNetworkFactory;
use openraft::RaftNetworkV2;
use tokio::io::AsyncReadExt;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use berth_proto::raft as pb;
use berth_proto::raft::raft_client::RaftClient;

use crate::codec;
use crate::identity::Identity;
use crate::identity::CLUSTER_ID_HEADER;
use crate::storage::SnapshotFile;
use crate::types::NodeId;
use crate::types::TypeConfig;
use crate::types::Vote;

const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Largest Raft message a controller accepts or sends: an append of
/// `max_payload_entries` (64) entries of at most ~5 MiB each (a 1 MiB batch
/// plus one 4 MiB request) must fit, or replication would stall on it.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 512 << 20;

type RpcErr = RPCError<TypeConfig>;

/// The endpoint of a peer, with the keep-alives that notice a dead peer
/// within seconds.
pub fn endpoint(transport: &Transport, addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(transport
        .endpoint(addr)?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true))
}

/// Shared cache of channels, so that every replication stream, heartbeat
/// and forwarded write to one peer reuses one connection.
#[derive(Clone)]
pub struct Channels {
    map: Arc<Mutex<HashMap<String, Channel>>>,
    transport: Transport,
}

impl Channels {
    pub fn new(transport: Transport) -> Self {
        Self {
            map: Default::default(),
            transport,
        }
    }

    /// How this controller reaches its peers.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    pub fn get(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        self.keyed(addr.to_string(), addr)
    }

    /// A channel of its own, for traffic that must not queue behind others.
    pub fn dedicated(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        self.keyed(format!("{addr}#snapshot"), addr)
    }

    fn keyed(&self, key: String, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut map = self.map.lock().expect("channel cache lock");
        if let Some(ch) = map.get(&key) {
            return Ok(ch.clone());
        }
        let ch = self.transport.lazy(endpoint(&self.transport, addr)?);
        map.insert(key, ch.clone());
        Ok(ch)
    }
}

pub struct Network {
    identity: Identity,
    channels: Channels,
}

impl Network {
    pub fn new(identity: Identity, channels: Channels) -> Self {
        Self { identity, channels }
    }

    fn connection(&self, target: NodeId, node: &BasicNode, dedicated: bool) -> Connection {
        let channel = if dedicated {
            self.channels.dedicated(&node.addr)
        } else {
            self.channels.get(&node.addr)
        };
        Connection {
            target,
            addr: node.addr.clone(),
            client: channel.ok().map(|c| {
                RaftClient::new(c)
                    .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            }),
            identity: self.identity.clone(),
            unreachable: UNREACHABLE_PEER,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        self.connection(target, node, false)
    }

    async fn new_snapshot_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        self.connection(target, node, true)
    }
}

pub struct Connection {
    target: NodeId,
    addr: String,
    client: Option<RaftClient<Channel>>,
    identity: Identity,
    /// Pauses after replication calls that could not reach the peer.
    unreachable: Backoff,
}

/// 20 ms doubling to 500 ms: a restarted peer is back within milliseconds
/// and should not wait long for its first append, a dead one costs a call
/// every half second.
const UNREACHABLE_PEER: Backoff =
    Backoff::new(Duration::from_millis(20), Duration::from_millis(500));

/// Attaches the cluster id (and a deadline) to an outgoing call.
pub fn request<T>(identity: &Identity, msg: T, timeout: Option<Duration>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(id) = identity.cluster_id() {
        if let Ok(v) = id.parse() {
            req.metadata_mut().insert(CLUSTER_ID_HEADER, v);
        }
    }
    if let Some(t) = timeout {
        req.set_timeout(t);
    }
    req
}

fn status_to_rpc_error(status: tonic::Status) -> RpcErr {
    match status.code() {
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::FailedPrecondition
        | tonic::Code::Cancelled => RPCError::Unreachable(Unreachable::new(&status)),
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

fn decode_err(e: codec::DecodeError) -> RpcErr {
    RPCError::Network(NetworkError::new(&e))
}

impl Connection {
    fn client(&self) -> Result<RaftClient<Channel>, RpcErr> {
        self.client.clone().ok_or_else(|| {
            RPCError::Unreachable(Unreachable::from_string(format!(
                "controller {} has an invalid address {:?}",
                self.target, self.addr
            )))
        })
    }

    fn req<T>(&self, msg: T, option: &RPCOption) -> tonic::Request<T> {
        request(&self.identity, msg, Some(option.hard_ttl()))
    }

    /// One unary call carrying a postcard-encoded message each way.
    async fn unary<Req, Resp, F, Fut>(
        &mut self,
        what: &'static str,
        rpc: &Req,
        option: &RPCOption,
        call: F,
    ) -> Result<Resp, RpcErr>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, tonic::Request<pb::RaftMessage>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<pb::RaftMessage>, tonic::Status>>,
    {
        let msg = pb::RaftMessage {
            data: codec::encode(rpc).into(),
        };
        let req = self.req(msg, option);
        let resp = call(self.client()?, req)
            .await
            .map_err(status_to_rpc_error)?;
        codec::decode(what, &resp.into_inner().data).map_err(decode_err)
    }

    /// Holds back a replication call's failure while the peer stays
    /// unreachable: openraft restarts a failed replication stream at once,
    /// and without this a dead peer costs a connection attempt every
    /// millisecond.
    async fn note<T>(&mut self, result: Result<T, RpcErr>) -> Result<T, RpcErr> {
        match &result {
            Ok(_) => self.unreachable.reset(),
            Err(RPCError::Unreachable(_)) => self.unreachable.wait().await,
            Err(_) => {}
        }
        result
    }
}

impl RaftNetworkV2<TypeConfig> for Connection {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcErr> {
        let msg = pb::RaftMessage {
            data: codec::encode(&rpc).into(),
        };
        let result = match self.client() {
            Ok(mut c) => c
                .append_entries(self.req(msg, &option))
                .await
                .map_err(status_to_rpc_error),
            Err(e) => Err(e),
        };
        let resp = self.note(result).await?;
        codec::decode("append response", &resp.into_inner().data).map_err(decode_err)
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RpcErr>>, RpcErr>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            let outgoing = input.map(|rpc| pb::RaftMessage {
                data: codec::encode(&rpc).into(),
            });
            let result = match self.client() {
                Ok(mut c) => c
                    .stream_append(request(&self.identity, outgoing, None))
                    .await
                    .map_err(status_to_rpc_error),
                Err(e) => Err(e),
            };
            let resp = self.note(result).await?;
            let results = resp.into_inner().map(|item| {
                let msg = item.map_err(status_to_rpc_error)?;
                codec::decode::<StreamAppendResult<TypeConfig>>("stream append response", &msg.data)
                    .map_err(decode_err)
            });
            Ok(Box::pin(results) as BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        self.unary("vote response", &rpc, &option, |mut c, r| async move {
            c.vote(r).await
        })
        .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        self.unary("pre-vote response", &rpc, &option, |mut c, r| async move {
            c.pre_vote(r).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self.client().map_err(rpc_to_streaming)?;
        let mut file = tokio::fs::File::open(&snapshot.snapshot.path)
            .await
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(4);
        let meta = codec::encode(&(vote, snapshot.meta.clone()));
        let reader = async move {
            if tx
                .send(pb::SnapshotChunk {
                    chunk: Some(pb::snapshot_chunk::Chunk::Meta(meta.into())),
                })
                .await
                .is_err()
            {
                return Ok(());
            }
            loop {
                let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<(), std::io::Error>(());
                }
                buf.truncate(n);
                if tx
                    .send(pb::SnapshotChunk {
                        chunk: Some(pb::snapshot_chunk::Chunk::Data(buf.into())),
                    })
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
        };
        let reader = tokio::spawn(reader);
        let call = client.install_snapshot(request(
            &self.identity,
            tokio_stream::wrappers::ReceiverStream::new(rx),
            Some(option.hard_ttl()),
        ));
        let resp = tokio::select! {
            resp = call => resp,
            closed = cancel => {
                reader.abort();
                return Err(StreamingError::Closed(closed));
            }
        };
        if let Ok(Err(e)) = reader.await {
            return Err(StreamingError::Network(NetworkError::new(&e)));
        }
        let resp = resp.map_err(|s| rpc_to_streaming(status_to_rpc_error(s)))?;
        codec::decode("snapshot response", &resp.into_inner().data)
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RpcErr> {
        self.unary(
            "transfer-leader response",
            &req,
            &option,
            |mut c, r| async move { c.transfer_leader(r).await },
        )
        .await
    }

    fn backoff(&self) -> Option<openraft::network::Backoff> {
        Some(openraft::network::Backoff::new(UNREACHABLE_PEER))
    }
}

fn rpc_to_streaming(e: RpcErr) -> StreamingError<TypeConfig> {
    match e {
        RPCError::Timeout(t) => StreamingError::Timeout(t),
        RPCError::Unreachable(u) => StreamingError::Unreachable(u),
        RPCError::Network(n) => StreamingError::Network(n),
        RPCError::RemoteError(r) => StreamingError::Network(NetworkError::new(&r)),
    }
}
