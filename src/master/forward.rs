//! Write forwarding: a follower carries an API caller's command to the leader over the peer
//! network instead of sending the caller away. A write that reaches any replica is committed
//! while the replicas have a leader and hear it, even when the caller cannot reach that leader
//! itself (its API port cut off, a firewall between the caller and one host).
//!
//! The follower's side is [`Forwarder`]: it sends the encoded command to the replica it follows
//! and waits for the answer, but not past that leader's reign. Once its own view names another
//! leader (or saw this one go), the outcome is unknown and the caller is told so; it retries with
//! the same request, as it would after any lost answer (every command the API takes is safe to
//! repeat: idempotency keys, lease tokens, request ids). The leader's side is [`ForwardApi`]: it
//! proposes the command as if an API call had brought it, and never forwards again, so a command
//! makes one hop per call (the proposer may send it on when a leader answers NOT_LEADER, which
//! means it proposed nothing).

use std::sync::Arc;
use std::time::Duration;

use metrics::Counter;
use tonic::{Request, Response, Status};

use super::proposer::{ProposeError, Proposer};
use super::reads::Reads;
use crate::ops::Registry;
use crate::pb::raft::forward_service_client::ForwardServiceClient;
use crate::pb::raft::forward_service_server::ForwardService;
use crate::pb::raft::{RaftPayload, ReadIndexRequest, ReadIndexResponse};
use crate::queue::{Command, CommandResult};
use crate::raft::election::LeaderContact;
use crate::raft::{peer_request, NodeId, PeerNetwork, Raft, ReplicaNode};
use crate::rpc::contract::describe;

/// What the leader answers a forwarded command with: the command's result, and how far the
/// leader had applied its log when it answered.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ForwardedAnswer {
    result: Result<CommandResult, ProposeError>,
    applied_index: Option<u64>,
}

/// How long a follower waits to apply as far as the leader had when it answered, before it
/// answers its caller: long enough for the next append to bring the commit (a few heartbeats),
/// short of holding a write whose result is known for a follower that lags.
const APPLY_WAIT: Duration = Duration::from_secs(1);

/// The follower's side: carries commands to the leader it follows.
#[derive(Clone)]
pub struct Forwarder {
    raft: Raft,
    network: PeerNetwork,
    contact: Arc<LeaderContact>,
    max_message_bytes: usize,
    /// The longest a forwarded command waits for its answer (the proposer's commit timeout).
    answer_within: Duration,
    metrics: ForwardMetrics,
}

/// How forwarding went, for the operator.
#[derive(Clone)]
struct ForwardMetrics {
    /// Commands this replica sent to a leader, by how it ended.
    answered: Counter,
    refused: Counter,
    unknown: Counter,
}

impl ForwardMetrics {
    fn new(registry: &Registry) -> Self {
        let counter = |outcome| {
            registry.counter(
                "scaleout_forwarded_commands_total",
                "Commands this replica forwarded to the leader, by outcome: answered (the \
                 leader's result), refused (it did not lead: sent on or redirected), unknown \
                 (no answer before its reign ended or the timeout: the caller retries).",
                &[("outcome", outcome)],
            )
        };
        ForwardMetrics {
            answered: counter("answered"),
            refused: counter("refused"),
            unknown: counter("unknown"),
        }
    }
}

impl Forwarder {
    pub fn new(
        raft: Raft,
        network: PeerNetwork,
        contact: Arc<LeaderContact>,
        max_message_bytes: usize,
        answer_within: Duration,
        registry: &Registry,
    ) -> Self {
        Forwarder {
            raft,
            network,
            contact,
            max_message_bytes,
            answer_within,
            metrics: ForwardMetrics::new(registry),
        }
    }

    /// Sends `command` to `leader` (the member `node`) and returns its answer once this replica
    /// has applied as far as the leader had (what the caller reads here next includes its
    /// write; bounded by [`APPLY_WAIT`]). A NOT_LEADER answer means it proposed nothing; any
    /// other failure leaves the outcome unknown.
    pub async fn forward(
        &self,
        leader: NodeId,
        node: &ReplicaNode,
        command: &Command,
    ) -> Result<CommandResult, ProposeError> {
        let answer = self.send(leader, node, command).await;
        match &answer {
            Ok(_) => self.metrics.answered.increment(1),
            Err(ProposeError::NotLeader { .. }) => self.metrics.refused.increment(1),
            Err(error) => {
                self.metrics.unknown.increment(1);
                tracing::debug!(leader, %error, "forwarded command without an answer");
            }
        }
        answer
    }

    async fn send(
        &self,
        leader: NodeId,
        node: &ReplicaNode,
        command: &Command,
    ) -> Result<CommandResult, ProposeError> {
        let unknown = |why: String| {
            ProposeError::Raft(format!(
                "forwarded to the leader, replica {leader}, which {why}; the outcome is unknown"
            ))
        };
        let mut request = peer_request(node, command)
            .map_err(|e| ProposeError::Raft(format!("cannot forward the command: {e}")))?;
        request.set_timeout(self.answer_within);
        let channel = self
            .network
            .channel_to(leader, &node.peer_addr)
            .map_err(|e| {
                ProposeError::Raft(format!(
                    "cannot forward the command to the leader, replica {leader} at {}: {e}",
                    node.peer_addr
                ))
            })?;
        let mut client = ForwardServiceClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes);
        let reply = tokio::select! {
            reply = client.propose(request) => reply,
            () = self.reign_ends(leader) => {
                return Err(unknown("stopped leading before it answered".into()));
            }
            () = tokio::time::sleep(self.answer_within) => {
                return Err(unknown(format!("did not answer within {:?}", self.answer_within)));
            }
        };
        let payload = reply
            .map_err(|status| unknown(format!("could not be reached ({})", describe(&status))))?
            .into_inner();
        let answer: ForwardedAnswer = bincode::deserialize(&payload.data)
            .map_err(|e| unknown(format!("sent an answer that cannot be decoded ({e})")))?;
        if answer.result.is_ok() && answer.applied_index.is_some() {
            let caught_up = self
                .raft
                .wait(Some(APPLY_WAIT))
                .applied_index_at_least(answer.applied_index, "applied the forwarded write")
                .await;
            if caught_up.is_err() {
                tracing::debug!(
                    leader,
                    applied_index = answer.applied_index,
                    "answering a forwarded write before this replica applied it"
                );
            }
        }
        answer.result.map_err(|error| match error {
            // Nothing was proposed: the proposer may send it on.
            refused @ ProposeError::NotLeader { .. } => refused,
            ProposeError::CutOff { silent_ms } => unknown(format!(
                "has heard from no majority for {silent_ms} ms (it is cut off)"
            )),
            ProposeError::ShuttingDown => unknown("is shutting down".into()),
            ProposeError::Raft(message) => ProposeError::Raft(format!(
                "forwarded to the leader, replica {leader}: {message}"
            )),
        })
    }

    /// The leader this replica follows, when it is another replica it has not seen go.
    pub fn leader_elsewhere(&self) -> Option<(NodeId, ReplicaNode)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.state == openraft::ServerState::Leader || self.contact.leader_lost(&m) {
            return None;
        }
        let leader = m.current_leader.filter(|id| *id != m.id)?;
        let node = m.membership_config.membership().get_node(&leader)?.clone();
        Some((leader, node))
    }

    /// Asks `leader` how far a linearizable read must see: it confirms with a quorum that it
    /// still leads and answers the index it has applied, which holds every write acknowledged
    /// before the call.
    pub async fn read_index(
        &self,
        leader: NodeId,
        node: &ReplicaNode,
        within: Duration,
    ) -> Result<u64, Status> {
        let mut request = Request::new(ReadIndexRequest {});
        request.set_timeout(within);
        let channel = self
            .network
            .channel_to(leader, &node.peer_addr)
            .map_err(|e| {
                Status::unavailable(format!(
                    "cannot reach the leader, replica {leader} at {}: {e}",
                    node.peer_addr
                ))
            })?;
        let mut client = ForwardServiceClient::new(channel);
        let reply = tokio::select! {
            reply = client.read_index(request) => reply,
            () = self.reign_ends(leader) => {
                return Err(Status::unavailable(format!(
                    "replica {leader} stopped leading while confirming the read; retry"
                )));
            }
        };
        reply
            .map(|reply| reply.into_inner().applied_index)
            .map_err(|status| {
                Status::new(
                    status.code(),
                    format!(
                        "the leader, replica {leader}, could not confirm the read: {}",
                        describe(&status)
                    ),
                )
            })
    }

    /// Resolves when this replica no longer follows `leader`: another is named, none is, or
    /// this one saw it go.
    async fn reign_ends(&self, leader: NodeId) {
        let mut metrics = self.raft.metrics();
        loop {
            {
                let m = metrics.borrow_and_update();
                if m.current_leader != Some(leader) || self.contact.leader_lost(&m) {
                    return;
                }
            }
            if metrics.changed().await.is_err() {
                // The Raft node stopped: this replica follows no one.
                return;
            }
        }
    }
}

/// The leader's side, on the peer listener: proposes what a follower forwarded.
#[derive(Clone)]
pub struct ForwardApi {
    proposer: Proposer,
    raft: Raft,
    reads: Reads,
}

impl ForwardApi {
    pub fn new(proposer: Proposer, raft: Raft, reads: Reads) -> Self {
        ForwardApi {
            proposer,
            raft,
            reads,
        }
    }

    fn applied_index(&self) -> Option<u64> {
        self.raft
            .metrics()
            .borrow()
            .last_applied
            .map(|log_id| log_id.index)
    }
}

#[tonic::async_trait]
impl ForwardService for ForwardApi {
    async fn propose(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let command: Command = bincode::deserialize(&request.get_ref().data).map_err(|e| {
            Status::invalid_argument(format!(
                "the forwarded command cannot be decoded ({e}); do both replicas run the same \
                 version of scaleout?"
            ))
        })?;
        let result = self.proposer.propose_here(command).await;
        let applied_index = self.applied_index();
        let answer = ForwardedAnswer {
            result,
            applied_index,
        };
        let data = bincode::serialize(&answer)
            .map_err(|e| Status::internal(format!("cannot encode the command's result: {e}")))?;
        Ok(Response::new(RaftPayload { data }))
    }

    async fn read_index(
        &self,
        _request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        // Only the leader's own confirmation counts: a follower asked this refuses (the asker
        // learns of the new leader and asks it), never forwards.
        self.reads.linearizable().await?;
        Ok(Response::new(ReadIndexResponse {
            applied_index: self.applied_index().unwrap_or(0),
        }))
    }
}
