//! The scheduler's view of the cluster, fed by watches: every node with
//! what the pods on it hold, and every pod that holds a node. A placement
//! the scheduler has decided but not yet seen committed is "assumed": it
//! counts against its node at once, so the next decisions see it, and is
//! forgotten if the bind is refused.

use std::collections::BTreeMap;
use std::sync::Arc;

use berth_api::pb;
use berth_api::resources::node_allocatable;
use berth_api::resources::node_is_cordoned;
use berth_api::resources::node_is_ready;
use berth_api::resources::pod_holds_node;
use berth_api::resources::pod_requests;
use berth_api::resources::Resources;
use berth_api::selector::LabelSelector;
use berth_api::Object;
// Looked up per node for every pod placed: FxHash, not SipHash (no
// untrusted keys can flood these maps; their keys come from the store).
use rustc_hash::FxHashMap as HashMap;

pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// `namespace/name`.
pub type PodKey = Arc<str>;

pub fn pod_key(pod: &pb::Pod) -> PodKey {
    format!("{}/{}", pod.namespace(), pod.name()).into()
}

/// A required anti-affinity term: no pod matching `selector` in
/// `namespaces` may share the topology domain named by `topology_key`.
#[derive(Clone, Debug)]
pub struct AntiAffinityTerm {
    pub selector: LabelSelector,
    pub namespaces: Vec<String>,
    pub topology_key: String,
}

impl AntiAffinityTerm {
    pub fn matches(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespaces.iter().any(|n| n == namespace) && self.selector.matches(labels)
    }
}

/// What scheduling needs of a pod, decoded once.
#[derive(Clone, Debug)]
pub struct PodInfo {
    pub key: PodKey,
    pub namespace: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub requests: Resources,
    pub node_selector: BTreeMap<String, String>,
    pub node_affinity: Option<pb::NodeSelector>,
    pub tolerations: Vec<pb::Toleration>,
    pub anti_affinity: Vec<AntiAffinityTerm>,
    /// The owning controller's uid, hashed (counted per node for every
    /// candidate, so cheap to look up; a collision only blurs a score):
    /// the pods a spread score keeps apart.
    pub workload: Option<Workload>,
}

impl PodInfo {
    pub fn new(pod: &pb::Pod) -> Self {
        let spec = pod.spec.clone().unwrap_or_default();
        let meta = pod.meta().cloned().unwrap_or_default();
        let namespace = pod.namespace().to_string();
        let anti_affinity = spec
            .affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .map(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .iter()
                    .map(|t| AntiAffinityTerm {
                        selector: t
                            .label_selector
                            .as_ref()
                            .and_then(|s| LabelSelector::from_proto(s).ok())
                            .unwrap_or_else(nothing),
                        namespaces: if t.namespaces.is_empty() {
                            vec![namespace.clone()]
                        } else {
                            t.namespaces.clone()
                        },
                        topology_key: t.topology_key.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let workload = meta
            .owner_references
            .iter()
            .find(|o| o.controller == Some(true))
            .map(|o| workload_id(&o.uid));
        Self {
            key: pod_key(pod),
            namespace,
            uid: meta.uid,
            labels: meta.labels,
            requests: pod_requests(pod),
            node_selector: spec.node_selector,
            node_affinity: spec
                .affinity
                .and_then(|a| a.node_affinity)
                .and_then(|n| n.required_during_scheduling_ignored_during_execution),
            tolerations: spec.tolerations,
            anti_affinity,
            workload,
        }
    }
}

pub type Workload = u64;

pub fn workload_id(uid: &str) -> Workload {
    use std::hash::Hasher;
    let mut h = rustc_hash::FxHasher::default();
    h.write(uid.as_bytes());
    h.finish()
}

/// A selector no labels match (a term without one selects nothing).
fn nothing() -> LabelSelector {
    LabelSelector::parse("berth.invalid/none,!berth.invalid/none").expect("a valid selector")
}

/// A node and what the pods on it hold.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<pb::Taint>,
    pub allocatable: Resources,
    pub ready: bool,
    pub cordoned: bool,
    pub zone: Option<Arc<str>>,
    pub used: Resources,
    /// Pods here (bound or assumed), for anti-affinity.
    pub pods: HashMap<PodKey, Arc<PodInfo>>,
    /// How many of the pods here have required anti-affinity terms: when
    /// none, an incoming pod need not look at them.
    pub with_anti_affinity: usize,
    pub per_workload: HashMap<Workload, u32>,
}

impl NodeInfo {
    fn describe(&mut self, node: &pb::Node) {
        self.name = node.name().to_string();
        self.labels = node.meta().map(|m| m.labels.clone()).unwrap_or_default();
        self.taints = node
            .spec
            .as_ref()
            .map(|s| s.taints.clone())
            .unwrap_or_default();
        self.allocatable = node_allocatable(node);
        self.ready = node_is_ready(node);
        self.cordoned = node_is_cordoned(node);
        self.zone = self.labels.get(ZONE_LABEL).map(|z| Arc::from(z.as_str()));
    }

    pub fn from_node(node: &pb::Node) -> Self {
        let mut info = Self::default();
        info.describe(node);
        info
    }

    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.used = self.used + pod.requests;
        if !pod.anti_affinity.is_empty() {
            self.with_anti_affinity += 1;
        }
        if let Some(w) = pod.workload {
            *self.per_workload.entry(w).or_default() += 1;
        }
        self.pods.insert(pod.key.clone(), pod);
    }

    fn remove_pod(&mut self, key: &str) -> Option<Arc<PodInfo>> {
        let pod = self.pods.remove(key)?;
        self.used = self.used - pod.requests;
        if !pod.anti_affinity.is_empty() {
            self.with_anti_affinity -= 1;
        }
        if let Some(w) = pod.workload {
            if let Some(n) = self.per_workload.get_mut(&w) {
                *n -= 1;
                if *n == 0 {
                    self.per_workload.remove(&w);
                }
            }
        }
        Some(pod)
    }

    pub fn workload_count(&self, workload: Workload) -> u32 {
        self.per_workload.get(&workload).copied().unwrap_or(0)
    }
}

/// A pod as the scheduler sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodState {
    /// Needs a node.
    Pending,
    /// Its bind is in flight.
    Binding,
    /// Bound (or finished): nothing more to do.
    Placed,
}

/// Where a pod that holds a node holds it.
#[derive(Clone, Debug)]
struct Placement {
    node: String,
    assumed: bool,
}

#[derive(Default)]
pub struct Cache {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    placed: HashMap<PodKey, Placement>,
    /// Pods bound to nodes the scheduler has not seen (yet).
    orphans: HashMap<String, Vec<Arc<PodInfo>>>,
    /// A workload's pods per zone.
    per_zone: HashMap<(Workload, Arc<str>), u32>,
    /// One `Arc` per zone name, so that zones compare by pointer.
    zones: HashMap<String, Arc<str>>,
}

impl Cache {
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    pub fn zone_count(&self, workload: Workload, zone: &Arc<str>) -> u32 {
        self.per_zone
            .get(&(workload, zone.clone()))
            .copied()
            .unwrap_or(0)
    }

    pub fn is_placed(&self, key: &str) -> bool {
        self.placed.contains_key(key)
    }

    /// Adds or refreshes a node; returns whether what the filters see of
    /// it changed (so that pods waiting for room are worth another try).
    pub fn set_node(&mut self, node: &pb::Node) -> bool {
        let name = node.name().to_string();
        let changed = self.describe_node(&name, node);
        if let Some(i) = self.index.get(&name) {
            let info = &mut self.nodes[*i];
            if let Some(z) = info.zone.take() {
                info.zone = Some(self.zones.entry(z.to_string()).or_insert(z).clone());
            }
        }
        changed
    }

    fn describe_node(&mut self, name: &str, node: &pb::Node) -> bool {
        if let Some(&i) = self.index.get(name) {
            let info = &mut self.nodes[i];
            let before = (
                info.allocatable,
                info.ready,
                info.cordoned,
                std::mem::take(&mut info.labels),
                std::mem::take(&mut info.taints),
            );
            info.describe(node);
            return before
                != (
                    info.allocatable,
                    info.ready,
                    info.cordoned,
                    info.labels.clone(),
                    info.taints.clone(),
                );
        }
        let mut info = NodeInfo::from_node(node);
        for pod in self.orphans.remove(name).unwrap_or_default() {
            info.add_pod(pod);
        }
        self.index.insert(name.to_string(), self.nodes.len());
        self.nodes.push(info);
        true
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        let info = self.nodes.swap_remove(i);
        if i < self.nodes.len() {
            self.index.insert(self.nodes[i].name.clone(), i);
        }
        // Its pods still hold it as far as the store knows; keep them in
        // case the node comes back.
        self.orphans
            .insert(info.name, info.pods.into_values().collect());
    }

    /// Counts `pod` against `node`; `assumed` until its bind is seen.
    pub fn place(&mut self, pod: Arc<PodInfo>, node: &str, assumed: bool) {
        self.unplace(&pod.key);
        if let (Some(w), Some(zone)) = (pod.workload, self.node(node).and_then(|n| n.zone.clone()))
        {
            *self.per_zone.entry((w, zone)).or_default() += 1;
        }
        self.placed.insert(
            pod.key.clone(),
            Placement {
                node: node.to_string(),
                assumed,
            },
        );
        match self.index.get(node) {
            Some(&i) => self.nodes[i].add_pod(pod),
            None => self.orphans.entry(node.to_string()).or_default().push(pod),
        }
    }

    /// Stops counting the pod anywhere.
    pub fn unplace(&mut self, key: &str) {
        let Some(p) = self.placed.remove(key) else {
            return;
        };
        let removed = match self.index.get(&p.node) {
            Some(&i) => self.nodes[i].remove_pod(key),
            None => self.orphans.get_mut(&p.node).and_then(|pods| {
                let at = pods.iter().position(|x| &*x.key == key)?;
                Some(pods.swap_remove(at))
            }),
        };
        let zone = self.node(&p.node).and_then(|n| n.zone.clone());
        if let (Some(pod), Some(zone)) = (removed, zone) {
            if let Some(w) = pod.workload {
                let k = (w, zone);
                if let Some(n) = self.per_zone.get_mut(&k) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_zone.remove(&k);
                    }
                }
            }
        }
    }

    /// Forgets an assumed placement (its bind was refused or lost); a
    /// placement the store confirmed stays.
    pub fn unassume(&mut self, key: &str) {
        if self.placed.get(key).is_some_and(|p| p.assumed) {
            self.unplace(key);
        }
    }

    /// After a fresh list: forgets the placements of pods not in it.
    pub fn retain_pods(&mut self, keys: &std::collections::HashSet<PodKey>) {
        let gone: Vec<PodKey> = self
            .placed
            .keys()
            .filter(|k| !keys.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.unplace(&key);
        }
    }

    /// Brings a pod's state from the store into the cache.
    pub fn observe_pod(&mut self, pod: &pb::Pod) -> PodState {
        let key = pod_key(pod);
        match pod_holds_node(pod) {
            Some(node) => {
                match self.placed.get_mut(&key) {
                    // Confirms an assumed placement (or repeats a known one).
                    Some(p) if p.node == node => p.assumed = false,
                    _ => self.place(Arc::new(PodInfo::new(pod)), node, false),
                }
                PodState::Placed
            }
            None if !pod.node_name().is_empty() => {
                // Finished: it holds nothing any more.
                self.unplace(&key);
                PodState::Placed
            }
            None if self.placed.get(&key).is_some_and(|p| p.assumed) => PodState::Binding,
            None => PodState::Pending,
        }
    }
}
