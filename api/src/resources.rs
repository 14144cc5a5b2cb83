//! What pods ask of nodes and what nodes offer, in the units scheduling
//! compares: millicores, bytes and pod slots. Shared by the state
//! machine's bind rules and the scheduler, so that both count alike.

use std::ops::Add;
use std::ops::Sub;

use crate::pb;
use crate::quantity::Quantity;

/// The lease whose holder is the active scheduler; its
/// `spec.leaseTransitions` is the fencing epoch every bind carries.
pub const SCHEDULER_LEASE_NAME: &str = "berth-scheduler";

/// An amount of every resource scheduling accounts for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pods: u64,
}

impl Add for Resources {
    type Output = Resources;
    fn add(self, o: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(o.memory_bytes),
            pods: self.pods.saturating_add(o.pods),
        }
    }
}

impl Sub for Resources {
    type Output = Resources;
    fn sub(self, o: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(o.memory_bytes),
            pods: self.pods.saturating_sub(o.pods),
        }
    }
}

/// Which resources of a request do not fit in what is free.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shortfall {
    pub cpu: bool,
    pub memory: bool,
    pub pods: bool,
}

impl Shortfall {
    pub fn any(self) -> bool {
        self.cpu || self.memory || self.pods
    }

    /// "cpu, memory" in kubectl's words for what is short.
    pub fn describe(self) -> String {
        let mut parts = Vec::new();
        if self.pods {
            parts.push("Too many pods");
        }
        if self.cpu {
            parts.push("Insufficient cpu");
        }
        if self.memory {
            parts.push("Insufficient memory");
        }
        parts.join(", ")
    }
}

impl Resources {
    /// What `self` (a request) lacks when `used` of `allocatable` is taken.
    pub fn shortfall(self, used: Resources, allocatable: Resources) -> Shortfall {
        let over = |want: u64, used: u64, cap: u64| used.saturating_add(want) > cap;
        Shortfall {
            cpu: self.cpu_millis > 0
                && over(self.cpu_millis, used.cpu_millis, allocatable.cpu_millis),
            memory: self.memory_bytes > 0
                && over(
                    self.memory_bytes,
                    used.memory_bytes,
                    allocatable.memory_bytes,
                ),
            pods: over(self.pods, used.pods, allocatable.pods),
        }
    }
}

fn quantity(map: &std::collections::BTreeMap<String, String>, name: &str) -> Option<Quantity> {
    map.get(name).and_then(|q| Quantity::parse(q).ok())
}

fn clamp(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// One container's requests, its limit standing in for a request it does
/// not state (as in Kubernetes).
fn container_requests(c: &pb::Container) -> (u64, u64) {
    let Some(r) = &c.resources else {
        return (0, 0);
    };
    let get = |name| quantity(&r.requests, name).or_else(|| quantity(&r.limits, name));
    (
        get("cpu").map_or(0, |q| clamp(q.millis())),
        get("memory").map_or(0, |q| clamp(q.units())),
    )
}

/// Whether an init container is a native sidecar (`restartPolicy:
/// Always`): it keeps running beside the containers.
pub fn is_sidecar(c: &pb::Container) -> bool {
    c.restart_policy == "Always"
}

/// A pod's requests, as Kubernetes' effective requests: per resource, the
/// sum over its containers and sidecars, or what the init containers need
/// while one of them runs (itself and the sidecars started before it),
/// whichever is more; and one pod slot.
pub fn pod_requests(pod: &pb::Pod) -> Resources {
    let Some(spec) = &pod.spec else {
        return Resources {
            pods: 1,
            ..Default::default()
        };
    };
    let (mut cpu, mut memory) = (0u64, 0u64);
    let (mut sidecar_cpu, mut sidecar_memory) = (0u64, 0u64);
    for init in &spec.init_containers {
        let (c, m) = container_requests(init);
        let (c, m) = (
            sidecar_cpu.saturating_add(c),
            sidecar_memory.saturating_add(m),
        );
        if is_sidecar(init) {
            (sidecar_cpu, sidecar_memory) = (c, m);
        }
        cpu = cpu.max(c);
        memory = memory.max(m);
    }
    let (mut sum_cpu, mut sum_memory) = (sidecar_cpu, sidecar_memory);
    for (c, m) in spec.containers.iter().map(container_requests) {
        sum_cpu = sum_cpu.saturating_add(c);
        sum_memory = sum_memory.saturating_add(m);
    }
    cpu = cpu.max(sum_cpu);
    memory = memory.max(sum_memory);
    Resources {
        pods: 1,
        cpu_millis: cpu,
        memory_bytes: memory,
    }
}

/// What a node offers pods: `status.allocatable` (a missing resource is
/// none of it, as in Kubernetes).
pub fn node_allocatable(node: &pb::Node) -> Resources {
    let Some(status) = &node.status else {
        return Resources::default();
    };
    let a = &status.allocatable;
    Resources {
        cpu_millis: quantity(a, "cpu").map_or(0, |q| clamp(q.millis())),
        memory_bytes: quantity(a, "memory").map_or(0, |q| clamp(q.units())),
        pods: quantity(a, "pods").map_or(0, |q| clamp(q.units())),
    }
}

/// The status of a node that is Ready and offers `allocatable` (quantities
/// by resource name: cpu, memory, pods).
pub fn ready_status(allocatable: &[(&str, &str)]) -> pb::NodeStatus {
    pb::NodeStatus {
        allocatable: allocatable
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        conditions: vec![pb::Condition {
            r#type: "Ready".into(),
            status: "True".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A node whose Ready condition is True.
pub fn node_is_ready(node: &pb::Node) -> bool {
    node.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.r#type == "Ready" && c.status == "True")
    })
}

/// A cordoned node takes no new pods.
pub fn node_is_cordoned(node: &pb::Node) -> bool {
    node.spec.as_ref().is_some_and(|s| s.unschedulable)
}

/// A pod that has finished holds nothing on its node any more.
pub fn pod_is_terminal(pod: &pb::Pod) -> bool {
    pod.status
        .as_ref()
        .is_some_and(|s| s.phase == "Succeeded" || s.phase == "Failed")
}

/// The node a pod holds resources on, if any: bound and not finished.
pub fn pod_holds_node(pod: &pb::Pod) -> Option<&str> {
    let node = pod.spec.as_ref().map(|s| s.node_name.as_str())?;
    (!node.is_empty() && !pod_is_terminal(pod)).then_some(node)
}

/// A lease's fencing epoch.
pub fn lease_epoch(lease: &pb::Lease) -> u64 {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_transitions)
        .map_or(0, |t| t.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A container's requests and limits.
    type Container<'a> = (&'a [(&'a str, &'a str)], &'a [(&'a str, &'a str)]);

    fn pod(containers: &[Container<'_>]) -> pb::Pod {
        let to_map = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        pb::Pod {
            spec: Some(pb::PodSpec {
                containers: containers
                    .iter()
                    .map(|(req, lim)| pb::Container {
                        resources: Some(pb::ResourceRequirements {
                            requests: to_map(req),
                            limits: to_map(lim),
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn requests_sum_containers_and_fall_back_to_limits() {
        let cases: &[(&[Container<'_>], Resources)] = &[
            (
                &[],
                Resources {
                    cpu_millis: 0,
                    memory_bytes: 0,
                    pods: 1,
                },
            ),
            (
                &[(&[("cpu", "250m"), ("memory", "64Mi")], &[])],
                Resources {
                    cpu_millis: 250,
                    memory_bytes: 64 << 20,
                    pods: 1,
                },
            ),
            (
                &[
                    (&[("cpu", "1")], &[]),
                    (&[], &[("cpu", "500m"), ("memory", "1Gi")]),
                ],
                Resources {
                    cpu_millis: 1500,
                    memory_bytes: 1 << 30,
                    pods: 1,
                },
            ),
            (
                &[(&[("cpu", "100m")], &[("cpu", "2")])],
                Resources {
                    cpu_millis: 100,
                    memory_bytes: 0,
                    pods: 1,
                },
            ),
        ];
        for (containers, want) in cases {
            assert_eq!(pod_requests(&pod(containers)), *want, "{containers:?}");
        }
    }

    #[test]
    fn init_containers_count_as_their_largest_when_more_than_the_sum() {
        let mut p = pod(&[
            (&[("cpu", "200m"), ("memory", "64Mi")], &[]),
            (&[("cpu", "300m"), ("memory", "64Mi")], &[]),
        ]);
        let init = pod(&[
            (&[("cpu", "2")], &[]),
            (&[("memory", "100Mi")], &[]),
            (&[("cpu", "1"), ("memory", "32Mi")], &[]),
        ]);
        p.spec.as_mut().unwrap().init_containers = init.spec.unwrap().containers;
        assert_eq!(
            pod_requests(&p),
            Resources {
                cpu_millis: 2000,
                memory_bytes: 128 << 20,
                pods: 1,
            }
        );
    }

    #[test]
    fn sidecars_count_beside_the_containers_and_the_init_containers_after_them() {
        let mut p = pod(&[(&[("cpu", "500m")], &[])]);
        let init = pod(&[
            (&[("cpu", "1")], &[]),
            (&[("cpu", "200m")], &[]),
            (&[("cpu", "900m")], &[]),
        ]);
        let mut init = init.spec.unwrap().containers;
        init[1].restart_policy = "Always".into();
        p.spec.as_mut().unwrap().init_containers = init;
        // The last init container runs beside the sidecar: 1100m; the
        // containers with it: 700m; the first init container alone: 1000m.
        assert_eq!(pod_requests(&p).cpu_millis, 1100);
    }

    #[test]
    fn shortfall_names_what_is_short() {
        let cap = Resources {
            cpu_millis: 1000,
            memory_bytes: 1000,
            pods: 2,
        };
        let used = Resources {
            cpu_millis: 900,
            memory_bytes: 0,
            pods: 1,
        };
        let want = Resources {
            cpu_millis: 200,
            memory_bytes: 1000,
            pods: 1,
        };
        let s = want.shortfall(used, cap);
        assert_eq!(
            s,
            Shortfall {
                cpu: true,
                memory: false,
                pods: false
            }
        );
        assert_eq!(s.describe(), "Insufficient cpu");
        let full = Resources { pods: 2, ..used };
        assert!(want.shortfall(full, cap).pods);
        // Asking for nothing of a resource fits even a node that has none.
        let none = Resources {
            cpu_millis: 0,
            memory_bytes: 0,
            pods: 1,
        };
        assert!(!none
            .shortfall(
                Resources::default(),
                Resources {
                    pods: 1,
                    ..Default::default()
                }
            )
            .any());
    }
}
