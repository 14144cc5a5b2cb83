//! The kinds of the API: their names (as kubectl spells them), where they
//! are stored, and what admission does to each.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::pb;
use crate::validation as v;
use crate::validation::Errors;
use crate::validation::Invalid;
use crate::validation::NameRule;

/// The kinds Berth serves: code that does something per kind matches on
/// this, exhaustively, so that a new kind cannot be forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    Deployment,
    Service,
    Endpoints,
    ConfigMap,
    Secret,
    Lease,
    Role,
    ClusterRole,
    RoleBinding,
    ClusterRoleBinding,
}

/// Names of a kind, for the CLI and for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindInfo {
    pub id: Kind,
    pub kind: &'static str,
    pub api_version: &'static str,
    pub plural: &'static str,
    pub short: &'static [&'static str],
    pub namespaced: bool,
}

pub const KINDS: &[KindInfo] = &[
    <pb::Namespace as Object>::INFO,
    <pb::Node as Object>::INFO,
    <pb::Pod as Object>::INFO,
    <pb::Deployment as Object>::INFO,
    <pb::Service as Object>::INFO,
    <pb::Endpoints as Object>::INFO,
    <pb::ConfigMap as Object>::INFO,
    <pb::Secret as Object>::INFO,
    <pb::Lease as Object>::INFO,
    <pb::Role as Object>::INFO,
    <pb::ClusterRole as Object>::INFO,
    <pb::RoleBinding as Object>::INFO,
    <pb::ClusterRoleBinding as Object>::INFO,
];

impl KindInfo {
    /// Looks a kind up by any kubectl spelling: `pod`, `pods`, `po`, `Pod`.
    pub fn lookup(name: &str) -> Option<&'static KindInfo> {
        let n = name.to_ascii_lowercase();
        let n = n.split('.').next().unwrap_or("");
        KINDS
            .iter()
            .find(|k| k.kind.eq_ignore_ascii_case(n) || k.plural == n || k.short.contains(&n))
    }

    /// The kind named exactly `kind` (`Deployment`), as in an
    /// ownerReference or a manifest's `kind`.
    pub fn of_kind(kind: &str) -> Option<&'static KindInfo> {
        KINDS.iter().find(|k| k.kind == kind)
    }

    /// The API group: the part of apiVersion before the `/`, "" for the
    /// core kinds.
    pub fn api_group(&self) -> &'static str {
        self.api_version
            .rsplit_once('/')
            .map_or("", |(group, _)| group)
    }

    pub fn names() -> String {
        KINDS
            .iter()
            .map(|k| k.plural)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The root of every key the API stores.
const REGISTRY: &str = "/registry";

/// Whether `key` is the API's: the raw KV service does not write those,
/// as only the API validates what goes there.
pub fn is_api_key(key: &[u8]) -> bool {
    key.strip_prefix(REGISTRY.as_bytes())
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"))
}

/// The store key of one object.
pub fn object_key(info: &KindInfo, namespace: &str, name: &str) -> String {
    if info.namespaced {
        format!("{REGISTRY}/{}/{namespace}/{name}", info.plural)
    } else {
        format!("{REGISTRY}/{}/{name}", info.plural)
    }
}

/// The key prefix of the address claims of `pool` (`podcidrs`,
/// `clusterips`): keys beside the objects, each holding its owner's key, so
/// that the state machine decides who holds an address.
pub fn ip_claim_prefix(pool: &str) -> String {
    format!("{REGISTRY}/ipallocations/{pool}/")
}

/// The store key prefix of a kind's objects in a namespace (all namespaces
/// when `namespace` is empty).
pub fn list_prefix(info: &KindInfo, namespace: &str) -> String {
    if info.namespaced && !namespace.is_empty() {
        format!("{REGISTRY}/{}/{namespace}/", info.plural)
    } else {
        format!("{REGISTRY}/{}/", info.plural)
    }
}

/// What the API server needs to know about a kind.
pub trait Object:
    prost::Message + Default + Clone + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static
{
    const INFO: KindInfo;
    /// Namespaces and services are named by DNS labels, RBAC's kinds by
    /// path segments, the rest by subdomains.
    const NAME_RULE: NameRule = NameRule::Subdomain;
    /// Whether the API server encrypts stored values of this kind (its
    /// keyring seals them before they are proposed).
    const ENCRYPTED_AT_REST: bool = false;

    fn meta(&self) -> Option<&pb::ObjectMeta>;
    fn meta_mut(&mut self) -> &mut pb::ObjectMeta;
    fn set_type_meta(&mut self);
    /// The part whose change raises `metadata.generation`, encoded.
    fn spec_bytes(&self) -> Vec<u8>;
    /// Replaces this object's status with `other`'s.
    fn take_status_from(&mut self, other: &Self);
    fn clear_status(&mut self);
    /// Kubernetes' defaults for fields left empty.
    fn apply_defaults(&mut self) {}
    fn check(&self, _errs: &mut Errors) {}
    /// Keeps what the system assigned in the spec (a pod's node, a
    /// service's ClusterIP, a node's pod CIDR) when an update leaves it
    /// empty, as `kubectl apply` of the original manifest does.
    fn keep_assigned(&mut self, _stored: &Self) {}
    /// Refuses an update that may not follow the stored object (a field
    /// that cannot change once set); says why.
    fn check_update(&self, _stored: &Self) -> Result<(), String> {
        Ok(())
    }
    /// `spec.nodeName` for field selectors; empty for kinds without one.
    fn node_name(&self) -> &str {
        ""
    }

    fn name(&self) -> &str {
        self.meta().map_or("", |m| m.name.as_str())
    }

    fn namespace(&self) -> &str {
        self.meta().map_or("", |m| m.namespace.as_str())
    }

    fn validate(&self) -> Result<(), Invalid> {
        let mut errs = Errors::default();
        v::check_metadata(
            &mut errs,
            self.meta(),
            Self::INFO.namespaced,
            Self::NAME_RULE,
        );
        self.check(&mut errs);
        errs.finish()
    }
}

macro_rules! common {
    () => {
        fn meta(&self) -> Option<&pb::ObjectMeta> {
            self.metadata.as_ref()
        }
        fn meta_mut(&mut self) -> &mut pb::ObjectMeta {
            self.metadata.get_or_insert_default()
        }
        fn set_type_meta(&mut self) {
            self.api_version = Self::INFO.api_version.to_string();
            self.kind = Self::INFO.kind.to_string();
        }
    };
}

macro_rules! with_status {
    () => {
        fn spec_bytes(&self) -> Vec<u8> {
            self.spec
                .as_ref()
                .map(prost::Message::encode_to_vec)
                .unwrap_or_default()
        }
        fn take_status_from(&mut self, other: &Self) {
            self.status = other.status.clone();
        }
        fn clear_status(&mut self) {
            self.status = None;
        }
    };
}

impl Object for pb::Namespace {
    const INFO: KindInfo = KindInfo {
        id: Kind::Namespace,
        kind: "Namespace",
        api_version: "v1",
        plural: "namespaces",
        short: &["ns", "namespace"],
        namespaced: false,
    };
    const NAME_RULE: NameRule = NameRule::Label;
    common!();
    with_status!();
    fn apply_defaults(&mut self) {
        let status = self.status.get_or_insert_default();
        if status.phase.is_empty() {
            status.phase = "Active".into();
        }
    }
}

impl Object for pb::Node {
    const INFO: KindInfo = KindInfo {
        id: Kind::Node,
        kind: "Node",
        api_version: "v1",
        plural: "nodes",
        short: &["no", "node"],
        namespaced: false,
    };
    common!();
    with_status!();
    fn check(&self, errs: &mut Errors) {
        v::check_node(errs, self);
    }
    fn keep_assigned(&mut self, stored: &Self) {
        let (Some(spec), Some(old)) = (self.spec.as_mut(), stored.spec.as_ref()) else {
            return;
        };
        if spec.pod_cidr.is_empty() {
            spec.pod_cidr = old.pod_cidr.clone();
            spec.pod_cidrs = old.pod_cidrs.clone();
        }
    }
    fn check_update(&self, stored: &Self) -> Result<(), String> {
        let cidr = |n: &Self| {
            n.spec
                .as_ref()
                .map(|s| s.pod_cidr.clone())
                .unwrap_or_default()
        };
        assigned_field_kept("spec.podCIDR", &cidr(stored), &cidr(self))
    }
}

impl Object for pb::Pod {
    const INFO: KindInfo = KindInfo {
        id: Kind::Pod,
        kind: "Pod",
        api_version: "v1",
        plural: "pods",
        short: &["po", "pod"],
        namespaced: true,
    };
    common!();
    with_status!();
    fn apply_defaults(&mut self) {
        v::default_pod_spec(self.spec.get_or_insert_default());
        let status = self.status.get_or_insert_default();
        if status.phase.is_empty() {
            status.phase = "Pending".into();
        }
    }
    fn check(&self, errs: &mut Errors) {
        v::check_pod_spec(errs, "spec", self.spec.as_ref());
    }
    fn node_name(&self) -> &str {
        self.spec.as_ref().map_or("", |s| s.node_name.as_str())
    }
    fn keep_assigned(&mut self, stored: &Self) {
        let spec = self.spec.get_or_insert_default();
        if spec.node_name.is_empty() {
            spec.node_name = stored.node_name().to_string();
        }
    }
    fn check_update(&self, stored: &Self) -> Result<(), String> {
        if crate::resources::pod_requests(self) != crate::resources::pod_requests(stored) {
            return Err("a pod's resource requests cannot change once it exists (its node counted them): delete the pod and create it again".into());
        }
        Ok(())
    }
}

impl Object for pb::Deployment {
    const INFO: KindInfo = KindInfo {
        id: Kind::Deployment,
        kind: "Deployment",
        api_version: "apps/v1",
        plural: "deployments",
        short: &["deploy", "deployment"],
        namespaced: true,
    };
    common!();
    with_status!();
    fn apply_defaults(&mut self) {
        v::default_deployment_spec(self.spec.get_or_insert_default());
    }
    fn check(&self, errs: &mut Errors) {
        v::check_deployment_spec(errs, self.spec.as_ref());
    }
}

impl Object for pb::Service {
    const INFO: KindInfo = KindInfo {
        id: Kind::Service,
        kind: "Service",
        api_version: "v1",
        plural: "services",
        short: &["svc", "service"],
        namespaced: true,
    };
    const NAME_RULE: NameRule = NameRule::Label;
    common!();
    with_status!();
    fn apply_defaults(&mut self) {
        v::default_service_spec(self.spec.get_or_insert_default());
    }
    fn check(&self, errs: &mut Errors) {
        v::check_service_spec(errs, self.spec.as_ref());
    }
    fn keep_assigned(&mut self, stored: &Self) {
        let (Some(spec), Some(old)) = (self.spec.as_mut(), stored.spec.as_ref()) else {
            return;
        };
        if spec.cluster_ip.is_empty() {
            spec.cluster_ip = old.cluster_ip.clone();
            spec.cluster_ips = old.cluster_ips.clone();
        }
    }
    fn check_update(&self, stored: &Self) -> Result<(), String> {
        let ip = |s: &Self| {
            s.spec
                .as_ref()
                .map(|s| s.cluster_ip.clone())
                .unwrap_or_default()
        };
        assigned_field_kept("spec.clusterIP", &ip(stored), &ip(self))
    }
}

/// An address, once assigned, is the object's for life: traffic and rules
/// elsewhere already point at it.
fn assigned_field_kept(field: &str, stored: &str, next: &str) -> Result<(), String> {
    if stored.is_empty() || stored == next {
        return Ok(());
    }
    Err(format!(
        "{field} is {stored} and cannot change: delete the object and create it again for another"
    ))
}

macro_rules! without_status {
    () => {
        fn take_status_from(&mut self, _other: &Self) {}
        fn clear_status(&mut self) {}
    };
}

/// Endpoints' subsets travel as one message for spec comparison.
#[derive(Clone, PartialEq, prost::Message)]
struct Subsets {
    #[prost(message, repeated, tag = "1")]
    subsets: Vec<pb::EndpointSubset>,
}

impl Object for pb::Endpoints {
    const INFO: KindInfo = KindInfo {
        id: Kind::Endpoints,
        kind: "Endpoints",
        api_version: "v1",
        plural: "endpoints",
        short: &["ep"],
        namespaced: true,
    };
    common!();
    without_status!();
    fn spec_bytes(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(&Subsets {
            subsets: self.subsets.clone(),
        })
    }
    fn check(&self, errs: &mut Errors) {
        v::check_endpoints(errs, self);
    }
}

/// A ConfigMap's content, encoded for spec comparison.
#[derive(Clone, PartialEq, prost::Message)]
struct ConfigMapData {
    #[prost(btree_map = "string, string", tag = "1")]
    data: std::collections::BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "2")]
    binary_data: std::collections::BTreeMap<String, String>,
}

impl Object for pb::ConfigMap {
    const INFO: KindInfo = KindInfo {
        id: Kind::ConfigMap,
        kind: "ConfigMap",
        api_version: "v1",
        plural: "configmaps",
        short: &["cm", "configmap"],
        namespaced: true,
    };
    common!();
    without_status!();
    fn spec_bytes(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(&ConfigMapData {
            data: self.data.clone(),
            binary_data: self.binary_data.clone(),
        })
    }
    fn check(&self, errs: &mut Errors) {
        v::check_config_map(errs, self);
    }
    fn check_update(&self, stored: &Self) -> Result<(), String> {
        immutable_kept(
            stored.immutable,
            self.immutable,
            self.spec_bytes() == stored.spec_bytes(),
        )
    }
}

/// `immutable: true` freezes the data and itself, as in Kubernetes: a
/// change means a new object (which is what lets consumers stop watching).
fn immutable_kept(stored: Option<bool>, next: Option<bool>, same_data: bool) -> Result<(), String> {
    if stored != Some(true) {
        return Ok(());
    }
    if next != Some(true) {
        return Err(
            "immutable cannot be unset once true: delete the object and create it again".into(),
        );
    }
    if !same_data {
        return Err(
            "data is immutable while `immutable` is set: delete the object and create it again"
                .into(),
        );
    }
    Ok(())
}

/// A Secret's content, encoded for spec comparison.
#[derive(Clone, PartialEq, prost::Message)]
struct SecretData {
    #[prost(btree_map = "string, string", tag = "1")]
    data: std::collections::BTreeMap<String, String>,
}

impl Object for pb::Secret {
    const INFO: KindInfo = KindInfo {
        id: Kind::Secret,
        kind: "Secret",
        api_version: "v1",
        plural: "secrets",
        short: &["secret"],
        namespaced: true,
    };
    const ENCRYPTED_AT_REST: bool = true;
    common!();
    without_status!();
    fn spec_bytes(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(&SecretData {
            data: self.data.clone(),
        })
    }
    fn apply_defaults(&mut self) {
        v::default_secret(self);
    }
    fn check(&self, errs: &mut Errors) {
        v::check_secret(errs, self);
    }
    fn check_update(&self, stored: &Self) -> Result<(), String> {
        if self.r#type != stored.r#type {
            return Err(format!(
                "type is {:?} and cannot change: delete the Secret and create it again",
                stored.r#type
            ));
        }
        immutable_kept(
            stored.immutable,
            self.immutable,
            self.spec_bytes() == stored.spec_bytes(),
        )
    }
}

impl Object for pb::Lease {
    const INFO: KindInfo = KindInfo {
        id: Kind::Lease,
        kind: "Lease",
        api_version: "coordination.k8s.io/v1",
        plural: "leases",
        short: &["lease"],
        namespaced: true,
    };
    common!();
    without_status!();
    fn spec_bytes(&self) -> Vec<u8> {
        self.spec
            .as_ref()
            .map(prost::Message::encode_to_vec)
            .unwrap_or_default()
    }
    fn check(&self, errs: &mut Errors) {
        v::check_lease(errs, self);
    }
    fn check_update(&self, stored: &Self) -> Result<(), String> {
        let epoch = crate::resources::lease_epoch;
        let holder = |l: &Self| {
            l.spec
                .as_ref()
                .map(|s| s.holder_identity.clone())
                .unwrap_or_default()
        };
        if epoch(self) < epoch(stored) {
            return Err(format!(
                "spec.leaseTransitions cannot go down (it is {}): it fences former holders",
                epoch(stored)
            ));
        }
        if holder(self) != holder(stored)
            && !holder(self).is_empty()
            && epoch(self) == epoch(stored)
        {
            return Err(format!("a new holder must raise spec.leaseTransitions (it is {}): it fences the former holder", epoch(stored)));
        }
        Ok(())
    }
}

/// RBAC's rules and bindings, encoded for spec comparison.
#[derive(Clone, PartialEq, prost::Message)]
struct Rules {
    #[prost(message, repeated, tag = "1")]
    rules: Vec<pb::PolicyRule>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Grant {
    #[prost(message, repeated, tag = "1")]
    subjects: Vec<pb::Subject>,
    #[prost(message, optional, tag = "2")]
    role_ref: Option<pb::RoleRef>,
}

const RBAC_VERSION: &str = "rbac.authorization.k8s.io/v1";

macro_rules! rbac_role {
    ($kind:ident, $plural:literal, $short:expr, $namespaced:literal) => {
        impl Object for pb::$kind {
            const INFO: KindInfo = KindInfo {
                id: Kind::$kind,
                kind: stringify!($kind),
                api_version: RBAC_VERSION,
                plural: $plural,
                short: $short,
                namespaced: $namespaced,
            };
            const NAME_RULE: NameRule = NameRule::PathSegment;
            common!();
            without_status!();
            fn spec_bytes(&self) -> Vec<u8> {
                prost::Message::encode_to_vec(&Rules {
                    rules: self.rules.clone(),
                })
            }
            fn check(&self, errs: &mut Errors) {
                v::check_policy_rules(errs, &self.rules);
            }
        }
    };
}

macro_rules! rbac_binding {
    ($kind:ident, $plural:literal, $short:expr, $namespaced:literal) => {
        impl Object for pb::$kind {
            const INFO: KindInfo = KindInfo {
                id: Kind::$kind,
                kind: stringify!($kind),
                api_version: RBAC_VERSION,
                plural: $plural,
                short: $short,
                namespaced: $namespaced,
            };
            const NAME_RULE: NameRule = NameRule::PathSegment;
            common!();
            without_status!();
            fn spec_bytes(&self) -> Vec<u8> {
                prost::Message::encode_to_vec(&Grant {
                    subjects: self.subjects.clone(),
                    role_ref: self.role_ref.clone(),
                })
            }
            fn apply_defaults(&mut self) {
                v::default_subjects(&mut self.subjects);
            }
            fn check(&self, errs: &mut Errors) {
                v::check_binding(errs, $namespaced, &self.subjects, self.role_ref.as_ref());
            }
            fn check_update(&self, stored: &Self) -> Result<(), String> {
                if self.role_ref != stored.role_ref {
                    return Err(
                        "roleRef cannot change: delete the binding and create it again".into(),
                    );
                }
                Ok(())
            }
        }
    };
}

rbac_role!(Role, "roles", &["role"], true);
rbac_role!(ClusterRole, "clusterroles", &["clusterrole"], false);
rbac_binding!(RoleBinding, "rolebindings", &["rolebinding"], true);
rbac_binding!(
    ClusterRoleBinding,
    "clusterrolebindings",
    &["clusterrolebinding"],
    false
);

/// An object of any kind, as read from a manifest.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyObject {
    Namespace(pb::Namespace),
    Node(pb::Node),
    Pod(pb::Pod),
    Deployment(pb::Deployment),
    Service(pb::Service),
    Endpoints(pb::Endpoints),
    ConfigMap(pb::ConfigMap),
    Secret(pb::Secret),
    Lease(pb::Lease),
    Role(pb::Role),
    ClusterRole(pb::ClusterRole),
    RoleBinding(pb::RoleBinding),
    ClusterRoleBinding(pb::ClusterRoleBinding),
}

/// Runs `$body` with `$o` bound to the typed object inside an `AnyObject`.
#[macro_export]
macro_rules! with_object {
    ($any:expr, $o:ident => $body:expr) => {
        match $any {
            $crate::AnyObject::Namespace($o) => $body,
            $crate::AnyObject::Node($o) => $body,
            $crate::AnyObject::Pod($o) => $body,
            $crate::AnyObject::Deployment($o) => $body,
            $crate::AnyObject::Service($o) => $body,
            $crate::AnyObject::Endpoints($o) => $body,
            $crate::AnyObject::ConfigMap($o) => $body,
            $crate::AnyObject::Secret($o) => $body,
            $crate::AnyObject::Lease($o) => $body,
            $crate::AnyObject::Role($o) => $body,
            $crate::AnyObject::ClusterRole($o) => $body,
            $crate::AnyObject::RoleBinding($o) => $body,
            $crate::AnyObject::ClusterRoleBinding($o) => $body,
        }
    };
}

impl AnyObject {
    pub fn info(&self) -> &'static KindInfo {
        fn info_of<T: Object>(_: &T) -> &'static KindInfo {
            &T::INFO
        }
        with_object!(self, o => info_of(o))
    }

    pub fn name(&self) -> &str {
        with_object!(self, o => o.name())
    }

    pub fn namespace(&self) -> &str {
        with_object!(self, o => o.namespace())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_are_those_under_the_registry_root() {
        assert!(is_api_key(b"/registry/pods/default/p"));
        assert!(is_api_key(b"/registry"));
        assert!(!is_api_key(b"/registryish"));
        assert!(!is_api_key(b"registry/pods"));
    }
}
