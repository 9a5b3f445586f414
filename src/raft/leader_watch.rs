//! Fast failure detection: a follower notices at once when its leader's process is gone.
//!
//! Raft notices a dead leader only by silence: a follower waits out the leader lease
//! (`election_timeout_max`) before it may stand. When the leader's process dies but its host
//! lives (a crash, kill -9, an OOM kill), the network says so at once: its connections are closed
//! and its port refuses new ones. Each follower keeps a stream open to its leader (`WatchLeader`,
//! which the leader holds open while it leads); when the stream breaks and a fresh call to the
//! leader's port is refused as well, the leader is gone, and the follower records it
//! ([`LeaderContact::leader_gone`]). Its election driver then stands as soon as openraft's own
//! lease allows (about one heartbeat), and a voter waives the leader lease for it only if its own
//! watch saw the same leader go (`pre_vote.rs`, `lease.rs`): one replica's broken link is not
//! enough to depose a leader the others still hear. A paused or cut-off leader, or a dead host,
//! breaks nothing; the lease stays the fallback for those.

use std::time::Duration;

use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use super::election::LeaderContact;
use super::{NodeId, PeerNetwork, Raft, ReplicaNode};
use crate::pb::raft::raft_service_client::RaftServiceClient;
use crate::pb::raft::NodeStatusRequest;

/// gRPC metadata on a pre-vote: the leader the candidate saw go ([`super::lease::LeaderTerm`]).
pub const LEADER_GONE_HEADER: &str = "x-scaleout-leader-gone";

/// How long a voter asked by such a candidate waits for its own line to that leader to break.
pub const GONE_GRACE: Duration = Duration::from_millis(100);

/// A follower asks its leader of `term` to hold the line open.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WatchLeaderRequest {
    pub follower: NodeId,
    pub term: u64,
}

/// How long the probe after a broken line may take: a refused connection answers in
/// microseconds on a live host.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
/// The pause before opening the line again after it ended without a verdict.
const REOPEN_PAUSE: Duration = Duration::from_millis(50);
/// The pause before asking again a leader that does not serve the line.
const UNSUPPORTED_PAUSE: Duration = Duration::from_secs(5);

/// Runs until the node shuts down: keeps a line open to the current leader and reports its
/// process gone when the line breaks and its port refuses.
pub async fn watch(raft: Raft, network: PeerNetwork, contact: std::sync::Arc<LeaderContact>) {
    let mut metrics = raft.metrics();
    loop {
        let current = {
            let m = metrics.borrow_and_update();
            let membership = m.membership_config.membership();
            match (m.state, m.current_leader) {
                (ServerState::Follower | ServerState::Learner, Some(leader)) if leader != m.id => {
                    membership
                        .get_node(&leader)
                        .cloned()
                        .map(|node| (m.id, leader, m.current_term, node))
                }
                _ => None,
            }
        };
        let Some((me, leader, term, node)) = current else {
            if metrics.changed().await.is_err() {
                return;
            }
            continue;
        };
        let still_following = |m: &openraft::RaftMetrics<NodeId, ReplicaNode>| {
            m.current_leader == Some(leader) && m.current_term == term
        };
        let line = hold_line(&network, me, leader, term, &node);
        let broke = tokio::select! {
            broke = line => broke,
            changed = metrics.wait_for(|m| !still_following(m)) => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        if broke && still_following(&metrics.borrow()) && refuses(&network, leader, &node).await {
            info!(
                leader,
                term, "the leader's process is gone (its connection broke and its port refuses)"
            );
            contact.leader_gone(leader, term);
            // Nothing more to learn from this leader; wait for the next one.
            if metrics.wait_for(|m| !still_following(m)).await.is_err() {
                return;
            }
            continue;
        }
        tokio::time::sleep(REOPEN_PAUSE).await;
    }
}

/// Opens the line to `leader` and waits until it ends: `true` when it broke (a transport
/// error), `false` when the leader ended it or refused it (it no longer leads in `term`).
async fn hold_line(
    network: &PeerNetwork,
    me: NodeId,
    leader: NodeId,
    term: u64,
    node: &ReplicaNode,
) -> bool {
    let Ok(channel) = network.channel_to(leader, &node.peer_addr) else {
        // An address that cannot be dialled: never a verdict; wait for a change.
        std::future::pending::<()>().await;
        return false;
    };
    let Ok(call) = super::peer_request(node, &WatchLeaderRequest { follower: me, term }) else {
        std::future::pending::<()>().await;
        return false;
    };
    let mut stream = match RaftServiceClient::new(channel).watch_leader(call).await {
        Ok(reply) => reply.into_inner(),
        // A leader of a build without the line (a rolling upgrade): ask again now and then.
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            tokio::time::sleep(UNSUPPORTED_PAUSE).await;
            return false;
        }
        Err(status) => return broken(&status),
    };
    loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => return false,
            Err(status) => return broken(&status),
        }
    }
}

/// Whether `status` says the connection failed, rather than the leader answering.
fn broken(status: &tonic::Status) -> bool {
    let broke = matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    );
    debug!(code = ?status.code(), message = status.message(), broke, "the line to the leader ended");
    broke
}

/// Whether the leader's port refuses a fresh call now (its process is gone). A call it answers,
/// in any way, or one that times out (a paused process, a lost packet) says it is not.
async fn refuses(network: &PeerNetwork, leader: NodeId, node: &ReplicaNode) -> bool {
    // A connection of its own: the shared channel's state after a break says nothing.
    let Ok(channel) = network.fresh_channel_to(leader, &node.peer_addr) else {
        return false;
    };
    let mut call = tonic::Request::new(NodeStatusRequest {});
    call.set_timeout(PROBE_TIMEOUT);
    match tokio::time::timeout(
        PROBE_TIMEOUT,
        RaftServiceClient::new(channel).node_status(call),
    )
    .await
    {
        Ok(Err(status)) => status.code() == tonic::Code::Unavailable,
        Ok(Ok(_)) | Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transport_failures_break_the_line() {
        assert!(broken(&tonic::Status::unavailable("connection reset")));
        assert!(broken(&tonic::Status::unknown("h2 protocol error")));
        assert!(!broken(&tonic::Status::failed_precondition(
            "not the leader"
        )));
        assert!(!broken(&tonic::Status::permission_denied("not a replica")));
    }
}
