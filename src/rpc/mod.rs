//! The contract between the replicas and everyone who calls them, and the one way to keep it.
//!
//! - [`contract`]: how a replica's answers look on the wire (codes, ErrorInfo [`Reason`]s, the
//!   leader redirect, the request for write forwarding) and which of them a caller may retry on
//!   another replica.
//! - [`Replicas`]: the call loop of the client library and the worker agent: leader first,
//!   redirects followed, failures retried elsewhere after a [`Backoff`], all within a deadline.
//! - [`backoff`]: growing, jittered pauses for every retry loop.

pub mod backoff;
pub mod contract;
mod leader_call;

pub use backoff::{jitter, Backoff};
pub use contract::{leader_request, Reason};
pub use leader_call::{CallError, EndpointError, Keepalive, Replicas};
