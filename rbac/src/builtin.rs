//! The ClusterRoles and ClusterRoleBindings every cluster starts with, as
//! Kubernetes' bootstrap policy has them: `cluster-admin` (everything),
//! `admin` (everything in a namespace, roles and bindings included, the
//! namespace itself and its quotas excepted), `edit` (read and write the
//! workloads and their configuration, no roles or bindings), `view` (read
//! them, Secrets excepted), `system:kube-scheduler` for a scheduler run
//! under its own name; `system:masters` bound to `cluster-admin`.
//!
//! The resource lists follow Kubernetes', including kinds Berth does not
//! serve yet, so that a role means the same when they arrive.

use berth_api::pb;
use berth_api::validation::RBAC_GROUP;

/// The label Kubernetes puts on its bootstrap policy.
pub const BOOTSTRAP_LABEL: (&str, &str) = ("kubernetes.io/bootstrapping", "rbac-defaults");

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

/// `verbs` on `resources` of `group`, whatever their names.
pub(crate) fn rule(verbs: &[&str], group: &str, resources: &[&str]) -> pb::PolicyRule {
    let strings = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
    pb::PolicyRule {
        verbs: strings(verbs),
        api_groups: vec![group.to_string()],
        resources: strings(resources),
        resource_names: Vec::new(),
    }
}

fn meta(name: &str) -> Option<pb::ObjectMeta> {
    Some(pb::ObjectMeta {
        name: name.to_string(),
        labels: [BOOTSTRAP_LABEL]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
}

fn cluster_role(name: &str, rules: Vec<pb::PolicyRule>) -> pb::ClusterRole {
    pb::ClusterRole {
        api_version: format!("{RBAC_GROUP}/v1"),
        kind: "ClusterRole".into(),
        metadata: meta(name),
        rules,
    }
}

/// What `view` reads, per API group: workloads, their configuration and
/// their status, never Secrets or RBAC.
fn viewable() -> Vec<pb::PolicyRule> {
    vec![
        rule(
            READ,
            "",
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "pods/log",
                "pods/status",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "replicationcontrollers/status",
                "serviceaccounts",
                "services",
                "services/status",
                "events",
                "limitranges",
                "resourcequotas",
                "resourcequotas/status",
                "namespaces",
                "namespaces/status",
            ],
        ),
        rule(
            READ,
            "apps",
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
        ),
        rule(
            READ,
            "batch",
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
        ),
        rule(
            READ,
            "policy",
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
        ),
    ]
}

/// What `edit` adds to `view`: writes of workloads and their configuration,
/// and reading and writing Secrets.
fn editable() -> Vec<pb::PolicyRule> {
    vec![
        rule(
            WRITE,
            "",
            &[
                "pods",
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "configmaps",
                "endpoints",
                "events",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
        ),
        rule(READ, "", &["secrets"]),
        rule(&["create"], "", &["pods/eviction"]),
        rule(&["impersonate"], "", &["serviceaccounts"]),
        rule(
            WRITE,
            "apps",
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
        ),
        rule(WRITE, "batch", &["cronjobs", "jobs"]),
        rule(WRITE, "policy", &["poddisruptionbudgets"]),
    ]
}

/// What `admin` adds to `edit`: the namespace's Roles and RoleBindings.
fn administrable() -> Vec<pb::PolicyRule> {
    let mut verbs = READ.to_vec();
    verbs.extend(WRITE);
    vec![rule(&verbs, RBAC_GROUP, &["roles", "rolebindings"])]
}

pub fn cluster_roles() -> Vec<pb::ClusterRole> {
    let view = viewable();
    let edit: Vec<_> = view.iter().cloned().chain(editable()).collect();
    let admin: Vec<_> = edit.iter().cloned().chain(administrable()).collect();
    vec![
        cluster_role("cluster-admin", vec![rule(&["*"], "*", &["*"])]),
        cluster_role("admin", admin),
        cluster_role("edit", edit),
        cluster_role("view", view),
        cluster_role(
            "system:kube-scheduler",
            vec![
                rule(READ, "", &["nodes", "pods", "namespaces", "services"]),
                rule(&["create"], "", &["pods/binding", "bindings"]),
                rule(&["patch", "update"], "", &["pods/status"]),
                rule(
                    &["create", "get", "list", "watch", "update"],
                    "coordination.k8s.io",
                    &["leases"],
                ),
            ],
        ),
    ]
}

fn cluster_role_binding(name: &str, role: &str, subject_kind: &str) -> pb::ClusterRoleBinding {
    pb::ClusterRoleBinding {
        api_version: format!("{RBAC_GROUP}/v1"),
        kind: "ClusterRoleBinding".into(),
        metadata: meta(name),
        subjects: vec![pb::Subject {
            kind: subject_kind.into(),
            api_group: RBAC_GROUP.into(),
            name: name.into(),
            namespace: String::new(),
        }],
        role_ref: Some(pb::RoleRef {
            api_group: RBAC_GROUP.into(),
            kind: "ClusterRole".into(),
            name: role.into(),
        }),
    }
}

pub fn cluster_role_bindings() -> Vec<pb::ClusterRoleBinding> {
    vec![
        cluster_role_binding(crate::MASTERS_GROUP, "cluster-admin", "Group"),
        cluster_role_binding("system:kube-scheduler", "system:kube-scheduler", "User"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Attributes;
    use crate::Decision;
    use crate::Policy;
    use crate::User;

    fn bound_to(role: &str) -> (Policy, User) {
        let binding = pb::RoleBinding {
            metadata: Some(pb::ObjectMeta {
                name: "b".into(),
                namespace: "ns".into(),
                ..Default::default()
            }),
            subjects: vec![pb::Subject {
                kind: "User".into(),
                name: "u".into(),
                ..Default::default()
            }],
            role_ref: Some(pb::RoleRef {
                api_group: RBAC_GROUP.into(),
                kind: "ClusterRole".into(),
                name: role.into(),
            }),
            ..Default::default()
        };
        let user = User {
            name: "u".into(),
            groups: vec![],
        };
        (Policy::new(&[], &cluster_roles(), &[binding], &[]), user)
    }

    #[test]
    fn each_builtin_role_holds_the_next_and_only_view_lacks_secrets() {
        let roles = cluster_roles();
        let rules = |name: &str| {
            roles
                .iter()
                .find(|r| r.metadata.as_ref().unwrap().name == name)
                .unwrap()
                .rules
                .clone()
        };
        for (upper, lower) in [
            ("cluster-admin", "admin"),
            ("admin", "edit"),
            ("edit", "view"),
        ] {
            let (policy, user) = bound_to(upper);
            assert_eq!(
                policy.missing(&user, "ns", &rules(lower)),
                vec![],
                "{upper} holds {lower}"
            );
            let (policy, user) = bound_to(lower);
            assert_ne!(
                policy.missing(&user, "ns", &rules(upper)),
                vec![],
                "{lower} lacks part of {upper}"
            );
        }
        for role in ["cluster-admin", "admin", "edit", "view"] {
            let (policy, user) = bound_to(role);
            let secrets = Attributes {
                verb: "get".into(),
                resource: "secrets".into(),
                namespace: "ns".into(),
                ..Default::default()
            };
            let reads = matches!(policy.authorize(&user, &secrets), Decision::Allowed(_));
            assert_eq!(reads, role != "view", "{role} reading Secrets");
        }
    }
}
