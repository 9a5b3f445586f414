//! How a replica's errors look on the wire: gRPC codes, a `google.rpc.ErrorInfo` reason, and the
//! leader redirect of DESIGN.md.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::queue::QueueError;
use crate::raft::{NodeId, ReplicaNode};

/// The domain of every ErrorInfo this service sends.
pub const ERROR_DOMAIN: &str = "scaleout";
/// ErrorInfo reason of a write or linearizable read sent to a replica that does not lead.
pub const REASON_NOT_LEADER: &str = "NOT_LEADER";
/// The metadata header carrying the leader's API address on a redirect.
pub const LEADER_HEADER: &str = "x-scaleout-leader";

/// A status with an ErrorInfo reason, so clients can tell errors apart without parsing text.
pub fn with_reason(
    code: Code,
    reason: &str,
    message: impl Into<String>,
    metadata: HashMap<String, String>,
) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
    )
}

/// UNAVAILABLE / NOT_LEADER, with the leader's API address when this replica knows it.
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
    let mut status = with_reason(Code::Unavailable, REASON_NOT_LEADER, message, metadata);
    if let Some(value) = leader.and_then(|node| node.api_addr.parse().ok()) {
        status.metadata_mut().insert(LEADER_HEADER, value);
    }
    status
}

/// Where a client should send a call that got `status`: the leader's API address when the
/// answer is a NOT_LEADER redirect that names one (ErrorInfo metadata, or the header).
pub fn redirect_address(status: &Status) -> Option<String> {
    if status.code() != Code::Unavailable {
        return None;
    }
    let from_info = status
        .get_details_error_info()
        .filter(|info| info.reason == REASON_NOT_LEADER)
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
        QueueError::InvalidSpec(_) => (Code::InvalidArgument, "INVALID_SPEC"),
        QueueError::JobNotFound(_) => (Code::NotFound, "JOB_NOT_FOUND"),
        QueueError::NotCancellable { .. } => (Code::FailedPrecondition, "NOT_CANCELLABLE"),
        QueueError::IdempotencyKeyConflict { .. } => {
            (Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED")
        }
        QueueError::WorkerNotFound(_) => (Code::NotFound, "WORKER_NOT_FOUND"),
        QueueError::WorkerBusy { .. } => (Code::FailedPrecondition, "WORKER_BUSY"),
        QueueError::LeaseLost { .. } => (Code::FailedPrecondition, "LEASE_LOST"),
        QueueError::InvalidWorker(_) => (Code::InvalidArgument, "INVALID_WORKER"),
        QueueError::InvalidRequest(_) => (Code::InvalidArgument, "INVALID_REQUEST"),
        QueueError::JobRemoved(_) => (Code::NotFound, "JOB_REMOVED"),
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
    fn during_an_election_there_is_no_address() {
        let status = not_leader(None, None);
        let info = status.get_details_error_info().expect("error info");
        assert!(!info.metadata.contains_key("leader_addr"));
        assert!(status.metadata().get(LEADER_HEADER).is_none());
    }
}
