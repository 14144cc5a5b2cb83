//! What each verb of the API asks of the authorizer before it runs: the
//! request's attributes as Kubernetes forms them, what the node authorizer
//! must know of a node's request (the node of the pod it names, the node
//! its pod list selects), NodeRestriction's rule on a node's labels, the
//! extra permission to set a pod's node at create (`pods/binding`), and
//! the escalation check on RBAC's own kinds (a Role or binding may grant
//! only what its author holds, unless it may `escalate` or `bind`).

use std::any::Any;
use std::collections::BTreeSet;

use berth_api::kinds::Kind;
use berth_api::pb;
use berth_api::selector::FieldSelector;
use berth_api::Object;
use berth_rbac::node::NodeFacts;
use berth_rbac::Decision;
use tonic::Status;

use crate::security::authorizer::attributes;
use crate::security::authorizer::scope;
use crate::security::authorizer::Authorizer;
use crate::security::authorizer::Caller;

use super::objects::Api;

/// Labels a node may not set on itself (NodeRestriction's), so that
/// workloads can be kept to nodes by labels their agents cannot forge.
const RESTRICTED_LABEL_PREFIX: &str = "node-restriction.kubernetes.io/";

pub struct Guard<K> {
    authz: Authorizer,
    /// Reads what a node's request is about.
    api: Api<K>,
}

impl<K> Clone for Guard<K> {
    fn clone(&self) -> Self {
        Self {
            authz: self.authz.clone(),
            api: self.api.clone(),
        }
    }
}

/// The namespace a single-object request is about: a namespaced kind's
/// object is in "default" unless named; a Namespace is "in" itself, so
/// that a RoleBinding there may grant reading it (as Kubernetes).
fn namespace_of<K: Object>(requested: &str, name: &str) -> String {
    match K::INFO.id {
        Kind::Namespace => name.to_string(),
        _ if K::INFO.namespaced && requested.is_empty() => "default".to_string(),
        _ if K::INFO.namespaced => requested.to_string(),
        _ => String::new(),
    }
}

impl<K: Object> Guard<K> {
    pub fn new(authz: Authorizer, api: Api<K>) -> Self {
        Self { authz, api }
    }

    async fn check(
        &self,
        caller: &Caller,
        verb: &str,
        sub: &str,
        ns: &str,
        name: &str,
    ) -> Result<(), Status> {
        let request = attributes(&K::INFO, verb, sub, ns, name);
        self.authz
            .check(caller, &request, NodeFacts::default())
            .await
    }

    /// The node the pod `ns/name` is bound to, when a node asks about it
    /// (None for anyone else, and for no such pod).
    async fn bound_node(&self, caller: &Caller, ns: &str, name: &str) -> Option<String> {
        if !matches!(caller, Caller::Node(_)) || K::INFO.id != Kind::Pod {
            return None;
        }
        let req = pb::GetRequest {
            namespace: ns.to_string(),
            name: name.to_string(),
            serializable: true,
        };
        self.api
            .get(req)
            .await
            .ok()
            .map(|p| p.node_name().to_string())
    }

    /// Whether a pod bound to the node asking names the ConfigMap or
    /// Secret `ns/name` (false for anyone else, and for other kinds). Read
    /// from this controller's state, as the other facts: a pod bound an
    /// instant ago may not show yet, and its agent asks again.
    async fn named_by_own_pod(&self, caller: &Caller, ns: &str, name: &str) -> bool {
        let Caller::Node(node) = caller else {
            return false;
        };
        let secrets = match K::INFO.id {
            Kind::ConfigMap => false,
            Kind::Secret => true,
            _ => return false,
        };
        let req = pb::ListRequest {
            namespace: ns.to_string(),
            field_selector: format!("spec.nodeName={node}"),
            serializable: true,
            ..Default::default()
        };
        let Ok((pods, _)) = Api::<pb::Pod>::new(self.api.store.clone()).list(req).await else {
            return false;
        };
        pods.iter().any(|pod| {
            let (config_maps, named_secrets) = berth_api::env::referenced(pod);
            let named = if secrets { named_secrets } else { config_maps };
            named.contains(&name)
        })
    }

    /// Get, update (`status` for UpdateStatus) or delete of one object.
    pub async fn one(
        &self,
        caller: &Caller,
        verb: &str,
        sub: &str,
        namespace: &str,
        name: &str,
    ) -> Result<(), Status> {
        let ns = namespace_of::<K>(namespace, name);
        let request = attributes(&K::INFO, verb, sub, &ns, name);
        let pod_node = self.bound_node(caller, &ns, name).await;
        let named_by_own_pod = verb == "get" && self.named_by_own_pod(caller, &ns, name).await;
        let facts = NodeFacts {
            pod_node: pod_node.as_deref(),
            selected_node: None,
            named_by_own_pod,
        };
        self.authz.check(caller, &request, facts).await
    }

    /// List or watch, in one namespace or (empty) all of them, of the
    /// objects `field_selector` selects.
    pub async fn many(
        &self,
        caller: &Caller,
        verb: &str,
        namespace: &str,
        field_selector: &str,
    ) -> Result<(), Status> {
        let ns = if K::INFO.namespaced { namespace } else { "" };
        let request = attributes(&K::INFO, verb, "", ns, "");
        // Only the node authorizer reads the selector; one that does not
        // parse is refused by the verb itself.
        let selector = match caller {
            Caller::Node(_) => FieldSelector::parse(field_selector, K::INFO.id == Kind::Pod).ok(),
            _ => None,
        };
        let facts = NodeFacts {
            selected_node: selector.as_ref().and_then(FieldSelector::node_name),
            ..NodeFacts::default()
        };
        self.authz.check(caller, &request, facts).await
    }

    pub async fn create(&self, caller: &Caller, obj: &K) -> Result<(), Status> {
        let ns = match K::INFO.id {
            // A new namespace is not in itself yet.
            Kind::Namespace => String::new(),
            _ => namespace_of::<K>(obj.namespace(), obj.name()),
        };
        self.check(caller, "create", "", &ns, obj.name()).await?;
        self.restricted_labels(caller, obj, None)?;
        if !obj.node_name().is_empty() {
            // Placing a pod is the scheduler's (Kubernetes' pods/binding).
            self.check(caller, "create", "binding", &ns, obj.name())
                .await?;
        }
        self.no_escalation(caller, obj, &ns).await
    }

    pub async fn update(&self, caller: &Caller, obj: &K) -> Result<(), Status> {
        let ns = namespace_of::<K>(obj.namespace(), obj.name());
        self.check(caller, "update", "", &ns, obj.name()).await?;
        if matches!(caller, Caller::Node(_)) && K::INFO.id == Kind::Node {
            let req = pb::GetRequest {
                name: obj.name().to_string(),
                serializable: true,
                ..Default::default()
            };
            let stored = self.api.get(req).await.ok();
            self.restricted_labels(caller, obj, stored.as_ref())?;
        }
        self.no_escalation(caller, obj, &ns).await
    }

    /// NodeRestriction: a node may not set or change the labels under
    /// RESTRICTED_LABEL_PREFIX on its Node (`stored`: as it is now).
    fn restricted_labels(
        &self,
        caller: &Caller,
        obj: &K,
        stored: Option<&K>,
    ) -> Result<(), Status> {
        if !matches!(caller, Caller::Node(_)) || K::INFO.id != Kind::Node {
            return Ok(());
        }
        let restricted = |o: Option<&K>| -> Vec<(String, String)> {
            o.and_then(|o| o.meta())
                .map(|m| {
                    m.labels
                        .iter()
                        .filter(|(k, _)| k.starts_with(RESTRICTED_LABEL_PREFIX))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default()
        };
        if restricted(Some(obj)) == restricted(stored) {
            return Ok(());
        }
        metrics::counter!("berth_controller_forbidden_calls_total").increment(1);
        Err(Status::permission_denied(format!(
            "forbidden: {} cannot set or change labels under {RESTRICTED_LABEL_PREFIX} on its own Node: an administrator sets them",
            caller.rbac_user().map(|u| u.name).unwrap_or_default()
        )))
    }

    /// Refuses a Role, ClusterRole or binding that would grant more than
    /// its author holds where it applies.
    async fn no_escalation(&self, caller: &Caller, obj: &K, ns: &str) -> Result<(), Status> {
        let Some(user) = caller.rbac_user() else {
            return Ok(());
        };
        let Some(granted) = Grant::of(obj as &dyn Any) else {
            return Ok(());
        };
        let Some(built) = self.authz.policy().await? else {
            return Ok(());
        };
        let policy = &built.policy;
        // Kubernetes' way around the check: `escalate` on the role being
        // written, or `bind` on the role a binding refers to.
        let (verb, info, name) = granted.bypass;
        let bypass = attributes(info, verb, "", ns, name);
        if policy.authorize(&user, &bypass) != Decision::Denied {
            return Ok(());
        }
        let rules = match granted.rules {
            Rules::Listed(rules) => rules.to_vec(),
            Rules::Referenced(role_ref) => policy.rules_of_ref(role_ref, ns).to_vec(),
        };
        let missing = policy.missing(&user, ns, &rules);
        if missing.is_empty() {
            return Ok(());
        }
        let described: BTreeSet<String> = missing.iter().map(describe_rule).collect();
        metrics::counter!("berth_controller_forbidden_calls_total").increment(1);
        Err(Status::permission_denied(format!(
            "forbidden: {} cannot grant what it does not hold {}: {} (it needs these itself, or the {verb} verb on {} {name:?})",
            user.name,
            scope(ns),
            described.into_iter().collect::<Vec<_>>().join(", "),
            info.plural,
        )))
    }
}

fn describe_rule(rule: &pb::PolicyRule) -> String {
    let group = rule.api_groups.join(",");
    let names = if rule.resource_names.is_empty() {
        String::new()
    } else {
        format!(" named {}", rule.resource_names.join(","))
    };
    let resource = match group.as_str() {
        "" => rule.resources.join(","),
        g => format!("{}.{g}", rule.resources.join(",")),
    };
    format!("{} {resource}{names}", rule.verbs.join(","))
}

enum Rules<'a> {
    Listed(&'a [pb::PolicyRule]),
    Referenced(&'a pb::RoleRef),
}

/// What an RBAC object grants, and the permission (verb, kind, name) that
/// lets its author grant it anyway.
struct Grant<'a> {
    rules: Rules<'a>,
    bypass: (&'static str, &'static berth_api::KindInfo, &'a str),
}

impl<'a> Grant<'a> {
    fn of(obj: &'a dyn Any) -> Option<Self> {
        fn role<'r, R: Object>(role: &'r R, rules: &'r [pb::PolicyRule]) -> Grant<'r> {
            Grant {
                rules: Rules::Listed(rules),
                bypass: ("escalate", &R::INFO, role.name()),
            }
        }
        if let Some(r) = obj.downcast_ref::<pb::Role>() {
            return Some(role(r, &r.rules));
        }
        if let Some(r) = obj.downcast_ref::<pb::ClusterRole>() {
            return Some(role(r, &r.rules));
        }
        let role_ref = obj
            .downcast_ref::<pb::RoleBinding>()
            .and_then(|b| b.role_ref.as_ref())
            .or_else(|| {
                obj.downcast_ref::<pb::ClusterRoleBinding>()
                    .and_then(|b| b.role_ref.as_ref())
            })?;
        let info = match role_ref.kind.as_str() {
            "Role" => &<pb::Role as Object>::INFO,
            _ => &<pb::ClusterRole as Object>::INFO,
        };
        Some(Grant {
            rules: Rules::Referenced(role_ref),
            bypass: ("bind", info, &role_ref.name),
        })
    }
}

impl Guard<pb::Pod> {
    /// Bind and BindBatch: placing pods in each of `namespaces`.
    pub async fn bind<'a>(
        &self,
        caller: &Caller,
        namespaces: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), Status> {
        let namespaces: BTreeSet<String> = namespaces
            .into_iter()
            .map(|ns| namespace_of::<pb::Pod>(ns, ""))
            .collect();
        for ns in namespaces {
            self.check(caller, "create", "binding", &ns, "").await?;
        }
        Ok(())
    }

    /// CreateBatch: each pod as its own create.
    pub async fn create_all(&self, caller: &Caller, pods: &[pb::Pod]) -> Result<(), Status> {
        let mut seen = BTreeSet::new();
        for pod in pods {
            let key = (pod.namespace().to_string(), !pod.node_name().is_empty());
            if seen.insert(key) {
                self.create(caller, pod).await?;
            }
        }
        Ok(())
    }
}
