//! Lifecycle hooks: a container's postStart, run once it has started (it
//! is not Running until the hook ends, and a failed hook kills it), and
//! its preStop, run before it is sent SIGTERM and within its grace period.
//! The handlers are the probes' exec and httpGet, and sleep.

use std::time::Duration;
use std::time::Instant;

use berth_api::pb;

use crate::probe;
use crate::probe::Target;

/// Kubernetes bounds no postStart hook; one that runs this long is
/// abandoned, so that a hung hook cannot outlive every deadline.
pub const POST_START_LIMIT: Duration = Duration::from_secs(24 * 3600);
/// What SIGTERM leaves a container after its preStop hook, however long the
/// hook took: the kubelet's minimum grace period.
const MIN_GRACE_AFTER_PRE_STOP: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    PostStart,
    PreStop,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Self::PostStart => "PostStart",
            Self::PreStop => "PreStop",
        }
    }

    /// The container's handler for this hook, if it has one.
    pub fn of(self, container: &pb::Container) -> Option<&pb::LifecycleHandler> {
        let l = container.lifecycle.as_ref()?;
        match self {
            Self::PostStart => l.post_start.as_ref(),
            Self::PreStop => l.pre_stop.as_ref(),
        }
    }
}

/// Runs `handler` against the target within `limit`; the error says which
/// hook of which container failed and why, as the kubelet's event does.
pub async fn run(
    hook: Hook,
    handler: &pb::LifecycleHandler,
    target: &Target,
    limit: Duration,
) -> Result<(), String> {
    let (kind, what, result) = if let Some(exec) = &handler.exec {
        let what = format!("{:?}", exec.command);
        ("Exec", what, probe::run_exec(target, exec, limit).await)
    } else if let Some(http) = &handler.http_get {
        let what = http.path.clone();
        ("HTTP", what, probe::run_http_get(target, http, limit).await)
    } else if let Some(sleep) = &handler.sleep {
        let pause = Duration::from_secs(sleep.seconds.max(0) as u64).min(limit);
        tokio::time::sleep(pause).await;
        return Ok(());
    } else {
        return Err(format!("{} hook has no handler", hook.name()));
    };
    result.map_err(|e| {
        format!(
            "{kind} lifecycle hook ({what}) for container {:?} in pod \"{}_{}({})\" failed: {e}",
            target.container.name, target.pod.name, target.pod.namespace, target.pod.uid
        )
    })
}

/// Runs the container's preStop hook, if it has one, within `grace`; the
/// grace left for SIGTERM after it, never under the kubelet's minimum.
pub async fn pre_stop(target: &Target, grace: Duration) -> Duration {
    let Some(handler) = Hook::PreStop.of(&target.container) else {
        return grace;
    };
    let began = Instant::now();
    if let Err(e) = run(Hook::PreStop, handler, target, grace).await {
        tracing::warn!(pod_uid = %target.pod.uid, container = %target.container.name, error = %e, "FailedPreStopHook");
    }
    grace
        .saturating_sub(began.elapsed())
        .max(MIN_GRACE_AFTER_PRE_STOP)
}
