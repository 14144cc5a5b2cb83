//! The controller process: startup, serving, and clean shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use berth_raft::node::NodeError;
use berth_raft::Node;
use tokio::net::TcpListener;

use crate::api;
use crate::bootstrap;
use crate::cluster_service::ClusterService;
use crate::config::ServerConfig;
use crate::http;
use crate::kv_service::KvService;
use crate::security;

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
    #[error(transparent)]
    Security(#[from] crate::security::SecurityError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

/// How long a stopping controller lets open calls finish.
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// What starts the clients that run beside a controller (its reconcilers
/// and scheduler), once it knows how to reach the cluster.
pub type StartClients = Box<dyn FnOnce(berth_tls::Transport) + Send>;

/// Runs a controller until `shutdown` resolves; `start_clients` is called
/// once it has its certificate.
pub async fn run(
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    start_clients: StartClients,
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
    tokio::pin!(shutdown);
    // A joining controller waits here for a peer to hand it the CA.
    let security = tokio::select! {
        security = security::prepare(&config) => security?,
        _ = &mut shutdown => return Ok(()),
    };
    let audit = crate::audit::AuditLog::open(&config.audit, config.id)?;
    let rules = Box::new(crate::bind_rules::PlacementRules::new());
    let node = Node::open(config.node.clone(), rules, security.transport.clone()).await?;
    api::describe_metrics();
    crate::audit::describe_metrics();
    if let (Some(listener), Some(prometheus)) = (metrics_listener, prometheus) {
        tokio::spawn(http::serve(listener, node.raft.clone(), prometheus));
    }
    tracing::info!(id = config.id, listen = %config.listen, data_dir = %config.data_dir.display(), "controller starting");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let incoming = berth_tls::incoming(
        listener,
        security.acceptor.clone(),
        config.connections.max_connections,
    );
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
    let security_services = security
        .authority
        .clone()
        .map(|a| security::service::SecurityService::new(a, store.clone()).servers());
    let (join, tokens, users) = match security_services {
        Some((j, t, u)) => (Some(j), Some(t), Some(u)),
        None => (None, None, None),
    };
    let policy = security
        .authority
        .is_some()
        .then(|| security::policy::PolicyCache::start(store.clone()));
    let authz = security::authorizer::Authorizer::new(policy);
    let serving = api::Serving {
        store: store.clone(),
        ipam,
        authz: authz.clone(),
        agents: security.agents.clone(),
        keyring: security.keyring(),
        audit: audit.clone(),
    };
    let grpc = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .max_concurrent_streams(config.connections.max_streams_per_connection)
        .layer(security::authz::AuthzLayer {
            authz: authz.clone(),
            audit,
        })
        .add_optional_service(join)
        .add_optional_service(tokens)
        .add_optional_service(users)
        .add_service(security::access::AccessService::server(authz.clone()))
        .add_service(node.raft_service().into_server())
        .add_service(ClusterService::new(store.clone()).into_server())
        .add_service(KvService::new(store.clone(), config.unsafe_raw_registry_writes).into_server())
        .add_service(api::NamespaceService::server(&serving))
        .add_service(api::NodeService::server(&serving))
        .add_service(api::PodService::server(&serving))
        .add_service(api::DeploymentService::server(&serving))
        .add_service(api::ServiceService::server(&serving))
        .add_service(api::EndpointsService::server(&serving))
        .add_service(api::ConfigMapService::server(&serving))
        .add_service(api::SecretService::server(&serving))
        .add_service(api::LeaseService::server(&serving))
        .add_service(api::RoleService::server(&serving))
        .add_service(api::ClusterRoleService::server(&serving))
        .add_service(api::RoleBindingService::server(&serving))
        .add_service(api::ClusterRoleBindingService::server(&serving))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, async move {
            let mut rx = stop_rx;
            let _ = rx.wait_for(|stop| *stop).await;
        });
    let grpc = tokio::spawn(grpc);
    start_clients(security.transport.clone());

    let outcome = tokio::select! {
        r = bootstrap::ensure_member(&node, &config, &security.transport) => match r {
            Ok(()) => {
                let store = store.clone();
                tokio::spawn(async move {
                    api::ensure_builtin_namespaces(store.clone()).await;
                    api::ensure_builtin_rbac(store.clone()).await;
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
