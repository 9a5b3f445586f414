//! Generated protobuf types, kept at the edge: the conversions to and from the domain model live
//! here so that `crate::queue` never sees a wire type.

mod job;
mod worker;

/// The public API (`proto/scaleout.proto`).
pub mod v1 {
    tonic::include_proto!("scaleout.v1");
}

/// Replica-to-replica messages (`proto/raft.proto`).
pub mod raft {
    tonic::include_proto!("scaleout.raft.v1");
}

/// The encoded descriptors of `proto/`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/scaleout_descriptor.bin"));

pub use job::{spec_from_pb, state_from_pb};
pub use worker::{
    lease_from_pb, level_from_pb, log_line_from_pb, outcome_from_pb, percent_x10,
    worker_id_from_pb, worker_info_from_pb, worker_to_pb,
};
