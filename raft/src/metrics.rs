//! Publishes openraft's view of this node as Prometheus metrics.

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;

use crate::types::Raft;

const COUNTERS: [(&str, &str); 5] = [
    (
        "berth_raft_leader_changes_total",
        "Times the known leader changed",
    ),
    (
        "berth_raft_snapshots_built_total",
        "Snapshots built by this controller",
    ),
    (
        "berth_raft_snapshots_installed_total",
        "Snapshots received and installed",
    ),
    (
        "berth_raft_log_appended_entries_total",
        "Log entries appended",
    ),
    ("berth_raft_applied_txns_total", "Transactions applied"),
];

/// Names every metric with its help text, and makes counters visible at 0
/// before their first event so that a scrape always shows them.
fn describe() {
    use metrics::describe_counter;
    use metrics::describe_gauge;
    use metrics::describe_histogram;
    use metrics::Unit;
    describe_gauge!("berth_raft_term", "Current Raft term");
    describe_gauge!(
        "berth_raft_leader_id",
        "Id of the leader this controller follows, -1 when none"
    );
    describe_gauge!("berth_raft_is_leader", "1 on the leader");
    describe_gauge!(
        "berth_raft_commit_index",
        "Highest log index known committed"
    );
    describe_gauge!(
        "berth_raft_applied_index",
        "Highest log index applied to the state machine"
    );
    describe_gauge!(
        "berth_raft_snapshot_index",
        "Log index of the last snapshot"
    );
    describe_gauge!("berth_raft_last_log_index", "Highest log index in the log");
    describe_gauge!(
        "berth_raft_log_entries",
        "Entries in the log (not yet purged)"
    );
    describe_gauge!("berth_store_revision", "Revision of the applied store");
    describe_histogram!(
        "berth_raft_apply_duration_seconds",
        Unit::Seconds,
        "Time to apply one batch of entries"
    );
    describe_histogram!(
        "berth_raft_log_fsync_duration_seconds",
        Unit::Seconds,
        "Time of one group-commit fsync"
    );
    describe_histogram!(
        "berth_raft_log_fsync_batch_entries",
        "Entries made durable by one fsync"
    );
    describe_histogram!(
        "berth_raft_snapshot_build_duration_seconds",
        Unit::Seconds,
        "Time to build a snapshot"
    );
    describe_histogram!(
        "berth_store_batch_txns",
        "Transactions coalesced into one Raft entry"
    );
    describe_histogram!(
        "berth_store_read_round_reads",
        "Linearizable reads answered by one read-index round"
    );
    describe_histogram!(
        "berth_store_propose_duration_seconds",
        Unit::Seconds,
        "Time from proposing a batch to its outcome"
    );
    for (name, help) in COUNTERS {
        describe_counter!(name, help);
        metrics::counter!(name).increment(0);
    }
}

pub fn spawn_reporter(raft: Raft) {
    describe();
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
