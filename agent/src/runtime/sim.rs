//! The `sim` runtime: no processes. An instance is Creating for a set
//! delay, then Running until stopped (an init container's exits with
//! success instead). Many sim agents fit in one process,
//! for scale tests and fast chaos runs. Its state lives in memory only, so
//! a restarted sim agent starts its pods afresh.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::time::Instant;

use super::ContainerSpec;
use super::Exit;
use super::Instance;
use super::InstanceState;
use super::LogOptions;
use super::LogStream;
use super::PodRef;
use super::Runtime;
use super::RuntimeError;

type Key = (String, String, u32);

struct SimInstance {
    pod: PodRef,
    image: String,
    created: Instant,
    created_wall: SystemTime,
    exit: Option<Exit>,
    init: bool,
}

pub struct SimRuntime {
    start_delay: Duration,
    instances: Mutex<HashMap<Key, SimInstance>>,
}

impl SimRuntime {
    pub fn new(start_delay: Duration) -> Self {
        Self {
            start_delay,
            instances: Mutex::new(HashMap::new()),
        }
    }

    fn key(pod: &PodRef, container: &str, attempt: u32) -> Key {
        (pod.uid.clone(), container.to_string(), attempt)
    }

    fn state(&self, i: &SimInstance) -> InstanceState {
        let started = i.created.elapsed() >= self.start_delay;
        match &i.exit {
            Some(e) => InstanceState::Exited(e.clone()),
            None if started && i.init => InstanceState::Exited(Exit {
                exit_code: 0,
                signal: None,
                oom_killed: false,
                start_error: None,
                started_at: Some(i.created_wall),
                finished_at: i.created_wall + self.start_delay,
            }),
            None if started => InstanceState::Running {
                started_at: i.created_wall + self.start_delay,
            },
            None => InstanceState::Creating,
        }
    }
}

fn not_found(pod: &PodRef, container: &str, attempt: u32) -> RuntimeError {
    RuntimeError::NotFound {
        pod: pod.name.clone(),
        container: container.into(),
        attempt,
    }
}

#[async_trait]
impl Runtime for SimRuntime {
    fn name(&self) -> &'static str {
        "sim"
    }

    async fn version(&self) -> String {
        format!("sim://{}", env!("CARGO_PKG_VERSION"))
    }

    async fn create_sandbox(
        &self,
        _pod: &PodRef,
        _network: bool,
    ) -> Result<Option<std::path::PathBuf>, RuntimeError> {
        Ok(None)
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        self.instances.lock().expect("sim lock").insert(
            Self::key(&spec.pod, &spec.container, spec.attempt),
            SimInstance {
                pod: spec.pod.clone(),
                image: spec.image.clone(),
                created: Instant::now(),
                created_wall: SystemTime::now(),
                exit: None,
                init: spec.init,
            },
        );
        Ok(())
    }

    async fn stop(
        &self,
        pod: &PodRef,
        container: &str,
        attempt: u32,
        _grace: Duration,
    ) -> Result<(), RuntimeError> {
        let mut all = self.instances.lock().expect("sim lock");
        let i = all
            .get_mut(&Self::key(pod, container, attempt))
            .ok_or_else(|| not_found(pod, container, attempt))?;
        if i.exit.is_none() {
            i.exit = Some(Exit {
                exit_code: 0,
                signal: None,
                oom_killed: false,
                start_error: None,
                started_at: Some(i.created_wall),
                finished_at: SystemTime::now(),
            });
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Instance>, RuntimeError> {
        let all = self.instances.lock().expect("sim lock");
        Ok(all
            .iter()
            .map(|((uid, container, attempt), i)| Instance {
                pod: i.pod.clone(),
                container: container.clone(),
                attempt: *attempt,
                id: format!("sim://{uid}/{container}/{attempt}"),
                image: i.image.clone(),
                image_id: String::new(),
                state: self.state(i),
                labels: Default::default(),
            })
            .collect())
    }

    async fn remove(
        &self,
        pod: &PodRef,
        container: &str,
        attempt: u32,
    ) -> Result<(), RuntimeError> {
        self.instances
            .lock()
            .expect("sim lock")
            .remove(&Self::key(pod, container, attempt));
        Ok(())
    }

    async fn remove_sandbox(&self, pod: &PodRef) -> Result<(), RuntimeError> {
        self.instances
            .lock()
            .expect("sim lock")
            .retain(|(uid, _, _), _| *uid != pod.uid);
        Ok(())
    }

    async fn logs(
        &self,
        pod: &PodRef,
        container: &str,
        attempt: u32,
        options: &LogOptions,
    ) -> Result<LogStream, RuntimeError> {
        if !self
            .instances
            .lock()
            .expect("sim lock")
            .contains_key(&Self::key(pod, container, attempt))
        {
            return Err(not_found(pod, container, attempt));
        }
        let mut reader = super::log_format::Reader::new(options);
        let mut shown = reader.feed(b"(the sim runtime runs nothing, so there is no output)\n");
        shown.extend(reader.caught_up());
        Ok(Box::pin(futures::stream::iter([Ok(bytes::Bytes::from(
            shown,
        ))])))
    }

    async fn exec(
        &self,
        _pod: &PodRef,
        _container: &str,
        _attempt: u32,
        _argv: &[String],
        _timeout: Duration,
    ) -> Result<i32, RuntimeError> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            pod: PodRef {
                uid: "u1".into(),
                namespace: "default".into(),
                name: "p".into(),
            },
            container: "c".into(),
            attempt: 0,
            image: "img".into(),
            always_pull: false,
            command: vec![],
            args: vec![],
            env: vec![],
            working_dir: None,
            cpu_limit_millis: None,
            cpu_request_millis: None,
            memory_limit_bytes: None,
            grace_period: Duration::from_secs(1),
            network: None,
            init: false,
            mounts: vec![],
            security: Default::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn instances_run_after_the_delay_until_stopped() {
        let rt = SimRuntime::new(Duration::from_millis(500));
        let s = spec();
        rt.start(&s).await.unwrap();
        let state = || async { rt.list().await.unwrap()[0].state.clone() };
        assert_eq!(state().await, InstanceState::Creating);
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(matches!(state().await, InstanceState::Running { .. }));
        rt.stop(&s.pod, "c", 0, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(matches!(state().await, InstanceState::Exited(e) if e.exit_code == 0));
        rt.remove_sandbox(&s.pod).await.unwrap();
        assert!(rt.list().await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_init_container_succeeds_after_the_delay() {
        let rt = SimRuntime::new(Duration::from_millis(500));
        let s = ContainerSpec {
            init: true,
            ..spec()
        };
        rt.start(&s).await.unwrap();
        tokio::time::advance(Duration::from_millis(600)).await;
        let state = rt.list().await.unwrap()[0].state.clone();
        assert!(matches!(state, InstanceState::Exited(e) if e.exit_code == 0));
    }
}
