//! The controller process: startup, serving, and clean shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use berth_raft::node::NodeError;
use berth_raft::Node;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::api;
use crate::bootstrap;
use crate::cluster_service::ClusterService;
use crate::config::ServerConfig;
use crate::http;
use crate::kv_service::KvService;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("could not listen on {addr} (is another process using the port?)")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Bootstrap(#[from] bootstrap::BootstrapError),
    #[error("could not set up gRPC reflection: {0}")]
    Reflection(String),
    #[error("the gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// How long a stopping controller lets open calls finish.
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs a controller until `shutdown` resolves.
pub async fn run(
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    // Installed before the node starts, so that it registers its metrics.
    let prometheus = config.metrics_listen.map(|_| http::prometheus());
    // Both ports are taken before the data dir is opened, so that a port in
    // use fails before RocksDB's threads start: leaving with them running
    // aborted the process ("pthread lock: Invalid argument").
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Listen {
                addr: config.listen,
                source,
            })?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Listen { addr, source })?,
        ),
        None => None,
    };
    let rules = Box::new(crate::bind_rules::PlacementRules::new());
    let node = Node::open(config.node.clone(), rules).await?;
    api::describe_metrics();
    if let (Some(listener), Some(prometheus)) = (metrics_listener, prometheus) {
        tokio::spawn(http::serve(listener, node.raft.clone(), prometheus));
    }
    tracing::info!(id = config.id, listen = %config.listen, data_dir = %config.data_dir.display(), "controller starting");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Served from our own listener, so the builder's tcp_nodelay would be
    // ignored: set it on the incoming stream, or Nagle holds a response's
    // second frame until the peer's delayed ACK (up to 40 ms).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let reflection = |b: tonic_reflection::server::Builder<'static>| {
        b.register_encoded_file_descriptor_set(berth_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;
    let store = node.store.clone();
    let ipam = crate::ipam::Ipam::new(config.network.clone(), store.clone());
    let grpc = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .add_service(node.raft_service().into_server())
        .add_service(ClusterService::new(store.clone()).into_server())
        .add_service(KvService::new(store.clone()).into_server())
        .add_service(api::NamespaceService::server(store.clone(), &ipam))
        .add_service(api::NodeService::server(store.clone(), &ipam))
        .add_service(api::PodService::server(store.clone(), &ipam))
        .add_service(api::DeploymentService::server(store.clone(), &ipam))
        .add_service(api::ServiceService::server(store.clone(), &ipam))
        .add_service(api::EndpointsService::server(store.clone(), &ipam))
        .add_service(api::ConfigMapService::server(store.clone(), &ipam))
        .add_service(api::LeaseService::server(store.clone(), &ipam))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, async move {
            let mut rx = stop_rx;
            let _ = rx.wait_for(|stop| *stop).await;
        });
    let grpc = tokio::spawn(grpc);

    tokio::pin!(shutdown);
    let outcome = tokio::select! {
        r = bootstrap::ensure_member(&node, &config) => match r {
            Ok(()) => {
                let store = store.clone();
                tokio::spawn(async move {
                    api::ensure_builtin_namespaces(store.clone()).await;
                    api::finish_namespace_deletions(store).await;
                });
                (&mut shutdown).await;
                Ok(())
            }
            Err(e) => Err(ServerError::from(e)),
        },
        _ = &mut shutdown => Ok(()),
    };
    tracing::info!("controller stopping");
    let _ = stop_tx.send(true);
    // A graceful stop waits for open calls to end, and watches never do:
    // give unary calls a moment, then close whatever is left.
    let mut grpc = grpc;
    let served = match tokio::time::timeout(SHUTDOWN_DRAIN, &mut grpc).await {
        Ok(served) => served,
        Err(_) => {
            tracing::info!("closing the streams still open (watches)");
            grpc.abort();
            Ok(Ok(()))
        }
    };
    node.shutdown().await;
    outcome?;
    match served {
        Ok(r) => r.map_err(ServerError::from),
        Err(e) => {
            tracing::error!(error = %e, "gRPC server task failed");
            Ok(())
        }
    }
}
