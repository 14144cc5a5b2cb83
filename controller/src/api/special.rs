//! Verbs with more to them than storing one object: deleting a namespace
//! (and everything in it) and binding a pod to a node.

use berth_api::kinds::list_prefix;
use berth_api::kinds::object_key;
use berth_api::kinds::KINDS;
use berth_api::limits::MAX_BATCH_ITEMS;
use berth_api::names::BUILTIN_NAMESPACES;
use berth_api::pb;
use berth_api::Object;
use berth_api::Reason;
use berth_raft::BindRefusal;
use berth_raft::KeyRange;
use berth_raft::Op;
use berth_raft::Precondition;
use berth_raft::TxnFailure;
use berth_raft::TxnOutcome;
use tonic::Status;

use super::objects::Api;
use berth_api::time::now_rfc3339;

/// Deletes per transaction while a namespace is emptied.
const DELETE_BATCH: usize = 512;

impl Api<pb::Namespace> {
    /// Marks the namespace Terminating (so nothing new can be created in
    /// it), deletes everything in it, then the namespace. Running it again
    /// finishes a deletion that was interrupted.
    pub async fn delete_namespace(&self, req: pb::DeleteRequest) -> Result<pb::Namespace, Status> {
        let name = req.name.clone();
        if BUILTIN_NAMESPACES.contains(&name.as_str()) {
            return Err(Reason::Protected.status(format!(
                "namespace {name:?} is built in and cannot be deleted"
            )));
        }
        let mut ns = self
            .get(pb::GetRequest {
                name: name.clone(),
                ..Default::default()
            })
            .await?;
        if let Some(expected) = Some(&req.resource_version).filter(|r| !r.is_empty()) {
            if ns.meta().map(|m| &m.resource_version) != Some(expected) {
                return Err(Reason::Conflict.status(format!(
                    "conflict: namespace {name:?} was changed since resourceVersion {expected}: re-read and retry"
                )));
            }
        }
        if ns.meta().is_some_and(|m| m.deletion_timestamp.is_empty()) {
            ns.meta_mut().deletion_timestamp = now_rfc3339();
            ns.status.get_or_insert_default().phase = "Terminating".into();
            ns = self.replace_as_is(ns).await?;
        }
        for info in KINDS.iter().filter(|k| k.namespaced) {
            self.delete_all_under(list_prefix(info, &name)).await?;
        }
        self.delete(pb::DeleteRequest {
            name,
            ..Default::default()
        })
        .await?;
        Ok(ns)
    }

    /// Stores `ns` as given, at the revision it was read at.
    async fn replace_as_is(&self, mut ns: pb::Namespace) -> Result<pb::Namespace, Status> {
        let name = ns.name().to_string();
        let rev: u64 = ns
            .meta()
            .and_then(|m| m.resource_version.parse().ok())
            .unwrap_or(0);
        let ops = vec![self.put_at(&ns, rev)?];
        match self.store.txn(berth_raft::Txn { ops }).await? {
            TxnOutcome::Committed { revision, .. } => {
                ns.meta_mut().resource_version = revision.to_string();
                Ok(ns)
            }
            TxnOutcome::Failed(_) => Err(Reason::Conflict.status(format!(
                "conflict: namespace {name:?} changed while it was being deleted: run the delete again"
            ))),
        }
    }

    async fn delete_all_under(&self, prefix: String) -> Result<(), Status> {
        let range = KeyRange::prefix(prefix.into_bytes());
        loop {
            let page = self.store.range(range.clone(), DELETE_BATCH, false).await?;
            if page.kvs.is_empty() {
                return Ok(());
            }
            let mut ops: Vec<Op> = page
                .kvs
                .iter()
                .filter_map(|kv| crate::ipam::release(&kv.key, &kv.value))
                .collect();
            ops.extend(page.kvs.into_iter().map(|kv| Op::Delete {
                key: kv.key,
                precondition: Precondition::None,
            }));
            if let TxnOutcome::Failed(f) = self.store.txn(berth_raft::Txn { ops }).await? {
                return Err(Status::internal(format!(
                    "emptying the namespace failed: {f}"
                )));
            }
        }
    }
}

impl Api<pb::Pod> {
    /// Binds a pending pod to a node, once; the state machine's bind rules
    /// decide (see `bind_rules`).
    pub async fn bind(&self, req: pb::BindRequest) -> Result<pb::Pod, Status> {
        let namespace = namespace_or_default(&req.namespace).to_string();
        let epoch = req.epoch;
        let result = self.bind_one(req.clone(), epoch, &now_rfc3339()).await;
        if result.code != 0 {
            return Err(Status::new(tonic::Code::from(result.code), result.message));
        }
        self.get(pb::GetRequest {
            namespace,
            name: req.name,
            serializable: false,
        })
        .await
    }

    /// Decides every bind on its own; they share Raft entries.
    pub async fn bind_batch(
        &self,
        req: pb::BindBatchRequest,
    ) -> Result<pb::BindBatchResponse, Status> {
        if req.binds.len() > MAX_BATCH_ITEMS {
            return Err(Reason::Invalid.status(format!(
                "{} binds in one batch; at most {MAX_BATCH_ITEMS} are allowed: split the batch",
                req.binds.len()
            )));
        }
        let time = now_rfc3339();
        let results = futures::future::join_all(
            req.binds
                .into_iter()
                .map(|b| self.bind_one(b, req.epoch, &time)),
        )
        .await;
        Ok(pb::BindBatchResponse { results })
    }

    /// Creates every pod on its own; their writes share Raft entries.
    pub async fn create_batch(
        &self,
        req: pb::CreatePodsRequest,
    ) -> Result<pb::CreatePodsResponse, Status> {
        if req.items.len() > MAX_BATCH_ITEMS {
            return Err(Reason::Invalid.status(format!(
                "{} pods in one batch; at most {MAX_BATCH_ITEMS} are allowed: split the batch",
                req.items.len()
            )));
        }
        let results = futures::future::join_all(req.items.into_iter().map(|pod| async move {
            match self.create(pod).await {
                Ok(created) => pb::CreateResult {
                    resource_version: created
                        .meta()
                        .map(|m| m.resource_version.clone())
                        .unwrap_or_default(),
                    ..Default::default()
                },
                Err(s) => pb::CreateResult {
                    code: s.code() as i32,
                    message: s.message().to_string(),
                    resource_version: String::new(),
                },
            }
        }))
        .await;
        Ok(pb::CreatePodsResponse { results })
    }

    async fn bind_one(&self, req: pb::BindRequest, epoch: u64, time: &str) -> pb::BindResult {
        let refused = |code: tonic::Code, reason: &str, message: String| pb::BindResult {
            code: code as i32,
            message,
            reason: reason.to_string(),
            resource_version: String::new(),
        };
        if req.name.is_empty() || req.node_name.is_empty() {
            return refused(
                tonic::Code::InvalidArgument,
                "invalid",
                "a bind needs the pod's name and a node_name".into(),
            );
        }
        let namespace = namespace_or_default(&req.namespace);
        let key = object_key(&pb::Pod::INFO, namespace, &req.name).into_bytes();
        let op = Op::Bind {
            key,
            node: req.node_name,
            epoch,
            time: time.to_string(),
        };
        match self.store.txn(berth_raft::Txn { ops: vec![op] }).await {
            Ok(TxnOutcome::Committed { revision, .. }) => pb::BindResult {
                resource_version: revision.to_string(),
                ..Default::default()
            },
            Ok(TxnOutcome::Failed(TxnFailure::BindRefused {
                reason, message, ..
            })) => refused(refusal_code(reason), reason.as_str(), message),
            Ok(TxnOutcome::Failed(TxnFailure::NotFound { .. })) => refused(
                tonic::Code::NotFound,
                BindRefusal::PodNotFound.as_str(),
                format!("pod {namespace}/{} not found", req.name),
            ),
            Ok(TxnOutcome::Failed(f)) => {
                refused(tonic::Code::InvalidArgument, "invalid", f.to_string())
            }
            Err(e) => {
                let status = Status::from(e);
                refused(status.code(), "unavailable", status.message().to_string())
            }
        }
    }
}

fn namespace_or_default(namespace: &str) -> &str {
    if namespace.is_empty() {
        "default"
    } else {
        namespace
    }
}

fn refusal_code(reason: BindRefusal) -> tonic::Code {
    match reason {
        BindRefusal::PodNotFound | BindRefusal::NodeNotFound => tonic::Code::NotFound,
        BindRefusal::Invalid => tonic::Code::InvalidArgument,
        BindRefusal::StaleEpoch
        | BindRefusal::AlreadyBound
        | BindRefusal::NodeNotReady
        | BindRefusal::NodeUnschedulable
        | BindRefusal::Insufficient => tonic::Code::FailedPrecondition,
    }
}

/// Creates the built-in namespaces once the cluster can take writes. Every
/// controller runs it; whichever is first creates them.
pub async fn ensure_builtin_namespaces(store: berth_raft::Store) {
    let api = Api::<pb::Namespace>::new(store);
    for name in BUILTIN_NAMESPACES {
        let mut ns = pb::Namespace::default();
        ns.meta_mut().name = name.to_string();
        create_until_done(&api, ns).await;
    }
}

/// Creates Kubernetes' default ClusterRoles and ClusterRoleBindings that
/// are missing (one a user changed is left as it is).
pub async fn ensure_builtin_rbac(store: berth_raft::Store) {
    let roles = Api::<pb::ClusterRole>::new(store.clone());
    for role in berth_rbac::builtin::cluster_roles() {
        create_until_done(&roles, role).await;
    }
    let bindings = Api::<pb::ClusterRoleBinding>::new(store);
    for binding in berth_rbac::builtin::cluster_role_bindings() {
        create_until_done(&bindings, binding).await;
    }
}

/// Creates `obj` unless it exists, retrying while the cluster cannot take
/// writes.
async fn create_until_done<K: Object>(api: &Api<K>, obj: K) {
    let mut delay = berth_retry::Backoff::new(
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(5),
    );
    loop {
        match api.create(obj.clone()).await {
            Ok(_) => return,
            Err(s) if Reason::of(&s) == Some(Reason::AlreadyExists) => return,
            Err(s) => {
                tracing::debug!(kind = K::INFO.kind, name = obj.name(), error = %s.message(), "built-in object not created yet; retrying");
                delay.wait().await;
            }
        }
    }
}

/// Finishes deletions of namespaces left Terminating by a controller that
/// stopped part-way; each controller runs it once it has a quorum.
pub async fn finish_namespace_deletions(store: berth_raft::Store) {
    let api = Api::<pb::Namespace>::new(store);
    let listed = api.list(pb::ListRequest::default()).await;
    let Ok((namespaces, _)) = listed else {
        return;
    };
    for ns in namespaces {
        if ns.meta().is_some_and(|m| m.deletion_timestamp.is_empty()) {
            continue;
        }
        let name = ns.name().to_string();
        let req = pb::DeleteRequest {
            name: name.clone(),
            ..Default::default()
        };
        match api.delete_namespace(req).await {
            Ok(_) => tracing::info!(namespace = %name, "finished deleting a terminating namespace"),
            Err(s) => {
                tracing::warn!(namespace = %name, error = %s.message(), "could not finish deleting a terminating namespace")
            }
        }
    }
}
