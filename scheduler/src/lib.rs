//! berth-scheduler places pending pods on nodes. It keeps a cache of nodes
//! and pods fed by watches, queues pending pods (with back-off for those
//! that do not fit), filters and scores nodes with the plugins in
//! `plugins`, and commits placements in batches of binds. Only the holder
//! of Lease `berth-system/berth-scheduler` binds, and every bind carries
//! the lease's epoch, so the state machine refuses a former holder's.
//!
//! It talks to the cluster through `berth-client` only: it runs the same
//! inside a controller (the default) or alone (`berth scheduler`).

#![forbid(unsafe_code)]

pub mod cache;
pub mod config;
pub mod plugins;
pub mod queue;
pub mod scheduler;

use berth_api::names::SYSTEM_NAMESPACE;
use berth_api::pb;
use berth_api::resources::SCHEDULER_LEASE_NAME;
use berth_client::connect::Connector;
use berth_client::election;
use berth_client::watcher;
use tokio::sync::mpsc;
use tokio::sync::watch;

pub use berth_client::election::ElectionConfig;
pub use config::SchedulerConfig;

/// Registers the scheduler's metrics with their help texts.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "berth_scheduler_queue_pods",
        "Pending pods waiting to be placed"
    );
    metrics::describe_gauge!(
        "berth_scheduler_leader",
        "1 while this scheduler holds the lease"
    );
    metrics::describe_counter!(
        "berth_scheduler_attempts_total",
        "Placement attempts by result (scheduled, unschedulable)"
    );
    metrics::describe_counter!(
        "berth_scheduler_binds_total",
        "Binds by result (ok, or the store's reason for refusing)"
    );
    metrics::describe_histogram!(
        "berth_scheduler_scheduling_duration_seconds",
        "From a pod seen pending to its bind committed"
    );
    metrics::describe_histogram!("berth_scheduler_batch_binds", "Binds per batch sent");
}

/// The scheduler's election, as `identity`.
pub fn election_config(identity: String) -> ElectionConfig {
    ElectionConfig::new(SYSTEM_NAMESPACE, SCHEDULER_LEASE_NAME, identity)
}

/// Runs a scheduler against the cluster at `conn` until the process ends.
pub async fn run(conn: Connector, config: SchedulerConfig, election: ElectionConfig) {
    let (leader_tx, leader_rx) = watch::channel(None);
    tokio::spawn(election::run(conn.clone(), election, leader_tx));
    let mut leader_gauge = leader_rx.clone();
    tokio::spawn(async move {
        loop {
            let held = leader_gauge.borrow_and_update().is_some();
            metrics::gauge!("berth_scheduler_leader").set(if held { 1.0 } else { 0.0 });
            if leader_gauge.changed().await.is_err() {
                return;
            }
        }
    });
    let (node_tx, node_rx) = mpsc::channel(4096);
    tokio::spawn(watcher::run::<pb::Node>(
        conn.clone(),
        watcher::Scope::default(),
        node_tx,
    ));
    scheduler::Scheduler::new(config, conn)
        .run(node_rx, leader_rx)
        .await;
}
