//! The public `berth.v1` API server: admission, the verbs of every kind
//! over the replicated store, and the built-in namespaces.

mod guard;
mod logs;
mod objects;
mod services;
mod special;

pub use objects::Api;
pub use services::describe_metrics;
pub use services::ClusterRoleBindingService;
pub use services::ClusterRoleService;
pub use services::ConfigMapService;
pub use services::DeploymentService;
pub use services::EndpointsService;
pub use services::LeaseService;
pub use services::NamespaceService;
pub use services::NodeService;
pub use services::PodService;
pub use services::RoleBindingService;
pub use services::RoleService;
pub use services::SecretService;
pub use services::ServiceService;
pub use services::Serving;
pub use special::ensure_builtin_namespaces;
pub use special::ensure_builtin_rbac;
pub use special::finish_namespace_deletions;
