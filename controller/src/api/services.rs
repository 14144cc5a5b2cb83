//! The gRPC services of `berth.v1`, one per kind, each a thin shell over
//! the generic verbs in `objects`, with a metric and a span per call.

use std::future::Future;
use std::time::Instant;

use berth_api::limits::MAX_REQUEST_BYTES;
use berth_api::limits::MAX_RESPONSE_BYTES;
use berth_api::pb;
use berth_api::Object;
use berth_raft::Store;
use futures::stream::BoxStream;
use futures::StreamExt;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tracing::Instrument;

use super::guard::Guard;
use super::objects::Api;
use crate::audit::Action;
use crate::audit::AuditLog;
use crate::audit::Who;
use crate::ipam::Ipam;
use crate::security::authorizer::Authorizer;
use crate::security::authorizer::Caller;

/// What every service of the API is made with.
pub struct Serving {
    pub store: Store,
    pub ipam: Ipam,
    pub authz: Authorizer,
    /// How this controller reaches agents.
    pub agents: berth_tls::Transport,
    /// Seals Secrets at rest; None only `--insecure`.
    pub keyring: Option<std::sync::Arc<berth_pki::Keyring>>,
    pub audit: AuditLog,
}

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

/// `observe` for a call that changes objects of kind K, with its line in
/// the audit log.
async fn audited<K: Object, T>(
    audit: &AuditLog,
    who: &Who,
    action: Action<'_>,
    metric_verb: &'static str,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    let result = observe(K::INFO.kind, metric_verb, call).await;
    audit.record(who, action, result.as_ref().map(drop)).await;
    result
}

/// The pods of a batch call, each audited on its own line.
struct Batch {
    verb: &'static str,
    subresource: &'static str,
    /// (namespace, name) of each, in the request's order.
    pods: Vec<(String, String)>,
}

impl Batch {
    /// One line per pod, with its own outcome (its gRPC code and message),
    /// or the call's when it failed whole.
    async fn record(
        &self,
        audit: &AuditLog,
        who: &Who,
        outcomes: Result<Vec<(i32, String)>, &Status>,
    ) {
        for (i, (namespace, name)) in self.pods.iter().enumerate() {
            let own = match &outcomes {
                Err(status) => Some((*status).clone()),
                Ok(items) => items
                    .get(i)
                    .filter(|(code, _)| *code != 0)
                    .map(|(code, message)| {
                        Status::new(tonic::Code::from_i32(*code), message.clone())
                    }),
            };
            let action = action::<pb::Pod>(self.verb, self.subresource, namespace, name);
            audit
                .record(who, action, own.as_ref().map_or(Ok(()), Err))
                .await;
        }
    }
}

/// An object verb's audit action.
fn action<'a, K: Object>(
    verb: &'a str,
    subresource: &'a str,
    namespace: &'a str,
    name: &'a str,
) -> Action<'a> {
    Action {
        verb,
        kind: K::INFO.kind,
        subresource,
        namespace,
        name,
    }
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
        pub struct $svc {
            api: Api<pb::$kind>,
            guard: Guard<pb::$kind>,
            audit: AuditLog,
        }

        impl $svc {
            pub fn server(ctx: &Serving) -> pb::$server_mod::$server<Self> {
                let api = Api::serving(
                    ctx.store.clone(),
                    ctx.ipam.clone(),
                    ctx.agents.clone(),
                    ctx.keyring.clone(),
                );
                pb::$server_mod::$server::new(Self {
                    guard: Guard::new(ctx.authz.clone(), api.clone()),
                    api,
                    audit: ctx.audit.clone(),
                })
                    .max_decoding_message_size(MAX_REQUEST_BYTES)
                    .max_encoding_message_size(MAX_RESPONSE_BYTES)
            }
        }

        #[tonic::async_trait]
        impl pb::$server_mod::$trait for $svc {
            async fn create(&self, r: Request<pb::$kind>) -> Result<Response<pb::$kind>, Status> {
                let who = Who::of(&r)?;
                let obj = r.into_inner();
                let (namespace, name) = (self.api.namespace_of(obj.namespace()), obj.name().to_string());
                let call = async {
                    self.guard.create(&who.caller, &obj).await?;
                    self.api.create(obj).await
                };
                let action = action::<pb::$kind>("create", "", &namespace, &name);
                audited::<pb::$kind, _>(&self.audit, &who, action, "create", call).await
            }

            async fn get(&self, r: Request<pb::GetRequest>) -> Result<Response<pb::$kind>, Status> {
                let call = async {
                    let caller = Caller::of(&r)?;
                    let req = r.into_inner();
                    self.guard.one(&caller, "get", "", &req.namespace, &req.name).await?;
                    self.api.get(req).await
                };
                observe(stringify!($kind), "get", call).await
            }

            async fn list(&self, r: Request<pb::ListRequest>) -> Result<Response<pb::$list>, Status> {
                let call = async {
                    let caller = Caller::of(&r)?;
                    let req = r.into_inner();
                    self.guard.many(&caller, "list", &req.namespace, &req.field_selector).await?;
                    let (items, metadata) = self.api.list(req).await?;
                    Ok(pb::$list { metadata: Some(metadata), items })
                };
                observe(stringify!($kind), "list", call).await
            }

            async fn update(&self, r: Request<pb::$kind>) -> Result<Response<pb::$kind>, Status> {
                let who = Who::of(&r)?;
                let obj = r.into_inner();
                let (namespace, name) = (self.api.namespace_of(obj.namespace()), obj.name().to_string());
                let call = async {
                    self.guard.update(&who.caller, &obj).await?;
                    self.api.update(obj, false).await
                };
                let action = action::<pb::$kind>("update", "", &namespace, &name);
                audited::<pb::$kind, _>(&self.audit, &who, action, "update", call).await
            }

            $(
            async fn update_status(&self, r: Request<pb::$kind>) -> Result<Response<pb::$kind>, Status> {
                let who = Who::of(&r)?;
                let obj = r.into_inner();
                let (namespace, name) = (self.api.namespace_of(obj.namespace()), obj.name().to_string());
                let call = async {
                    self.guard.one(&who.caller, "update", "status", obj.namespace(), obj.name()).await?;
                    self.api.update(obj, true).await
                };
                let action = action::<pb::$kind>("update", "status", &namespace, &name);
                audited::<pb::$kind, _>(&self.audit, &who, action, stringify!($status), call).await
            }
            )?

            $(
            async fn delete(&self, r: Request<pb::DeleteRequest>) -> Result<Response<pb::$kind>, Status> {
                let who = Who::of(&r)?;
                let req = r.into_inner();
                let (namespace, name) = (self.api.namespace_of(&req.namespace), req.name.clone());
                let call = async {
                    self.guard.one(&who.caller, "delete", "", &req.namespace, &req.name).await?;
                    self.api.delete(req).await
                };
                let action = action::<pb::$kind>("delete", "", &namespace, &name);
                audited::<pb::$kind, _>(&self.audit, &who, action, stringify!($delete), call).await
            }
            )?

            type WatchStream = BoxStream<'static, Result<pb::$event, Status>>;

            async fn watch(&self, r: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
                let call = async {
                    let caller = Caller::of(&r)?;
                    let req = r.into_inner();
                    self.guard.many(&caller, "watch", &req.namespace, &req.field_selector).await?;
                    let events = self.api.watch(req)?;
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
            let who = Who::of(&r)?;
            let req = r.into_inner();
            let name = req.name.clone();
            let call = async {
                self.guard
                    .one(&who.caller, "delete", "", &req.namespace, &req.name)
                    .await?;
                self.api.delete_namespace(req).await
            };
            let action = action::<pb::Namespace>("delete", "", &name, &name);
            audited::<pb::Namespace, _>(&self.audit, &who, action, "delete", call).await
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
            let who = Who::of(&r)?;
            let req = r.into_inner();
            let (namespace, name) = (self.api.namespace_of(&req.namespace), req.name.clone());
            let call = async {
                self.guard
                    .bind(&who.caller, [req.namespace.as_str()])
                    .await?;
                self.api.bind(req).await
            };
            let action = action::<pb::Pod>("create", "binding", &namespace, &name);
            audited::<pb::Pod, _>(&self.audit, &who, action, "bind", call).await
        }

        async fn bind_batch(
            &self,
            r: Request<pb::BindBatchRequest>,
        ) -> Result<Response<pb::BindBatchResponse>, Status> {
            let who = Who::of(&r)?;
            let req = r.into_inner();
            let pods = req
                .binds
                .iter()
                .map(|b| (self.api.namespace_of(&b.namespace), b.name.clone()))
                .collect();
            let call = async {
                let namespaces = req.binds.iter().map(|b| b.namespace.as_str());
                self.guard.bind(&who.caller, namespaces).await?;
                self.api.bind_batch(req).await
            };
            let result = observe("Pod", "bind_batch", call).await;
            let outcomes = result.as_ref().map(|r| {
                r.get_ref()
                    .results
                    .iter()
                    .map(|b| (b.code, b.message.clone()))
                    .collect()
            });
            let batch = Batch {
                verb: "create",
                subresource: "binding",
                pods,
            };
            batch.record(&self.audit, &who, outcomes).await;
            result
        }

        async fn create_batch(
            &self,
            r: Request<pb::CreatePodsRequest>,
        ) -> Result<Response<pb::CreatePodsResponse>, Status> {
            let who = Who::of(&r)?;
            let req = r.into_inner();
            let pods = req
                .items
                .iter()
                .map(|p| (self.api.namespace_of(p.namespace()), p.name().to_string()))
                .collect();
            let call = async {
                self.guard.create_all(&who.caller, &req.items).await?;
                self.api.create_batch(req).await
            };
            let result = observe("Pod", "create_batch", call).await;
            let outcomes = result.as_ref().map(|r| {
                r.get_ref()
                    .results
                    .iter()
                    .map(|c| (c.code, c.message.clone()))
                    .collect()
            });
            let batch = Batch {
                verb: "create",
                subresource: "",
                pods,
            };
            batch.record(&self.audit, &who, outcomes).await;
            result
        }

        type LogsStream = BoxStream<'static, Result<pb::LogChunk, Status>>;

        async fn logs(
            &self,
            r: Request<pb::LogsRequest>,
        ) -> Result<Response<Self::LogsStream>, Status> {
            let call = async {
                let caller = Caller::of(&r)?;
                let req = r.into_inner();
                self.guard
                    .one(&caller, "get", "log", &req.namespace, &req.name)
                    .await?;
                self.api.logs(req).await
            };
            observe("Pod", "logs", call).await
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
    SecretService,
    secrets_server,
    Secrets,
    SecretsServer,
    Secret,
    SecretList,
    SecretEvent,
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
object_service!(
    RoleService,
    roles_server,
    Roles,
    RolesServer,
    Role,
    RoleList,
    RoleEvent,
    [],
    [delete],
    {}
);
object_service!(
    ClusterRoleService,
    cluster_roles_server,
    ClusterRoles,
    ClusterRolesServer,
    ClusterRole,
    ClusterRoleList,
    ClusterRoleEvent,
    [],
    [delete],
    {}
);
object_service!(
    RoleBindingService,
    role_bindings_server,
    RoleBindings,
    RoleBindingsServer,
    RoleBinding,
    RoleBindingList,
    RoleBindingEvent,
    [],
    [delete],
    {}
);
object_service!(
    ClusterRoleBindingService,
    cluster_role_bindings_server,
    ClusterRoleBindings,
    ClusterRoleBindingsServer,
    ClusterRoleBinding,
    ClusterRoleBindingList,
    ClusterRoleBindingEvent,
    [],
    [delete],
    {}
);
