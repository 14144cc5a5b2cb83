//! Berth's object model on top of the generated `berth.v1` types: what each
//! kind is called and where it is stored, manifests (YAML and JSON, in
//! Kubernetes' shape), quantities, label and field selectors, admission
//! (defaulting and validation), and the reasons errors carry. Shared by the
//! API server and its clients.

#![forbid(unsafe_code)]

pub mod env;
pub mod kinds;
pub mod limits;
pub mod manifest;
pub mod names;
pub mod quantity;
pub mod reason;
pub mod resources;
pub mod security_context;
pub mod selector;
pub mod time;
pub mod validation;
pub mod volumes;

pub use berth_proto::v1 as pb;
pub use kinds::AnyObject;
pub use kinds::KindInfo;
pub use kinds::Object;
pub use reason::Reason;
pub use validation::FieldError;
pub use validation::Invalid;
