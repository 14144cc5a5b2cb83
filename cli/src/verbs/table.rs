//! kubectl-style tables: one row per object, columns padded to fit.

use std::time::SystemTime;

use berth_api::pb;
use berth_api::Object;

/// Columns of a kind's table; `wide` adds the `-o wide` ones.
pub trait Row: Object {
    fn headers(wide: bool) -> Vec<&'static str>;
    fn row(&self, wide: bool) -> Vec<String>;
}

pub fn age(timestamp: &str) -> String {
    let Ok(t) = humantime::parse_rfc3339(timestamp) else {
        return "<unknown>".into();
    };
    let secs = SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn created<K: Object>(o: &K) -> String {
    age(o.meta().map_or("", |m| m.creation_timestamp.as_str()))
}

fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s.to_string()
    }
}

fn labels_text(l: &std::collections::BTreeMap<String, String>) -> String {
    if l.is_empty() {
        return "<none>".into();
    }
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Prints rows under headers with kubectl's spacing.
pub fn print(headers: &[&str], rows: &[Vec<String>], with_header: bool) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.len());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    if with_header {
        line(headers.to_vec());
    }
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

impl Row for pb::Pod {
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"];
        if wide {
            h.extend(["IP", "NODE"]);
        }
        h
    }

    fn row(&self, wide: bool) -> Vec<String> {
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        // As kubectl: sidecars count among the ready containers.
        let sidecars: Vec<&str> = spec
            .init_containers
            .iter()
            .filter(|c| berth_api::resources::is_sidecar(c))
            .map(|c| c.name.as_str())
            .collect();
        let ready = (status.container_statuses.iter())
            .chain(
                (status.init_container_statuses.iter())
                    .filter(|c| sidecars.contains(&c.name.as_str())),
            )
            .filter(|c| c.ready)
            .count();
        let restarts: i32 = (status.init_container_statuses.iter())
            .chain(&status.container_statuses)
            .map(|c| c.restart_count)
            .sum();
        // kubectl shows a waiting or terminated container's reason instead
        // of the phase, and while init containers run, how far they are.
        let reason = init_reason(&status, &sidecars, spec.init_containers.len()).or_else(|| {
            status
                .container_statuses
                .iter()
                .filter_map(|c| c.state.as_ref())
                .find_map(|s| {
                    s.waiting
                        .as_ref()
                        .map(|w| w.reason.clone())
                        .or_else(|| s.terminated.as_ref().map(|t| t.reason.clone()))
                })
                .filter(|r| !r.is_empty())
        });
        let phase = if !status.reason.is_empty() {
            status.reason.clone()
        } else {
            reason.unwrap_or_else(|| or_none(&status.phase))
        };
        let mut r = vec![
            self.name().to_string(),
            format!("{ready}/{}", spec.containers.len() + sidecars.len()),
            phase,
            restarts.to_string(),
            created(self),
        ];
        if wide {
            r.push(or_none(&status.pod_ip));
            r.push(or_none(&spec.node_name));
        }
        r
    }
}

/// kubectl's STATUS while init containers have not all succeeded (a
/// sidecar: started): the first unfinished one's failure (`Init:Error`),
/// waiting reason (`Init:CrashLoopBackOff`), or else how many are done
/// (`Init:1/3`).
fn init_reason(status: &pb::PodStatus, sidecars: &[&str], count: usize) -> Option<String> {
    let initialized =
        (status.conditions.iter()).any(|c| c.r#type == "Initialized" && c.status == "True");
    if initialized {
        return None;
    }
    for (i, c) in status.init_container_statuses.iter().enumerate() {
        if sidecars.contains(&c.name.as_str()) && c.started == Some(true) {
            continue;
        }
        let state = c.state.clone().unwrap_or_default();
        if let Some(t) = &state.terminated {
            if t.exit_code == 0 {
                continue;
            }
            return Some(match (t.reason.as_str(), t.signal) {
                ("", 0) => format!("Init:ExitCode:{}", t.exit_code),
                ("", signal) => format!("Init:Signal:{signal}"),
                (reason, _) => format!("Init:{reason}"),
            });
        }
        return Some(match state.waiting {
            Some(w) if !w.reason.is_empty() && w.reason != "PodInitializing" => {
                format!("Init:{}", w.reason)
            }
            _ => format!("Init:{i}/{count}"),
        });
    }
    None
}

fn node_ready(n: &pb::Node) -> String {
    let status = n.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.r#type == "Ready")
        .map_or("Unknown", |c| {
            if c.status == "True" {
                "Ready"
            } else {
                "NotReady"
            }
        });
    if n.spec.as_ref().is_some_and(|s| s.unschedulable) {
        format!("{ready},SchedulingDisabled")
    } else {
        ready.to_string()
    }
}

impl Row for pb::Node {
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["NAME", "STATUS", "AGE"];
        if wide {
            h.extend(["INTERNAL-IP", "CPU", "MEMORY", "PODS", "POD-CIDR"]);
        }
        h
    }

    fn row(&self, wide: bool) -> Vec<String> {
        let mut r = vec![self.name().to_string(), node_ready(self), created(self)];
        if wide {
            let status = self.status.clone().unwrap_or_default();
            let ip = status
                .addresses
                .iter()
                .find(|a| a.r#type == "InternalIP")
                .map_or(String::new(), |a| a.address.clone());
            let alloc = |k: &str| status.allocatable.get(k).cloned().unwrap_or_default();
            r.push(or_none(&ip));
            r.push(or_none(&alloc("cpu")));
            r.push(or_none(&alloc("memory")));
            r.push(or_none(&alloc("pods")));
            r.push(or_none(
                self.spec.as_ref().map_or("", |s| s.pod_cidr.as_str()),
            ));
        }
        r
    }
}

impl Row for pb::Deployment {
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"];
        if wide {
            h.extend(["CONTAINERS", "SELECTOR"]);
        }
        h
    }

    fn row(&self, wide: bool) -> Vec<String> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        let mut r = vec![
            self.name().to_string(),
            format!("{}/{}", st.ready_replicas, spec.replicas.unwrap_or(1)),
            st.updated_replicas.to_string(),
            st.available_replicas.to_string(),
            created(self),
        ];
        if wide {
            let containers = spec
                .template
                .and_then(|t| t.spec)
                .map(|s| {
                    s.containers
                        .iter()
                        .map(|c| c.name.clone())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            r.push(or_none(&containers));
            r.push(labels_text(&spec.selector.unwrap_or_default().match_labels));
        }
        r
    }
}

impl Row for pb::Service {
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "AGE"];
        if wide {
            h.push("SELECTOR");
        }
        h
    }

    fn row(&self, wide: bool) -> Vec<String> {
        let spec = self.spec.clone().unwrap_or_default();
        let ports = spec
            .ports
            .iter()
            .map(|p| {
                if p.node_port != 0 {
                    format!("{}:{}/{}", p.port, p.node_port, p.protocol)
                } else {
                    format!("{}/{}", p.port, p.protocol)
                }
            })
            .collect::<Vec<_>>()
            .join(",");
        let mut r = vec![
            self.name().to_string(),
            spec.r#type.clone(),
            or_none(&spec.cluster_ip),
            or_none(&ports),
            created(self),
        ];
        if wide {
            r.push(labels_text(&spec.selector));
        }
        r
    }
}

impl Row for pb::Endpoints {
    fn headers(_wide: bool) -> Vec<&'static str> {
        vec!["NAME", "ENDPOINTS", "AGE"]
    }

    fn row(&self, _wide: bool) -> Vec<String> {
        let mut eps = Vec::new();
        for s in &self.subsets {
            for a in &s.addresses {
                for p in &s.ports {
                    eps.push(format!("{}:{}", a.ip, p.port));
                }
            }
        }
        let shown = if eps.len() > 3 {
            format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
        } else {
            eps.join(",")
        };
        vec![self.name().to_string(), or_none(&shown), created(self)]
    }
}

impl Row for pb::ConfigMap {
    fn headers(_wide: bool) -> Vec<&'static str> {
        vec!["NAME", "DATA", "AGE"]
    }

    fn row(&self, _wide: bool) -> Vec<String> {
        vec![
            self.name().to_string(),
            (self.data.len() + self.binary_data.len()).to_string(),
            created(self),
        ]
    }
}

impl Row for pb::Secret {
    fn headers(_wide: bool) -> Vec<&'static str> {
        vec!["NAME", "TYPE", "DATA", "AGE"]
    }

    fn row(&self, _wide: bool) -> Vec<String> {
        vec![
            self.name().to_string(),
            self.r#type.clone(),
            self.data.len().to_string(),
            created(self),
        ]
    }
}

impl Row for pb::Namespace {
    fn headers(_wide: bool) -> Vec<&'static str> {
        vec!["NAME", "STATUS", "AGE"]
    }

    fn row(&self, _wide: bool) -> Vec<String> {
        let phase = self.status.as_ref().map_or("", |s| s.phase.as_str());
        vec![self.name().to_string(), or_none(phase), created(self)]
    }
}

impl Row for pb::Lease {
    fn headers(_wide: bool) -> Vec<&'static str> {
        vec!["NAME", "HOLDER", "AGE"]
    }

    fn row(&self, _wide: bool) -> Vec<String> {
        let holder = self
            .spec
            .as_ref()
            .map_or("", |s| s.holder_identity.as_str());
        vec![self.name().to_string(), or_none(holder), created(self)]
    }
}

impl Row for pb::Role {
    fn headers(_wide: bool) -> Vec<&'static str> {
        vec!["NAME", "CREATED AT"]
    }

    fn row(&self, _wide: bool) -> Vec<String> {
        vec![self.name().to_string(), creation_timestamp(self)]
    }
}

impl Row for pb::ClusterRole {
    fn headers(_wide: bool) -> Vec<&'static str> {
        vec!["NAME", "CREATED AT"]
    }

    fn row(&self, _wide: bool) -> Vec<String> {
        vec![self.name().to_string(), creation_timestamp(self)]
    }
}

impl Row for pb::RoleBinding {
    fn headers(wide: bool) -> Vec<&'static str> {
        binding_headers(wide)
    }

    fn row(&self, wide: bool) -> Vec<String> {
        binding_row(self, self.role_ref.as_ref(), &self.subjects, wide)
    }
}

impl Row for pb::ClusterRoleBinding {
    fn headers(wide: bool) -> Vec<&'static str> {
        binding_headers(wide)
    }

    fn row(&self, wide: bool) -> Vec<String> {
        binding_row(self, self.role_ref.as_ref(), &self.subjects, wide)
    }
}

fn creation_timestamp(o: &impl Object) -> String {
    o.meta()
        .map_or(String::new(), |m| m.creation_timestamp.clone())
}

fn binding_headers(wide: bool) -> Vec<&'static str> {
    let mut h = vec!["NAME", "ROLE", "AGE"];
    if wide {
        h.extend(["USERS", "GROUPS", "SERVICEACCOUNTS"]);
    }
    h
}

/// kubectl's columns for a binding: ROLE is KIND/NAME.
fn binding_row(
    o: &impl Object,
    role_ref: Option<&pb::RoleRef>,
    subjects: &[pb::Subject],
    wide: bool,
) -> Vec<String> {
    let role = role_ref.map_or(String::new(), |r| format!("{}/{}", r.kind, r.name));
    let mut row = vec![o.name().to_string(), role, created(o)];
    if wide {
        let of = |kind: &str| {
            let names: Vec<String> = subjects
                .iter()
                .filter(|s| s.kind == kind)
                .map(|s| match kind {
                    "ServiceAccount" => format!("{}/{}", s.namespace, s.name),
                    _ => s.name.clone(),
                })
                .collect();
            names.join(", ")
        };
        row.extend([of("User"), of("Group"), of("ServiceAccount")]);
    }
    row
}
