//! A pod's status from what the runtime reports: container states, restart
//! counts, readiness, the pod's phase and conditions. Pure functions, so
//! that the same inputs give the same status and an unchanged pod is never
//! written twice.

use std::time::Duration;
use std::time::SystemTime;

use berth_api::pb;
use berth_api::resources::is_sidecar;

use crate::runtime::rfc3339;
use crate::runtime::Exit;
use crate::runtime::Instance;
use crate::runtime::InstanceState;

/// Whether a container that ended this way is started again.
pub fn should_restart(restart_policy: &str, exit: &Exit) -> bool {
    match restart_policy {
        "Never" => false,
        "OnFailure" => exit.exit_code != 0 || exit.start_error.is_some(),
        _ => true,
    }
}

/// What the agent knows of one of the pod's containers.
#[derive(Clone, Debug, Default)]
pub struct ContainerView<'a> {
    pub latest: Option<&'a Instance>,
    pub previous: Option<&'a Instance>,
    /// Waiting out a crash back-off: how long is left.
    pub backoff: Option<Duration>,
    /// The startup probe succeeded (or there is none).
    pub started: bool,
    /// Started, and the readiness probe (or, without one, running) says
    /// ready.
    pub ready: bool,
    /// It runs, but its postStart hook has not ended: the kubelet shows it
    /// waiting in ContainerCreating until then.
    pub hooking: bool,
}

impl<'a> ContainerView<'a> {
    /// A container's instances, by attempt, as they are: its latest and
    /// the one before it.
    pub fn of(list: &'a [Instance]) -> Self {
        Self {
            latest: list.last(),
            previous: list.len().checked_sub(2).and_then(|i| list.get(i)),
            backoff: None,
            started: false,
            ready: false,
            hooking: false,
        }
    }
}

fn terminated(exit: &Exit, id: &str) -> pb::ContainerStateTerminated {
    pb::ContainerStateTerminated {
        exit_code: exit.exit_code,
        signal: exit.signal.unwrap_or(0),
        reason: exit.reason(),
        message: exit
            .start_error
            .as_ref()
            .map(|(_, m)| m.clone())
            .unwrap_or_default(),
        started_at: exit.started_at.map(rfc3339).unwrap_or_default(),
        finished_at: rfc3339(exit.finished_at),
        container_id: id.to_string(),
    }
}

fn waiting(reason: &str, message: String) -> pb::ContainerState {
    pb::ContainerState {
        waiting: Some(pb::ContainerStateWaiting {
            reason: reason.into(),
            message,
        }),
        ..Default::default()
    }
}

/// The restart policy of a pod's init containers: one that failed runs
/// again unless the pod's policy is Never, one that succeeded never does.
pub fn init_policy(pod: &pb::Pod, container: &pb::Container) -> &'static str {
    if is_sidecar(container) {
        return "Always";
    }
    match pod.spec.as_ref().map(|s| s.restart_policy.as_str()) {
        Some("Never") => "Never",
        _ => "OnFailure",
    }
}

/// One container's status; `policy` is the restart policy it runs under.
pub fn container_status(
    pod: &pb::Pod,
    container: &pb::Container,
    view: &ContainerView<'_>,
    policy: &str,
) -> pb::ContainerStatus {
    let pod_name = pod.metadata.as_ref().map_or("", |m| m.name.as_str());
    let mut status = pb::ContainerStatus {
        name: container.name.clone(),
        image: container.image.clone(),
        ..Default::default()
    };
    let Some(latest) = view.latest else {
        status.state = Some(waiting("ContainerCreating", String::new()));
        status.started = Some(false);
        return status;
    };
    status.container_id = latest.id.clone();
    status.image_id = latest.image_id.clone();
    status.restart_count = latest.attempt as i32;
    status.last_state = view.previous.and_then(|p| match &p.state {
        InstanceState::Exited(e) => Some(pb::ContainerState {
            terminated: Some(terminated(e, &p.id)),
            ..Default::default()
        }),
        _ => None,
    });
    status.state = Some(match &latest.state {
        InstanceState::Creating => waiting("ContainerCreating", String::new()),
        InstanceState::Running { .. } if view.hooking => {
            waiting("ContainerCreating", String::new())
        }
        InstanceState::Running { started_at } => pb::ContainerState {
            running: Some(pb::ContainerStateRunning {
                started_at: rfc3339(*started_at),
            }),
            ..Default::default()
        },
        InstanceState::Exited(exit) if should_restart(policy, exit) => {
            // The ended run is the last state; the container now waits.
            status.last_state = Some(pb::ContainerState {
                terminated: Some(terminated(exit, &latest.id)),
                ..Default::default()
            });
            match view.backoff {
                Some(left) => waiting(
                    "CrashLoopBackOff",
                    format!(
                        "back-off {} restarting failed container={} pod={pod_name}",
                        humantime::format_duration(Duration::from_secs(left.as_secs().max(1))),
                        container.name
                    ),
                ),
                None => waiting("ContainerCreating", String::new()),
            }
        }
        InstanceState::Exited(exit) => pb::ContainerState {
            terminated: Some(terminated(exit, &latest.id)),
            ..Default::default()
        },
    });
    let running = matches!(latest.state, InstanceState::Running { .. });
    status.ready = running && view.ready;
    status.started = Some(running && view.started);
    status
}

/// The pod's phase from its containers' statuses. A container that will
/// be started again shows as waiting, so "all terminated" means the pod is
/// done.
pub fn phase(statuses: &[pb::ContainerStatus]) -> &'static str {
    let state = |s: &pb::ContainerStatus| s.state.clone().unwrap_or_default();
    if !statuses.is_empty() && statuses.iter().all(|s| state(s).terminated.is_some()) {
        let all_ok = statuses
            .iter()
            .all(|s| state(s).terminated.is_some_and(|t| t.exit_code == 0));
        return if all_ok { "Succeeded" } else { "Failed" };
    }
    let has_run = |s: &pb::ContainerStatus| {
        let st = state(s);
        st.running.is_some() || st.terminated.is_some() || s.last_state.is_some()
    };
    if statuses.iter().all(has_run) {
        "Running"
    } else {
        "Pending"
    }
}

fn condition(kind: &str, value: bool, old: &[pb::Condition], now: SystemTime) -> pb::Condition {
    let status = if value { "True" } else { "False" };
    let since = old
        .iter()
        .find(|c| c.r#type == kind && c.status == status)
        .map_or_else(|| rfc3339(now), |c| c.last_transition_time.clone());
    pb::Condition {
        r#type: kind.into(),
        status: status.into(),
        last_transition_time: since,
        ..Default::default()
    }
}

/// What the agent knows of a pod's init containers and containers, each
/// in the spec's order.
#[derive(Clone, Debug, Default)]
pub struct PodViews<'a> {
    pub init: Vec<ContainerView<'a>>,
    pub containers: Vec<ContainerView<'a>>,
}

/// How far a pod's init containers have come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// All succeeded (or there are none, or the containers already ran).
    Done,
    Running,
    /// One failed under restart policy Never: the pod has failed.
    Failed,
}

fn succeeded(s: &pb::ContainerStatus) -> bool {
    let state = s.state.clone().unwrap_or_default();
    state.terminated.is_some_and(|t| t.exit_code == 0)
}

/// Where the init containers stand, from their statuses (each with
/// whether it is a sidecar, which needs only to have started): a
/// container that will run again shows as waiting, so a failure shown as
/// terminated is final.
pub fn init_progress(init: &[(pb::ContainerStatus, bool)], containers_ran: bool) -> Init {
    let done = |(s, sidecar): &(pb::ContainerStatus, bool)| match sidecar {
        true => s.started == Some(true),
        false => succeeded(s),
    };
    if containers_ran || init.iter().all(done) {
        return Init::Done;
    }
    let failed = init.iter().any(|(s, _)| {
        let state = s.state.clone().unwrap_or_default();
        state.terminated.is_some_and(|t| t.exit_code != 0)
    });
    if failed {
        Init::Failed
    } else {
        Init::Running
    }
}

fn pod_initializing() -> pb::ContainerState {
    waiting("PodInitializing", String::new())
}

/// The pod's whole status as this node sees it. Conditions keep their
/// transition times while unchanged; the scheduler's PodScheduled is kept.
pub fn pod_status(
    pod: &pb::Pod,
    views: &PodViews<'_>,
    host_ip: &str,
    pod_ip: &str,
    now: SystemTime,
) -> pb::PodStatus {
    let old = pod.status.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let mut init_statuses: Vec<pb::ContainerStatus> = spec
        .init_containers
        .iter()
        .zip(&views.init)
        .map(|(c, v)| container_status(pod, c, v, init_policy(pod, c)))
        .collect();
    let sidecars: Vec<bool> = spec.init_containers.iter().map(is_sidecar).collect();
    let mut statuses: Vec<pb::ContainerStatus> = spec
        .containers
        .iter()
        .zip(&views.containers)
        .map(|(c, v)| container_status(pod, c, v, &spec.restart_policy))
        .collect();
    let ran = views.containers.iter().any(|v| v.latest.is_some());
    let marked: Vec<(pb::ContainerStatus, bool)> = init_statuses
        .iter()
        .cloned()
        .zip(sidecars.iter().copied())
        .collect();
    let init = init_progress(&marked, ran);
    if init != Init::Done {
        // What has not started waits for the init containers, as the
        // kubelet shows it.
        let unstarted = init_statuses
            .iter_mut()
            .zip(&views.init)
            .filter_map(|(s, v)| v.latest.is_none().then_some(s));
        for s in unstarted.chain(statuses.iter_mut()) {
            s.state = Some(pod_initializing());
        }
    }
    let phase = match init {
        Init::Done => phase(&statuses),
        Init::Running => "Pending",
        Init::Failed => "Failed",
    };
    // Sidecars serve the containers: the pod is ready when they are too.
    let sidecar_statuses = init_statuses.iter().zip(&sidecars).filter(|(_, s)| **s);
    let ready = phase == "Running"
        && statuses.iter().all(|s| s.ready)
        && sidecar_statuses.into_iter().all(|(s, _)| s.ready);
    let mut conditions: Vec<pb::Condition> = old
        .conditions
        .iter()
        .filter(|c| c.r#type == "PodScheduled")
        .cloned()
        .collect();
    conditions.push(condition(
        "Initialized",
        init == Init::Done,
        &old.conditions,
        now,
    ));
    conditions.push(condition("ContainersReady", ready, &old.conditions, now));
    conditions.push(condition("Ready", ready, &old.conditions, now));
    pb::PodStatus {
        phase: phase.into(),
        conditions,
        host_ip: host_ip.into(),
        pod_ip: pod_ip.into(),
        pod_ips: (!pod_ip.is_empty())
            .then(|| pb::PodIp { ip: pod_ip.into() })
            .into_iter()
            .collect(),
        start_time: if old.start_time.is_empty() {
            rfc3339(now)
        } else {
            old.start_time
        },
        container_statuses: statuses,
        init_container_statuses: init_statuses,
        qos_class: old.qos_class,
        nominated_node_name: old.nominated_node_name,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::PodRef;

    fn pod(policy: &str) -> pb::Pod {
        pb::Pod {
            metadata: Some(pb::ObjectMeta {
                name: "web".into(),
                ..Default::default()
            }),
            spec: Some(pb::PodSpec {
                restart_policy: policy.into(),
                containers: vec![pb::Container {
                    name: "c".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn instance(attempt: u32, state: InstanceState) -> Instance {
        Instance {
            pod: PodRef {
                uid: "u".into(),
                namespace: "default".into(),
                name: "web".into(),
            },
            container: "c".into(),
            attempt,
            id: format!("process://u/c/{attempt}"),
            image: String::new(),
            image_id: String::new(),
            state,
            labels: Default::default(),
        }
    }

    fn exited(code: i32, oom: bool) -> InstanceState {
        InstanceState::Exited(Exit {
            exit_code: code,
            signal: None,
            oom_killed: oom,
            start_error: None,
            started_at: None,
            finished_at: SystemTime::UNIX_EPOCH,
        })
    }

    #[test]
    fn restart_policies_decide_by_exit_code() {
        let ok = exited(0, false);
        let failed = exited(1, false);
        let exit = |s: &InstanceState| match s {
            InstanceState::Exited(e) => e.clone(),
            _ => unreachable!(),
        };
        let table = [
            ("Always", &ok, true),
            ("Always", &failed, true),
            ("", &ok, true),
            ("OnFailure", &ok, false),
            ("OnFailure", &failed, true),
            ("Never", &ok, false),
            ("Never", &failed, false),
        ];
        for (policy, state, want) in table {
            assert_eq!(should_restart(policy, &exit(state)), want, "{policy}");
        }
    }

    #[test]
    fn phases_and_reasons_follow_the_containers() {
        let now = SystemTime::UNIX_EPOCH;
        let run = |policy: &str, latest: Option<Instance>, backoff: Option<Duration>| {
            let p = pod(policy);
            let view = ContainerView {
                latest: latest.as_ref(),
                previous: None,
                backoff,
                started: true,
                ready: true,
                hooking: false,
            };
            let views = PodViews {
                containers: vec![view],
                ..Default::default()
            };
            pod_status(&p, &views, "10.0.0.1", "10.0.0.1", now)
        };
        let s = run("Always", None, None);
        assert_eq!(s.phase, "Pending");
        let running = instance(0, InstanceState::Running { started_at: now });
        let s = run("Always", Some(running), None);
        assert_eq!(s.phase, "Running");
        assert!(s.container_statuses[0].ready);
        assert!(s
            .conditions
            .iter()
            .any(|c| c.r#type == "Ready" && c.status == "True"));

        let s = run("Never", Some(instance(0, exited(137, true))), None);
        assert_eq!(s.phase, "Failed");
        let t = s.container_statuses[0]
            .state
            .clone()
            .unwrap()
            .terminated
            .unwrap();
        assert_eq!((t.reason.as_str(), t.exit_code), ("OOMKilled", 137));

        let s = run("OnFailure", Some(instance(0, exited(0, false))), None);
        assert_eq!(s.phase, "Succeeded");
        let t = s.container_statuses[0]
            .state
            .clone()
            .unwrap()
            .terminated
            .unwrap();
        assert_eq!(t.reason, "Completed");

        let s = run(
            "Always",
            Some(instance(3, exited(2, false))),
            Some(Duration::from_secs(20)),
        );
        assert_eq!(s.phase, "Running");
        let c = &s.container_statuses[0];
        assert_eq!(c.restart_count, 3);
        let w = c.state.clone().unwrap().waiting.unwrap();
        assert_eq!(w.reason, "CrashLoopBackOff");
        assert!(w.message.contains("back-off 20s"), "{}", w.message);
        let last = c.last_state.clone().unwrap().terminated.unwrap();
        assert_eq!((last.reason.as_str(), last.exit_code), ("Error", 2));
        assert!(!c.ready);
    }

    #[test]
    fn an_unchanged_pod_gets_the_same_status() {
        let mut p = pod("Always");
        let running = instance(
            0,
            InstanceState::Running {
                started_at: SystemTime::UNIX_EPOCH,
            },
        );
        let view = ContainerView {
            latest: Some(&running),
            started: true,
            ready: true,
            ..Default::default()
        };
        let views = PodViews {
            containers: vec![view],
            ..Default::default()
        };
        let first = pod_status(&p, &views, "10.0.0.1", "10.0.0.1", SystemTime::UNIX_EPOCH);
        p.status = Some(first.clone());
        let later = SystemTime::UNIX_EPOCH + Duration::from_secs(60);
        assert_eq!(pod_status(&p, &views, "10.0.0.1", "10.0.0.1", later), first);
    }
}
