//! Kubernetes' Node authorizer for Berth's kinds: what a node's agent
//! (`system:node:NAME`) may do, which is only what it needs for its own
//! node. RBAC does not decide for nodes; this does.
//!
//! - Nodes: read all (routes to other nodes' pod CIDRs); write only its
//!   own (NodeRestriction's label rule is the API server's, which sees the
//!   stored object).
//! - Pods: list and watch only with `spec.nodeName=NAME`; get, delete and
//!   update the status of pods bound to it.
//! - Leases: its own node lease (`berth-system/node-NAME`).
//! - Services and Endpoints: read (service rules and DNS).
//! - SubjectAccessReviews: create (its log server asks whether a caller
//!   may `get pods/log`, as the kubelet asks the API server).
//! - ConfigMaps and Secrets: get those that pods bound to it name (in
//!   `env` and `envFrom`), and no others; never list or watch them.
//! - Nothing else.

use berth_api::names::node_lease_name;
use berth_api::names::SYSTEM_NAMESPACE;

use crate::rules::Attributes;
use crate::Decision;

/// The node a node identity's user name names.
pub fn node_of(user: &str) -> Option<&str> {
    user.strip_prefix(NODE_USER_PREFIX)
        .filter(|n| !n.is_empty())
}

pub const NODE_USER_PREFIX: &str = "system:node:";

/// What the API server knows beyond the request's attributes.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeFacts<'a> {
    /// The node the pod a request names is bound to (None: no such pod).
    pub pod_node: Option<&'a str>,
    /// The `spec.nodeName` a list or watch of pods is limited to.
    pub selected_node: Option<&'a str>,
    /// A pod bound to the node names the ConfigMap or Secret requested.
    pub named_by_own_pod: bool,
}

const READ: &[&str] = &["get", "list", "watch"];

/// Whether node `node` may do `request`.
pub fn authorize_node(node: &str, request: &Attributes, facts: NodeFacts<'_>) -> Decision {
    let verb = request.verb.as_str();
    let own = |name: &str| name == node;
    let allowed = match (
        request.api_group.as_str(),
        request.resource.as_str(),
        request.subresource.as_str(),
    ) {
        ("", "nodes", "") if READ.contains(&verb) => true,
        ("", "nodes", "" | "status") => own(&request.name),
        ("", "pods", "") if matches!(verb, "list" | "watch") => {
            facts.selected_node.is_some_and(own)
        }
        ("", "pods", "") if matches!(verb, "get" | "delete") => facts.pod_node.is_some_and(own),
        ("", "pods", "status") if matches!(verb, "get" | "update" | "patch") => {
            facts.pod_node.is_some_and(own)
        }
        ("", "services" | "endpoints", "") => READ.contains(&verb),
        ("", "configmaps" | "secrets", "") => verb == "get" && facts.named_by_own_pod,
        // The log server asks whether its callers may read logs.
        ("authorization.k8s.io", "subjectaccessreviews", "") => verb == "create",
        ("coordination.k8s.io", "leases", "") => {
            request.namespace == SYSTEM_NAMESPACE && request.name == node_lease_name(node)
        }
        _ => false,
    };
    if allowed {
        Decision::Allowed("the node authorizer".into())
    } else {
        Decision::Denied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            api_group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn allowed(request: &Attributes, facts: NodeFacts<'_>) -> bool {
        matches!(authorize_node("n1", request, facts), Decision::Allowed(_))
    }

    #[test]
    fn a_node_acts_on_its_own_objects_only() {
        let none = NodeFacts::default();
        assert!(allowed(&ask("list", "", "nodes", "", "", ""), none));
        assert!(allowed(
            &ask("update", "", "nodes", "status", "", "n1"),
            none
        ));
        assert!(allowed(&ask("create", "", "nodes", "", "", "n1"), none));
        assert!(!allowed(
            &ask("update", "", "nodes", "status", "", "n2"),
            none
        ));
        assert!(!allowed(&ask("delete", "", "nodes", "", "", "n2"), none));

        let mine = NodeFacts {
            pod_node: Some("n1"),
            selected_node: Some("n1"),
            named_by_own_pod: true,
        };
        let theirs = NodeFacts {
            pod_node: Some("n2"),
            selected_node: Some("n2"),
            named_by_own_pod: false,
        };
        assert!(allowed(&ask("watch", "", "pods", "", "", ""), mine));
        assert!(!allowed(&ask("watch", "", "pods", "", "", ""), theirs));
        assert!(!allowed(&ask("list", "", "pods", "", "", ""), none));
        assert!(allowed(
            &ask("update", "", "pods", "status", "default", "p"),
            mine
        ));
        assert!(!allowed(
            &ask("update", "", "pods", "status", "default", "p"),
            theirs
        ));
        assert!(!allowed(
            &ask("update", "", "pods", "", "default", "p"),
            mine
        ));
        assert!(!allowed(
            &ask("create", "", "pods", "", "default", "p"),
            mine
        ));
        assert!(!allowed(
            &ask("create", "", "pods", "binding", "default", "p"),
            mine
        ));

        let lease =
            |ns: &str, name: &str| ask("update", "coordination.k8s.io", "leases", "", ns, name);
        assert!(allowed(&lease("berth-system", "node-n1"), none));
        assert!(!allowed(&lease("berth-system", "node-n2"), none));
        assert!(!allowed(&lease("berth-system", "berth-scheduler"), none));
        assert!(!allowed(&lease("default", "node-n1"), none));

        assert!(allowed(&ask("watch", "", "services", "", "", ""), none));
        assert!(!allowed(
            &ask("create", "", "services", "", "default", "s"),
            none
        ));
        assert!(!allowed(
            &ask("get", "", "configmaps", "", "default", "c"),
            none
        ));
        assert!(!allowed(
            &ask("get", "", "secrets", "", "default", "s"),
            none
        ));
        assert!(allowed(
            &ask("get", "", "secrets", "", "default", "s"),
            mine
        ));
        assert!(allowed(
            &ask("get", "", "configmaps", "", "default", "c"),
            mine
        ));
        assert!(!allowed(
            &ask("list", "", "secrets", "", "default", ""),
            mine
        ));
        assert!(!allowed(
            &ask("update", "", "secrets", "", "default", "s"),
            mine
        ));
        assert!(!allowed(&ask("list", "", "namespaces", "", "", ""), none));
    }

    #[test]
    fn node_names_come_from_node_users_only() {
        assert_eq!(node_of("system:node:n1"), Some("n1"));
        assert_eq!(node_of("system:node:"), None);
        assert_eq!(node_of("alice"), None);
    }
}
