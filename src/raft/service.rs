//! The Raft transport's server side, on the `peer` listener: decodes openraft messages, hands
//! them to the local node, and answers with openraft's result encoded the same way.

use std::time::Duration;

use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::admission::{Admission, STORAGE_ID_HEADER};
use super::election::LeaderContact;
use super::handover::{self, Handover, TargetView, TimeoutNowReply, TimeoutNowRequest};
use super::leader_watch::{self, WatchLeaderRequest};
use super::lease::{self, LeaderTerm, VoterLease};
use super::pre_vote::{self, PreVoteRequest, VoterView};
use super::{NodeId, Raft};
use crate::pb::raft::raft_service_server::RaftService;
use crate::pb::raft::{Member, NodeStatusRequest, NodeStatusResponse, RaftPayload};

/// Serves one replica's Raft node to its peers.
#[derive(Clone)]
pub struct RaftGrpcService {
    raft: Raft,
    /// Reads the durable commit index, which openraft's metrics do not carry.
    committed: std::sync::Arc<dyn Fn() -> Option<u64> + Send + Sync>,
    /// Restarted by every message from a leader and every vote granted (the election driver
    /// waits on it).
    contact: std::sync::Arc<LeaderContact>,
    /// Who this replica is: messages meant for another data dir are refused.
    admission: Admission,
    /// The leader lease: pre-votes and votes are refused while it runs (`lease.rs`).
    lease: Duration,
    /// openraft's own, shorter lease (`lease::openraft_timeouts`).
    openraft_lease: Duration,
    /// Hand-overs to and from this replica.
    handover: std::sync::Arc<Handover>,
    /// Turns true when the replica stops: the leader lines end (a graceful stop waits for the
    /// calls in flight). `None`: they end only when this replica stops leading.
    stopping: Option<tokio::sync::watch::Receiver<bool>>,
    /// Where this replica's web console is (empty: none), for `cluster status`.
    console_url: String,
}

impl RaftGrpcService {
    pub fn new(
        raft: Raft,
        committed: std::sync::Arc<dyn Fn() -> Option<u64> + Send + Sync>,
        contact: std::sync::Arc<LeaderContact>,
        admission: Admission,
        lease: Duration,
        openraft_lease: Duration,
        handover: std::sync::Arc<Handover>,
    ) -> Self {
        RaftGrpcService {
            raft,
            committed,
            contact,
            admission,
            lease,
            openraft_lease,
            handover,
            stopping: None,
            console_url: String::new(),
        }
    }

    /// Names this replica's web console in its status.
    pub fn with_console_url(mut self, url: String) -> Self {
        self.console_url = url;
        self
    }

    /// Ends the leader lines when `stopping` turns true.
    pub fn ending_lines_on(mut self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stopping = Some(stopping);
        self
    }

    /// Why this replica will not consider `candidate`'s vote now (the leader lease), if so.
    fn lease_refusal(&self, candidate: NodeId, ticket: Option<LeaderTerm>) -> Option<String> {
        let view = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let leading = m.state == openraft::ServerState::Leader;
            VoterLease {
                leading,
                leader: m.current_leader,
                term: m.current_term,
                since_leader: if leading {
                    Duration::ZERO
                } else {
                    self.contact.since_leader()
                },
                lease: self.lease,
                handing_over_to_candidate: leading && self.handover.hands_over_to(candidate),
                leader_gone: self.contact.leader_lost(&m),
            }
        };
        lease::refusal(&view, candidate, ticket)
    }

    /// Takes over from the leader that sent `request`: stands for election at once.
    async fn take_over(&self, request: &TimeoutNowRequest) -> Result<(), String> {
        let (view, membership) = {
            let m = self.raft.metrics().borrow().clone();
            let membership = m.membership_config.membership().clone();
            let view = TargetView {
                me: m.id,
                following: m.state == openraft::ServerState::Follower,
                may_vote: self.admission.may_grant_vote(&membership),
                leader: m.current_leader,
                term: m.current_term,
            };
            (view, membership)
        };
        let ticket = handover::accept(&view, request)?;
        self.handover.hold(ticket);
        // The ticket waives our lease, not openraft's (about one heartbeat since the leader's
        // last message): with more voters than this replica and the leader can make a
        // majority, the others must be past it.
        if lease::successor_needs_a_follower(membership.voter_ids().count()) {
            let wait =
                (self.openraft_lease + lease::MARGIN).saturating_sub(self.contact.since_leader());
            tokio::time::sleep(wait).await;
        }
        tracing::info!(
            from = request.leader,
            term = request.term,
            "the leader hands leadership over to this replica; standing for election"
        );
        self.contact.touch();
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|fatal| format!("its Raft node stopped: {fatal}"))
    }

    /// Refuses a message meant for another data dir than this one.
    fn check_addressee<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let expected = request
            .metadata()
            .get(STORAGE_ID_HEADER)
            .and_then(|value| value.to_str().ok());
        self.admission
            .check_expected(expected)
            .map_err(Status::failed_precondition)
    }

    /// Whether a message comes from a committed leader whose term is at least the newest this
    /// replica knows (the check openraft makes again when it handles the message).
    fn sent_by_current_leader(&self, sender: &openraft::Vote<super::NodeId>) -> bool {
        let known = self.raft.metrics().borrow().vote;
        sender.is_committed() && sender.leader_id().term >= known.leader_id().term
    }

    /// This replica's own view of the cluster, for `cluster status` and bootstrap.
    pub fn node_status(
        raft: &Raft,
        committed: Option<u64>,
        storage_id: uuid::Uuid,
        console_url: &str,
    ) -> NodeStatusResponse {
        let metrics = raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let members = membership
            .nodes()
            .map(|(id, node)| Member {
                id: *id,
                api_addr: node.api_addr.clone(),
                peer_addr: node.peer_addr.clone(),
                storage_id: node.storage_id.map(|s| s.to_string()).unwrap_or_default(),
                voter: membership.voter_ids().any(|voter| voter == *id),
            })
            .collect();
        NodeStatusResponse {
            storage_id: storage_id.to_string(),
            members,
            id: metrics.id,
            role: role_name(metrics.state).to_string(),
            term: metrics.current_term,
            leader_id: metrics.current_leader,
            commit_index: committed,
            applied_index: metrics.last_applied.map(|id| id.index),
            last_log_index: metrics.last_log_index,
            version: env!("CARGO_PKG_VERSION").to_string(),
            console_url: console_url.to_string(),
        }
    }
}

pub fn role_name(state: openraft::ServerState) -> &'static str {
    match state {
        openraft::ServerState::Leader => "leader",
        openraft::ServerState::Follower => "follower",
        openraft::ServerState::Candidate => "candidate",
        openraft::ServerState::Learner => "learner",
        openraft::ServerState::Shutdown => "shutdown",
    }
}

fn decode<T: DeserializeOwned>(request: Request<RaftPayload>) -> Result<T, Status> {
    bincode::deserialize(&request.into_inner().data).map_err(|e| {
        Status::invalid_argument(format!(
            "cannot decode the raft message: {e}; are both replicas running the same version?"
        ))
    })
}

fn encode<T: Serialize>(reply: &T) -> Result<Response<RaftPayload>, Status> {
    bincode::serialize(reply)
        .map(|data| Response::new(RaftPayload { data }))
        .map_err(|e| Status::internal(format!("cannot encode the raft reply: {e}")))
}

/// The line a follower holds open to its leader (`leader_watch.rs`).
type LeaderLine =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftPayload, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RaftService for RaftGrpcService {
    type WatchLeaderStream = LeaderLine;

    async fn watch_leader(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<LeaderLine>, Status> {
        self.check_addressee(&request)?;
        let asked: WatchLeaderRequest = decode(request)?;
        let mut metrics = self.raft.metrics();
        let leads = move |m: &openraft::RaftMetrics<NodeId, super::ReplicaNode>| {
            m.state == openraft::ServerState::Leader && m.current_term == asked.term
        };
        if !leads(&metrics.borrow()) {
            return Err(Status::failed_precondition(format!(
                "this replica does not lead in term {}",
                asked.term
            )));
        }
        // Sends nothing; ends once this replica no longer leads in that term, or stops.
        let stopping = self.stopping.clone();
        let line = futures::stream::once(async move {
            let stopped = async move {
                match stopping {
                    Some(mut stopping) => {
                        let _ = stopping.wait_for(|stop| *stop).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = metrics.wait_for(|m| !leads(m)) => {}
                () = stopped => {}
            }
            None
        })
        .filter_map(|end: Option<Result<RaftPayload, Status>>| async move { end });
        Ok(Response::new(Box::pin(line)))
    }

    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        // Undecodable garbage is reported as such first; then the addressee is checked.
        let addressee = self.check_addressee(&request);
        let rpc: openraft::raft::AppendEntriesRequest<super::TypeConfig> = decode(request)?;
        addressee?;
        // On arrival too (on a loaded machine the append may wait for a flush, and the election
        // driver must not stand against a leader that is talking to it), but only from a
        // leader of the newest term this replica knows: a deposed leader's late append is no
        // contact with a leader.
        if self.sent_by_current_leader(&rpc.vote) {
            self.contact.heard_leader();
        }
        let result = self.raft.append_entries(rpc).await;
        if matches!(&result, Ok(reply) if !matches!(reply, openraft::raft::AppendEntriesResponse::HigherVote(_)))
        {
            self.contact.heard_leader();
        }
        encode(&result)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.check_addressee(&request)?;
        let may_vote = self
            .admission
            .may_grant_vote(self.raft.metrics().borrow().membership_config.membership());
        if !may_vote {
            return Err(Status::failed_precondition(format!(
                "replica {} does not vote: the membership it holds does not list it as a voter \
                 with its data dir (storage id {}); a pristine or wiped replica votes only once \
                 the cluster has added it",
                self.admission.node_id, self.admission.storage_id
            )));
        }
        let ticket = LeaderTerm::from_metadata(request.metadata(), handover::HANDOVER_HEADER);
        let rpc: openraft::raft::VoteRequest<NodeId> = decode(request)?;
        if let Some(candidate) = rpc.vote.leader_id().voted_for() {
            if let Some(reason) = self.lease_refusal(candidate, ticket) {
                tracing::debug!(candidate, %reason, "vote refused");
                let refused: Result<_, openraft::error::RaftError<NodeId>> =
                    Ok(openraft::raft::VoteResponse {
                        vote: self.raft.metrics().borrow().vote,
                        vote_granted: false,
                        last_log_id: self.raft.data_metrics().borrow().last_log,
                    });
                return encode(&refused);
            }
        }
        let result = self.raft.vote(rpc).await;
        if matches!(&result, Ok(reply) if reply.vote_granted) {
            self.contact.touch();
        }
        encode(&result)
    }

    async fn pre_vote(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check_addressee(&request)?;
        let claimed_gone =
            LeaderTerm::from_metadata(request.metadata(), leader_watch::LEADER_GONE_HEADER)
                .map(|gone| (gone.leader, gone.term));
        let asked: PreVoteRequest = decode(request)?;
        let metrics = self.raft.metrics().borrow().clone();
        let mine = metrics
            .current_leader
            .map(|leader| (leader, metrics.current_term));
        let since_leader = self.contact.since_leader();
        // The candidate saw our leader's process go: our own line to it should break too, a
        // moment later if not yet. Only our own view counts.
        let leader_gone = match mine {
            _ if self.contact.leader_lost(&metrics) => true,
            Some((leader, term)) if claimed_gone == mine && since_leader < self.lease => {
                self.contact
                    .wait_gone(leader, term, leader_watch::GONE_GRACE)
                    .await
            }
            _ => false,
        };
        let view = VoterView {
            leading: metrics.state == openraft::ServerState::Leader,
            may_vote: self
                .admission
                .may_grant_vote(metrics.membership_config.membership()),
            since_leader: self.contact.since_leader(),
            lease: self.lease,
            leader_gone,
            last_log_id: self.raft.data_metrics().borrow().last_log,
        };
        // Grants nothing and changes nothing: the contact is not restarted either.
        let reply = pre_vote::decide(&view, &asked);
        tracing::debug!(
            candidate = asked.candidate,
            granted = reply.granted,
            reason = %reply.reason,
            "pre-vote asked"
        );
        encode(&reply)
    }

    async fn timeout_now(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check_addressee(&request)?;
        let asked: TimeoutNowRequest = decode(request)?;
        let reply = match self.take_over(&asked).await {
            Ok(()) => TimeoutNowReply {
                accepted: true,
                reason: String::new(),
            },
            Err(reason) => {
                tracing::info!(from = asked.leader, term = asked.term, %reason, "hand-over refused");
                TimeoutNowReply {
                    accepted: false,
                    reason,
                }
            }
        };
        encode(&reply)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let addressee = self.check_addressee(&request);
        let rpc: openraft::raft::InstallSnapshotRequest<super::TypeConfig> = decode(request)?;
        addressee?;
        let sender = rpc.vote;
        if self.sent_by_current_leader(&sender) {
            self.contact.heard_leader();
        }
        let result = self.raft.install_snapshot(rpc).await;
        if matches!(&result, Ok(reply) if reply.vote == sender) {
            self.contact.heard_leader();
        }
        encode(&result)
    }

    async fn node_status(
        &self,
        _request: Request<NodeStatusRequest>,
    ) -> Result<Response<NodeStatusResponse>, Status> {
        Ok(Response::new(Self::node_status(
            &self.raft,
            (self.committed)(),
            self.admission.storage_id,
            &self.console_url,
        )))
    }
}
