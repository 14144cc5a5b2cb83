//! The agent's HTTP port: container logs (kubelet's path,
//! `/containerLogs/NAMESPACE/POD/CONTAINER?follow=true&previous=true`),
//! `/metrics` and `/healthz`. `berth logs` finds it through the node's
//! InternalIP and `status.daemonEndpoints.kubeletEndpoint.Port`. It is
//! unauthenticated: bind it where only the cluster's operators reach it.

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

#[derive(Clone)]
struct AppState {
    agents: Arc<Vec<AgentLogs>>,
    metrics: RenderMetrics,
}

#[derive(Deserialize, Default)]
struct LogQuery {
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    previous: bool,
}

pub async fn serve(listener: TcpListener, agents: Vec<AgentLogs>, metrics: RenderMetrics) {
    let state = AppState {
        agents: Arc::new(agents),
        metrics,
    };
    let app = Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move { (s.metrics)() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "agent HTTP server failed");
    }
}

fn refuse(code: StatusCode, message: String) -> Response {
    (code, format!("{message}\n")).into_response()
}

async fn container_logs(
    State(state): State<AppState>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    let found = state.agents.iter().find_map(|a| {
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
