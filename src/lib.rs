//! # scaleout: a highly available SSIS Scale Out master
//!
//! Three or five master replicas elect a leader with Raft (openraft), replicate the job queue
//! through the Raft log into sled on every replica, and serve clients and workers over gRPC.
//! Architecture and invariants: DESIGN.md; what runs where: `docs/architecture.md`.
//!
//! # Layout
//! - [`queue`]: the domain model, pure and deterministic; commands in, results out.
//! - [`raft`]: openraft glue: type config, sled log store and state machine, gRPC transport.
//! - [`master`]: the replica process: gRPC services, leader redirect, group commit.
//! - [`client`]: the client library (CLI, demo, tests): one method per call.
//! - [`rpc`]: the wire contract (error reasons, leader redirect, what may be retried) and the
//!   one leader-following call loop of the client and the worker.
//! - [`config`]: replica configuration, validated with clear errors.
//! - [`pb`]: generated protobuf types and their conversions to the domain.
//! - [`ssisdb`]: the outbox shipper to SSISDB (leader only, exactly once by event id), the
//!   `scaleout` schema, and `ssisdb check` / `install-schema`.
//! - [`ops`]: what operators watch: Prometheus metrics, `/healthz` and `/readyz`, gRPC timings.
//! - [`telemetry`]: logging, every line naming the replica and its term.
//! - [`memory`]: hands the memory malloc keeps free back to the system after bursts.
//! - [`disk`]: every write that must survive a power cut (fdatasync, directory fsync, atomic
//!   replace); [`wall_time`]: the system clock in ms and as UTC text.
//! - [`tls`], [`transport`]: certificates, roles and how every connection is made (mutual TLS).
//! - [`cli`], [`demo`], [`bench`](mod@bench): what the binary runs; [`harness`] starts local clusters of
//!   real replica processes for them and for the tests.

#[cfg(unix)]
pub mod bench;
pub mod certs;
#[cfg(unix)]
pub mod chaos;
pub mod cli;
pub mod client;
#[cfg(unix)]
pub mod config;
pub mod console;
#[cfg(unix)]
pub mod demo;
#[cfg(unix)]
pub mod disk;
pub mod hangup;
#[cfg(unix)]
pub mod harness;
#[cfg(unix)]
pub mod master;
#[cfg(unix)]
pub mod memory;
pub mod ops;
pub mod pb;
pub mod queue;
#[cfg(unix)]
pub mod raft;
pub mod rpc;
#[cfg(unix)]
pub mod ssisdb;
pub mod telemetry;
pub mod tls;
pub mod transport;
pub mod wall_time;
#[cfg(unix)]
pub mod worker;
