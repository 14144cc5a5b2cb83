//! berth-agent runs on every node: it registers the node, renews its lease,
//! watches the pods bound to it and drives a runtime driver (`runtime`:
//! process, sim) to run them, with restart policies, crash back-off,
//! probes and graceful stops, reporting pod status through update-status
//! only. It serves container logs over HTTP (`http`).
//!
//! It talks to the cluster through `berth-client` only. Restarting it never
//! stops a workload: the runtime keeps enough on disk (process) or in the
//! engine (docker) for a new agent to adopt what runs.

pub mod http;
pub mod node;
pub mod pods;
pub mod probe;
pub mod runtime;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use berth_api::pb;
use berth_client::connect::Connector;
use berth_client::watcher;
use tokio::sync::mpsc;

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
}

/// Runs one agent until the process ends: registers the node (retrying
/// until a controller answers), then keeps its lease and its pods.
pub async fn run(
    conn: Connector,
    node: NodeConfig,
    sync: SyncConfig,
    runtime: Arc<dyn Runtime>,
    index: PodIndex,
) {
    let mut delay = watcher::Backoff::default();
    loop {
        match node::register(&conn, &node).await {
            Ok(_) => break,
            Err(s) => {
                conn.failed(&s).await;
                tracing::warn!(node = %node.name, error = %s.message(), "cannot register the node; retrying");
                delay.wait().await;
            }
        }
    }
    tracing::info!(node = %node.name, runtime = runtime.name(), "node registered");
    tokio::spawn(node::heartbeat(conn.clone(), node.clone()));
    let (tx, rx) = mpsc::channel(1024);
    let scope = watcher::Scope {
        field_selector: format!("spec.nodeName={}", node.name),
        ..Default::default()
    };
    tokio::spawn(watcher::run::<pb::Pod>(conn.clone(), scope, tx));
    pods::PodSync::new(sync, conn, runtime, index).run(rx).await;
}

/// The default sync settings for a node.
pub fn sync_config(node: &NodeConfig) -> SyncConfig {
    SyncConfig {
        node: node.name.clone(),
        host_ip: node.address.clone(),
        sync_interval: Duration::from_secs(1),
        backoff_initial: Duration::from_secs(10),
        backoff_max: Duration::from_secs(300),
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
