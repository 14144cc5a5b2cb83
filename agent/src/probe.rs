//! Readiness and liveness probes: one task per probe of a running
//! container instance, each keeping its consecutive successes and failures
//! against the probe's thresholds and publishing its verdict for the sync
//! loop (which marks a container ready, or kills one that failed its
//! liveness probe so that its restart policy applies).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use berth_api::pb;
use http_body_util::BodyExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::runtime::PodRef;
use crate::runtime::Runtime;

/// A container instance: pod uid, container name, attempt.
pub type InstanceKey = (String, String, u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Readiness,
    Liveness,
}

/// The verdicts so far of one instance's probes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdicts {
    /// None until the readiness probe has decided.
    pub ready: Option<bool>,
    pub liveness_failed: bool,
}

/// What a probe task needs to reach its container.
#[derive(Clone)]
pub struct Target {
    pub runtime: Arc<dyn Runtime>,
    pub pod: PodRef,
    pub container: pb::Container,
    pub attempt: u32,
    /// Where tcp and http probes connect when the probe names no host.
    pub pod_ip: String,
}

/// The probe tasks of every running instance and their verdicts.
#[derive(Default)]
pub struct Prober {
    tasks: HashMap<InstanceKey, Vec<JoinHandle<()>>>,
    verdicts: Arc<Mutex<HashMap<InstanceKey, Verdicts>>>,
    /// Woken when a verdict changes.
    pub changed: Arc<Notify>,
}

impl Prober {
    pub fn verdicts(&self, key: &InstanceKey) -> Verdicts {
        self.verdicts
            .lock()
            .expect("verdicts lock")
            .get(key)
            .copied()
            .unwrap_or_default()
    }

    /// Starts the probes of a running instance, once.
    pub fn ensure(&mut self, key: InstanceKey, target: Target) {
        if self.tasks.contains_key(&key) {
            return;
        }
        let mut tasks = Vec::new();
        let probes = [
            (Kind::Readiness, target.container.readiness_probe.clone()),
            (Kind::Liveness, target.container.liveness_probe.clone()),
        ];
        for (kind, probe) in probes {
            let Some(probe) = probe else { continue };
            tasks.push(tokio::spawn(run(
                kind,
                probe,
                target.clone(),
                key.clone(),
                self.verdicts.clone(),
                self.changed.clone(),
            )));
        }
        self.tasks.insert(key, tasks);
    }

    /// Stops the probes of every instance but those in `running`.
    pub fn retain(&mut self, running: impl Fn(&InstanceKey) -> bool) {
        self.tasks.retain(|key, tasks| {
            let keep = running(key);
            if !keep {
                tasks.iter().for_each(JoinHandle::abort);
            }
            keep
        });
        let tasks = &self.tasks;
        self.verdicts
            .lock()
            .expect("verdicts lock")
            .retain(|k, _| tasks.contains_key(k));
    }
}

fn secs(value: i32, default: u64) -> Duration {
    Duration::from_secs(if value > 0 { value as u64 } else { default })
}

async fn run(
    kind: Kind,
    probe: pb::Probe,
    target: Target,
    key: InstanceKey,
    verdicts: Arc<Mutex<HashMap<InstanceKey, Verdicts>>>,
    changed: Arc<Notify>,
) {
    let period = secs(probe.period_seconds, 10);
    let timeout = secs(probe.timeout_seconds, 1);
    let success_threshold = probe.success_threshold.max(1) as u32;
    let failure_threshold = if probe.failure_threshold > 0 {
        probe.failure_threshold as u32
    } else {
        3
    };
    tokio::time::sleep(Duration::from_secs(
        probe.initial_delay_seconds.max(0) as u64
    ))
    .await;
    let (mut successes, mut failures) = (0u32, 0u32);
    loop {
        let ok = match check(&probe, &target, timeout).await {
            Ok(()) => true,
            Err(why) => {
                tracing::debug!(pod = %target.pod.name, container = %target.container.name, ?kind, %why, "probe failed");
                false
            }
        };
        if ok {
            successes += 1;
            failures = 0;
        } else {
            failures += 1;
            successes = 0;
        }
        let moved = {
            let mut all = verdicts.lock().expect("verdicts lock");
            let v = all.entry(key.clone()).or_default();
            let before = *v;
            match kind {
                Kind::Readiness if successes >= success_threshold => v.ready = Some(true),
                Kind::Readiness if failures >= failure_threshold => v.ready = Some(false),
                Kind::Liveness if failures >= failure_threshold => v.liveness_failed = true,
                _ => {}
            }
            *v != before
        };
        if moved {
            if kind == Kind::Liveness {
                tracing::info!(pod = %target.pod.name, container = %target.container.name, failures, "liveness probe failed; the container will be restarted");
            }
            changed.notify_one();
        }
        tokio::time::sleep(period).await;
    }
}

/// Resolves a probe's port: a number, or the name of a container port.
fn port(container: &pb::Container, port: &str) -> Result<u16, String> {
    if let Ok(n) = port.parse::<u16>() {
        return Ok(n);
    }
    container
        .ports
        .iter()
        .find(|p| p.name == port)
        .and_then(|p| u16::try_from(p.container_port).ok())
        .ok_or_else(|| format!("the container has no port named {port:?}"))
}

async fn check(probe: &pb::Probe, target: &Target, timeout: Duration) -> Result<(), String> {
    let host = |h: &str| {
        if h.is_empty() {
            target.pod_ip.clone()
        } else {
            h.to_string()
        }
    };
    if let Some(exec) = &probe.exec {
        let code = target
            .runtime
            .exec(
                &target.pod,
                &target.container.name,
                target.attempt,
                &exec.command,
                timeout,
            )
            .await
            .map_err(|e| e.to_string())?;
        return if code == 0 {
            Ok(())
        } else {
            Err(format!("command exited with {code}"))
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let addr = (host(&tcp.host), port(&target.container, &tcp.port)?);
        return match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        };
    }
    if let Some(http) = &probe.http_get {
        let addr = (host(&http.host), port(&target.container, &http.port)?);
        return match tokio::time::timeout(timeout, http_get(addr, http)).await {
            Ok(r) => r,
            Err(_) => Err("timed out".into()),
        };
    }
    Err("the probe sets none of exec, httpGet and tcpSocket".into())
}

/// An HTTP/1.1 GET; any status from 200 to 399 passes, as in Kubernetes.
async fn http_get(addr: (String, u16), action: &pb::HttpGetAction) -> Result<(), String> {
    if action.scheme.eq_ignore_ascii_case("https") {
        return Err("HTTPS probes are not supported: use HTTP or a tcpSocket probe".into());
    }
    let stream = TcpStream::connect((addr.0.as_str(), addr.1))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let path = if action.path.is_empty() {
        "/"
    } else {
        &action.path
    };
    let mut req = hyper::Request::get(path).header("host", format!("{}:{}", addr.0, addr.1));
    req = req.header(
        "user-agent",
        concat!("berth-probe/", env!("CARGO_PKG_VERSION")),
    );
    for h in &action.http_headers {
        req = req.header(h.name.as_str(), h.value.as_str());
    }
    let req = req
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string());
    let result = match resp {
        Ok(resp) => {
            let code = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP status {code}"))
            }
        }
        Err(e) => Err(e),
    };
    conn.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::sim::SimRuntime;
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;

    fn target(container: pb::Container) -> Target {
        Target {
            runtime: Arc::new(SimRuntime::new(Duration::ZERO)),
            pod: PodRef {
                uid: "u".into(),
                namespace: "default".into(),
                name: "p".into(),
            },
            container,
            attempt: 0,
            pod_ip: "127.0.0.1".into(),
        }
    }

    /// Answers every connection with `status`.
    async fn http_server(status: u16) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn tcp_and_http_probes_pass_and_fail_as_kubernetes_ones_do() {
        let ok_port = http_server(200).await;
        let bad_port = http_server(500).await;
        // Bound but not listening: connections are refused, and no
        // outgoing connection can take the port (and reach itself).
        let closed_socket = tokio::net::TcpSocket::new_v4().unwrap();
        closed_socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let closed = closed_socket.local_addr().unwrap().port();
        let named = pb::Container {
            name: "c".into(),
            ports: vec![pb::ContainerPort {
                name: "web".into(),
                container_port: ok_port as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        let t = target(named);
        let tcp = |port: String| pb::Probe {
            tcp_socket: Some(pb::TcpSocketAction {
                port,
                host: String::new(),
            }),
            ..Default::default()
        };
        let http = |port: String| pb::Probe {
            http_get: Some(pb::HttpGetAction {
                path: "/healthz".into(),
                port,
                ..Default::default()
            }),
            ..Default::default()
        };
        let second = Duration::from_secs(1);
        let table = [
            (tcp("web".into()), true),
            (tcp(ok_port.to_string()), true),
            (tcp(closed.to_string()), false),
            (tcp("nope".into()), false),
            (http(ok_port.to_string()), true),
            (http("web".into()), true),
            (http(bad_port.to_string()), false),
            (http(closed.to_string()), false),
            (pb::Probe::default(), false),
        ];
        for (i, (probe, want)) in table.into_iter().enumerate() {
            assert_eq!(check(&probe, &t, second).await.is_ok(), want, "case {i}");
        }
    }
}
