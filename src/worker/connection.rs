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
use crate::rpc::{Backoff, Keepalive, Replicas};
use crate::transport::Security;

const BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(1000));
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// How the agent pings the replicas, from its renewal interval: a call held by a silent replica
/// (paused, cut off) fails within a fifth of that interval, so renewals go on elsewhere, yet an
/// agent with the default 10 s renewals pings once a second rather than four times (a fleet's
/// pings are most of what idle workers cost the leader: `bench scale`). Between 250 ms and 2 s.
pub fn keepalive_for(task_heartbeat_interval: Duration) -> Keepalive {
    let every =
        (task_heartbeat_interval / 10).clamp(Duration::from_millis(250), Duration::from_secs(2));
    Keepalive {
        every,
        timeout: every.max(Duration::from_millis(500)),
    }
}

/// Channels to the replicas and the last leader seen.
pub struct Connection {
    replicas: Replicas,
}

impl Connection {
    /// A connection to the replicas at `endpoints` (host:port, validated by the config),
    /// pinging them as `keepalive` says ([`keepalive_for`]).
    pub fn new(
        endpoints: &[String],
        security: Security,
        keepalive: Keepalive,
    ) -> Result<Connection, String> {
        let replicas = Replicas::new(endpoints, security, BACKOFF)
            .map_err(|e| e.to_string())?
            .with_keepalive(keepalive);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ping_interval_is_a_tenth_of_the_renewal_interval_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(
            keepalive_for(ms(10_000)),
            Keepalive {
                every: ms(1000),
                timeout: ms(1000)
            }
        );
        // Short renewals (tests, chaos) keep the clients' quick pings.
        assert_eq!(keepalive_for(ms(1000)), Keepalive::CLIENT);
        assert_eq!(keepalive_for(ms(60_000)).every, ms(2000));
    }
}
