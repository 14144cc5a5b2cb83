//! The server half of the gRPC Raft transport, plus the two calls followers
//! make to the leader: write forwarding and read-index.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;

use berth_proto::raft as pb;
use berth_proto::raft::raft_server;

use crate::codec;
use crate::error::ForwardFailure;
use crate::identity::CLUSTER_ID_HEADER;
use crate::storage::state_machine::Snapshot;
use crate::storage::SnapshotFile;
use crate::store::Store;
use crate::types::SnapshotMeta;
use crate::types::Vote;

pub struct RaftService {
    store: Store,
    snapshot_dir: PathBuf,
    incoming: AtomicU64,
}

impl RaftService {
    pub fn new(store: Store, snapshot_dir: PathBuf) -> Self {
        Self {
            store,
            snapshot_dir,
            incoming: AtomicU64::new(0),
        }
    }

    pub fn into_server(self) -> raft_server::RaftServer<Self> {
        raft_server::RaftServer::new(self)
            .max_decoding_message_size(crate::network::MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(crate::network::MAX_RAFT_MESSAGE_BYTES)
    }

    /// Refuses calls from another cluster; `adopt` lets a controller that
    /// has no cluster yet take the caller's.
    fn admit<T>(&self, req: &Request<T>, adopt: bool) -> Result<(), Status> {
        let presented = req
            .metadata()
            .get(CLUSTER_ID_HEADER)
            .and_then(|v| v.to_str().ok());
        self.store
            .identity()
            .admit(presented, adopt)
            .map_err(Status::failed_precondition)
    }
}

impl RaftService {
    fn may_vote(&self) -> Result<(), Status> {
        if self.store.identity().may_vote() {
            Ok(())
        } else {
            Err(Status::unavailable(
                "this controller is rejoining with an empty data dir and does not vote yet",
            ))
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    msg: &pb::RaftMessage,
) -> Result<T, Status> {
    codec::decode(what, &msg.data).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn encode<T: serde::Serialize>(value: &T) -> pb::RaftMessage {
    pb::RaftMessage {
        data: codec::encode(value).into(),
    }
}

fn fatal(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft is not running on this controller: {e}"))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        req: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        self.admit(&req, true)?;
        let rpc = decode("append request", req.get_ref())?;
        let resp = self.store.raft().append_entries(rpc).await.map_err(fatal)?;
        Ok(Response::new(encode(&resp)))
    }

    type StreamAppendStream = BoxStream<'static, Result<pb::RaftMessage, Status>>;

    async fn stream_append(
        &self,
        req: Request<Streaming<pb::RaftMessage>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        self.admit(&req, true)?;
        // A malformed or failed message ends the input; openraft then ends
        // the output, and the leader opens a new stream.
        let input = req
            .into_inner()
            .take_while(|m| futures::future::ready(m.is_ok()))
            .filter_map(|m| async move {
                m.ok()
                    .and_then(|m| codec::decode("append request", &m.data).ok())
            });
        let output = self
            .store
            .raft()
            .stream_append(Box::pin(input))
            .map(|r| r.map(|res| encode(&res)).map_err(fatal));
        Ok(Response::new(Box::pin(output)))
    }

    async fn vote(
        &self,
        req: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        self.admit(&req, true)?;
        self.may_vote()?;
        let rpc = decode("vote request", req.get_ref())?;
        let resp = self.store.raft().vote(rpc).await.map_err(fatal)?;
        Ok(Response::new(encode(&resp)))
    }

    async fn pre_vote(
        &self,
        req: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        self.admit(&req, true)?;
        self.may_vote()?;
        let rpc = decode("pre-vote request", req.get_ref())?;
        let resp = self.store.raft().pre_vote(rpc).await.map_err(fatal)?;
        Ok(Response::new(encode(&resp)))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        self.admit(&req, true)?;
        let mut stream = req.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let Some(pb::snapshot_chunk::Chunk::Meta(meta)) = first.chunk else {
            return Err(Status::invalid_argument(
                "a snapshot stream must start with its metadata",
            ));
        };
        let (vote, meta): (Vote, SnapshotMeta) = codec::decode("snapshot metadata", &meta)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let n = self.incoming.fetch_add(1, Ordering::Relaxed);
        let path = self
            .snapshot_dir
            .join(format!("incoming-{}-{n}.part", std::process::id()));
        let received = receive_file(&path, &mut stream).await;
        if let Err(e) = received {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e);
        }
        let snapshot = Snapshot {
            meta,
            snapshot: SnapshotFile { path: path.clone() },
        };
        let result = self
            .store
            .raft()
            .install_full_snapshot(vote, snapshot)
            .await;
        // Installed snapshots are renamed into place; anything left is stale.
        let _ = tokio::fs::remove_file(&path).await;
        let resp = result.map_err(fatal)?;
        Ok(Response::new(encode(&resp)))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        self.admit(&req, false)?;
        let rpc = decode("transfer-leader request", req.get_ref())?;
        let resp = self
            .store
            .raft()
            .handle_transfer_leader(rpc)
            .await
            .map_err(fatal)?;
        Ok(Response::new(encode(&resp)))
    }

    async fn forward(
        &self,
        req: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        self.admit(&req, false)?;
        let batch = decode("forwarded writes", req.get_ref())?;
        let result = self.store.propose_as_leader(batch).await;
        Ok(Response::new(encode(&result)))
    }

    async fn read_index(
        &self,
        req: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        self.admit(&req, false)?;
        match self.store.read_index().await {
            Ok(index) => Ok(Response::new(pb::ReadIndexResponse { index })),
            Err(ForwardFailure::NotLeader { leader }) => Err(Status::failed_precondition(format!(
                "not the leader (leader: {leader:?})"
            ))),
            Err(e) => Err(Status::unavailable(format!("{e:?}"))),
        }
    }
}

async fn receive_file(
    path: &std::path::Path,
    stream: &mut Streaming<pb::SnapshotChunk>,
) -> Result<(), Status> {
    let io = |e: std::io::Error| Status::internal(format!("could not store the snapshot: {e}"));
    let mut file = tokio::fs::File::create(path).await.map_err(io)?;
    while let Some(chunk) = stream.next().await {
        match chunk?.chunk {
            Some(pb::snapshot_chunk::Chunk::Data(bytes)) => {
                file.write_all(&bytes).await.map_err(io)?
            }
            _ => {
                return Err(Status::invalid_argument(
                    "only data may follow a snapshot's metadata",
                ))
            }
        }
    }
    file.sync_all().await.map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use openraft::raft::AppendEntriesRequest;
    use openraft::raft::TransferLeaderRequest;
    use openraft::raft::VoteRequest;
    use proptest::prelude::*;

    use super::*;
    use crate::types::Request as Batch;
    use crate::types::TypeConfig;

    /// Whether `bytes` decode as a `T` or are refused as INVALID_ARGUMENT.
    fn decoded_or_refused<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> bool {
        let msg = pb::RaftMessage {
            data: bytes.to_vec().into(),
        };
        match decode::<T>("payload", &msg) {
            Ok(_) => true,
            Err(status) => {
                status.code() == tonic::Code::InvalidArgument
                    && status.message().contains("could not decode payload")
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 1024,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// What a peer sends in each Raft call, arbitrary: decoded or
        /// refused, never a panic or a huge allocation.
        #[test]
        fn raft_payloads_decode_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            prop_assert!(decoded_or_refused::<AppendEntriesRequest<TypeConfig>>(&bytes));
            prop_assert!(decoded_or_refused::<VoteRequest<TypeConfig>>(&bytes));
            prop_assert!(decoded_or_refused::<TransferLeaderRequest<TypeConfig>>(&bytes));
            prop_assert!(decoded_or_refused::<Batch>(&bytes));
            prop_assert!(decoded_or_refused::<(Vote, SnapshotMeta)>(&bytes));
        }
    }
}
