//! The worker's connection to the cluster: WorkerService calls that reach the leader wherever it
//! is, by the same rules as [`crate::client`].
//!
//! One lazily connected channel per address (TCP_NODELAY on), reused for every call. A call goes
//! to the last leader seen, else to the endpoint after the last one that failed (not always the
//! first: a leader cut off from its peers may go on holding every call sent to it until its
//! timeout, and renewals, whose whole budget is one such timeout, would then never reach the
//! new leader); a follower's NOT_LEADER answer names the
//! leader's API address and the call goes there at once; during an election (no address), or
//! when a replica does not answer within the per-call timeout, the call moves to the next
//! endpoint after a jittered, growing backoff. All of it is bounded by the caller's deadline,
//! after which the call fails with [`CallError::Unavailable`] and the agent decides (spool the
//! data, retry on the next tick). A leader change is invisible to running tasks: the next call
//! simply lands on the new leader.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::master::status::{describe, is_retryable_elsewhere, redirect_address};
/// ErrorInfo reason of a call whose lease token is no longer current.
pub use crate::master::REASON_LEASE_LOST;
use crate::pb::v1::worker_service_client::WorkerServiceClient;
use crate::transport::Security;

const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
const MAX_REDIRECT_HOPS: usize = 16;
const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(1000);
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
}

/// Where a failed call should go next.
enum Next {
    Leader(String),
    OtherEndpoint(String),
    GiveUp(CallError),
}

fn classify(status: Status) -> Next {
    let reason = status.get_details_error_info().map(|info| info.reason);
    if status.code() == Code::FailedPrecondition && reason.as_deref() == Some(REASON_LEASE_LOST) {
        return Next::GiveUp(CallError::LeaseLost(status));
    }
    if let Some(addr) = redirect_address(&status) {
        return Next::Leader(addr);
    }
    // Until the deadline a call is retried rather than its result dropped.
    if is_retryable_elsewhere(&status) {
        return Next::OtherEndpoint(describe(&status));
    }
    Next::GiveUp(CallError::Rejected(status))
}

/// Channels to the replicas and the last leader seen.
pub struct Connection {
    endpoints: Vec<String>,
    security: Security,
    channels: Mutex<BTreeMap<String, Channel>>,
    leader: Mutex<Option<String>>,
    /// Where a call starts when no leader is known: moved past every endpoint that fails.
    start: AtomicUsize,
}

impl Connection {
    /// A connection to the replicas at `endpoints` (host:port, validated by the config).
    pub fn new(endpoints: &[String], security: Security) -> Result<Connection, String> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|e| e.trim().trim_start_matches("http://").to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err("no endpoints given".into());
        }
        for endpoint in &endpoints {
            Endpoint::from_shared(format!("http://{endpoint}"))
                .map_err(|e| format!("endpoint {endpoint:?} is not a valid address: {e}"))?;
        }
        Ok(Connection {
            endpoints,
            security,
            channels: Mutex::default(),
            leader: Mutex::default(),
            start: AtomicUsize::new(0),
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The leader's address as last seen, if any.
    pub fn leader(&self) -> Option<String> {
        self.leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The endpoint a call starts at: the leader if known, else the one after the last failure;
    /// and the index of the endpoint to try after it.
    fn first_target(&self) -> (String, usize) {
        let first = self.start.load(Ordering::Relaxed) % self.endpoints.len();
        match self.leader() {
            Some(leader) if leader != self.endpoints[first] => (leader, first),
            _ => (self.endpoints[first].clone(), first + 1),
        }
    }

    fn remember_leader(&self, addr: Option<String>) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = addr;
    }

    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = self
            .security
            .channel(addr, |endpoint| endpoint.connect_timeout(CONNECT_TIMEOUT))
            .map_err(|e| Status::invalid_argument(format!("bad address {addr:?}: {e}")))?;
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
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
        let until = Instant::now() + deadline;
        let (mut target, mut next_endpoint) = self.first_target();
        let mut hops = 0;
        let mut backoff = BACKOFF_START;
        let mut last_error = String::from("none");
        loop {
            let remaining = until.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(CallError::Unavailable {
                    deadline,
                    last_error,
                });
            }
            let timeout = remaining.min(per_call);
            let outcome = match self.channel(&target) {
                Ok(channel) => {
                    let client = WorkerServiceClient::new(channel)
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES);
                    // The request's own timeout travels to the server; this one also bounds a
                    // connection attempt that hangs.
                    match tokio::time::timeout(timeout, op(client, timeout)).await {
                        Ok(outcome) => outcome,
                        Err(_) => Err(Status::deadline_exceeded(format!(
                            "no answer within {timeout:?}"
                        ))),
                    }
                }
                Err(status) => Err(status),
            };
            let status = match outcome {
                Ok(reply) => {
                    self.remember_leader(Some(target));
                    return Ok(reply.into_inner());
                }
                Err(status) => status,
            };
            match classify(status) {
                Next::GiveUp(error) => {
                    // A definite answer came from the leader: keep talking to it.
                    self.remember_leader(Some(target));
                    return Err(error);
                }
                Next::Leader(addr) if addr != target && hops < MAX_REDIRECT_HOPS => {
                    tracing::debug!(from = %target, to = %addr, "following leader redirect");
                    hops += 1;
                    target = addr;
                    continue;
                }
                Next::Leader(addr) => last_error = format!("{target} redirected to {addr}"),
                Next::OtherEndpoint(message) => last_error = format!("{target}: {message}"),
            }
            self.remember_leader(None);
            let pause = jitter(backoff).min(until.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            let index = next_endpoint % self.endpoints.len();
            self.start.store(index, Ordering::Relaxed);
            target = self.endpoints[index].clone();
            next_endpoint += 1;
        }
    }
}

/// A duration scaled by a random factor in [0.5, 1.5), so workers that lost the cluster at the
/// same moment do not come back in lockstep.
pub fn jitter(base: Duration) -> Duration {
    let factor = rand::thread_rng().gen_range(0.5..1.5);
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::master::status::not_leader;
    use crate::raft::ReplicaNode;

    #[test]
    fn statuses_are_classified() {
        let lost = Status::with_error_details(
            Code::FailedPrecondition,
            "stale",
            tonic_types::ErrorDetails::with_error_info(
                REASON_LEASE_LOST,
                "scaleout",
                HashMap::new(),
            ),
        );
        assert!(matches!(
            classify(lost),
            Next::GiveUp(CallError::LeaseLost(_))
        ));
        let node = ReplicaNode {
            api_addr: "127.0.0.1:7102".into(),
            peer_addr: "127.0.0.1:7202".into(),
            storage_id: None,
        };
        assert!(
            matches!(classify(not_leader(Some(2), Some(&node))), Next::Leader(a) if a == "127.0.0.1:7102")
        );
        assert!(matches!(
            classify(not_leader(None, None)),
            Next::OtherEndpoint(_)
        ));
        assert!(matches!(
            classify(Status::cancelled("timeout")),
            Next::OtherEndpoint(_)
        ));
        assert!(matches!(
            classify(Status::not_found("no such worker")),
            Next::GiveUp(CallError::Rejected(s)) if s.code() == Code::NotFound
        ));
        // A precondition failure for another reason is not a lost lease.
        assert!(matches!(
            classify(Status::failed_precondition("disabled")),
            Next::GiveUp(CallError::Rejected(_))
        ));
    }

    /// One heartbeat call through `connection`: `per_call` for each endpoint, `deadline` in all.
    async fn heartbeat(
        connection: &Connection,
        per_call: Duration,
        deadline: Duration,
    ) -> Result<crate::pb::v1::HeartbeatResponse, CallError> {
        connection
            .call(per_call, deadline, |mut client, timeout| async move {
                let mut request = tonic::Request::new(crate::pb::v1::HeartbeatRequest::default());
                request.set_timeout(timeout);
                client.heartbeat(request).await
            })
            .await
    }

    #[tokio::test]
    async fn an_unreachable_cluster_fails_by_the_deadline() {
        // Nothing listens on these ports (bound and dropped to find free ones).
        let free = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let connection = Connection::new(&[free(), free()], Security::Insecure).unwrap();
        let started = std::time::Instant::now();
        let result = heartbeat(
            &connection,
            Duration::from_millis(200),
            Duration::from_millis(700),
        )
        .await;
        assert!(
            matches!(result, Err(CallError::Unavailable { .. })),
            "{result:?}"
        );
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(600), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
        assert!(Connection::new(&[], Security::Insecure).is_err());
    }

    /// A replica that holds calls without answering (a leader cut off from its peers) is not
    /// where the next call starts.
    #[tokio::test]
    async fn the_next_call_starts_past_an_endpoint_that_did_not_answer() {
        // Bound and kept, never accepted: a connection opens, no answer ever comes.
        let silent: Vec<std::net::TcpListener> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let endpoints: Vec<String> = silent
            .iter()
            .map(|l| l.local_addr().unwrap().to_string())
            .collect();
        let connection = Connection::new(&endpoints, Security::Insecure).unwrap();
        assert_eq!(connection.first_target().0, endpoints[0]);
        let result = heartbeat(
            &connection,
            Duration::from_millis(150),
            Duration::from_millis(200),
        )
        .await;
        assert!(matches!(result, Err(CallError::Unavailable { .. })));
        assert_ne!(connection.first_target().0, endpoints[0]);
        // A known leader still comes first.
        connection.remember_leader(Some(endpoints[2].clone()));
        assert_eq!(connection.first_target().0, endpoints[2]);
    }
}
