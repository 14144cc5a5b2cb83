//! The checkers besides linearizability: no acknowledged write lost (from
//! the history and the state read after heal), and the cluster invariants
//! checked on every snapshot of pods, nodes and services the run takes: a
//! pod is bound once and never moves, no node holds more than it offers,
//! no address is handed out twice.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;

use berth_api::pb;
use berth_api::resources::node_allocatable;
use berth_api::resources::pod_holds_node;
use berth_api::resources::pod_is_terminal;
use berth_api::resources::pod_requests;
use berth_api::resources::Resources;

use crate::history::Op;
use crate::history::OpKind;
use crate::history::Outcome;

/// The problems one checker found; none means it passed.
pub type Problems = Vec<String>;

/// Checker 2 for registers: each register's value after heal must come
/// from some write, and no acknowledged write may have been overwritten by
/// one that completed before it began.
pub fn registers_kept(ops: &[Op], initial: i64, finals: &BTreeMap<String, i64>) -> Problems {
    let mut problems = Vec::new();
    for (key, value) in finals {
        let writes: Vec<&Op> = ops
            .iter()
            .filter(|o| &o.key == key && matches!(o.kind, OpKind::Write | OpKind::Cas))
            .filter(|o| o.outcome != Outcome::Fail)
            .collect();
        let producer = writes.iter().find(|o| o.value == Some(*value));
        let Some(producer) = producer else {
            if *value != initial {
                problems.push(format!("{key} holds {value}, which no client wrote"));
            } else if let Some(w) = writes.iter().find(|o| o.outcome == Outcome::Ok) {
                problems.push(format!(
                    "{key} holds its initial value, but op {} wrote {:?} and was acknowledged",
                    w.id, w.value
                ));
            }
            continue;
        };
        let produced_by = producer.complete_ms.unwrap_or(f64::INFINITY);
        for w in writes.iter().filter(|w| w.outcome == Outcome::Ok) {
            if w.id != producer.id && produced_by < w.invoke_ms {
                problems.push(format!(
                    "{key}: acknowledged op {} (value {:?}, invoked at {:.0} ms) is lost: the register holds {value} from op {}, which completed at {produced_by:.0} ms",
                    w.id, w.value, w.invoke_ms, producer.id
                ));
            }
        }
    }
    problems
}

/// Checker 2 for objects created and deleted: an acknowledged create is
/// there after heal unless a delete of it was tried; an acknowledged delete
/// is gone; nothing is there that no one created. `present` is every
/// `Kind/name` the run's objects left (of the kinds and names it made).
pub fn objects_kept(ops: &[Op], present: &BTreeSet<String>) -> Problems {
    let mut created: BTreeMap<&str, Outcome> = BTreeMap::new();
    let mut deleted: BTreeMap<&str, Outcome> = BTreeMap::new();
    for op in ops {
        let seen = match op.kind {
            OpKind::Create => &mut created,
            OpKind::Delete => &mut deleted,
            _ => continue,
        };
        let entry = seen.entry(&op.key).or_insert(op.outcome);
        if op.outcome == Outcome::Ok || *entry == Outcome::Fail {
            *entry = op.outcome;
        }
    }
    let mut problems = Vec::new();
    for (key, outcome) in &created {
        let delete_tried = deleted.get(key).is_some_and(|d| *d != Outcome::Fail);
        if *outcome == Outcome::Ok && !delete_tried && !present.contains(*key) {
            problems.push(format!(
                "{key}: its create was acknowledged, yet it is gone"
            ));
        }
    }
    for (key, outcome) in &deleted {
        if *outcome == Outcome::Ok && present.contains(*key) {
            problems.push(format!(
                "{key}: its delete was acknowledged, yet it is there"
            ));
        }
    }
    for key in present {
        if created
            .get(key.as_str())
            .is_none_or(|c| *c == Outcome::Fail)
        {
            problems.push(format!(
                "{key} exists, but no create of it can have happened"
            ));
        }
    }
    problems
}

/// Checkers 3, 4 and 5 over every snapshot the run takes.
#[derive(Default)]
pub struct Invariants {
    /// Pod uid -> (namespace/name, node) as first seen bound.
    bound: HashMap<String, (String, String)>,
    pub snapshots: u64,
    pub placements: usize,
    /// How many holdings of each kind of address were checked.
    pub addresses_seen: BTreeMap<&'static str, usize>,
    pub moved: Problems,
    pub overcommitted: Problems,
    pub duplicates: Problems,
}

impl Invariants {
    /// Checks one consistent snapshot (one linearizable list per kind).
    pub fn observe(&mut self, pods: &[pb::Pod], nodes: &[pb::Node], services: &[pb::Service]) {
        self.snapshots += 1;
        self.check_bindings(pods);
        self.check_allocatable(pods, nodes);
        self.check_addresses(pods, nodes, services);
    }

    fn check_bindings(&mut self, pods: &[pb::Pod]) {
        for pod in pods {
            let meta = pod.metadata.clone().unwrap_or_default();
            let name = format!("{}/{}", meta.namespace, meta.name);
            let node = pod.spec.as_ref().map_or("", |s| s.node_name.as_str());
            match self.bound.get(&meta.uid) {
                None if !node.is_empty() => {
                    self.placements += 1;
                    self.bound.insert(meta.uid, (name, node.to_string()));
                }
                Some((_, first)) if first != node => {
                    let problem = format!(
                        "pod {name} (uid {}) was bound to {first}, now to {node:?}",
                        meta.uid
                    );
                    if !self.moved.contains(&problem) {
                        self.moved.push(problem);
                    }
                }
                _ => {}
            }
        }
    }

    fn check_allocatable(&mut self, pods: &[pb::Pod], nodes: &[pb::Node]) {
        let mut used: HashMap<&str, Resources> = HashMap::new();
        for pod in pods {
            if let Some(node) = pod_holds_node(pod) {
                let total = used.entry(node).or_default();
                *total = *total + pod_requests(pod);
            }
        }
        for node in nodes {
            let name = node.metadata.as_ref().map_or("", |m| m.name.as_str());
            let (Some(used), offered) = (used.get(name), node_allocatable(node)) else {
                continue;
            };
            if used.cpu_millis > offered.cpu_millis
                || used.memory_bytes > offered.memory_bytes
                || used.pods > offered.pods
            {
                let problem = format!(
                    "node {name} holds pods requesting {}m cpu, {} bytes, {} pods; it offers {}m, {} bytes, {} pods",
                    used.cpu_millis, used.memory_bytes, used.pods,
                    offered.cpu_millis, offered.memory_bytes, offered.pods
                );
                if !self.overcommitted.contains(&problem) {
                    self.overcommitted.push(problem);
                }
            }
        }
    }

    fn check_addresses(&mut self, pods: &[pb::Pod], nodes: &[pb::Node], services: &[pb::Service]) {
        // Pods that share their node's network have its address, as in
        // Kubernetes' hostNetwork; only pods with an address of their own
        // must not share it.
        let pod_ips = pods.iter().filter(|p| !pod_is_terminal(p)).filter_map(|p| {
            let s = p.status.as_ref()?;
            let name = p
                .metadata
                .as_ref()
                .map(|m| format!("pod {}/{}", m.namespace, m.name))?;
            (!s.pod_ip.is_empty() && s.pod_ip != s.host_ip).then(|| (s.pod_ip.clone(), name))
        });
        let cidrs = nodes.iter().filter_map(|n| {
            let cidr = &n.spec.as_ref()?.pod_cidr;
            let name = &n.metadata.as_ref()?.name;
            (!cidr.is_empty()).then(|| (cidr.clone(), format!("node {name}")))
        });
        let cluster_ips = services.iter().filter_map(|s| {
            let ip = &s.spec.as_ref()?.cluster_ip;
            let m = s.metadata.as_ref()?;
            (!ip.is_empty() && ip != "None")
                .then(|| (ip.clone(), format!("service {}/{}", m.namespace, m.name)))
        });
        for (what, owners) in [
            ("pod IP", collect(pod_ips)),
            ("pod CIDR", collect(cidrs)),
            ("ClusterIP", collect(cluster_ips)),
        ] {
            for (address, holders) in owners {
                *self.addresses_seen.entry(what).or_default() += 1;
                if holders.len() > 1 {
                    let problem = format!("{what} {address} is held by {}", holders.join(" and "));
                    if !self.duplicates.contains(&problem) {
                        self.duplicates.push(problem);
                    }
                }
            }
        }
    }
}

fn collect(items: impl Iterator<Item = (String, String)>) -> BTreeMap<String, Vec<String>> {
    let mut owners: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (address, holder) in items {
        owners.entry(address).or_default().push(holder);
    }
    owners
}

/// Checker 6 for one deployment: how many of its pods are Running and not
/// being deleted, against its replicas.
pub fn running_replicas(deployment: &pb::Deployment, pods: &[pb::Pod]) -> (usize, usize) {
    let uid = deployment.metadata.as_ref().map_or("", |m| m.uid.as_str());
    let wanted = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0) as usize;
    let running = pods
        .iter()
        .filter(|p| {
            p.metadata.as_ref().is_some_and(|m| {
                m.deletion_timestamp.is_empty() && m.owner_references.iter().any(|o| o.uid == uid)
            })
        })
        .filter(|p| p.status.as_ref().is_some_and(|s| s.phase == "Running"))
        .count();
    (running, wanted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_testkit::objects;

    #[test]
    fn an_overwritten_acknowledged_write_is_lost() {
        let ops = vec![
            Op::made(0, OpKind::Write, "r", 1, (0.0, Some(1.0)), Outcome::Ok),
            Op::made(1, OpKind::Write, "r", 2, (2.0, Some(3.0)), Outcome::Ok),
        ];
        let finals = BTreeMap::from([("r".to_string(), 1)]);
        assert_eq!(registers_kept(&ops, 0, &finals).len(), 1);
        let finals = BTreeMap::from([("r".to_string(), 2)]);
        assert!(registers_kept(&ops, 0, &finals).is_empty());
    }

    #[test]
    fn a_value_no_one_wrote_or_a_reverted_register_is_caught() {
        let ops = vec![Op::made(
            0,
            OpKind::Write,
            "r",
            1,
            (0.0, Some(1.0)),
            Outcome::Ok,
        )];
        let finals = BTreeMap::from([("r".to_string(), 7)]);
        assert_eq!(registers_kept(&ops, 0, &finals).len(), 1);
        let finals = BTreeMap::from([("r".to_string(), 0)]);
        assert_eq!(registers_kept(&ops, 0, &finals).len(), 1);
    }

    #[test]
    fn concurrent_or_unknown_writes_may_win() {
        let ops = vec![
            Op::made(0, OpKind::Write, "r", 1, (0.0, Some(5.0)), Outcome::Ok),
            Op::made(1, OpKind::Write, "r", 2, (1.0, None), Outcome::Info),
        ];
        let finals = BTreeMap::from([("r".to_string(), 2)]);
        assert!(registers_kept(&ops, 0, &finals).is_empty());
    }

    #[test]
    fn objects_acknowledged_must_match_what_is_left() {
        let ops = vec![
            Op::made(
                0,
                OpKind::Create,
                "ConfigMap/a",
                0,
                (0.0, Some(1.0)),
                Outcome::Ok,
            ),
            Op::made(
                1,
                OpKind::Create,
                "ConfigMap/b",
                0,
                (0.0, Some(1.0)),
                Outcome::Ok,
            ),
            Op::made(
                2,
                OpKind::Delete,
                "ConfigMap/b",
                0,
                (2.0, Some(3.0)),
                Outcome::Ok,
            ),
            Op::made(
                3,
                OpKind::Create,
                "ConfigMap/c",
                0,
                (0.0, None),
                Outcome::Info,
            ),
            Op::made(
                4,
                OpKind::Create,
                "ConfigMap/d",
                0,
                (0.0, Some(1.0)),
                Outcome::Ok,
            ),
            Op::made(
                5,
                OpKind::Delete,
                "ConfigMap/d",
                0,
                (2.0, None),
                Outcome::Info,
            ),
        ];
        let good = BTreeSet::from(["ConfigMap/a".to_string(), "ConfigMap/c".to_string()]);
        assert!(objects_kept(&ops, &good).is_empty());
        let lost = BTreeSet::from(["ConfigMap/c".to_string()]);
        assert_eq!(objects_kept(&ops, &lost).len(), 1);
        let resurrected = BTreeSet::from(["ConfigMap/a".to_string(), "ConfigMap/b".to_string()]);
        assert_eq!(objects_kept(&ops, &resurrected).len(), 1);
        let phantom = BTreeSet::from(["ConfigMap/a".to_string(), "ConfigMap/z".to_string()]);
        assert_eq!(objects_kept(&ops, &phantom).len(), 1);
    }

    fn pod(name: &str, uid: &str, node: &str, cpu: &str, ip: &str) -> pb::Pod {
        objects::pod(name)
            .namespace("chaos")
            .uid(uid)
            .node(node)
            .requests(&[("cpu", cpu)])
            .status("Running", ip)
            .host_ip("10.0.0.1")
            .build()
    }

    fn node(name: &str, cpu: &str, cidr: &str) -> pb::Node {
        objects::node(name)
            .allocatable(&[("cpu", cpu), ("memory", "1Gi")])
            .pod_cidr(cidr)
            .build()
    }

    #[test]
    fn a_pod_that_moves_is_caught() {
        let mut inv = Invariants::default();
        inv.observe(&[pod("p", "u1", "", "100m", "")], &[], &[]);
        inv.observe(&[pod("p", "u1", "n1", "100m", "")], &[], &[]);
        inv.observe(&[pod("p", "u1", "n1", "100m", "")], &[], &[]);
        assert!(inv.moved.is_empty());
        inv.observe(&[pod("p", "u1", "n2", "100m", "")], &[], &[]);
        assert_eq!(inv.moved.len(), 1);
        assert_eq!(inv.placements, 1);
    }

    #[test]
    fn an_overcommitted_node_is_caught() {
        let mut inv = Invariants::default();
        let nodes = [node("n1", "1", "10.244.1.0/24")];
        let fits = [
            pod("a", "u1", "n1", "500m", ""),
            pod("b", "u2", "n1", "500m", ""),
        ];
        inv.observe(&fits, &nodes, &[]);
        assert!(inv.overcommitted.is_empty());
        let over = [
            pod("a", "u1", "n1", "500m", ""),
            pod("b", "u2", "n1", "600m", ""),
        ];
        inv.observe(&over, &nodes, &[]);
        assert_eq!(inv.overcommitted.len(), 1);
    }

    #[test]
    fn shared_addresses_are_caught() {
        let mut inv = Invariants::default();
        let pods = [
            pod("a", "u1", "n1", "1m", "10.244.1.2"),
            pod("b", "u2", "n2", "1m", "10.244.1.2"),
        ];
        let nodes = [
            node("n1", "1", "10.244.1.0/24"),
            node("n2", "1", "10.244.1.0/24"),
        ];
        let service = |name: &str| pb::Service {
            metadata: Some(pb::ObjectMeta {
                name: name.into(),
                namespace: "chaos".into(),
                ..Default::default()
            }),
            spec: Some(pb::ServiceSpec {
                cluster_ip: "10.96.0.10".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        inv.observe(&pods, &nodes, &[service("x"), service("y")]);
        assert_eq!(inv.duplicates.len(), 3, "{:?}", inv.duplicates);
        // Pods on their node's network share its address legitimately.
        let mut inv = Invariants::default();
        inv.observe(
            &[
                pod("a", "u1", "n1", "1m", "10.0.0.1"),
                pod("b", "u2", "n1", "1m", "10.0.0.1"),
            ],
            &[],
            &[],
        );
        assert!(inv.duplicates.is_empty());
    }

    #[test]
    fn replicas_count_only_running_pods_the_deployment_owns() {
        let d = pb::Deployment {
            metadata: Some(pb::ObjectMeta {
                name: "web".into(),
                uid: "d1".into(),
                ..Default::default()
            }),
            spec: Some(pb::DeploymentSpec {
                replicas: Some(3),
                ..Default::default()
            }),
            ..Default::default()
        };
        let owned = |name: &str, owner: &str, phase: &str, deleting: bool| {
            let mut p = pod(name, name, "n1", "1m", "");
            let m = p.metadata.as_mut().unwrap();
            m.owner_references = vec![pb::OwnerReference {
                uid: owner.into(),
                ..Default::default()
            }];
            if deleting {
                m.deletion_timestamp = "2026-11-28T00:00:00Z".into();
            }
            p.status.as_mut().unwrap().phase = phase.into();
            p
        };
        let pods = [
            owned("a", "d1", "Running", false),
            owned("b", "d1", "Pending", false),
            owned("c", "d1", "Running", true),
            owned("d", "other", "Running", false),
            owned("e", "d1", "Running", false),
        ];
        assert_eq!(running_replicas(&d, &pods), (2, 3));
    }
}
