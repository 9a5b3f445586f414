//! Attempts and leases: how a task is handed to a worker, and what each run left behind.
//!
//! A lease is the right to run a job's task until `expires_at_ms`, fenced by a token that apply
//! assigns from a counter that only grows (invariant 2: a stale holder presents an old token and
//! is refused). Every lease grant opens an [`Attempt`], so the attempt history counts exactly the
//! runs that consumed one of the job's `max_attempts` (invariant 3), and each attempt keeps the
//! token it ran under so late logs can still be attributed to it.

use serde::{Deserialize, Serialize};

use super::{JobId, JobSpec, JobState, WorkerId};

/// The longest lease (or lease extension) a command may ask for: one day. A lease is renewed
/// every few seconds in practice; anything longer is a configuration mistake that would keep a
/// dead worker's task from running again.
pub const MAX_LEASE_MS: u64 = 24 * 3600 * 1000;

/// Longest error text an attempt keeps; longer reports are cut (at a character boundary), so one
/// chatty failure cannot bloat every replica's state.
pub const MAX_ATTEMPT_ERROR_BYTES: usize = 4096;

/// A job's current lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Unique across the whole queue and strictly increasing in grant order.
    pub token: u64,
    pub worker: WorkerId,
    /// Leader clock (ms since the Unix epoch); the lease ends when a committed `ExpireLeases`
    /// stamped at or after this time is applied.
    pub expires_at_ms: u64,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptOutcome {
    Succeeded,
    Failed,
    /// The lease ran out before the worker completed: the master decided, not the worker.
    Expired,
    Cancelled,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Expired => "expired",
            AttemptOutcome::Cancelled => "cancelled",
        }
    }

    /// The state a job ends in when its last attempt ends this way (`None` for `Expired`, which
    /// may requeue it or fail it).
    pub fn final_state(self) -> Option<JobState> {
        match self {
            AttemptOutcome::Succeeded => Some(JobState::Succeeded),
            AttemptOutcome::Failed => Some(JobState::Failed),
            AttemptOutcome::Cancelled => Some(JobState::Cancelled),
            AttemptOutcome::Expired => None,
        }
    }
}

/// One run of a job's task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1-based: the n-th lease granted for this job.
    pub number: u32,
    pub worker: WorkerId,
    /// The lease token this attempt ran under.
    pub token: u64,
    pub started_at_ms: u64,
    /// `None` while the attempt is live.
    pub ended_at_ms: Option<u64>,
    pub outcome: Option<AttemptOutcome>,
    pub exit_code: Option<i32>,
    /// The worker's error report (empty when none), at most [`MAX_ATTEMPT_ERROR_BYTES`].
    pub error: String,
}

/// A (job, token) pair as the worker holds it: what every lease-bearing call presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LeaseRef {
    pub job_id: JobId,
    pub token: u64,
}

/// A task handed to a worker by `AcquireTasks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub job_id: JobId,
    pub token: u64,
    /// The attempt number this grant opened (1-based).
    pub attempt: u32,
    pub spec: JobSpec,
    pub expires_at_ms: u64,
}

/// The answer to one lease in `RenewLeases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStatus {
    pub job_id: JobId,
    pub token: u64,
    /// `false`: the lease is not (or no longer) this worker's; it must kill the task.
    pub renewed: bool,
    /// The job was cancelled: kill the task and complete it as cancelled. Only set when renewed.
    pub cancel_requested: bool,
    /// The new expiry when renewed, else 0.
    pub expires_at_ms: u64,
}

/// Cuts `text` to at most `max` bytes at a character boundary. Deterministic, so every replica
/// keeps the same prefix.
pub(super) fn truncate_utf8(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate_utf8("héllo".into(), 2), "h");
        assert_eq!(truncate_utf8("héllo".into(), 3), "hé");
        assert_eq!(truncate_utf8("abc".into(), 10), "abc");
    }
}
