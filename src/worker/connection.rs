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
use tonic::{Code, Status};

use crate::pb::v1::worker_service_client::WorkerServiceClient;
use crate::rpc::{self, Backoff, Reason, Replicas};
use crate::transport::Security;

const BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(1000));
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Why a call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No replica served the call before the deadline: the cluster is down or has no leader.
    #[error("no replica served the call within {deadline:?} (last error: {last_error})")]
    Unavailable {
        deadline: Duration,
        last_error: String,
    },
    /// The lease the call carried is no longer current (FAILED_PRECONDITION, LEASE_LOST).
    #[error("lease lost: {}", .0.message())]
    LeaseLost(Status),
    /// A replica answered with an error that retrying will not fix.
    #[error("{}: {}", .0.code(), .0.message())]
    Rejected(Status),
}

impl CallError {
    /// A rejection with this gRPC code.
    pub fn is_rejected_with(&self, code: Code) -> bool {
        matches!(self, CallError::Rejected(status) if status.code() == code)
    }

    /// The reason the master gave for a rejection.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            CallError::Rejected(status) | CallError::LeaseLost(status) => Reason::of(status),
            CallError::Unavailable { .. } => None,
        }
    }
}

impl From<rpc::CallError> for CallError {
    fn from(error: rpc::CallError) -> Self {
        match error {
            rpc::CallError::Unavailable {
                deadline,
                last_error,
            } => CallError::Unavailable {
                deadline,
                last_error,
            },
            rpc::CallError::Rejected(status) if Reason::of(&status) == Some(Reason::LeaseLost) => {
                CallError::LeaseLost(status)
            }
            rpc::CallError::Rejected(status) => CallError::Rejected(status),
        }
    }
}

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
            .map_err(CallError::from)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::rpc::contract::with_reason;

    #[test]
    fn a_lost_lease_is_told_apart_by_its_reason() {
        let lost = with_reason(
            Code::FailedPrecondition,
            Reason::LeaseLost,
            "stale",
            HashMap::new(),
        );
        assert!(matches!(
            CallError::from(rpc::CallError::Rejected(lost)),
            CallError::LeaseLost(_)
        ));
        // A precondition failure for another reason is not a lost lease.
        let other = CallError::from(rpc::CallError::Rejected(Status::failed_precondition(
            "disabled",
        )));
        assert!(matches!(other, CallError::Rejected(_)), "{other:?}");
        let unknown = with_reason(
            Code::NotFound,
            Reason::WorkerNotFound,
            "who?",
            HashMap::new(),
        );
        let unknown = CallError::from(rpc::CallError::Rejected(unknown));
        assert_eq!(unknown.reason(), Some(Reason::WorkerNotFound));
        assert!(unknown.is_rejected_with(Code::NotFound));
    }
}
