//! The endpoints controller: the Endpoints object of every Service with a
//! selector lists the IPs of the pods it selects (Ready ones under
//! `addresses`, the others under `notReadyAddresses`) with the service's
//! ports resolved against each pod's container ports. Level-triggered on
//! every change of a service or a pod and every few seconds; a write only
//! when the subsets differ. The Endpoints object is owned by its Service,
//! so garbage collection removes it with the service. Services without a
//! selector are left alone: their Endpoints are the user's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_api::pb;
use berth_api::resources::pod_is_terminal;
use berth_api::Object;
use berth_api::Reason;
use berth_client::connect::Connector;
use berth_client::controller::Action;
use berth_client::controller::Controller;
use berth_client::election::LeaderState;
use berth_client::reflector;
use berth_client::reflector::Reflector;
use berth_client::ClientKind;

use super::deployments::is_ready;
use super::written;
use super::Context as Ctx;
use super::Error;
use super::LazyCaches;

const NAME: &str = "endpoints";
const RESYNC: Duration = Duration::from_secs(5);

pub async fn run(conn: Connector, caches: LazyCaches, mut leader: LeaderState) {
    let Some(caches) = caches.when_active(&mut leader).await else {
        return;
    };
    let services = caches.services.clone();
    Controller::new(NAME, caches.services.clone())
        .watches(caches.pods.clone(), move |p: &pb::Pod| {
            services_in(&services, p.namespace())
        })
        .reads(caches.endpoints.clone())
        .resync_every(RESYNC)
        .gated_by(leader)
        .run(reconcile, Arc::new(Ctx { conn, caches }))
        .await
}

/// A pod's old labels are not in its event, so a pod's change queues every
/// service of its namespace.
fn services_in(services: &Reflector<pb::Service>, namespace: &str) -> Vec<String> {
    services
        .all()
        .iter()
        .filter(|s| s.namespace() == namespace)
        .map(|s| reflector::key(&**s))
        .collect()
}

async fn reconcile(svc: Arc<pb::Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let Some(spec) = svc.spec.as_ref().filter(|s| !s.selector.is_empty()) else {
        return Ok(Action::AwaitChange);
    };
    let pods = ctx.caches.pods.all();
    let selected = pods.iter().filter(|p| {
        p.namespace() == svc.namespace()
            && p.meta().is_some_and(|m| {
                spec.selector
                    .iter()
                    .all(|(k, v)| m.labels.get(k) == Some(v))
            })
    });
    let subsets = subsets(spec, selected.map(|p| &**p));
    let existing = ctx
        .caches
        .endpoints
        .get(&reflector::key(&endpoints_of(&svc, Vec::new())));
    if existing.as_ref().is_some_and(|e| e.subsets == subsets) {
        return Ok(Action::AwaitChange);
    }
    let mut next = endpoints_of(&svc, subsets);
    let ch = ctx.conn.channel().await?;
    let (verb, result) = match &existing {
        Some(old) => {
            next.meta_mut().resource_version = old
                .meta()
                .map(|m| m.resource_version.clone())
                .unwrap_or_default();
            ("update", pb::Endpoints::update(ch, next).await)
        }
        None => ("create", pb::Endpoints::create(ch, next).await),
    };
    match written(
        NAME,
        verb,
        || format!("endpoints {}", reflector::key(&*svc)),
        result,
    ) {
        Ok(w) => ctx.caches.endpoints.assume(w),
        // A newer copy is on its way through the watch, which queues the
        // service again.
        Err(e) if matches!(e.reason(), Some(Reason::Conflict | Reason::AlreadyExists)) => {}
        Err(e) => return Err(e),
    }
    Ok(Action::AwaitChange)
}

/// The Endpoints object of `svc`, owned by it.
fn endpoints_of(svc: &pb::Service, subsets: Vec<pb::EndpointSubset>) -> pb::Endpoints {
    let m = svc.meta().cloned().unwrap_or_default();
    pb::Endpoints {
        metadata: Some(pb::ObjectMeta {
            name: m.name.clone(),
            namespace: m.namespace.clone(),
            labels: m.labels.clone(),
            owner_references: vec![pb::OwnerReference {
                api_version: <pb::Service as Object>::INFO.api_version.into(),
                kind: <pb::Service as Object>::INFO.kind.into(),
                name: m.name,
                uid: m.uid,
                controller: Some(true),
                block_owner_deletion: None,
            }],
            ..Default::default()
        }),
        subsets,
        ..Default::default()
    }
}

/// A service port on one pod: (name, target port, protocol).
type ResolvedPort = (String, i32, String);

/// Addresses grouped by the ports they resolve to (a named target port can
/// differ between pods), in a deterministic order so that an unchanged set
/// compares equal.
fn subsets<'a>(
    spec: &pb::ServiceSpec,
    pods: impl Iterator<Item = &'a pb::Pod>,
) -> Vec<pb::EndpointSubset> {
    let mut groups: BTreeMap<Vec<ResolvedPort>, (Vec<_>, Vec<_>)> = BTreeMap::new();
    for pod in pods {
        let Some(ip) = pod
            .status
            .as_ref()
            .map(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
        else {
            continue;
        };
        if pod_is_terminal(pod) || pod.meta().is_some_and(|m| !m.deletion_timestamp.is_empty()) {
            continue;
        }
        let Some(ports) = resolve_ports(spec, pod) else {
            continue;
        };
        let address = pb::EndpointAddress {
            ip,
            hostname: String::new(),
            node_name: Some(pod.node_name().to_string()).filter(|n| !n.is_empty()),
            target_ref: Some(pb::ObjectReference {
                kind: "Pod".into(),
                namespace: pod.namespace().into(),
                name: pod.name().into(),
                uid: pod.meta().map(|m| m.uid.clone()).unwrap_or_default(),
            }),
        };
        let (ready, not_ready) = groups.entry(ports).or_default();
        if is_ready(pod) {
            ready.push(address);
        } else {
            not_ready.push(address);
        }
    }
    groups
        .into_iter()
        .map(|(ports, (mut addresses, mut not_ready_addresses))| {
            addresses.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready_addresses.sort_by(|a, b| a.ip.cmp(&b.ip));
            pb::EndpointSubset {
                addresses,
                not_ready_addresses,
                ports: ports
                    .into_iter()
                    .map(|(name, port, protocol)| pb::EndpointPort {
                        name,
                        port,
                        protocol,
                        app_protocol: String::new(),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The service's ports as (name, target port on this pod, protocol); none
/// when a named target port is not among the pod's container ports.
fn resolve_ports(spec: &pb::ServiceSpec, pod: &pb::Pod) -> Option<Vec<ResolvedPort>> {
    let container_ports: Vec<&pb::ContainerPort> = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| &c.ports)
        .collect();
    let mut out = Vec::with_capacity(spec.ports.len());
    for p in &spec.ports {
        let protocol = if p.protocol.is_empty() {
            "TCP".to_string()
        } else {
            p.protocol.clone()
        };
        let target = if p.target_port.is_empty() {
            p.port
        } else if let Ok(n) = p.target_port.parse::<i32>() {
            n
        } else {
            container_ports
                .iter()
                .find(|c| c.name == p.target_port)?
                .container_port
        };
        out.push((p.name.clone(), target, protocol));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use berth_testkit::objects;

    use super::*;

    fn pod(name: &str, ip: &str, ready: bool, port_name: &str, port: i32) -> pb::Pod {
        objects::pod(name)
            .node("n1")
            .container(objects::container("c").port(port_name, port))
            .status("Running", ip)
            .ready(ready)
            .build()
    }

    fn spec(target: &str) -> pb::ServiceSpec {
        pb::ServiceSpec {
            ports: vec![pb::ServicePort {
                port: 80,
                target_port: target.into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn ready_and_unready_pods_are_listed_apart_in_ip_order() {
        let pods = [
            pod("b", "10.244.1.3", true, "", 0),
            pod("a", "10.244.1.2", true, "", 0),
            pod("c", "10.244.1.4", false, "", 0),
            pod("d", "", true, "", 0),
        ];
        let got = subsets(&spec("8080"), pods.iter());
        assert_eq!(got.len(), 1);
        let ips = |a: &[pb::EndpointAddress]| a.iter().map(|a| a.ip.clone()).collect::<Vec<_>>();
        assert_eq!(ips(&got[0].addresses), ["10.244.1.2", "10.244.1.3"]);
        assert_eq!(ips(&got[0].not_ready_addresses), ["10.244.1.4"]);
        assert_eq!(got[0].ports[0].port, 8080);
        assert_eq!(got[0].ports[0].protocol, "TCP");
    }

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let pods = [
            pod("a", "10.244.1.2", true, "http", 8080),
            pod("b", "10.244.1.3", true, "http", 9090),
            pod("c", "10.244.1.4", true, "other", 7000),
        ];
        let got = subsets(&spec("http"), pods.iter());
        let ports: Vec<i32> = got.iter().map(|s| s.ports[0].port).collect();
        assert_eq!(
            ports,
            [8080, 9090],
            "the pod without the named port is left out"
        );
    }

    #[test]
    fn an_empty_target_port_means_the_service_port() {
        let got = subsets(&spec(""), [pod("a", "10.244.1.2", true, "", 0)].iter());
        assert_eq!(got[0].ports[0].port, 80);
    }
}
