//! Generated protobuf and gRPC code for `puente.v1`, the descriptor set served by reflection, and
//! the proto3 JSON mapping of those messages ([`json`]); also the echo service of `puente bench`
//! ([`bench::v1`]), which is not part of the contract. Nothing else lives here: handlers convert
//! these types into domain types at the boundary.

pub mod json;

/// The public contract, package `puente.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("puente.v1");
    // The clients, generated apart with tonic's own codec (see `build.rs`).
    include!(concat!(env!("OUT_DIR"), "/client/puente.v1.rs"));
}

/// The echo service that `puente bench` measures its bare-tonic bound with, package
/// `puente.bench.v1`. Not in [`FILE_DESCRIPTOR_SET`]: the exchange neither serves nor
/// advertises it.
pub mod bench {
    /// Version 1.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("puente.bench.v1");
    }
}

/// Encoded `FileDescriptorSet` of every file in `proto/puente/v1/` and its imports, for gRPC
/// server reflection and the JSON mapping.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/puente_descriptor.bin"));
