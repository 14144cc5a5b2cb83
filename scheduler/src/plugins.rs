//! Filters (can this pod go on this node at all?) and scores (how good a
//! place is it?), as plain functions over the cache's pod and node infos.
//! A filter's refusal says why in kubectl's words, so that an
//! unschedulable pod's message can count nodes by reason.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use berth_api::pb;
use berth_api::resources::Shortfall;

use crate::cache::NodeInfo;
use crate::cache::PodInfo;
use crate::cache::Workload;
use crate::cache::HOSTNAME_LABEL;
use crate::config::SchedulerConfig;
use crate::config::Strategy;

/// Why a node cannot take a pod.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unfit {
    NotReady,
    Cordoned,
    Taint { key: String, value: String },
    Selector,
    AntiAffinity,
    UnsupportedTopology(String),
    Resources(ShortfallKey),
}

/// `Shortfall` with an order, to count nodes by reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShortfallKey {
    pub pods: bool,
    pub cpu: bool,
    pub memory: bool,
}

impl Unfit {
    /// The reasons as kubectl lists them (one node may be short of more
    /// than one resource).
    pub fn reasons(&self) -> Vec<String> {
        match self {
            Unfit::NotReady => vec!["node(s) were not ready".into()],
            Unfit::Cordoned => vec!["node(s) were unschedulable".into()],
            Unfit::Taint { key, value } => {
                vec![format!("node(s) had untolerated taint {{{key}: {value}}}")]
            }
            Unfit::Selector => vec!["node(s) didn't match Pod's node affinity/selector".into()],
            Unfit::AntiAffinity => vec!["node(s) didn't match pod anti-affinity rules".into()],
            Unfit::UnsupportedTopology(key) => vec![format!(
                "node(s) can't evaluate pod anti-affinity on topologyKey {key:?} (only {HOSTNAME_LABEL} is supported)"
            )],
            Unfit::Resources(s) => {
                let mut out = Vec::new();
                if s.pods {
                    out.push("Too many pods".into());
                }
                if s.cpu {
                    out.push("Insufficient cpu".into());
                }
                if s.memory {
                    out.push("Insufficient memory".into());
                }
                out
            }
        }
    }
}

impl fmt::Display for Unfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reasons().join(", "))
    }
}

/// Every filter, cheapest first.
pub fn filter(pod: &PodInfo, node: &NodeInfo) -> Result<(), Unfit> {
    node_condition(node)?;
    fits_resources(pod, node)?;
    tolerates_taints(pod, node)?;
    matches_node_selector(pod, node)?;
    anti_affinity(pod, node)
}

pub fn node_condition(node: &NodeInfo) -> Result<(), Unfit> {
    if !node.ready {
        return Err(Unfit::NotReady);
    }
    if node.cordoned {
        return Err(Unfit::Cordoned);
    }
    Ok(())
}

pub fn fits_resources(pod: &PodInfo, node: &NodeInfo) -> Result<(), Unfit> {
    let Shortfall { cpu, memory, pods } = pod.requests.shortfall(node.used, node.allocatable);
    if cpu || memory || pods {
        return Err(Unfit::Resources(ShortfallKey { pods, cpu, memory }));
    }
    Ok(())
}

/// NoSchedule and NoExecute taints keep out pods that do not tolerate
/// them; PreferNoSchedule only advises.
pub fn tolerates_taints(pod: &PodInfo, node: &NodeInfo) -> Result<(), Unfit> {
    for taint in &node.taints {
        if taint.effect == "PreferNoSchedule" {
            continue;
        }
        if !pod.tolerations.iter().any(|t| tolerates(t, taint)) {
            return Err(Unfit::Taint {
                key: taint.key.clone(),
                value: taint.value.clone(),
            });
        }
    }
    Ok(())
}

pub fn tolerates(t: &pb::Toleration, taint: &pb::Taint) -> bool {
    if !t.effect.is_empty() && t.effect != taint.effect {
        return false;
    }
    match t.operator.as_str() {
        "Exists" => t.key.is_empty() || t.key == taint.key,
        // Equal is the default operator.
        _ => t.key == taint.key && t.value == taint.value,
    }
}

/// nodeSelector and required node affinity: the node must match both.
pub fn matches_node_selector(pod: &PodInfo, node: &NodeInfo) -> Result<(), Unfit> {
    let selector_ok = pod
        .node_selector
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v));
    let affinity_ok = pod.node_affinity.as_ref().is_none_or(|sel| {
        // Terms are ORed; a selector with no terms matches nothing.
        sel.node_selector_terms
            .iter()
            .any(|term| term_matches(term, &node.name, &node.labels))
    });
    if selector_ok && affinity_ok {
        Ok(())
    } else {
        Err(Unfit::Selector)
    }
}

fn term_matches(
    term: &pb::NodeSelectorTerm,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    if term.match_expressions.is_empty() && term.match_fields.is_empty() {
        return false;
    }
    term.match_expressions
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && term
            .match_fields
            .iter()
            .all(|r| r.key == "metadata.name" && requirement_matches(r, Some(name)))
}

fn requirement_matches(r: &pb::NodeSelectorRequirement, value: Option<&str>) -> bool {
    let number = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| r.values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !r.values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(number), r.values.first().and_then(|x| number(x))), (Some(v), Some(x)) if v > x)
        }
        "Lt" => {
            matches!((value.and_then(number), r.values.first().and_then(|x| number(x))), (Some(v), Some(x)) if v < x)
        }
        _ => false,
    }
}

/// Required pod anti-affinity on the node (hostname topology), both ways:
/// the pod's terms against the pods there, and their terms against it.
pub fn anti_affinity(pod: &PodInfo, node: &NodeInfo) -> Result<(), Unfit> {
    for term in &pod.anti_affinity {
        if term.topology_key != HOSTNAME_LABEL {
            return Err(Unfit::UnsupportedTopology(term.topology_key.clone()));
        }
        if node
            .pods
            .values()
            .any(|other| term.matches(&other.namespace, &other.labels))
        {
            return Err(Unfit::AntiAffinity);
        }
    }
    if node.with_anti_affinity > 0 {
        let refused = node.pods.values().any(|other| {
            other
                .anti_affinity
                .iter()
                .any(|t| t.topology_key == HOSTNAME_LABEL && t.matches(&pod.namespace, &pod.labels))
        });
        if refused {
            return Err(Unfit::AntiAffinity);
        }
    }
    Ok(())
}

/// Counts of the pod's workload, for the spread scores.
#[derive(Clone, Copy, Debug, Default)]
pub struct Spread {
    pub on_node: u32,
    pub in_zone: u32,
    /// The largest counts among the candidate nodes.
    pub max_on_node: u32,
    pub max_in_zone: u32,
}

/// The weighted sum of every score, each 0 to 100.
pub fn score(config: &SchedulerConfig, pod: &PodInfo, node: &NodeInfo, spread: Spread) -> u64 {
    let w = &config.weights;
    let (cpu, mem) = fractions_after(pod, node);
    let resources = match config.scoring_strategy {
        Strategy::LeastAllocated => (200.0 - (cpu + mem) * 100.0) / 2.0,
        Strategy::MostAllocated => (cpu + mem) * 100.0 / 2.0,
    };
    let balanced = 100.0 - (cpu - mem).abs() * 100.0;
    let spread_score = |count: u32, max: u32| {
        if max == 0 {
            100
        } else {
            u64::from(max - count.min(max)) * 100 / u64::from(max)
        }
    };
    u64::from(w.resources) * resources.clamp(0.0, 100.0) as u64
        + u64::from(w.balanced) * balanced.clamp(0.0, 100.0) as u64
        + u64::from(w.node_spread) * spread_score(spread.on_node, spread.max_on_node)
        + u64::from(w.zone_spread) * spread_score(spread.in_zone, spread.max_in_zone)
}

/// The node's cpu and memory in use once the pod is on it, as fractions
/// of allocatable (a resource the node does not offer counts as full).
fn fractions_after(pod: &PodInfo, node: &NodeInfo) -> (f64, f64) {
    let frac = |used: u64, want: u64, cap: u64| {
        if cap == 0 {
            1.0
        } else {
            (used.saturating_add(want) as f64 / cap as f64).min(1.0)
        }
    };
    (
        frac(
            node.used.cpu_millis,
            pod.requests.cpu_millis,
            node.allocatable.cpu_millis,
        ),
        frac(
            node.used.memory_bytes,
            pod.requests.memory_bytes,
            node.allocatable.memory_bytes,
        ),
    )
}

/// The workload counts of a pod on a node.
pub fn spread_counts(
    pod: &PodInfo,
    node: &NodeInfo,
    mut zone_count: impl FnMut(Workload, &Arc<str>) -> u32,
) -> (u32, u32) {
    let Some(w) = pod.workload else {
        return (0, 0);
    };
    let on_node = node.workload_count(w);
    let in_zone = node.zone.as_ref().map_or(0, |z| zone_count(w, z));
    (on_node, in_zone)
}

#[cfg(test)]
mod tests {

    use berth_api::resources::Resources;
    use berth_api::selector::LabelSelector;

    use super::*;
    use crate::cache::AntiAffinityTerm;

    /// Name, node selector, required node affinity, fits.
    type SelectorCase = (
        &'static str,
        BTreeMap<String, String>,
        Option<pb::NodeSelector>,
        bool,
    );
    /// Name, the pod's terms, the pods on the node, the verdict.
    type AntiAffinityCase = (
        &'static str,
        Vec<AntiAffinityTerm>,
        Vec<Arc<PodInfo>>,
        Result<(), Unfit>,
    );

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod() -> PodInfo {
        PodInfo {
            key: "default/p".into(),
            namespace: "default".into(),
            uid: "u".into(),
            labels: labels(&[("app", "web")]),
            requests: Resources {
                cpu_millis: 500,
                memory_bytes: 1 << 30,
                pods: 1,
            },
            node_selector: BTreeMap::new(),
            node_affinity: None,
            tolerations: vec![],
            anti_affinity: vec![],
            workload: None,
        }
    }

    fn node() -> NodeInfo {
        NodeInfo {
            name: "n1".into(),
            labels: labels(&[("disk", "ssd"), ("cores", "8")]),
            allocatable: Resources {
                cpu_millis: 4000,
                memory_bytes: 8 << 30,
                pods: 10,
            },
            ready: true,
            ..Default::default()
        }
    }

    fn taint(key: &str, value: &str, effect: &str) -> pb::Taint {
        pb::Taint {
            key: key.into(),
            value: value.into(),
            effect: effect.into(),
            ..Default::default()
        }
    }

    fn toleration(key: &str, op: &str, value: &str, effect: &str) -> pb::Toleration {
        pb::Toleration {
            key: key.into(),
            operator: op.into(),
            value: value.into(),
            effect: effect.into(),
            toleration_seconds: None,
        }
    }

    fn used(cpu: u64, mem: u64, pods: u64) -> Resources {
        Resources {
            cpu_millis: cpu,
            memory_bytes: mem,
            pods,
        }
    }

    #[test]
    fn node_condition_and_resources() {
        let short = |pods, cpu, memory| Err(Unfit::Resources(ShortfallKey { pods, cpu, memory }));
        let cases: Vec<(&str, NodeInfo, Result<(), Unfit>)> = vec![
            ("fits", node(), Ok(())),
            (
                "not ready",
                NodeInfo {
                    ready: false,
                    ..node()
                },
                Err(Unfit::NotReady),
            ),
            (
                "cordoned",
                NodeInfo {
                    cordoned: true,
                    ..node()
                },
                Err(Unfit::Cordoned),
            ),
            (
                "exactly full after",
                NodeInfo {
                    used: used(3500, 7 << 30, 9),
                    ..node()
                },
                Ok(()),
            ),
            (
                "cpu short",
                NodeInfo {
                    used: used(3600, 0, 0),
                    ..node()
                },
                short(false, true, false),
            ),
            (
                "memory short",
                NodeInfo {
                    used: used(0, 7 << 30 | 1, 0),
                    ..node()
                },
                short(false, false, true),
            ),
            (
                "pods full",
                NodeInfo {
                    used: used(0, 0, 10),
                    ..node()
                },
                short(true, false, false),
            ),
            (
                "everything short",
                NodeInfo {
                    used: used(4000, 8 << 30, 10),
                    ..node()
                },
                short(true, true, true),
            ),
            (
                "no allocatable at all",
                NodeInfo {
                    allocatable: Resources::default(),
                    ..node()
                },
                short(true, true, true),
            ),
        ];
        for (name, n, want) in cases {
            assert_eq!(filter(&pod(), &n), want, "{name}");
        }
    }

    #[test]
    fn taints_and_tolerations() {
        let cases: Vec<(&str, Vec<pb::Taint>, Vec<pb::Toleration>, bool)> = vec![
            ("no taints", vec![], vec![], true),
            (
                "NoSchedule untolerated",
                vec![taint("gpu", "yes", "NoSchedule")],
                vec![],
                false,
            ),
            (
                "NoExecute untolerated",
                vec![taint("gpu", "yes", "NoExecute")],
                vec![],
                false,
            ),
            (
                "PreferNoSchedule only advises",
                vec![taint("gpu", "yes", "PreferNoSchedule")],
                vec![],
                true,
            ),
            (
                "Equal match",
                vec![taint("gpu", "yes", "NoSchedule")],
                vec![toleration("gpu", "Equal", "yes", "NoSchedule")],
                true,
            ),
            (
                "Equal is the default operator",
                vec![taint("gpu", "yes", "NoSchedule")],
                vec![toleration("gpu", "", "yes", "")],
                true,
            ),
            (
                "Equal wrong value",
                vec![taint("gpu", "yes", "NoSchedule")],
                vec![toleration("gpu", "Equal", "no", "NoSchedule")],
                false,
            ),
            (
                "Exists on the key",
                vec![taint("gpu", "yes", "NoSchedule")],
                vec![toleration("gpu", "Exists", "", "")],
                true,
            ),
            (
                "Exists without key tolerates all",
                vec![taint("a", "", "NoSchedule"), taint("b", "", "NoExecute")],
                vec![toleration("", "Exists", "", "")],
                true,
            ),
            (
                "wrong effect",
                vec![taint("gpu", "yes", "NoExecute")],
                vec![toleration("gpu", "Exists", "", "NoSchedule")],
                false,
            ),
            (
                "one of two tolerated",
                vec![taint("a", "", "NoSchedule"), taint("b", "", "NoSchedule")],
                vec![toleration("a", "Exists", "", "")],
                false,
            ),
        ];
        for (name, taints, tolerations, fits) in cases {
            let n = NodeInfo { taints, ..node() };
            let p = PodInfo {
                tolerations,
                ..pod()
            };
            assert_eq!(filter(&p, &n).is_ok(), fits, "{name}");
        }
        let n = NodeInfo {
            taints: vec![taint("dedicated", "gpu", "NoSchedule")],
            ..node()
        };
        assert_eq!(
            filter(&pod(), &n).unwrap_err().to_string(),
            "node(s) had untolerated taint {dedicated: gpu}"
        );
    }

    #[test]
    fn node_selector_and_required_affinity() {
        let req = |key: &str, op: &str, values: &[&str]| pb::NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.iter().map(|s| s.to_string()).collect(),
        };
        let affinity = |terms: Vec<Vec<pb::NodeSelectorRequirement>>| {
            Some(pb::NodeSelector {
                node_selector_terms: terms
                    .into_iter()
                    .map(|e| pb::NodeSelectorTerm {
                        match_expressions: e,
                        match_fields: vec![],
                    })
                    .collect(),
            })
        };
        let cases: Vec<SelectorCase> = vec![
            ("nothing asked", labels(&[]), None, true),
            ("selector matches", labels(&[("disk", "ssd")]), None, true),
            ("selector differs", labels(&[("disk", "hdd")]), None, false),
            (
                "selector label missing",
                labels(&[("zone", "a")]),
                None,
                false,
            ),
            (
                "In",
                labels(&[]),
                affinity(vec![vec![req("disk", "In", &["hdd", "ssd"])]]),
                true,
            ),
            (
                "NotIn",
                labels(&[]),
                affinity(vec![vec![req("disk", "NotIn", &["ssd"])]]),
                false,
            ),
            (
                "NotIn absent label",
                labels(&[]),
                affinity(vec![vec![req("gpu", "NotIn", &["x"])]]),
                true,
            ),
            (
                "Exists",
                labels(&[]),
                affinity(vec![vec![req("disk", "Exists", &[])]]),
                true,
            ),
            (
                "DoesNotExist",
                labels(&[]),
                affinity(vec![vec![req("disk", "DoesNotExist", &[])]]),
                false,
            ),
            (
                "Gt",
                labels(&[]),
                affinity(vec![vec![req("cores", "Gt", &["4"])]]),
                true,
            ),
            (
                "Lt",
                labels(&[]),
                affinity(vec![vec![req("cores", "Lt", &["4"])]]),
                false,
            ),
            (
                "terms are ORed",
                labels(&[]),
                affinity(vec![
                    vec![req("disk", "In", &["hdd"])],
                    vec![req("cores", "In", &["8"])],
                ]),
                true,
            ),
            (
                "expressions are ANDed",
                labels(&[]),
                affinity(vec![vec![
                    req("disk", "In", &["ssd"]),
                    req("cores", "In", &["2"]),
                ]]),
                false,
            ),
            (
                "no terms match nothing",
                labels(&[]),
                affinity(vec![]),
                false,
            ),
            (
                "both selector and affinity",
                labels(&[("disk", "ssd")]),
                affinity(vec![vec![req("cores", "In", &["2"])]]),
                false,
            ),
        ];
        for (name, node_selector, node_affinity, fits) in cases {
            let p = PodInfo {
                node_selector,
                node_affinity,
                ..pod()
            };
            assert_eq!(filter(&p, &node()).is_ok(), fits, "{name}");
        }
        let by_name = Some(pb::NodeSelector {
            node_selector_terms: vec![pb::NodeSelectorTerm {
                match_expressions: vec![],
                match_fields: vec![req("metadata.name", "In", &["n1"])],
            }],
        });
        assert!(filter(
            &PodInfo {
                node_affinity: by_name,
                ..pod()
            },
            &node()
        )
        .is_ok());
    }

    #[test]
    fn anti_affinity_on_hostname_both_ways() {
        let term = |sel: &str, key: &str| AntiAffinityTerm {
            selector: LabelSelector::parse(sel).unwrap(),
            namespaces: vec!["default".into()],
            topology_key: key.into(),
        };
        let other = |labels_: &[(&str, &str)], ns: &str, terms: Vec<AntiAffinityTerm>| {
            Arc::new(PodInfo {
                key: format!("{ns}/o").into(),
                namespace: ns.into(),
                labels: labels(labels_),
                anti_affinity: terms,
                requests: Resources::default(),
                ..pod()
            })
        };
        let cases: Vec<AntiAffinityCase> = vec![
            (
                "empty node",
                vec![term("app=web", HOSTNAME_LABEL)],
                vec![],
                Ok(()),
            ),
            (
                "matching pod there",
                vec![term("app=web", HOSTNAME_LABEL)],
                vec![other(&[("app", "web")], "default", vec![])],
                Err(Unfit::AntiAffinity),
            ),
            (
                "other labels there",
                vec![term("app=web", HOSTNAME_LABEL)],
                vec![other(&[("app", "db")], "default", vec![])],
                Ok(()),
            ),
            (
                "other namespace",
                vec![term("app=web", HOSTNAME_LABEL)],
                vec![other(&[("app", "web")], "prod", vec![])],
                Ok(()),
            ),
            (
                "the pod there refuses us",
                vec![],
                vec![other(
                    &[("app", "db")],
                    "default",
                    vec![term("app=web", HOSTNAME_LABEL)],
                )],
                Err(Unfit::AntiAffinity),
            ),
            (
                "zone topology is not supported",
                vec![term("app=web", "topology.kubernetes.io/zone")],
                vec![],
                Err(Unfit::UnsupportedTopology(
                    "topology.kubernetes.io/zone".into(),
                )),
            ),
        ];
        for (name, terms, others, want) in cases {
            let mut n = node();
            for o in others {
                n.add_pod(o);
            }
            let p = PodInfo {
                anti_affinity: terms,
                ..pod()
            };
            assert_eq!(filter(&p, &n), want, "{name}");
        }
    }

    #[test]
    fn scores() {
        let least = SchedulerConfig {
            weights: crate::config::Weights {
                resources: 1,
                balanced: 0,
                node_spread: 0,
                zone_spread: 0,
            },
            ..Default::default()
        };
        let most = SchedulerConfig {
            scoring_strategy: Strategy::MostAllocated,
            ..least.clone()
        };
        let balanced = SchedulerConfig {
            weights: crate::config::Weights {
                resources: 0,
                balanced: 1,
                node_spread: 0,
                zone_spread: 0,
            },
            ..Default::default()
        };
        let spread = SchedulerConfig {
            weights: crate::config::Weights {
                resources: 0,
                balanced: 0,
                node_spread: 1,
                zone_spread: 1,
            },
            ..Default::default()
        };
        let empty = node();
        let busy = NodeInfo {
            used: used(3000, 6 << 30, 3),
            ..node()
        };
        let cpu_heavy = NodeInfo {
            used: used(3500, 0, 1),
            ..node()
        };
        let s = Spread::default();
        // (config, node, score): pod asks 500m of 4000m and 1Gi of 8Gi.
        let cases: Vec<(&str, &SchedulerConfig, &NodeInfo, Spread, u64)> = vec![
            ("least: empty node", &least, &empty, s, 87),
            ("least: busy node", &least, &busy, s, 12),
            ("most: empty node", &most, &empty, s, 12),
            ("most: busy node", &most, &busy, s, 87),
            ("balanced: even use", &balanced, &busy, s, 100),
            ("balanced: cpu-heavy", &balanced, &cpu_heavy, s, 12),
            (
                "spread: none of the workload anywhere",
                &spread,
                &empty,
                s,
                200,
            ),
            (
                "spread: node holds the most, zone the least",
                &spread,
                &empty,
                Spread {
                    on_node: 4,
                    max_on_node: 4,
                    in_zone: 0,
                    max_in_zone: 2,
                },
                100,
            ),
            (
                "spread: half the max on both",
                &spread,
                &empty,
                Spread {
                    on_node: 1,
                    max_on_node: 2,
                    in_zone: 2,
                    max_in_zone: 4,
                },
                100,
            ),
        ];
        for (name, config, n, spread, want) in cases {
            assert_eq!(score(config, &pod(), n, spread), want, "{name}");
        }
    }

    #[test]
    fn spread_counts_follow_the_workload() {
        let mut n = NodeInfo {
            zone: Some("a".into()),
            ..node()
        };
        let rs = crate::cache::workload_id("rs-1");
        n.per_workload = [(rs, 3)].into_iter().collect();
        let p = PodInfo {
            workload: Some(rs),
            ..pod()
        };
        let counts = spread_counts(&p, &n, |w, z| if w == rs && &**z == "a" { 5 } else { 0 });
        assert_eq!(counts, (3, 5));
        assert_eq!(
            spread_counts(&pod(), &n, |_, _| 9),
            (0, 0),
            "no workload, no spread"
        );
    }
}
