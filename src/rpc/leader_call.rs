//! Reaching the leader from outside the cluster: the one call loop of the client library and the
//! worker agent.
//!
//! One lazily connected channel per address, reused for every call. A call goes to the last
//! leader seen, else to the endpoint after the last one that failed (not always the first: a
//! leader cut off from its peers may hold every call sent to it until its timeout, and a caller
//! whose whole budget is one such timeout would never reach the new leader). A follower's
//! NOT_LEADER answer names the leader's API address and the call goes there at once; during an
//! election (no address), or when a replica does not answer within the per-call timeout, the call
//! moves to the next endpoint after a jittered, growing [`Backoff`]. A replica that stops
//! answering altogether (frozen, cut off) is noticed sooner, by HTTP/2 keepalive pings. All of
//! it is bounded by the caller's deadline. Which answers are retried is the contract's
//! ([`is_retryable_elsewhere`]): every call the replicas serve is safe to repeat.
//!
//! The callers' requests ask followers to forward writes to the leader
//! ([`super::contract::leader_request`]); a follower that did names the leader in its answer, and
//! the next call goes there, unless this caller failed to reach that address lately: then the
//! follower stays its way in (a leader whose API this caller cannot reach).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use super::backoff::Backoff;
use super::contract::{
    describe, is_connection_refused, is_retryable_elsewhere, redirect_address, Reason,
    LEADER_HEADER,
};
use crate::transport::Security;

const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// An HTTP/2 ping every `every` on each connection, answered within `timeout` or the
/// connection is dropped and the calls on it fail: a frozen or cut-off replica (SIGSTOP, a
/// blackholed link) answers nothing, and without this a call to it waits its whole per-call
/// timeout. With it, the call moves to the next replica within `every + timeout`, whatever its
/// own timeout (long polls included). Each ping is a wake-up, a TLS record each way and two
/// syscalls on the replica: a few callers may ping often, a fleet of workers may not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub every: Duration,
    pub timeout: Duration,
}

impl Keepalive {
    /// Clients (the CLI, the library, tests): a silent replica is left within 0.75 s.
    pub const CLIENT: Keepalive = Keepalive {
        every: Duration::from_millis(250),
        timeout: Duration::from_millis(500),
    };
}
/// Redirects one call follows before it counts as a failure (leaders changing under it).
const MAX_REDIRECT_HOPS: usize = 16;
/// How much longer than its request's own timeout an attempt may take before it is abandoned.
const ANSWER_GRACE: Duration = Duration::from_millis(250);
/// How long an address that failed a call is not taken from a follower's leader hint: a leader
/// whose API this caller cannot reach is reached through the follower that forwarded for it.
const HINT_DISTRUST: Duration = Duration::from_secs(10);

/// Why a call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No replica served the call before the deadline: the cluster is down or has no leader.
    #[error("no replica served the call within {deadline:?} (last error: {last_error})")]
    Unavailable {
        deadline: Duration,
        last_error: String,
    },
    /// Every try of the call was refused the connection, at every endpoint (nothing listens
    /// there), and the caller asked to fail fast ([`Replicas::failing_fast`]): each endpoint
    /// with its error. The request reached no replica.
    #[error("every replica refused the connection: {each}")]
    Refused { each: String },
    /// The lease the call carried is no longer current (FAILED_PRECONDITION, reason
    /// LEASE_LOST): the master ended that attempt, and nothing more of it is worth sending.
    #[error("lease lost: {}", .0.message())]
    LeaseLost(Status),
    /// A replica answered with an error that retrying will not fix.
    #[error("{}: {}", .0.code(), .0.message())]
    Rejected(Status),
}

impl CallError {
    /// A replica's definite refusal, told apart by its reason.
    fn refused(status: Status) -> CallError {
        match Reason::of(&status) {
            Some(Reason::LeaseLost) => CallError::LeaseLost(status),
            _ => CallError::Rejected(status),
        }
    }

    /// The replica's answer, when one refused the call.
    fn status(&self) -> Option<&Status> {
        match self {
            CallError::Rejected(status) | CallError::LeaseLost(status) => Some(status),
            CallError::Unavailable { .. } | CallError::Refused { .. } => None,
        }
    }

    /// The reason the replica gave for refusing the call.
    pub fn reason(&self) -> Option<Reason> {
        self.status().and_then(Reason::of)
    }
}

/// A list of endpoints that cannot be dialled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("no endpoints given")]
    None,
    #[error("endpoint {endpoint:?} is not a valid address: {message}")]
    Invalid { endpoint: String, message: String },
}

/// Checks that `endpoint` is HOST:PORT: without a port a call would dial port 80 and wait out its
/// deadline instead of saying what is wrong.
fn validate_endpoint(endpoint: &str) -> Result<(), EndpointError> {
    let invalid = |message: String| EndpointError::Invalid {
        endpoint: endpoint.to_string(),
        message,
    };
    let (host, port) = endpoint.rsplit_once(':').ok_or_else(|| {
        invalid(
            "it has no port: write HOST:PORT, e.g. 127.0.0.1:7101 (a replica's API address)".into(),
        )
    })?;
    if host.is_empty() || host.ends_with(':') {
        return Err(invalid(
            "it has no host: write HOST:PORT, e.g. 127.0.0.1:7101 ([::1]:7101 for IPv6)".into(),
        ));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => {}
        _ => {
            return Err(invalid(format!(
                "{port:?} is not a port (1-65535): write HOST:PORT, e.g. 127.0.0.1:7101"
            )))
        }
    }
    Endpoint::from_shared(format!("http://{endpoint}"))
        .map(|_| ())
        .map_err(|e| invalid(e.to_string()))
}

/// The refusals of a call's tries while every try so far was refused the connection; once each
/// endpoint has refused, a caller that asked to fail fast gets them all at once instead of
/// retrying until its deadline (nothing listens there: a stopped cluster, or wrong ports). Any
/// other failure (a timeout, a redirect, a broken stream) may have delivered the request, and
/// the call then runs its course as before.
#[derive(Default)]
struct Refusals {
    each: BTreeMap<String, String>,
    reached_a_replica: bool,
}

impl Refusals {
    fn note(&mut self, endpoint: &str, status: &Status) {
        if is_connection_refused(status) {
            self.each.insert(endpoint.to_string(), describe(status));
        } else {
            self.reached_a_replica = true;
        }
    }

    /// Every endpoint refused: the error to give up with.
    fn everywhere(&self, endpoints: &[String]) -> Option<CallError> {
        if self.reached_a_replica || !endpoints.iter().all(|e| self.each.contains_key(e)) {
            return None;
        }
        let each: Vec<String> = endpoints
            .iter()
            .map(|e| format!("{e}: {}", self.each[e]))
            .collect();
        Some(CallError::Refused {
            each: each.join("; "),
        })
    }
}

/// Where a failed call goes next.
enum Next {
    Leader(String),
    OtherEndpoint(String),
    GiveUp(Status),
}

fn classify(status: Status) -> Next {
    if let Some(addr) = redirect_address(&status) {
        return Next::Leader(addr);
    }
    if is_retryable_elsewhere(&status) {
        return Next::OtherEndpoint(describe(&status));
    }
    Next::GiveUp(status)
}

/// The replicas as a caller sees them: their endpoints, a channel to each, and the last leader.
pub struct Replicas {
    endpoints: Vec<String>,
    security: Security,
    backoff: Backoff,
    keepalive: Keepalive,
    /// Give up as soon as every endpoint refused the connection ([`Replicas::failing_fast`]).
    fail_fast: bool,
    channels: Mutex<BTreeMap<String, Channel>>,
    leader: Mutex<Option<String>>,
    /// Where a call starts when no leader is known: moved past every endpoint that fails.
    start: AtomicUsize,
    /// When each address last failed a call (see [`HINT_DISTRUST`]).
    failed: Mutex<BTreeMap<String, Instant>>,
}

impl Replicas {
    /// The replicas at `endpoints` (host:port, an `http://` prefix is dropped), dialled with
    /// `security`; failed calls pause by `backoff` before the next endpoint.
    pub fn new<S: AsRef<str>>(
        endpoints: &[S],
        security: Security,
        backoff: Backoff,
    ) -> Result<Replicas, EndpointError> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|e| e.as_ref().trim().trim_start_matches("http://").to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(EndpointError::None);
        }
        for endpoint in &endpoints {
            validate_endpoint(endpoint)?;
        }
        Ok(Replicas {
            endpoints,
            security,
            backoff,
            keepalive: Keepalive::CLIENT,
            fail_fast: false,
            channels: Mutex::default(),
            leader: Mutex::default(),
            start: AtomicUsize::new(0),
            failed: Mutex::default(),
        })
    }

    /// A call gives up, unavailable, as soon as every endpoint refused the connection, rather
    /// than retrying until its deadline: for a person at a terminal (the CLI), who would rather
    /// hear at once that nothing listens there. Workers and the client library keep retrying
    /// (replicas restarting all at once refuse connections for a moment).
    pub fn failing_fast(mut self) -> Replicas {
        self.fail_fast = true;
        self
    }

    /// Pings the replicas as `keepalive` says instead of [`Keepalive::CLIENT`].
    pub fn with_keepalive(mut self, keepalive: Keepalive) -> Replicas {
        self.keepalive = keepalive;
        self
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub fn security(&self) -> &Security {
        &self.security
    }

    /// The leader's address as last seen, if any.
    pub fn leader(&self) -> Option<String> {
        self.leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn remember_leader(&self, addr: Option<String>) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = addr;
    }

    fn remember_failure(&self, addr: &str) {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr.to_string(), Instant::now());
    }

    /// Where the next call goes after `target` served one: the leader a follower named in
    /// its answer (it forwarded the call), unless this caller failed to reach that leader
    /// lately; else `target` itself.
    fn after_success(&self, target: String, hint: Option<String>) -> String {
        let Some(hint) = hint.filter(|hint| *hint != target) else {
            return target;
        };
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        match failed.get(&hint) {
            Some(at) if at.elapsed() < HINT_DISTRUST => target,
            _ => hint,
        }
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

    /// The channel to `addr`, made on first use and reused after.
    pub fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = self
            .security
            .channel(addr, |endpoint| {
                endpoint
                    .connect_timeout(CONNECT_TIMEOUT)
                    .http2_keep_alive_interval(self.keepalive.every)
                    .keep_alive_timeout(self.keepalive.timeout)
                    .keep_alive_while_idle(true)
            })
            .map_err(|e| Status::invalid_argument(format!("bad address {addr:?}: {e}")))?;
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// Runs `op` once on `addr` with `timeout` for its request (which travels to the server),
    /// bounded also while the connection is being made: by `timeout` plus a short grace, so
    /// that `op` normally sees its own request's DEADLINE_EXCEEDED (a caller may need to know
    /// the outcome is unknown), but never past `remaining`, the caller's whole deadline. The
    /// answer comes with the leader's address when a follower named it (`x-scaleout-leader`).
    async fn attempt<T, F, Fut>(
        &self,
        addr: &str,
        timeout: Duration,
        remaining: Duration,
        op: &mut F,
    ) -> Result<(T, Option<String>), Status>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let channel = self.channel(addr)?;
        let bound = (timeout + ANSWER_GRACE).min(remaining);
        match tokio::time::timeout(bound, op(channel, timeout)).await {
            Ok(outcome) => outcome.map(|response| {
                let hint = response
                    .metadata()
                    .get(LEADER_HEADER)
                    .and_then(|value| value.to_str().ok())
                    .map(String::from);
                (response.into_inner(), hint)
            }),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer within {timeout:?}"
            ))),
        }
    }

    /// Runs `op` on the leader, following redirects, until it succeeds, is refused for good, or
    /// `deadline` passes. `op` gets a channel and the timeout to set on its request: at most
    /// `per_call`, and no later than the deadline.
    pub async fn on_leader<T, F, Fut>(
        &self,
        per_call: Duration,
        deadline: Duration,
        mut op: F,
    ) -> Result<T, CallError>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let until = Instant::now() + deadline;
        let (mut target, mut next_endpoint) = self.first_target();
        let mut hops = 0;
        let mut pauses = self.backoff.pauses();
        let mut last_error = String::from("none");
        let mut refusals = Refusals::default();
        loop {
            let remaining = until.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(CallError::Unavailable {
                    deadline,
                    last_error,
                });
            }
            let status = match self
                .attempt(&target, remaining.min(per_call), remaining, &mut op)
                .await
            {
                Ok((reply, hint)) => {
                    self.remember_leader(Some(self.after_success(target, hint)));
                    return Ok(reply);
                }
                Err(status) => status,
            };
            refusals.note(&target, &status);
            match classify(status) {
                Next::GiveUp(status) => {
                    // A definite answer: keep talking to this replica.
                    self.remember_leader(Some(target));
                    return Err(CallError::refused(status));
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
            self.remember_failure(&target);
            self.remember_leader(None);
            if let Some(error) = refusals
                .everywhere(&self.endpoints)
                .filter(|_| self.fail_fast)
            {
                return Err(error);
            }
            let pause = pauses
                .next_jittered()
                .min(until.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            let index = next_endpoint % self.endpoints.len();
            self.start.store(index, Ordering::Relaxed);
            target = self.endpoints[index].clone();
            next_endpoint += 1;
        }
    }

    /// Runs `op` on the endpoints in order, without redirects, until one serves it, one refuses
    /// it for good, or `deadline` passes: for calls any replica answers (stale reads, status).
    pub async fn on_any<T, F, Fut>(
        &self,
        per_call: Duration,
        deadline: Duration,
        mut op: F,
    ) -> Result<T, CallError>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let until = Instant::now() + deadline;
        let mut last_error = String::from("none");
        let mut pauses = self.backoff.pauses();
        let mut refusals = Refusals::default();
        loop {
            for endpoint in &self.endpoints {
                let remaining = until.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return Err(CallError::Unavailable {
                        deadline,
                        last_error,
                    });
                }
                let outcome = self
                    .attempt(endpoint, remaining.min(per_call), remaining, &mut op)
                    .await;
                if let Err(status) = &outcome {
                    refusals.note(endpoint, status);
                }
                match outcome.map_err(classify) {
                    Ok((reply, _)) => return Ok(reply),
                    Err(Next::GiveUp(status)) => return Err(CallError::refused(status)),
                    Err(Next::Leader(_)) => last_error = format!("{endpoint}: not the leader"),
                    Err(Next::OtherEndpoint(message)) => {
                        last_error = format!("{endpoint}: {message}")
                    }
                }
            }
            if let Some(error) = refusals
                .everywhere(&self.endpoints)
                .filter(|_| self.fail_fast)
            {
                return Err(error);
            }
            let pause = pauses
                .next_jittered()
                .min(until.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::v1::worker_service_client::WorkerServiceClient;
    use crate::pb::v1::{HeartbeatRequest, HeartbeatResponse};
    use crate::raft::ReplicaNode;
    use std::collections::HashMap;

    use tonic::Code;

    use crate::rpc::contract::{not_leader, with_reason};

    #[test]
    fn a_lost_lease_is_told_apart_by_its_reason() {
        let lost = with_reason(
            Code::FailedPrecondition,
            Reason::LeaseLost,
            "stale",
            HashMap::new(),
        );
        assert!(matches!(CallError::refused(lost), CallError::LeaseLost(_)));
        // A precondition failure for another reason is not a lost lease.
        let other = CallError::refused(Status::failed_precondition("disabled"));
        assert!(matches!(other, CallError::Rejected(_)), "{other:?}");
        let unknown = with_reason(
            Code::NotFound,
            Reason::WorkerNotFound,
            "who?",
            HashMap::new(),
        );
        let unknown = CallError::refused(unknown);
        assert_eq!(unknown.reason(), Some(Reason::WorkerNotFound));
        let unavailable = CallError::Unavailable {
            deadline: Duration::from_secs(1),
            last_error: "none".into(),
        };
        assert_eq!(unavailable.reason(), None);
    }

    #[test]
    fn statuses_are_classified() {
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
            Next::GiveUp(s) if s.code() == tonic::Code::NotFound
        ));
        assert!(matches!(
            classify(Status::failed_precondition("disabled")),
            Next::GiveUp(_)
        ));
    }

    const BACKOFF: Backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(100));

    async fn heartbeat(
        replicas: &Replicas,
        per_call: Duration,
        deadline: Duration,
    ) -> Result<HeartbeatResponse, CallError> {
        replicas
            .on_leader(per_call, deadline, |channel, timeout| async move {
                let mut request = tonic::Request::new(HeartbeatRequest::default());
                request.set_timeout(timeout);
                WorkerServiceClient::new(channel).heartbeat(request).await
            })
            .await
    }

    fn free_address() -> String {
        // Bound and dropped: nothing listens there.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    }

    #[tokio::test]
    async fn an_unreachable_cluster_fails_by_the_deadline() {
        let replicas = Replicas::new(
            &[free_address(), free_address()],
            Security::Insecure,
            BACKOFF,
        )
        .unwrap();
        let started = std::time::Instant::now();
        let result = heartbeat(
            &replicas,
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
        let none: [&str; 0] = [];
        assert_eq!(
            Replicas::new(&none, Security::Insecure, BACKOFF).err(),
            Some(EndpointError::None)
        );
        assert!(matches!(
            Replicas::new(&["bad address:x"], Security::Insecure, BACKOFF),
            Err(EndpointError::Invalid { .. })
        ));
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
        let replicas = Replicas::new(&endpoints, Security::Insecure, BACKOFF).unwrap();
        assert_eq!(replicas.first_target().0, endpoints[0]);
        let result = heartbeat(
            &replicas,
            Duration::from_millis(150),
            Duration::from_millis(200),
        )
        .await;
        assert!(matches!(result, Err(CallError::Unavailable { .. })));
        assert_ne!(replicas.first_target().0, endpoints[0]);
        // A known leader still comes first.
        replicas.remember_leader(Some(endpoints[2].clone()));
        assert_eq!(replicas.first_target().0, endpoints[2]);
    }

    /// A follower that forwarded a call names the leader; the next call goes there, unless this
    /// caller failed to reach it lately (its API is cut off from this caller: the follower is
    /// the way in).
    #[test]
    fn a_forwarded_answer_moves_the_caller_to_the_leader_it_can_reach() {
        let replicas =
            Replicas::new(&["10.0.0.1:1", "10.0.0.2:1"], Security::Insecure, BACKOFF).unwrap();
        let follower = "10.0.0.2:1".to_string();
        let leader = "10.0.0.1:1".to_string();
        assert_eq!(replicas.after_success(follower.clone(), None), follower);
        assert_eq!(
            replicas.after_success(follower.clone(), Some(leader.clone())),
            leader
        );
        assert_eq!(
            replicas.after_success(leader.clone(), Some(leader.clone())),
            leader
        );
        replicas.remember_failure(&leader);
        assert_eq!(
            replicas.after_success(follower.clone(), Some(leader.clone())),
            follower,
            "a leader this caller just failed to reach"
        );
    }

    /// A call that times out itself is not cut off first: it sees its own DEADLINE_EXCEEDED
    /// (the client's `remove_worker` learns from it that the outcome is unknown).
    #[tokio::test]
    async fn a_call_gets_to_see_its_own_timeout() {
        let replicas = Replicas::new(&[free_address()], Security::Insecure, BACKOFF).unwrap();
        let own_timeouts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = own_timeouts.clone();
        let result: Result<(), CallError> = replicas
            .on_leader(
                Duration::from_millis(100),
                Duration::from_millis(600),
                move |_channel, timeout| {
                    let seen = seen.clone();
                    async move {
                        // What a request whose own timeout fired answers, a moment late.
                        tokio::time::sleep(timeout + Duration::from_millis(50)).await;
                        seen.fetch_add(1, Ordering::Relaxed);
                        Err(Status::deadline_exceeded("the request's own timeout"))
                    }
                },
            )
            .await;
        assert!(
            matches!(result, Err(CallError::Unavailable { .. })),
            "{result:?}"
        );
        assert!(
            own_timeouts.load(Ordering::Relaxed) > 0,
            "every attempt was cut off"
        );
    }

    /// Stale reads and status: every endpoint in turn, no redirects, until one answers.
    #[tokio::test]
    async fn any_replica_call_gives_up_by_the_deadline_when_none_answers() {
        let replicas = Replicas::new(
            &[free_address(), free_address()],
            Security::Insecure,
            BACKOFF,
        )
        .unwrap();
        let started = std::time::Instant::now();
        let result = replicas
            .on_any(
                Duration::from_millis(100),
                Duration::from_millis(400),
                |channel, timeout| async move {
                    let mut request = tonic::Request::new(HeartbeatRequest::default());
                    request.set_timeout(timeout);
                    WorkerServiceClient::new(channel).heartbeat(request).await
                },
            )
            .await;
        assert!(
            matches!(&result, Err(CallError::Unavailable { last_error, .. }) if last_error.contains("127.0.0.1")),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
