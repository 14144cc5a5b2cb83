//! Node lifecycle. A node's agent renews Lease `berth-system/node-NAME`;
//! when this controller has seen no renewal for the grace period (timed by
//! its own clock, so clocks need not agree) it marks the node Ready=False
//! and its pods not ready, and once the node has stayed so for the eviction
//! timeout it fails the node's pods with reason NodeLost, so that their
//! owners replace them elsewhere. A blip shorter than the grace period
//! changes nothing.
//!
//! Only nodes that have a lease are watched over: a Node written by hand
//! (or by `berth bench schedule`) with no agent behind it is left as it is.
//! A controller that has just taken the lease gives every node a full grace
//! period before judging it, as its observations start then.

use std::collections::HashMap;
use std::time::Duration;

use berth_api::pb;
use berth_api::resources::node_is_ready;
use berth_api::resources::pod_is_terminal;
use berth_client::connect::Connector;
use berth_client::election::LeaderState;
use berth_client::objects::nodes;
use berth_client::objects::pods;
use tokio::time::Instant;

use super::active;
use super::count_write;
use super::Caches;
use super::LazyCaches;
use super::ReconcileConfig;
use crate::api::now_rfc3339;

const NAME: &str = "node-lifecycle";
const TICK: Duration = Duration::from_millis(500);

fn set_condition(conditions: &mut Vec<pb::Condition>, next: pb::Condition) {
    match conditions.iter_mut().find(|c| c.r#type == next.r#type) {
        Some(c) => *c = next,
        None => conditions.push(next),
    }
}

fn condition(kind: &str, reason: &str, message: String) -> pb::Condition {
    pb::Condition {
        r#type: kind.into(),
        status: "False".into(),
        reason: reason.into(),
        message,
        last_transition_time: now_rfc3339(),
        ..Default::default()
    }
}

pub async fn run(
    conn: Connector,
    caches: LazyCaches,
    config: ReconcileConfig,
    mut leader: LeaderState,
) {
    let Some(caches) = caches.when_active(&mut leader).await else {
        return;
    };
    caches.nodes.ready().await;
    caches.leases.ready().await;
    caches.pods.ready().await;
    // Per node: the lease's last renewTime and when this controller saw it
    // change.
    let mut observed: HashMap<String, (String, Instant)> = HashMap::new();
    let mut not_ready_since: HashMap<String, Instant> = HashMap::new();
    let mut active_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let mut leased = HashMap::new();
        for lease in caches.leases.all() {
            let name = lease.metadata.as_ref().map_or("", |m| m.name.as_str());
            if let Some(node) = name.strip_prefix("node-") {
                let renewed = lease.spec.as_ref().map_or("", |s| s.renew_time.as_str());
                leased.insert(node.to_string(), renewed.to_string());
            }
        }
        observed.retain(|node, _| leased.contains_key(node));
        for (node, renewed) in leased {
            match observed.get(&node) {
                Some((seen, _)) if *seen == renewed => {}
                _ => {
                    observed.insert(node, (renewed, now));
                }
            }
        }
        if !active(&leader) {
            active_since = None;
            not_ready_since.clear();
            continue;
        }
        let since = *active_since.get_or_insert(now);
        for node in caches.nodes.all() {
            let name = node.metadata.as_ref().map_or("", |m| m.name.as_str());
            let Some((_, seen)) = observed.get(name) else {
                continue;
            };
            let silent = now.duration_since((*seen).max(since));
            if silent < config.node_grace_period {
                not_ready_since.remove(name);
                continue;
            }
            if node_is_ready(&node) {
                mark_not_ready(&conn, &caches, &node, silent).await;
            }
            let down = *not_ready_since.entry(name.to_string()).or_insert(now);
            if now.duration_since(down) >= config.pod_eviction_timeout {
                evict(&conn, &caches, name, silent).await;
            }
        }
    }
}

async fn mark_not_ready(conn: &Connector, caches: &Caches, node: &pb::Node, silent: Duration) {
    let name = node.metadata.as_ref().map_or("", |m| m.name.as_str());
    let silent = humantime::format_duration(Duration::from_secs(silent.as_secs()));
    tracing::warn!(node = %name, %silent, "node stopped renewing its lease: marking it NotReady");
    let mut next = node.clone();
    let status = next.status.get_or_insert_default();
    set_condition(
        &mut status.conditions,
        condition(
            "Ready",
            "NodeStatusUnknown",
            format!("the node's agent has not renewed its lease for {silent}"),
        ),
    );
    let ok = match conn.channel().await {
        Ok(ch) => nodes::update_status(ch, next).await.is_ok(),
        Err(_) => false,
    };
    count_write(NAME, "update_status", ok);
    if ok {
        metrics::counter!("berth_controller_node_transitions_total", "to" => "NotReady")
            .increment(1);
    }
    for pod in pods_on(caches, name) {
        let ready = pod.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.r#type == "Ready" && c.status == "True")
        });
        if !ready {
            continue;
        }
        let mut next = pod;
        let status = next.status.get_or_insert_default();
        set_condition(
            &mut status.conditions,
            condition("Ready", "NodeNotReady", format!("node {name} is not ready")),
        );
        write_pod_status(conn, next).await;
    }
}

/// Pods bound to `node` that have not finished.
fn pods_on(caches: &Caches, node: &str) -> Vec<pb::Pod> {
    caches
        .pods
        .all()
        .into_iter()
        .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name == node) && !pod_is_terminal(p))
        .map(|p| (*p).clone())
        .collect()
}

async fn write_pod_status(conn: &Connector, pod: pb::Pod) -> bool {
    let ok = match conn.channel().await {
        Ok(ch) => pods::update_status(ch, pod).await.is_ok(),
        Err(_) => false,
    };
    count_write(NAME, "update_status", ok);
    ok
}

async fn evict(conn: &Connector, caches: &Caches, node: &str, silent: Duration) {
    let silent = humantime::format_duration(Duration::from_secs(silent.as_secs()));
    for mut pod in pods_on(caches, node) {
        let name = pod
            .metadata
            .as_ref()
            .map_or("", |m| m.name.as_str())
            .to_string();
        let status = pod.status.get_or_insert_default();
        status.phase = "Failed".into();
        status.reason = "NodeLost".into();
        status.message = format!("node {node} has been unreachable for {silent}");
        set_condition(
            &mut status.conditions,
            condition("Ready", "NodeLost", format!("node {node} is lost")),
        );
        if write_pod_status(conn, pod).await {
            tracing::warn!(%node, pod = %name, "pod failed: its node is lost");
            metrics::counter!("berth_controller_node_transitions_total", "to" => "NodeLost")
                .increment(1);
        }
    }
}
