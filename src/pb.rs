//! Generated protobuf and gRPC code for `puente.v1`, and the descriptor set served by reflection.
//! Nothing else lives here: handlers convert these types into domain types at the boundary.
#![allow(missing_docs, clippy::all)]

/// The public contract, package `puente.v1`.
pub mod v1 {
    tonic::include_proto!("puente.v1");
}

/// Encoded `FileDescriptorSet` of every file in `proto/`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/puente_descriptor.bin"));
