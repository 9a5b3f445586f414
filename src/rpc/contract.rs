//! How a replica's errors look on the wire, for the replicas that send them and the callers that
//! act on them: gRPC codes, a `google.rpc.ErrorInfo` [`Reason`], the leader redirect of
//! DESIGN.md, and which answers a caller may retry elsewhere.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::queue::QueueError;
#[cfg(unix)]
use crate::raft::{NodeId, ReplicaNode};

/// The domain of every ErrorInfo this service sends.
pub const ERROR_DOMAIN: &str = "scaleout";
/// ErrorInfo reason of a write or linearizable read sent to a replica that does not lead.
pub const REASON_NOT_LEADER: &str = Reason::NotLeader.as_str();
/// The metadata header carrying the leader's API address on a redirect, and on a follower's
/// answer to a call it forwarded to the leader.
pub const LEADER_HEADER: &str = "x-scaleout-leader";
/// The request header with which a caller asks a follower to forward its write to the leader
/// rather than redirect the caller (value `1`). Callers that do not send it get the redirect of
/// DESIGN.md; the client library and the worker agent always send it, so a write reaches the
/// leader through any replica that hears it, even when the caller cannot reach the leader.
pub const FORWARD_HEADER: &str = "x-scaleout-forward";

/// A request for a call meant for the leader: with its timeout, and asking a follower that
/// gets it to forward it ([`FORWARD_HEADER`]).
pub fn leader_request<M>(message: M, timeout: std::time::Duration) -> tonic::Request<M> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request.metadata_mut().insert(
        FORWARD_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    request
}

/// Whether the caller asked a follower to forward its write ([`FORWARD_HEADER`]).
pub fn asks_forwarding(metadata: &tonic::metadata::MetadataMap) -> bool {
    metadata
        .get(FORWARD_HEADER)
        .is_some_and(|value| value.as_bytes() == b"1")
}

/// Why a replica refused a call, as its ErrorInfo names it: callers decide on this, never on
/// the message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// UNAVAILABLE: this replica does not lead; the leader's address is attached when known.
    NotLeader,
    /// FAILED_PRECONDITION: the lease token the call carried is no longer current.
    LeaseLost,
    /// PERMISSION_DENIED: the caller's certificate role may not make this call.
    RoleNotAllowed,
    InvalidSpec,
    JobNotFound,
    /// The job finished and was removed by retention; SSISDB has its history.
    JobRemoved,
    NotCancellable,
    /// ALREADY_EXISTS: the idempotency key names a job with another spec.
    IdempotencyKeyReused,
    /// NOT_FOUND: the cluster does not know this worker (never registered, or removed).
    WorkerNotFound,
    WorkerBusy,
    InvalidWorker,
    InvalidRequest,
}

impl Reason {
    const ALL: [Reason; 12] = [
        Reason::NotLeader,
        Reason::LeaseLost,
        Reason::RoleNotAllowed,
        Reason::InvalidSpec,
        Reason::JobNotFound,
        Reason::JobRemoved,
        Reason::NotCancellable,
        Reason::IdempotencyKeyReused,
        Reason::WorkerNotFound,
        Reason::WorkerBusy,
        Reason::InvalidWorker,
        Reason::InvalidRequest,
    ];

    /// The reason as it travels in ErrorInfo.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::NotLeader => "NOT_LEADER",
            Reason::LeaseLost => "LEASE_LOST",
            Reason::RoleNotAllowed => "ROLE_NOT_ALLOWED",
            Reason::InvalidSpec => "INVALID_SPEC",
            Reason::JobNotFound => "JOB_NOT_FOUND",
            Reason::JobRemoved => "JOB_REMOVED",
            Reason::NotCancellable => "NOT_CANCELLABLE",
            Reason::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Reason::WorkerNotFound => "WORKER_NOT_FOUND",
            Reason::WorkerBusy => "WORKER_BUSY",
            Reason::InvalidWorker => "INVALID_WORKER",
            Reason::InvalidRequest => "INVALID_REQUEST",
        }
    }

    /// The reason `status` carries, if a replica of this project sent one.
    pub fn of(status: &Status) -> Option<Reason> {
        let info = status.get_details_error_info()?;
        if info.domain != ERROR_DOMAIN {
            return None;
        }
        Reason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == info.reason)
    }
}

/// A status with an ErrorInfo reason, so clients can tell errors apart without parsing text.
pub fn with_reason(
    code: Code,
    reason: Reason,
    message: impl Into<String>,
    metadata: HashMap<String, String>,
) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason.as_str(), ERROR_DOMAIN, metadata),
    )
}

/// UNAVAILABLE / NOT_LEADER, with the leader's API address when this replica knows it.
#[cfg(unix)]
pub fn not_leader(leader_id: Option<NodeId>, leader: Option<&ReplicaNode>) -> Status {
    let mut metadata = HashMap::new();
    if let Some(id) = leader_id {
        metadata.insert("leader_id".to_string(), id.to_string());
    }
    let message = match (leader_id, leader) {
        (Some(id), Some(node)) => {
            metadata.insert("leader_addr".to_string(), node.api_addr.clone());
            format!(
                "this replica is not the leader; replica {id} at {} is",
                node.api_addr
            )
        }
        _ => "this replica is not the leader and no leader is known (an election is under way); \
              retry another replica"
            .to_string(),
    };
    let mut status = with_reason(Code::Unavailable, Reason::NotLeader, message, metadata);
    if let Some(value) = leader.and_then(|node| node.api_addr.parse().ok()) {
        status.metadata_mut().insert(LEADER_HEADER, value);
    }
    status
}

/// UNAVAILABLE / NOT_LEADER from a leader that has heard from no majority for `silent_ms`
/// (CheckQuorum): it may have been replaced and does not know by whom.
pub fn cut_off_leader(silent_ms: u64) -> Status {
    with_reason(
        Code::Unavailable,
        Reason::NotLeader,
        format!(
            "this replica was the leader but has heard from no majority of the replicas for \
             {silent_ms} ms (it is cut off, and another may lead by now); retry another replica"
        ),
        HashMap::new(),
    )
}

/// Where a client should send a call that got `status`: the leader's API address when the
/// answer is a NOT_LEADER redirect that names one (ErrorInfo metadata, or the header).
pub fn redirect_address(status: &Status) -> Option<String> {
    if status.code() != Code::Unavailable {
        return None;
    }
    let from_info = status
        .get_details_error_info()
        .filter(|info| info.domain == ERROR_DOMAIN && info.reason == REASON_NOT_LEADER)
        .and_then(|info| info.metadata.get("leader_addr").cloned());
    from_info.or_else(|| {
        status
            .metadata()
            .get(LEADER_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    })
}

/// A status as one line for people: code, message, and the chain of causes behind a transport
/// error (where a TLS handshake failure says what went wrong, e.g. an unknown CA).
pub fn describe(status: &Status) -> String {
    let mut text = format!("{}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Whether `status` is a connection the replica's host refused (nothing listens on that port):
/// unlike a timeout, it is a definite answer that arrives at once.
pub fn is_connection_refused(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Whether another replica (or the same one, later) may serve a call that got `status`:
/// UNAVAILABLE (no leader, shutting down, outcome unknown), a call cut short by the caller's own
/// timeout (CANCELLED, DEADLINE_EXCEEDED), a broken connection or HTTP/2 stream (UNKNOWN,
/// INTERNAL), or a replica in trouble (ABORTED). Calls are safe to repeat: submits carry
/// idempotency keys, acquires request ids, and the rest are idempotent or fenced. Answers about
/// the request itself (invalid, not found, lease lost, ...) are final.
pub fn is_retryable_elsewhere(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Internal
            | Code::Aborted
    )
}

/// A deterministic rejection from the queue.
pub fn from_queue_error(error: &QueueError) -> Status {
    let (code, reason) = match error {
        QueueError::InvalidSpec(_) => (Code::InvalidArgument, Reason::InvalidSpec),
        QueueError::JobNotFound(_) => (Code::NotFound, Reason::JobNotFound),
        QueueError::NotCancellable { .. } => (Code::FailedPrecondition, Reason::NotCancellable),
        QueueError::IdempotencyKeyConflict { .. } => {
            (Code::AlreadyExists, Reason::IdempotencyKeyReused)
        }
        QueueError::WorkerNotFound(_) => (Code::NotFound, Reason::WorkerNotFound),
        QueueError::WorkerBusy { .. } => (Code::FailedPrecondition, Reason::WorkerBusy),
        QueueError::LeaseLost { .. } => (Code::FailedPrecondition, Reason::LeaseLost),
        QueueError::InvalidWorker(_) => (Code::InvalidArgument, Reason::InvalidWorker),
        QueueError::InvalidRequest(_) => (Code::InvalidArgument, Reason::InvalidRequest),
        QueueError::JobRemoved(_) => (Code::NotFound, Reason::JobRemoved),
    };
    with_reason(code, reason, error.to_string(), HashMap::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirect_names_the_leader_three_ways() {
        let node = ReplicaNode {
            api_addr: "127.0.0.1:7102".into(),
            peer_addr: "x:1".into(),
            storage_id: None,
        };
        let status = not_leader(Some(2), Some(&node));
        assert_eq!(status.code(), Code::Unavailable);
        let info = status.get_details_error_info().expect("error info");
        assert_eq!(info.reason, REASON_NOT_LEADER);
        assert_eq!(
            info.metadata.get("leader_id").map(String::as_str),
            Some("2")
        );
        assert_eq!(
            info.metadata.get("leader_addr").map(String::as_str),
            Some("127.0.0.1:7102")
        );
        let header = status
            .metadata()
            .get(LEADER_HEADER)
            .and_then(|v| v.to_str().ok());
        assert_eq!(header, Some("127.0.0.1:7102"));
    }

    #[test]
    fn every_reason_reads_back_and_a_foreign_domain_is_not_ours() {
        for reason in Reason::ALL {
            let status = with_reason(Code::Aborted, reason, "x", HashMap::new());
            assert_eq!(Reason::of(&status), Some(reason));
        }
        let foreign = Status::with_error_details(
            Code::NotFound,
            "x",
            ErrorDetails::with_error_info("WORKER_NOT_FOUND", "elsewhere.example", HashMap::new()),
        );
        assert_eq!(Reason::of(&foreign), None);
        assert_eq!(Reason::of(&Status::not_found("no details")), None);
    }

    #[test]
    fn during_an_election_there_is_no_address() {
        let status = not_leader(None, None);
        let info = status.get_details_error_info().expect("error info");
        assert!(!info.metadata.contains_key("leader_addr"));
        assert!(status.metadata().get(LEADER_HEADER).is_none());
    }
}
