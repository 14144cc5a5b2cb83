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
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use berth_api::names::SYSTEM_NAMESPACE;
use berth_api::pb;
use berth_api::resources::node_is_ready;
use berth_api::resources::pod_is_terminal;
use berth_api::time::now_rfc3339;
use berth_api::Object;
use berth_client::connect::Connector;
use berth_client::controller::Action;
use berth_client::controller::Controller;
use berth_client::election::LeaderState;
use berth_client::objects::nodes;
use berth_client::objects::pods;
use berth_client::reflector;
use tokio::time::Instant;

use super::written;
use super::Caches;
use super::Error;
use super::LazyCaches;
use super::ReconcileConfig;

const NAME: &str = "node-lifecycle";
/// A node is looked at again at least this often, whatever it says.
const RESYNC: Duration = Duration::from_secs(30);

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

/// What this controller has seen of the nodes, by its own clock.
#[derive(Default)]
struct Observations {
    /// The lease epoch these were gathered under, and when it began: a new
    /// holder gives every node a full grace period, as it saw nothing
    /// before.
    term: Option<(u64, Instant)>,
    /// Per node: its lease's last renewTime and when this controller saw
    /// it change.
    renewed: HashMap<String, (String, Instant)>,
    not_ready_since: HashMap<String, Instant>,
}

struct Ctx {
    conn: Connector,
    caches: Caches,
    config: ReconcileConfig,
    leader: LeaderState,
    seen: Mutex<Observations>,
}

/// What a node's state asks for now.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Renewing: look again when the grace period would run out.
    Live { check_in: Duration },
    /// Silent past the grace period: mark it NotReady, then wait out the
    /// eviction timeout.
    Silent {
        silent: Duration,
        evict_in: Duration,
    },
    /// NotReady for the eviction timeout: fail its pods.
    Lost { silent: Duration },
}

impl Observations {
    /// Records the node's lease renewal `renewed` seen at `now` and judges
    /// the node.
    fn judge(
        &mut self,
        node: &str,
        renewed: &str,
        epoch: u64,
        now: Instant,
        config: &ReconcileConfig,
    ) -> Verdict {
        let since = match self.term {
            Some((e, since)) if e == epoch => since,
            _ => {
                self.renewed.clear();
                self.not_ready_since.clear();
                self.term = Some((epoch, now));
                now
            }
        };
        let seen = match self.renewed.get(node) {
            Some((r, at)) if r == renewed => *at,
            _ => {
                self.renewed
                    .insert(node.to_string(), (renewed.to_string(), now));
                now
            }
        };
        let silent = now.duration_since(seen.max(since));
        if silent < config.node_grace_period {
            self.not_ready_since.remove(node);
            return Verdict::Live {
                check_in: config.node_grace_period - silent,
            };
        }
        let down = *self.not_ready_since.entry(node.to_string()).or_insert(now);
        let waited = now.duration_since(down);
        match config.pod_eviction_timeout.checked_sub(waited) {
            Some(left) if !left.is_zero() => Verdict::Silent {
                silent,
                evict_in: left,
            },
            _ => Verdict::Lost { silent },
        }
    }

    fn forget(&mut self, node: &str) {
        self.renewed.remove(node);
        self.not_ready_since.remove(node);
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
    let ctx = Arc::new(Ctx {
        conn,
        caches: caches.clone(),
        config,
        leader: leader.clone(),
        seen: Mutex::default(),
    });
    Controller::new(NAME, caches.nodes.clone())
        .watches(caches.leases.clone(), |l: &pb::Lease| {
            l.name()
                .strip_prefix("node-")
                .map(String::from)
                .into_iter()
                .collect()
        })
        .reads(caches.pods.clone())
        .resync_every(RESYNC)
        .gated_by(leader)
        .run(reconcile, ctx)
        .await
}

/// Only nodes that have a lease are watched over.
async fn reconcile(node: Arc<pb::Node>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let name = node.name().to_string();
    let lease = ctx
        .caches
        .leases
        .get(&format!("{SYSTEM_NAMESPACE}/node-{name}"));
    let Some(lease) = lease else {
        ctx.seen.lock().expect("observations").forget(&name);
        return Ok(Action::AwaitChange);
    };
    let renewed = lease.spec.as_ref().map_or("", |s| s.renew_time.as_str());
    let leadership = *ctx.leader.borrow();
    let Some(epoch) = leadership.map(|l| l.epoch) else {
        return Ok(Action::AwaitChange);
    };
    let verdict = ctx.seen.lock().expect("observations").judge(
        &name,
        renewed,
        epoch,
        Instant::now(),
        &ctx.config,
    );
    match verdict {
        Verdict::Live { check_in } => Ok(Action::Requeue(check_in)),
        Verdict::Silent { silent, evict_in } => {
            if node_is_ready(&node) {
                mark_not_ready(&ctx, &node, silent).await?;
            }
            Ok(Action::Requeue(evict_in))
        }
        Verdict::Lost { silent } => {
            if node_is_ready(&node) {
                mark_not_ready(&ctx, &node, silent).await?;
            }
            evict(&ctx, &name, silent).await?;
            // Pods bound meanwhile (by a scheduler that had not seen the
            // node go) are failed at the next look.
            Ok(Action::Requeue(ctx.config.node_grace_period))
        }
    }
}

async fn mark_not_ready(ctx: &Ctx, node: &pb::Node, silent: Duration) -> Result<(), Error> {
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
    let result = nodes::update_status(ctx.conn.channel().await?, next).await;
    written(NAME, "update_status", || format!("node {name}"), result)?;
    metrics::counter!("berth_controller_node_transitions_total", "to" => "NotReady").increment(1);
    for pod in pods_on(&ctx.caches, name) {
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
        write_pod_status(ctx, next).await?;
    }
    Ok(())
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

async fn write_pod_status(ctx: &Ctx, pod: pb::Pod) -> Result<(), Error> {
    let what = || format!("pod {}", reflector::key(&pod));
    let result = pods::update_status(ctx.conn.channel().await?, pod.clone()).await;
    written(NAME, "update_status", what, result).map(|_| ())
}

async fn evict(ctx: &Ctx, node: &str, silent: Duration) -> Result<(), Error> {
    let silent = humantime::format_duration(Duration::from_secs(silent.as_secs()));
    for mut pod in pods_on(&ctx.caches, node) {
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
        write_pod_status(ctx, pod).await?;
        tracing::warn!(%node, pod = %name, "pod failed: its node is lost");
        metrics::counter!("berth_controller_node_transitions_total", "to" => "NodeLost")
            .increment(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ReconcileConfig {
        let mut c = ReconcileConfig::new("test".into());
        c.node_grace_period = Duration::from_secs(10);
        c.pod_eviction_timeout = Duration::from_secs(30);
        c
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_node_is_judged_by_this_controllers_clock() {
        let (c, t0) = (config(), Instant::now());
        let secs = Duration::from_secs;
        let mut seen = Observations::default();
        let live = |s| Verdict::Live { check_in: secs(s) };
        let steps = [
            ("r1", 0, live(10)),
            // Renewed at 4 s: the grace period starts over.
            ("r2", 4, live(10)),
            ("r2", 9, live(5)),
            (
                "r2",
                14,
                Verdict::Silent {
                    silent: secs(10),
                    evict_in: secs(30),
                },
            ),
            (
                "r2",
                40,
                Verdict::Silent {
                    silent: secs(36),
                    evict_in: secs(4),
                },
            ),
            ("r2", 44, Verdict::Lost { silent: secs(40) }),
            // A renewal brings it back.
            ("r3", 45, live(10)),
        ];
        for (renewed, at, want) in steps {
            assert_eq!(
                seen.judge("n", renewed, 1, t0 + secs(at), &c),
                want,
                "at {at} s"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_lease_term_gives_every_node_a_full_grace_period() {
        let (c, t0) = (config(), Instant::now());
        let secs = Duration::from_secs;
        let mut seen = Observations::default();
        seen.judge("n", "r1", 1, t0, &c);
        assert!(matches!(
            seen.judge("n", "r1", 1, t0 + secs(20), &c),
            Verdict::Silent { .. }
        ));
        // Another controller held the lease meanwhile, then this one again.
        assert_eq!(
            seen.judge("n", "r1", 3, t0 + secs(60), &c),
            Verdict::Live { check_in: secs(10) }
        );
    }
}
