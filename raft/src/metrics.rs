//! Publishes openraft's view of this node as Prometheus metrics.

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;

use crate::types::Raft;

pub fn spawn_reporter(raft: Raft) {
    let mut rx = raft.metrics();
    tokio::spawn(async move {
        let mut leader = None;
        loop {
            let m = rx.borrow_and_update().clone();
            let term = m.current_term;
            metrics::gauge!("berth_raft_term").set(term as f64);
            metrics::gauge!("berth_raft_leader_id")
                .set(m.current_leader.map_or(-1.0, |l| l as f64));
            metrics::gauge!("berth_raft_is_leader").set(if m.state == ServerState::Leader {
                1.0
            } else {
                0.0
            });
            let index = |id: &Option<openraft::alias::LogIdOf<crate::types::TypeConfig>>| {
                id.as_ref().map_or(0, |l| l.index)
            };
            metrics::gauge!("berth_raft_commit_index").set(index(&m.local_committed) as f64);
            metrics::gauge!("berth_raft_applied_index").set(index(&m.last_applied) as f64);
            metrics::gauge!("berth_raft_snapshot_index").set(index(&m.snapshot) as f64);
            let last = m.last_log_index.unwrap_or(0);
            let first = m.purged.as_ref().map_or(0, |p| p.index + 1);
            metrics::gauge!("berth_raft_last_log_index").set(last as f64);
            metrics::gauge!("berth_raft_log_entries").set(
                last.saturating_sub(first) as f64
                    + if m.last_log_index.is_some() { 1.0 } else { 0.0 },
            );
            if m.current_leader != leader {
                if leader.is_some() || m.current_leader.is_some() {
                    metrics::counter!("berth_raft_leader_changes_total").increment(1);
                }
                tracing::info!(leader = ?m.current_leader, term, "leader changed");
                leader = m.current_leader;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
}
