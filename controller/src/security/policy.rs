//! The cluster's RBAC objects, kept current in memory from this
//! controller's store, so that each call is decided without a read.
//!
//! A watch of the four kinds rebuilds the policy on every change (RBAC
//! changes are rare; the objects are few). A denial is answered only by a
//! policy built at the store's current revision or later, so that a
//! binding written through any controller allows the calls that follow
//! it once this controller has applied it, without waiting for the watch.

use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;

use berth_api::pb;
use berth_api::Object;
use berth_raft::Store;
use berth_rbac::Policy;
use futures::stream::select_all;
use futures::StreamExt;
use tonic::Status;

use crate::api::Api;

/// A policy and the store revision it was read at.
pub struct Built {
    pub policy: Policy,
    pub revision: u64,
}

#[derive(Clone)]
pub struct PolicyCache {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    current: RwLock<Arc<Built>>,
    /// One rebuild at a time; callers that waited for it reuse its result.
    rebuilding: tokio::sync::Mutex<()>,
}

impl PolicyCache {
    /// A cache that follows `store` from now on.
    pub fn start(store: Store) -> Self {
        let cache = Self {
            inner: Arc::new(Inner {
                store,
                current: RwLock::new(Arc::new(Built {
                    policy: Policy::default(),
                    revision: 0,
                })),
                rebuilding: tokio::sync::Mutex::new(()),
            }),
        };
        tokio::spawn(follow(Arc::downgrade(&cache.inner)));
        cache
    }

    pub fn current(&self) -> Arc<Built> {
        self.inner.current.read().expect("policy lock").clone()
    }

    /// A policy at least as new as every change this controller has
    /// applied.
    pub async fn fresh(&self) -> Result<Arc<Built>, Status> {
        let wanted = self.inner.store.revision();
        let current = self.current();
        if current.revision >= wanted {
            return Ok(current);
        }
        self.inner.rebuild(wanted).await
    }
}

impl Inner {
    /// Reads the four kinds again unless a rebuild that finished while
    /// this one waited already reached `wanted`.
    async fn rebuild(&self, wanted: u64) -> Result<Arc<Built>, Status> {
        let _one = self.rebuilding.lock().await;
        let current = self.current.read().expect("policy lock").clone();
        if current.revision >= wanted {
            return Ok(current);
        }
        let revision = self.store.revision();
        let (roles, cluster_roles, role_bindings, cluster_role_bindings) = futures::try_join!(
            all::<pb::Role>(&self.store),
            all::<pb::ClusterRole>(&self.store),
            all::<pb::RoleBinding>(&self.store),
            all::<pb::ClusterRoleBinding>(&self.store),
        )?;
        let built = Arc::new(Built {
            policy: Policy::new(
                &roles,
                &cluster_roles,
                &role_bindings,
                &cluster_role_bindings,
            ),
            revision,
        });
        metrics::counter!("berth_controller_rbac_policy_builds_total").increment(1);
        *self.current.write().expect("policy lock") = built.clone();
        Ok(built)
    }
}

/// Every object of a kind in this controller's store.
async fn all<K: Object>(store: &Store) -> Result<Vec<K>, Status> {
    let req = pb::ListRequest {
        serializable: true,
        ..Default::default()
    };
    Ok(Api::<K>::new(store.clone()).list(req).await?.0)
}

/// Rebuilds on every change of an RBAC object until the cache is dropped.
async fn follow(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(cache) = inner.upgrade() else { return };
        if let Err(e) = follow_once(&cache).await {
            tracing::debug!(error = %e.message(), "RBAC policy watch ended; reading the policy again");
        }
        drop(cache);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn follow_once(cache: &Inner) -> Result<(), Status> {
    let built = cache.rebuild(cache.store.revision().max(1)).await?;
    let from = pb::WatchRequest {
        resource_version: built.revision.to_string(),
        ..Default::default()
    };
    let changes = select_all([
        changes::<pb::Role>(&cache.store, &from)?,
        changes::<pb::ClusterRole>(&cache.store, &from)?,
        changes::<pb::RoleBinding>(&cache.store, &from)?,
        changes::<pb::ClusterRoleBinding>(&cache.store, &from)?,
    ]);
    futures::pin_mut!(changes);
    while let Some(change) = changes.next().await {
        let revision = change?;
        if revision > 0 {
            cache.rebuild(revision).await?;
        }
    }
    Ok(())
}

/// The revisions at which objects of a kind change (0 for a bookmark).
fn changes<K: Object>(
    store: &Store,
    from: &pb::WatchRequest,
) -> Result<futures::stream::BoxStream<'static, Result<u64, Status>>, Status> {
    let events = Api::<K>::new(store.clone()).watch(from.clone())?;
    Ok(events
        .map(|e| {
            e.map(|(kind, object)| match kind.as_str() {
                "BOOKMARK" => 0,
                _ => object
                    .meta()
                    .and_then(|m| m.resource_version.parse().ok())
                    .unwrap_or(0),
            })
        })
        .boxed())
}
