//! The gRPC services of `berth.v1`, one per kind, each a thin shell over
//! the generic verbs in `objects`, with a metric and a span per call.

use std::future::Future;
use std::time::Instant;

use berth_api::limits::MAX_REQUEST_BYTES;
use berth_api::limits::MAX_RESPONSE_BYTES;
use berth_api::pb;
use berth_raft::Store;
use futures::stream::BoxStream;
use futures::StreamExt;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tracing::Instrument;

use super::objects::Api;
use crate::ipam::Ipam;

/// Runs one call, counting it by kind, verb and outcome.
async fn observe<T>(
    kind: &'static str,
    verb: &'static str,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    let started = Instant::now();
    let span = tracing::debug_span!("api", kind, verb);
    let result = call.instrument(span).await;
    let code = match &result {
        Ok(_) => "OK".to_string(),
        Err(s) => format!("{:?}", s.code()),
    };
    metrics::counter!("berth_api_requests_total", "kind" => kind, "verb" => verb, "code" => code)
        .increment(1);
    metrics::histogram!("berth_api_request_duration_seconds", "kind" => kind, "verb" => verb)
        .record(started.elapsed().as_secs_f64());
    result.map(Response::new)
}

/// `status` adds UpdateStatus and `delete` the plain Delete; `$extra` holds
/// the kind's own methods. (Written out here rather than by helper macros:
/// `async_trait` only rewrites methods it can see.)
macro_rules! object_service {
    (
        $svc:ident, $server_mod:ident, $trait:ident, $server:ident,
        $kind:ident, $list:ident, $event:ident,
        [$($status:ident)?], [$($delete:ident)?], { $($extra:tt)* }
    ) => {
        pub struct $svc(pub Api<pb::$kind>);

        impl $svc {
            pub fn server(store: Store, ipam: &Ipam) -> pb::$server_mod::$server<Self> {
                pb::$server_mod::$server::new(Self(Api::with_ipam(store, ipam.clone())))
                    .max_decoding_message_size(MAX_REQUEST_BYTES)
                    .max_encoding_message_size(MAX_RESPONSE_BYTES)
            }
        }

        #[tonic::async_trait]
        impl pb::$server_mod::$trait for $svc {
            async fn create(&self, r: Request<pb::$kind>) -> Result<Response<pb::$kind>, Status> {
                observe(stringify!($kind), "create", self.0.create(r.into_inner())).await
            }

            async fn get(&self, r: Request<pb::GetRequest>) -> Result<Response<pb::$kind>, Status> {
                observe(stringify!($kind), "get", self.0.get(r.into_inner())).await
            }

            async fn list(&self, r: Request<pb::ListRequest>) -> Result<Response<pb::$list>, Status> {
                let call = async {
                    let (items, metadata) = self.0.list(r.into_inner()).await?;
                    Ok(pb::$list { metadata: Some(metadata), items })
                };
                observe(stringify!($kind), "list", call).await
            }

            async fn update(&self, r: Request<pb::$kind>) -> Result<Response<pb::$kind>, Status> {
                observe(stringify!($kind), "update", self.0.update(r.into_inner(), false)).await
            }

            $(
            async fn update_status(&self, r: Request<pb::$kind>) -> Result<Response<pb::$kind>, Status> {
                observe(stringify!($kind), stringify!($status), self.0.update(r.into_inner(), true)).await
            }
            )?

            $(
            async fn delete(&self, r: Request<pb::DeleteRequest>) -> Result<Response<pb::$kind>, Status> {
                observe(stringify!($kind), stringify!($delete), self.0.delete(r.into_inner())).await
            }
            )?

            type WatchStream = BoxStream<'static, Result<pb::$event, Status>>;

            async fn watch(&self, r: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
                let call = async {
                    let events = self.0.watch(r.into_inner())?;
                    Ok(events
                        .map(|e| e.map(|(r#type, object)| pb::$event { r#type, object: Some(object) }))
                        .boxed())
                };
                observe(stringify!($kind), "watch", call).await
            }

            $($extra)*
        }
    };
}

object_service!(
    NamespaceService,
    namespaces_server,
    Namespaces,
    NamespacesServer,
    Namespace,
    NamespaceList,
    NamespaceEvent,
    [update_status],
    [],
    {
        async fn delete(
            &self,
            r: Request<pb::DeleteRequest>,
        ) -> Result<Response<pb::Namespace>, Status> {
            observe(
                "Namespace",
                "delete",
                self.0.delete_namespace(r.into_inner()),
            )
            .await
        }
    }
);
object_service!(
    NodeService,
    nodes_server,
    Nodes,
    NodesServer,
    Node,
    NodeList,
    NodeEvent,
    [update_status],
    [delete],
    {}
);
object_service!(
    PodService,
    pods_server,
    Pods,
    PodsServer,
    Pod,
    PodList,
    PodEvent,
    [update_status],
    [delete],
    {
        async fn bind(&self, r: Request<pb::BindRequest>) -> Result<Response<pb::Pod>, Status> {
            observe("Pod", "bind", self.0.bind(r.into_inner())).await
        }

        async fn bind_batch(
            &self,
            r: Request<pb::BindBatchRequest>,
        ) -> Result<Response<pb::BindBatchResponse>, Status> {
            observe("Pod", "bind_batch", self.0.bind_batch(r.into_inner())).await
        }

        async fn create_batch(
            &self,
            r: Request<pb::CreatePodsRequest>,
        ) -> Result<Response<pb::CreatePodsResponse>, Status> {
            observe("Pod", "create_batch", self.0.create_batch(r.into_inner())).await
        }
    }
);
object_service!(
    DeploymentService,
    deployments_server,
    Deployments,
    DeploymentsServer,
    Deployment,
    DeploymentList,
    DeploymentEvent,
    [update_status],
    [delete],
    {}
);
object_service!(
    ServiceService,
    services_server,
    Services,
    ServicesServer,
    Service,
    ServiceList,
    ServiceEvent,
    [update_status],
    [delete],
    {}
);
object_service!(
    EndpointsService,
    endpoints_service_server,
    EndpointsService,
    EndpointsServiceServer,
    Endpoints,
    EndpointsList,
    EndpointsEvent,
    [],
    [delete],
    {}
);
object_service!(
    ConfigMapService,
    config_maps_server,
    ConfigMaps,
    ConfigMapsServer,
    ConfigMap,
    ConfigMapList,
    ConfigMapEvent,
    [],
    [delete],
    {}
);
object_service!(
    LeaseService,
    leases_server,
    Leases,
    LeasesServer,
    Lease,
    LeaseList,
    LeaseEvent,
    [],
    [delete],
    {}
);

/// Names the API's metrics with their help text.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "berth_controller_ipam_exhausted_total",
        "Nodes created without a pod CIDR and services refused a ClusterIP because the range was full (by pool)"
    );
    metrics::describe_counter!(
        "berth_controller_undecodable_objects_total",
        "Stored objects left out of lists and watches because they do not decode, by kind"
    );
    metrics::describe_counter!(
        "berth_api_requests_total",
        "Public API calls by kind, verb and gRPC status code"
    );
    metrics::describe_histogram!(
        "berth_api_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time to answer a public API call (to open a watch), by kind and verb"
    );
}
