//! The agent's HTTPS port: container logs (kubelet's path,
//! `/containerLogs/NAMESPACE/POD/CONTAINER?follow=true&previous=true`).
//! `berth logs` finds it through the node's InternalIP and
//! `status.daemonEndpoints.kubeletEndpoint.Port`. It presents the node's
//! certificate and serves only clients with a certificate of the cluster's
//! CA (anyone else fails the handshake); `--insecure`, plain HTTP.
//! `/metrics` and `/healthz` are plain HTTP on a listener of their own.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::pods::PodIndex;
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
struct LogQuery {
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    previous: bool,
}

/// Serves the logs of `agents` on `listener`: over TLS with `tls`
/// (which must require client certificates), else plain.
pub async fn serve(
    listener: TcpListener,
    agents: Vec<AgentLogs>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let app = Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .with_state(Arc::new(agents));
    let served = match tls {
        Some(config) => {
            let local = listener.local_addr();
            let conns = berth_tls::incoming(listener, berth_tls::Acceptor::Tls(config));
            let listener = TlsListener {
                conns: Box::pin(conns),
                local,
            };
            axum::serve(listener, app).await
        }
        None => axum::serve(listener, app).await,
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

/// Handshaken TLS connections, as axum takes them.
struct TlsListener {
    conns: std::pin::Pin<Box<dyn futures::Stream<Item = std::io::Result<berth_tls::Conn>> + Send>>,
    local: std::io::Result<std::net::SocketAddr>,
}

impl axum::serve::Listener for TlsListener {
    type Io = berth_tls::Conn;
    type Addr = Option<std::net::SocketAddr>;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use futures::StreamExt;
        loop {
            match self.conns.next().await {
                Some(Ok(conn)) => {
                    let addr = conn.peer().addr;
                    return (conn, addr);
                }
                Some(Err(_)) => continue,
                // The accept loop ended: nothing more will come.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        match &self.local {
            Ok(addr) => Ok(Some(*addr)),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

fn refuse(code: StatusCode, message: String) -> Response {
    (code, format!("{message}\n")).into_response()
}

async fn container_logs(
    State(agents): State<Arc<Vec<AgentLogs>>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    let found = agents.iter().find_map(|a| {
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
    match runtime.logs(&pod_ref, &container, attempt, q.follow).await {
        Ok(stream) => Response::new(Body::from_stream(stream)),
        Err(e @ RuntimeError::NotFound { .. }) => refuse(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
