//! Garbage collection through ownerReferences: an object all of whose
//! owners are gone is deleted, as Kubernetes' background cascade does.
//! Owners are matched by uid, so an owner deleted and created again under
//! the same name does not adopt its predecessor's dependents. Dependents
//! looked at: pods (owned by deployments), leases (node leases, owned by
//! their node) and endpoints (owned by their service). An owner of a kind
//! Berth does not have never counts as gone.

use std::sync::Arc;
use std::time::Duration;

use berth_api::kinds::Kind;
use berth_api::pb;
use berth_api::KindInfo;
use berth_api::Object;
use berth_api::Reason;
use berth_client::connect::Connector;
use berth_client::controller::Action;
use berth_client::controller::Controller;
use berth_client::election::LeaderState;
use berth_client::reflector;
use berth_client::reflector::Reflector;
use berth_client::ClientKind;

use super::written;
use super::Caches;
use super::Error;
use super::LazyCaches;

const NAME: &str = "gc";
/// Every dependent is looked at again this often, besides when it or one
/// of its owners changes.
const RESYNC: Duration = Duration::from_secs(30);

/// The owners that can exist, as the caches see them.
struct Owners {
    deployments: Reflector<pb::Deployment>,
    nodes: Reflector<pb::Node>,
    services: Reflector<pb::Service>,
}

/// Whether the cache holds `owner` itself (not another object that took
/// its name).
fn holds<K: ClientKind>(cache: &Reflector<K>, key: &str, owner: &pb::OwnerReference) -> bool {
    cache
        .get(key)
        .is_some_and(|o| o.meta().is_some_and(|m| m.uid == owner.uid))
}

impl Owners {
    fn exists(&self, namespace: &str, owner: &pb::OwnerReference) -> bool {
        let namespaced = format!("{namespace}/{}", owner.name);
        match KindInfo::of_kind(&owner.kind).map(|k| k.id) {
            Some(Kind::Deployment) => holds(&self.deployments, &namespaced, owner),
            Some(Kind::Node) => holds(&self.nodes, &owner.name, owner),
            Some(Kind::Service) => holds(&self.services, &namespaced, owner),
            _ => true,
        }
    }

    /// Whether `obj` had owners and every one of them is gone.
    fn orphaned<K: Object>(&self, obj: &K) -> bool {
        let refs = obj.meta().map_or(&[][..], |m| &m.owner_references[..]);
        !refs.is_empty() && !refs.iter().any(|o| self.exists(obj.namespace(), o))
    }
}

struct Ctx {
    conn: Connector,
    owners: Owners,
}

pub async fn run(conn: Connector, caches: LazyCaches, mut leader: LeaderState) {
    let Some(caches) = caches.when_active(&mut leader).await else {
        return;
    };
    let ctx = Arc::new(Ctx {
        conn,
        owners: Owners {
            deployments: caches.deployments.clone(),
            nodes: caches.nodes.clone(),
            services: caches.services.clone(),
        },
    });
    futures::join!(
        collector(&caches, caches.pods.clone(), &leader, ctx.clone()),
        collector(&caches, caches.leases.clone(), &leader, ctx.clone()),
        collector(&caches, caches.endpoints.clone(), &leader, ctx),
    );
}

/// Collects the orphans among `dependents`: each is looked at when it
/// changes and when one of its owners does (a deleted owner's dependents,
/// found by its uid).
async fn collector<K: ClientKind>(
    caches: &Caches,
    dependents: Reflector<K>,
    leader: &LeaderState,
    ctx: Arc<Ctx>,
) {
    // Only what names an owner can be orphaned; pods without one (most, in
    // some clusters) cost nothing here.
    let owned = |d: &K| d.meta().is_some_and(|m| !m.owner_references.is_empty());
    Controller::new_filtered(NAME, dependents.clone(), owned)
        .watches(
            caches.deployments.clone(),
            orphans_of(&dependents, &caches.deployments),
        )
        .watches(caches.nodes.clone(), orphans_of(&dependents, &caches.nodes))
        .watches(
            caches.services.clone(),
            orphans_of(&dependents, &caches.services),
        )
        .resync_every(RESYNC)
        .gated_by(leader.clone())
        .run(collect::<K>, ctx)
        .await
}

/// Maps a change of an owner to the keys of its dependents when the owner
/// is gone: only a deleted owner leaves orphans, and its other changes
/// (a deployment's status, say) need no scan of every dependent.
fn orphans_of<K: ClientKind, O: ClientKind>(
    dependents: &Reflector<K>,
    owners: &Reflector<O>,
) -> impl Fn(&O) -> Vec<String> + Send + Sync + 'static {
    let (dependents, owners) = (dependents.clone(), owners.clone());
    move |owner: &O| {
        let Some(uid) = owner.meta().map(|m| m.uid.as_str()) else {
            return Vec::new();
        };
        let still_there = owners
            .get(&reflector::key(owner))
            .is_some_and(|o| o.meta().is_some_and(|m| m.uid == uid));
        if still_there {
            return Vec::new();
        }
        dependents_of(&dependents, uid)
    }
}

/// The keys of the objects in `dependents` that name the owner `uid`.
fn dependents_of<K: ClientKind>(dependents: &Reflector<K>, uid: &str) -> Vec<String> {
    dependents
        .all()
        .iter()
        .filter(|d| {
            d.meta()
                .is_some_and(|m| m.owner_references.iter().any(|o| o.uid == uid))
        })
        .map(|d| reflector::key(&**d))
        .collect()
}

async fn collect<K: ClientKind>(obj: Arc<K>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if !ctx.owners.orphaned(&*obj) {
        return Ok(Action::AwaitChange);
    }
    let m = obj.meta().cloned().unwrap_or_default();
    // The owners' cache may lag the dependents' (they are separate
    // watches): a just-created owner must not lose its first pods.
    if !owners_gone(&ctx.conn, &m).await? {
        return Ok(Action::AwaitChange);
    }
    let req = pb::DeleteRequest {
        namespace: m.namespace.clone(),
        name: m.name.clone(),
        // Only the very object judged: not a newer one of that name.
        resource_version: m.resource_version.clone(),
    };
    let result = K::delete(ctx.conn.channel().await?, req).await;
    let what = || format!("{} {}", K::INFO.kind.to_lowercase(), reflector::key(&*obj));
    match written(NAME, "delete", what, result) {
        Ok(_) => {
            tracing::info!(kind = K::INFO.kind, namespace = %m.namespace, name = %m.name, "deleted: its owners are gone");
        }
        // Gone already, or changed since: its own event queues it again.
        Err(e) if matches!(e.reason(), Some(Reason::NotFound | Reason::Conflict)) => {}
        Err(e) => return Err(e),
    }
    Ok(Action::AwaitChange)
}

/// Asks the cluster (linearizably) whether every owner of `m` is gone.
async fn owners_gone(conn: &Connector, m: &pb::ObjectMeta) -> Result<bool, Error> {
    let ch = conn.channel().await?;
    for owner in &m.owner_references {
        let req = |namespace: &str| pb::GetRequest {
            namespace: namespace.into(),
            name: owner.name.clone(),
            serializable: false,
        };
        let found = match KindInfo::of_kind(&owner.kind).map(|k| k.id) {
            Some(Kind::Deployment) => {
                uid_of(pb::Deployment::get(ch.clone(), req(&m.namespace)).await)
            }
            Some(Kind::Service) => uid_of(pb::Service::get(ch.clone(), req(&m.namespace)).await),
            Some(Kind::Node) => uid_of(pb::Node::get(ch.clone(), req("")).await),
            _ => return Ok(false),
        }
        .map_err(|status| Error::Write {
            verb: "read",
            what: format!("owner {} {}", owner.kind, owner.name),
            status,
        })?;
        if found.as_deref() == Some(owner.uid.as_str()) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn uid_of<K: Object>(got: Result<K, tonic::Status>) -> Result<Option<String>, tonic::Status> {
    match got {
        Ok(o) => Ok(o.meta().map(|m| m.uid.clone())),
        Err(s) if Reason::of(&s) == Some(Reason::NotFound) => Ok(None),
        Err(s) => Err(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_objects_whose_every_known_owner_is_gone_are_orphans() {
        let mut d1 = pb::Deployment::default();
        let m = d1.meta_mut();
        (m.namespace, m.name, m.uid) = ("default".into(), "web".into(), "d1".into());
        let owners = Owners {
            deployments: Reflector::fixed(vec![d1]),
            nodes: Reflector::fixed(vec![]),
            services: Reflector::fixed(vec![]),
        };
        let pod = |refs: &[(&str, &str)]| pb::Pod {
            metadata: Some(pb::ObjectMeta {
                namespace: "default".into(),
                owner_references: refs
                    .iter()
                    .map(|(kind, uid)| pb::OwnerReference {
                        kind: kind.to_string(),
                        name: "web".into(),
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
