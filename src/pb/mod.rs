//! Generated protobuf types, kept at the edge: the conversions to and from the domain model live
//! here so that `crate::queue` never sees a wire type.

mod job;

/// The public API (`proto/scaleout.proto`).
pub mod v1 {
    tonic::include_proto!("scaleout.v1");
}

/// Replica-to-replica messages (`proto/raft.proto`).
pub mod raft {
    tonic::include_proto!("scaleout.raft.v1");
}

pub use job::{spec_from_pb, state_from_pb};
