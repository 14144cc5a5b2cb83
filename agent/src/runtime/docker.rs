//! The `docker` runtime: one Docker Engine container per container
//! instance, through the Engine API (bollard), labelled with its node, pod
//! and attempt so that a restarted agent finds its containers again (and
//! only its own, when several agents share an engine). Limits are the
//! engine's NanoCpus, CpuShares and Memory (with no swap); logs come from
//! the engine. A pod with a network of its own (`--network bridge`) gets a
//! pause container first (network mode none; the agent wires its network
//! namespace), and its containers join that namespace, with the pod's
//! resolv.conf mounted over theirs; otherwise they use the host network.
//!
//! Images are never built or pushed here, and a registry is asked only
//! when the policy says so: Never uses the local image or fails,
//! IfNotPresent (the default unless the tag is `latest`) pulls only a
//! missing image, Always pulls but falls back to a local copy when the
//! registry cannot be reached. A missing image ends in a clear
//! ErrImagePull status, never a hang.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use std::time::SystemTime;

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::exec::CreateExecOptions;
use bollard::exec::StartExecOptions;
use bollard::models::ContainerCreateBody;
use bollard::models::ContainerSummaryStateEnum;
use bollard::models::HostConfig;
use bollard::query_parameters::CreateContainerOptionsBuilder;
use bollard::query_parameters::CreateImageOptionsBuilder;
use bollard::query_parameters::InspectContainerOptions;
use bollard::query_parameters::ListContainersOptionsBuilder;
use bollard::query_parameters::LogsOptionsBuilder;
use bollard::query_parameters::RemoveContainerOptionsBuilder;
use bollard::query_parameters::StopContainerOptionsBuilder;
use bollard::Docker;
use futures::StreamExt;
use futures::TryStreamExt;

use super::ContainerSpec;
use super::Exit;
use super::Instance;
use super::InstanceState;
use super::LogOptions;
use super::LogStream;
use super::PodRef;
use super::Runtime;
use super::RuntimeError;

const NODE_LABEL: &str = "berth.node";
const UID_LABEL: &str = "berth.pod.uid";
const NAMESPACE_LABEL: &str = "berth.pod.namespace";
const POD_LABEL: &str = "berth.pod.name";
const CONTAINER_LABEL: &str = "berth.container";
const ATTEMPT_LABEL: &str = "berth.attempt";
/// The container label of a pod's pause container (as kubelet's "POD":
/// upper case, so no container of a pod can have that name).
const PAUSE_CONTAINER: &str = "POD";
/// A list of 100 containers costs dockerd about 25 ms of CPU. Listing after
/// every finished start made about 90 lists while 100 pods started, and the
/// loop spent its time listing instead of starting the next pods.
const MIN_LIST_INTERVAL: Duration = Duration::from_millis(100);

pub struct DockerRuntime {
    docker: Docker,
    node: String,
    /// States that no longer change (exited), or change only by ending
    /// (running, with its start time), by container id and the engine's
    /// summary state: a sync pass inspects only what changed.
    known: Mutex<HashMap<String, (ContainerSummaryStateEnum, InstanceState)>>,
    /// Images seen present, and when: a burst of starts asks once.
    images: Mutex<HashMap<String, tokio::time::Instant>>,
    /// The image of pods' pause containers.
    pause_image: String,
}

/// How long an image seen present is taken to still be there.
const IMAGE_SEEN_FOR: Duration = Duration::from_secs(30);

fn engine_error(e: bollard::errors::Error) -> RuntimeError {
    RuntimeError::Other(format!("docker engine: {e}"))
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The engine's timestamps; its zero time ("0001-01-01...") is None.
fn parse_time(t: Option<&String>) -> Option<SystemTime> {
    t.and_then(|t| humantime::parse_rfc3339(t).ok())
}

impl DockerRuntime {
    /// Connects to the engine at DOCKER_HOST or the local socket.
    pub async fn connect(node: &str, pause_image: &str) -> Result<Self, RuntimeError> {
        let unreachable = |e: bollard::errors::Error| {
            RuntimeError::Other(format!(
                "cannot reach the Docker Engine ({e}): start dockerd, or set DOCKER_HOST"
            ))
        };
        // Speak the engine's API version: an older engine refuses a newer
        // client's.
        let docker = Docker::connect_with_local_defaults()
            .map_err(engine_error)?
            .negotiate_version()
            .await
            .map_err(unreachable)?;
        docker.ping().await.map_err(unreachable)?;
        Ok(Self {
            docker,
            node: node.to_string(),
            known: Mutex::new(HashMap::new()),
            images: Mutex::new(HashMap::new()),
            pause_image: pause_image.to_string(),
        })
    }

    fn name(&self, pod: &PodRef, container: &str, attempt: u32) -> String {
        format!("berth-{}-{}-{container}-{attempt}", self.node, pod.uid)
    }

    fn pause_name(&self, pod: &PodRef) -> String {
        format!("berth-{}-{}-pause", self.node, pod.uid)
    }

    /// The pod's pause container, running: found, or made and started.
    /// Returns its network namespace.
    async fn ensure_pause(&self, pod: &PodRef) -> Result<PathBuf, RuntimeError> {
        let name = self.pause_name(pod);
        match self
            .docker
            .inspect_container(&name, None::<InspectContainerOptions>)
            .await
        {
            Ok(info) => {
                let pid = info.state.as_ref().and_then(|s| s.pid).filter(|p| *p > 0);
                if let (Some(true), Some(pid)) = (info.state.and_then(|s| s.running), pid) {
                    return Ok(PathBuf::from(format!("/proc/{pid}/ns/net")));
                }
                // Its namespace died with it: the pod gets a new one.
                tracing::warn!(pod = %pod.name, "the pod's pause container stopped; making a new one");
                self.remove_named(&name).await?;
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(engine_error(e)),
        }
        self.ensure_image(&self.pause_image, false).await?;
        let body = ContainerCreateBody {
            image: Some(self.pause_image.clone()),
            labels: Some(self.labels(pod, PAUSE_CONTAINER, 0)),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| RuntimeError::Start {
                reason: "CreatePodSandboxError".into(),
                message: format!("cannot create the pause container: {e}"),
            })?;
        self.docker
            .start_container(
                &name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| RuntimeError::Start {
                reason: "CreatePodSandboxError".into(),
                message: format!("cannot start the pause container: {e}"),
            })?;
        let info = self
            .docker
            .inspect_container(&name, None::<InspectContainerOptions>)
            .await
            .map_err(engine_error)?;
        match info.state.and_then(|s| s.pid).filter(|p| *p > 0) {
            Some(pid) => Ok(PathBuf::from(format!("/proc/{pid}/ns/net"))),
            None => Err(RuntimeError::Start {
                reason: "CreatePodSandboxError".into(),
                message: format!(
                    "the pause container ({}) exited at once: its image must run a process that waits forever",
                    self.pause_image
                ),
            }),
        }
    }

    async fn remove_named(&self, name: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(name, Some(options)).await {
            Err(e) if !is_not_found(&e) => Err(engine_error(e)),
            _ => Ok(()),
        }
    }

    /// Makes the image available as its pull policy says.
    /// The engine's `User` for the container: runAsUser[:runAsGroup], or
    /// the image's own user, which runAsNonRoot must be able to vouch for.
    async fn user(&self, spec: &ContainerSpec) -> Result<Option<String>, RuntimeError> {
        let s = &spec.security;
        match (s.user, s.group) {
            (Some(u), Some(g)) => return Ok(Some(format!("{u}:{g}"))),
            (Some(u), None) => return Ok(Some(u.to_string())),
            (None, Some(_)) => {
                return Err(RuntimeError::Start {
                    reason: crate::pods::env::CONFIG_ERROR.into(),
                    message: "runAsGroup without runAsUser is not supported by the docker runtime: set runAsUser too".into(),
                })
            }
            (None, None) if !s.non_root => return Ok(None),
            (None, None) => {}
        }
        let image = self
            .docker
            .inspect_image(&spec.image)
            .await
            .map_err(engine_error)?;
        let user = image.config.and_then(|c| c.user).unwrap_or_default();
        let name = user.split(':').next().unwrap_or_default();
        match name.parse::<u32>() {
            Ok(0) => Err(super::runs_as_root(&spec.pod, &spec.container)),
            Ok(_) => Ok(None),
            Err(_) if name.is_empty() || name == "root" => {
                Err(super::runs_as_root(&spec.pod, &spec.container))
            }
            Err(_) => Err(RuntimeError::Start {
                reason: crate::pods::env::CONFIG_ERROR.into(),
                message: format!(
                    "container has runAsNonRoot and image has non-numeric user ({name}), cannot verify user is non-root (pod: \"{}_{}({})\", container: {})",
                    spec.pod.name, spec.pod.namespace, spec.pod.uid, spec.container
                ),
            }),
        }
    }

    async fn ensure_image(&self, image: &str, always_pull: bool) -> Result<(), RuntimeError> {
        if image.is_empty() {
            return Err(RuntimeError::Start {
                reason: "InvalidImageName".into(),
                message: "the container names no image; the docker runtime needs one".into(),
            });
        }
        let seen = self
            .images
            .lock()
            .expect("image cache lock")
            .get(image)
            .is_some_and(|at| at.elapsed() < IMAGE_SEEN_FOR);
        if seen && !always_pull {
            return Ok(());
        }
        let local = self.docker.inspect_image(image).await.is_ok();
        if local {
            self.images
                .lock()
                .expect("image cache lock")
                .insert(image.to_string(), tokio::time::Instant::now());
            if !always_pull {
                return Ok(());
            }
        }
        let options = CreateImageOptionsBuilder::new().from_image(image).build();
        let pulled: Result<Vec<_>, _> = self
            .docker
            .create_image(Some(options), None, None)
            .try_collect()
            .await;
        match pulled {
            Ok(_) => Ok(()),
            Err(e) if local => {
                tracing::warn!(%image, error = %e, "pull failed; using the local image");
                Ok(())
            }
            Err(e) => Err(RuntimeError::Start {
                reason: "ErrImagePull".into(),
                message: format!(
                    "image {image:?} is not on this node and could not be pulled: {e}"
                ),
            }),
        }
    }

    async fn inspect_state(&self, id: &str) -> Result<InstanceState, RuntimeError> {
        let info = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(engine_error)?;
        let state = info.state.unwrap_or_default();
        let started = parse_time(state.started_at.as_ref());
        if state.running == Some(true) {
            return Ok(InstanceState::Running {
                started_at: started.unwrap_or_else(SystemTime::now),
            });
        }
        if started.is_none() && state.error.as_deref().unwrap_or("").is_empty() {
            return Ok(InstanceState::Creating);
        }
        let error = state.error.filter(|e| !e.is_empty());
        Ok(InstanceState::Exited(Exit {
            exit_code: state.exit_code.unwrap_or(0) as i32,
            signal: None,
            oom_killed: state.oom_killed == Some(true),
            start_error: error.map(|e| ("RunContainerError".to_string(), e)),
            started_at: started,
            finished_at: parse_time(state.finished_at.as_ref()).unwrap_or_else(SystemTime::now),
        }))
    }

    fn labels(&self, pod: &PodRef, container: &str, attempt: u32) -> HashMap<String, String> {
        HashMap::from([
            (NODE_LABEL.to_string(), self.node.clone()),
            (UID_LABEL.to_string(), pod.uid.clone()),
            (NAMESPACE_LABEL.to_string(), pod.namespace.clone()),
            (POD_LABEL.to_string(), pod.name.clone()),
            (CONTAINER_LABEL.to_string(), container.to_string()),
            (ATTEMPT_LABEL.to_string(), attempt.to_string()),
        ])
    }

    async fn containers_of(
        &self,
        pod_uid: Option<&str>,
    ) -> Result<Vec<bollard::models::ContainerSummary>, RuntimeError> {
        let mut label = vec![format!("{NODE_LABEL}={}", self.node)];
        if let Some(uid) = pod_uid {
            label.push(format!("{UID_LABEL}={uid}"));
        }
        let filters = HashMap::from([("label", label)]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(engine_error)
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn version(&self) -> String {
        let v = self.docker.version().await.ok().and_then(|v| v.version);
        format!("docker://{}", v.unwrap_or_else(|| "unknown".into()))
    }

    async fn create_sandbox(
        &self,
        pod: &PodRef,
        network: bool,
    ) -> Result<Option<PathBuf>, RuntimeError> {
        if !network {
            return Ok(None);
        }
        self.ensure_pause(pod).await.map(Some)
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        self.ensure_image(&spec.image, spec.always_pull).await?;
        let user = self.user(spec).await?;
        let security = &spec.security;
        let caps = |caps: &[berth_api::security_context::Capability]| {
            let names: Vec<String> = caps.iter().map(|c| c.docker_name()).collect();
            (!names.is_empty()).then_some(names)
        };
        // Joined to the pause container's namespace, with the pod's
        // resolver; or on the host's network.
        let (network_mode, resolver) = match &spec.network {
            Some(net) => (
                format!("container:{}", self.pause_name(&spec.pod)),
                Some(format!("{}:/etc/resolv.conf:ro", net.resolv_conf.display())),
            ),
            None => ("host".to_string(), None),
        };
        let volumes = spec.mounts.iter().map(|m| {
            let mode = if m.read_only { "ro" } else { "rw" };
            format!("{}:{}:{mode}", m.source.display(), m.target.display())
        });
        let binds: Vec<String> = resolver.into_iter().chain(volumes).collect();
        let name = self.name(&spec.pod, &spec.container, spec.attempt);
        let memory = spec.memory_limit_bytes.map(|b| b as i64);
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: (!spec.command.is_empty()).then(|| spec.command.clone()),
            cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: spec
                .working_dir
                .as_ref()
                .map(|d| d.to_string_lossy().into_owned()),
            labels: Some(self.labels(&spec.pod, &spec.container, spec.attempt)),
            stop_timeout: Some(spec.grace_period.as_secs() as i64),
            user,
            host_config: Some(HostConfig {
                nano_cpus: spec.cpu_limit_millis.map(|m| m as i64 * 1_000_000),
                cpu_shares: spec
                    .cpu_request_millis
                    .map(|m| (m * 1024 / 1000).max(2) as i64),
                memory,
                memory_swap: memory,
                network_mode: Some(network_mode),
                binds: (!binds.is_empty()).then_some(binds),
                group_add: (!security.groups.is_empty())
                    .then(|| security.groups.iter().map(u32::to_string).collect()),
                cap_add: caps(&security.add),
                cap_drop: caps(&security.drop),
                privileged: security.privileged.then_some(true),
                readonly_rootfs: security.read_only_root.then_some(true),
                security_opt: security
                    .no_new_privs
                    .then(|| vec!["no-new-privileges:true".to_string()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let mut created = self
            .docker
            .create_container(Some(options.clone()), body.clone())
            .await;
        if let Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) = created
        {
            // Left by a start that did not finish: begin afresh.
            let _ = self
                .docker
                .remove_container(
                    &name,
                    Some(RemoveContainerOptionsBuilder::new().force(true).build()),
                )
                .await;
            created = self.docker.create_container(Some(options), body).await;
        }
        let created = created.map_err(|e| RuntimeError::Start {
            reason: "CreateContainerError".into(),
            message: e.to_string(),
        })?;
        if let Err(e) = self
            .docker
            .start_container(
                &created.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
        {
            // The engine keeps the failure in the container's state, where
            // `list` reports it as a start error.
            tracing::warn!(container = %name, error = %e, "container did not start");
        }
        Ok(())
    }

    async fn stop(
        &self,
        pod: &PodRef,
        container: &str,
        attempt: u32,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        let name = self.name(pod, container, attempt);
        let options = StopContainerOptionsBuilder::new()
            .t(grace.as_secs().min(i32::MAX as u64) as i32)
            .build();
        match self.docker.stop_container(&name, Some(options)).await {
            Err(e) if is_not_found(&e) => Ok(()),
            // 304: it was not running.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(engine_error(e)),
            Ok(()) => Ok(()),
        }
    }

    fn min_list_interval(&self) -> Duration {
        MIN_LIST_INTERVAL
    }

    async fn list(&self) -> Result<Vec<Instance>, RuntimeError> {
        let summaries = self.containers_of(None).await?;
        let mut out = Vec::with_capacity(summaries.len());
        let mut seen = Vec::with_capacity(summaries.len());
        for s in summaries {
            let (Some(id), Some(labels)) = (s.id.clone(), s.labels.clone()) else {
                continue;
            };
            let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
            let Ok(attempt) = get(ATTEMPT_LABEL).parse::<u32>() else {
                continue;
            };
            if get(CONTAINER_LABEL) == PAUSE_CONTAINER {
                continue;
            }
            let summary_state = s.state.unwrap_or(ContainerSummaryStateEnum::EMPTY);
            let cached = self
                .known
                .lock()
                .expect("docker cache lock")
                .get(&id)
                .filter(|(st, _)| *st == summary_state)
                .map(|(_, state)| state.clone());
            let state = match cached {
                Some(state) => state,
                None => match self.inspect_state(&id).await {
                    Ok(state) => {
                        if !matches!(state, InstanceState::Creating) {
                            self.known
                                .lock()
                                .expect("docker cache lock")
                                .insert(id.clone(), (summary_state, state.clone()));
                        }
                        state
                    }
                    // Removed between the list and the inspect.
                    Err(_) => continue,
                },
            };
            seen.push(id.clone());
            out.push(Instance {
                pod: PodRef {
                    uid: get(UID_LABEL),
                    namespace: get(NAMESPACE_LABEL),
                    name: get(POD_LABEL),
                },
                container: get(CONTAINER_LABEL),
                attempt,
                id: format!("docker://{id}"),
                image: s.image.clone().unwrap_or_default(),
                image_id: s.image_id.clone().unwrap_or_default(),
                state,
                labels: labels.into_iter().collect(),
            });
        }
        self.known
            .lock()
            .expect("docker cache lock")
            .retain(|id, _| seen.contains(id));
        Ok(out)
    }

    async fn remove(
        &self,
        pod: &PodRef,
        container: &str,
        attempt: u32,
    ) -> Result<(), RuntimeError> {
        self.remove_named(&self.name(pod, container, attempt)).await
    }

    async fn remove_sandbox(&self, pod: &PodRef) -> Result<(), RuntimeError> {
        for s in self.containers_of(Some(&pod.uid)).await? {
            if let Some(id) = s.id {
                let options = RemoveContainerOptionsBuilder::new().force(true).build();
                match self.docker.remove_container(&id, Some(options)).await {
                    Err(e) if !is_not_found(&e) => return Err(engine_error(e)),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    async fn logs(
        &self,
        pod: &PodRef,
        container: &str,
        attempt: u32,
        options: &LogOptions,
    ) -> Result<LogStream, RuntimeError> {
        let name = self.name(pod, container, attempt);
        if let Err(e) = self
            .docker
            .inspect_container(&name, None::<InspectContainerOptions>)
            .await
        {
            return Err(if is_not_found(&e) {
                RuntimeError::NotFound {
                    pod: pod.name.clone(),
                    container: container.into(),
                    attempt,
                }
            } else {
                engine_error(e)
            });
        }
        let tail = options.tail.map_or("all".to_string(), |n| n.to_string());
        // The engine takes whole seconds since the epoch.
        let since = options
            .since
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| i32::try_from(d.as_secs()).unwrap_or(i32::MAX));
        let options = LogsOptionsBuilder::new()
            .follow(options.follow)
            .stdout(true)
            .stderr(true)
            .timestamps(options.timestamps)
            .since(since)
            .tail(&tail)
            .build();
        let stream = self.docker.logs(&name, Some(options)).map(|item| {
            item.map(LogOutput::into_bytes)
                .map_err(|e| std::io::Error::other(e.to_string()))
        });
        Ok(Box::pin(stream))
    }

    async fn exec(
        &self,
        pod: &PodRef,
        container: &str,
        attempt: u32,
        argv: &[String],
        timeout: Duration,
    ) -> Result<i32, RuntimeError> {
        let name = self.name(pod, container, attempt);
        let exec = self
            .docker
            .create_exec(
                &name,
                CreateExecOptions {
                    cmd: Some(argv.to_vec()),
                    attach_stdout: Some(false),
                    attach_stderr: Some(false),
                    ..Default::default()
                },
            )
            .await
            .map_err(engine_error)?;
        self.docker
            .start_exec(
                &exec.id,
                Some(StartExecOptions {
                    detach: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(engine_error)?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let info = self
                .docker
                .inspect_exec(&exec.id)
                .await
                .map_err(engine_error)?;
            if info.running != Some(true) {
                if let Some(code) = info.exit_code {
                    return Ok(code as i32);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RuntimeError::Other(format!(
                    "command timed out after {}",
                    humantime::format_duration(timeout)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
