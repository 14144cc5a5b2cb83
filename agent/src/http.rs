//! The agent's HTTPS port: container logs (kubelet's path,
//! `/containerLogs/NAMESPACE/POD/CONTAINER?follow=true&previous=true`).
//! `berth logs` finds it through the node's InternalIP and
//! `status.daemonEndpoints.kubeletEndpoint.Port`. It presents the node's
//! certificate and serves only clients with a certificate of the cluster's
//! CA (anyone else fails the handshake), and of those only the ones the
//! cluster allows `get pods/log` on the pod: the agent asks a controller
//! (`Access.Review`, as the kubelet delegates to the API server's
//! SubjectAccessReview) and keeps each answer for a few seconds.
//! `--insecure`, plain HTTP.
//! `/metrics` and `/healthz` are plain HTTP on a listener of their own.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::Extension;
use axum::Router;
use berth_client::connect::Connector;
use berth_pki::Identity;
use berth_proto::security as spb;
use berth_proto::security::access_client::AccessClient;
use berth_tls::Peer;
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::pods::PodIndex;
use crate::runtime::LogOptions;
use crate::runtime::Runtime;
use crate::runtime::RuntimeError;

/// One agent's pods and runtime (a process may run many sim agents).
#[derive(Clone)]
pub struct AgentLogs {
    pub pods: PodIndex,
    pub runtime: Arc<dyn Runtime>,
}

pub type RenderMetrics = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct LogQuery {
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    previous: bool,
    tail_lines: Option<usize>,
    since_seconds: Option<u64>,
    /// RFC 3339.
    since_time: Option<String>,
    #[serde(default)]
    timestamps: bool,
}

impl LogQuery {
    /// The kubelet's parameters as the runtime's options; a malformed
    /// time is refused, not ignored.
    fn options(&self, now: SystemTime) -> Result<LogOptions, String> {
        let since_time = match &self.since_time {
            Some(t) => Some(humantime::parse_rfc3339_weak(t).map_err(|e| {
                format!("sinceTime {t:?} is not an RFC 3339 time ({e}): write it as 2024-05-01T12:00:00Z")
            })?),
            None => None,
        };
        let since_seconds = self.since_seconds.map(|s| {
            now.checked_sub(Duration::from_secs(s))
                .unwrap_or(UNIX_EPOCH)
        });
        Ok(LogOptions {
            follow: self.follow,
            tail: self.tail_lines,
            since: since_time.or(since_seconds),
            timestamps: self.timestamps,
        })
    }
}

/// How long an answer of the cluster about reading logs is kept.
const ACCESS_ANSWER_TTL: Duration = Duration::from_secs(10);
/// Open connections to the log server: its clients are the controllers
/// (each following a few logs) and the occasional direct reader.
const LOG_CONNECTIONS: usize = 256;
/// Answers kept at most; all are dropped when there would be more.
const ACCESS_ANSWERS_MAX: usize = 10_000;

/// Asks the cluster whether a caller may read a pod's logs, and remembers
/// the answer for ACCESS_ANSWER_TTL.
#[derive(Clone)]
pub struct LogAccess {
    conn: Connector,
    answers: Arc<Mutex<HashMap<String, (bool, Instant)>>>,
}

impl LogAccess {
    /// Asks through `conn`, as a node (which may ask about any user).
    pub fn new(conn: Connector) -> Self {
        Self {
            conn,
            answers: Arc::default(),
        }
    }

    async fn allows(&self, who: &Identity, namespace: &str, pod: &str) -> Result<bool, String> {
        if matches!(who, Identity::Controller(_)) {
            return Ok(true);
        }
        let key = format!("{who}|{}|{namespace}/{pod}", who.groups().join(","));
        if let Some((allowed, at)) = self.answers.lock().expect("answers lock").get(&key) {
            if at.elapsed() < ACCESS_ANSWER_TTL {
                return Ok(*allowed);
            }
        }
        let review = spb::AccessReview {
            verb: "get".into(),
            resource: "pods".into(),
            subresource: "log".into(),
            namespace: namespace.into(),
            name: pod.into(),
            user: who.name(),
            groups: who.groups(),
            ..Default::default()
        };
        let channel = self.conn.channel().await.map_err(|e| e.to_string())?;
        let allowed = AccessClient::new(channel)
            .review(review)
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner()
            .allowed;
        let mut answers = self.answers.lock().expect("answers lock");
        if answers.len() >= ACCESS_ANSWERS_MAX {
            answers.clear();
        }
        answers.insert(key, (allowed, Instant::now()));
        Ok(allowed)
    }
}

struct LogServer {
    agents: Vec<AgentLogs>,
    /// None: plain HTTP (`--insecure`), nothing is checked.
    access: Option<LogAccess>,
}

/// Serves the logs of `agents` on `listener`: over TLS with `tls` (which
/// must require client certificates) to callers `access` allows, else
/// plain to anyone.
pub async fn serve(
    listener: TcpListener,
    agents: Vec<AgentLogs>,
    tls: Option<(Arc<rustls::ServerConfig>, LogAccess)>,
) {
    let router = |access| {
        Router::new()
            .route(
                "/containerLogs/{namespace}/{pod}/{container}",
                get(container_logs),
            )
            .with_state(Arc::new(LogServer {
                agents: agents.clone(),
                access,
            }))
    };
    let served = match tls {
        Some((config, access)) => {
            let local = listener.local_addr();
            let conns =
                berth_tls::incoming(listener, berth_tls::Acceptor::Tls(config), LOG_CONNECTIONS);
            let listener = TlsListener {
                conns: Box::pin(conns),
                local,
            };
            let app = router(Some(access)).into_make_service_with_connect_info::<Caller>();
            axum::serve(listener, app).await
        }
        None => axum::serve(listener, router(None)).await,
    };
    if let Err(e) = served {
        tracing::error!(error = %e, "agent log server failed");
    }
}

/// `/metrics` and `/healthz`, plain HTTP.
pub async fn serve_metrics(listener: TcpListener, metrics: RenderMetrics) {
    let app = Router::new()
        .route("/metrics", get(move || async move { metrics() }))
        .route("/healthz", get(|| async { "ok" }));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "agent metrics server failed");
    }
}

/// Who is at the other end of a connection: what handlers are told.
#[derive(Clone, Debug)]
struct Caller(Peer);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for Caller
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Handshaken TLS connections, as axum takes them.
struct TlsListener {
    conns: std::pin::Pin<Box<dyn futures::Stream<Item = std::io::Result<berth_tls::Conn>> + Send>>,
    local: std::io::Result<std::net::SocketAddr>,
}

impl axum::serve::Listener for TlsListener {
    type Io = berth_tls::Conn;
    type Addr = Caller;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use futures::StreamExt;
        loop {
            match self.conns.next().await {
                Some(Ok(conn)) => {
                    let caller = Caller(conn.peer().clone());
                    return (conn, caller);
                }
                Some(Err(_)) => continue,
                // The accept loop ended: nothing more will come.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        match &self.local {
            Ok(addr) => Ok(Caller(Peer {
                addr: Some(*addr),
                identity: None,
                secure: true,
            })),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

fn refuse(code: StatusCode, message: String) -> Response {
    (code, format!("{message}\n")).into_response()
}

/// Whether the caller on `peer` may read the logs of `namespace/pod`; the
/// response to send if not.
async fn check_access(
    access: &LogAccess,
    peer: Option<&Peer>,
    namespace: &str,
    pod: &str,
) -> Result<(), Response> {
    let Some(who) = peer.and_then(|p| p.identity.as_deref()) else {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "a client certificate of this cluster is needed".into(),
        ));
    };
    match access.allows(who, namespace, pod).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(refuse(
            StatusCode::FORBIDDEN,
            format!("forbidden: {who} cannot get pods/log in namespace {namespace}"),
        )),
        Err(e) => Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot ask the cluster whether {who} may read these logs ({e}): retry"),
        )),
    }
}

async fn container_logs(
    State(server): State<Arc<LogServer>>,
    caller: Option<Extension<ConnectInfo<Caller>>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    if let Some(access) = &server.access {
        let peer = caller.as_ref().map(|Extension(ConnectInfo(c))| &c.0);
        if let Err(refused) = check_access(access, peer, &namespace, &pod).await {
            return refused;
        }
    }
    let found = server.agents.iter().find_map(|a| {
        let index = a.pods.read().expect("pod index lock");
        index
            .get(&(namespace.clone(), pod.clone()))
            .cloned()
            .map(|r| (r, a.runtime.clone()))
    });
    let Some((pod_ref, runtime)) = found else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} does not run on this node"),
        );
    };
    let instances = match runtime.list().await {
        Ok(i) => i,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut attempts: Vec<u32> = instances
        .iter()
        .filter(|i| i.pod.uid == pod_ref.uid && i.container == container)
        .map(|i| i.attempt)
        .collect();
    attempts.sort_unstable();
    let attempt = if q.previous {
        attempts.len().checked_sub(2).map(|i| attempts[i])
    } else {
        attempts.last().copied()
    };
    let Some(attempt) = attempt else {
        let what = if q.previous {
            "has no previous run"
        } else {
            "has not started yet"
        };
        return refuse(
            StatusCode::NOT_FOUND,
            format!("container {container:?} of pod {namespace}/{pod} {what}"),
        );
    };
    let options = match q.options(SystemTime::now()) {
        Ok(o) => o,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    match runtime.logs(&pod_ref, &container, attempt, &options).await {
        Ok(stream) => Response::new(Body::from_stream(stream)),
        Err(e @ RuntimeError::NotFound { .. }) => refuse(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
