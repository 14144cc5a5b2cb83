//! What the agent keeps about one pod, and what a pass decides for it: a
//! pure function of the pod, its instances in the runtime, this state and
//! the time, which returns the actions for the executor to carry out (as
//! openraft's engine emits commands). The state changes here too, the
//! same way every time, so that restart policy, crash back-off, probe
//! verdicts, sandbox retries and deletion are tested without a runtime.

use std::collections::HashMap;
use std::time::Duration;
use std::time::SystemTime;

use berth_api::pb;
use berth_api::resources::is_sidecar;
use berth_api::resources::pod_is_terminal;
use berth_retry::Backoff;

use crate::hooks::Hook;
use crate::network::PodAddress;
use crate::probe;
use crate::runtime::Exit;
use crate::runtime::Instance;
use crate::runtime::InstanceState;
use crate::runtime::PodRef;
use crate::status;
use crate::status::ContainerView;
use crate::status::PodViews;

/// A pod's grace period when its spec does not set one.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// A container that ran this long before it ended starts its back-off
/// afresh.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);
/// Instances of a container kept: the latest and the one before it (for
/// `logs --previous` and lastState).
const KEPT_INSTANCES: usize = 2;

/// What planning needs to know of the node.
#[derive(Clone, Debug)]
pub struct PlanConfig {
    pub host_ip: String,
    /// Pods get addresses of their own (`--network bridge`).
    pub pod_network: bool,
    /// Crash back-off, and the back-off of refused starts and sandboxes.
    pub backoff: Backoff,
}

/// A pod's instances in the runtime by container, each list by attempt.
pub type Instances = HashMap<String, Vec<Instance>>;

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Make the pod's volumes, sandbox and network, in the background.
    PrepareSandbox(Box<pb::Pod>),
    Start {
        pod: Box<pb::Pod>,
        container: Box<pb::Container>,
        attempt: u32,
    },
    Stop {
        instance: Box<Instance>,
        grace: Duration,
        /// The container, when it has a preStop hook to run first.
        pre_stop: Option<Box<pb::Container>>,
    },
    /// Forget an instance older than the two kept.
    Remove(Box<Instance>),
    /// Keep probing a running instance.
    Probe {
        instance: Box<Instance>,
        container: Box<pb::Container>,
        pod_ip: String,
    },
    WriteStatus(Box<pb::Pod>),
    /// Remove the pod's sandbox and network: nothing of it runs anymore.
    RemoveSandbox(PodRef),
}

/// A start the runtime refused (an image it cannot get, a sandbox it could
/// not make), retried after a back-off that doubles per refusal.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    pub reason: String,
    pub message: String,
    pub count: u32,
    pub retry_at: SystemTime,
}

impl Refusal {
    fn waiting(&self, now: SystemTime) -> Option<(String, String)> {
        (self.retry_at > now).then(|| (self.reason.clone(), self.message.clone()))
    }
}

/// Crash back-off of one container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashLoop {
    /// The attempt whose end this entry has counted.
    pub attempt: u32,
    pub crashes: u32,
    pub delay: Duration,
    pub until: SystemTime,
}

/// A started attempt's postStart hook: running, or failed (the attempt is
/// then stopped, and its restart waits with the hook's error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PostStart {
    pub attempt: u32,
    pub failed: bool,
}

#[derive(Clone, Debug, Default)]
pub struct ContainerState {
    /// A start or stop of it is under way.
    pub busy: bool,
    pub crash: Option<CrashLoop>,
    pub refused: Option<Refusal>,
    pub post_start: Option<PostStart>,
}

#[derive(Clone, Debug, Default)]
pub struct Sandbox {
    pub preparing: bool,
    /// The runtime made it (it goes with the pod, whatever its network did).
    pub made: Option<PodRef>,
    pub address: Option<PodAddress>,
    /// Its volumes are ready for its containers.
    pub mounted: bool,
    pub refused: Option<Refusal>,
    pub removing: bool,
}

/// Everything the agent keeps about one pod.
#[derive(Clone, Debug, Default)]
pub struct PodState {
    /// The pod as the API has it for this node; None once it is not.
    pub pod: Option<pb::Pod>,
    /// The pod as the API last had it, once it has not: its containers'
    /// preStop hooks still run.
    pub gone: Option<Box<pb::Pod>>,
    /// The grace period its containers are stopped with once it is gone.
    pub grace: Duration,
    pub containers: HashMap<String, ContainerState>,
    pub sandbox: Sandbox,
    /// The status last sent, until the stored pod shows it.
    pub written: Option<pb::PodStatus>,
    pub writing: bool,
    /// Why the node evicted the pod (an emptyDir over its sizeLimit): its
    /// containers are stopped and it fails with reason Evicted.
    pub evicted: Option<String>,
}

pub fn grace(pod: &pb::Pod) -> Duration {
    pod.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .map_or(DEFAULT_GRACE, |s| Duration::from_secs(s.max(0) as u64))
}

pub fn pod_ref(pod: &pb::Pod) -> PodRef {
    let m = pod.metadata.clone().unwrap_or_default();
    PodRef {
        uid: m.uid,
        namespace: m.namespace,
        name: m.name,
    }
}

fn is_live(i: &Instance) -> bool {
    !matches!(i.state, InstanceState::Exited(_))
}

/// An instance that ran to success: what an init container must do before
/// the next one starts.
fn succeeded(i: &Instance) -> bool {
    matches!(&i.state, InstanceState::Exited(e) if e.exit_code == 0 && e.start_error.is_none())
}

/// One container to plan, with the restart policy it runs under; init
/// containers are never probed.
#[derive(Clone, Copy)]
struct Planned<'c> {
    container: &'c pb::Container,
    policy: &'c str,
    init: bool,
}

/// What every container of one pass is planned with.
#[derive(Clone, Copy)]
struct Pass<'p> {
    /// Why the sandbox keeps containers waiting, if it does.
    sandbox_waiting: Option<&'p (String, String)>,
    verdicts: &'p dyn Fn(&Instance) -> probe::Verdicts,
    config: &'p PlanConfig,
    now: SystemTime,
}

impl PodState {
    pub fn wanted(pod: pb::Pod) -> Self {
        Self {
            grace: grace(&pod),
            pod: Some(pod),
            ..Default::default()
        }
    }

    /// A pod known only by a sandbox an earlier run of the agent left.
    pub fn left_behind(sandbox: PodRef) -> Self {
        Self {
            grace: DEFAULT_GRACE,
            sandbox: Sandbox {
                made: Some(sandbox),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// The API no longer has the pod here.
    pub fn unwant(&mut self) {
        if let Some(pod) = self.pod.take() {
            self.grace = grace(&pod);
            self.gone = Some(Box::new(pod));
        }
    }

    /// The pod's own address (none until its network is set up), or the
    /// node's when pods share its network.
    pub fn pod_ip(&self, config: &PlanConfig) -> String {
        match (&self.sandbox.address, config.pod_network) {
            (Some(a), _) => a.ip.to_string(),
            (None, true) => String::new(),
            (None, false) => config.host_ip.clone(),
        }
    }

    /// Whether anything of the pod may still exist or is under way.
    pub fn settled(&self, instances: Option<&Instances>) -> bool {
        self.pod.is_none()
            && instances.is_none_or(|i| i.is_empty())
            && self.sandbox.made.is_none()
            && !self.sandbox.preparing
            && !self.sandbox.removing
            && !self.containers.values().any(|c| c.busy)
    }

    /// One pass for this pod: the actions that close the gap between what
    /// the API wants and what the runtime has.
    pub fn plan(
        &mut self,
        instances: &Instances,
        verdicts: &dyn Fn(&Instance) -> probe::Verdicts,
        config: &PlanConfig,
        now: SystemTime,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(pod) = self.pod.clone() else {
            self.plan_removal(instances, &mut actions);
            return actions;
        };
        let deleting = pod
            .metadata
            .as_ref()
            .is_some_and(|m| !m.deletion_timestamp.is_empty());
        if pod_is_terminal(&pod) || deleting {
            // Finished, or failed by the node controller while this agent
            // was away: nothing of it may run.
            self.stop_all(pod.spec.as_ref(), instances, grace(&pod), &mut actions);
            return actions;
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let list_of = |c: &pb::Container| instances.get(&c.name).map_or(&[][..], |l| &l[..]);
        if let Some(message) = self.evicted.clone() {
            self.plan_eviction(&pod, instances, message, config, now, &mut actions);
            return actions;
        }
        let sandbox_waiting = self.plan_sandbox(&pod, config, now, &mut actions);
        let mut views = PodViews::default();
        let mut init_waiting = Vec::with_capacity(spec.init_containers.len());
        let pass = Pass {
            sandbox_waiting: sandbox_waiting.as_ref(),
            verdicts,
            config,
            now,
        };
        // Init containers run one at a time, each once it is the first
        // that has not succeeded; once the containers have run, they are
        // done (as the kubelet, which does not run them again). A sidecar
        // only needs to have started for the next to start, and is kept
        // running (and probed) from then on.
        let ran = spec.containers.iter().any(|c| !list_of(c).is_empty());
        let mut blocked = false;
        for container in &spec.init_containers {
            let list = list_of(container);
            let sidecar = is_sidecar(container);
            let (view, wait) = if blocked || (ran && !sidecar) {
                (ContainerView::of(list), None)
            } else {
                let planned = Planned {
                    container,
                    policy: status::init_policy(&pod, container),
                    init: !sidecar,
                };
                self.plan_container(&pod, planned, list, pass, &mut actions)
            };
            let done = match sidecar {
                true => view.started,
                false => list.last().is_some_and(succeeded),
            };
            blocked |= !ran && !done;
            views.init.push(view);
            init_waiting.push(wait);
        }
        let mut waiting = Vec::with_capacity(spec.containers.len());
        for container in &spec.containers {
            let list = list_of(container);
            let (view, wait) = if blocked {
                (ContainerView::of(list), None)
            } else {
                let planned = Planned {
                    container,
                    policy: &spec.restart_policy,
                    init: false,
                };
                self.plan_container(&pod, planned, list, pass, &mut actions)
            };
            views.containers.push(view);
            waiting.push(wait);
        }
        let mut status =
            status::pod_status(&pod, &views, &config.host_ip, &self.pod_ip(config), now);
        let shown = (status.init_container_statuses.iter_mut().zip(init_waiting))
            .chain(status.container_statuses.iter_mut().zip(waiting));
        for (cs, waiting) in shown {
            if let Some((reason, message)) = waiting {
                cs.state = Some(pb::ContainerState {
                    waiting: Some(pb::ContainerStateWaiting { reason, message }),
                    ..Default::default()
                });
            }
        }
        self.plan_status(&pod, status, &mut actions);
        actions
    }

    /// An evicted pod: its containers are stopped, none restarts, and once
    /// none runs it is Failed with reason Evicted, as the kubelet does.
    fn plan_eviction(
        &mut self,
        pod: &pb::Pod,
        instances: &Instances,
        message: String,
        config: &PlanConfig,
        now: SystemTime,
        actions: &mut Vec<Action>,
    ) {
        let mut live = false;
        for list in instances.values() {
            if let Some(i) = list.last().filter(|i| is_live(i)) {
                live = true;
                self.stop(i, grace(pod), actions);
            }
        }
        if live {
            return;
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let view = |c: &pb::Container| {
            ContainerView::of(instances.get(&c.name).map_or(&[][..], |l| &l[..]))
        };
        let views = PodViews {
            init: spec.init_containers.iter().map(view).collect(),
            containers: spec.containers.iter().map(view).collect(),
        };
        // Shown as ended for good, not as waiting to restart.
        let mut ended = pod.clone();
        if let Some(spec) = ended.spec.as_mut() {
            spec.restart_policy = "Never".into();
        }
        let mut status =
            status::pod_status(&ended, &views, &config.host_ip, &self.pod_ip(config), now);
        status.phase = "Failed".into();
        status.reason = "Evicted".into();
        status.message = message;
        self.plan_status(pod, status, actions);
    }

    /// The sandbox, made once; until then, and while a refusal's back-off
    /// runs, the (reason, message) the containers wait with.
    fn plan_sandbox(
        &mut self,
        pod: &pb::Pod,
        config: &PlanConfig,
        now: SystemTime,
        actions: &mut Vec<Action>,
    ) -> Option<(String, String)> {
        let s = &mut self.sandbox;
        let needs_network = config.pod_network && s.address.is_none();
        if s.made.is_some() && !needs_network && s.mounted {
            return None;
        }
        let creating = Some(("ContainerCreating".to_string(), String::new()));
        if s.preparing {
            return creating;
        }
        if let Some(waiting) = s.refused.as_ref().and_then(|r| r.waiting(now)) {
            return Some(waiting);
        }
        s.preparing = true;
        actions.push(Action::PrepareSandbox(Box::new(pod.clone())));
        creating
    }

    fn plan_container<'a>(
        &mut self,
        pod: &pb::Pod,
        planned: Planned<'_>,
        list: &'a [Instance],
        pass: Pass<'_>,
        actions: &mut Vec<Action>,
    ) -> (ContainerView<'a>, Option<(String, String)>) {
        let Pass {
            sandbox_waiting,
            config,
            now,
            ..
        } = pass;
        let container = planned.container;
        let busy = self.container(&container.name).busy;
        if list.len() > KEPT_INSTANCES && !busy {
            for old in &list[..list.len() - KEPT_INSTANCES] {
                actions.push(Action::Remove(Box::new(old.clone())));
            }
        }
        let latest = list.last();
        let mut view = ContainerView::of(list);
        let mut waiting = None;
        match latest {
            None => {
                let refused = self.container(&container.name).refused.clone();
                waiting = sandbox_waiting
                    .cloned()
                    .or_else(|| refused.and_then(|r| r.waiting(now)));
                if waiting.is_none() {
                    self.start(pod, container, 0, actions);
                }
            }
            Some(i) => match &i.state {
                InstanceState::Creating => {}
                InstanceState::Running { .. } if planned.init => {
                    self.container(&container.name).refused = None;
                }
                InstanceState::Running { .. } => {
                    let hook = self.container(&container.name).post_start;
                    match hook.filter(|h| h.attempt == i.attempt) {
                        Some(h) if h.failed => self.stop(i, grace(pod), actions),
                        Some(_) => view.hooking = true,
                        None => self.plan_running(pod, container, i, &mut view, pass, actions),
                    }
                }
                InstanceState::Exited(exit) => {
                    let refused = self.container(&container.name).refused.clone();
                    if status::should_restart(planned.policy, exit) {
                        let crash = self.crash_loop(&container.name, i.attempt, exit, config);
                        // A restart refused (its ConfigMap gone, say)
                        // waits with the refusal's reason.
                        match refused.and_then(|r| r.waiting(now)) {
                            Some(refusal) => waiting = Some(refusal),
                            None if now >= crash.until => {
                                self.start(pod, container, i.attempt + 1, actions)
                            }
                            None => view.backoff = Some(crash.delay),
                        }
                    }
                }
            },
        }
        (view, waiting)
    }

    /// A running container whose postStart hook (if any) has ended: probed,
    /// and stopped when its startup or liveness probe fails.
    fn plan_running(
        &mut self,
        pod: &pb::Pod,
        container: &pb::Container,
        i: &Instance,
        view: &mut ContainerView<'_>,
        pass: Pass<'_>,
        actions: &mut Vec<Action>,
    ) {
        self.container(&container.name).refused = None;
        actions.push(Action::Probe {
            instance: Box::new(i.clone()),
            container: Box::new(container.clone()),
            pod_ip: self.pod_ip(pass.config),
        });
        let v = (pass.verdicts)(i);
        view.started = container.startup_probe.is_none() || v.started;
        view.ready = view.started
            && match container.readiness_probe {
                Some(_) => v.ready == Some(true),
                None => true,
            };
        if v.failed {
            // The failed probe's own grace period, if it sets one,
            // overrides the pod's.
            let probe = match view.started {
                true => &container.liveness_probe,
                false => &container.startup_probe,
            };
            let grace = probe
                .as_ref()
                .and_then(|p| p.termination_grace_period_seconds)
                .map_or(grace(pod), |s| Duration::from_secs(s.max(0) as u64));
            self.stop(i, grace, actions);
        }
    }

    fn plan_status(&mut self, pod: &pb::Pod, status: pb::PodStatus, actions: &mut Vec<Action>) {
        if pod.status.as_ref() == Some(&status) {
            self.written = None;
            return;
        }
        if self.written.as_ref() == Some(&status) || self.writing {
            return;
        }
        let mut next = pod.clone();
        next.status = Some(status.clone());
        self.written = Some(status);
        self.writing = true;
        actions.push(Action::WriteStatus(Box::new(next)));
    }

    /// A pod the API no longer has here: stop what runs, then remove its
    /// sandbox once nothing of it runs or is under way.
    fn plan_removal(&mut self, instances: &Instances, actions: &mut Vec<Action>) {
        let gone = self.gone.clone();
        let spec = gone.as_ref().and_then(|p| p.spec.as_ref());
        let live = self.stop_all(spec, instances, self.grace, actions);
        let busy = self.containers.values().any(|c| c.busy);
        if live || busy || self.sandbox.removing || self.sandbox.preparing {
            return;
        }
        let Some(pod) = instances
            .values()
            .flatten()
            .next()
            .map(|i| i.pod.clone())
            .or_else(|| self.sandbox.made.clone())
        else {
            return;
        };
        self.sandbox.removing = true;
        actions.push(Action::RemoveSandbox(pod));
    }

    /// Stops what runs of a pod: the containers (and init containers)
    /// first, then its sidecars one at a time, the last started first, as
    /// the kubelet does. Whether anything still runs.
    fn stop_all(
        &mut self,
        spec: Option<&pb::PodSpec>,
        instances: &Instances,
        grace: Duration,
        actions: &mut Vec<Action>,
    ) -> bool {
        let sidecars: Vec<&str> = spec
            .iter()
            .flat_map(|s| &s.init_containers)
            .filter(|c| is_sidecar(c))
            .map(|c| c.name.as_str())
            .collect();
        let live = |name: &str| instances.get(name)?.last().filter(|i| is_live(i));
        let mut others_live = false;
        for (name, list) in instances {
            let latest = list.last().filter(|i| is_live(i));
            if let Some(i) = latest.filter(|_| !sidecars.contains(&name.as_str())) {
                others_live = true;
                self.stop(i, grace, actions);
            }
        }
        let last_sidecar = sidecars.iter().rev().find_map(|name| live(name));
        match last_sidecar {
            Some(i) if !others_live => self.stop(i, grace, actions),
            _ => {}
        }
        others_live || last_sidecar.is_some()
    }

    fn container(&mut self, name: &str) -> &mut ContainerState {
        self.containers.entry(name.to_string()).or_default()
    }

    /// Starts attempt `attempt` unless an operation of the container is
    /// under way.
    fn start(
        &mut self,
        pod: &pb::Pod,
        container: &pb::Container,
        attempt: u32,
        actions: &mut Vec<Action>,
    ) {
        let c = self.container(&container.name);
        if std::mem::replace(&mut c.busy, true) {
            return;
        }
        if Hook::PostStart.of(container).is_some() {
            c.post_start = Some(PostStart {
                attempt,
                failed: false,
            });
        }
        actions.push(Action::Start {
            pod: Box::new(pod.clone()),
            container: Box::new(container.clone()),
            attempt,
        });
    }

    fn stop(&mut self, instance: &Instance, grace: Duration, actions: &mut Vec<Action>) {
        // A hook runs in a container that runs, as the kubelet's does.
        let pre_stop = match instance.state {
            InstanceState::Running { .. } => self.pre_stop_hook(&instance.container),
            _ => None,
        };
        let c = self.container(&instance.container);
        if std::mem::replace(&mut c.busy, true) {
            return;
        }
        actions.push(Action::Stop {
            instance: Box::new(instance.clone()),
            grace,
            pre_stop,
        });
    }

    /// The container as the pod has (or last had) it, if it has a preStop
    /// hook.
    fn pre_stop_hook(&self, name: &str) -> Option<Box<pb::Container>> {
        let pod = self.pod.as_ref().or(self.gone.as_deref())?;
        let spec = pod.spec.as_ref()?;
        let container = spec.containers.iter().find(|c| c.name == name)?;
        Hook::PreStop
            .of(container)
            .map(|_| Box::new(container.clone()))
    }

    /// The crash back-off after `attempt` of a container ended, counted
    /// once per attempt.
    fn crash_loop(
        &mut self,
        container: &str,
        attempt: u32,
        exit: &Exit,
        config: &PlanConfig,
    ) -> CrashLoop {
        let c = self.container(container);
        if let Some(b) = c.crash.filter(|b| b.attempt == attempt) {
            return b;
        }
        let ran = exit
            .started_at
            .and_then(|s| exit.finished_at.duration_since(s).ok())
            .unwrap_or_default();
        let crashes = match c.crash {
            Some(b) if ran < BACKOFF_RESET_AFTER => b.crashes + 1,
            _ => 1,
        };
        let delay = config.backoff.delay(crashes - 1);
        let b = CrashLoop {
            attempt,
            crashes,
            delay,
            until: exit.finished_at + delay,
        };
        c.crash = Some(b);
        b
    }

    /// A start or stop of `container` ended; a start the runtime refused
    /// is retried after its back-off.
    pub fn operation_done(
        &mut self,
        container: &str,
        refused: Option<(String, String)>,
        config: &PlanConfig,
        now: SystemTime,
    ) {
        let c = self.container(container);
        c.busy = false;
        if let Some((reason, message)) = refused {
            c.refused = Some(refusal(c.refused.as_ref(), reason, message, config, now));
        }
    }

    /// The postStart hook of `attempt` ended; a failure stops the attempt,
    /// whose restart then waits with reason PostStartHookError.
    pub fn post_start_done(
        &mut self,
        container: &str,
        attempt: u32,
        result: Result<(), String>,
        config: &PlanConfig,
        now: SystemTime,
    ) {
        let c = self.container(container);
        if c.post_start.is_none_or(|h| h.attempt != attempt) {
            return;
        }
        match result {
            Ok(()) => c.post_start = None,
            Err(message) => {
                c.post_start = Some(PostStart {
                    attempt,
                    failed: true,
                });
                let reason = "PostStartHookError".to_string();
                c.refused = Some(refusal(c.refused.as_ref(), reason, message, config, now));
            }
        }
    }

    /// The sandbox set-up ended: `made` says whether the runtime made one
    /// (it goes with the pod even if its network failed).
    pub fn sandbox_done(
        &mut self,
        made: Option<PodRef>,
        result: Result<Option<PodAddress>, (String, String)>,
        config: &PlanConfig,
        now: SystemTime,
    ) {
        let s = &mut self.sandbox;
        s.preparing = false;
        if made.is_some() {
            s.made = made;
        }
        match result {
            Ok(address) => {
                if address.is_some() {
                    s.address = address;
                }
                s.mounted = true;
                s.refused = None;
            }
            Err((reason, message)) => {
                s.refused = Some(refusal(s.refused.as_ref(), reason, message, config, now));
            }
        }
    }

    /// A status write ended: with the stored pod, or failed (then the next
    /// pass writes again).
    pub fn status_done(&mut self, stored: Option<pb::Pod>) {
        self.writing = false;
        match stored {
            Some(p) => {
                if self
                    .pod
                    .as_ref()
                    .is_some_and(|old| revision(old) < revision(&p))
                {
                    self.pod = Some(p);
                }
            }
            None => self.written = None,
        }
    }
}

fn refusal(
    last: Option<&Refusal>,
    reason: String,
    message: String,
    config: &PlanConfig,
    now: SystemTime,
) -> Refusal {
    let count = last.map_or(1, |r| r.count + 1);
    // The kubelet retries a container whose config or volume is missing at
    // a flat period (its pod worker's back-off), so that it starts soon
    // after the ConfigMap or Secret appears.
    let delay = match reason.as_str() {
        super::env::CONFIG_ERROR | crate::volumes::NOT_MOUNTED => config.backoff.delay(0),
        _ => config.backoff.delay(count - 1),
    };
    Refusal {
        reason,
        message,
        count,
        retry_at: now + delay,
    }
}

pub fn revision(pod: &pb::Pod) -> u64 {
    pod.metadata
        .as_ref()
        .and_then(|m| m.resource_version.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use berth_api::Object;

    use super::*;
    use crate::runtime::SandboxNetwork;

    const SEC: Duration = Duration::from_secs(1);

    fn config() -> PlanConfig {
        PlanConfig {
            host_ip: "192.0.2.10".into(),
            pod_network: false,
            backoff: Backoff::new(10 * SEC, 300 * SEC).exact(),
        }
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn pod(policy: &str, containers: &[&str]) -> pb::Pod {
        let mut p = pb::Pod::default();
        let m = p.meta_mut();
        (m.namespace, m.name, m.uid) = ("default".into(), "web".into(), "u1".into());
        m.resource_version = "5".into();
        p.spec = Some(pb::PodSpec {
            node_name: "n1".into(),
            restart_policy: policy.into(),
            termination_grace_period_seconds: Some(7),
            containers: containers
                .iter()
                .map(|c| pb::Container {
                    name: c.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        p
    }

    fn instance(container: &str, attempt: u32, state: InstanceState) -> Instance {
        Instance {
            pod: PodRef {
                uid: "u1".into(),
                namespace: "default".into(),
                name: "web".into(),
            },
            container: container.into(),
            attempt,
            id: format!("test://{container}-{attempt}"),
            image: String::new(),
            image_id: String::new(),
            state,
            labels: BTreeMap::new(),
        }
    }

    fn exited(code: i32, started: u64, finished: u64) -> InstanceState {
        InstanceState::Exited(Exit {
            exit_code: code,
            signal: None,
            oom_killed: false,
            start_error: None,
            started_at: Some(t(started)),
            finished_at: t(finished),
        })
    }

    fn running(at: u64) -> InstanceState {
        InstanceState::Running { started_at: t(at) }
    }

    fn of(list: Vec<Instance>) -> Instances {
        let mut out = Instances::new();
        for i in list {
            out.entry(i.container.clone()).or_default().push(i);
        }
        out
    }

    fn no_probes(_: &Instance) -> probe::Verdicts {
        probe::Verdicts::default()
    }

    /// A pod whose sandbox and volumes are made (host network).
    fn ready_state(p: pb::Pod) -> PodState {
        let mut s = PodState::wanted(p);
        s.sandbox.made = Some(PodRef::default());
        s.sandbox.mounted = true;
        s
    }

    fn starts(actions: &[Action]) -> Vec<(String, u32)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Start {
                    container, attempt, ..
                } => Some((container.name.clone(), *attempt)),
                _ => None,
            })
            .collect()
    }

    fn stops(actions: &[Action]) -> Vec<(String, u32, Duration)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Stop {
                    instance, grace, ..
                } => Some((instance.container.clone(), instance.attempt, *grace)),
                _ => None,
            })
            .collect()
    }

    fn written(actions: &[Action]) -> Option<pb::PodStatus> {
        actions.iter().find_map(|a| match a {
            Action::WriteStatus(p) => p.status.clone(),
            _ => None,
        })
    }

    fn waiting_reason(status: &pb::PodStatus, container: usize) -> Option<String> {
        status.container_statuses[container]
            .state
            .as_ref()?
            .waiting
            .as_ref()
            .map(|w| w.reason.clone())
    }

    #[test]
    fn missing_containers_start_once_until_their_start_is_done() {
        let c = config();
        let mut s = ready_state(pod("Always", &["a", "b"]));
        let first = s.plan(&Instances::new(), &no_probes, &c, t(0));
        assert_eq!(starts(&first), [("a".into(), 0), ("b".into(), 0)]);
        assert!(starts(&s.plan(&Instances::new(), &no_probes, &c, t(1))).is_empty());
        s.operation_done("a", None, &c, t(1));
        assert_eq!(
            starts(&s.plan(&Instances::new(), &no_probes, &c, t(2))),
            [("a".into(), 0)]
        );
    }

    #[test]
    fn restart_policy_decides_which_exits_restart() {
        let c = config();
        let cases = [
            ("Always", 0, true),
            ("Always", 1, true),
            ("OnFailure", 0, false),
            ("OnFailure", 2, true),
            ("Never", 0, false),
            ("Never", 1, false),
        ];
        for (policy, code, restarts) in cases {
            let mut s = ready_state(pod(policy, &["a"]));
            let instances = of(vec![instance("a", 0, exited(code, 0, 5))]);
            // Long after any back-off.
            let actions = s.plan(&instances, &no_probes, &c, t(1_000));
            let want: Vec<(String, u32)> = if restarts {
                vec![("a".into(), 1)]
            } else {
                vec![]
            };
            assert_eq!(starts(&actions), want, "{policy} after exit {code}");
        }
    }

    #[test]
    fn crashes_back_off_doubling_to_the_cap_and_show_crash_loop_back_off() {
        let c = config();
        let mut s = ready_state(pod("Always", &["a"]));
        let mut history = Vec::new();
        let mut now = 0;
        let mut delays = Vec::new();
        for attempt in 0..7 {
            history.push(instance("a", attempt, exited(1, now, now + 1)));
            let instances = of(history.clone());
            // Just after it ended: waiting out the back-off.
            let actions = s.plan(&instances, &no_probes, &c, t(now + 1));
            assert!(
                starts(&actions).is_empty(),
                "attempt {attempt} restarts at once"
            );
            if let Some(status) = written(&actions) {
                assert_eq!(
                    waiting_reason(&status, 0).as_deref(),
                    Some("CrashLoopBackOff")
                );
            }
            let b = s.containers["a"].crash.unwrap();
            delays.push(b.delay.as_secs());
            now = b.until.duration_since(t(0)).unwrap().as_secs();
            let actions = s.plan(&instances, &no_probes, &c, t(now));
            assert_eq!(starts(&actions), [("a".into(), attempt + 1)]);
            s.operation_done("a", None, &c, t(now));
            history.retain(|i| i.attempt + 1 >= attempt);
        }
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn a_long_run_resets_the_crash_back_off() {
        let c = config();
        let mut s = ready_state(pod("Always", &["a"]));
        let first = of(vec![instance("a", 0, exited(1, 0, 1))]);
        s.plan(&first, &no_probes, &c, t(1));
        s.plan(&first, &no_probes, &c, t(11));
        s.operation_done("a", None, &c, t(11));
        let second = of(vec![
            instance("a", 0, exited(1, 0, 1)),
            instance("a", 1, exited(1, 11, 12)),
        ]);
        s.plan(&second, &no_probes, &c, t(12));
        assert_eq!(s.containers["a"].crash.unwrap().delay, 20 * SEC);
        s.plan(&second, &no_probes, &c, t(32));
        s.operation_done("a", None, &c, t(32));
        // Attempt 2 ran ten minutes before it crashed.
        let third = of(vec![
            instance("a", 1, exited(1, 11, 12)),
            instance("a", 2, exited(1, 32, 32 + 600)),
        ]);
        s.plan(&third, &no_probes, &c, t(633));
        assert_eq!(s.containers["a"].crash.unwrap().crashes, 1);
        assert_eq!(s.containers["a"].crash.unwrap().delay, 10 * SEC);
    }

    #[test]
    fn probe_verdicts_decide_readiness_and_a_failed_liveness_probe_stops_the_instance() {
        let c = config();
        let mut p = pod("Always", &["a"]);
        p.spec.as_mut().unwrap().containers[0].readiness_probe = Some(pb::Probe::default());
        let instances = of(vec![instance("a", 0, running(0))]);
        let verdict = |ready: Option<bool>, failed: bool| {
            move |_: &Instance| probe::Verdicts {
                started: false,
                ready,
                failed,
            }
        };
        let mut s = ready_state(p.clone());
        let actions = s.plan(&instances, &verdict(None, false), &c, t(1));
        assert!(actions.iter().any(|a| matches!(a, Action::Probe { .. })));
        let status = written(&actions).unwrap();
        assert!(!status.container_statuses[0].ready);

        let mut s = ready_state(p.clone());
        let status = written(&s.plan(&instances, &verdict(Some(true), false), &c, t(1))).unwrap();
        assert!(status.container_statuses[0].ready);

        let mut s = ready_state(p);
        let actions = s.plan(&instances, &verdict(Some(true), true), &c, t(1));
        assert_eq!(stops(&actions), [("a".into(), 0, 7 * SEC)]);
        assert!(
            starts(&actions).is_empty(),
            "the restart policy decides once it ended"
        );
    }

    #[test]
    fn a_startup_probe_holds_back_readiness_until_it_succeeds() {
        let c = config();
        let mut p = pod("Always", &["a"]);
        p.spec.as_mut().unwrap().containers[0].startup_probe = Some(pb::Probe::default());
        let instances = of(vec![instance("a", 0, running(0))]);
        let verdict = |started: bool, failed: bool| {
            move |_: &Instance| probe::Verdicts {
                started,
                ready: None,
                failed,
            }
        };
        let mut s = ready_state(p.clone());
        let status = written(&s.plan(&instances, &verdict(false, false), &c, t(1))).unwrap();
        let a = &status.container_statuses[0];
        assert_eq!((a.started, a.ready), (Some(false), false));
        let mut s = ready_state(p.clone());
        let status = written(&s.plan(&instances, &verdict(true, false), &c, t(1))).unwrap();
        let a = &status.container_statuses[0];
        assert_eq!((a.started, a.ready), (Some(true), true));
        let mut s = ready_state(p);
        let actions = s.plan(&instances, &verdict(false, true), &c, t(1));
        assert_eq!(stops(&actions), [("a".into(), 0, 7 * SEC)]);
    }

    #[test]
    fn a_refused_start_waits_with_its_reason_and_is_retried_after_back_off() {
        let c = config();
        let mut s = ready_state(pod("Always", &["a"]));
        s.plan(&Instances::new(), &no_probes, &c, t(0));
        s.status_done(None);
        let refused = Some(("ErrImagePull".to_string(), "no such image".to_string()));
        s.operation_done("a", refused.clone(), &c, t(0));
        let actions = s.plan(&Instances::new(), &no_probes, &c, t(5));
        assert!(starts(&actions).is_empty());
        let status = written(&actions).unwrap();
        assert_eq!(waiting_reason(&status, 0).as_deref(), Some("ErrImagePull"));
        assert_eq!(
            starts(&s.plan(&Instances::new(), &no_probes, &c, t(10))),
            [("a".into(), 0)]
        );
        // A second refusal waits twice as long.
        s.operation_done("a", refused, &c, t(10));
        assert!(starts(&s.plan(&Instances::new(), &no_probes, &c, t(29))).is_empty());
        assert_eq!(
            starts(&s.plan(&Instances::new(), &no_probes, &c, t(30))),
            [("a".into(), 0)]
        );
    }

    /// `pod(policy, containers)` with init containers `init`, in order.
    fn with_init(policy: &str, init: &[&str], containers: &[&str]) -> pb::Pod {
        let mut p = pod(policy, containers);
        let spec = p.spec.as_mut().unwrap();
        spec.init_containers = pod(policy, init).spec.unwrap().containers;
        p
    }

    fn init_reason(status: &pb::PodStatus, container: usize) -> Option<String> {
        let state = status.init_container_statuses[container].state.clone()?;
        state
            .waiting
            .map(|w| w.reason)
            .or(state.terminated.map(|t| t.reason))
    }

    /// `with_init`, where init container `sidecar` is a native sidecar.
    fn with_sidecar(policy: &str, init: &[&str], sidecar: &str, containers: &[&str]) -> pb::Pod {
        let mut p = with_init(policy, init, containers);
        for c in &mut p.spec.as_mut().unwrap().init_containers {
            if c.name == sidecar {
                c.restart_policy = "Always".into();
            }
        }
        p
    }

    #[test]
    fn a_sidecar_starts_in_turn_keeps_running_and_restarts_whatever_the_pods_policy() {
        let c = config();
        let mut s = ready_state(with_sidecar("Never", &["proxy", "setup"], "proxy", &["a"]));
        assert_eq!(
            starts(&s.plan(&Instances::new(), &no_probes, &c, t(0))),
            [("proxy".into(), 0)]
        );
        s.operation_done("proxy", None, &c, t(0));
        s.status_done(None);
        // Running is enough for the next init container.
        let mut runs = vec![instance("proxy", 0, running(1))];
        let actions = s.plan(&of(runs.clone()), &no_probes, &c, t(1));
        assert_eq!(starts(&actions), [("setup".into(), 0)]);
        assert_eq!(probes(&actions), 1, "a sidecar is probed");
        s.operation_done("setup", None, &c, t(1));
        runs.push(instance("setup", 0, exited(0, 1, 2)));
        let actions = s.plan(&of(runs.clone()), &no_probes, &c, t(3));
        assert_eq!(starts(&actions), [("a".into(), 0)]);
        s.operation_done("a", None, &c, t(3));
        s.status_done(None);

        // Under restartPolicy Never, the sidecar still restarts.
        runs[0] = instance("proxy", 0, exited(1, 1, 4));
        runs.push(instance("a", 0, running(3)));
        let actions = s.plan(&of(runs.clone()), &no_probes, &c, t(1_000));
        assert_eq!(starts(&actions), [("proxy".into(), 1)]);
        let status = written(&actions).unwrap();
        assert_eq!(status.phase, "Running");
        assert!(
            status
                .conditions
                .iter()
                .any(|c| c.r#type == "Ready" && c.status == "False"),
            "not ready while its sidecar is down"
        );
    }

    #[test]
    fn a_pods_sidecars_stop_after_its_containers_the_last_started_first() {
        let c = config();
        let mut p = with_sidecar("Always", &["log", "proxy"], "log", &["a"]);
        p.spec.as_mut().unwrap().init_containers[1].restart_policy = "Always".into();
        let runs = of(vec![
            instance("log", 0, running(0)),
            instance("proxy", 0, running(1)),
            instance("a", 0, running(2)),
        ]);
        let mut s = ready_state(p);
        s.unwant();
        let names = |actions: &[Action]| -> Vec<String> {
            stops(actions).into_iter().map(|(n, _, _)| n).collect()
        };
        assert_eq!(names(&s.plan(&runs, &no_probes, &c, t(3))), ["a"]);
        s.operation_done("a", None, &c, t(4));
        let runs = of(vec![
            instance("log", 0, running(0)),
            instance("proxy", 0, running(1)),
            instance("a", 0, exited(0, 2, 4)),
        ]);
        assert_eq!(names(&s.plan(&runs, &no_probes, &c, t(5))), ["proxy"]);
        s.operation_done("proxy", None, &c, t(6));
        let runs = of(vec![
            instance("log", 0, running(0)),
            instance("proxy", 0, exited(0, 1, 6)),
            instance("a", 0, exited(0, 2, 4)),
        ]);
        assert_eq!(names(&s.plan(&runs, &no_probes, &c, t(7))), ["log"]);
    }

    #[test]
    fn init_containers_run_in_order_to_success_before_the_containers() {
        let c = config();
        let mut s = ready_state(with_init("Always", &["i1", "i2"], &["a", "b"]));
        let actions = s.plan(&Instances::new(), &no_probes, &c, t(0));
        assert_eq!(starts(&actions), [("i1".into(), 0)]);
        let status = written(&actions).unwrap();
        assert_eq!(status.phase, "Pending");
        assert_eq!(init_reason(&status, 1).as_deref(), Some("PodInitializing"));
        assert_eq!(
            waiting_reason(&status, 0).as_deref(),
            Some("PodInitializing")
        );
        let initialized = |st: &pb::PodStatus| {
            st.conditions
                .iter()
                .find(|c| c.r#type == "Initialized")
                .map(|c| c.status.clone())
        };
        assert_eq!(initialized(&status).as_deref(), Some("False"));
        s.operation_done("i1", None, &c, t(0));
        s.status_done(None);

        // i1 runs, then succeeds: i2 starts, the containers still wait.
        let i1_running = of(vec![instance("i1", 0, running(1))]);
        assert!(starts(&s.plan(&i1_running, &no_probes, &c, t(2))).is_empty());
        let i1_done = vec![instance("i1", 0, exited(0, 1, 3))];
        let actions = s.plan(&of(i1_done.clone()), &no_probes, &c, t(4));
        assert_eq!(starts(&actions), [("i2".into(), 0)]);
        s.operation_done("i2", None, &c, t(4));

        // Both done: the containers start together, the init containers
        // never again, and the pod is initialized.
        let mut both = i1_done;
        both.push(instance("i2", 0, exited(0, 5, 6)));
        let actions = s.plan(&of(both.clone()), &no_probes, &c, t(7));
        assert_eq!(starts(&actions), [("a".into(), 0), ("b".into(), 0)]);
        s.operation_done("a", None, &c, t(7));
        s.operation_done("b", None, &c, t(7));
        both.push(instance("a", 0, running(8)));
        both.push(instance("b", 0, exited(1, 8, 9)));
        s.status_done(None);
        let actions = s.plan(&of(both), &no_probes, &c, t(1_000));
        assert_eq!(starts(&actions), [("b".into(), 1)]);
        let status = written(&actions).unwrap();
        assert_eq!(initialized(&status).as_deref(), Some("True"));
        assert_eq!(init_reason(&status, 0).as_deref(), Some("Completed"));
    }

    #[test]
    fn a_failed_init_container_is_retried_unless_the_pod_never_restarts() {
        let c = config();
        let failed = of(vec![instance("i1", 0, exited(2, 0, 1))]);
        for policy in ["Always", "OnFailure"] {
            let mut s = ready_state(with_init(policy, &["i1"], &["a"]));
            let actions = s.plan(&failed, &no_probes, &c, t(2));
            assert!(starts(&actions).is_empty(), "{policy}: backs off first");
            let status = written(&actions).unwrap();
            assert_eq!(init_reason(&status, 0).as_deref(), Some("CrashLoopBackOff"));
            assert_eq!(status.phase, "Pending");
            s.status_done(None);
            let later = s.plan(&failed, &no_probes, &c, t(20));
            assert_eq!(starts(&later), [("i1".into(), 1)], "{policy}");
        }
        let mut s = ready_state(with_init("Never", &["i1"], &["a"]));
        let actions = s.plan(&failed, &no_probes, &c, t(1_000));
        assert!(starts(&actions).is_empty());
        let status = written(&actions).unwrap();
        assert_eq!(status.phase, "Failed");
        assert_eq!(init_reason(&status, 0).as_deref(), Some("Error"));
    }

    #[test]
    fn a_missing_config_is_retried_at_a_flat_period_and_holds_back_restarts() {
        let c = config();
        let mut s = ready_state(pod("Always", &["a"]));
        s.plan(&Instances::new(), &no_probes, &c, t(0));
        s.status_done(None);
        let missing = || {
            Some((
                super::super::env::CONFIG_ERROR.to_string(),
                "configmap \"x\" not found".to_string(),
            ))
        };
        // Refused three times, retried each time after the first back-off.
        for at in [0, 10, 20] {
            s.operation_done("a", missing(), &c, t(at));
            assert!(starts(&s.plan(&Instances::new(), &no_probes, &c, t(at + 9))).is_empty());
            assert_eq!(
                starts(&s.plan(&Instances::new(), &no_probes, &c, t(at + 10))),
                [("a".into(), 0)]
            );
        }
        // A restart refused waits with the refusal's reason, not a crash
        // loop's, and is tried again after the same period.
        let instances = of(vec![instance("a", 0, exited(1, 100, 101))]);
        let mut s = ready_state(pod("Always", &["a"]));
        s.operation_done("a", missing(), &c, t(1_000));
        let actions = s.plan(&instances, &no_probes, &c, t(1_001));
        assert!(starts(&actions).is_empty());
        assert_eq!(
            waiting_reason(&written(&actions).unwrap(), 0).as_deref(),
            Some("CreateContainerConfigError")
        );
        s.status_done(None);
        assert_eq!(
            starts(&s.plan(&instances, &no_probes, &c, t(1_010))),
            [("a".into(), 1)]
        );
    }

    #[test]
    fn containers_wait_for_the_sandbox_and_a_failed_sandbox_is_retried_after_back_off() {
        let c = PlanConfig {
            pod_network: true,
            ..config()
        };
        let mut s = PodState::wanted(pod("Always", &["a"]));
        let actions = s.plan(&Instances::new(), &no_probes, &c, t(0));
        assert!(matches!(actions[0], Action::PrepareSandbox(_)));
        assert!(starts(&actions).is_empty());
        assert_eq!(
            waiting_reason(&written(&actions).unwrap(), 0).as_deref(),
            Some("ContainerCreating")
        );
        // Still being made: nothing new.
        assert!(s.plan(&Instances::new(), &no_probes, &c, t(1)).is_empty());
        let failure = Err(("NetworkNotReady".to_string(), "no bridge".to_string()));
        s.sandbox_done(Some(pod_ref(s.pod.as_ref().unwrap())), failure, &c, t(1));
        s.status_done(None);
        let actions = s.plan(&Instances::new(), &no_probes, &c, t(5));
        assert!(!actions
            .iter()
            .any(|a| matches!(a, Action::PrepareSandbox(_))));
        assert_eq!(
            waiting_reason(&written(&actions).unwrap(), 0).as_deref(),
            Some("NetworkNotReady")
        );
        let actions = s.plan(&Instances::new(), &no_probes, &c, t(11));
        assert!(matches!(actions[0], Action::PrepareSandbox(_)));
        let address = PodAddress {
            ip: Ipv4Addr::new(10, 244, 1, 5),
            sandbox: SandboxNetwork {
                netns: "/run/netns/berth-u1".into(),
                resolv_conf: "/tmp/resolv.conf".into(),
            },
        };
        s.sandbox_done(None, Ok(Some(address)), &c, t(12));
        let actions = s.plan(&Instances::new(), &no_probes, &c, t(12));
        assert_eq!(starts(&actions), [("a".into(), 0)]);
        assert_eq!(s.pod_ip(&c), "10.244.1.5");
    }

    #[test]
    fn containers_wait_for_their_volumes_which_are_retried_at_a_flat_period() {
        let c = config();
        let mut s = PodState::wanted(pod("Always", &["a"]));
        let actions = s.plan(&Instances::new(), &no_probes, &c, t(0));
        assert!(matches!(actions[0], Action::PrepareSandbox(_)));
        let message = "MountVolume.SetUp failed for volume \"cfg\" : configmap \"cfg\" not found";
        for (round, at) in [(0, 1), (1, 12), (2, 23)] {
            let failure = Err((crate::volumes::NOT_MOUNTED.to_string(), message.to_string()));
            s.sandbox_done(Some(pod_ref(s.pod.as_ref().unwrap())), failure, &c, t(at));
            s.status_done(None);
            let actions = s.plan(&Instances::new(), &no_probes, &c, t(at + 1));
            assert!(starts(&actions).is_empty(), "round {round}");
            let status = written(&actions).unwrap();
            let waiting = status.container_statuses[0]
                .state
                .clone()
                .unwrap()
                .waiting
                .unwrap();
            assert_eq!(
                (waiting.reason.as_str(), waiting.message.as_str()),
                ("ContainerCreating", message)
            );
            // Retried after the first back-off every time, not a doubling one.
            let again = s.plan(&Instances::new(), &no_probes, &c, t(at + 10));
            assert!(
                matches!(again[0], Action::PrepareSandbox(_)),
                "round {round}"
            );
        }
        s.sandbox_done(None, Ok(None), &c, t(34));
        let actions = s.plan(&Instances::new(), &no_probes, &c, t(34));
        assert_eq!(starts(&actions), [("a".into(), 0)]);
    }

    #[test]
    fn an_evicted_pod_stops_without_restarts_then_fails_as_evicted() {
        let c = config();
        let mut s = ready_state(pod("Always", &["a"]));
        s.evicted = Some("Usage of EmptyDir volume \"cache\" exceeds the limit \"1Mi\". ".into());
        let live = of(vec![instance("a", 0, running(1))]);
        let actions = s.plan(&live, &no_probes, &c, t(5));
        assert_eq!(stops(&actions), [("a".into(), 0, 7 * SEC)]);
        assert!(
            written(&actions).is_none(),
            "no verdict while it still runs"
        );
        s.operation_done("a", None, &c, t(6));
        let ended = of(vec![instance("a", 0, exited(137, 1, 6))]);
        let actions = s.plan(&ended, &no_probes, &c, t(7));
        assert!(
            starts(&actions).is_empty(),
            "an evicted pod's container does not restart"
        );
        let status = written(&actions).unwrap();
        assert_eq!(
            (status.phase.as_str(), status.reason.as_str()),
            ("Failed", "Evicted")
        );
        assert!(status.message.starts_with("Usage of EmptyDir volume"));
        let state = status.container_statuses[0].state.clone().unwrap();
        assert!(state.terminated.is_some());
    }

    fn hooked(post_start: bool, pre_stop: bool) -> pb::Pod {
        let mut p = pod("Always", &["a"]);
        let handler = || {
            Some(pb::LifecycleHandler {
                exec: Some(pb::ExecAction {
                    command: vec!["true".into()],
                }),
                ..Default::default()
            })
        };
        p.spec.as_mut().unwrap().containers[0].lifecycle = Some(pb::Lifecycle {
            post_start: handler().filter(|_| post_start),
            pre_stop: handler().filter(|_| pre_stop),
        });
        p
    }

    fn probes(actions: &[Action]) -> usize {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Probe { .. }))
            .count()
    }

    #[test]
    fn a_container_is_creating_until_its_post_start_hook_ends() {
        let c = config();
        let mut s = ready_state(hooked(true, false));
        s.plan(&Instances::new(), &no_probes, &c, t(0));
        s.operation_done("a", None, &c, t(0));
        s.status_done(None);
        let runs = of(vec![instance("a", 0, running(0))]);
        let actions = s.plan(&runs, &no_probes, &c, t(1));
        let status = written(&actions).unwrap();
        assert_eq!(status.phase, "Pending");
        assert_eq!(
            waiting_reason(&status, 0).as_deref(),
            Some("ContainerCreating")
        );
        assert_eq!(probes(&actions), 0, "no probe before the hook ends");
        s.status_done(None);
        s.post_start_done("a", 0, Ok(()), &c, t(2));
        let actions = s.plan(&runs, &no_probes, &c, t(2));
        assert_eq!(written(&actions).unwrap().phase, "Running");
        assert_eq!(probes(&actions), 1);
    }

    #[test]
    fn a_failed_post_start_hook_stops_the_container_whose_restart_waits_with_the_error() {
        let c = config();
        let mut s = ready_state(hooked(true, false));
        s.plan(&Instances::new(), &no_probes, &c, t(0));
        s.operation_done("a", None, &c, t(0));
        s.post_start_done("a", 0, Err("exited with 1".into()), &c, t(1));
        let runs = of(vec![instance("a", 0, running(0))]);
        let actions = s.plan(&runs, &no_probes, &c, t(1));
        assert_eq!(stops(&actions), [("a".into(), 0, 7 * SEC)]);
        s.operation_done("a", None, &c, t(2));
        s.status_done(None);
        let ended = of(vec![instance("a", 0, exited(137, 0, 2))]);
        let actions = s.plan(&ended, &no_probes, &c, t(3));
        assert!(starts(&actions).is_empty());
        let status = written(&actions).unwrap();
        assert_eq!(
            waiting_reason(&status, 0).as_deref(),
            Some("PostStartHookError")
        );
        let actions = s.plan(&ended, &no_probes, &c, t(1_000));
        assert_eq!(starts(&actions), [("a".into(), 1)]);
    }

    #[test]
    fn a_stop_runs_the_pre_stop_hook_of_a_running_container_even_once_the_pod_is_gone() {
        let c = config();
        let pre_stop = |actions: &[Action]| {
            actions.iter().find_map(|a| match a {
                Action::Stop { pre_stop, .. } => Some(pre_stop.is_some()),
                _ => None,
            })
        };
        let runs = of(vec![instance("a", 0, running(0))]);
        let mut s = ready_state(hooked(false, true));
        s.unwant();
        assert_eq!(pre_stop(&s.plan(&runs, &no_probes, &c, t(1))), Some(true));

        let creating = of(vec![instance("a", 0, InstanceState::Creating)]);
        let mut s = ready_state(hooked(false, true));
        s.unwant();
        assert_eq!(
            pre_stop(&s.plan(&creating, &no_probes, &c, t(1))),
            Some(false),
            "nothing runs the hook could reach"
        );

        let mut s = ready_state(hooked(false, false));
        s.unwant();
        assert_eq!(pre_stop(&s.plan(&runs, &no_probes, &c, t(1))), Some(false));
    }

    #[test]
    fn only_the_two_latest_instances_are_kept() {
        let c = config();
        let mut s = ready_state(pod("Always", &["a"]));
        let instances = of((0..4)
            .map(|a| instance("a", a, exited(1, a as u64, a as u64 + 1)))
            .collect());
        let removed: Vec<u32> = s
            .plan(&instances, &no_probes, &c, t(10))
            .iter()
            .filter_map(|a| match a {
                Action::Remove(i) => Some(i.attempt),
                _ => None,
            })
            .collect();
        assert_eq!(removed, [0, 1]);
    }

    #[test]
    fn a_finished_or_deleting_pod_has_its_running_instances_stopped_with_its_grace() {
        let c = config();
        let instances = of(vec![
            instance("a", 0, running(0)),
            instance("b", 0, exited(0, 0, 1)),
        ]);
        let mut deleting = pod("Always", &["a", "b"]);
        deleting.meta_mut().deletion_timestamp = "2027-01-01T00:00:00Z".into();
        let mut failed = pod("Always", &["a", "b"]);
        failed.status = Some(pb::PodStatus {
            phase: "Failed".into(),
            ..Default::default()
        });
        for p in [deleting, failed] {
            let mut s = ready_state(p);
            let actions = s.plan(&instances, &no_probes, &c, t(5));
            assert_eq!(stops(&actions), [("a".into(), 0, 7 * SEC)]);
            assert!(written(&actions).is_none());
        }
    }

    #[test]
    fn a_pod_gone_from_the_api_is_stopped_then_its_sandbox_removed_once() {
        let c = config();
        let mut s = ready_state(pod("Always", &["a"]));
        s.unwant();
        let live = of(vec![instance("a", 0, running(0))]);
        let actions = s.plan(&live, &no_probes, &c, t(5));
        assert_eq!(stops(&actions), [("a".into(), 0, 7 * SEC)]);
        assert_eq!(
            actions.len(),
            1,
            "nothing removed while it runs: {actions:?}"
        );
        // Stopping: nothing more until the stop is done.
        let ended = of(vec![instance("a", 0, exited(143, 0, 6))]);
        assert!(s.plan(&ended, &no_probes, &c, t(6)).is_empty());
        s.operation_done("a", None, &c, t(6));
        let actions = s.plan(&ended, &no_probes, &c, t(7));
        assert!(matches!(&actions[..], [Action::RemoveSandbox(p)] if p.uid == "u1"));
        assert!(s.plan(&ended, &no_probes, &c, t(8)).is_empty());
        assert!(!s.settled(Some(&ended)));
    }

    #[test]
    fn a_sandbox_left_by_an_earlier_run_is_removed_and_then_the_state_settles() {
        let c = config();
        let left = PodRef {
            uid: "u9".into(),
            ..Default::default()
        };
        let mut s = PodState::left_behind(left.clone());
        let actions = s.plan(&Instances::new(), &no_probes, &c, t(0));
        assert_eq!(actions, [Action::RemoveSandbox(left)]);
        s.sandbox = Sandbox::default();
        assert!(s.settled(None));
    }

    #[test]
    fn a_status_is_written_once_until_the_write_ends_and_not_when_stored() {
        let c = config();
        let mut s = ready_state(pod("Always", &["a"]));
        let instances = of(vec![instance("a", 0, running(0))]);
        let first = written(&s.plan(&instances, &no_probes, &c, t(1))).expect("a status");
        assert!(written(&s.plan(&instances, &no_probes, &c, t(2))).is_none());
        let mut stored = s.pod.clone().unwrap();
        stored.status = Some(first);
        stored.meta_mut().resource_version = "6".into();
        s.status_done(Some(stored));
        assert!(written(&s.plan(&instances, &no_probes, &c, t(3))).is_none());
        assert!(s.written.is_none());
    }
}
