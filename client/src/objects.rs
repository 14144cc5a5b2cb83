//! Typed calls of the `berth.v1` API for every kind, so that CLI verbs are
//! written once over `ClientKind` and dispatched by a kind's name.

use std::future::Future;

use berth_api::limits::MAX_RESPONSE_BYTES;
use berth_api::pb;
use berth_api::Object;
use futures::stream::BoxStream;
use futures::StreamExt;
use tonic::transport::Channel;
use tonic::Status;

/// A watch event: its type (ADDED, MODIFIED, DELETED, BOOKMARK) and object.
pub type Event<K> = (String, K);

pub trait ClientKind: Object {
    fn create(ch: Channel, o: Self) -> impl Future<Output = Result<Self, Status>> + Send;
    fn get(ch: Channel, r: pb::GetRequest) -> impl Future<Output = Result<Self, Status>> + Send;
    fn list(
        ch: Channel,
        r: pb::ListRequest,
    ) -> impl Future<Output = Result<(Vec<Self>, pb::ListMeta), Status>> + Send;
    fn update(ch: Channel, o: Self) -> impl Future<Output = Result<Self, Status>> + Send;
    fn delete(
        ch: Channel,
        r: pb::DeleteRequest,
    ) -> impl Future<Output = Result<Self, Status>> + Send;
    fn watch(
        ch: Channel,
        r: pb::WatchRequest,
    ) -> impl Future<Output = Result<BoxStream<'static, Result<Event<Self>, Status>>, Status>> + Send;
}

macro_rules! client_kind {
    ($kind:ident, $client_mod:ident, $client:ident) => {
        impl ClientKind for pb::$kind {
            async fn create(ch: Channel, o: Self) -> Result<Self, Status> {
                Ok(pb::$client_mod::$client::new(ch)
                    .create(o)
                    .await?
                    .into_inner())
            }

            async fn get(ch: Channel, r: pb::GetRequest) -> Result<Self, Status> {
                Ok(pb::$client_mod::$client::new(ch).get(r).await?.into_inner())
            }

            async fn list(
                ch: Channel,
                r: pb::ListRequest,
            ) -> Result<(Vec<Self>, pb::ListMeta), Status> {
                let list = pb::$client_mod::$client::new(ch)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .list(r)
                    .await?
                    .into_inner();
                Ok((list.items, list.metadata.unwrap_or_default()))
            }

            async fn update(ch: Channel, o: Self) -> Result<Self, Status> {
                Ok(pb::$client_mod::$client::new(ch)
                    .update(o)
                    .await?
                    .into_inner())
            }

            async fn delete(ch: Channel, r: pb::DeleteRequest) -> Result<Self, Status> {
                Ok(pb::$client_mod::$client::new(ch)
                    .delete(r)
                    .await?
                    .into_inner())
            }

            async fn watch(
                ch: Channel,
                r: pb::WatchRequest,
            ) -> Result<BoxStream<'static, Result<Event<Self>, Status>>, Status> {
                let stream = pb::$client_mod::$client::new(ch)
                    .watch(r)
                    .await?
                    .into_inner();
                Ok(stream
                    .map(|e| e.map(|e| (e.r#type, e.object.unwrap_or_default())))
                    .boxed())
            }
        }
    };
}

client_kind!(Namespace, namespaces_client, NamespacesClient);
client_kind!(Node, nodes_client, NodesClient);
client_kind!(Pod, pods_client, PodsClient);
client_kind!(Deployment, deployments_client, DeploymentsClient);
client_kind!(Service, services_client, ServicesClient);
client_kind!(Endpoints, endpoints_service_client, EndpointsServiceClient);
client_kind!(ConfigMap, config_maps_client, ConfigMapsClient);
client_kind!(Secret, secrets_client, SecretsClient);
client_kind!(Lease, leases_client, LeasesClient);
client_kind!(Role, roles_client, RolesClient);
client_kind!(ClusterRole, cluster_roles_client, ClusterRolesClient);
client_kind!(RoleBinding, role_bindings_client, RoleBindingsClient);
client_kind!(
    ClusterRoleBinding,
    cluster_role_bindings_client,
    ClusterRoleBindingsClient
);

/// Runs `$body` with `$K` bound to the pb type of the kind `$info` (a
/// `KindInfo`) describes; exhaustive, so a new kind must be added here.
#[macro_export]
macro_rules! for_kind {
    ($info:expr, $K:ident => $body:expr) => {
        match $info.id {
            berth_api::kinds::Kind::Namespace => {
                type $K = berth_api::pb::Namespace;
                $body
            }
            berth_api::kinds::Kind::Node => {
                type $K = berth_api::pb::Node;
                $body
            }
            berth_api::kinds::Kind::Pod => {
                type $K = berth_api::pb::Pod;
                $body
            }
            berth_api::kinds::Kind::Deployment => {
                type $K = berth_api::pb::Deployment;
                $body
            }
            berth_api::kinds::Kind::Service => {
                type $K = berth_api::pb::Service;
                $body
            }
            berth_api::kinds::Kind::Endpoints => {
                type $K = berth_api::pb::Endpoints;
                $body
            }
            berth_api::kinds::Kind::ConfigMap => {
                type $K = berth_api::pb::ConfigMap;
                $body
            }
            berth_api::kinds::Kind::Secret => {
                type $K = berth_api::pb::Secret;
                $body
            }
            berth_api::kinds::Kind::Lease => {
                type $K = berth_api::pb::Lease;
                $body
            }
            berth_api::kinds::Kind::Role => {
                type $K = berth_api::pb::Role;
                $body
            }
            berth_api::kinds::Kind::ClusterRole => {
                type $K = berth_api::pb::ClusterRole;
                $body
            }
            berth_api::kinds::Kind::RoleBinding => {
                type $K = berth_api::pb::RoleBinding;
                $body
            }
            berth_api::kinds::Kind::ClusterRoleBinding => {
                type $K = berth_api::pb::ClusterRoleBinding;
                $body
            }
        }
    };
}

/// Pod calls beyond the common verbs.
pub mod pods {
    use berth_api::pb;
    use tonic::transport::Channel;
    use tonic::Status;

    pub async fn update_status(ch: Channel, pod: pb::Pod) -> Result<pb::Pod, Status> {
        Ok(pb::pods_client::PodsClient::new(ch)
            .update_status(pod)
            .await?
            .into_inner())
    }

    pub async fn bind_batch(
        ch: Channel,
        req: pb::BindBatchRequest,
    ) -> Result<pb::BindBatchResponse, Status> {
        Ok(pb::pods_client::PodsClient::new(ch)
            .bind_batch(req)
            .await?
            .into_inner())
    }
}

/// Node calls beyond the common verbs.
pub mod nodes {
    use berth_api::pb;
    use tonic::transport::Channel;
    use tonic::Status;

    pub async fn update_status(ch: Channel, node: pb::Node) -> Result<pb::Node, Status> {
        Ok(pb::nodes_client::NodesClient::new(ch)
            .update_status(node)
            .await?
            .into_inner())
    }
}

/// Deployment calls beyond the common verbs.
pub mod deployments {
    use berth_api::pb;
    use tonic::transport::Channel;
    use tonic::Status;

    pub async fn update_status(ch: Channel, d: pb::Deployment) -> Result<pb::Deployment, Status> {
        Ok(pb::deployments_client::DeploymentsClient::new(ch)
            .update_status(d)
            .await?
            .into_inner())
    }
}
