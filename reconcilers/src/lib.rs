//! The reconcilers every controller runs: node lifecycle, deployments,
//! endpoints and garbage collection, each a reconcile function on
//! berth-client's controller runtime. Each is active on one controller at
//! a time, the holder of its own Lease in `berth-system`; the others stand
//! by, and start their caches only once one of their reconcilers becomes
//! active. This crate depends on `api` and `client` only: the reconcilers
//! reach the cluster like any client, so their writes are validated,
//! fenced by resourceVersion preconditions and seen by watchers like
//! everyone else's.

#![forbid(unsafe_code)]

pub mod deployments;
pub mod endpoints;
pub mod gc;
pub mod nodes;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use berth_api::names::SYSTEM_NAMESPACE;
use berth_api::pb;
use berth_api::Reason;
use berth_client::connect::ClientError;
use berth_client::connect::Connector;
use berth_client::election;
use berth_client::election::ElectionConfig;
use berth_client::election::LeaderState;
use berth_client::reflector::Reflector;
use berth_client::watcher::Scope;
use tokio::sync::watch;
use tokio::sync::OnceCell;

#[derive(Clone, Debug)]
pub struct ReconcileConfig {
    /// This controller's name in the leases.
    pub identity: String,
    /// A node whose lease has not been renewed for this long is NotReady.
    pub node_grace_period: Duration,
    /// A node NotReady for this long has its pods failed (NodeLost).
    pub pod_eviction_timeout: Duration,
}

impl ReconcileConfig {
    pub fn new(identity: String) -> Self {
        Self {
            identity,
            node_grace_period: Duration::from_secs(10),
            pod_eviction_timeout: Duration::from_secs(30),
        }
    }
}

/// The caches the reconcilers share.
#[derive(Clone)]
pub struct Caches {
    pub nodes: Reflector<pb::Node>,
    pub pods: Reflector<pb::Pod>,
    pub deployments: Reflector<pb::Deployment>,
    pub leases: Reflector<pb::Lease>,
    pub services: Reflector<pb::Service>,
    pub endpoints: Reflector<pb::Endpoints>,
}

/// Registers the reconcilers' metrics with their help texts.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "berth_controller_reconciler_leader",
        "1 while this controller runs the reconciler (by reconciler)"
    );
    metrics::describe_counter!(
        "berth_controller_reconcile_writes_total",
        "Writes made by reconcilers (by reconciler, verb and result)"
    );
    metrics::describe_counter!(
        "berth_controller_node_transitions_total",
        "Nodes marked NotReady, and pods failed with NodeLost"
    );
}

impl Caches {
    fn start(conn: &Connector) -> Self {
        let all = Scope::default();
        Caches {
            nodes: Reflector::start(conn.clone(), all.clone()),
            pods: Reflector::start(conn.clone(), all.clone()),
            deployments: Reflector::start(conn.clone(), all.clone()),
            leases: Reflector::start(
                conn.clone(),
                Scope {
                    namespace: SYSTEM_NAMESPACE.into(),
                    ..Default::default()
                },
            ),
            services: Reflector::start(conn.clone(), all.clone()),
            endpoints: Reflector::start(conn.clone(), all),
        }
    }
}

/// What most reconcilers reach the cluster with.
pub struct Context {
    pub conn: Connector,
    pub caches: Caches,
}

/// The caches, started when a reconciler of this controller first becomes
/// active: a controller that stands by for all of them watches nothing
/// (every pod write would otherwise reach every controller's caches).
#[derive(Clone)]
pub struct LazyCaches {
    conn: Connector,
    cell: Arc<OnceCell<Caches>>,
}

impl LazyCaches {
    /// Waits until this controller holds `leader`'s lease, then returns the
    /// caches (starting them on first use).
    pub async fn when_active(&self, leader: &mut LeaderState) -> Option<Caches> {
        leader.wait_for(|l| l.is_some()).await.ok()?;
        Some(
            self.cell
                .get_or_init(|| async { Caches::start(&self.conn) })
                .await
                .clone(),
        )
    }
}

/// Starts every reconciler in the background, reaching the cluster
/// through `conn`.
pub fn spawn(conn: Connector, config: ReconcileConfig) {
    describe_metrics();
    let caches = LazyCaches {
        conn: conn.clone(),
        cell: Arc::new(OnceCell::new()),
    };
    elected(&conn, &config, "berth-node-lifecycle", {
        let (conn, caches, config) = (conn.clone(), caches.clone(), config.clone());
        move |leader| nodes::run(conn, caches, config, leader)
    });
    elected(&conn, &config, "berth-deployment-controller", {
        let (conn, caches) = (conn.clone(), caches.clone());
        move |leader| deployments::run(conn, caches, leader)
    });
    elected(&conn, &config, "berth-endpoints-controller", {
        let (conn, caches) = (conn.clone(), caches.clone());
        move |leader| endpoints::run(conn, caches, leader)
    });
    elected(&conn, &config, "berth-garbage-collector", {
        let (conn, caches) = (conn.clone(), caches.clone());
        move |leader| gc::run(conn, caches, leader)
    });
}

/// Runs `reconciler` with the state of its own election.
fn elected<F, Fut>(conn: &Connector, config: &ReconcileConfig, lease: &'static str, reconciler: F)
where
    F: FnOnce(LeaderState) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let election = ElectionConfig::new(SYSTEM_NAMESPACE, lease, config.identity.clone());
    let (tx, rx) = watch::channel(None);
    tokio::spawn(election::run(conn.clone(), election, tx));
    let mut gauge = rx.clone();
    tokio::spawn(async move {
        loop {
            let held = gauge.borrow_and_update().is_some();
            metrics::gauge!("berth_controller_reconciler_leader", "reconciler" => lease)
                .set(if held { 1.0 } else { 0.0 });
            if gauge.changed().await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(reconciler(rx));
}

/// Why a reconcile did not finish; the runtime retries it with back-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Unreachable(#[from] ClientError),
    #[error("{verb} {what}: {}", status.message())]
    Write {
        verb: &'static str,
        what: String,
        status: tonic::Status,
    },
}

impl Error {
    /// What the failure says about the object written.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Error::Write { status, .. } => Reason::of(status),
            Error::Unreachable(_) => None,
        }
    }
}

/// Counts a reconciler's write and names a failed one.
pub fn written<T>(
    reconciler: &'static str,
    verb: &'static str,
    what: impl FnOnce() -> String,
    result: Result<T, tonic::Status>,
) -> Result<T, Error> {
    metrics::counter!(
        "berth_controller_reconcile_writes_total",
        "reconciler" => reconciler,
        "verb" => verb,
        "result" => if result.is_ok() { "ok" } else { "error" }
    )
    .increment(1);
    result.map_err(|status| Error::Write {
        verb,
        what: what(),
        status,
    })
}
