//! Who may call what, decided per request from the identity its
//! connection's certificate names, before any service sees it.
//!
//! - No certificate: only `Join/Ca` and `Join/Join` (a joiner has none
//!   yet); anything else is UNAUTHENTICATED.
//! - Raft and the raw KV store: controllers only.
//! - Membership changes, join tokens and users' certificates: controllers
//!   and cluster administrators (RBAC's `cluster-admin`: every verb on
//!   every resource, as group `system:masters` has).
//! - The rest: any identity of the cluster; the object API then asks RBAC
//!   per verb, resource and namespace (`authorizer`).
//!
//! The layer writes the audit log's lines for what it refuses and for the
//! calls that change the cluster outside the object API (joins, renewals,
//! tokens, users' certificates, membership); the object API writes its
//! own, which name the object.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;

use berth_pki::Identity;
use berth_rbac::Attributes;
use berth_rbac::Decision;
use berth_tls::Peer;
use tonic::Status;

use super::authorizer::Authorizer;
use super::authorizer::Caller;
use crate::audit::AuditLog;

/// What a method needs of its caller.
#[derive(Debug, PartialEq, Eq)]
enum Needs {
    Nothing,
    Identity,
    Controller,
    Admin,
}

fn needs(path: &str) -> Needs {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    match (service, method) {
        ("berth.security.v1.Join", "Ca" | "Join") => Needs::Nothing,
        ("berth.raft.v1.Raft" | "berth.kv.v1.KV", _) => Needs::Controller,
        ("berth.cluster.v1.Cluster", "AddMember" | "RemoveMember") => Needs::Admin,
        ("berth.security.v1.Tokens" | "berth.security.v1.Users", _) => Needs::Admin,
        _ => Needs::Identity,
    }
}

/// Calls that change the cluster outside the object API: the layer
/// audits them, as it alone sees them all.
fn changes_security(path: &str) -> bool {
    matches!(
        path.trim_start_matches('/').split_once('/'),
        Some(
            ("berth.security.v1.Join", "Join" | "Renew")
                | ("berth.security.v1.Tokens", "Create" | "Revoke")
                | ("berth.security.v1.Users", "Issue")
                | ("berth.cluster.v1.Cluster", "AddMember" | "RemoveMember")
        )
    )
}

/// The error an answer whose head is `headers` carries, if any: errors
/// come in the head (trailers-only), success in trailers the layer does
/// not wait for.
fn answered_status(headers: &http::HeaderMap) -> Option<Status> {
    Status::from_header_map(headers).filter(|s| s.code() != tonic::Code::Ok)
}

/// What the caller on `peer` may not do of `path`, before RBAC: the status
/// to answer, or what it must hold.
fn check(path: &str, peer: Option<&Peer>) -> Result<Needs, Status> {
    let Some(peer) = peer else {
        return Err(Status::internal("the connection has no peer information"));
    };
    if !peer.secure {
        return Ok(Needs::Nothing);
    }
    let needs = needs(path);
    if needs == Needs::Nothing {
        return Ok(needs);
    }
    let Some(identity) = peer.identity.as_deref() else {
        metrics::counter!("berth_controller_unauthenticated_calls_total").increment(1);
        return Err(Status::unauthenticated(format!(
            "{path} needs a client certificate of this cluster: use credentials from `berth user create` (`--config FILE`, $BERTH_CONFIG or ~/.berth/config), or a controller's DIR/admin.conf"
        )));
    };
    match (needs, identity) {
        (_, Identity::Controller(_)) => Ok(Needs::Nothing),
        (Needs::Controller, _) => Err(refused(identity, path, "controllers")),
        (needs, _) => Ok(needs),
    }
}

fn refused(identity: &Identity, path: &str, who: &str) -> Status {
    metrics::counter!("berth_controller_forbidden_calls_total").increment(1);
    Status::permission_denied(format!(
        "forbidden: {identity} cannot call {path}, which is for {who}"
    ))
}

/// Every verb on every resource everywhere: what `cluster-admin` holds.
fn everything() -> Attributes {
    Attributes {
        verb: "*".into(),
        api_group: "*".into(),
        resource: "*".into(),
        ..Default::default()
    }
}

/// Whether the caller on `peer` may call `path`.
async fn authorize(path: &str, peer: Option<&Peer>, authz: &Authorizer) -> Result<(), Status> {
    if check(path, peer)? != Needs::Admin {
        return Ok(());
    }
    let Some(identity) = peer.and_then(|p| p.identity.as_deref()) else {
        return Ok(());
    };
    let Some(user) = Caller::from(identity).rbac_user() else {
        return Ok(());
    };
    match authz.decide(&user, &everything()).await? {
        Decision::Allowed(_) => Ok(()),
        Decision::Denied => Err(refused(
            identity,
            path,
            "controllers and cluster administrators (ClusterRole cluster-admin, as group system:masters has)",
        )),
    }
}

/// The tower layer that applies `authorize` to every request.
#[derive(Clone)]
pub struct AuthzLayer {
    pub authz: Authorizer,
    pub audit: AuditLog,
}

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            authz: self.authz.clone(),
            audit: self.audit.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
    authz: Authorizer,
    audit: AuditLog,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Authz<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The clone that was made ready serves this request (tower's rule);
        // the fresh clone is left for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authz = self.authz.clone();
        let audit = self.audit.clone();
        Box::pin(async move {
            let (path, peer) = (req.uri().path(), req.extensions().get::<Peer>());
            if let Err(status) = authorize(path, peer, &authz).await {
                audit.record_method(peer, path, Err(&status)).await;
                return Ok(status.into_http());
            }
            // Kept past the call only for the few calls audited here.
            let audited = changes_security(path).then(|| (path.to_string(), peer.cloned()));
            let response = inner.call(req).await?;
            if let Some((path, peer)) = audited {
                let answered = answered_status(response.headers());
                audit
                    .record_method(peer.as_ref(), &path, answered.as_ref().map_or(Ok(()), Err))
                    .await;
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use berth_rbac::Policy;

    use super::*;

    fn peer(identity: Option<Identity>) -> Peer {
        Peer {
            addr: None,
            identity: identity.map(Arc::new),
            secure: true,
        }
    }

    fn user(groups: &[&str]) -> Identity {
        Identity::User {
            name: "alice".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn each_caller_gets_what_its_identity_allows() {
        let raft = "/berth.raft.v1.Raft/Append";
        let kv = "/berth.kv.v1.KV/Put";
        let add = "/berth.cluster.v1.Cluster/AddMember";
        let status = "/berth.cluster.v1.Cluster/Status";
        let pods = "/berth.v1.Pods/List";
        let tokens = "/berth.security.v1.Tokens/Create";
        let join = "/berth.security.v1.Join/Join";
        let renew = "/berth.security.v1.Join/Renew";
        let code = |path: &str, p: &Peer| check(path, Some(p)).err().map(|s| s.code());
        let anonymous = peer(None);
        for path in [raft, kv, add, status, pods, tokens, renew] {
            assert_eq!(
                code(path, &anonymous),
                Some(tonic::Code::Unauthenticated),
                "{path}"
            );
        }
        assert_eq!(code(join, &anonymous), None);
        let controller = peer(Some(Identity::Controller(1)));
        for path in [raft, kv, add, status, pods, tokens, join, renew] {
            assert_eq!(
                check(path, Some(&controller)).unwrap(),
                Needs::Nothing,
                "{path}"
            );
        }
        let admin = peer(Some(user(&["system:masters"])));
        let node = peer(Some(Identity::Node("n1".into())));
        let plain = peer(Some(user(&["dev"])));
        for p in [&admin, &node, &plain] {
            for path in [raft, kv] {
                assert_eq!(code(path, p), Some(tonic::Code::PermissionDenied), "{path}");
            }
            assert_eq!(check(pods, Some(p)).unwrap(), Needs::Identity);
            assert_eq!(check(status, Some(p)).unwrap(), Needs::Identity);
            // Membership and tokens are RBAC's to decide: cluster-admin.
            assert_eq!(check(add, Some(p)).unwrap(), Needs::Admin);
            assert_eq!(check(tokens, Some(p)).unwrap(), Needs::Admin);
        }
        let message = check(kv, Some(&plain)).unwrap_err().message().to_string();
        assert!(
            message.starts_with("forbidden: alice cannot call"),
            "{message}"
        );
        // An insecure server checks nothing.
        let insecure = Peer {
            addr: None,
            identity: None,
            secure: false,
        };
        assert_eq!(check(raft, Some(&insecure)).unwrap(), Needs::Nothing);
    }

    #[test]
    fn cluster_admin_alone_holds_everything() {
        let roles = berth_rbac::builtin::cluster_roles();
        let binding = |role: &str| pb_binding(role);
        for (role, allowed) in [("cluster-admin", true), ("admin", false), ("edit", false)] {
            let policy = Policy::new(&[], &roles, &[], &[binding(role)]);
            let alice = berth_rbac::User {
                name: "alice".into(),
                groups: vec![],
            };
            let decision = policy.authorize(&alice, &everything());
            assert_eq!(matches!(decision, Decision::Allowed(_)), allowed, "{role}");
        }
    }

    fn pb_binding(role: &str) -> berth_api::pb::ClusterRoleBinding {
        use berth_api::pb;
        pb::ClusterRoleBinding {
            metadata: Some(pb::ObjectMeta {
                name: "b".into(),
                ..Default::default()
            }),
            subjects: vec![pb::Subject {
                kind: "User".into(),
                name: "alice".into(),
                ..Default::default()
            }],
            role_ref: Some(pb::RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: role.into(),
            }),
            ..Default::default()
        }
    }
}
