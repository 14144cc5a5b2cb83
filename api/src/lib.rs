//! Berth's object model on top of the generated `berth.v1` types: what each
//! kind is called and where it is stored, manifests (YAML and JSON, in
//! Kubernetes' shape), quantities, label and field selectors, and admission
//! (defaulting and validation). Shared by the API server and its clients.

#![forbid(unsafe_code)]

pub mod kinds;
pub mod manifest;
pub mod quantity;
pub mod resources;
pub mod selector;
pub mod validation;

pub use berth_proto::v1 as pb;
pub use kinds::AnyObject;
pub use kinds::KindInfo;
pub use kinds::Object;
pub use validation::FieldError;
pub use validation::Invalid;
