//! The key-value store over gRPC (`berth.kv.v1.KV`).

use berth_api::limits::MAX_REQUEST_BYTES;
use berth_api::limits::MAX_RESPONSE_BYTES;
use berth_proto::kv as pb;
use berth_proto::kv::kv_server;
use berth_raft::KeyRange;
use berth_raft::KeyValue;
use berth_raft::Op;
use berth_raft::Precondition;
use berth_raft::Store;
use berth_raft::Txn;
use berth_raft::TxnFailure;
use berth_raft::TxnOutcome;
use futures::stream::BoxStream;
use futures::StreamExt;
use tonic::Request;
use tonic::Response;
use tonic::Status;

pub struct KvService {
    store: Store,
    /// Test only (`--unsafe-raw-registry-writes`): API keys are written
    /// too, as a bug or a damaged backup could leave them.
    writes_api_keys: bool,
}

impl KvService {
    pub fn new(store: Store, writes_api_keys: bool) -> Self {
        Self {
            store,
            writes_api_keys,
        }
    }

    pub fn into_server(self) -> kv_server::KvServer<Self> {
        kv_server::KvServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(MAX_RESPONSE_BYTES)
    }

    async fn run(&self, txn: Txn) -> Result<Response<pb::TxnResponse>, Status> {
        for op in &txn.ops {
            let key = match op {
                Op::Put { key, .. } | Op::Delete { key, .. } => key,
                _ => continue,
            };
            if berth_api::kinds::is_api_key(key) && !self.writes_api_keys {
                return Err(Status::permission_denied(format!(
                    "key {:?} holds an API object, which the raw KV service does not write: use the berth.v1 API (berth apply), which validates it",
                    String::from_utf8_lossy(key)
                )));
            }
        }
        match self.store.txn(txn).await? {
            TxnOutcome::Committed { revision, prev } => Ok(Response::new(pb::TxnResponse {
                revision,
                prev: prev
                    .into_iter()
                    .map(|kv| kv.map(to_pb).unwrap_or_default())
                    .collect(),
            })),
            TxnOutcome::Failed(f) => Err(failure_status(&f)),
        }
    }
}

fn failure_status(f: &TxnFailure) -> Status {
    let msg = f.to_string();
    match f {
        TxnFailure::AlreadyExists { .. } => Status::already_exists(msg),
        TxnFailure::NotFound { .. } => Status::not_found(msg),
        TxnFailure::RevisionMismatch { .. } => Status::aborted(msg),
        TxnFailure::Invalid { .. } => Status::invalid_argument(msg),
        TxnFailure::BindRefused { .. } => Status::failed_precondition(msg),
    }
}

fn to_pb(kv: KeyValue) -> pb::KeyValue {
    pb::KeyValue {
        key: kv.key,
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
    }
}

fn precondition(p: Option<pb::Precondition>) -> Precondition {
    use pb::precondition::Condition;
    match p.and_then(|p| p.condition) {
        None => Precondition::None,
        Some(Condition::Absent(true)) => Precondition::Absent,
        Some(Condition::Present(true)) => Precondition::Present,
        Some(Condition::Absent(false) | Condition::Present(false)) => Precondition::None,
        Some(Condition::ModRevision(r)) => Precondition::ModRevision(r),
    }
}

fn key_range(key: Vec<u8>, range_end: Vec<u8>, prefix: bool) -> Result<KeyRange, Status> {
    if key.is_empty() && !prefix {
        return Err(Status::invalid_argument(
            "a key is required (use prefix=true with an empty key for the whole key space)",
        ));
    }
    Ok(if prefix {
        KeyRange::prefix(key)
    } else if range_end.is_empty() {
        KeyRange::key(key)
    } else {
        KeyRange {
            start: key,
            end: Some(range_end),
        }
    })
}

fn op(o: pb::Op) -> Result<Op, Status> {
    match o.op {
        Some(pb::op::Op::Put(p)) => Ok(Op::Put {
            key: p.key,
            value: p.value,
            precondition: precondition(p.precondition),
        }),
        Some(pb::op::Op::Delete(d)) => Ok(Op::Delete {
            key: d.key,
            precondition: precondition(d.precondition),
        }),
        None => Err(Status::invalid_argument(
            "an operation must be a put or a delete",
        )),
    }
}

#[tonic::async_trait]
impl kv_server::Kv for KvService {
    async fn range(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let r = req.into_inner();
        let range = key_range(r.key, r.range_end, r.prefix)?;
        let result = self
            .store
            .range(range, r.limit as usize, r.serializable)
            .await?;
        Ok(Response::new(pb::RangeResponse {
            kvs: result.kvs.into_iter().map(to_pb).collect(),
            revision: result.revision,
            more: result.more,
        }))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let p = req.into_inner();
        self.run(Txn {
            ops: vec![Op::Put {
                key: p.key,
                value: p.value,
                precondition: precondition(p.precondition),
            }],
        })
        .await
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let d = req.into_inner();
        self.run(Txn {
            ops: vec![Op::Delete {
                key: d.key,
                precondition: precondition(d.precondition),
            }],
        })
        .await
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let ops = req
            .into_inner()
            .ops
            .into_iter()
            .map(op)
            .collect::<Result<Vec<_>, _>>()?;
        self.run(Txn { ops }).await
    }

    type WatchStream = BoxStream<'static, Result<pb::WatchResponse, Status>>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let w = req.into_inner();
        let range = key_range(w.key, w.range_end, w.prefix)?;
        let events = self.store.watch(range, w.start_revision)?;
        let stream = events.filter_map(|batch| async move {
            let batch = match batch {
                Ok(b) if b.events.is_empty() => return None,
                Ok(b) => b,
                Err(e) => return Some(Err(Status::from(e))),
            };
            let revision = batch.events.last().map_or(0, |e| e.revision());
            Some(Ok(pb::WatchResponse {
                events: batch
                    .events
                    .into_iter()
                    .map(|e| {
                        let e = std::sync::Arc::unwrap_or_clone(e);
                        pb::Event {
                            r#type: match e.kind {
                                berth_raft::EventKind::Put => pb::event::Type::Put as i32,
                                berth_raft::EventKind::Delete => pb::event::Type::Delete as i32,
                            },
                            kv: Some(to_pb(e.kv)),
                        }
                    })
                    .collect(),
                revision,
            }))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
