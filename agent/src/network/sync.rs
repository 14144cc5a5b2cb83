//! Keeps the node's routes, service rules and DNS names in step with the
//! cluster: one reconcile of the whole state on the controller runtime,
//! level-triggered on every change of nodes, services and endpoints (a
//! burst makes one pass) and every few seconds, so whatever someone removed
//! by hand comes back.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use berth_api::pb;
use berth_api::Object;
use berth_client::connect::Connector;
use berth_client::controller::Action;
use berth_client::controller::Controller;
use berth_client::reflector::Reflector;
use berth_client::watcher::Scope;
use ipnet::Ipv4Net;

use super::dns::service_name;
use super::dns::Names;
use super::links;
use super::nft;
use super::BridgeNetwork;
use crate::trust;

const RESYNC: Duration = Duration::from_secs(10);
/// The service table is replaced whole this often, which also undoes any
/// change made to it by hand.
const FULL_PERIOD: Duration = Duration::from_secs(300);
/// Events within this window after the first make one pass.
const BATCH_WINDOW: Duration = Duration::from_millis(10);

pub struct NetworkSync {
    net: Arc<BridgeNetwork>,
    node: String,
    names: Names,
    /// The rules in the kernel, and when the table was last replaced whole.
    applied: Option<(nft::RuleSet, Instant)>,
}

struct Ctx {
    sync: tokio::sync::Mutex<NetworkSync>,
    nodes: Reflector<pb::Node>,
    services: Reflector<pb::Service>,
    endpoints: Reflector<pb::Endpoints>,
}

impl NetworkSync {
    pub fn new(net: Arc<BridgeNetwork>, node: String, names: Names) -> Self {
        Self {
            net,
            node,
            names,
            applied: None,
        }
    }

    pub async fn run(self, conn: Connector) {
        let ctx = Arc::new(Ctx {
            sync: tokio::sync::Mutex::new(self),
            nodes: Reflector::start(conn.clone(), Scope::default()),
            services: Reflector::start(conn.clone(), Scope::default()),
            endpoints: Reflector::start(conn, Scope::default()),
        });
        Controller::singleton("network")
            .triggered_by(ctx.nodes.clone())
            .triggered_by(ctx.services.clone())
            .triggered_by(ctx.endpoints.clone())
            .resync_every(RESYNC)
            .batch_window(BATCH_WINDOW)
            .run(sync, ctx)
            .await
    }

    /// A route to every other node's pod CIDR via its InternalIP; routes of
    /// nodes that are gone (or moved) are removed.
    async fn sync_routes(&self, nodes: &[Arc<pb::Node>]) {
        let want: BTreeSet<(Ipv4Net, Ipv4Addr)> = nodes
            .iter()
            .filter(|n| n.name() != self.node)
            .filter_map(|n| {
                let cluster = &self.net.config.cluster_cidr;
                peer_route(n).filter(|(cidr, _)| {
                    let refusal = trust::pod_cidr_refusal(cidr, cluster);
                    !trust::refused("Node", || n.name().into(), refusal)
                })
            })
            .filter(|(cidr, _)| *cidr != self.net.node_cidr)
            .collect();
        let handle = self.net.handle();
        let have: BTreeSet<(Ipv4Net, Ipv4Addr)> = match links::owned_routes(handle).await {
            Ok(r) => r.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list routes");
                return;
            }
        };
        for (dst, via) in have.difference(&want) {
            if let Err(e) = links::del_route(handle, *dst, *via).await {
                tracing::warn!(%dst, %via, error = %e, "cannot remove a route");
            }
        }
        for (dst, via) in want.difference(&have) {
            match links::add_route(handle, *dst, *via).await {
                Ok(()) => tracing::info!(%dst, %via, "route to a node's pods added"),
                Err(e) => tracing::warn!(%dst, %via, error = %e, "cannot add a route"),
            }
        }
        metrics::gauge!("berth_agent_routes").set(want.len() as f64);
    }

    /// Programs the service rules; a failure leaves the table to be
    /// replaced whole on the next try.
    async fn sync_services(
        &mut self,
        services: &[Arc<pb::Service>],
        endpoints: &Reflector<pb::Endpoints>,
    ) -> Result<(), nft::NftError> {
        let started = Instant::now();
        if self
            .applied
            .as_ref()
            .is_some_and(|(_, full)| full.elapsed() >= FULL_PERIOD)
        {
            self.applied = None;
        }
        let (rules, names) = desired(
            services,
            |key| endpoints.get(key),
            &self.net.config.cluster_domain,
        );
        self.names.replace(names);
        let (kind, script, full) = match &self.applied {
            Some((old, _)) if *old == rules => return Ok(()),
            Some((old, full)) => ("incremental", nft::render_changes(old, &rules), *full),
            None => {
                let cluster = self.net.config.cluster_cidr;
                if let Err(e) = nft::allow_forwarding_past_docker(cluster).await {
                    tracing::warn!(error = %e, "cannot let pod traffic past Docker's FORWARD policy");
                }
                ("full", nft::render_full(&self.nat(), &rules), started)
            }
        };
        if let Err(e) = nft::apply(&script).await {
            self.applied = None;
            return Err(e);
        }
        self.applied = Some((rules, full));
        metrics::histogram!("berth_agent_service_sync_seconds", "kind" => kind)
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    fn nat(&self) -> nft::NodeNat {
        nft::NodeNat {
            bridge: self.net.config.bridge.clone(),
            node_cidr: self.net.node_cidr,
            cluster_cidr: self.net.config.cluster_cidr,
        }
    }
}

/// One pass over the node's whole network state.
async fn sync(_: Arc<()>, ctx: Arc<Ctx>) -> Result<Action, nft::NftError> {
    let mut s = ctx.sync.lock().await;
    s.sync_routes(&ctx.nodes.all()).await;
    s.sync_services(&ctx.services.all(), &ctx.endpoints).await?;
    Ok(Action::AwaitChange)
}

fn peer_route(node: &pb::Node) -> Option<(Ipv4Net, Ipv4Addr)> {
    let cidr: Ipv4Net = node.spec.as_ref()?.pod_cidr.parse().ok()?;
    let ip = node
        .status
        .as_ref()?
        .addresses
        .iter()
        .find(|a| a.r#type == "InternalIP")?
        .address
        .parse()
        .ok()?;
    Some((cidr, ip))
}

/// The service rules and DNS names the cluster asks for; `endpoints` finds
/// the Endpoints object of `namespace/name`.
pub fn desired(
    services: &[Arc<pb::Service>],
    endpoints: impl Fn(&str) -> Option<Arc<pb::Endpoints>>,
    domain: &str,
) -> (nft::RuleSet, HashMap<String, Ipv4Addr>) {
    let mut rules = nft::RuleSet::new();
    let mut names = HashMap::new();
    let trusted = services.iter().filter(|s| {
        let what = || format!("{}/{}", s.namespace(), s.name());
        !trust::refused("Service", what, trust::service_refusal(s))
    });
    for svc in trusted {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let Ok(ip) = spec.cluster_ip.parse::<Ipv4Addr>() else {
            continue;
        };
        let (ns, name) = (svc.namespace(), svc.name());
        names.insert(service_name(name, ns, domain), ip);
        let eps = endpoints(&format!("{ns}/{name}"));
        for port in &spec.ports {
            let protocol = match port.protocol.as_str() {
                "" | "TCP" => "tcp",
                "UDP" => "udp",
                "SCTP" => "sctp",
                _ => continue,
            };
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            rules.insert(
                nft::chain_name(ns, name, number, protocol),
                nft::ServicePort {
                    cluster_ip: ip,
                    protocol,
                    port: number,
                    backends: eps
                        .as_deref()
                        .map(|e| backends(e, port))
                        .unwrap_or_default(),
                },
            );
        }
    }
    (rules, names)
}

/// Ready addresses of `eps` with the target port of the service port
/// (matched by name, as Kubernetes does).
fn backends(eps: &pb::Endpoints, port: &pb::ServicePort) -> Vec<(Ipv4Addr, u16)> {
    let mut out: Vec<(Ipv4Addr, u16)> = eps
        .subsets
        .iter()
        .filter_map(|s| {
            let p = s.ports.iter().find(|p| p.name == port.name)?;
            Some((s, u16::try_from(p.port).ok()?))
        })
        .flat_map(|(s, p)| {
            s.addresses
                .iter()
                .filter_map(move |a| Some((a.ip.parse::<Ipv4Addr>().ok()?, p)))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(namespace: &str, name: &str, ip: &str) -> Arc<pb::Service> {
        let mut svc = pb::Service::default();
        (svc.meta_mut().namespace, svc.meta_mut().name) = (namespace.into(), name.into());
        svc.spec = Some(pb::ServiceSpec {
            cluster_ip: ip.into(),
            ports: vec![pb::ServicePort {
                port: 80,
                ..Default::default()
            }],
            ..Default::default()
        });
        Arc::new(svc)
    }

    #[test]
    fn services_the_api_would_refuse_get_no_rules_and_no_names() {
        let services = [
            service("default", "web", "10.96.0.10"),
            service("default", "x { }; flush ruleset; chain y", "10.96.0.11"),
            service("../etc", "db", "10.96.0.12"),
            service("default", "kubernetes.default", "10.96.0.13"),
        ];
        let (rules, names) = desired(&services, |_| None, "cluster.local");
        let chains: Vec<&String> = rules.keys().collect();
        assert_eq!(chains, [&nft::chain_name("default", "web", 80, "tcp")]);
        let names: Vec<&String> = names.keys().collect();
        assert_eq!(names, [&service_name("web", "default", "cluster.local")]);
    }
}
