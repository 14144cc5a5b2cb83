//! Pod networking on a node (`--network bridge`): the bridge `berth0`
//! holding the first address of the node's pod CIDR, a network namespace
//! and a veth pair per pod with an address from the node's CIDR (`ipam`),
//! routes to the other nodes' pod CIDRs, service virtual IPs in nftables
//! (`nft`) and a DNS server for service names (`dns`), kept in sync with
//! the cluster by `sync`.
//!
//! Every step looks at what is there before it acts, so an agent that
//! restarts repairs what is missing and adopts what exists; what it sets
//! up for a pod it removes with the pod.

pub mod dns;
pub mod ipam;
pub mod links;
pub mod netns;
pub mod nft;
pub mod sync;

use std::fs;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use rtnetlink::Handle;

use crate::runtime::PodRef;
use crate::runtime::SandboxNetwork;
use ipam::PodIpam;

#[derive(Clone, Debug)]
pub struct BridgeConfig {
    pub bridge: String,
    pub cluster_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    pub cluster_domain: String,
    /// Where names outside the cluster domain are resolved.
    pub dns_upstream: Vec<SocketAddr>,
    /// `DATA_DIR/network`: address records and pods' resolv.conf files.
    pub dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Link(#[from] links::LinkError),
    #[error(transparent)]
    Ipam(#[from] ipam::IpamError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("removing the service rules: {0}")]
    Nft(#[from] nft::NftError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Io { what, source }
}

/// A pod's network as the agent set it up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodAddress {
    pub ip: Ipv4Addr,
    pub sandbox: SandboxNetwork,
}

pub struct BridgeNetwork {
    pub config: BridgeConfig,
    pub node_cidr: Ipv4Net,
    handle: Handle,
    bridge_index: u32,
    ipam: PodIpam,
}

/// Turns IPv4 forwarding on unless it is on already: in a container /proc/sys
/// is read-only, and the container's runtime sets it (compose: `sysctls`).
fn ensure_forwarding() -> Result<(), NetworkError> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    if fs::read_to_string(PATH).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    fs::write(PATH, "1").map_err(io(
        "turning on IPv4 forwarding (/proc/sys/net/ipv4/ip_forward; in a container, set the sysctl net.ipv4.ip_forward=1)",
    ))
}

/// Removes the node's whole pod network: every pod's namespace, veth pair,
/// address and files, the bridge (and the routes over it) and the service
/// rules. For an agent whose node ends with it (`berth dev`); a real
/// agent's network outlives the agent, whose next start adopts it.
pub async fn teardown(config: &BridgeConfig) -> Result<(), NetworkError> {
    let handle = links::connect().map_err(io("opening a netlink socket"))?;
    let records = config.dir.join("ips");
    for entry in fs::read_dir(&records).into_iter().flatten().flatten() {
        let Ok(uid) = fs::read_to_string(entry.path()) else {
            continue;
        };
        links::detach_pod(&handle, &uid).await?;
        netns::remove(&netns::path(&netns_name(&uid)))
            .map_err(io("removing a pod's network namespace"))?;
    }
    links::delete_link(&handle, &config.bridge).await?;
    let table = nft::TABLE;
    nft::apply(&format!("table ip {table}\ndelete table ip {table}\n")).await?;
    match fs::remove_dir_all(&config.dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io(format!("removing {}", config.dir.display()))(e))
        }
        _ => Ok(()),
    }
}

pub fn netns_name(uid: &str) -> String {
    format!("berth-{uid}")
}

impl BridgeNetwork {
    /// Sets up (or checks) the node's side: forwarding on, the bridge with
    /// the gateway address, and a route for the service CIDR over it.
    pub async fn setup(config: BridgeConfig, node_cidr: Ipv4Net) -> Result<Self, NetworkError> {
        ensure_forwarding()?;
        let handle = links::connect().map_err(io("opening a netlink socket"))?;
        let ipam = PodIpam::new(config.dir.join("ips"), node_cidr)?;
        let gateway = Ipv4Net::new(ipam.gateway(), node_cidr.prefix_len()).expect("a valid prefix");
        let bridge_index = links::ensure_bridge(&handle, &config.bridge, gateway).await?;
        links::ensure_device_route(&handle, config.service_cidr, bridge_index).await?;
        Ok(Self {
            config,
            node_cidr,
            handle,
            bridge_index,
            ipam,
        })
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.ipam.gateway()
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.config.dir.join("pods").join(uid)
    }

    /// The pod's namespace, veth pair, address and resolv.conf: made, or
    /// checked and repaired. `runtime_ns` is a namespace the runtime made
    /// for the pod (docker's pause container), which is then the pod's.
    pub async fn attach(
        &self,
        pod: &PodRef,
        runtime_ns: Option<PathBuf>,
    ) -> Result<PodAddress, NetworkError> {
        let ip = self.ipam.allocate(&pod.uid)?;
        let name = netns_name(&pod.uid);
        let ns = tokio::task::spawn_blocking(move || match runtime_ns {
            Some(source) => netns::adopt(&name, &source),
            None => netns::create(&name),
        })
        .await
        .map_err(|e| NetworkError::Io {
            what: "creating the pod's network namespace".into(),
            source: std::io::Error::other(e.to_string()),
        })?
        .map_err(io("creating the pod's network namespace"))?;
        let address = Ipv4Net::new(ip, self.node_cidr.prefix_len()).expect("a valid prefix");
        links::attach_pod(
            &self.handle,
            self.bridge_index,
            &pod.uid,
            &ns,
            address,
            self.gateway(),
        )
        .await?;
        let dir = self.pod_dir(&pod.uid);
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let resolv_conf = dir.join("resolv.conf");
        let text = dns::resolv_conf(self.gateway(), &pod.namespace, &self.config.cluster_domain);
        if fs::read_to_string(&resolv_conf).ok().as_deref() != Some(text.as_str()) {
            fs::write(&resolv_conf, text)
                .map_err(io(format!("writing {}", resolv_conf.display())))?;
        }
        Ok(PodAddress {
            ip,
            sandbox: SandboxNetwork {
                netns: ns,
                resolv_conf,
            },
        })
    }

    /// Removes everything `attach` made for the pod.
    pub async fn detach(&self, uid: &str) -> Result<(), NetworkError> {
        links::detach_pod(&self.handle, uid).await?;
        netns::remove(&netns::path(&netns_name(uid)))
            .map_err(io("removing the pod's network namespace"))?;
        self.ipam.release(uid)?;
        let dir = self.pod_dir(uid);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io(format!("removing {}", dir.display()))(e))
            }
            _ => Ok(()),
        }
    }

    /// Uids of the pods that hold an address here.
    pub fn attached(&self) -> Vec<String> {
        self.ipam
            .held()
            .map(|h| h.into_iter().map(|(_, uid)| uid).collect())
            .unwrap_or_default()
    }
}
