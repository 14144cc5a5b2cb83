//! Address management: a pod CIDR for every node from the cluster CIDR, a
//! ClusterIP for every Service from the service CIDR.
//!
//! An assignment is a claim key under `/registry/ipallocations/`, written
//! with an `Absent` precondition in the same transaction as the object
//! that holds it and deleted in the same transaction as that object. So
//! the state machine, not the proposing controller, decides who holds an
//! address: two controllers racing (or one that lost its leadership
//! mid-way) can never hand out one CIDR or ClusterIP twice.

use std::any::Any;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::LazyLock;

use berth_api::kinds::ip_claim_prefix;
use berth_api::kinds::list_prefix;
use berth_api::pb;
use berth_api::Object;
use berth_api::Reason;
use berth_raft::KeyRange;
use berth_raft::Op;
use berth_raft::Precondition;
use berth_raft::Store;
use ipnet::Ipv4Net;
use prost::Message;
use rand::Rng;
use tonic::Status;

static NODE_CIDR_CLAIMS: LazyLock<String> = LazyLock::new(|| ip_claim_prefix("podcidrs"));
static CLUSTER_IP_CLAIMS: LazyLock<String> = LazyLock::new(|| ip_claim_prefix("clusterips"));
static SERVICES_PREFIX: LazyLock<String> =
    LazyLock::new(|| list_prefix(&<pb::Service as Object>::INFO, ""));
static NODES_PREFIX: LazyLock<String> =
    LazyLock::new(|| list_prefix(&<pb::Node as Object>::INFO, ""));
/// Random picks before the allocator falls back to a full scan.
const RANDOM_PICKS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum NetworkConfigError {
    #[error("--node-cidr-size {size} does not fit the cluster CIDR {cluster}: it must be between the cluster CIDR's prefix length and 30")]
    NodeCidrSize { size: u8, cluster: Ipv4Net },
    #[error(
        "the service CIDR {service} overlaps the cluster CIDR {cluster}: give them disjoint ranges"
    )]
    Overlap { service: Ipv4Net, cluster: Ipv4Net },
    #[error("the service CIDR {0} is too small: give at least a /30")]
    ServiceTooSmall(Ipv4Net),
}

/// The cluster's address plan; every controller must be given the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    pub cluster_cidr: Ipv4Net,
    pub node_cidr_prefix: u8,
    pub service_cidr: Ipv4Net,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            cluster_cidr: "10.244.0.0/16".parse().expect("a CIDR"),
            node_cidr_prefix: 24,
            service_cidr: "10.96.0.0/16".parse().expect("a CIDR"),
        }
    }
}

impl NetworkConfig {
    pub fn new(
        cluster_cidr: Ipv4Net,
        node_cidr_prefix: u8,
        service_cidr: Ipv4Net,
    ) -> Result<Self, NetworkConfigError> {
        let (cluster_cidr, service_cidr) = (cluster_cidr.trunc(), service_cidr.trunc());
        if node_cidr_prefix < cluster_cidr.prefix_len() || node_cidr_prefix > 30 {
            return Err(NetworkConfigError::NodeCidrSize {
                size: node_cidr_prefix,
                cluster: cluster_cidr,
            });
        }
        if cluster_cidr.contains(&service_cidr) || service_cidr.contains(&cluster_cidr) {
            return Err(NetworkConfigError::Overlap {
                service: service_cidr,
                cluster: cluster_cidr,
            });
        }
        if service_cidr.prefix_len() > 30 {
            return Err(NetworkConfigError::ServiceTooSmall(service_cidr));
        }
        Ok(Self {
            cluster_cidr,
            node_cidr_prefix,
            service_cidr,
        })
    }

    fn node_cidr_count(&self) -> u32 {
        1 << (self.node_cidr_prefix - self.cluster_cidr.prefix_len())
    }

    fn node_cidr(&self, index: u32) -> Ipv4Net {
        let step = 1u32 << (32 - self.node_cidr_prefix);
        let base = u32::from(self.cluster_cidr.network()) + index * step;
        Ipv4Net::new(Ipv4Addr::from(base), self.node_cidr_prefix).expect("a valid prefix")
    }

    /// Usable ClusterIPs: the service CIDR without its network and
    /// broadcast addresses.
    fn service_ip_count(&self) -> u32 {
        (1u32 << (32 - self.service_cidr.prefix_len())) - 2
    }

    fn service_ip(&self, index: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.service_cidr.network()) + 1 + index)
    }
}

/// What an object claims: the key of the claim, and the address for
/// messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub key: Vec<u8>,
    pub address: String,
    /// Asked for in the manifest (a conflict is the user's to resolve),
    /// rather than picked by the allocator (a conflict means pick again).
    pub requested: bool,
}

impl Claim {
    pub fn op(&self, owner_key: &[u8]) -> Op {
        Op::Put {
            key: self.key.clone(),
            value: owner_key.to_vec(),
            precondition: Precondition::Absent,
        }
    }

    /// The refusal for a requested address that is already held.
    pub fn taken(&self) -> Status {
        Reason::AddressTaken.status(format!(
            "{} is already allocated to another object: choose a free one or leave the field empty to have one assigned",
            self.address
        ))
    }
}

fn node_claim_key(cidr: &Ipv4Net) -> String {
    format!(
        "{}{}-{}",
        *NODE_CIDR_CLAIMS,
        cidr.network(),
        cidr.prefix_len()
    )
}

fn cluster_ip_claim_key(ip: Ipv4Addr) -> String {
    format!("{}{ip}", *CLUSTER_IP_CLAIMS)
}

/// The claim key `obj` holds, if it is a node with a pod CIDR or a
/// service with a ClusterIP.
pub fn claim_key(obj: &dyn Any) -> Option<String> {
    if let Some(svc) = obj.downcast_ref::<pb::Service>() {
        let ip = svc.spec.as_ref()?.cluster_ip.parse::<Ipv4Addr>().ok()?;
        return Some(cluster_ip_claim_key(ip));
    }
    let node = obj.downcast_ref::<pb::Node>()?;
    let cidr = node.spec.as_ref()?.pod_cidr.parse::<Ipv4Net>().ok()?;
    Some(node_claim_key(&cidr))
}

/// The delete of the claim `obj` holds, for the transaction that deletes
/// `obj`.
pub fn release_op(obj: &dyn Any) -> Option<Op> {
    claim_key(obj).map(|key| Op::Delete {
        key: key.into_bytes(),
        precondition: Precondition::None,
    })
}

/// `release_op` for a stored key and value (deletes by prefix).
pub fn release(key: &[u8], value: &[u8]) -> Option<Op> {
    if key.starts_with(SERVICES_PREFIX.as_bytes()) {
        release_op(&pb::Service::decode(value).ok()?)
    } else if key.starts_with(NODES_PREFIX.as_bytes()) {
        release_op(&pb::Node::decode(value).ok()?)
    } else {
        None
    }
}

/// Assigns addresses to nodes and services.
#[derive(Clone)]
pub struct Ipam {
    config: NetworkConfig,
    store: Store,
}

impl Ipam {
    pub fn new(config: NetworkConfig, store: Store) -> Self {
        Self { config, store }
    }

    /// Fills in what `obj` lacks (a node's pod CIDR, a service's
    /// ClusterIP) and returns the claim to commit with it. `avoid` holds
    /// addresses that lost a race since the local copy was read.
    /// A node gets no CIDR when none is free (it can still exist, as in
    /// Kubernetes); a service without a free ClusterIP is refused.
    pub async fn assign(
        &self,
        obj: &mut (dyn Any + Send),
        avoid: &HashSet<String>,
    ) -> Result<Option<Claim>, Status> {
        if let Some(node) = obj.downcast_mut::<pb::Node>() {
            return self.assign_node(node, avoid).await;
        }
        if let Some(svc) = obj.downcast_mut::<pb::Service>() {
            return self.assign_service(svc, avoid).await;
        }
        Ok(None)
    }

    async fn assign_node(
        &self,
        node: &mut pb::Node,
        avoid: &HashSet<String>,
    ) -> Result<Option<Claim>, Status> {
        let spec = node.spec.get_or_insert_default();
        if !spec.pod_cidr.is_empty() {
            let cidr: Ipv4Net = spec.pod_cidr.parse().map_err(|_| {
                Reason::Invalid.status(format!(
                    "spec.podCIDR {:?} is not an IPv4 CIDR",
                    spec.pod_cidr
                ))
            })?;
            if cidr.prefix_len() != self.config.node_cidr_prefix
                || cidr.trunc() != cidr
                || !self.config.cluster_cidr.contains(&cidr)
            {
                return Err(Reason::Invalid.status(format!(
                    "spec.podCIDR {cidr} is not a /{} network inside the cluster CIDR {}: leave it empty to have one assigned",
                    self.config.node_cidr_prefix, self.config.cluster_cidr
                )));
            }
            return Ok(Some(Claim {
                key: node_claim_key(&cidr).into_bytes(),
                address: format!("spec.podCIDR {cidr}"),
                requested: true,
            }));
        }
        let taken = self.taken(&NODE_CIDR_CLAIMS, avoid).await?;
        let config = &self.config;
        let Some(cidr) = pick(config.node_cidr_count(), |i| {
            let cidr = config.node_cidr(i);
            (!taken.contains(&node_claim_key(&cidr))).then_some(cidr)
        }) else {
            // Debug, not warn: a bulk create of many nodes would repeat it
            // per node; the node's agent says so, and the metric counts.
            tracing::debug!(
                node = node.metadata.as_ref().map_or("", |m| m.name.as_str()),
                cluster_cidr = %config.cluster_cidr,
                "no pod CIDR is free: the node has none until another node is deleted"
            );
            metrics::counter!("berth_controller_ipam_exhausted_total", "pool" => "podcidrs")
                .increment(1);
            return Ok(None);
        };
        spec.pod_cidr = cidr.to_string();
        spec.pod_cidrs = vec![cidr.to_string()];
        Ok(Some(Claim {
            key: node_claim_key(&cidr).into_bytes(),
            address: format!("pod CIDR {cidr}"),
            requested: false,
        }))
    }

    async fn assign_service(
        &self,
        svc: &mut pb::Service,
        avoid: &HashSet<String>,
    ) -> Result<Option<Claim>, Status> {
        let spec = svc.spec.get_or_insert_default();
        if spec.cluster_ip == "None" {
            return Ok(None);
        }
        if !spec.cluster_ip.is_empty() {
            let ip: Ipv4Addr = spec.cluster_ip.parse().map_err(|_| {
                Reason::Invalid.status(format!(
                    "spec.clusterIP {:?} is not an IPv4 address",
                    spec.cluster_ip
                ))
            })?;
            let range = self.config.service_cidr;
            if !range.contains(&ip) || ip == range.network() || ip == range.broadcast() {
                return Err(Reason::Invalid.status(format!(
                    "spec.clusterIP {ip} is not a usable address of the service CIDR {range}: pick one inside it or leave it empty"
                )));
            }
            return Ok(Some(Claim {
                key: cluster_ip_claim_key(ip).into_bytes(),
                address: format!("spec.clusterIP {ip}"),
                requested: true,
            }));
        }
        let taken = self.taken(&CLUSTER_IP_CLAIMS, avoid).await?;
        let config = &self.config;
        let Some(ip) = pick(config.service_ip_count(), |i| {
            let ip = config.service_ip(i);
            (!taken.contains(&cluster_ip_claim_key(ip))).then_some(ip)
        }) else {
            metrics::counter!("berth_controller_ipam_exhausted_total", "pool" => "clusterips")
                .increment(1);
            return Err(Reason::AddressesExhausted.status(format!(
                "no ClusterIP is free in the service CIDR {}: delete unused services or start the controllers with a larger --service-cidr",
                config.service_cidr
            )));
        };
        spec.cluster_ip = ip.to_string();
        spec.cluster_ips = vec![ip.to_string()];
        Ok(Some(Claim {
            key: cluster_ip_claim_key(ip).into_bytes(),
            address: format!("ClusterIP {ip}"),
            requested: false,
        }))
    }

    /// The claim keys held now (this controller's copy: the claim's
    /// precondition catches one it has not seen yet), plus `avoid`.
    async fn taken(
        &self,
        prefix: &str,
        avoid: &HashSet<String>,
    ) -> Result<HashSet<String>, Status> {
        let result = self
            .store
            .range(KeyRange::prefix(prefix.as_bytes().to_vec()), 0, true)
            .await?;
        let mut taken: HashSet<String> = result
            .kvs
            .into_iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect();
        taken.extend(avoid.iter().cloned());
        Ok(taken)
    }
}

/// A free slot of `count`: random first (so concurrent allocators rarely
/// collide), then the lowest free one.
fn pick<T>(count: u32, mut free: impl FnMut(u32) -> Option<T>) -> Option<T> {
    let mut rng = rand::rng();
    for _ in 0..RANDOM_PICKS.min(count as usize) {
        if let Some(found) = free(rng.random_range(0..count)) {
            return Some(found);
        }
    }
    (0..count).find_map(free)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NetworkConfig {
        NetworkConfig::default()
    }

    #[test]
    fn node_cidrs_tile_the_cluster_cidr() {
        let c = config();
        assert_eq!(c.node_cidr_count(), 256);
        assert_eq!(c.node_cidr(0).to_string(), "10.244.0.0/24");
        assert_eq!(c.node_cidr(255).to_string(), "10.244.255.0/24");
    }

    #[test]
    fn service_ips_skip_network_and_broadcast() {
        let c = config();
        assert_eq!(c.service_ip(0).to_string(), "10.96.0.1");
        assert_eq!(
            c.service_ip(c.service_ip_count() - 1).to_string(),
            "10.96.255.254"
        );
    }

    #[test]
    fn bad_plans_are_refused() {
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        assert!(NetworkConfig::new(net("10.244.0.0/16"), 12, net("10.96.0.0/16")).is_err());
        assert!(NetworkConfig::new(net("10.244.0.0/16"), 31, net("10.96.0.0/16")).is_err());
        assert!(NetworkConfig::new(net("10.0.0.0/8"), 24, net("10.96.0.0/16")).is_err());
        assert!(NetworkConfig::new(net("10.244.0.0/16"), 24, net("10.96.0.0/31")).is_err());
        assert!(NetworkConfig::new(net("10.244.0.0/16"), 26, net("10.96.0.0/20")).is_ok());
    }

    #[test]
    fn pick_finds_the_last_free_slot() {
        let free = 77;
        assert_eq!(pick(100, |i| (i == free).then_some(i)), Some(free));
        assert_eq!(pick(100, |_| None::<u32>), None);
    }

    #[test]
    fn release_names_the_claim_of_a_service_and_a_node() {
        let mut svc = pb::Service::default();
        svc.spec.get_or_insert_default().cluster_ip = "10.96.3.4".into();
        let op = release(b"/registry/services/default/web", &svc.encode_to_vec()).unwrap();
        assert_eq!(op.key(), b"/registry/ipallocations/clusterips/10.96.3.4");
        let mut node = pb::Node::default();
        node.spec.get_or_insert_default().pod_cidr = "10.244.7.0/24".into();
        let op = release(b"/registry/nodes/n1", &node.encode_to_vec()).unwrap();
        assert_eq!(op.key(), b"/registry/ipallocations/podcidrs/10.244.7.0-24");
        assert!(release(b"/registry/pods/default/p", b"").is_none());
        svc.spec.get_or_insert_default().cluster_ip = "None".into();
        assert!(release(b"/registry/services/default/h", &svc.encode_to_vec()).is_none());
    }
}
