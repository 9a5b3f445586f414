//! JobService: submit, get, list and cancel jobs.
//!
//! Writes go through the [`Proposer`]; reads are linearizable (a ReadIndex round through
//! `ensure_linearizable`, and this replica in office: `reads.rs`) unless the caller asks for `stale`, which reads this replica's own state
//! and is the only thing a follower answers itself.

use openraft::error::{CheckIsLeaderError, RaftError};
use tonic::{Request, Response, Status};
use tracing::info;

use super::authz::{authorize, Permission};
use super::proposer::{OnFollower, ProposeError, Proposer};
use super::reads::{ReadAnywhere, Reads};
use crate::pb::v1::job_service_server::JobService;
use crate::pb::v1::{
    CancelJobRequest, CancelJobResponse, GetJobLogsRequest, GetJobLogsResponse, GetJobRequest,
    GetJobResponse, ListJobsRequest, ListJobsResponse, SubmitJobRequest, SubmitJobResponse,
};
use crate::pb::{spec_from_pb, state_from_pb};
use crate::queue::{Command, CommandOutput, JobFilter, QueueError, QueueState, MAX_PAGE_SIZE};
use crate::raft::{JobReadError, JobReader, LogReader, NodeId, ReplicaNode, SharedQueue};
use crate::rpc::contract::{cut_off_leader, from_queue_error, not_leader};

#[derive(Clone)]
pub struct JobApi {
    reads: Reads,
    proposer: Proposer,
    queue: SharedQueue,
    jobs: JobReader,
    logs: LogReader,
    /// Replies are kept under this size (half the message limit: room for framing).
    max_reply_bytes: usize,
}

impl JobApi {
    pub fn new(
        reads: Reads,
        proposer: Proposer,
        queue: SharedQueue,
        jobs: JobReader,
        logs: LogReader,
        max_message_bytes: usize,
    ) -> Self {
        JobApi {
            reads,
            proposer,
            queue,
            jobs,
            logs,
            max_reply_bytes: max_message_bytes / 2,
        }
    }

    /// Waits until this replica may answer a read: for a linearizable one, until it has applied
    /// everything committed when the read arrived, as confirmed by a quorum.
    /// `anywhere`: the caller cannot follow a redirect ([`ReadAnywhere`]).
    async fn read_barrier(&self, stale: bool, anywhere: bool) -> Result<(), Status> {
        if stale {
            if self.with_queue(QueueState::is_placeholder) {
                return Err(Status::unavailable(
                    "this replica is installing a snapshot from the leader and has no state to \
                     read yet; read without --stale, or from another replica",
                ));
            }
            return Ok(());
        }
        self.reads.linearizable_anywhere(anywhere).await
    }

    fn with_queue<T>(&self, read: impl FnOnce(&QueueState) -> T) -> T {
        let queue = self
            .queue
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        read(&queue)
    }
}

/// The status for a job that could not be read.
fn job_read_status(error: JobReadError) -> Status {
    match error {
        JobReadError::Missing(e) => from_queue_error(&e),
        other => Status::internal(other.to_string()),
    }
}

/// Proposes a command for an API call: its output, or the status the caller gets.
pub async fn propose(
    proposer: &Proposer,
    command: Command,
    on_follower: OnFollower,
) -> Result<CommandOutput, Status> {
    match proposer.propose(command, on_follower).await {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(rejection)) => Err(from_queue_error(&rejection)),
        Err(error) => Err(propose_error_status(error)),
    }
}

pub fn propose_error_status(error: ProposeError) -> Status {
    match error {
        ProposeError::NotLeader { leader_id, leader } => not_leader(leader_id, leader.as_ref()),
        ProposeError::CutOff { silent_ms } => cut_off_leader(silent_ms),
        ProposeError::ShuttingDown => {
            Status::unavailable("the replica is shutting down; retry another replica")
        }
        ProposeError::Raft(message) => Status::unavailable(format!(
            "the write could not be committed ({message}); it may or may not have been applied: \
             retry with the same idempotency key"
        )),
    }
}

pub fn read_error_status(
    error: RaftError<NodeId, CheckIsLeaderError<NodeId, ReplicaNode>>,
) -> Status {
    match error {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)) => {
            not_leader(forward.leader_id, forward.leader_node.as_ref())
        }
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)) => {
            // openraft's own text dumps the membership's Debug form: name the replicas instead.
            let answered: Vec<String> = e.got.iter().map(u64::to_string).collect();
            Status::unavailable(format!(
                "this replica could not confirm it still leads: no majority answered it \
                 (replicas that did: {}); retry, or read with --stale",
                if answered.is_empty() {
                    "none".to_string()
                } else {
                    answered.join(", ")
                }
            ))
        }
        RaftError::Fatal(fatal) => Status::unavailable(format!("the replica is stopping: {fatal}")),
    }
}

#[tonic::async_trait]
impl JobService for JobApi {
    async fn submit_job(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<SubmitJobResponse>, Status> {
        authorize(&request, "JobService.SubmitJob", Permission::Operate)?;
        let on_follower = OnFollower::asked_in(request.metadata());
        let request = request.into_inner();
        let spec = request
            .spec
            .ok_or_else(|| from_queue_error(&QueueError::InvalidSpec("spec is missing".into())))
            .and_then(|spec| spec_from_pb(spec).map_err(|e| from_queue_error(&e)))?;
        // Checked here too so a bad spec costs no Raft round; apply checks again.
        spec.validate().map_err(|e| from_queue_error(&e))?;
        let idempotency_key = Some(request.idempotency_key).filter(|key| !key.is_empty());
        match propose(
            &self.proposer,
            Command::SubmitJob {
                spec,
                idempotency_key,
            },
            on_follower,
        )
        .await?
        {
            CommandOutput::Submitted {
                job_id,
                deduplicated,
            } => {
                if deduplicated {
                    info!(job_id, "submit matched an earlier idempotency key");
                }
                Ok(Response::new(SubmitJobResponse {
                    job_id,
                    deduplicated,
                }))
            }
            other => Err(Status::internal(format!("a submit returned {other:?}"))),
        }
    }

    async fn get_job(
        &self,
        request: Request<GetJobRequest>,
    ) -> Result<Response<GetJobResponse>, Status> {
        authorize(&request, "JobService.GetJob", Permission::Operate)?;
        let anywhere = ReadAnywhere::asked(&request);
        let request = request.into_inner();
        self.read_barrier(request.stale, anywhere).await?;
        let job = self.jobs.job(request.job_id).map_err(job_read_status)?;
        Ok(Response::new(GetJobResponse {
            job: Some((&job).into()),
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        authorize(&request, "JobService.ListJobs", Permission::Operate)?;
        let anywhere = ReadAnywhere::asked(&request);
        let request = request.into_inner();
        let state = state_from_pb(request.state).map_err(Status::invalid_argument)?;
        self.read_barrier(request.stale, anywhere).await?;
        let filter = self.with_queue(|queue| job_filter(queue, &request));
        let limit = match request.limit {
            0 => 100,
            n => (n as usize).min(MAX_PAGE_SIZE),
        };
        // A filtered listing scans pages of the state's jobs until it has `limit` matches or
        // scanned FILTER_SCAN_LIMIT jobs, and then says where to go on from.
        let mut after = request.after_id;
        let mut matched = Vec::new();
        let mut scanned = 0;
        let mut next_after_id = loop {
            let page = self.with_queue(|queue| queue.list(state, after, limit));
            // A job removed by retention since the listing is left out.
            let page_jobs = self.jobs.jobs(&page.ids).map_err(job_read_status)?;
            scanned += page.ids.len();
            let mut full_at = None;
            for job in page_jobs {
                if filter.matches(&job) {
                    matched.push(job);
                    if matched.len() == limit {
                        full_at = matched.last().map(|job| job.id);
                        break;
                    }
                }
            }
            match (full_at, page.next_after) {
                // The page's last job filled it and nothing comes after: no next page.
                (Some(last), None) if page.ids.last() == Some(&last) => break 0,
                (Some(last), _) => break last,
                (None, None) => break 0,
                (None, Some(next)) if filter.is_empty() || scanned >= FILTER_SCAN_LIMIT => {
                    break next
                }
                (None, Some(next)) => after = next,
            }
        };
        // A page of large jobs can outgrow one message: stop early and let the caller page on.
        let mut jobs = Vec::with_capacity(matched.len());
        let mut bytes = 0;
        for job in &matched {
            let job = crate::pb::v1::Job::from(job);
            let size = prost::Message::encoded_len(&job) + 8;
            if !jobs.is_empty() && bytes + size > self.max_reply_bytes {
                next_after_id = jobs.last().map_or(0, |last: &crate::pb::v1::Job| last.id);
                break;
            }
            bytes += size;
            jobs.push(job);
        }
        Ok(Response::new(ListJobsResponse {
            jobs,
            next_after_id,
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<CancelJobResponse>, Status> {
        authorize(&request, "JobService.CancelJob", Permission::Operate)?;
        let on_follower = OnFollower::asked_in(request.metadata());
        let job_id = request.into_inner().job_id;
        match propose(&self.proposer, Command::CancelJob { job_id }, on_follower).await? {
            CommandOutput::Cancelled { job_id, state } => {
                info!(job_id, %state, "job cancelled");
                // Read after the cancel applied here: the leader answers once it has, and a
                // follower that forwarded it once it has applied as far as the leader had.
                let job = self.jobs.job(job_id).map_err(job_read_status)?;
                Ok(Response::new(CancelJobResponse {
                    job: Some((&job).into()),
                }))
            }
            other => Err(Status::internal(format!("a cancel returned {other:?}"))),
        }
    }

    async fn get_job_logs(
        &self,
        request: Request<GetJobLogsRequest>,
    ) -> Result<Response<GetJobLogsResponse>, Status> {
        authorize(&request, "JobService.GetJobLogs", Permission::Operate)?;
        let anywhere = ReadAnywhere::asked(&request);
        let request = request.into_inner();
        self.read_barrier(request.stale, anywhere).await?;
        let limit = match request.limit {
            0 => 1000,
            n => (n as usize).min(10_000),
        };
        let terminal = self
            .with_queue(|queue| {
                queue
                    .job_state(request.job_id)
                    .map(|state| state.is_terminal())
                    .ok_or_else(|| queue.missing_job(request.job_id))
            })
            .map_err(|e| from_queue_error(&e))?;
        let after_sequence = match request.tail {
            // Sequences run from 1 to the job's `log_lines` (the truncation notice last).
            true => self
                .jobs
                .job(request.job_id)
                .map_err(job_read_status)?
                .log_lines
                .saturating_sub(limit as u64),
            false => request.after_sequence,
        };
        // Read after the job: a job that ended before the read has all its lines stored.
        let lines = self
            .logs
            .job_logs(request.job_id, after_sequence, limit)
            .map_err(|e| Status::internal(e.to_string()))?;
        // Bounded by size like a job listing; `complete` only when nothing was held back.
        let mut reply = Vec::with_capacity(lines.len());
        let mut bytes = 0;
        for line in &lines {
            let line = crate::pb::v1::JobLogLine::from(line);
            let size = prost::Message::encoded_len(&line) + 8;
            if !reply.is_empty() && bytes + size > self.max_reply_bytes {
                break;
            }
            bytes += size;
            reply.push(line);
        }
        let complete = terminal && reply.len() == lines.len() && lines.len() < limit;
        Ok(Response::new(GetJobLogsResponse {
            lines: reply,
            complete,
        }))
    }
}

/// How many jobs one filtered listing call looks at, at most, before it answers with what it
/// found and where to go on from.
const FILTER_SCAN_LIMIT: usize = 10_000;

/// The filter a listing asks for, its worker resolved against `queue`'s registry.
fn job_filter(queue: &QueueState, request: &ListJobsRequest) -> JobFilter {
    let set = |text: &str| Some(text.trim().to_string()).filter(|t| !t.is_empty());
    JobFilter {
        name_contains: set(&request.name_contains),
        tag: set(&request.tag),
        workers: set(&request.worker).map(|worker| {
            JobFilter::workers_named(
                &worker,
                queue
                    .workers()
                    .map(|w| (w.info.id, w.info.display_name.as_str())),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_without_a_majority_names_the_replicas_not_the_membership_dump() {
        let error = RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(
            openraft::error::QuorumNotEnough {
                cluster: "{voters:[{1:ReplicaNode { api: \"a\" }}]}".into(),
                got: [1].into_iter().collect(),
            },
        ));
        let status = read_error_status(error);
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(
            status.message().contains("replicas that did: 1")
                && !status.message().contains("ReplicaNode"),
            "{}",
            status.message()
        );
    }
}
