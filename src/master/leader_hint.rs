//! Where the leader is, on every successful answer from a follower: the `x-scaleout-leader`
//! header names the leader's API address, so a client whose write a follower forwarded
//! (`forward.rs`) can send the next one straight to the leader. Refusals carry the address in
//! their own way (NOT_LEADER's ErrorInfo) and are left alone.

use crate::raft::Raft;
use crate::rpc::contract::LEADER_HEADER;

/// The layer for the API server: a follower's successful answers name the leader.
pub fn layer(
    raft: Raft,
) -> tower::util::MapResponseLayer<
    impl Fn(http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> + Clone,
> {
    tower::util::MapResponseLayer::new(move |mut response: http::Response<tonic::body::Body>| {
        if succeeded(response.headers()) {
            if let Some(leader) = leader_api_addr(&raft) {
                response.headers_mut().insert(LEADER_HEADER, leader);
            }
        }
        response
    })
}

/// The leader's API address, when this replica follows a known leader.
fn leader_api_addr(raft: &Raft) -> Option<http::HeaderValue> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    if m.state == openraft::ServerState::Leader {
        return None;
    }
    let leader = m.current_leader.filter(|id| *id != m.id)?;
    let node = m.membership_config.membership().get_node(&leader)?;
    http::HeaderValue::from_str(&node.api_addr).ok()
}

/// Whether the headers are a successful call's: a refusal before the body ("trailers-only")
/// carries its `grpc-status` here.
fn succeeded(headers: &http::HeaderMap) -> bool {
    headers
        .get("grpc-status")
        .is_none_or(|status| status.as_bytes() == b"0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_successful_answers_are_marked() {
        let mut headers = http::HeaderMap::new();
        assert!(
            succeeded(&headers),
            "a normal answer's status is in its trailers"
        );
        headers.insert("grpc-status", http::HeaderValue::from_static("0"));
        assert!(succeeded(&headers));
        headers.insert("grpc-status", http::HeaderValue::from_static("14"));
        assert!(!succeeded(&headers), "a trailers-only refusal");
    }
}
