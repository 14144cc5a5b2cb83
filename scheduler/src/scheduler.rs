//! The scheduling loop: one task owns the cache and the queue, takes in
//! watch changes and bind results, and while it holds the lease places
//! pods in batches: filter a share of the nodes (from a rotating start),
//! score the feasible ones, pick the best (ties at random), assume the
//! placement and send the batch's binds in one call, with a few batches in
//! flight.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_api::pb;
use berth_api::Object;
use berth_client::connect::Connector;
use berth_client::objects::pods;
use berth_client::watcher;
use berth_client::watcher::Change;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cache::pod_key;
use crate::cache::Cache;
use crate::cache::PodInfo;
use crate::cache::PodKey;
use crate::cache::PodState;
use crate::config::SchedulerConfig;
use crate::plugins;
use crate::plugins::Spread;
use crate::plugins::Unfit;
use crate::queue::Queue;
use berth_client::election::LeaderState;

/// Scheduler names this scheduler places pods for.
const SCHEDULER_NAMES: &[&str] = &["", "default-scheduler", "berth-scheduler"];

/// A batch's outcome: each pod with the node it was sent to and its result
/// (or the call's error for all of them).
struct BatchResult {
    epoch: u64,
    binds: Vec<(PodKey, String)>,
    outcome: Result<Vec<pb::BindResult>, tonic::Status>,
}

pub struct Scheduler {
    config: SchedulerConfig,
    conn: Connector,
    cache: Cache,
    queue: Queue,
    /// Where the next pod's node scan starts, so that pods spread over
    /// the nodes rather than filling the first ones scanned.
    next_start: usize,
    in_flight: usize,
    /// An epoch the store refused: not used again, whatever the election
    /// still believes.
    refused_epoch: Option<u64>,
    results_tx: mpsc::UnboundedSender<BatchResult>,
    results_rx: mpsc::UnboundedReceiver<BatchResult>,
    /// When each pending pod was first seen, for the latency histogram.
    seen: std::collections::HashMap<PodKey, Instant>,
    /// The first node list arrived.
    nodes_listed: bool,
    status_writes: Arc<tokio::sync::Semaphore>,
}

/// Why a pod cannot be placed now, in kubectl's words.
pub fn unschedulable_message(nodes: usize, unfit: &BTreeMap<Unfit, u32>) -> String {
    if nodes == 0 {
        return "0/0 nodes are available: no nodes are registered.".into();
    }
    let mut by_reason: BTreeMap<String, u32> = BTreeMap::new();
    for (u, n) in unfit {
        for r in u.reasons() {
            *by_reason.entry(r).or_default() += n;
        }
    }
    let parts: Vec<String> = by_reason
        .iter()
        .map(|(reason, n)| format!("{n} {reason}"))
        .collect();
    format!("0/{nodes} nodes are available: {}.", parts.join(", "))
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, conn: Connector) -> Self {
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        Self {
            config,
            conn,
            cache: Cache::default(),
            queue: Queue::default(),
            next_start: 0,
            in_flight: 0,
            refused_epoch: None,
            results_tx,
            results_rx,
            seen: Default::default(),
            nodes_listed: false,
            status_writes: Arc::new(tokio::sync::Semaphore::new(32)),
        }
    }

    pub async fn run(
        mut self,
        mut nodes: mpsc::Receiver<Change<pb::Node>>,
        mut leader: LeaderState,
    ) {
        let mut pods = PodWatch::default();
        loop {
            let epoch = (*leader.borrow())
                .filter(|l| l.is_valid() && Some(l.epoch) != self.refused_epoch)
                .map(|l| l.epoch);
            if epoch.is_some() != pods.is_running() {
                self.follow_pods(&mut pods, epoch.is_some());
            }
            let mut changed = false;
            while let Ok(c) = nodes.try_recv() {
                changed |= self.on_node(c);
            }
            for _ in 0..50_000 {
                let Some(c) = pods.try_recv() else { break };
                changed |= self.on_pod(c);
            }
            while let Ok(r) = self.results_rx.try_recv() {
                changed |= self.on_result(r);
            }
            self.queue.release(changed);
            metrics::gauge!("berth_scheduler_queue_pods").set(self.queue.len() as f64);
            let ready = self.nodes_listed
                && pods.listed
                && self.in_flight < self.config.max_in_flight_batches
                && self.queue.active_len() > 0;
            if let (Some(epoch), true) = (epoch, ready) {
                self.schedule_batch(epoch);
                continue;
            }
            let wake = self
                .queue
                .next_release()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                c = nodes.recv() => match c {
                    Some(c) => if self.on_node(c) { self.queue.release(true) },
                    None => return,
                },
                Some(c) = pods.recv() => if self.on_pod(c) { self.queue.release(true) },
                Some(r) = self.results_rx.recv() => if self.on_result(r) { self.queue.release(true) },
                r = leader.changed() => if r.is_err() { return },
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Starts following pods on becoming active, and stops (forgetting
    /// them) on standing by: a standby keeps its node cache warm but not
    /// the pods, whose watch costs every controller and every scheduler
    /// CPU in proportion to the cluster's churn. Taking over costs one list.
    fn follow_pods(&mut self, pods: &mut PodWatch, active: bool) {
        pods.stop();
        self.cache.retain_pods(&Default::default());
        self.queue.clear();
        self.seen.clear();
        if active {
            let (tx, rx) = mpsc::channel(65_536);
            let task = tokio::spawn(watcher::run::<pb::Pod>(
                self.conn.clone(),
                watcher::Scope::default(),
                tx,
            ));
            *pods = PodWatch {
                rx: Some(rx),
                task: Some(task),
                listed: false,
            };
        }
    }

    /// Returns whether the change may have made room.
    fn on_node(&mut self, change: Change<pb::Node>) -> bool {
        match change {
            Change::Listed(items) => {
                self.nodes_listed = true;
                let names: std::collections::HashSet<String> =
                    items.iter().map(|n| n.name().to_string()).collect();
                let gone: Vec<String> = self
                    .cache
                    .nodes()
                    .iter()
                    .filter(|n| !names.contains(&n.name))
                    .map(|n| n.name.clone())
                    .collect();
                for name in gone {
                    self.cache.remove_node(&name);
                }
                for n in &items {
                    self.cache.set_node(n);
                }
                true
            }
            Change::Applied(n) => self.cache.set_node(&n),
            Change::Deleted(n) => {
                self.cache.remove_node(n.name());
                false
            }
        }
    }

    /// Returns whether the change may have made room.
    fn on_pod(&mut self, change: Change<pb::Pod>) -> bool {
        match change {
            Change::Listed(items) => {
                let keys: std::collections::HashSet<PodKey> = items.iter().map(pod_key).collect();
                self.cache.retain_pods(&keys);
                self.queue.retain(|k| keys.contains(k));
                for p in items {
                    self.on_pod(Change::Applied(p));
                }
                true
            }
            Change::Applied(pod) => {
                let key = pod_key(&pod);
                let held = self.cache.is_placed(&key);
                match self.cache.observe_pod(&pod) {
                    PodState::Pending if wants_us(&pod) => {
                        self.seen.entry(key.clone()).or_insert_with(Instant::now);
                        self.queue.upsert(pod);
                    }
                    // The bind's result decides what happens to it.
                    PodState::Binding => {}
                    PodState::Pending | PodState::Placed => {
                        self.queue.remove(&key);
                        self.seen.remove(&key);
                    }
                }
                held && !self.cache.is_placed(&key)
            }
            Change::Deleted(pod) => {
                let key = pod_key(&pod);
                self.cache.unplace(&key);
                self.queue.remove(&key);
                self.seen.remove(&key);
                true
            }
        }
    }

    fn schedule_batch(&mut self, epoch: u64) {
        let mut binds = Vec::new();
        let mut requests = Vec::new();
        while binds.len() < self.config.batch_size {
            let Some((key, pending)) = self.queue.pop() else {
                break;
            };
            let name = pending.pod.name().to_string();
            let info = Arc::new(PodInfo::new(&pending.pod));
            match self.decide(&info) {
                Ok(node) => {
                    requests.push(pb::BindRequest {
                        namespace: info.namespace.clone(),
                        name,
                        node_name: node.clone(),
                        epoch,
                    });
                    self.cache.place(info, &node, true);
                    binds.push((key, node));
                    metrics::counter!("berth_scheduler_attempts_total", "result" => "scheduled")
                        .increment(1);
                }
                Err(message) => {
                    metrics::counter!("berth_scheduler_attempts_total", "result" => "unschedulable")
                        .increment(1);
                    self.report_unschedulable(&key, message);
                    self.queue.back_off(key, &self.config.backoff());
                }
            }
        }
        if binds.is_empty() {
            return;
        }
        metrics::histogram!("berth_scheduler_batch_binds").record(binds.len() as f64);
        self.in_flight += 1;
        let conn = self.conn.clone();
        let tx = self.results_tx.clone();
        tokio::spawn(async move {
            let outcome = match conn.channel().await {
                Ok(ch) => pods::bind_batch(
                    ch,
                    pb::BindBatchRequest {
                        epoch,
                        binds: requests,
                    },
                )
                .await
                .map(|r| r.results),
                Err(e) => Err(tonic::Status::unavailable(e.to_string())),
            };
            if let Err(s) = &outcome {
                conn.failed(s).await;
            }
            let _ = tx.send(BatchResult {
                epoch,
                binds,
                outcome,
            });
        });
    }

    /// The best node for the pod, or why there is none.
    fn decide(&mut self, pod: &PodInfo) -> Result<String, String> {
        let nodes = self.cache.nodes();
        let n = nodes.len();
        let want = self.config.nodes_to_find(n);
        let mut feasible = Vec::with_capacity(want.min(1024));
        let mut unfit: BTreeMap<Unfit, u32> = BTreeMap::new();
        let mut scanned = 0;
        for i in 0..n {
            let at = (self.next_start + i) % n;
            scanned += 1;
            match plugins::filter(pod, &nodes[at]) {
                Ok(()) => {
                    feasible.push(at);
                    if feasible.len() >= want {
                        break;
                    }
                }
                Err(u) => *unfit.entry(u).or_default() += 1,
            }
        }
        if n > 0 {
            self.next_start = (self.next_start + scanned) % n;
        }
        if feasible.is_empty() {
            return Err(unschedulable_message(n, &unfit));
        }
        // Few zones, many nodes: count each zone once.
        let mut zones: Vec<(Arc<str>, u32)> = Vec::new();
        let mut zone_count = |w, z: &Arc<str>| match zones.iter().find(|(k, _)| Arc::ptr_eq(k, z)) {
            Some((_, n)) => *n,
            None => {
                let n = self.cache.zone_count(w, z);
                zones.push((z.clone(), n));
                n
            }
        };
        let counts: Vec<(u32, u32)> = feasible
            .iter()
            .map(|&i| plugins::spread_counts(pod, &nodes[i], &mut zone_count))
            .collect();
        let max_on_node = counts.iter().map(|c| c.0).max().unwrap_or(0);
        let max_in_zone = counts.iter().map(|c| c.1).max().unwrap_or(0);
        let mut rng = rand::rng();
        let mut best = (0u64, 0usize, 0u32);
        for (j, &i) in feasible.iter().enumerate() {
            let spread = Spread {
                on_node: counts[j].0,
                in_zone: counts[j].1,
                max_on_node,
                max_in_zone,
            };
            let score = plugins::score(&self.config, pod, &nodes[i], spread);
            // Reservoir sampling among the nodes tied for the best score.
            if j == 0 || score > best.0 {
                best = (score, i, 1);
            } else if score == best.0 {
                best.2 += 1;
                if rng.random_range(0..best.2) == 0 {
                    best.1 = i;
                }
            }
        }
        Ok(nodes[best.1].name.clone())
    }

    /// Writes condition PodScheduled=False (reason Unschedulable) with the
    /// message, unless the pod already says so.
    fn report_unschedulable(&mut self, key: &PodKey, message: String) {
        let Some(pending) = self.queue.get_mut(key) else {
            return;
        };
        if pending.reported.as_deref() == Some(message.as_str()) {
            return;
        }
        pending.reported = Some(message.clone());
        tracing::debug!(pod = %key, %message, "pod is unschedulable");
        let mut pod = pending.pod.clone();
        let status = pod.status.get_or_insert_default();
        status.conditions.retain(|c| c.r#type != "PodScheduled");
        status.conditions.push(pb::Condition {
            r#type: "PodScheduled".into(),
            status: "False".into(),
            reason: "Unschedulable".into(),
            message,
            last_transition_time: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                .to_string(),
            ..Default::default()
        });
        let conn = self.conn.clone();
        let writes = self.status_writes.clone();
        tokio::spawn(async move {
            // Bounded, so that a cluster full of pods that fit nowhere does
            // not flood the controllers with status writes.
            let Ok(_permit) = writes.acquire_owned().await else {
                return;
            };
            let Ok(ch) = conn.channel().await else { return };
            // At the revision the decision saw: a pod bound meanwhile keeps
            // its PodScheduled=True.
            if let Err(s) = pods::update_status(ch, pod).await {
                tracing::debug!(error = %s.message(), "unschedulable status not written");
            }
        });
    }

    /// Returns whether a refused placement freed room.
    fn on_result(&mut self, result: BatchResult) -> bool {
        self.in_flight -= 1;
        let results = match result.outcome {
            Ok(r) => r,
            Err(status) => {
                tracing::warn!(error = %status.message(), binds = result.binds.len(), "bind batch failed; placing its pods again");
                metrics::counter!("berth_scheduler_binds_total", "result" => "error")
                    .increment(result.binds.len() as u64);
                for (key, _) in result.binds {
                    self.cache.unassume(&key);
                    self.queue.retry(key);
                }
                return true;
            }
        };
        let mut freed = false;
        for ((key, node), r) in result.binds.into_iter().zip(results) {
            let reason = if r.code == 0 { "ok" } else { r.reason.as_str() };
            freed |= reason != "ok";
            metrics::counter!("berth_scheduler_binds_total", "result" => reason.to_string())
                .increment(1);
            match reason {
                "ok" => {
                    self.queue.remove(&key);
                    if let Some(since) = self.seen.remove(&key) {
                        metrics::histogram!("berth_scheduler_scheduling_duration_seconds")
                            .record(since.elapsed().as_secs_f64());
                    }
                }
                "already_bound" | "pod_not_found" | "invalid" => {
                    self.cache.unassume(&key);
                    self.queue.remove(&key);
                }
                "stale_epoch" => {
                    self.refused_epoch = Some(result.epoch);
                    self.cache.unassume(&key);
                    self.queue.retry(key);
                }
                _ => {
                    tracing::debug!(pod = %key, %node, message = %r.message, "bind refused");
                    self.cache.unassume(&key);
                    self.queue.back_off(key, &self.config.backoff());
                }
            }
        }
        freed
    }
}

/// The pod watch of an active scheduler.
#[derive(Default)]
struct PodWatch {
    rx: Option<mpsc::Receiver<Change<pb::Pod>>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The first list arrived: the cache knows every bound pod.
    listed: bool,
}

impl PodWatch {
    fn is_running(&self) -> bool {
        self.task.is_some()
    }

    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        *self = Self::default();
    }

    fn note(&mut self, change: Option<Change<pb::Pod>>) -> Option<Change<pb::Pod>> {
        if matches!(change, Some(Change::Listed(_))) {
            self.listed = true;
        }
        change
    }

    fn try_recv(&mut self) -> Option<Change<pb::Pod>> {
        let change = self.rx.as_mut()?.try_recv().ok();
        self.note(change)
    }

    /// The next change; never, while there is no watch.
    async fn recv(&mut self) -> Option<Change<pb::Pod>> {
        let change = match self.rx.as_mut() {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        };
        self.note(change)
    }
}

/// A pending pod this scheduler should place.
fn wants_us(pod: &pb::Pod) -> bool {
    let name = pod.spec.as_ref().map_or("", |s| s.scheduler_name.as_str());
    SCHEDULER_NAMES.contains(&name) && pod.meta().is_some_and(|m| m.deletion_timestamp.is_empty())
}

#[cfg(test)]
mod tests {
    use berth_api::resources::Resources;
    use berth_testkit::objects;

    use super::*;

    fn node(name: &str, cpu: &str, taint: Option<(&str, &str)>) -> pb::Node {
        let node =
            objects::node(name).allocatable(&[("cpu", cpu), ("memory", "4Gi"), ("pods", "110")]);
        match taint {
            Some((key, value)) => node.taint(key, value, "NoSchedule").build(),
            None => node.build(),
        }
    }

    fn pod(cpu: &str) -> PodInfo {
        PodInfo::new(&objects::pod("p").requests(&[("cpu", cpu)]).build())
    }

    fn scheduler(nodes: &[pb::Node]) -> Scheduler {
        let conn = Connector::new(
            vec!["127.0.0.1:1".into()],
            berth_client::Transport::Insecure,
        )
        .unwrap();
        let mut s = Scheduler::new(SchedulerConfig::default(), conn);
        for n in nodes {
            s.cache.set_node(n);
        }
        s
    }

    #[tokio::test]
    async fn unschedulable_pods_get_kubectl_style_messages() {
        let mut s = scheduler(&[
            node("a", "1", None),
            node("b", "1", None),
            node("c", "1", None),
            node("d", "8", Some(("dedicated", "gpu"))),
            node("e", "8", Some(("dedicated", "gpu"))),
        ]);
        assert_eq!(
            s.decide(&pod("2")).unwrap_err(),
            "0/5 nodes are available: 3 Insufficient cpu, 2 node(s) had untolerated taint {dedicated: gpu}."
        );
        assert_eq!(
            scheduler(&[]).decide(&pod("1")).unwrap_err(),
            "0/0 nodes are available: no nodes are registered."
        );
    }

    #[tokio::test]
    async fn ties_are_broken_at_random_and_assumed_pods_count() {
        let nodes: Vec<pb::Node> = (0..4).map(|i| node(&format!("n{i}"), "4", None)).collect();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(scheduler(&nodes).decide(&pod("1")).unwrap());
        }
        assert_eq!(
            seen.len(),
            4,
            "every equally good node gets chosen: {seen:?}"
        );
        // Sixteen 1-cpu pods fill four 4-cpu nodes exactly, assumed one by
        // one; the seventeenth fits nowhere.
        let mut s = scheduler(&nodes);
        for i in 0..16 {
            let p = Arc::new(PodInfo {
                key: format!("default/p{i}").into(),
                ..pod("1")
            });
            let n = s.decide(&p).unwrap();
            s.cache.place(p, &n, true);
        }
        for n in s.cache.nodes() {
            assert_eq!(
                n.used,
                Resources {
                    cpu_millis: 4000,
                    memory_bytes: 0,
                    pods: 4
                },
                "{}",
                n.name
            );
        }
        assert!(s
            .decide(&pod("1"))
            .unwrap_err()
            .contains("4 Insufficient cpu"));
    }

    #[tokio::test]
    async fn a_pod_whose_bind_is_in_flight_stays_queued_until_the_result() {
        let mut s = scheduler(&[node("a", "4", None)]);
        s.nodes_listed = true;
        let mut p = pb::Pod::default();
        p.meta_mut().name = "p".into();
        p.meta_mut().namespace = "default".into();
        s.on_pod(Change::Applied(p.clone()));
        let (key, _) = s.queue.pop().unwrap();
        s.cache.place(Arc::new(PodInfo::new(&p)), "a", true);
        s.in_flight = 1;
        // An update of the still pending pod (its status, a label) arrives
        // while the bind is in flight.
        s.on_pod(Change::Applied(p.clone()));
        assert_eq!(s.queue.len(), 1);
        let refused = pb::BindResult {
            code: tonic::Code::FailedPrecondition as i32,
            reason: "insufficient".into(),
            ..Default::default()
        };
        let freed = s.on_result(BatchResult {
            epoch: 1,
            binds: vec![(key, "a".into())],
            outcome: Ok(vec![refused]),
        });
        assert!(freed);
        assert_eq!(
            s.queue.len(),
            1,
            "the pod is tried again after its back-off"
        );
        assert!(!s.cache.is_placed("default/p"));
    }
}
