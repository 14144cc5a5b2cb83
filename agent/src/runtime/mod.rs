//! The one trait every runtime driver implements, and what drivers report.
//!
//! A driver knows containers, not pods: the agent asks it to start one
//! *instance* of a pod's container (attempt 0, then one more per restart),
//! to stop or remove instances, and to list everything it runs for this
//! node. Instances carry their pod's uid, namespace and name and their
//! attempt number, so that an agent that restarts rebuilds its whole view
//! (restart counts included) from `list` and adopts what still runs.

pub mod cgroup;
pub mod docker;
pub mod log_format;
pub mod mounts;
pub mod process;
pub mod shim;
pub mod sim;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;
use std::time::SystemTime;

use async_trait::async_trait;
use futures::Stream;
use serde::Deserialize;
use serde::Serialize;

/// Which pod a container instance belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodRef {
    pub uid: String,
    pub namespace: String,
    pub name: String,
}

/// The pod's network, when the agent gives pods their own (`--network
/// bridge`): the namespace its containers join and their resolver file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxNetwork {
    pub netns: PathBuf,
    pub resolv_conf: PathBuf,
}

/// A node path the container sees at `target`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Who the container's process runs as and what it may do (its
/// `securityContext` over the pod's).
pub type Security = berth_api::security_context::Settings;

/// The kubelet's refusal of a container that would run as root although
/// it must not.
pub fn runs_as_root(pod: &PodRef, container: &str) -> RuntimeError {
    RuntimeError::Start {
        reason: "CreateContainerConfigError".into(),
        message: format!(
            "container has runAsNonRoot and image will run as root (pod: \"{}_{}({})\", container: {container})",
            pod.name, pod.namespace, pod.uid
        ),
    }
}

/// Everything a driver needs to start one container instance, worked out
/// by the agent from the pod's spec.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub pod: PodRef,
    pub container: String,
    /// 0 for the first start, one more for every restart.
    pub attempt: u32,
    pub image: String,
    /// Pull even when the image is present (imagePullPolicy Always).
    pub always_pull: bool,
    /// The container's `command` (docker: replaces the image's entrypoint).
    pub command: Vec<String>,
    /// The container's `args` (docker: replaces the image's cmd).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
    /// CPU limit in millicores.
    pub cpu_limit_millis: Option<u64>,
    /// CPU request in millicores, for the relative share under contention.
    pub cpu_request_millis: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    /// How long `stop` waits after SIGTERM when the agent no longer knows
    /// the pod (it was deleted while the agent was away).
    pub grace_period: Duration,
    /// None: the node's own network.
    pub network: Option<SandboxNetwork>,
    /// One of the pod's init containers, which run to completion (the sim
    /// runtime, which runs nothing, has them succeed once started).
    #[serde(default)]
    pub init: bool,
    /// The pod's volumes where this container mounts them.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub security: Security,
}

/// An instance's state as the runtime last saw it.
#[derive(Clone, Debug, PartialEq)]
pub enum InstanceState {
    /// Being created or started (an image pull, say).
    Creating,
    Running {
        started_at: SystemTime,
    },
    Exited(Exit),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Exit {
    pub exit_code: i32,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Killed by the kernel for exceeding its memory limit.
    pub oom_killed: bool,
    /// Why it could not run at all (a command not found, an image missing):
    /// reported as reason `StartError` or the driver's own reason.
    pub start_error: Option<(String, String)>,
    pub started_at: Option<SystemTime>,
    pub finished_at: SystemTime,
}

impl Exit {
    /// Kubernetes' reason for a terminated container.
    pub fn reason(&self) -> String {
        if let Some((reason, _)) = &self.start_error {
            return reason.clone();
        }
        if self.oom_killed {
            return "OOMKilled".into();
        }
        if self.exit_code == 0 {
            "Completed".into()
        } else {
            "Error".into()
        }
    }
}

/// One container instance the runtime holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    pub pod: PodRef,
    pub container: String,
    pub attempt: u32,
    /// `<runtime>://<id>`, as in a container status's containerID.
    pub id: String,
    pub image: String,
    pub image_id: String,
    pub state: InstanceState,
    /// Labels the driver keeps with it (docker labels, say); informative.
    pub labels: BTreeMap<String, String>,
}

pub use log_format::LogOptions;

pub type LogStream = Pin<Box<dyn Stream<Item = std::io::Result<bytes::Bytes>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{reason}: {message}")]
    Start { reason: String, message: String },
    #[error("no container {container} (attempt {attempt}) of pod {pod}")]
    NotFound {
        pod: String,
        container: String,
        attempt: u32,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// The runtime driver interface.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// `process`, `docker` or `sim`.
    fn name(&self) -> &'static str;

    /// Version shown in the node's `containerRuntimeVersion`.
    async fn version(&self) -> String;

    /// Prepares what a pod's containers share, before the first starts;
    /// running it again checks and repairs. With `network` (the pod gets a
    /// network of its own), a runtime that keeps the pod's network
    /// namespace itself (docker's pause container) returns its path; None
    /// means the agent makes one.
    async fn create_sandbox(
        &self,
        pod: &PodRef,
        network: bool,
    ) -> Result<Option<PathBuf>, RuntimeError>;

    /// Creates and starts one instance. Errors that belong to the
    /// container (a missing image, a command not found) are returned as
    /// `RuntimeError::Start` or show up as an `Exited` instance.
    async fn start(&self, spec: &ContainerSpec) -> Result<(), RuntimeError>;

    /// Sends SIGTERM, waits up to `grace` for the instance to exit, then
    /// kills it. Returns once it has exited.
    async fn stop(
        &self,
        pod: &PodRef,
        container: &str,
        attempt: u32,
        grace: Duration,
    ) -> Result<(), RuntimeError>;

    /// Every instance this node's runtime holds, running or exited.
    async fn list(&self) -> Result<Vec<Instance>, RuntimeError>;

    /// The shortest time the sync loop leaves between two lists, so that a
    /// burst of changes (a hundred starts finishing) costs a few lists
    /// rather than one each. Zero where listing is cheap.
    fn min_list_interval(&self) -> Duration {
        Duration::ZERO
    }

    /// Forgets an exited instance (its record, its logs).
    async fn remove(&self, pod: &PodRef, container: &str, attempt: u32)
        -> Result<(), RuntimeError>;

    /// Removes what `create_sandbox` made and whatever is left of the pod.
    async fn remove_sandbox(&self, pod: &PodRef) -> Result<(), RuntimeError>;

    /// The instance's output as `options` asks; following, keeps
    /// streaming until it exits.
    async fn logs(
        &self,
        pod: &PodRef,
        container: &str,
        attempt: u32,
        options: &LogOptions,
    ) -> Result<LogStream, RuntimeError>;

    /// Runs `argv` inside the instance's environment (an exec probe) and
    /// returns its exit code; a run longer than `timeout` is a failure.
    async fn exec(
        &self,
        pod: &PodRef,
        container: &str,
        attempt: u32,
        argv: &[String],
        timeout: Duration,
    ) -> Result<i32, RuntimeError>;
}

/// `SystemTime` as RFC 3339, the form of every timestamp in the API.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
