//! AdminService: the cluster as this replica sees it, with every member asked for its own
//! indexes, and the worker registry (list, enable, disable, drain, remove).

use std::time::Duration;

use tonic::{Request, Response, Status};
use tracing::info;

use super::authz::{authorize, Permission};
use super::handover::{HandoverError, Handovers};
use super::job_service::propose;
use super::proposer::{OnFollower, Proposer};
use super::reads::{ReadAnywhere, Reads};
use super::sightings::Sightings;
use crate::config::WorkerSettings;
use crate::pb::v1::{
    AddReplicaRequest, AddReplicaResponse, ListWorkersRequest, ListWorkersResponse,
    RemoveReplicaRequest, RemoveReplicaResponse, RemoveWorkerRequest, RemoveWorkerResponse,
    SetWorkerStateRequest, SetWorkerStateResponse, TransferLeaderRequest, TransferLeaderResponse,
    WorkerAction,
};
use crate::pb::{worker_id_from_pb, worker_to_pb};
use crate::queue::{Command, CommandOutput};
use crate::raft::SharedQueue;
use crate::rpc::contract::{from_queue_error, not_leader};
use crate::wall_time::now_ms;

use crate::pb::raft::raft_service_client::RaftServiceClient;
use crate::pb::raft::{NodeStatusRequest, NodeStatusResponse};
use crate::pb::v1::admin_service_server::AdminService;
use crate::pb::v1::{ClusterStatusRequest, ClusterStatusResponse, JobCounts, ReplicaStatus};
use crate::queue::{JobState, QueueState};
use crate::raft::{PeerNetwork, Raft, RaftGrpcService, ReplicaNode};

const MEMBER_STATUS_TIMEOUT: Duration = Duration::from_millis(1500);

#[derive(Clone)]
pub struct AdminApi {
    raft: Raft,
    reads: Reads,
    network: PeerNetwork,
    committed: std::sync::Arc<dyn Fn() -> Option<u64> + Send + Sync>,
    proposer: Proposer,
    handovers: Handovers,
    queue: SharedQueue,
    workers: WorkerSettings,
    /// What the leader heard from workers since its last `WorkersSeen`.
    sightings: Sightings,
    /// This replica's data dir storage id, for its own status.
    storage_id: uuid::Uuid,
    /// Where this replica's web console is (empty: none), for its own status.
    console_url: String,
}

impl AdminApi {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        raft: Raft,
        reads: Reads,
        network: PeerNetwork,
        committed: std::sync::Arc<dyn Fn() -> Option<u64> + Send + Sync>,
        proposer: Proposer,
        handovers: Handovers,
        queue: SharedQueue,
        workers: WorkerSettings,
        sightings: Sightings,
        storage_id: uuid::Uuid,
    ) -> Self {
        AdminApi {
            storage_id,
            sightings,
            raft,
            reads,
            network,
            committed,
            proposer,
            handovers,
            queue,
            workers,
            console_url: String::new(),
        }
    }

    /// Names this replica's web console in its own status.
    pub fn with_console_url(mut self, url: String) -> Self {
        self.console_url = url;
        self
    }

    async fn ask(&self, id: u64, node: &ReplicaNode) -> Result<NodeStatusResponse, String> {
        if id == self.raft.metrics().borrow().id {
            return Ok(RaftGrpcService::node_status(
                &self.raft,
                (self.committed)(),
                self.storage_id,
                &self.console_url,
            ));
        }
        let channel = self
            .network
            .channel_to(id, &node.peer_addr)
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

/// The queue's jobs by state, one field per state.
fn job_counts(queue: &QueueState) -> JobCounts {
    let mut counts = JobCounts::default();
    for state in JobState::ALL {
        let count = queue.jobs_in(state);
        // A match rather than a table: a new state fails to compile here until it has a field.
        match state {
            JobState::Queued => counts.queued = count,
            JobState::PickedUp => counts.picked_up = count,
            JobState::Running => counts.running = count,
            JobState::Succeeded => counts.succeeded = count,
            JobState::Failed => counts.failed = count,
            JobState::Cancelled => counts.cancelled = count,
        }
    }
    counts
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn cluster_status(
        &self,
        request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        authorize(&request, "AdminService.ClusterStatus", Permission::Operate)?;
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
                        status.version = own.version;
                        status.console_url = own.console_url;
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
        let (outbox_events, meta, job_counts) = {
            let queue = self
                .queue
                .read()
                .map_err(|_| Status::internal("the queue lock is poisoned; restart the replica"))?;
            (
                queue.outbox_len() as u64,
                queue.outbox_meta().clone(),
                job_counts(&queue),
            )
        };
        Ok(Response::new(ClusterStatusResponse {
            leader_id: metrics.current_leader,
            leader_api_addr,
            term: metrics.current_term,
            replicas,
            answered_by: metrics.id,
            outbox_events,
            outbox_shipped_up_to: meta.acked_up_to,
            outbox_dropped_log_events: meta.dropped_log_events,
            job_counts: Some(job_counts),
        }))
    }

    async fn list_workers(
        &self,
        request: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersResponse>, Status> {
        authorize(&request, "AdminService.ListWorkers", Permission::Operate)?;
        let anywhere = ReadAnywhere::asked(&request);
        let stale = request.into_inner().stale;
        if !stale {
            self.reads.linearizable_anywhere(anywhere).await?;
        }
        let now = now_ms();
        let offline_after = self.workers.offline_after_ms;
        let queue = self.queue.read().unwrap_or_else(|p| p.into_inner());
        // A linearizable list comes from the leader, which also knows the sightings it has not
        // committed yet; a stale one shows this replica's state as it is.
        let workers = queue
            .workers()
            .map(|w| match stale {
                true => worker_to_pb(w, now, offline_after),
                false => worker_to_pb(&self.sightings.overlay(w), now, offline_after),
            })
            .collect();
        Ok(Response::new(ListWorkersResponse { workers }))
    }

    async fn set_worker_state(
        &self,
        request: Request<SetWorkerStateRequest>,
    ) -> Result<Response<SetWorkerStateResponse>, Status> {
        authorize(
            &request,
            "AdminService.SetWorkerState",
            Permission::Administer,
        )?;
        let on_follower = OnFollower::asked_in(request.metadata());
        let request = request.into_inner();
        let worker = worker_id_from_pb(&request.worker_id).map_err(|e| from_queue_error(&e))?;
        let (enabled, draining) = match WorkerAction::try_from(request.action) {
            Ok(WorkerAction::Enable) => (Some(true), Some(false)),
            Ok(WorkerAction::Disable) => (Some(false), None),
            Ok(WorkerAction::Drain) => (None, Some(true)),
            _ => {
                return Err(Status::invalid_argument(
                    "action must be enable, disable or drain",
                ))
            }
        };
        match propose(
            &self.proposer,
            Command::SetWorkerState {
                worker,
                enabled,
                draining,
            },
            on_follower,
        )
        .await?
        {
            CommandOutput::WorkerUpdated { worker: updated } => {
                info!(%worker, enabled = updated.enabled, draining = updated.draining, "worker state changed");
                Ok(Response::new(SetWorkerStateResponse {
                    worker: Some(worker_to_pb(
                        &updated,
                        now_ms(),
                        self.workers.offline_after_ms,
                    )),
                }))
            }
            other => Err(Status::internal(format!("unexpected output {other:?}"))),
        }
    }

    async fn remove_worker(
        &self,
        request: Request<RemoveWorkerRequest>,
    ) -> Result<Response<RemoveWorkerResponse>, Status> {
        authorize(
            &request,
            "AdminService.RemoveWorker",
            Permission::Administer,
        )?;
        let on_follower = OnFollower::asked_in(request.metadata());
        let worker =
            worker_id_from_pb(&request.into_inner().worker_id).map_err(|e| from_queue_error(&e))?;
        match propose(
            &self.proposer,
            Command::RemoveWorker { worker },
            on_follower,
        )
        .await?
        {
            CommandOutput::WorkerRemoved => {
                info!(%worker, "worker removed");
                Ok(Response::new(RemoveWorkerResponse {}))
            }
            other => Err(Status::internal(format!("unexpected output {other:?}"))),
        }
    }

    async fn add_replica(
        &self,
        request: Request<AddReplicaRequest>,
    ) -> Result<Response<AddReplicaResponse>, Status> {
        authorize(&request, "AdminService.AddReplica", Permission::Administer)?;
        let request = request.into_inner();
        let catch_up = match request.catch_up_timeout_ms {
            0 => super::membership::DEFAULT_CATCH_UP,
            ms => Duration::from_millis(u64::from(ms)),
        };
        // Membership entries go around the proposer: they too wait while a hand-over runs.
        let _open = self.proposer.open().await;
        let changed = super::membership::add_replica(
            &self.raft,
            &self.network,
            request.id,
            ReplicaNode {
                api_addr: request.api_addr,
                peer_addr: request.peer_addr,
                // Read from the replica itself before it is added.
                storage_id: None,
            },
            catch_up,
        )
        .await?;
        Ok(Response::new(AddReplicaResponse {
            voters: changed.voters,
            log_index: changed.log_index,
        }))
    }

    async fn remove_replica(
        &self,
        request: Request<RemoveReplicaRequest>,
    ) -> Result<Response<RemoveReplicaResponse>, Status> {
        authorize(
            &request,
            "AdminService.RemoveReplica",
            Permission::Administer,
        )?;
        let _open = self.proposer.open().await;
        let changed =
            super::membership::remove_replica(&self.raft, request.into_inner().id).await?;
        Ok(Response::new(RemoveReplicaResponse {
            voters: changed.voters,
            log_index: changed.log_index,
        }))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        authorize(
            &request,
            "AdminService.TransferLeader",
            Permission::Administer,
        )?;
        let from = self.raft.metrics().borrow().id;
        let handed = self
            .handovers
            .hand_over(request.into_inner().to)
            .await
            .map_err(|error| match error {
                HandoverError::NotLeader { leader_id, leader } => {
                    not_leader(leader_id, leader.as_ref())
                }
                // Not retried by the call loop: a hand-over is not idempotent (a retry that
                // reaches the new leader would hand leadership on again).
                HandoverError::NotAVoter(_)
                | HandoverError::NoOtherVoter
                | HandoverError::NoLiveVoter
                | HandoverError::MembershipChanging
                | HandoverError::Busy(_)
                | HandoverError::TargetBehind { .. }
                | HandoverError::Refused { .. }
                | HandoverError::NoNewLeader { .. } => {
                    Status::failed_precondition(error.to_string())
                }
            })?;
        Ok(Response::new(TransferLeaderResponse {
            from,
            leader_id: handed.leader_id,
            leader_addr: handed.leader.map(|node| node.api_addr).unwrap_or_default(),
            term: handed.term,
            elapsed_ms: handed.elapsed.as_millis() as u64,
        }))
    }
}
