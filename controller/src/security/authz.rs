//! Who may call what, decided per request from the identity its
//! connection's certificate names, before any service sees it.
//!
//! - No certificate: only `Join/Ca` and `Join/Join` (a joiner has none
//!   yet); anything else is UNAUTHENTICATED.
//! - Raft and the raw KV store: controllers only.
//! - Membership changes, join tokens and users' certificates: controllers
//!   and cluster administrators (group `system:masters`).
//! - The rest: any identity of the cluster. (Per-kind rules, RBAC and the
//!   node authorizer, come next and sit behind this.)

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;

use berth_pki::Identity;
use berth_tls::Peer;
use tonic::Status;

use super::MASTERS_GROUP;

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

/// Whether the caller on `peer` may call `path`; the status to answer if
/// not.
pub fn check(path: &str, peer: Option<&Peer>) -> Result<(), Status> {
    let Some(peer) = peer else {
        return Err(Status::internal("the connection has no peer information"));
    };
    if !peer.secure {
        return Ok(());
    }
    let needs = needs(path);
    if needs == Needs::Nothing {
        return Ok(());
    }
    let Some(identity) = peer.identity.as_deref() else {
        metrics::counter!("berth_controller_unauthenticated_calls_total").increment(1);
        return Err(Status::unauthenticated(format!(
            "{path} needs a client certificate of this cluster: use credentials from `berth user create` (`--config FILE`, $BERTH_CONFIG or ~/.berth/config), or a controller's DIR/admin.conf"
        )));
    };
    let allowed = match needs {
        Needs::Nothing | Needs::Identity => true,
        Needs::Controller => matches!(identity, Identity::Controller(_)),
        Needs::Admin => {
            matches!(identity, Identity::Controller(_))
                || identity.groups().iter().any(|g| g == MASTERS_GROUP)
        }
    };
    if allowed {
        return Ok(());
    }
    metrics::counter!("berth_controller_forbidden_calls_total").increment(1);
    let who = match needs {
        Needs::Controller => "controllers",
        _ => "controllers and cluster administrators (group system:masters)",
    };
    Err(Status::permission_denied(format!(
        "forbidden: {identity} cannot call {path}, which is for {who}"
    )))
}

/// The tower layer that applies `check` to every request.
#[derive(Clone, Copy, Default)]
pub struct AuthzLayer;

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    fn layer(&self, inner: S) -> Authz<S> {
        Authz { inner }
    }
}

#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
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
        match check(req.uri().path(), req.extensions().get::<Peer>()) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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
            assert_eq!(code(path, &controller), None, "{path}");
        }
        let admin = peer(Some(user(&["system:masters"])));
        let node = peer(Some(Identity::Node("n1".into())));
        let plain = peer(Some(user(&["dev"])));
        for p in [&admin, &node, &plain] {
            for path in [raft, kv] {
                assert_eq!(code(path, p), Some(tonic::Code::PermissionDenied), "{path}");
            }
            assert_eq!(code(pods, p), None);
            assert_eq!(code(status, p), None);
        }
        assert_eq!(code(add, &admin), None);
        assert_eq!(code(tokens, &admin), None);
        for p in [&node, &plain] {
            assert_eq!(code(add, p), Some(tonic::Code::PermissionDenied));
            assert_eq!(code(tokens, p), Some(tonic::Code::PermissionDenied));
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
        assert_eq!(code(raft, &insecure), None);
    }
}
