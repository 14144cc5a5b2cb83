//! Berth's wire contracts: the `.proto` files under `proto/` and the Rust
//! code generated from them. The files are the contract for clients in any
//! language; this crate holds no logic.

#![forbid(unsafe_code)]
#![allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]

pub mod codec;
pub mod serde_helpers;

/// The public API: Kubernetes-shaped kinds and one service per kind.
pub mod v1 {
    tonic::include_proto!("berth.v1");

    /// The encoded descriptors of `berth.v1`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("berth_v1_descriptor");
}

/// Internal controller-to-controller Raft transport.
pub mod raft {
    tonic::include_proto!("berth.raft.v1");
}

/// Cluster administration (membership, status).
pub mod cluster {
    tonic::include_proto!("berth.cluster.v1");
}

/// The replicated key-value store.
pub mod kv {
    tonic::include_proto!("berth.kv.v1");
}

/// Certificates, join tokens and users.
pub mod security {
    tonic::include_proto!("berth.security.v1");
}
