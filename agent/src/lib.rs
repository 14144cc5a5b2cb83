//! berth-agent runs on every node: it registers the node, renews its lease,
//! watches the pods bound to it and drives a runtime driver (`runtime`:
//! process, sim) to run them, with restart policies, crash back-off,
//! probes and graceful stops, reporting pod status through update-status
//! only. It serves container logs over HTTP (`http`).
//!
//! It talks to the cluster through `berth-client` only. Restarting it never
//! stops a workload: the runtime keeps enough on disk (process) or in the
//! engine (docker) for a new agent to adopt what runs.

pub mod hooks;
pub mod http;
pub mod network;
pub mod node;
pub mod pods;
pub mod probe;
pub mod runtime;
pub mod status;
pub mod trust;
pub mod volumes;

use std::sync::Arc;
use std::time::Duration;

use berth_api::pb;
use berth_client::connect::Connector;
use berth_client::watcher;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

pub use network::BridgeConfig;
pub use network::BridgeNetwork;
pub use node::NodeConfig;
pub use pods::PodIndex;
pub use pods::SyncConfig;
pub use runtime::Runtime;

/// Registers the agent's metrics with their help texts.
pub fn describe_metrics() {
    metrics::describe_gauge!("berth_agent_pods", "Pods bound to this node");
    metrics::describe_gauge!(
        "berth_agent_containers_running",
        "Containers whose latest instance runs"
    );
    metrics::describe_counter!(
        "berth_agent_container_starts_total",
        "Container starts by result (ok, error)"
    );
    metrics::describe_histogram!(
        "berth_agent_pod_start_seconds",
        "From a pod's creation to its first container started"
    );
    metrics::describe_histogram!(
        "berth_agent_sync_duration_seconds",
        "One pass of the sync loop"
    );
    metrics::describe_counter!(
        "berth_agent_status_writes_total",
        "Pod status writes by result"
    );
    metrics::describe_counter!(
        "berth_agent_lease_renewals_total",
        "Node lease renewals by result"
    );
    metrics::describe_gauge!(
        "berth_agent_routes",
        "Routes to other nodes' pod CIDRs (--network bridge)"
    );
    metrics::describe_histogram!(
        "berth_agent_service_sync_seconds",
        "Programming the service rules in nftables, by kind (full, incremental)"
    );
    metrics::describe_counter!(
        "berth_agent_refused_objects_total",
        "Stored objects the agent would not act on (names unsafe in paths or rules, foreign pod CIDRs), by kind"
    );
    metrics::describe_counter!(
        "berth_agent_evictions_total",
        "Pods the agent evicted (an emptyDir over its sizeLimit)"
    );
    metrics::describe_counter!(
        "berth_agent_dns_queries_total",
        "DNS queries from pods, by zone (cluster, upstream)"
    );
}

/// Runs one agent until the process ends: registers the node (retrying
/// until a controller answers), then keeps its lease and its pods.
pub async fn run(
    conn: Connector,
    node: NodeConfig,
    sync: SyncConfig,
    runtime: Arc<dyn Runtime>,
    index: PodIndex,
    network: Option<BridgeConfig>,
) {
    let mut delay = watcher::RETRY;
    let registered = loop {
        match node::register(&conn, &node).await {
            Ok(n) => break n,
            Err(s) => {
                conn.failed(&s).await;
                tracing::warn!(node = %node.name, error = %s.message(), "cannot register the node; retrying");
                delay.wait().await;
            }
        }
    };
    tracing::info!(node = %node.name, runtime = runtime.name(), "node registered");
    // Everything the agent starts ends with it (when its task is aborted).
    let mut tasks = JoinSet::new();
    tasks.spawn(node::heartbeat(conn.clone(), node.clone()));
    let network = match network {
        Some(config) => {
            Some(start_network(&conn, &node.name, registered, config, &mut tasks).await)
        }
        None => None,
    };
    let (tx, rx) = mpsc::channel(1024);
    let scope = watcher::Scope {
        field_selector: format!("spec.nodeName={}", node.name),
        ..Default::default()
    };
    tasks.spawn(watcher::run::<pb::Pod>(conn.clone(), scope, tx));
    pods::PodSync::new(sync, conn, runtime, index, network)
        .run(rx)
        .await;
    drop(tasks);
}

/// Sets up the node's pod network once the controllers have given the node
/// a pod CIDR, and starts its DNS server and its sync with the cluster.
async fn start_network(
    conn: &Connector,
    node: &str,
    registered: pb::Node,
    config: BridgeConfig,
    tasks: &mut JoinSet<()>,
) -> Arc<BridgeNetwork> {
    let cidr = node_cidr(conn, node, registered, &config.cluster_cidr).await;
    let net = loop {
        match BridgeNetwork::setup(config.clone(), cidr).await {
            Ok(n) => break Arc::new(n),
            Err(e) => {
                tracing::error!(error = %e, "cannot set up the node's pod network; retrying");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    tracing::info!(%cidr, bridge = %config.bridge, gateway = %net.gateway(), "pod network ready");
    let names = network::dns::Names::default();
    let dns_addr = std::net::SocketAddr::from((net.gateway(), 53));
    match tokio::net::UdpSocket::bind(dns_addr).await {
        Ok(socket) => {
            let server = Arc::new(network::dns::DnsServer {
                names: names.clone(),
                domain: config.cluster_domain.clone(),
                upstream: config.dns_upstream.clone(),
            });
            tasks.spawn(server.serve(socket));
        }
        Err(e) => {
            tracing::error!(addr = %dns_addr, error = %e, "cannot serve DNS for the pods: service names will not resolve")
        }
    }
    let sync = network::sync::NetworkSync::new(net.clone(), node.to_string(), names);
    tasks.spawn(sync.run(conn.clone()));
    net
}

/// The node's pod CIDR, waiting for the controllers to assign one inside
/// the cluster's.
async fn node_cidr(
    conn: &Connector,
    node: &str,
    mut seen: pb::Node,
    cluster_cidr: &ipnet::Ipv4Net,
) -> ipnet::Ipv4Net {
    loop {
        let cidr = seen
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.parse::<ipnet::Ipv4Net>().ok())
            .filter(|c| {
                !trust::refused(
                    "Node",
                    || node.into(),
                    trust::pod_cidr_refusal(c, cluster_cidr),
                )
            });
        if let Some(cidr) = cidr {
            return cidr;
        }
        tracing::warn!(node, "the node has no pod CIDR yet (is the cluster CIDR exhausted?); pods cannot start until it has one");
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Ok(Some(n)) = node::get_node(conn, node).await {
            seen = n;
        }
    }
}

/// The default sync settings for a node.
/// How the agent of `node`, its state under `data_dir`, syncs its pods.
pub fn sync_config(node: &NodeConfig, data_dir: &std::path::Path) -> SyncConfig {
    SyncConfig {
        node: node.name.clone(),
        host_ip: node.address.clone(),
        sync_interval: Duration::from_secs(1),
        backoff_initial: Duration::from_secs(10),
        backoff_max: Duration::from_secs(300),
        allocatable: node.capacity.clone(),
        volumes_dir: data_dir.join("volumes").join(&node.name),
        volume_sync_interval: Duration::from_secs(10),
        allow_privileged: false,
    }
}

/// Stops every container the runtime holds (within `grace` each) and
/// removes every pod: for `berth dev`, whose workloads end with it.
pub async fn remove_all(runtime: &dyn Runtime, grace: Duration) {
    let Ok(instances) = runtime.list().await else {
        return;
    };
    let stops = instances
        .iter()
        .filter(|i| !matches!(i.state, runtime::InstanceState::Exited(_)))
        .map(|i| runtime.stop(&i.pod, &i.container, i.attempt, grace));
    futures::future::join_all(stops).await;
    let mut pods: Vec<&runtime::PodRef> = instances.iter().map(|i| &i.pod).collect();
    pods.sort_by(|a, b| a.uid.cmp(&b.uid));
    pods.dedup_by(|a, b| a.uid == b.uid);
    for pod in pods {
        let _ = runtime.remove_sandbox(pod).await;
    }
}
