//! The worker's connection to the cluster: WorkerService calls that reach the leader wherever it
//! is, through the same call loop as the client library ([`crate::rpc::Replicas`]), with a
//! slower backoff: a worker outlives outages, nobody waits at a terminal for it.
//!
//! Every call is bounded by the caller's deadline, after which it fails with
//! [`CallError::Unavailable`] and the agent decides (spool the data, retry on the next tick). A
//! leader change is invisible to running tasks: the next call simply lands on the new leader.

use std::future::Future;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::Status;

use crate::pb::v1::worker_service_client::WorkerServiceClient;
pub use crate::rpc::CallError;
use crate::rpc::{Backoff, Replicas};
use crate::transport::Security;

const BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(1000));
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Channels to the replicas and the last leader seen.
pub struct Connection {
    replicas: Replicas,
}

impl Connection {
    /// A connection to the replicas at `endpoints` (host:port, validated by the config).
    pub fn new(endpoints: &[String], security: Security) -> Result<Connection, String> {
        let replicas = Replicas::new(endpoints, security, BACKOFF).map_err(|e| e.to_string())?;
        Ok(Connection { replicas })
    }

    pub fn endpoints(&self) -> &[String] {
        self.replicas.endpoints()
    }

    /// The leader's address as last seen, if any.
    pub fn leader(&self) -> Option<String> {
        self.replicas.leader()
    }

    /// Runs `op` on the leader, following redirects, until it succeeds, fails for good, or
    /// `deadline` passes. `op` gets a client and the timeout to set on its request: at most
    /// `per_call`, and no later than the deadline.
    pub async fn call<T, F, Fut>(
        &self,
        per_call: Duration,
        deadline: Duration,
        mut op: F,
    ) -> Result<T, CallError>
    where
        F: FnMut(WorkerServiceClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.replicas
            .on_leader(per_call, deadline, |channel, timeout| {
                let client = WorkerServiceClient::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES);
                op(client, timeout)
            })
            .await
    }
}
