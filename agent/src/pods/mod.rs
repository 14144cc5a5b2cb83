//! The level-triggered pod sync loop. On every change of the pods bound to
//! this node, on every probe verdict, on every finished runtime operation
//! and on a period, it compares the pods the API wants here with the
//! instances the runtime reports, and closes the gap: starts what is
//! missing, restarts what ended (by restart policy, with crash back-off),
//! kills what failed its liveness probe, stops what is no longer wanted,
//! and writes each pod's status when it differs from the stored one.
//!
//! What to do is decided per pod by `plan` (pure, unit-tested); this
//! module carries it out. Runtime operations run as tasks, at most one per
//! container at a time, so that a slow stop (a long grace period) holds up
//! nothing else. Nothing is stopped before the first list of pods has
//! arrived: an agent that restarts adopts the instances its pods still
//! have.

pub mod env;
pub mod plan;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;
use std::time::SystemTime;

use berth_api::pb;
use berth_api::quantity::Quantity;
use berth_api::Object;
use berth_api::Reason;
use berth_client::connect::Connector;
use berth_client::objects::pods;
use berth_client::watcher::Change;
use berth_retry::Backoff;
use tokio::sync::mpsc;

use crate::hooks;
use crate::hooks::Hook;
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
use crate::volumes::Volumes;
use plan::grace;
use plan::pod_ref;
use plan::revision;
use plan::Action;
use plan::Instances;
use plan::PlanConfig;
use plan::PodState;

#[derive(Clone, Debug)]
pub struct SyncConfig {
    pub node: String,
    pub host_ip: String,
    pub sync_interval: Duration,
    /// First crash back-off; it doubles per crash up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// The node's allocatable resources: what a container's variable
    /// reads for a limit it does not set.
    pub allocatable: BTreeMap<String, String>,
    /// Where the pods' volumes live (see `volumes`).
    pub volumes_dir: PathBuf,
    /// How often mounted ConfigMaps, Secrets and pod fields are brought up
    /// to date, and emptyDirs measured against their sizeLimit.
    pub volume_sync_interval: Duration,
    /// Privileged containers may run here (`--allow-privileged`).
    pub allow_privileged: bool,
}

/// Pods of this node by namespace and name, for the log server.
pub type PodIndex = Arc<RwLock<HashMap<(String, String), PodRef>>>;

/// A finished background operation, reported back to the loop.
enum Done {
    /// A start or stop; a start the runtime refused says why.
    Container {
        uid: String,
        container: String,
        refused: Option<(String, String)>,
    },
    Prepared {
        uid: String,
        made: Option<PodRef>,
        result: Result<Option<PodAddress>, (String, String)>,
    },
    SandboxRemoved(String),
    Status(String, Option<Box<pb::Pod>>),
    /// The node evicts the pod, for this reason.
    Evict {
        uid: String,
        message: String,
    },
    /// A round of volume upkeep ended.
    VolumesKept,
    /// A container's postStart hook ended.
    PostStart {
        uid: String,
        container: String,
        attempt: u32,
        result: Result<(), String>,
    },
}

pub struct PodSync {
    config: SyncConfig,
    plan: PlanConfig,
    conn: Connector,
    runtime: Arc<dyn Runtime>,
    listed: bool,
    /// Every pod the agent knows of, by uid: wanted here, or with
    /// something left to stop or remove.
    pods: HashMap<String, PodState>,
    index: PodIndex,
    /// The pod network (`--network bridge`); None: pods use the node's.
    network: Option<Arc<BridgeNetwork>>,
    prober: Prober,
    volumes: Arc<Volumes>,
    /// When volume upkeep last began; whether a round is under way.
    volumes_kept_at: tokio::time::Instant,
    keeping_volumes: bool,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
}

fn uid(pod: &pb::Pod) -> String {
    pod.metadata
        .as_ref()
        .map(|m| m.uid.clone())
        .unwrap_or_default()
}

fn quantity(map: &BTreeMap<String, String>, name: &str) -> Option<Quantity> {
    map.get(name).and_then(|q| Quantity::parse(q).ok())
}

/// What the runtime needs to start `container` of `pod` with the
/// environment `env` (see `env::environment`).
pub fn container_spec(
    pod: &pb::Pod,
    container: &pb::Container,
    attempt: u32,
    env: Vec<(String, String)>,
) -> ContainerSpec {
    let r = container.resources.clone().unwrap_or_default();
    let limit = |name| quantity(&r.limits, name);
    let request = |name| quantity(&r.requests, name).or_else(|| limit(name));
    ContainerSpec {
        pod: pod_ref(pod),
        container: container.name.clone(),
        attempt,
        image: container.image.clone(),
        always_pull: container.image_pull_policy == "Always"
            || (container.image_pull_policy.is_empty()
                && (container.image.ends_with(":latest") || !container.image.contains(':'))),
        command: env::expand_all(&container.command, &env),
        args: env::expand_all(&container.args, &env),
        env,
        working_dir: (!container.working_dir.is_empty())
            .then(|| container.working_dir.clone().into()),
        cpu_limit_millis: limit("cpu").map(|q| q.millis() as u64),
        cpu_request_millis: request("cpu").map(|q| q.millis() as u64),
        memory_limit_bytes: limit("memory").map(|q| q.units() as u64),
        grace_period: grace(pod),
        network: None,
        init: pod
            .spec
            .as_ref()
            .is_some_and(|s| s.init_containers.iter().any(|c| c.name == container.name)),
        mounts: Vec::new(),
        security: berth_api::security_context::settings(pod, container),
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
        let volumes = Arc::new(Volumes::new(
            config.volumes_dir.clone(),
            Arc::new(env::ApiObjects(conn.clone())),
            config.allocatable.clone(),
        ));
        // Known by uid only until the pod's first sync: a pod deleted
        // while the agent was away still has its network and volumes
        // removed.
        let pods = network
            .iter()
            .flat_map(|n| n.attached())
            .chain(volumes.pods())
            .map(|uid| {
                let left = PodRef {
                    uid: uid.clone(),
                    ..Default::default()
                };
                (uid, PodState::left_behind(left))
            })
            .collect();
        Self {
            plan: PlanConfig {
                host_ip: config.host_ip.clone(),
                pod_network: network.is_some(),
                backoff: Backoff::new(config.backoff_initial, config.backoff_max).exact(),
            },
            config,
            conn,
            runtime,
            listed: false,
            pods,
            index,
            network,
            prober: Prober::default(),
            volumes,
            volumes_kept_at: tokio::time::Instant::now(),
            keeping_volumes: false,
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

    /// Bound to this node, and safe to run.
    fn mine(&self, pod: &pb::Pod) -> bool {
        let bound = pod
            .spec
            .as_ref()
            .is_some_and(|s| s.node_name == self.config.node);
        let what = || format!("{}/{}", pod.namespace(), pod.name());
        bound && !crate::trust::refused("Pod", what, crate::trust::pod_refusal(pod))
    }

    fn want(&mut self, pod: pb::Pod) {
        match self.pods.get_mut(&uid(&pod)) {
            Some(s)
                if s.pod
                    .as_ref()
                    .is_none_or(|old| revision(old) <= revision(&pod)) =>
            {
                s.grace = grace(&pod);
                s.pod = Some(pod);
            }
            Some(_) => {}
            None => {
                self.pods.insert(uid(&pod), PodState::wanted(pod));
            }
        }
    }

    fn apply(&mut self, change: Change<pb::Pod>) {
        match change {
            Change::Listed(items) => {
                let fresh: HashSet<String> =
                    items.iter().filter(|p| self.mine(p)).map(uid).collect();
                for (_, s) in self.pods.iter_mut().filter(|(u, _)| !fresh.contains(*u)) {
                    s.unwant();
                }
                for p in items.into_iter().filter(|p| fresh.contains(&uid(p))) {
                    self.want(p);
                }
                self.listed = true;
            }
            Change::Applied(pod) if self.mine(&pod) => self.want(pod),
            Change::Applied(pod) | Change::Deleted(pod) => {
                if let Some(s) = self.pods.get_mut(&uid(&pod)) {
                    s.unwant();
                }
            }
        }
    }

    /// Publishes the pods to the log server, once per batch of changes.
    fn reindex(&self) {
        let mut index = self.index.write().expect("pod index lock");
        index.clear();
        let wanted = self.pods.values().filter_map(|s| s.pod.as_ref());
        for p in wanted {
            let r = pod_ref(p);
            index.insert((r.namespace.clone(), r.name.clone()), r);
        }
        metrics::gauge!("berth_agent_pods").set(index.len() as f64);
    }

    fn finish(&mut self, done: Done) {
        let now = SystemTime::now();
        match done {
            Done::Container {
                uid,
                container,
                refused,
            } => {
                if let Some(s) = self.pods.get_mut(&uid) {
                    s.operation_done(&container, refused, &self.plan, now);
                }
            }
            Done::Prepared { uid, made, result } => {
                if let Err((reason, message)) = &result {
                    tracing::warn!(pod_uid = %uid, %reason, %message, "the pod's sandbox is not ready");
                }
                if let Some(s) = self.pods.get_mut(&uid) {
                    s.sandbox_done(made, result, &self.plan, now);
                }
            }
            Done::SandboxRemoved(uid) => {
                self.pods.remove(&uid);
            }
            Done::Status(uid, stored) => {
                if let Some(s) = self.pods.get_mut(&uid) {
                    s.status_done(stored.map(|p| *p));
                }
            }
            Done::Evict { uid, message } => {
                if let Some(s) = self.pods.get_mut(&uid) {
                    tracing::warn!(pod_uid = %uid, %message, "evicting the pod");
                    metrics::counter!("berth_agent_evictions_total").increment(1);
                    s.evicted.get_or_insert(message);
                }
            }
            Done::VolumesKept => self.keeping_volumes = false,
            Done::PostStart {
                uid,
                container,
                attempt,
                result,
            } => {
                if let Err(e) = &result {
                    tracing::warn!(pod_uid = %uid, %container, error = %e, "FailedPostStartHook");
                }
                if let Some(s) = self.pods.get_mut(&uid) {
                    s.post_start_done(&container, attempt, result, &self.plan, now);
                }
            }
        }
    }

    async fn sync(&mut self) {
        let instances = match self.runtime.list().await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the runtime's containers");
                return;
            }
        };
        let mut by_pod: HashMap<String, Instances> = HashMap::new();
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
        let running = by_pod
            .values()
            .flat_map(|c| c.values())
            .filter(|l| {
                l.last()
                    .is_some_and(|i| matches!(i.state, InstanceState::Running { .. }))
            })
            .count();
        metrics::gauge!("berth_agent_containers_running").set(running as f64);
        // Instances of pods the agent never heard of (deleted while it was
        // away) are stopped and removed like any pod no longer wanted.
        for u in by_pod.keys() {
            self.pods.entry(u.clone()).or_insert_with(|| PodState {
                grace: plan::DEFAULT_GRACE,
                ..Default::default()
            });
        }
        let now = SystemTime::now();
        let empty = Instances::new();
        let mut probed = HashSet::new();
        let mut actions = Vec::new();
        for (u, state) in &mut self.pods {
            let instances = by_pod.get(u).unwrap_or(&empty);
            let prober = &self.prober;
            let verdicts =
                |i: &Instance| prober.verdicts(&(u.clone(), i.container.clone(), i.attempt));
            actions.extend(
                state
                    .plan(instances, &verdicts, &self.plan, now)
                    .into_iter()
                    .map(|a| (u.clone(), a)),
            );
        }
        self.pods.retain(|u, s| !s.settled(by_pod.get(u)));
        for (u, action) in actions {
            self.execute(&u, action, &mut probed).await;
        }
        self.prober.retain(|k| probed.contains(k));
        self.keep_volumes();
    }

    /// On a period, in the background: rewrites the files of mounted
    /// ConfigMaps, Secrets and pod fields that changed, and evicts pods
    /// whose emptyDirs hold more than their sizeLimit.
    fn keep_volumes(&mut self) {
        if self.keeping_volumes || self.volumes_kept_at.elapsed() < self.config.volume_sync_interval
        {
            return;
        }
        let pods: Vec<pb::Pod> = self
            .pods
            .values()
            .filter(|s| s.sandbox.mounted && s.evicted.is_none())
            .filter_map(|s| s.pod.clone())
            .filter(|p| {
                !berth_api::resources::pod_is_terminal(p)
                    && p.spec.as_ref().is_some_and(|s| !s.volumes.is_empty())
            })
            .collect();
        self.volumes_kept_at = tokio::time::Instant::now();
        if pods.is_empty() {
            return;
        }
        self.keeping_volumes = true;
        let (volumes, done) = (self.volumes.clone(), self.done_tx.clone());
        tokio::spawn(async move {
            for pod in pods {
                if let Err(e) = volumes.refresh(&pod).await {
                    tracing::warn!(pod = %pod.name(), namespace = %pod.namespace(), error = %e, "cannot bring the pod's volumes up to date");
                }
                let (v, p) = (volumes.clone(), pod.clone());
                let over = tokio::task::spawn_blocking(move || v.over_limit(&p)).await;
                if let Ok(Some(message)) = over {
                    let _ = done.send(Done::Evict {
                        uid: uid(&pod),
                        message,
                    });
                }
            }
            let _ = done.send(Done::VolumesKept);
        });
    }

    async fn execute(&mut self, u: &str, action: Action, probed: &mut HashSet<probe::InstanceKey>) {
        match action {
            Action::PrepareSandbox(pod) => self.prepare(*pod),
            Action::Start {
                pod,
                container,
                attempt,
            } => self.start(&pod, &container, attempt),
            Action::Stop {
                instance,
                grace,
                pre_stop,
            } => self.stop(*instance, grace, pre_stop.map(|c| *c)),
            Action::Remove(old) => {
                let _ = self
                    .runtime
                    .remove(&old.pod, &old.container, old.attempt)
                    .await;
            }
            Action::Probe {
                instance,
                container,
                pod_ip,
            } => {
                let key = (u.to_string(), container.name.clone(), instance.attempt);
                probed.insert(key.clone());
                self.prober.ensure(
                    key,
                    probe::Target {
                        runtime: self.runtime.clone(),
                        pod: instance.pod.clone(),
                        container: *container,
                        attempt: instance.attempt,
                        pod_ip,
                    },
                );
            }
            Action::WriteStatus(pod) => self.write_status(*pod),
            Action::RemoveSandbox(pod) => self.remove_sandbox(pod),
        }
    }

    /// Where an instance's probes and hooks reach it.
    fn target(&self, i: &Instance, container: pb::Container) -> probe::Target {
        probe::Target {
            runtime: self.runtime.clone(),
            pod: i.pod.clone(),
            container,
            attempt: i.attempt,
            pod_ip: self
                .pods
                .get(&i.pod.uid)
                .map(|s| s.pod_ip(&self.plan))
                .unwrap_or_default(),
        }
    }

    /// Stops an instance, after its preStop hook when it has one.
    fn stop(&self, i: Instance, grace: Duration, pre_stop: Option<pb::Container>) {
        let (runtime, done) = (self.runtime.clone(), self.done_tx.clone());
        let hook = pre_stop.map(|c| self.target(&i, c));
        tokio::spawn(async move {
            let grace = match &hook {
                Some(target) => hooks::pre_stop(target, grace).await,
                None => grace,
            };
            let result = runtime.stop(&i.pod, &i.container, i.attempt, grace).await;
            if let Err(e) = &result {
                tracing::warn!(pod_uid = %i.pod.uid, container = %i.container, error = %e, "cannot stop a container");
            }
            let _ = done.send(Done::Container {
                uid: i.pod.uid,
                container: i.container,
                refused: None,
            });
        });
    }

    /// `pod` as its containers see it when they start: with its own and
    /// its host's addresses, which its stored status may not show yet.
    fn as_started(&self, pod: &pb::Pod) -> pb::Pod {
        let mut pod = pod.clone();
        let pod_ip = self
            .pods
            .get(&uid(&pod))
            .map(|s| s.pod_ip(&self.plan))
            .unwrap_or_default();
        let status = pod.status.get_or_insert_with(Default::default);
        status.host_ip = self.config.host_ip.clone();
        status.pod_ip = pod_ip.clone();
        status.pod_ips = vec![pb::PodIp { ip: pod_ip }];
        pod
    }

    fn start(&self, pod: &pb::Pod, container: &pb::Container, attempt: u32) {
        let u = uid(pod);
        let network = self
            .pods
            .get(&u)
            .and_then(|s| s.sandbox.address.as_ref())
            .map(|a| a.sandbox.clone());
        let (runtime, done) = (self.runtime.clone(), self.done_tx.clone());
        let (pod, container) = (self.as_started(pod), container.clone());
        let objects = env::ApiObjects(self.conn.clone());
        let allocatable = self.config.allocatable.clone();
        let volumes = self.volumes.clone();
        let (node, allow_privileged) = (self.config.node.clone(), self.config.allow_privileged);
        let created = pod
            .metadata
            .as_ref()
            .and_then(|m| humantime::parse_rfc3339(&m.creation_timestamp).ok());
        tokio::spawn(async move {
            let cx = env::Context {
                objects: &objects,
                allocatable: &allocatable,
            };
            let environment = env::environment(&cx, &pod, &container)
                .await
                .map_err(|e| e.to_string())
                .and_then(|vars| {
                    let mounts = volumes.mounts(&pod, &container, &vars);
                    mounts.map(|m| (vars, m)).map_err(|e| e.to_string())
                })
                .and_then(|made| {
                    let privileged = container
                        .security_context
                        .as_ref()
                        .is_some_and(|c| c.privileged == Some(true));
                    match privileged && !allow_privileged {
                        true => Err(format!("privileged containers are not allowed on node {node}: start its agent with --allow-privileged")),
                        false => Ok(made),
                    }
                });
            let spec = match environment {
                Ok((vars, mounts)) => ContainerSpec {
                    network,
                    mounts,
                    ..container_spec(&pod, &container, attempt, vars)
                },
                Err(e) => {
                    tracing::info!(pod_uid = %u, container = %container.name, error = %e, "the container's environment or mounts cannot be made yet");
                    let _ = done.send(Done::Container {
                        uid: u,
                        container: container.name,
                        refused: Some((env::CONFIG_ERROR.to_string(), e)),
                    });
                    return;
                }
            };
            let result = runtime.start(&spec).await;
            metrics::counter!("berth_agent_container_starts_total", "result" => if result.is_ok() { "ok" } else { "error" }).increment(1);
            if let (Ok(()), Some(created), 0) = (&result, created, attempt) {
                if let Ok(d) = created.elapsed() {
                    metrics::histogram!("berth_agent_pod_start_seconds").record(d.as_secs_f64());
                }
            }
            // Only a container that runs has its postStart hook run.
            let started = result.is_ok();
            let refused = match result {
                Ok(()) => None,
                Err(RuntimeError::Start { reason, message }) => {
                    tracing::warn!(pod_uid = %u, container = %spec.container, %reason, %message, "container did not start");
                    Some((reason, message))
                }
                Err(e) => {
                    tracing::warn!(pod_uid = %u, container = %spec.container, error = %e, "runtime operation failed");
                    None
                }
            };
            let _ = done.send(Done::Container {
                uid: u.clone(),
                container: spec.container,
                refused,
            });
            if let Some(handler) = Hook::PostStart.of(&container).filter(|_| started) {
                let target = probe::Target {
                    runtime,
                    pod: pod_ref(&pod),
                    attempt,
                    pod_ip: pod
                        .status
                        .as_ref()
                        .map(|s| s.pod_ip.clone())
                        .unwrap_or_default(),
                    container: container.clone(),
                };
                let result =
                    hooks::run(Hook::PostStart, handler, &target, hooks::POST_START_LIMIT).await;
                let _ = done.send(Done::PostStart {
                    uid: u,
                    container: container.name,
                    attempt,
                    result,
                });
            }
        });
    }

    fn prepare(&self, pod: pb::Pod) {
        let (runtime, network, done) = (
            self.runtime.clone(),
            self.network.clone(),
            self.done_tx.clone(),
        );
        let volumes = self.volumes.clone();
        tokio::spawn(async move {
            let prepared = match volumes.set_up(&pod).await {
                Ok(()) => prepare(runtime.as_ref(), network.as_deref(), &pod_ref(&pod)).await,
                // What was made of the volumes goes with the pod.
                Err(e) => Prepared {
                    made: true,
                    result: Err((crate::volumes::NOT_MOUNTED.to_string(), e.to_string())),
                },
            };
            let pod = pod_ref(&pod);
            let made = prepared.made.then(|| pod.clone());
            let _ = done.send(Done::Prepared {
                uid: pod.uid,
                made,
                result: prepared.result,
            });
        });
    }

    fn write_status(&self, next: pb::Pod) {
        let u = uid(&next);
        let (conn, done) = (self.conn.clone(), self.done_tx.clone());
        tokio::spawn(async move {
            let stored = match conn.channel().await {
                Ok(ch) => match pods::update_status(ch, next).await {
                    Ok(p) => Some(Box::new(p)),
                    Err(s) => {
                        if Reason::of(&s) != Some(Reason::Conflict) {
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

    fn remove_sandbox(&self, pod: PodRef) {
        tracing::info!(pod = %pod.name, namespace = %pod.namespace, "removing a pod that is no longer bound here");
        let (runtime, network, done) = (
            self.runtime.clone(),
            self.network.clone(),
            self.done_tx.clone(),
        );
        let volumes = self.volumes.clone();
        tokio::spawn(async move {
            if let Err(e) = runtime.remove_sandbox(&pod).await {
                tracing::warn!(pod = %pod.name, error = %e, "cannot remove the pod");
            }
            if let Err(e) = volumes.tear_down(&pod.uid).await {
                tracing::warn!(pod = %pod.name, error = %e, "cannot remove the pod's volumes");
            }
            if let Some(net) = network {
                if let Err(e) = net.detach(&pod.uid).await {
                    tracing::warn!(pod = %pod.name, error = %e, "cannot remove the pod's network");
                }
            }
            let _ = done.send(Done::SandboxRemoved(pod.uid));
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
