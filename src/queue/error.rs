//! Deterministic rejections of queue commands and queries.

use serde::{Deserialize, Serialize};

use super::{JobId, JobState, WorkerId};

/// Why the queue refused a command. Every replica applying the same command reaches the same
/// verdict, so these travel through the Raft log as ordinary results. A rejection changes
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum QueueError {
    #[error("invalid job spec: {0}")]
    InvalidSpec(String),
    #[error("job {0} not found")]
    JobNotFound(JobId),
    #[error("job {job_id} is {state} and can no longer be cancelled")]
    NotCancellable { job_id: JobId, state: JobState },
    #[error(
        "idempotency key {key:?} was already used for job {job_id} with a different spec; \
         use a new key for a different job"
    )]
    IdempotencyKeyConflict { key: String, job_id: JobId },
    #[error(
        "worker {0} is not registered; the agent must register again (restart it), or check \
         the id with `scaleout workers list`"
    )]
    WorkerNotFound(WorkerId),
    #[error(
        "worker {worker} still runs {running} task(s); drain it (`scaleout workers drain`) and \
         remove it once they finish"
    )]
    WorkerBusy { worker: WorkerId, running: usize },
    #[error(
        "lease {token} on job {job_id} is not current (it expired, was completed, or belongs to \
         another worker); stop the task: its result will not be applied"
    )]
    LeaseLost { job_id: JobId, token: u64 },
    #[error("invalid worker registration: {0}")]
    InvalidWorker(String),
    /// A malformed argument that is not part of a job spec or worker registration (a lease
    /// length out of range, an outcome only the master may decide).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error(
        "job {0} finished and was removed by retention (`retention.finished_job_secs`, \
         `retention.max_finished_jobs`); with SSISDB configured its history stays in \
         scaleout.jobs and scaleout.event_messages"
    )]
    JobRemoved(JobId),
}
