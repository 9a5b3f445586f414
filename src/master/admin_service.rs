//! AdminService: the cluster as this replica sees it, with every member asked for its own indexes.

use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::pb::raft::raft_service_client::RaftServiceClient;
use crate::pb::raft::{NodeStatusRequest, NodeStatusResponse};
use crate::pb::v1::admin_service_server::AdminService;
use crate::pb::v1::{ClusterStatusRequest, ClusterStatusResponse, ReplicaStatus};
use crate::raft::{PeerNetwork, Raft, RaftGrpcService, ReplicaNode};

const MEMBER_STATUS_TIMEOUT: Duration = Duration::from_millis(1500);

#[derive(Clone)]
pub struct AdminApi {
    raft: Raft,
    network: PeerNetwork,
    committed: std::sync::Arc<dyn Fn() -> Option<u64> + Send + Sync>,
}

impl AdminApi {
    pub fn new(
        raft: Raft,
        network: PeerNetwork,
        committed: std::sync::Arc<dyn Fn() -> Option<u64> + Send + Sync>,
    ) -> Self {
        AdminApi {
            raft,
            network,
            committed,
        }
    }

    async fn ask(&self, id: u64, node: &ReplicaNode) -> Result<NodeStatusResponse, String> {
        if id == self.raft.metrics().borrow().id {
            return Ok(RaftGrpcService::node_status(&self.raft, (self.committed)()));
        }
        let channel = self
            .network
            .channel(&node.peer_addr)
            .map_err(|e| e.to_string())?;
        let mut request = Request::new(NodeStatusRequest {});
        request.set_timeout(MEMBER_STATUS_TIMEOUT);
        let mut client = RaftServiceClient::new(channel);
        let call = client.node_status(request);
        match tokio::time::timeout(MEMBER_STATUS_TIMEOUT, call).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(format!("{}: {}", status.code(), status.message())),
            Err(_) => Err(format!("no answer within {MEMBER_STATUS_TIMEOUT:?}")),
        }
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn cluster_status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let members: Vec<(u64, ReplicaNode)> = membership
            .nodes()
            .map(|(id, node)| (*id, node.clone()))
            .collect();
        let answers =
            futures::future::join_all(members.iter().map(|(id, node)| self.ask(*id, node))).await;
        let replicas = members
            .iter()
            .zip(answers)
            .map(|((id, node), answer)| {
                let mut status = ReplicaStatus {
                    id: *id,
                    api_addr: node.api_addr.clone(),
                    peer_addr: node.peer_addr.clone(),
                    voter: voters.contains(id),
                    ..ReplicaStatus::default()
                };
                match answer {
                    Ok(own) => {
                        status.reachable = true;
                        status.role = own.role;
                        status.term = own.term;
                        status.leader_id = own.leader_id;
                        status.commit_index = own.commit_index;
                        status.applied_index = own.applied_index;
                        status.last_log_index = own.last_log_index;
                    }
                    Err(error) => {
                        status.role = "unreachable".into();
                        status.error = error;
                    }
                }
                status
            })
            .collect();
        let leader_api_addr = metrics
            .current_leader
            .and_then(|id| membership.get_node(&id).map(|node| node.api_addr.clone()))
            .unwrap_or_default();
        Ok(Response::new(ClusterStatusResponse {
            leader_id: metrics.current_leader,
            leader_api_addr,
            term: metrics.current_term,
            replicas,
            answered_by: metrics.id,
        }))
    }
}
