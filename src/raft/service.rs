//! The Raft transport's server side, on the `peer` listener: decodes openraft messages, hands
//! them to the local node, and answers with openraft's result encoded the same way.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::election::LeaderContact;
use super::Raft;
use crate::pb::raft::raft_service_server::RaftService;
use crate::pb::raft::{NodeStatusRequest, NodeStatusResponse, RaftPayload};

/// Serves one replica's Raft node to its peers.
#[derive(Clone)]
pub struct RaftGrpcService {
    raft: Raft,
    /// Reads the durable commit index, which openraft's metrics do not carry.
    committed: std::sync::Arc<dyn Fn() -> Option<u64> + Send + Sync>,
    /// Restarted by every message from a leader and every vote granted (the election driver
    /// waits on it).
    contact: std::sync::Arc<LeaderContact>,
}

impl RaftGrpcService {
    pub fn new(
        raft: Raft,
        committed: std::sync::Arc<dyn Fn() -> Option<u64> + Send + Sync>,
        contact: std::sync::Arc<LeaderContact>,
    ) -> Self {
        RaftGrpcService {
            raft,
            committed,
            contact,
        }
    }

    /// This replica's own view of the cluster, for `cluster status`.
    pub fn node_status(raft: &Raft, committed: Option<u64>) -> NodeStatusResponse {
        let metrics = raft.metrics().borrow().clone();
        NodeStatusResponse {
            id: metrics.id,
            role: role_name(metrics.state).to_string(),
            term: metrics.current_term,
            leader_id: metrics.current_leader,
            commit_index: committed,
            applied_index: metrics.last_applied.map(|id| id.index),
            last_log_index: metrics.last_log_index,
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

#[tonic::async_trait]
impl RaftService for RaftGrpcService {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(request)?;
        // On arrival too: on a loaded machine the append may wait for a flush, and the
        // election driver must not stand against a leader that is talking to it.
        self.contact.touch();
        let result = self.raft.append_entries(rpc).await;
        if matches!(&result, Ok(reply) if !matches!(reply, openraft::raft::AppendEntriesResponse::HigherVote(_)))
        {
            self.contact.touch();
        }
        encode(&result)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(request)?;
        let result = self.raft.vote(rpc).await;
        if matches!(&result, Ok(reply) if reply.vote_granted) {
            self.contact.touch();
        }
        encode(&result)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: openraft::raft::InstallSnapshotRequest<super::TypeConfig> = decode(request)?;
        let sender = rpc.vote;
        self.contact.touch();
        let result = self.raft.install_snapshot(rpc).await;
        if matches!(&result, Ok(reply) if reply.vote == sender) {
            self.contact.touch();
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
        )))
    }
}
