//! Verbs with more to them than storing one object: deleting a namespace
//! (and everything in it) and binding a pod to a node.

use berth_api::kinds::list_prefix;
use berth_api::kinds::object_key;
use berth_api::kinds::KINDS;
use berth_api::pb;
use berth_api::Object;
use berth_raft::KeyRange;
use berth_raft::Op;
use berth_raft::Precondition;
use berth_raft::TxnOutcome;
use tonic::Status;

use super::objects::describe;
use super::objects::now_rfc3339;
use super::objects::Api;

/// Namespaces that always exist.
pub const PROTECTED_NAMESPACES: &[&str] = &["default", "berth-system"];
/// Deletes per transaction while a namespace is emptied.
const DELETE_BATCH: usize = 512;

impl Api<pb::Namespace> {
    /// Marks the namespace Terminating (so nothing new can be created in
    /// it), deletes everything in it, then the namespace. Running it again
    /// finishes a deletion that was interrupted.
    pub async fn delete_namespace(&self, req: pb::DeleteRequest) -> Result<pb::Namespace, Status> {
        let name = req.name.clone();
        if PROTECTED_NAMESPACES.contains(&name.as_str()) {
            return Err(Status::failed_precondition(format!(
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
                return Err(Status::aborted(format!(
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
            TxnOutcome::Failed(_) => Err(Status::aborted(format!(
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
            let ops = page
                .kvs
                .into_iter()
                .map(|kv| Op::Delete {
                    key: kv.key,
                    precondition: Precondition::None,
                })
                .collect();
            if let TxnOutcome::Failed(f) = self.store.txn(berth_raft::Txn { ops }).await? {
                return Err(Status::internal(format!(
                    "emptying the namespace failed: {f}"
                )));
            }
        }
    }
}

impl Api<pb::Pod> {
    /// Binds a pending pod to an existing node, once.
    pub async fn bind(&self, req: pb::BindRequest) -> Result<pb::Pod, Status> {
        let namespace = if req.namespace.is_empty() {
            "default".to_string()
        } else {
            req.namespace.clone()
        };
        if req.node_name.is_empty() {
            return Err(Status::invalid_argument("node_name is required"));
        }
        let mut pod = self
            .get(pb::GetRequest {
                namespace: namespace.clone(),
                name: req.name.clone(),
                serializable: false,
            })
            .await?;
        let rev: u64 = pod
            .meta()
            .and_then(|m| m.resource_version.parse().ok())
            .unwrap_or(0);
        let what = describe("Pod", &namespace, &req.name);
        if !pod.node_name().is_empty() {
            return Err(Status::failed_precondition(format!(
                "{what} is already bound to node {:?}; a pod is placed once",
                pod.node_name()
            )));
        }
        pod.spec.get_or_insert_default().node_name = req.node_name.clone();
        let status = pod.status.get_or_insert_default();
        status.conditions.retain(|c| c.r#type != "PodScheduled");
        status.conditions.push(pb::Condition {
            r#type: "PodScheduled".into(),
            status: "True".into(),
            last_transition_time: now_rfc3339(),
            ..Default::default()
        });
        let node_key = object_key(&pb::Node::INFO, "", &req.node_name).into_bytes();
        let ops = vec![
            Op::Check {
                key: node_key,
                precondition: Precondition::Present,
            },
            self.put_at(&pod, rev)?,
        ];
        match self.store.txn(berth_raft::Txn { ops }).await? {
            TxnOutcome::Committed { revision, .. } => {
                pod.meta_mut().resource_version = revision.to_string();
                Ok(pod)
            }
            TxnOutcome::Failed(berth_raft::TxnFailure::NotFound { op: 0, .. }) => {
                Err(Status::not_found(format!(
                    "node {:?} does not exist: bind to a registered node",
                    req.node_name
                )))
            }
            TxnOutcome::Failed(_) => Err(Status::aborted(format!(
                "conflict: {what} changed during the bind: re-read and retry"
            ))),
        }
    }
}

/// Creates the built-in namespaces once the cluster can take writes. Every
/// controller runs it; whichever is first creates them.
pub async fn ensure_builtin_namespaces(store: berth_raft::Store) {
    let api = Api::<pb::Namespace>::new(store);
    for name in PROTECTED_NAMESPACES {
        let mut delay = std::time::Duration::from_millis(200);
        loop {
            let mut ns = pb::Namespace::default();
            ns.meta_mut().name = name.to_string();
            match api.create(ns).await {
                Ok(_) => break,
                Err(s) if s.code() == tonic::Code::AlreadyExists => break,
                Err(s) => {
                    tracing::debug!(namespace = name, error = %s.message(), "built-in namespace not created yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
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
