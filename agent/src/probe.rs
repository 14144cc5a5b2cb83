//! Startup, readiness and liveness probes: one task per running container
//! instance, keeping each probe's consecutive successes and failures
//! against its thresholds and publishing the verdicts for the sync loop
//! (which marks a container started and ready, or kills one that failed
//! its startup or liveness probe so that its restart policy applies). As
//! in Kubernetes, a startup probe runs first and alone: readiness and
//! liveness are probed only once it has succeeded.

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
    Startup,
    Readiness,
    Liveness,
}

/// The verdicts so far of one instance's probes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdicts {
    /// The startup probe has succeeded.
    pub started: bool,
    /// None until the readiness probe has decided.
    pub ready: Option<bool>,
    /// The startup or the liveness probe failed its threshold.
    pub failed: bool,
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
    tasks: HashMap<InstanceKey, JoinHandle<()>>,
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
        let probing = Probing {
            target,
            key: key.clone(),
            verdicts: self.verdicts.clone(),
            changed: self.changed.clone(),
        };
        self.tasks.insert(key, tokio::spawn(probing.run_all()));
    }

    /// Stops the probes of every instance but those in `running`.
    pub fn retain(&mut self, running: impl Fn(&InstanceKey) -> bool) {
        self.tasks.retain(|key, task| {
            let keep = running(key);
            if !keep {
                task.abort();
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

/// One instance's probes and where their verdicts go.
struct Probing {
    target: Target,
    key: InstanceKey,
    verdicts: Arc<Mutex<HashMap<InstanceKey, Verdicts>>>,
    changed: Arc<Notify>,
}

impl Probing {
    /// The startup probe until it decides, then readiness and liveness
    /// side by side for as long as the instance runs.
    async fn run_all(self) {
        let container = self.target.container.clone();
        if let Some(startup) = container.startup_probe {
            if !self.run(Kind::Startup, startup).await {
                return;
            }
        }
        let probes = [
            (Kind::Readiness, container.readiness_probe),
            (Kind::Liveness, container.liveness_probe),
        ];
        let running = probes
            .into_iter()
            .filter_map(|(kind, probe)| probe.map(|p| self.run(kind, p)));
        futures::future::join_all(running).await;
    }

    /// Probes until the verdict is final: for a startup probe, its success
    /// (true) or failure (false); the others never end.
    async fn run(&self, kind: Kind, probe: pb::Probe) -> bool {
        let target = &self.target;
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
            let ok = match check(&probe, target, timeout).await {
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
            let passed = successes >= success_threshold;
            let failed = failures >= failure_threshold;
            let moved = self.record(|v| match kind {
                Kind::Startup if passed => v.started = true,
                Kind::Readiness if passed => v.ready = Some(true),
                Kind::Readiness if failed => v.ready = Some(false),
                Kind::Startup | Kind::Liveness if failed => v.failed = true,
                _ => {}
            });
            if moved {
                if kind != Kind::Readiness && failed {
                    tracing::info!(pod = %target.pod.name, container = %target.container.name, ?kind, failures, "probe failed; the container will be restarted");
                }
                self.changed.notify_one();
            }
            if kind == Kind::Startup && (passed || failed) {
                return passed;
            }
            tokio::time::sleep(period).await;
        }
    }

    /// Applies `change` to the instance's verdicts; true if they moved.
    fn record(&self, change: impl FnOnce(&mut Verdicts)) -> bool {
        let mut all = self.verdicts.lock().expect("verdicts lock");
        let v = all.entry(self.key.clone()).or_default();
        let before = *v;
        change(v);
        *v != before
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
    if let Some(exec) = &probe.exec {
        return run_exec(target, exec, timeout).await;
    }
    if let Some(tcp) = &probe.tcp_socket {
        let addr = (target.host(&tcp.host), port(&target.container, &tcp.port)?);
        return match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        };
    }
    if let Some(http) = &probe.http_get {
        return run_http_get(target, http, timeout).await;
    }
    Err("the probe sets none of exec, httpGet and tcpSocket".into())
}

impl Target {
    /// Where a probe or hook connects: its host, or else the pod.
    fn host(&self, host: &str) -> String {
        match host {
            "" => self.pod_ip.clone(),
            h => h.to_string(),
        }
    }
}

/// Runs `exec` in the target container: Ok if it exits 0.
pub async fn run_exec(
    target: &Target,
    exec: &pb::ExecAction,
    timeout: Duration,
) -> Result<(), String> {
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
    match code {
        0 => Ok(()),
        code => Err(format!("command exited with {code}")),
    }
}

/// GETs `http` from the target: Ok on a status from 200 to 399.
pub async fn run_http_get(
    target: &Target,
    http: &pb::HttpGetAction,
    timeout: Duration,
) -> Result<(), String> {
    let addr = (
        target.host(&http.host),
        port(&target.container, &http.port)?,
    );
    match tokio::time::timeout(timeout, http_get(addr, http)).await {
        Ok(r) => r,
        Err(_) => Err("timed out".into()),
    }
}

/// An HTTP/1.1 GET; any status from 200 to 399 passes, as in Kubernetes.
/// Over HTTPS the server's certificate is not verified, as the kubelet
/// does not.
async fn http_get(addr: (String, u16), action: &pb::HttpGetAction) -> Result<(), String> {
    let stream = TcpStream::connect((addr.0.as_str(), addr.1))
        .await
        .map_err(|e| e.to_string())?;
    if !action.scheme.eq_ignore_ascii_case("https") {
        return request(stream, &addr, action).await;
    }
    // The name is sent (SNI) but not checked; an address is as good.
    let name = rustls::pki_types::ServerName::try_from(addr.0.clone())
        .map_err(|_| format!("{:?} is not a host name", addr.0))?;
    let tls = tokio_rustls::TlsConnector::from(berth_tls::probe_client_config())
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    request(tls, &addr, action).await
}

async fn request<T>(io: T, addr: &(String, u16), action: &pb::HttpGetAction) -> Result<(), String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
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

    /// Answers every connection with `status` over TLS, with a
    /// certificate no probe could verify (a CA of its own, another name).
    async fn https_server(status: u16) -> u16 {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::PrivateKeyDer;
        let ca = berth_pki::Ca::generate("elsewhere").unwrap();
        let issued = ca
            .issue(
                &berth_pki::Identity::Node("other".into()),
                &["192.0.2.1".into()],
                Duration::from_secs(3600),
            )
            .unwrap();
        let cert = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(berth_tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let Ok(mut s) = acceptor.accept(s).await else {
                    continue;
                };
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        });
        port
    }

    #[tokio::test]
    async fn https_probes_skip_verification_as_the_kubelets_do() {
        let t = target(pb::Container::default());
        let https = |port: u16, scheme: &str| pb::Probe {
            http_get: Some(pb::HttpGetAction {
                port: port.to_string(),
                scheme: scheme.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let second = Duration::from_secs(1);
        let ok = https_server(200).await;
        let bad = https_server(503).await;
        assert_eq!(check(&https(ok, "HTTPS"), &t, second).await, Ok(()));
        assert!(check(&https(bad, "HTTPS"), &t, second).await.is_err());
        assert!(
            check(&https(ok, "HTTP"), &t, second).await.is_err(),
            "plain HTTP to a TLS port fails"
        );
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
