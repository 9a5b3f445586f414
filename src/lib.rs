//! # scaleout: a highly available SSIS Scale Out master
//!
//! Three or five master replicas elect a leader with Raft (openraft), replicate the job queue
//! through the Raft log into sled on every replica, and serve clients and workers over gRPC.
//!
//! # Layout
//! - [`queue`]: the domain model, pure and deterministic; commands in, results out.
//! - [`raft`]: openraft glue: type config, sled log store and state machine, gRPC transport.
//! - [`master`]: the replica process: gRPC services, leader redirect, group commit.
//! - [`client`]: the client library (CLI, tests): endpoint list, redirect following.
//! - [`config`]: replica configuration, validated with clear errors.
//! - [`pb`]: generated protobuf types and their conversions to the domain.
//! - [`cli`], [`demo`], [`bench`], [`harness`]: what the binary runs.

pub mod queue;
