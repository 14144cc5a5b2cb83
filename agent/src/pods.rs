//! The level-triggered pod sync loop. On every change of the pods bound to
//! this node, on every probe verdict, on every finished runtime operation
//! and on a period, it compares the pods the API wants here with the
//! instances the runtime reports, and closes the gap: starts what is
//! missing, restarts what ended (by restart policy, with crash back-off),
//! kills what failed its liveness probe, stops what is no longer wanted,
//! and writes each pod's status when it differs from the stored one.
//!
//! Runtime operations run as tasks, at most one per container at a time,
//! so that a slow stop (a long grace period) holds up nothing else. Nothing
//! is stopped before the first list of pods has arrived: an agent that
//! restarts adopts the instances its pods still have.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;
use std::time::SystemTime;

use berth_api::pb;
use berth_api::quantity::Quantity;
use berth_api::resources::pod_is_terminal;
use berth_client::connect::Connector;
use berth_client::objects::pods;
use berth_client::watcher::Change;
use tokio::sync::mpsc;

use crate::network::BridgeNetwork;
use crate::network::PodAddress;
use crate::probe;
use crate::probe::Prober;
use crate::runtime::ContainerSpec;
use crate::runtime::Instance;
use crate::runtime::InstanceState;
use crate::runtime::PodRef;
use crate::runtime::Runtime;
use crate::runtime::RuntimeError;
use crate::status;
use crate::status::ContainerView;

/// A pod's grace period when its spec does not set one.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// A container that ran this long before it ended starts its back-off
/// afresh.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);

#[derive(Clone, Debug)]
pub struct SyncConfig {
    pub node: String,
    pub host_ip: String,
    pub sync_interval: Duration,
    /// First crash back-off; it doubles per crash up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

/// Pods of this node by namespace and name, for the log server.
pub type PodIndex = Arc<RwLock<HashMap<(String, String), PodRef>>>;

type ContainerKey = (String, String);

/// Crash back-off of one container.
#[derive(Clone, Copy, Debug)]
struct Backoff {
    /// The attempt whose end this entry has counted.
    attempt: u32,
    crashes: u32,
    delay: Duration,
    until: SystemTime,
}

/// A start the runtime refused (an image it cannot get, say).
#[derive(Clone, Debug)]
struct StartFailure {
    reason: String,
    message: String,
    failures: u32,
    retry_at: SystemTime,
}

enum Done {
    Container(ContainerKey, Option<RuntimeError>),
    /// A pod's sandbox was set up, or not.
    Prepared(PodRef, Prepared),
    Sandbox(String),
    Status(String, Option<Box<pb::Pod>>),
}

pub struct PodSync {
    config: SyncConfig,
    conn: Connector,
    runtime: Arc<dyn Runtime>,
    listed: bool,
    pods: HashMap<String, pb::Pod>,
    index: PodIndex,
    /// Grace periods of pods deleted from the API whose containers may
    /// still run.
    deleted: HashMap<String, Duration>,
    backoffs: HashMap<ContainerKey, Backoff>,
    /// Refused starts by (pod uid, container); a pod's refused sandbox is
    /// kept under an empty container name (no container has one).
    start_failures: HashMap<ContainerKey, StartFailure>,
    busy: HashSet<ContainerKey>,
    busy_sandboxes: HashSet<String>,
    /// Pods whose sandbox is being set up.
    preparing: HashSet<String>,
    /// Pods whose sandbox may exist, until they are removed: made by this
    /// agent, or holding a pod address since an earlier run.
    sandboxes: HashMap<String, PodRef>,
    /// The pod network (`--network bridge`); None: pods use the node's.
    network: Option<Arc<BridgeNetwork>>,
    /// Pods' addresses, by uid, once their network is set up.
    addresses: HashMap<String, PodAddress>,
    /// The last status sent per pod, until the stored pod shows it.
    written: HashMap<String, pb::PodStatus>,
    writing: HashSet<String>,
    prober: Prober,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
}

fn uid(pod: &pb::Pod) -> String {
    pod.metadata
        .as_ref()
        .map(|m| m.uid.clone())
        .unwrap_or_default()
}

fn pod_ref(pod: &pb::Pod) -> PodRef {
    let m = pod.metadata.clone().unwrap_or_default();
    PodRef {
        uid: m.uid,
        namespace: m.namespace,
        name: m.name,
    }
}

fn grace(pod: &pb::Pod) -> Duration {
    pod.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .map_or(DEFAULT_GRACE, |s| Duration::from_secs(s.max(0) as u64))
}

fn revision(pod: &pb::Pod) -> u64 {
    pod.metadata
        .as_ref()
        .and_then(|m| m.resource_version.parse().ok())
        .unwrap_or(0)
}

fn quantity(map: &BTreeMap<String, String>, name: &str) -> Option<Quantity> {
    map.get(name).and_then(|q| Quantity::parse(q).ok())
}

/// What the runtime needs to start `container` of `pod`.
pub fn container_spec(pod: &pb::Pod, container: &pb::Container, attempt: u32) -> ContainerSpec {
    let r = container.resources.clone().unwrap_or_default();
    let limit = |name| quantity(&r.limits, name);
    let request = |name| quantity(&r.requests, name).or_else(|| limit(name));
    let mut env = vec![(
        "HOSTNAME".to_string(),
        pod.metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default(),
    )];
    env.extend(
        container
            .env
            .iter()
            .map(|e| (e.name.clone(), e.value.clone())),
    );
    ContainerSpec {
        pod: pod_ref(pod),
        container: container.name.clone(),
        attempt,
        image: container.image.clone(),
        always_pull: container.image_pull_policy == "Always"
            || (container.image_pull_policy.is_empty()
                && (container.image.ends_with(":latest") || !container.image.contains(':'))),
        command: container.command.clone(),
        args: container.args.clone(),
        env,
        working_dir: (!container.working_dir.is_empty())
            .then(|| container.working_dir.clone().into()),
        cpu_limit_millis: limit("cpu").map(|q| q.millis() as u64),
        cpu_request_millis: request("cpu").map(|q| q.millis() as u64),
        memory_limit_bytes: limit("memory").map(|q| q.units() as u64),
        grace_period: grace(pod),
        network: None,
    }
}

impl PodSync {
    pub fn new(
        config: SyncConfig,
        conn: Connector,
        runtime: Arc<dyn Runtime>,
        index: PodIndex,
        network: Option<Arc<BridgeNetwork>>,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Self {
            config,
            conn,
            runtime,
            listed: false,
            pods: HashMap::new(),
            index,
            deleted: HashMap::new(),
            backoffs: HashMap::new(),
            start_failures: HashMap::new(),
            busy: HashSet::new(),
            busy_sandboxes: HashSet::new(),
            preparing: HashSet::new(),
            // Known by uid only until the pod's first sync: a pod deleted
            // while the agent was away still has its network removed.
            sandboxes: network
                .iter()
                .flat_map(|n| n.attached())
                .map(|uid| {
                    let r = PodRef {
                        uid,
                        namespace: String::new(),
                        name: String::new(),
                    };
                    (r.uid.clone(), r)
                })
                .collect(),
            network,
            addresses: HashMap::new(),
            written: HashMap::new(),
            writing: HashSet::new(),
            prober: Prober::default(),
            done_tx,
            done_rx,
        }
    }

    pub async fn run(mut self, mut changes: mpsc::Receiver<Change<pb::Pod>>) {
        let mut tick = tokio::time::interval(self.config.sync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let changed = self.prober.changed.clone();
        let mut last_list = tokio::time::Instant::now();
        loop {
            tokio::select! {
                c = changes.recv() => {
                    let Some(c) = c else { return };
                    self.apply(c);
                    self.drain(&mut changes);
                    self.reindex();
                }
                Some(d) = self.done_rx.recv() => {
                    self.finish(d);
                    if self.drain(&mut changes) {
                        self.reindex();
                    }
                }
                _ = tick.tick() => {}
                _ = changed.notified() => {}
            }
            if self.listed {
                let since = last_list.elapsed();
                let gap = self.runtime.min_list_interval();
                if since < gap {
                    tokio::time::sleep(gap - since).await;
                    if self.drain(&mut changes) {
                        self.reindex();
                    }
                }
                last_list = tokio::time::Instant::now();
                let started = std::time::Instant::now();
                self.sync().await;
                metrics::histogram!("berth_agent_sync_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
            }
        }
    }

    /// Takes in every pod change and finished operation already queued;
    /// true if a pod changed.
    fn drain(&mut self, changes: &mut mpsc::Receiver<Change<pb::Pod>>) -> bool {
        let mut changed = false;
        while let Ok(c) = changes.try_recv() {
            self.apply(c);
            changed = true;
        }
        while let Ok(d) = self.done_rx.try_recv() {
            self.finish(d);
        }
        changed
    }

    fn mine(&self, pod: &pb::Pod) -> bool {
        pod.spec
            .as_ref()
            .is_some_and(|s| s.node_name == self.config.node)
    }

    fn apply(&mut self, change: Change<pb::Pod>) {
        match change {
            Change::Listed(items) => {
                let fresh: HashMap<String, pb::Pod> = items
                    .into_iter()
                    .filter(|p| self.mine(p))
                    .map(|p| (uid(&p), p))
                    .collect();
                for (gone, pod) in self.pods.iter().filter(|(u, _)| !fresh.contains_key(*u)) {
                    self.deleted.insert(gone.clone(), grace(pod));
                }
                self.pods = fresh;
                self.listed = true;
            }
            Change::Applied(pod) if self.mine(&pod) => {
                let u = uid(&pod);
                if self
                    .pods
                    .get(&u)
                    .is_none_or(|old| revision(old) <= revision(&pod))
                {
                    self.pods.insert(u, pod);
                }
            }
            Change::Applied(pod) | Change::Deleted(pod) => {
                let u = uid(&pod);
                if let Some(old) = self.pods.remove(&u) {
                    self.deleted.insert(u, grace(&old));
                }
            }
        }
    }

    /// Publishes the pods to the log server, once per batch of changes.
    fn reindex(&self) {
        let mut index = self.index.write().expect("pod index lock");
        index.clear();
        for p in self.pods.values() {
            let r = pod_ref(p);
            index.insert((r.namespace.clone(), r.name.clone()), r);
        }
        metrics::gauge!("berth_agent_pods").set(self.pods.len() as f64);
    }

    fn finish(&mut self, done: Done) {
        match done {
            Done::Container(key, error) => {
                self.busy.remove(&key);
                match error {
                    Some(RuntimeError::Start { reason, message }) => {
                        tracing::warn!(pod_uid = %key.0, container = %key.1, %reason, %message, "container did not start");
                        self.refuse_start(key, reason, message);
                    }
                    Some(e) => {
                        tracing::warn!(pod_uid = %key.0, container = %key.1, error = %e, "runtime operation failed")
                    }
                    None => {}
                }
            }
            Done::Prepared(pod, prepared) => self.prepared(pod, prepared),
            Done::Sandbox(uid) => {
                self.busy_sandboxes.remove(&uid);
            }
            Done::Status(uid, stored) => {
                self.writing.remove(&uid);
                match stored {
                    Some(pod) => {
                        let newer = self
                            .pods
                            .get(&uid)
                            .is_some_and(|old| revision(old) < revision(&pod));
                        if newer {
                            self.pods.insert(uid.clone(), *pod);
                        }
                    }
                    None => {
                        self.written.remove(&uid);
                    }
                }
            }
        }
    }

    /// The pod's own address (none until its network is set up), or the
    /// node's when pods share its network.
    fn pod_ip(&self, uid: &str) -> String {
        match (self.addresses.get(uid), &self.network) {
            (Some(a), _) => a.ip.to_string(),
            (None, Some(_)) => String::new(),
            (None, None) => self.config.host_ip.clone(),
        }
    }

    /// kubelet's crash back-off: exact, as `describe` shows it.
    fn backoff_delay(&self, crashes: u32) -> Duration {
        berth_retry::Backoff::new(self.config.backoff_initial, self.config.backoff_max)
            .exact()
            .delay(crashes.saturating_sub(1))
    }

    async fn sync(&mut self) {
        let instances = match self.runtime.list().await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the runtime's containers");
                return;
            }
        };
        let mut by_pod: HashMap<String, HashMap<String, Vec<Instance>>> = HashMap::new();
        for i in instances {
            by_pod
                .entry(i.pod.uid.clone())
                .or_default()
                .entry(i.container.clone())
                .or_default()
                .push(i);
        }
        for containers in by_pod.values_mut() {
            for list in containers.values_mut() {
                list.sort_by_key(|i| i.attempt);
            }
        }
        let running: usize = by_pod
            .values()
            .flat_map(|c| c.values())
            .filter(|l| {
                l.last()
                    .is_some_and(|i| matches!(i.state, InstanceState::Running { .. }))
            })
            .count();
        metrics::gauge!("berth_agent_containers_running").set(running as f64);
        let mut probed = HashSet::new();
        let uids: Vec<String> = self.pods.keys().cloned().collect();
        for u in uids {
            let empty = HashMap::new();
            let containers = by_pod.get(&u).unwrap_or(&empty);
            self.sync_pod(&u, containers, &mut probed).await;
        }
        let empty = HashMap::new();
        let gone: HashSet<String> = by_pod
            .keys()
            .chain(self.sandboxes.keys())
            .filter(|u| !self.pods.contains_key(*u))
            // Removed once its setup is done, not while it runs.
            .filter(|u| !self.preparing.contains(*u))
            .cloned()
            .collect();
        for u in gone {
            self.remove_pod(&u, by_pod.get(&u).unwrap_or(&empty));
        }
        self.prober.retain(|k| probed.contains(k));
    }

    /// Stops an instance in the background, unless one of its container's
    /// operations is running.
    fn stop(&mut self, instance: &Instance, grace: Duration) {
        let key = (instance.pod.uid.clone(), instance.container.clone());
        if !self.busy.insert(key.clone()) {
            return;
        }
        let (runtime, done, i) = (self.runtime.clone(), self.done_tx.clone(), instance.clone());
        tokio::spawn(async move {
            let result = runtime.stop(&i.pod, &i.container, i.attempt, grace).await;
            let _ = done.send(Done::Container(key, result.err()));
        });
    }

    fn start(&mut self, pod: &pb::Pod, container: &pb::Container, attempt: u32) {
        let key = (uid(pod), container.name.clone());
        if !self.busy.insert(key.clone()) {
            return;
        }
        let mut spec = container_spec(pod, container, attempt);
        spec.network = self.addresses.get(&key.0).map(|a| a.sandbox.clone());
        let (runtime, done) = (self.runtime.clone(), self.done_tx.clone());
        let created = pod
            .metadata
            .as_ref()
            .and_then(|m| humantime::parse_rfc3339(&m.creation_timestamp).ok());
        tokio::spawn(async move {
            let result = runtime.start(&spec).await;
            metrics::counter!("berth_agent_container_starts_total", "result" => if result.is_ok() { "ok" } else { "error" }).increment(1);
            if let (Ok(()), Some(created), 0) = (&result, created, attempt) {
                if let Ok(d) = created.elapsed() {
                    metrics::histogram!("berth_agent_pod_start_seconds").record(d.as_secs_f64());
                }
            }
            let _ = done.send(Done::Container(key, result.err()));
        });
    }

    async fn sync_pod(
        &mut self,
        u: &str,
        containers: &HashMap<String, Vec<Instance>>,
        probed: &mut HashSet<probe::InstanceKey>,
    ) {
        let Some(pod) = self.pods.get(u).cloned() else {
            return;
        };
        let deleting = pod
            .metadata
            .as_ref()
            .is_some_and(|m| !m.deletion_timestamp.is_empty());
        if pod_is_terminal(&pod) || deleting {
            // Finished, or failed by the node controller while this agent
            // was away: nothing of it may run.
            for list in containers.values() {
                if let Some(i) = list
                    .last()
                    .filter(|i| !matches!(i.state, InstanceState::Exited(_)))
                {
                    self.stop(i, grace(&pod));
                }
            }
            return;
        }
        let sandbox_error = self.ensure_sandbox(&pod, u);
        let spec = pod.spec.clone().unwrap_or_default();
        let now = SystemTime::now();
        let mut views = Vec::with_capacity(spec.containers.len());
        let mut overrides = Vec::with_capacity(spec.containers.len());
        for container in &spec.containers {
            let key = (u.to_string(), container.name.clone());
            let list = containers.get(&container.name).map_or(&[][..], |l| &l[..]);
            // Keep the latest instance and the one before it (for `logs
            // --previous` and lastState); forget older ones.
            if list.len() > 2 && !self.busy.contains(&key) {
                for old in &list[..list.len() - 2] {
                    let _ = self
                        .runtime
                        .remove(&old.pod, &old.container, old.attempt)
                        .await;
                }
            }
            let latest = list.last();
            let previous = list.len().checked_sub(2).and_then(|i| list.get(i));
            let mut view = ContainerView {
                latest,
                previous,
                backoff: None,
                ready: false,
            };
            let mut waiting = None;
            match latest.map(|i| &i.state) {
                None => match (&sandbox_error, self.start_failures.get(&key)) {
                    (Some(e), _) => waiting = Some(e.clone()),
                    (None, Some(f)) if f.retry_at > now => {
                        waiting = Some((f.reason.clone(), f.message.clone()));
                    }
                    (None, _) => self.start(&pod, container, 0),
                },
                Some(InstanceState::Creating) => {}
                Some(InstanceState::Running { .. }) => {
                    let i = latest.expect("a state means an instance");
                    self.start_failures.remove(&key);
                    let pkey = (u.to_string(), container.name.clone(), i.attempt);
                    probed.insert(pkey.clone());
                    self.prober.ensure(
                        pkey.clone(),
                        probe::Target {
                            runtime: self.runtime.clone(),
                            pod: i.pod.clone(),
                            container: container.clone(),
                            attempt: i.attempt,
                            pod_ip: self.pod_ip(u),
                        },
                    );
                    let verdicts = self.prober.verdicts(&pkey);
                    view.ready = match container.readiness_probe {
                        Some(_) => verdicts.ready == Some(true),
                        None => true,
                    };
                    if verdicts.liveness_failed {
                        self.stop(i, grace(&pod));
                    }
                }
                Some(InstanceState::Exited(exit)) => {
                    let i = latest.expect("a state means an instance");
                    if status::should_restart(&spec.restart_policy, exit) {
                        let b = self.backoff_for(&key, i, exit);
                        if now >= b.until {
                            self.start(&pod, container, i.attempt + 1);
                        } else {
                            view.backoff = Some(b.delay);
                        }
                    }
                }
            }
            views.push(view);
            overrides.push(waiting);
        }
        let mut status =
            status::pod_status(&pod, &views, &self.config.host_ip, &self.pod_ip(u), now);
        for (cs, waiting) in status.container_statuses.iter_mut().zip(overrides) {
            if let Some((reason, message)) = waiting {
                cs.state = Some(pb::ContainerState {
                    waiting: Some(pb::ContainerStateWaiting { reason, message }),
                    ..Default::default()
                });
            }
        }
        self.write_status(&pod, status);
    }

    /// The pod's sandbox and network, made once in the background; until
    /// then, and after a failure (retried with back-off), returns the
    /// (reason, message) its containers wait with.
    fn ensure_sandbox(&mut self, pod: &pb::Pod, u: &str) -> Option<(String, String)> {
        let needs_network = self.network.is_some() && !self.addresses.contains_key(u);
        if self.sandboxes.contains_key(u) && !needs_network {
            return None;
        }
        let creating = Some(("ContainerCreating".to_string(), String::new()));
        if self.preparing.contains(u) {
            return creating;
        }
        let key = (u.to_string(), String::new());
        if let Some(f) = self
            .start_failures
            .get(&key)
            .filter(|f| f.retry_at > SystemTime::now())
        {
            return Some((f.reason.clone(), f.message.clone()));
        }
        self.preparing.insert(u.to_string());
        let r = pod_ref(pod);
        let (runtime, network, done) = (
            self.runtime.clone(),
            self.network.clone(),
            self.done_tx.clone(),
        );
        tokio::spawn(async move {
            let prepared = prepare(runtime.as_ref(), network.as_deref(), &r).await;
            let _ = done.send(Done::Prepared(r, prepared));
        });
        creating
    }

    /// Takes in what a sandbox set-up came to; a failure backs off.
    fn prepared(&mut self, r: PodRef, prepared: Prepared) {
        self.preparing.remove(&r.uid);
        let key = (r.uid.clone(), String::new());
        if prepared.made {
            self.sandboxes.insert(r.uid.clone(), r.clone());
        }
        match prepared.result {
            Ok(address) => {
                if let Some(address) = address {
                    self.addresses.insert(r.uid.clone(), address);
                }
                self.start_failures.remove(&key);
            }
            Err((reason, message)) => {
                tracing::warn!(pod = %r.name, %reason, %message, "the pod's sandbox is not ready");
                self.refuse_start(key, reason, message);
            }
        }
    }

    /// Records a refused start (of a container, or of a pod's sandbox under
    /// an empty container name); the next try waits a back-off that
    /// doubles per refusal.
    fn refuse_start(&mut self, key: ContainerKey, reason: String, message: String) {
        let failures = self.start_failures.get(&key).map_or(1, |f| f.failures + 1);
        let retry_at = SystemTime::now() + self.backoff_delay(failures);
        self.start_failures.insert(
            key,
            StartFailure {
                reason,
                message,
                failures,
                retry_at,
            },
        );
    }

    /// The back-off that applies after instance `i` of a container ended.
    fn backoff_for(
        &mut self,
        key: &ContainerKey,
        i: &Instance,
        exit: &crate::runtime::Exit,
    ) -> Backoff {
        if let Some(b) = self.backoffs.get(key).filter(|b| b.attempt == i.attempt) {
            return *b;
        }
        let ran = exit
            .started_at
            .and_then(|s| exit.finished_at.duration_since(s).ok())
            .unwrap_or_default();
        let crashes = match self.backoffs.get(key) {
            Some(b) if ran < BACKOFF_RESET_AFTER => b.crashes + 1,
            _ => 1,
        };
        let delay = self.backoff_delay(crashes);
        let b = Backoff {
            attempt: i.attempt,
            crashes,
            delay,
            until: exit.finished_at + delay,
        };
        self.backoffs.insert(key.clone(), b);
        b
    }

    fn write_status(&mut self, pod: &pb::Pod, status: pb::PodStatus) {
        let u = uid(pod);
        if pod.status.as_ref() == Some(&status) {
            self.written.remove(&u);
            return;
        }
        if self.written.get(&u) == Some(&status) || self.writing.contains(&u) {
            return;
        }
        let mut next = pod.clone();
        next.status = Some(status.clone());
        self.written.insert(u.clone(), status);
        self.writing.insert(u.clone());
        let (conn, done) = (self.conn.clone(), self.done_tx.clone());
        tokio::spawn(async move {
            let stored = match conn.channel().await {
                Ok(ch) => match pods::update_status(ch, next).await {
                    Ok(p) => Some(Box::new(p)),
                    Err(s) => {
                        if s.code() != tonic::Code::Aborted {
                            conn.failed(&s).await;
                            tracing::debug!(error = %s.message(), "pod status not written; retrying");
                        }
                        None
                    }
                },
                Err(_) => None,
            };
            metrics::counter!("berth_agent_status_writes_total", "result" => if stored.is_some() { "ok" } else { "error" }).increment(1);
            let _ = done.send(Done::Status(u, stored));
        });
    }

    /// A pod the API no longer has here: stop what runs, then remove it.
    fn remove_pod(&mut self, u: &str, containers: &HashMap<String, Vec<Instance>>) {
        let grace = self.deleted.get(u).copied().unwrap_or(DEFAULT_GRACE);
        let mut live = false;
        for list in containers.values() {
            if let Some(i) = list
                .last()
                .filter(|i| !matches!(i.state, InstanceState::Exited(_)))
            {
                live = true;
                self.stop(i, grace);
            }
        }
        let busy = containers
            .keys()
            .any(|c| self.busy.contains(&(u.to_string(), c.clone())));
        if live || busy || !self.busy_sandboxes.insert(u.to_string()) {
            return;
        }
        let Some(pod) = containers
            .values()
            .flatten()
            .next()
            .map(|i| i.pod.clone())
            .or_else(|| self.sandboxes.get(u).cloned())
        else {
            return;
        };
        tracing::info!(pod = %pod.name, namespace = %pod.namespace, "removing a pod that is no longer bound here");
        self.sandboxes.remove(u);
        self.addresses.remove(u);
        self.deleted.remove(u);
        self.written.remove(u);
        self.backoffs.retain(|k, _| k.0 != u);
        self.start_failures.retain(|k, _| k.0 != u);
        let (runtime, done) = (self.runtime.clone(), self.done_tx.clone());
        let network = self.network.clone();
        tokio::spawn(async move {
            if let Err(e) = runtime.remove_sandbox(&pod).await {
                tracing::warn!(pod = %pod.name, error = %e, "cannot remove the pod");
            }
            if let Some(net) = network {
                if let Err(e) = net.detach(&pod.uid).await {
                    tracing::warn!(pod = %pod.name, error = %e, "cannot remove the pod's network");
                }
            }
            let _ = done.send(Done::Sandbox(pod.uid));
        });
    }
}

/// What setting up a pod's sandbox came to: whether the runtime made it
/// (it must be removed with the pod even if its network failed), and the
/// pod's address (None on the node's network) or why there is none.
struct Prepared {
    made: bool,
    result: Result<Option<PodAddress>, (String, String)>,
}

/// Makes the pod's sandbox and wires its network; run off the sync loop,
/// so that many pods' sandboxes (a pause container each, with docker) are
/// made at once.
async fn prepare(runtime: &dyn Runtime, network: Option<&BridgeNetwork>, pod: &PodRef) -> Prepared {
    let runtime_ns = match runtime.create_sandbox(pod, network.is_some()).await {
        Ok(ns) => ns,
        Err(RuntimeError::Start { reason, message }) => {
            return Prepared {
                made: false,
                result: Err((reason, message)),
            }
        }
        Err(e) => {
            return Prepared {
                made: false,
                result: Err(("CreatePodSandboxError".to_string(), e.to_string())),
            }
        }
    };
    let result = match network {
        None => Ok(None),
        Some(net) => net.attach(pod, runtime_ns).await.map(Some).map_err(|e| {
            (
                "NetworkNotReady".to_string(),
                format!("cannot set up the pod's network: {e}"),
            )
        }),
    };
    Prepared { made: true, result }
}
