//! The RBAC objects of a cluster, indexed for the questions asked of them
//! on every call.

use std::collections::HashMap;

use berth_api::pb;
use berth_api::pb::PolicyRule;

use crate::rules::atoms;
use crate::rules::grants;
use crate::rules::Attributes;
use crate::rules::User;
use crate::MASTERS_GROUP;

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, by the binding and role named.
    Allowed(String),
    Denied,
}

/// Every Role, ClusterRole and binding of a cluster at one revision.
#[derive(Debug, Default)]
pub struct Policy {
    roles: HashMap<(String, String), Vec<PolicyRule>>,
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    /// By namespace.
    role_bindings: HashMap<String, Vec<Binding>>,
    cluster_role_bindings: Vec<Binding>,
}

/// A RoleBinding or ClusterRoleBinding, as much of it as decisions need.
#[derive(Debug)]
struct Binding {
    name: String,
    namespace: String,
    subjects: Vec<pb::Subject>,
    role_ref: pb::RoleRef,
}

impl Binding {
    fn new(
        meta: Option<&pb::ObjectMeta>,
        subjects: &[pb::Subject],
        role_ref: Option<&pb::RoleRef>,
    ) -> Self {
        let meta = meta.cloned().unwrap_or_default();
        Self {
            name: meta.name,
            namespace: meta.namespace,
            subjects: subjects.to_vec(),
            role_ref: role_ref.cloned().unwrap_or_default(),
        }
    }

    fn binds(&self, user: &User) -> bool {
        self.subjects.iter().any(|s| match s.kind.as_str() {
            "User" => s.name == user.name,
            "Group" => user.in_group(&s.name),
            "ServiceAccount" => {
                let namespace = if s.namespace.is_empty() {
                    &self.namespace
                } else {
                    &s.namespace
                };
                user.name == format!("system:serviceaccount:{namespace}:{}", s.name)
            }
            _ => false,
        })
    }

    fn describe(&self) -> String {
        let kind = if self.namespace.is_empty() {
            "ClusterRoleBinding".to_string()
        } else {
            format!("RoleBinding in namespace {:?},", self.namespace)
        };
        format!(
            "{kind} {:?} of {} {:?}",
            self.name, self.role_ref.kind, self.role_ref.name
        )
    }
}

impl Policy {
    pub fn new(
        roles: &[pb::Role],
        cluster_roles: &[pb::ClusterRole],
        role_bindings: &[pb::RoleBinding],
        cluster_role_bindings: &[pb::ClusterRoleBinding],
    ) -> Self {
        let key = |m: Option<&pb::ObjectMeta>| {
            m.map(|m| (m.namespace.clone(), m.name.clone()))
                .unwrap_or_default()
        };
        let mut policy = Self {
            roles: roles
                .iter()
                .map(|r| (key(r.metadata.as_ref()), r.rules.clone()))
                .collect(),
            cluster_roles: cluster_roles
                .iter()
                .map(|r| (key(r.metadata.as_ref()).1, r.rules.clone()))
                .collect(),
            role_bindings: HashMap::new(),
            cluster_role_bindings: cluster_role_bindings
                .iter()
                .map(|b| Binding::new(b.metadata.as_ref(), &b.subjects, b.role_ref.as_ref()))
                .collect(),
        };
        for b in role_bindings {
            let binding = Binding::new(b.metadata.as_ref(), &b.subjects, b.role_ref.as_ref());
            policy
                .role_bindings
                .entry(binding.namespace.clone())
                .or_default()
                .push(binding);
        }
        policy
    }

    /// Whether `user` may do what `request` asks.
    pub fn authorize(&self, user: &User, request: &Attributes) -> Decision {
        if user.in_group(MASTERS_GROUP) {
            return Decision::Allowed(format!("group {MASTERS_GROUP} may do anything"));
        }
        let resource = request.resource_path();
        // As in Kubernetes, resourceNames never restrict a create.
        let name =
            Some(request.name.as_str()).filter(|n| !n.is_empty() && request.verb != "create");
        self.bindings_of(user, &request.namespace)
            .find(|b| {
                self.rules_of(b)
                    .iter()
                    .any(|r| grants(r, &request.verb, &request.api_group, &resource, name))
            })
            .map_or(Decision::Denied, |b| Decision::Allowed(b.describe()))
    }

    /// The grants of `rules` that `user` does not hold itself in
    /// `namespace` (every namespace and the cluster scope when empty):
    /// what a Role or binding made by `user` there must not grant, as
    /// Kubernetes' escalation check. Empty when nothing is missing.
    pub fn missing(&self, user: &User, namespace: &str, rules: &[PolicyRule]) -> Vec<PolicyRule> {
        if user.in_group(MASTERS_GROUP) {
            return Vec::new();
        }
        let held: Vec<&PolicyRule> = self
            .bindings_of(user, namespace)
            .flat_map(|b| self.rules_of(b))
            .collect();
        rules
            .iter()
            .flat_map(atoms)
            .filter(|atom| !held.iter().any(|r| atom.granted_by(r)))
            .map(|atom| atom.to_rule())
            .collect()
    }

    /// The rules a binding in `namespace` (empty: a ClusterRoleBinding)
    /// with `role_ref` grants; none while its role does not exist.
    pub fn rules_of_ref(&self, role_ref: &pb::RoleRef, namespace: &str) -> &[PolicyRule] {
        let rules = match role_ref.kind.as_str() {
            "Role" => self
                .roles
                .get(&(namespace.to_string(), role_ref.name.clone())),
            _ => self.cluster_roles.get(&role_ref.name),
        };
        rules.map_or(&[], Vec::as_slice)
    }

    fn rules_of(&self, binding: &Binding) -> &[PolicyRule] {
        self.rules_of_ref(&binding.role_ref, &binding.namespace)
    }

    /// The bindings that give `user` rules in `namespace`: every
    /// ClusterRoleBinding, and the RoleBindings of that namespace.
    fn bindings_of<'a>(
        &'a self,
        user: &'a User,
        namespace: &str,
    ) -> impl Iterator<Item = &'a Binding> + 'a {
        let local = if namespace.is_empty() {
            None
        } else {
            self.role_bindings.get(namespace)
        };
        self.cluster_role_bindings
            .iter()
            .chain(local.into_iter().flatten())
            .filter(move |b| b.binds(user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::rule;

    fn meta(namespace: &str, name: &str) -> Option<pb::ObjectMeta> {
        Some(pb::ObjectMeta {
            name: name.into(),
            namespace: namespace.into(),
            ..Default::default()
        })
    }

    fn subject(kind: &str, name: &str, namespace: &str) -> pb::Subject {
        pb::Subject {
            kind: kind.into(),
            name: name.into(),
            namespace: namespace.into(),
            ..Default::default()
        }
    }

    fn role_ref(kind: &str, name: &str) -> Option<pb::RoleRef> {
        Some(pb::RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: kind.into(),
            name: name.into(),
        })
    }

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn ask(verb: &str, resource: &str, namespace: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            resource: resource.into(),
            namespace: namespace.into(),
            ..Default::default()
        }
    }

    fn policy() -> Policy {
        let reader = pb::ClusterRole {
            metadata: meta("", "pod-reader"),
            rules: vec![rule(&["get", "list"], "", &["pods"])],
            ..Default::default()
        };
        let writer = pb::Role {
            metadata: meta("shop", "cm-writer"),
            rules: vec![rule(&["create", "update"], "", &["configmaps"])],
            ..Default::default()
        };
        let everywhere = pb::ClusterRoleBinding {
            metadata: meta("", "auditors-read-pods"),
            subjects: vec![subject("Group", "auditors", "")],
            role_ref: role_ref("ClusterRole", "pod-reader"),
            ..Default::default()
        };
        let in_shop = pb::RoleBinding {
            metadata: meta("shop", "alice"),
            subjects: vec![
                subject("User", "alice", ""),
                subject("ServiceAccount", "builder", ""),
            ],
            role_ref: role_ref("Role", "cm-writer"),
            ..Default::default()
        };
        let reader_in_shop = pb::RoleBinding {
            metadata: meta("shop", "bob-reads"),
            subjects: vec![subject("User", "bob", "")],
            role_ref: role_ref("ClusterRole", "pod-reader"),
            ..Default::default()
        };
        Policy::new(
            &[writer],
            &[reader],
            &[in_shop, reader_in_shop],
            &[everywhere],
        )
    }

    #[test]
    fn bindings_grant_their_roles_where_they_apply() {
        let p = policy();
        let alice = user("alice", &[]);
        let bob = user("bob", &[]);
        let auditor = user("carol", &["auditors"]);
        let allowed = |u: &User, a: &Attributes| matches!(p.authorize(u, a), Decision::Allowed(_));
        assert!(allowed(&alice, &ask("create", "configmaps", "shop")));
        assert!(!allowed(&alice, &ask("create", "configmaps", "default")));
        assert!(!allowed(&alice, &ask("delete", "configmaps", "shop")));
        // A ClusterRole through a RoleBinding: in that namespace only.
        assert!(allowed(&bob, &ask("list", "pods", "shop")));
        assert!(!allowed(&bob, &ask("list", "pods", "default")));
        assert!(!allowed(&bob, &ask("list", "pods", "")));
        // Through a ClusterRoleBinding: everywhere, across namespaces too.
        assert!(allowed(&auditor, &ask("list", "pods", "default")));
        assert!(allowed(&auditor, &ask("list", "pods", "")));
        // A ServiceAccount subject without a namespace is the binding's.
        let builder = user("system:serviceaccount:shop:builder", &[]);
        assert!(allowed(&builder, &ask("update", "configmaps", "shop")));
        let elsewhere = user("system:serviceaccount:other:builder", &[]);
        assert!(!allowed(&elsewhere, &ask("update", "configmaps", "shop")));
        let masters = user("root", &["system:masters"]);
        assert!(allowed(&masters, &ask("delete", "nodes", "")));
        assert_eq!(
            p.authorize(&bob, &ask("get", "pods", "shop")),
            Decision::Allowed(
                "RoleBinding in namespace \"shop\", \"bob-reads\" of ClusterRole \"pod-reader\""
                    .into()
            )
        );
    }

    #[test]
    fn missing_names_each_grant_the_author_lacks() {
        let p = policy();
        let alice = user("alice", &[]);
        let asked = [rule(&["create", "delete"], "", &["configmaps"])];
        assert_eq!(
            p.missing(&alice, "shop", &asked),
            vec![rule(&["delete"], "", &["configmaps"])]
        );
        assert_eq!(p.missing(&alice, "default", &asked).len(), 2);
        let wildcard = [rule(&["*"], "", &["configmaps"])];
        assert_eq!(p.missing(&alice, "shop", &wildcard), wildcard.to_vec());
        let masters = user("root", &["system:masters"]);
        assert!(p.missing(&masters, "", &wildcard).is_empty());
    }
}
