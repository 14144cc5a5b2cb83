//! berth-rbac owns Kubernetes' role-based access control as a pure
//! function of the stored RBAC objects: which rules a user holds where
//! (`Policy::authorize`), whether a new role or binding would grant more
//! than its author holds (`Policy::missing`, Kubernetes' escalation
//! check), the built-in ClusterRoles (`builtin`), and Kubernetes' Node
//! authorizer, which decides for nodes instead of RBAC (`node`). No I/O: the
//! controller keeps a `Policy` current from its store and asks it per call.

#![forbid(unsafe_code)]

pub mod builtin;
pub mod node;
mod policy;
mod rules;

pub use policy::Decision;
pub use policy::Policy;
pub use rules::Attributes;
pub use rules::User;

/// The group every authenticated identity is in, as in Kubernetes.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";
/// The group whose members may do anything (bound to `cluster-admin`, and
/// honoured even before any binding is read).
pub const MASTERS_GROUP: &str = "system:masters";
