//! `/metrics` (Prometheus text format) and `/healthz`.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use berth_raft::types::Raft;
use metrics_exporter_prometheus::Matcher;
use metrics_exporter_prometheus::PrometheusBuilder;
use metrics_exporter_prometheus::PrometheusHandle;
use openraft::async_runtime::WatchReceiver;
use tokio::net::TcpListener;

const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_txns".into()), COUNT_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_entries".into()), COUNT_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_reads".into()), COUNT_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_binds".into()), COUNT_BUCKETS)
                })
                .expect("bucket lists are non-empty")
                .install_recorder()
                .expect("the Prometheus recorder is installed once")
        })
        .clone()
}

#[derive(Clone)]
struct AppState {
    raft: Raft,
    prometheus: PrometheusHandle,
}

pub async fn serve(listener: TcpListener, raft: Raft, prometheus: PrometheusHandle) {
    let state = AppState { raft, prometheus };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics server failed");
    }
}

/// `/metrics` alone, for a process without a Raft node (the scheduler).
pub async fn serve_metrics(listener: TcpListener, prometheus: PrometheusHandle) {
    let app = Router::new().route(
        "/metrics",
        get(move || async move {
            prometheus.run_upkeep();
            prometheus.render()
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics server failed");
    }
}

async fn metrics(State(s): State<AppState>) -> String {
    s.prometheus.run_upkeep();
    s.prometheus.render()
}

async fn healthz(State(s): State<AppState>) -> (StatusCode, String) {
    let m = s.raft.metrics().borrow_watched().clone();
    if let Err(e) = &m.running_state {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("raft stopped: {e}\n"),
        );
    }
    match m.current_leader {
        Some(l) => (
            StatusCode::OK,
            format!("ok: leader {l}, term {}\n", m.current_term),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no leader: this controller cannot reach a quorum\n".to_string(),
        ),
    }
}
