//! Garbage collection through ownerReferences: an object all of whose
//! owners are gone is deleted, as Kubernetes' background cascade does.
//! Owners are matched by uid, so an owner deleted and created again under
//! the same name does not adopt its predecessor's dependents. Dependents
//! looked at: pods (owned by deployments), leases (node leases, owned by
//! their node) and endpoints (owned by their service). An owner of a kind
//! Berth does not have never counts as gone.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use berth_api::pb;
use berth_api::Object;
use berth_client::connect::Connector;
use berth_client::election::LeaderState;
use berth_client::reflector::Reflector;
use berth_client::ClientKind;

use super::active;
use super::count_write;
use super::LazyCaches;

const NAME: &str = "gc";
const PERIOD: Duration = Duration::from_secs(2);

/// The uids of the objects that can own others, by kind.
struct Owners {
    deployments: HashSet<String>,
    nodes: HashSet<String>,
    services: HashSet<String>,
}

fn uids<K: ClientKind>(r: &Reflector<K>) -> HashSet<String> {
    r.all()
        .iter()
        .filter_map(|o| o.meta().map(|m| m.uid.clone()))
        .collect()
}

impl Owners {
    fn exists(&self, owner: &pb::OwnerReference) -> bool {
        match owner.kind.as_str() {
            "Deployment" => self.deployments.contains(&owner.uid),
            "Node" => self.nodes.contains(&owner.uid),
            "Service" => self.services.contains(&owner.uid),
            _ => true,
        }
    }

    /// Whether `obj` had owners and every one of them is gone.
    fn orphaned<K: Object>(&self, obj: &K) -> bool {
        let refs = obj.meta().map_or(&[][..], |m| &m.owner_references[..]);
        !refs.is_empty() && !refs.iter().any(|o| self.exists(o))
    }
}

pub async fn run(conn: Connector, caches: LazyCaches, mut leader: LeaderState) {
    let Some(caches) = caches.when_active(&mut leader).await else {
        return;
    };
    caches.deployments.ready().await;
    caches.nodes.ready().await;
    caches.services.ready().await;
    caches.pods.ready().await;
    caches.leases.ready().await;
    caches.endpoints.ready().await;
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tick.tick().await;
        if !active(&leader) {
            continue;
        }
        let owners = Owners {
            deployments: uids(&caches.deployments),
            nodes: uids(&caches.nodes),
            services: uids(&caches.services),
        };
        collect(&conn, &owners, &caches.pods).await;
        collect(&conn, &owners, &caches.leases).await;
        collect(&conn, &owners, &caches.endpoints).await;
    }
}

async fn collect<K: ClientKind>(conn: &Connector, owners: &Owners, dependents: &Reflector<K>) {
    let orphans: Vec<Arc<K>> = dependents
        .all()
        .into_iter()
        .filter(|o| owners.orphaned(&**o))
        .collect();
    for obj in orphans {
        let m = obj.meta().cloned().unwrap_or_default();
        // The owners' cache may lag the dependents' (they are separate
        // watches): a just-created owner must not lose its first pods.
        match owners_gone(conn, &m).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(s) => {
                tracing::debug!(error = %s.message(), "cannot confirm an orphan; later");
                continue;
            }
        }
        let req = pb::DeleteRequest {
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            // Only the very object judged: not a newer one of that name.
            resource_version: m.resource_version.clone(),
        };
        let result = match conn.channel().await {
            Ok(ch) => K::delete(ch, req).await.map(|_| ()),
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        };
        count_write(NAME, "delete", result.is_ok());
        match result {
            Ok(()) => {
                tracing::info!(kind = K::INFO.kind, namespace = %m.namespace, name = %m.name, "deleted: its owners are gone");
            }
            Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::Aborted) => {}
            Err(s) => {
                tracing::warn!(kind = K::INFO.kind, name = %m.name, error = %s.message(), "cannot delete an orphan")
            }
        }
    }
}

/// Asks the cluster (linearizably) whether every owner of `m` is gone.
async fn owners_gone(conn: &Connector, m: &pb::ObjectMeta) -> Result<bool, tonic::Status> {
    let ch = conn
        .channel()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    for owner in &m.owner_references {
        let req = |namespace: &str| pb::GetRequest {
            namespace: namespace.into(),
            name: owner.name.clone(),
            serializable: false,
        };
        let found = match owner.kind.as_str() {
            "Deployment" => uid_of(pb::Deployment::get(ch.clone(), req(&m.namespace)).await)?,
            "Service" => uid_of(pb::Service::get(ch.clone(), req(&m.namespace)).await)?,
            "Node" => uid_of(pb::Node::get(ch.clone(), req("")).await)?,
            _ => return Ok(false),
        };
        if found.as_deref() == Some(owner.uid.as_str()) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn uid_of<K: Object>(got: Result<K, tonic::Status>) -> Result<Option<String>, tonic::Status> {
    match got {
        Ok(o) => Ok(o.meta().map(|m| m.uid.clone())),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_objects_whose_every_known_owner_is_gone_are_orphans() {
        let owners = Owners {
            deployments: HashSet::from(["d1".to_string()]),
            nodes: HashSet::new(),
            services: HashSet::new(),
        };
        let pod = |refs: &[(&str, &str)]| pb::Pod {
            metadata: Some(pb::ObjectMeta {
                owner_references: refs
                    .iter()
                    .map(|(kind, uid)| pb::OwnerReference {
                        kind: kind.to_string(),
                        uid: uid.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let table = [
            (vec![], false),
            (vec![("Deployment", "d1")], false),
            (vec![("Deployment", "d2")], true),
            (vec![("Deployment", "d2"), ("Deployment", "d1")], false),
            (vec![("Node", "n1")], true),
            (vec![("ReplicaSet", "r1")], false),
        ];
        for (refs, want) in table {
            assert_eq!(owners.orphaned(&pod(&refs)), want, "{refs:?}");
        }
    }
}
