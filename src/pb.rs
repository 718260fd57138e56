//! Generated protobuf and gRPC code for `puente.v1`, the descriptor set served by reflection, and
//! the proto3 JSON mapping of those messages ([`json`]). Nothing else lives here: handlers
//! convert these types into domain types at the boundary.

pub mod json;

/// The public contract, package `puente.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("puente.v1");
}

/// Encoded `FileDescriptorSet` of every file in `proto/` and its imports, for gRPC server
/// reflection and the JSON mapping.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/puente_descriptor.bin"));
