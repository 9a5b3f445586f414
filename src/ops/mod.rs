//! What an operator watches: Prometheus metrics, health and readiness, gRPC call timings.
//!
//! A replica or worker owns one [`Registry`] (no process-global recorder, so several replicas in
//! one test process keep their numbers apart), hands its counters and histograms to the code
//! that counts, and serves it with [`serve`] on its `metrics_listen` address:
//! - `/metrics`: the Prometheus text format, sampled at each scrape;
//! - `/healthz`: 200 while the process runs;
//! - `/readyz`: 200 when ready, else 503 with the reason on one line.

mod grpc_timing;
mod http;
pub mod probe;
mod registry;

pub use grpc_timing::{GrpcTiming, GrpcTimingLayer};
pub use http::{serve, Observed, OpsServer};
pub use registry::Registry;
