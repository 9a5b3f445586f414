//! WorkerService: what worker agents call. Every call that changes the queue (registration,
//! acquisition, renewals, logs, completions) is a command through the Raft log, so leases and
//! their fencing tokens are decided in apply, identically on every replica. A heartbeat, and a
//! long-poll with nothing to grant, change only the worker's sighting: the leader in office
//! answers them from its state and commits the sightings in batches (`sightings.rs`).

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Request, Response, Status};
use tracing::{debug, info};

use super::authz::{authorize, Permission};
use super::job_service::propose_error_status;
use super::proposer::{OnFollower, ProposeError, Proposer};
use super::reads::Reads;
use super::sightings::Sightings;
use crate::config::{WorkerApproval, WorkerSettings};
use crate::pb::v1::worker_service_server::WorkerService;
use crate::pb::v1::{
    AcquireTasksRequest, AcquireTasksResponse, AppendLogsRequest, AppendLogsResponse,
    CompleteTaskRequest, CompleteTaskResponse, HeartbeatRequest, HeartbeatResponse,
    RegisterWorkerRequest, RegisterWorkerResponse, RenewLeasesRequest, RenewLeasesResponse,
    TaskResult, TaskResultStatus,
};
use crate::pb::{
    lease_from_pb, log_line_from_pb, outcome_from_pb, percent_x10, worker_id_from_pb,
    worker_info_from_pb,
};
use crate::queue::{
    AcquireRequest, Command, CommandOutput, CommandResult, LeaseRef, QueueError, TaskReport,
    WorkerId, WorkerSeen,
};
use crate::raft::{DispatchSignal, Raft, SharedQueue};
use crate::rpc::contract::{from_queue_error, not_leader, with_reason};
use crate::rpc::Reason;

/// How often a waiting long-poll looks again when nothing was applied: a retry delay (whole
/// seconds) may have made a task ready in the meantime. A lost leadership wakes every poll at
/// once (`leader.rs`), so this is not what bounds a poll held by a deposed leader.
const POLL_RECHECK: Duration = Duration::from_secs(1);
/// After a proposal that granted nothing.
const RACE_PAUSE: Duration = Duration::from_millis(10);

#[derive(Clone)]
pub struct WorkerApi {
    raft: Raft,
    reads: Reads,
    proposer: Proposer,
    queue: SharedQueue,
    dispatch: DispatchSignal,
    sightings: Sightings,
    settings: WorkerSettings,
}

fn lease_lost(lease: &LeaseRef, what: &str) -> Status {
    let metadata = HashMap::from([
        ("job_id".to_string(), lease.job_id.to_string()),
        ("lease_token".to_string(), lease.token.to_string()),
    ]);
    with_reason(
        Code::FailedPrecondition,
        Reason::LeaseLost,
        format!(
            "the lease {} of job {} is no longer current ({what}); stop the task: it expired and \
             may run elsewhere, or the job ended",
            lease.token, lease.job_id
        ),
        metadata,
    )
}

fn rejection(error: QueueError) -> Status {
    match error {
        QueueError::LeaseLost { job_id, token } => {
            lease_lost(&LeaseRef { job_id, token }, "refused")
        }
        other => from_queue_error(&other),
    }
}

impl WorkerApi {
    pub fn new(
        raft: Raft,
        reads: Reads,
        proposer: Proposer,
        queue: SharedQueue,
        dispatch: DispatchSignal,
        sightings: Sightings,
        settings: WorkerSettings,
    ) -> Self {
        WorkerApi {
            raft,
            reads,
            proposer,
            queue,
            dispatch,
            sightings,
            settings,
        }
    }

    /// Records that `worker` was heard from now, with the load it reported.
    fn sighted(&self, worker: WorkerId, cpu_percent_x10: u32, free_memory_mb: u64) {
        self.sightings.record(WorkerSeen {
            worker,
            at_ms: self.proposer.now_ms(),
            cpu_percent_x10,
            free_memory_mb,
        });
    }

    /// How long a worker call waits for its commit. A leader cut off from its peers keeps
    /// leading (openraft has no check-quorum) and would hold each proposal for the proposer's
    /// whole commit timeout (10 s). Held that long, a task grant can outlive a short lease: it
    /// commits under the next leader (whose ExtendLeases gives it one lease from then), expires,
    /// and the worker's retry with the same request id, which only returns grants still held,
    /// comes too late. A third of the lease leaves the retry time to claim it elsewhere; every
    /// worker call is safe to retry (request ids, lease tokens, log batch numbers).
    fn commit_wait(&self) -> Duration {
        Duration::from_millis(self.settings.lease_interval_ms / 3)
            .clamp(Duration::from_secs(1), Duration::from_secs(10))
    }

    async fn propose_within(
        &self,
        command: Command,
        on_follower: OnFollower,
    ) -> Result<CommandResult, ProposeError> {
        let wait = self.commit_wait();
        tokio::time::timeout(wait, self.proposer.propose(command, on_follower))
            .await
            .unwrap_or_else(|_| {
                Err(ProposeError::Raft(format!(
                    "not committed within {wait:?}; the outcome is unknown"
                )))
            })
    }

    async fn propose(
        &self,
        command: Command,
        on_follower: OnFollower,
    ) -> Result<CommandOutput, Status> {
        match self.propose_within(command, on_follower).await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(rejection_error)) => Err(rejection(rejection_error)),
            Err(error) => Err(propose_error_status(error)),
        }
    }

    /// A follower's local state may lag, so only the leader decides a long-poll has nothing.
    fn require_leader(&self) -> Result<(), Status> {
        // Every poll asks at every recheck: only the refusal copies the metrics.
        if self.raft.metrics().borrow().state == openraft::ServerState::Leader {
            return Ok(());
        }
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader;
        let node = leader.and_then(|id| {
            metrics
                .membership_config
                .membership()
                .get_node(&id)
                .cloned()
        });
        Err(not_leader(leader, node.as_ref()))
    }

    /// Whether the acquire would lease anything (a task, or a retry's grant), judged on this
    /// leader's state with the request's own load; refused as the command would be.
    fn would_grant(&self, worker: WorkerId, acquire: &AcquireRequest) -> Result<bool, Status> {
        let queue = self.queue.read().unwrap_or_else(|p| p.into_inner());
        queue
            .acquire_would_grant(worker, acquire, self.proposer.now_ms())
            .map_err(rejection)
    }
}

fn report_from_pb(result: &TaskResult) -> Result<TaskReport, QueueError> {
    Ok(TaskReport {
        lease: lease_from_pb(result.lease)?,
        outcome: outcome_from_pb(result.outcome)?,
        exit_code: result.exit_code,
        error: result.error.clone(),
    })
}

/// Each result's fate, as CompleteTask would answer it, in the request's order.
fn result_statuses(
    sent: &[TaskResult],
    answers: Vec<CommandResult>,
    worker: crate::queue::WorkerId,
) -> Vec<TaskResultStatus> {
    sent.iter()
        .zip(answers)
        .map(|(result, answer)| {
            let lease = result.lease;
            let (job_id, token) = lease.map_or((0, 0), |l| (l.job_id, l.lease_token));
            let recorded = |state: crate::queue::JobState| TaskResultStatus {
                lease,
                recorded: true,
                job_state: crate::pb::v1::JobState::from(state) as i32,
                refusal: String::new(),
            };
            let refused = |refusal: String| TaskResultStatus {
                lease,
                recorded: false,
                job_state: 0,
                refusal,
            };
            match answer {
                Ok(CommandOutput::Completed { state }) => {
                    debug!(job_id, lease = token, %worker, state = %state, "task completed");
                    recorded(state)
                }
                Ok(CommandOutput::CompletedBefore { state }) => recorded(state),
                Ok(CommandOutput::CompletedLate) => {
                    info!(job_id, lease = token, %worker, "late completion recorded, not applied");
                    refused(
                        "the lease was lost: the result was recorded as late and not applied"
                            .into(),
                    )
                }
                Ok(_) => refused("the master answered this result unexpectedly".into()),
                Err(error) => refused(error.to_string()),
            }
        })
        .collect()
}

fn unexpected(output: CommandOutput) -> Status {
    Status::internal(format!("unexpected command output {output:?}"))
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    async fn register_worker(
        &self,
        request: Request<RegisterWorkerRequest>,
    ) -> Result<Response<RegisterWorkerResponse>, Status> {
        authorize(
            &request,
            "WorkerService.RegisterWorker",
            Permission::ActAsWorker(
                request
                    .get_ref()
                    .info
                    .as_ref()
                    .map_or("", |info| info.worker_id.as_str()),
            ),
        )?;
        let on_follower = OnFollower::asked_in(request.metadata());
        let info = request
            .into_inner()
            .info
            .ok_or_else(|| rejection(QueueError::InvalidWorker("info is missing".into())))?;
        let info = worker_info_from_pb(info).map_err(rejection)?;
        info.validate().map_err(rejection)?;
        let worker = info.id;
        let auto_enable = self.settings.approval == WorkerApproval::Auto;
        match self
            .propose(Command::RegisterWorker { info, auto_enable }, on_follower)
            .await?
        {
            CommandOutput::WorkerRegistered { enabled } => {
                info!(%worker, enabled, "worker registered");
                Ok(Response::new(RegisterWorkerResponse {
                    enabled,
                    lease_interval_ms: self.settings.lease_interval_ms,
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        authorize(
            &request,
            "WorkerService.Heartbeat",
            Permission::ActAsWorker(&request.get_ref().worker_id),
        )?;
        let on_follower = OnFollower::asked_in(request.metadata());
        let request = request.into_inner();
        let worker = worker_id_from_pb(&request.worker_id).map_err(rejection)?;
        let running: Vec<LeaseRef> = request
            .running
            .iter()
            .map(|lease| LeaseRef {
                job_id: lease.job_id,
                token: lease.lease_token,
            })
            .collect();
        let cpu_percent_x10 = percent_x10(request.cpu_percent);
        // In office, the answer is this state's. Leases the worker runs that this state says it
        // does not hold go through the log all the same: the worker stops those tasks, so that
        // verdict must not come from a leader deposed without knowing it yet.
        if self.reads.in_office_now() {
            let answer = {
                let queue = self.queue.read().unwrap_or_else(|p| p.into_inner());
                queue
                    .heartbeat_answer(worker, &running)
                    .map_err(rejection)?
            };
            if let CommandOutput::Heartbeat {
                enabled,
                draining,
                cancel,
                lost,
            } = answer
            {
                if lost.is_empty() {
                    self.sighted(worker, cpu_percent_x10, request.free_memory_mb);
                    return Ok(Response::new(HeartbeatResponse {
                        enabled,
                        draining,
                        cancel: cancel.iter().map(Into::into).collect(),
                        lost: Vec::new(),
                    }));
                }
            }
        }
        let command = Command::WorkerHeartbeat {
            worker,
            running,
            cpu_percent_x10,
            free_memory_mb: request.free_memory_mb,
        };
        match self.propose(command, on_follower).await? {
            CommandOutput::Heartbeat {
                enabled,
                draining,
                cancel,
                lost,
            } => Ok(Response::new(HeartbeatResponse {
                enabled,
                draining,
                cancel: cancel.iter().map(Into::into).collect(),
                lost: lost.iter().map(Into::into).collect(),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn acquire_tasks(
        &self,
        request: Request<AcquireTasksRequest>,
    ) -> Result<Response<AcquireTasksResponse>, Status> {
        authorize(
            &request,
            "WorkerService.AcquireTasks",
            Permission::ActAsWorker(&request.get_ref().worker_id),
        )?;
        let request = request.into_inner();
        let worker = worker_id_from_pb(&request.worker_id).map_err(rejection)?;
        let mut reports = request
            .results
            .iter()
            .map(report_from_pb)
            .collect::<Result<Vec<_>, _>>()
            .map_err(rejection)?;
        let wait = Duration::from_millis(
            u64::from(request.wait_ms).min(self.settings.max_acquire_wait_ms),
        );
        let deadline = tokio::time::Instant::now() + wait;
        if request.free_slots == 0 && reports.is_empty() {
            // Nothing can be granted; waiting would only hold the call.
            return Ok(Response::new(AcquireTasksResponse::default()));
        }
        let acquire = AcquireRequest {
            free_slots: request.free_slots,
            lease_ms: self.settings.lease_interval_ms,
            cpu_percent_x10: percent_x10(request.cpu_percent),
            free_memory_mb: request.free_memory_mb,
            max_cpu_percent_x10: percent_x10(request.task_request_max_cpu),
            min_free_memory_mb: request.task_request_min_memory_mb,
            request_id: Some(request.request_id.clone()).filter(|id| !id.is_empty()),
        };
        let mut results = Vec::new();
        let mut wake = self.dispatch.watch(worker);
        let mut first = true;
        loop {
            self.require_leader()?;
            // Results always go through the log, and so does a first round the leader cannot
            // vouch for its state in (not yet in office: a retry's grant may be committed and
            // not applied here). Otherwise a round proposes only when the acquire would lease
            // something; a first round that would not is a sighting.
            let propose = if first && (!reports.is_empty() || !self.reads.in_office_now()) {
                true
            } else {
                let grant = self.would_grant(worker, &acquire)?;
                if first && !grant {
                    self.sighted(worker, acquire.cpu_percent_x10, acquire.free_memory_mb);
                }
                grant
            };
            let with_reports = first && !reports.is_empty();
            first = false;
            if propose {
                let command = if with_reports {
                    Command::ReportAndAcquire {
                        worker,
                        reports: std::mem::take(&mut reports),
                        acquire: acquire.clone(),
                    }
                } else {
                    acquire.clone().into_command(worker)
                };
                // Only the leader serves a long poll (above): nothing to forward.
                let tasks = match self.propose(command, OnFollower::Redirect).await? {
                    CommandOutput::Acquired { tasks } => tasks,
                    CommandOutput::ReportedAndAcquired { reports, acquired } => {
                        results = result_statuses(&request.results, reports, worker);
                        acquired.map_err(rejection)?
                    }
                    other => return Err(unexpected(other)),
                };
                if !tasks.is_empty() || request.free_slots == 0 {
                    for task in &tasks {
                        debug!(job_id = task.job_id, lease = task.token, attempt = task.attempt, %worker, "task leased");
                    }
                    return Ok(Response::new(AcquireTasksResponse {
                        tasks: tasks.iter().map(Into::into).collect(),
                        results,
                    }));
                }
                // The pre-check and apply use the same rules, so this was a race with another
                // worker for the same task; a short pause keeps a run of such races from
                // turning into a stream of entries.
                tokio::time::sleep(
                    RACE_PAUSE.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
                )
                .await;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Response::new(AcquireTasksResponse {
                    tasks: Vec::new(),
                    results,
                }));
            }
            // Wake when an apply makes work for this worker (a submit, a requeue, a slot of its
            // freed) or recheck shortly (retry delays running out, a lost leadership).
            let nap = (deadline - now).min(POLL_RECHECK);
            let _ = tokio::time::timeout(nap, wake.changed()).await;
            debug!(%worker, "long-poll recheck");
        }
    }

    async fn renew_leases(
        &self,
        request: Request<RenewLeasesRequest>,
    ) -> Result<Response<RenewLeasesResponse>, Status> {
        authorize(
            &request,
            "WorkerService.RenewLeases",
            Permission::ActAsWorker(&request.get_ref().worker_id),
        )?;
        let on_follower = OnFollower::asked_in(request.metadata());
        let request = request.into_inner();
        let worker = worker_id_from_pb(&request.worker_id).map_err(rejection)?;
        let leases = request
            .leases
            .iter()
            .map(|lease| LeaseRef {
                job_id: lease.job_id,
                token: lease.lease_token,
            })
            .collect();
        let command = Command::RenewLeases {
            worker,
            leases,
            lease_ms: self.settings.lease_interval_ms,
        };
        match self.propose(command, on_follower).await? {
            CommandOutput::Renewed { leases } => Ok(Response::new(RenewLeasesResponse {
                leases: leases.iter().map(Into::into).collect(),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn append_logs(
        &self,
        request: Request<AppendLogsRequest>,
    ) -> Result<Response<AppendLogsResponse>, Status> {
        authorize(
            &request,
            "WorkerService.AppendLogs",
            Permission::ActAsWorker(&request.get_ref().worker_id),
        )?;
        let on_follower = OnFollower::asked_in(request.metadata());
        let request = request.into_inner();
        let worker = worker_id_from_pb(&request.worker_id).map_err(rejection)?;
        let lease = lease_from_pb(request.lease).map_err(rejection)?;
        let lines = request.lines.into_iter().map(log_line_from_pb).collect();
        match self
            .propose(
                Command::AppendLogBatch {
                    worker,
                    lease,
                    batch: request.batch_sequence,
                    lines,
                },
                on_follower,
            )
            .await?
        {
            CommandOutput::LogsAppended { late: false } => Ok(Response::new(AppendLogsResponse {})),
            CommandOutput::LogsAppended { late: true } => {
                Err(lease_lost(&lease, "the lines were recorded as late"))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn complete_task(
        &self,
        request: Request<CompleteTaskRequest>,
    ) -> Result<Response<CompleteTaskResponse>, Status> {
        authorize(
            &request,
            "WorkerService.CompleteTask",
            Permission::ActAsWorker(&request.get_ref().worker_id),
        )?;
        let on_follower = OnFollower::asked_in(request.metadata());
        let request = request.into_inner();
        let worker = worker_id_from_pb(&request.worker_id).map_err(rejection)?;
        let lease = lease_from_pb(request.lease).map_err(rejection)?;
        let outcome = outcome_from_pb(request.outcome).map_err(rejection)?;
        let command = Command::ReportResult {
            worker,
            lease,
            outcome,
            exit_code: request.exit_code,
            error: request.error.clone(),
        };
        match self
            .propose_within(command, on_follower)
            .await
            .map_err(propose_error_status)?
        {
            Ok(CommandOutput::Completed { state }) => {
                debug!(job_id = lease.job_id, lease = lease.token, %worker, outcome = outcome.as_str(), state = %state, "task completed");
                Ok(Response::new(CompleteTaskResponse {
                    job_state: crate::pb::v1::JobState::from(state) as i32,
                }))
            }
            Ok(CommandOutput::CompletedBefore { state }) => {
                // The same report arrived before (its answer was lost with a dying leader).
                Ok(Response::new(CompleteTaskResponse {
                    job_state: crate::pb::v1::JobState::from(state) as i32,
                }))
            }
            Ok(CommandOutput::CompletedLate) => {
                info!(job_id = lease.job_id, lease = lease.token, %worker, outcome = outcome.as_str(), "late completion recorded, not applied");
                Err(lease_lost(
                    &lease,
                    "the result was recorded as late and not applied",
                ))
            }
            Ok(other) => Err(unexpected(other)),
            Err(other) => Err(rejection(other)),
        }
    }
}
