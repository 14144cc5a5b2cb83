//! The bind rules the state machine applies: a bind commits only if its
//! scheduler's epoch is current, the pod is pending, the node is there,
//! Ready and not cordoned, and the pod's requests fit in what the pods
//! already on the node leave of its allocatable. The index of what each
//! node holds is derived from the stored pods alone, so it is the same on
//! every controller.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use berth_api::kinds::list_prefix;
use berth_api::kinds::object_key;
use berth_api::names::SYSTEM_NAMESPACE;
use berth_api::pb;
use berth_api::resources::lease_epoch;
use berth_api::resources::node_allocatable;
use berth_api::resources::node_is_cordoned;
use berth_api::resources::node_is_ready;
use berth_api::resources::pod_holds_node;
use berth_api::resources::pod_requests;
use berth_api::resources::Resources;
use berth_api::resources::SCHEDULER_LEASE_NAME;
use berth_api::Object;
use berth_raft::rules::ReadKey;
use berth_raft::BindOp;
use berth_raft::BindRefusal;
use berth_raft::BindRules;
use prost::Message;

static PODS_PREFIX: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| list_prefix(&<pb::Pod as Object>::INFO, ""));

type Decision = Result<Vec<u8>, (BindRefusal, String)>;

#[derive(Default)]
pub struct PlacementRules {
    /// Pods that hold resources: their node and requests.
    holds: HashMap<Vec<u8>, (Arc<str>, Resources)>,
    /// What the pods bound to each node hold of it.
    used: HashMap<Arc<str>, Resources>,
}

impl PlacementRules {
    pub fn new() -> Self {
        Self::default()
    }

    /// What the pods bound to `node` hold of it.
    pub fn used(&self, node: &str) -> Resources {
        self.used.get(node).copied().unwrap_or_default()
    }

    fn release(&mut self, key: &[u8]) {
        let Some((node, req)) = self.holds.remove(key) else {
            return;
        };
        if let Some(used) = self.used.get_mut(&node) {
            *used = *used - req;
            if *used == Resources::default() {
                self.used.remove(&node);
            }
        }
    }

    fn hold(&mut self, key: &[u8], node: &str, req: Resources) {
        let node: Arc<str> = match self.used.get_key_value(node) {
            Some((k, _)) => k.clone(),
            None => node.into(),
        };
        let used = self.used.entry(node.clone()).or_default();
        *used = *used + req;
        self.holds.insert(key.to_vec(), (node, req));
    }

    fn decide(&self, bind: &BindOp<'_>, read: &mut ReadKey<'_>) -> io::Result<Decision> {
        let refuse = |reason, message: String| Ok(Err((reason, message)));
        if bind.node.is_empty() {
            return refuse(BindRefusal::Invalid, "a bind needs a node name".into());
        }
        let lease_key = object_key(&pb::Lease::INFO, SYSTEM_NAMESPACE, SCHEDULER_LEASE_NAME);
        let current = match read(lease_key.as_bytes())? {
            Some(raw) => pb::Lease::decode(raw.as_slice()).map_or(0, |l| lease_epoch(&l)),
            None => 0,
        };
        if bind.epoch != current {
            return refuse(
                BindRefusal::StaleEpoch,
                format!(
                    "the bind carries scheduler epoch {}, but lease {SYSTEM_NAMESPACE}/{SCHEDULER_LEASE_NAME} is at epoch {current}: the scheduler lost its lease; binds come only from the lease holder",
                    bind.epoch
                ),
            );
        }
        let Some(raw) = read(bind.pod_key)? else {
            return refuse(BindRefusal::PodNotFound, "the pod does not exist".into());
        };
        let Ok(mut pod) = pb::Pod::decode(raw.as_slice()) else {
            return refuse(
                BindRefusal::Invalid,
                "the stored pod does not decode".into(),
            );
        };
        let what = format!("pod {}/{}", pod.namespace(), pod.name());
        if !pod.node_name().is_empty() {
            return refuse(
                BindRefusal::AlreadyBound,
                format!(
                    "{what} is already bound to node {:?}; a pod is placed once",
                    pod.node_name()
                ),
            );
        }
        if pod.meta().is_some_and(|m| !m.deletion_timestamp.is_empty()) {
            return refuse(BindRefusal::Invalid, format!("{what} is being deleted"));
        }
        let node_key = object_key(&pb::Node::INFO, "", bind.node);
        let node = match read(node_key.as_bytes())?.map(|raw| pb::Node::decode(raw.as_slice())) {
            Some(Ok(node)) => node,
            Some(Err(_)) => {
                return refuse(
                    BindRefusal::Invalid,
                    "the stored node does not decode".into(),
                )
            }
            None => {
                return refuse(
                    BindRefusal::NodeNotFound,
                    format!(
                        "node {:?} does not exist: bind to a registered node",
                        bind.node
                    ),
                )
            }
        };
        if !node_is_ready(&node) {
            return refuse(
                BindRefusal::NodeNotReady,
                format!("node {:?} is not Ready", bind.node),
            );
        }
        if node_is_cordoned(&node) {
            return refuse(
                BindRefusal::NodeUnschedulable,
                format!("node {:?} is cordoned", bind.node),
            );
        }
        let want = pod_requests(&pod);
        let used = self.used(bind.node);
        let allocatable = node_allocatable(&node);
        let short = want.shortfall(used, allocatable);
        if short.any() {
            return refuse(
                BindRefusal::Insufficient,
                format!(
                    "{what} does not fit on node {:?} ({}): it requests {}m cpu, {} bytes of memory; the node's pods hold {}m of {}m cpu, {} of {} bytes, {} of {} pods",
                    bind.node,
                    short.describe(),
                    want.cpu_millis,
                    want.memory_bytes,
                    used.cpu_millis,
                    allocatable.cpu_millis,
                    used.memory_bytes,
                    allocatable.memory_bytes,
                    used.pods,
                    allocatable.pods
                ),
            );
        }
        pod.spec.get_or_insert_default().node_name = bind.node.to_string();
        let status = pod.status.get_or_insert_default();
        status.conditions.retain(|c| c.r#type != "PodScheduled");
        status.conditions.push(pb::Condition {
            r#type: "PodScheduled".into(),
            status: "True".into(),
            last_transition_time: bind.time.to_string(),
            ..Default::default()
        });
        Ok(Ok(pod.encode_to_vec()))
    }
}

impl BindRules for PlacementRules {
    fn observed_prefix(&self) -> &'static [u8] {
        PODS_PREFIX.as_bytes()
    }

    fn reset(&mut self) {
        self.holds.clear();
        self.used.clear();
    }

    fn observe(&mut self, key: &[u8], value: Option<&[u8]>) {
        self.release(key);
        let Some(pod) = value.and_then(|raw| pb::Pod::decode(raw).ok()) else {
            return;
        };
        if let Some(node) = pod_holds_node(&pod) {
            self.hold(key, node, pod_requests(&pod));
        }
    }

    fn bind(&self, bind: &BindOp<'_>, read: &mut ReadKey<'_>) -> io::Result<Decision> {
        self.decide(bind, read)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use berth_testkit::objects;

    use super::*;

    fn pod(name: &str, cpu: &str, node: &str, phase: &str) -> Vec<u8> {
        let p = objects::pod(name).requests(&[("cpu", cpu)]).node(node);
        p.status(phase, "").build().encode_to_vec()
    }

    fn node() -> Vec<u8> {
        let n = objects::node("n1").allocatable(&[("cpu", "1"), ("memory", "1Gi")]);
        n.build().encode_to_vec()
    }

    fn key(name: &str) -> Vec<u8> {
        format!("/registry/pods/default/{name}").into_bytes()
    }

    #[test]
    fn what_a_node_holds_follows_its_pods() {
        let mut rules = PlacementRules::new();
        let cpu = |r: &PlacementRules| r.used("n1").cpu_millis;
        rules.observe(&key("a"), Some(&pod("a", "300m", "n1", "Running")));
        rules.observe(&key("b"), Some(&pod("b", "200m", "n1", "Running")));
        rules.observe(
            &key("pending"),
            Some(&pod("pending", "900m", "", "Pending")),
        );
        assert_eq!(cpu(&rules), 500);
        // Rewriting a pod does not count it twice; finishing releases it.
        rules.observe(&key("a"), Some(&pod("a", "300m", "n1", "Running")));
        assert_eq!(cpu(&rules), 500);
        rules.observe(&key("a"), Some(&pod("a", "300m", "n1", "Succeeded")));
        assert_eq!(cpu(&rules), 200);
        rules.observe(&key("b"), None);
        assert_eq!(rules.used("n1"), Resources::default());
        rules.observe(&key("b"), Some(&pod("b", "200m", "n1", "Running")));
        rules.reset();
        assert_eq!(cpu(&rules), 0);
    }

    #[test]
    fn binds_are_decided_against_what_is_held() {
        let mut rules = PlacementRules::new();
        let mut store: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        store.insert(b"/registry/nodes/n1".to_vec(), node());
        store.insert(key("new"), pod("new", "600m", "", "Pending"));
        rules.observe(&key("old"), Some(&pod("old", "500m", "n1", "Running")));
        let decide = |rules: &PlacementRules, store: &BTreeMap<Vec<u8>, Vec<u8>>| {
            let bind = BindOp {
                pod_key: &key("new"),
                node: "n1",
                epoch: 0,
                time: "2026-01-01T00:00:00Z",
            };
            let mut read = |k: &[u8]| Ok(store.get(k).cloned());
            rules.bind(&bind, &mut read).unwrap()
        };
        let (reason, message) = decide(&rules, &store).unwrap_err();
        assert_eq!(reason, BindRefusal::Insufficient);
        assert!(message.contains("Insufficient cpu"), "{message}");
        rules.observe(&key("old"), None);
        let bound = pb::Pod::decode(decide(&rules, &store).unwrap().as_slice()).unwrap();
        assert_eq!(bound.node_name(), "n1");
        let cond = &bound.status.unwrap().conditions[0];
        assert_eq!(
            (cond.r#type.as_str(), cond.status.as_str()),
            ("PodScheduled", "True")
        );
        assert_eq!(cond.last_transition_time, "2026-01-01T00:00:00Z");
    }
}
