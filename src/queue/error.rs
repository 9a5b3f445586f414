//! Deterministic rejections of queue commands and queries.

use serde::{Deserialize, Serialize};

use super::{JobId, JobState};

/// Why the queue refused a command. Every replica applying the same command reaches the same
/// verdict, so these travel through the Raft log as ordinary results.
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
}
