//! Per-object authorization: who the caller is (from its certificate),
//! and whether RBAC lets it do what it asks. The authz layer has already
//! refused anonymous callers; this decides by verb, resource, namespace
//! and name, which only a decoded request tells.

use std::sync::Arc;

use berth_api::KindInfo;
use berth_pki::Identity;
use berth_pki::NODES_GROUP;
use berth_rbac::node::authorize_node;
use berth_rbac::node::node_of;
use berth_rbac::node::NodeFacts;
use berth_rbac::Attributes;
use berth_rbac::Decision;
use berth_rbac::User;
use berth_tls::Peer;
use tonic::Status;

use super::policy::Built;
use super::policy::PolicyCache;

/// Who makes a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// On an `--insecure` server: nothing is checked.
    Anyone,
    /// The control plane itself: controllers run the reconcilers and the
    /// built-in scheduler, and may do anything.
    Controller(u64),
    /// A node's agent (`system:node:NAME`).
    Node(String),
    User(User),
}

impl Caller {
    /// The caller of `req`, from its connection's certificate.
    pub fn of<T>(req: &tonic::Request<T>) -> Result<Self, Status> {
        let Some(peer) = req.extensions().get::<Peer>() else {
            return Err(Status::internal("the connection has no peer information"));
        };
        if !peer.secure {
            return Ok(Caller::Anyone);
        }
        match peer.identity.as_deref() {
            None => Err(Status::unauthenticated(
                "this call needs a client certificate of this cluster",
            )),
            Some(identity) => Ok(Caller::from(identity)),
        }
    }

    /// The RBAC user a caller is checked as; None for callers RBAC does
    /// not decide for.
    pub fn rbac_user(&self) -> Option<User> {
        match self {
            Caller::Anyone | Caller::Controller(_) => None,
            Caller::Node(name) => {
                let node = Identity::Node(name.clone());
                Some(User {
                    name: node.name(),
                    groups: node.groups(),
                })
            }
            Caller::User(user) => Some(user.clone()),
        }
    }
}

impl From<&Identity> for Caller {
    fn from(identity: &Identity) -> Self {
        match identity {
            Identity::Controller(id) => Caller::Controller(*id),
            Identity::Node(name) => Caller::Node(name.clone()),
            Identity::User { name, groups } => Caller::User(User {
                name: name.clone(),
                groups: groups.clone(),
            }),
        }
    }
}

/// "in namespace NS", or "at the cluster scope" for none: where a request
/// is, as Kubernetes' denials say it.
pub fn scope(namespace: &str) -> String {
    if namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in namespace {namespace}")
    }
}

/// The request attributes of `verb` on objects of `info` (`subresource`
/// may be empty), in `namespace`, on the object `name` (empty for none).
pub fn attributes(
    info: &KindInfo,
    verb: &str,
    subresource: &str,
    namespace: &str,
    name: &str,
) -> Attributes {
    Attributes {
        verb: verb.to_string(),
        api_group: info.api_group().to_string(),
        resource: info.plural.to_string(),
        subresource: subresource.to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

/// RBAC's answers, from a policy kept current from the store; None on an
/// insecure server.
#[derive(Clone)]
pub struct Authorizer {
    policy: Option<PolicyCache>,
}

impl Authorizer {
    pub fn new(policy: Option<PolicyCache>) -> Self {
        Self { policy }
    }

    /// Ok if `caller` may do `request`; PERMISSION_DENIED saying what it
    /// tried otherwise. `facts` are what the node authorizer needs to know
    /// of the objects a node's request is about.
    pub async fn check(
        &self,
        caller: &Caller,
        request: &Attributes,
        facts: NodeFacts<'_>,
    ) -> Result<(), Status> {
        let Some(user) = caller.rbac_user() else {
            return Ok(());
        };
        if let Caller::Node(node) = caller {
            if authorize_node(node, request, facts) != Decision::Denied {
                return Ok(());
            }
        }
        match self.rbac(&user, request).await? {
            Decision::Allowed(_) => Ok(()),
            Decision::Denied => Err(forbidden(&user.name, request)),
        }
    }

    /// The decision for `user` (a node's user name is decided by the node
    /// authorizer first, knowing nothing of the objects), as `berth auth
    /// can-i` asks it.
    pub async fn decide(&self, user: &User, request: &Attributes) -> Result<Decision, Status> {
        let node = node_of(&user.name).filter(|_| user.in_group(NODES_GROUP));
        if let Some(node) = node {
            let decision = authorize_node(node, request, NodeFacts::default());
            if decision != Decision::Denied {
                return Ok(decision);
            }
        }
        self.rbac(user, request).await
    }

    /// RBAC's decision for `user`; a denial is confirmed against a policy
    /// that has every change this controller applied.
    async fn rbac(&self, user: &User, request: &Attributes) -> Result<Decision, Status> {
        let Some(cache) = &self.policy else {
            return Ok(Decision::Allowed("the server is insecure".into()));
        };
        let decision = cache.current().policy.authorize(user, request);
        if decision != Decision::Denied {
            return Ok(decision);
        }
        Ok(cache.fresh().await?.policy.authorize(user, request))
    }

    /// The policy as of every change this controller applied.
    pub async fn policy(&self) -> Result<Option<Arc<Built>>, Status> {
        match &self.policy {
            Some(cache) => cache.fresh().await.map(Some),
            None => Ok(None),
        }
    }
}

/// Kubernetes' denial, in Berth's words.
pub fn forbidden(user: &str, request: &Attributes) -> Status {
    metrics::counter!("berth_controller_forbidden_calls_total").increment(1);
    Status::permission_denied(denial(user, request))
}

/// "forbidden: USER cannot VERB RESOURCE in namespace NS".
pub fn denial(user: &str, request: &Attributes) -> String {
    format!(
        "forbidden: {user} cannot {} {} {}",
        request.verb,
        request.resource_path(),
        scope(&request.namespace)
    )
}
