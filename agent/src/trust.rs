//! What the agent accepts from the store before it acts on it. The API
//! server validates every object, but the agent runs as root and turns
//! names into paths, nft rules and routes: an object written around the
//! API (a controller's raw store, a restored backup, a bug) must not get
//! the agent to remove a directory outside its own, inject rules, or route
//! a node's traffic anywhere. Refused objects are skipped, logged and
//! counted (`berth_agent_refused_objects_total{kind}`).

use berth_api::names::is_dns_label;
use berth_api::names::is_dns_subdomain;
use berth_api::pb;
use berth_api::Object;
use ipnet::Ipv4Net;

/// Why `pod` is not run, if it is not: its uid, namespace, name and
/// container names become paths, cgroups and namespace names.
pub fn pod_refusal(pod: &pb::Pod) -> Option<String> {
    let uid = pod.meta().map(|m| m.uid.as_str()).unwrap_or_default();
    if !is_uid(uid) {
        return Some(format!("uid {uid:?} is not a UUID"));
    }
    if !is_dns_label(pod.namespace()) || !is_dns_subdomain(pod.name()) {
        return Some("its namespace or name is not a DNS name".into());
    }
    let containers = pod.spec.iter().flat_map(|s| &s.containers);
    let mut names = containers.map(|c| c.name.as_str());
    names
        .find(|n| !is_dns_label(n))
        .map(|bad| format!("container name {bad:?} is not a DNS label"))
}

/// Why `svc` gets no rules or DNS name, if it does not: its namespace and
/// name become nft chain names and DNS names.
pub fn service_refusal(svc: &pb::Service) -> Option<String> {
    (!is_dns_label(svc.namespace()) || !is_dns_label(svc.name()))
        .then(|| "its namespace or name is not a DNS label".to_string())
}

/// Why the pod CIDR `cidr` of a node is not routed (or used for this
/// node's pods), if it is not: it must lie inside the cluster's.
pub fn pod_cidr_refusal(cidr: &Ipv4Net, cluster_cidr: &Ipv4Net) -> Option<String> {
    (!cluster_cidr.contains(cidr))
        .then(|| format!("pod CIDR {cidr} is outside the cluster CIDR {cluster_cidr}"))
}

/// Logs and counts a refusal of the object of `kind` that `what` names;
/// true if refused.
pub fn refused(kind: &'static str, what: impl FnOnce() -> String, refusal: Option<String>) -> bool {
    let Some(why) = refusal else {
        return false;
    };
    tracing::warn!(kind, object = what(), reason = %why, "refusing an object the API would not have accepted");
    metrics::counter!("berth_agent_refused_objects_total", "kind" => kind).increment(1);
    true
}

/// A lowercase hyphenated UUID, as the API server makes them.
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    let lengths = [8, 4, 4, 4, 12];
    groups.len() == lengths.len()
        && groups.iter().zip(lengths).all(|(g, n)| {
            g.len() == n
                && g.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b6f3c2e-9d4a-4c1e-8f2a-1234567890ab";

    fn pod(uid: &str, name: &str, container: &str) -> pb::Pod {
        let mut p = pb::Pod::default();
        let m = p.meta_mut();
        (m.uid, m.name, m.namespace) = (uid.into(), name.into(), "default".into());
        p.spec = Some(pb::PodSpec {
            containers: vec![pb::Container {
                name: container.into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        p
    }

    #[test]
    fn pods_whose_names_would_leave_their_directory_are_refused() {
        assert_eq!(pod_refusal(&pod(UID, "web-1.a", "main")), None);
        for (uid, name, container) in [
            ("../../etc", "web", "main"),
            ("", "web", "main"),
            (&UID.to_uppercase(), "web", "main"),
            ("0b6f3c2e-9d4a-4c1e-8f2a-1234567890a/", "web", "main"),
            (UID, "../web", "main"),
            (UID, "web", "../main"),
            (UID, "web", "a/b"),
        ] {
            assert!(
                pod_refusal(&pod(uid, name, container)).is_some(),
                "{uid} {name} {container}"
            );
        }
    }

    #[test]
    fn services_named_with_nft_syntax_and_foreign_cidrs_are_refused() {
        let mut svc = pb::Service::default();
        (svc.meta_mut().name, svc.meta_mut().namespace) = ("web".into(), "default".into());
        assert_eq!(service_refusal(&svc), None);
        for name in ["x { }; flush ruleset", "a.b", "web\n", ""] {
            svc.meta_mut().name = name.into();
            assert!(service_refusal(&svc).is_some(), "{name:?}");
        }
        let cluster: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        assert_eq!(
            pod_cidr_refusal(&"10.244.3.0/24".parse().unwrap(), &cluster),
            None
        );
        for cidr in ["0.0.0.0/0", "10.0.0.0/8", "192.168.1.0/24"] {
            assert!(
                pod_cidr_refusal(&cidr.parse().unwrap(), &cluster).is_some(),
                "{cidr}"
            );
        }
    }
}
