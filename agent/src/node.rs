//! The agent's Node: registration (capacity from flags or the host,
//! labels, addresses, system info), the node lease `berth-system/node-NAME`
//! renewed every `lease_interval`, and the node status with its Ready
//! condition, written at start, every `status_interval`, and at once after
//! the lease could not be renewed for a while (the node controller may have
//! marked the node NotReady meanwhile).

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::SystemTime;

use berth_api::names::node_lease_name;
use berth_api::names::SYSTEM_NAMESPACE;
use berth_api::pb;
use berth_api::quantity::Quantity;
use berth_api::Object;
use berth_client::connect::Connector;
use berth_client::ClientKind;
use tokio::time::Instant;
use tonic::Code;
use tonic::Status;

use crate::runtime::rfc3339;

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    /// The node's InternalIP: how peers and clients reach it.
    pub address: String,
    /// Quantities by resource: cpu, memory, pods.
    pub capacity: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub runtime_version: String,
    /// The agent's HTTP port, if it serves one.
    pub http_port: Option<u16>,
    pub lease_interval: Duration,
    pub status_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    #[error("--{flag} {value:?} is not a quantity: use a number with an optional suffix, such as 4, 500m, 8Gi or 512Mi")]
    Bad { flag: &'static str, value: String },
    #[error("cannot read the host's memory size from /proc/meminfo: {0}; pass --memory")]
    Meminfo(String),
}

/// Capacity from the flags where given, else from the host.
pub fn capacity(
    cpu: Option<&str>,
    memory: Option<&str>,
    max_pods: u32,
) -> Result<BTreeMap<String, String>, CapacityError> {
    let check = |flag: &'static str, v: &str| {
        Quantity::parse(v)
            .map(|_| v.to_string())
            .map_err(|_| CapacityError::Bad {
                flag,
                value: v.to_string(),
            })
    };
    let cpu = match cpu {
        Some(v) => check("cpu", v)?,
        None => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .to_string(),
    };
    let memory = match memory {
        Some(v) => check("memory", v)?,
        None => host_memory()?,
    };
    Ok(BTreeMap::from([
        ("cpu".to_string(), cpu),
        ("memory".to_string(), memory),
        ("pods".to_string(), max_pods.to_string()),
    ]))
}

fn host_memory() -> Result<String, CapacityError> {
    let text = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| CapacityError::Meminfo(e.to_string()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| format!("{kb}Ki"))
        .ok_or_else(|| CapacityError::Meminfo("no MemTotal line".into()))
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn os_image() -> String {
    read_trimmed("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default()
}

impl NodeConfig {
    fn status(&self, old: Option<&pb::NodeStatus>) -> pb::NodeStatus {
        let now = rfc3339(SystemTime::now());
        let was_ready = old.and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.r#type == "Ready" && c.status == "True")
        });
        pb::NodeStatus {
            capacity: self.capacity.clone(),
            allocatable: self.capacity.clone(),
            conditions: vec![pb::Condition {
                r#type: "Ready".into(),
                status: "True".into(),
                reason: "AgentReady".into(),
                message: "berth agent is posting ready status".into(),
                last_transition_time: was_ready
                    .map_or_else(|| now.clone(), |c| c.last_transition_time.clone()),
                last_heartbeat_time: now,
                ..Default::default()
            }],
            addresses: vec![
                pb::NodeAddress {
                    r#type: "InternalIP".into(),
                    address: self.address.clone(),
                },
                pb::NodeAddress {
                    r#type: "Hostname".into(),
                    address: self.name.clone(),
                },
            ],
            node_info: Some(pb::NodeSystemInfo {
                machine_id: read_trimmed("/etc/machine-id"),
                boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
                kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
                os_image: os_image(),
                container_runtime_version: self.runtime_version.clone(),
                kubelet_version: format!("berth-agent/{}", env!("CARGO_PKG_VERSION")),
                operating_system: std::env::consts::OS.into(),
                architecture: match std::env::consts::ARCH {
                    "x86_64" => "amd64".into(),
                    "aarch64" => "arm64".into(),
                    other => other.into(),
                },
                ..Default::default()
            }),
            phase: String::new(),
            daemon_endpoints: self.http_port.map(|port| pb::NodeDaemonEndpoints {
                kubelet_endpoint: Some(pb::DaemonEndpoint { port: port.into() }),
            }),
        }
    }

    fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), self.name.clone()),
            (
                "kubernetes.io/os".to_string(),
                std::env::consts::OS.to_string(),
            ),
        ]);
        labels.extend(self.labels.clone());
        labels
    }
}

async fn channel(conn: &Connector) -> Result<tonic::transport::Channel, Status> {
    conn.channel()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))
}

pub(crate) async fn get_node(conn: &Connector, name: &str) -> Result<Option<pb::Node>, Status> {
    let req = pb::GetRequest {
        name: name.into(),
        ..Default::default()
    };
    match pb::Node::get(channel(conn).await?, req).await {
        Ok(n) => Ok(Some(n)),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(s),
    }
}

/// Creates the Node, or adopts the one of that name (keeping what others
/// set: cordon, taints, its pod CIDR, labels not ours), then writes its
/// status.
pub async fn register(conn: &Connector, config: &NodeConfig) -> Result<pb::Node, Status> {
    let node = match get_node(conn, &config.name).await? {
        Some(mut node) => {
            let meta = node.meta_mut();
            let before = meta.labels.clone();
            meta.labels.extend(config.labels());
            if meta.labels != before {
                node = pb::Node::update(channel(conn).await?, node).await?;
            }
            node
        }
        None => {
            let mut node = pb::Node::default();
            node.meta_mut().name = config.name.clone();
            node.meta_mut().labels = config.labels();
            match pb::Node::create(channel(conn).await?, node).await {
                Ok(n) => n,
                Err(s) if s.code() == Code::AlreadyExists => {
                    get_node(conn, &config.name).await?.ok_or(s)?
                }
                Err(s) => return Err(s),
            }
        }
    };
    write_status(conn, config, node).await
}

async fn write_status(
    conn: &Connector,
    config: &NodeConfig,
    mut node: pb::Node,
) -> Result<pb::Node, Status> {
    node.status = Some(config.status(node.status.as_ref()));
    node.meta_mut().resource_version.clear();
    pb::nodes_client::NodesClient::new(channel(conn).await?)
        .update_status(node)
        .await
        .map(|r| r.into_inner())
}

/// Renews the node lease and refreshes the node status, forever.
pub async fn heartbeat(conn: Connector, config: NodeConfig) {
    let mut lease: Option<pb::Lease> = None;
    let mut last_renewal = Instant::now();
    let mut last_status = Instant::now();
    let mut tick = tokio::time::interval(config.lease_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match renew(&conn, &config, lease.take()).await {
            Ok(l) => {
                lease = Some(l);
                metrics::counter!("berth_agent_lease_renewals_total", "result" => "ok")
                    .increment(1);
            }
            Err(s) => {
                metrics::counter!("berth_agent_lease_renewals_total", "result" => "error")
                    .increment(1);
                conn.failed(&s).await;
                tracing::warn!(node = %config.name, error = %s.message(), "node lease not renewed");
                continue;
            }
        }
        // A gap in renewals (a partition, a pause) may have let the node
        // controller mark the node NotReady: say otherwise at once.
        let gap = last_renewal.elapsed() > config.lease_interval * 3;
        last_renewal = Instant::now();
        if gap || last_status.elapsed() >= config.status_interval {
            let result = match get_node(&conn, &config.name).await {
                Ok(Some(node)) => write_status(&conn, &config, node).await.map(|_| ()),
                // Deleted by an operator: register again.
                Ok(None) => register(&conn, &config).await.map(|_| ()),
                Err(s) => Err(s),
            };
            match result {
                Ok(()) => last_status = Instant::now(),
                Err(s) => {
                    tracing::warn!(node = %config.name, error = %s.message(), "node status not written")
                }
            }
        }
    }
}

/// One renewal: updates the lease (creating it if missing), starting from
/// the copy of the last renewal to save a read.
async fn renew(
    conn: &Connector,
    config: &NodeConfig,
    known: Option<pb::Lease>,
) -> Result<pb::Lease, Status> {
    let name = node_lease_name(&config.name);
    let current = match known {
        Some(l) => Some(l),
        None => {
            let req = pb::GetRequest {
                namespace: SYSTEM_NAMESPACE.into(),
                name: name.clone(),
                serializable: false,
            };
            match pb::Lease::get(channel(conn).await?, req).await {
                Ok(l) => Some(l),
                Err(s) if s.code() == Code::NotFound => None,
                Err(s) => return Err(s),
            }
        }
    };
    let now = rfc3339(SystemTime::now());
    let duration = Some((config.lease_interval.as_secs() as i32 * 5).max(10));
    match current {
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_default();
            spec.renew_time = now;
            spec.holder_identity = config.name.clone();
            spec.lease_duration_seconds = duration;
            pb::Lease::update(channel(conn).await?, lease).await
        }
        None => {
            let mut lease = pb::Lease::default();
            lease.meta_mut().name = name;
            lease.meta_mut().namespace = SYSTEM_NAMESPACE.into();
            if let Some(node) = get_node(conn, &config.name).await? {
                // Owned by its node: deleting the node deletes its lease.
                lease.meta_mut().owner_references = vec![pb::OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: config.name.clone(),
                    uid: node.meta().map(|m| m.uid.clone()).unwrap_or_default(),
                    ..Default::default()
                }];
            }
            lease.spec = Some(pb::LeaseSpec {
                holder_identity: config.name.clone(),
                lease_duration_seconds: duration,
                acquire_time: now.clone(),
                renew_time: now,
                lease_transitions: Some(0),
            });
            pb::Lease::create(channel(conn).await?, lease).await
        }
    }
}
