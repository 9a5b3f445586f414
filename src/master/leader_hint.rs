//! Where the leader is, on every successful answer from a follower: the `x-scaleout-leader`
//! header names the leader's API address, so a client whose write a follower forwarded
//! (`forward.rs`) can send the next one straight to the leader. Refusals carry the address in
//! their own way (NOT_LEADER's ErrorInfo) and are left alone.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::raft::Raft;
use crate::rpc::contract::LEADER_HEADER;

/// Wraps the API server's services so a follower's answers name the leader.
#[derive(Clone)]
pub struct LeaderHintLayer {
    raft: Raft,
}

impl LeaderHintLayer {
    pub fn new(raft: Raft) -> Self {
        LeaderHintLayer { raft }
    }
}

impl<S> tower::Layer<S> for LeaderHintLayer {
    type Service = LeaderHint<S>;

    fn layer(&self, inner: S) -> LeaderHint<S> {
        LeaderHint {
            inner,
            raft: self.raft.clone(),
        }
    }
}

/// The service [`LeaderHintLayer`] makes.
#[derive(Clone)]
pub struct LeaderHint<S> {
    inner: S,
    raft: Raft,
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

impl<S, B, RB> tower::Service<http::Request<B>> for LeaderHint<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let raft = self.raft.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            if succeeded(response.headers()) {
                if let Some(leader) = leader_api_addr(&raft) {
                    response.headers_mut().insert(LEADER_HEADER, leader);
                }
            }
            Ok(response)
        })
    }
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
