//! Submitting and cancelling jobs.

use super::QueueState;
use crate::queue::{
    ApplyContext, CommandOutput, CommandResult, EventKind, Job, JobId, JobSpec, JobState,
    QueueError,
};
use std::sync::Arc;

const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

impl QueueState {
    pub(super) fn submit(
        &mut self,
        ctx: &ApplyContext,
        spec: JobSpec,
        idempotency_key: Option<String>,
    ) -> CommandResult {
        spec.validate()?;
        if let Some(key) = &idempotency_key {
            validate_idempotency_key(key)?;
            if let Some(&job_id) = self.idempotency.get(key) {
                let same = match self.jobs.get(&job_id) {
                    Some(job) => job.spec == spec,
                    None => self
                        .finished_jobs
                        .get(&job_id)
                        .is_some_and(|job| job.has_spec(&spec)),
                };
                return if same {
                    Ok(CommandOutput::Submitted {
                        job_id,
                        deduplicated: true,
                    })
                } else {
                    Err(QueueError::IdempotencyKeyConflict {
                        key: key.clone(),
                        job_id,
                    })
                };
            }
        }
        let job_id = self.next_job_id;
        self.next_job_id += 1;
        let job = Job {
            id: job_id,
            spec,
            state: JobState::Queued,
            idempotency_key,
            created_at_ms: ctx.now_ms,
            updated_at_ms: ctx.now_ms,
            created_index: ctx.log_index,
            attempts: Vec::new(),
            lease: None,
            cancel_requested: false,
            ready_at_ms: ctx.now_ms,
            log_lines: 0,
            log_lines_dropped: 0,
            log_bytes: 0,
        };
        self.index_job(&job);
        self.jobs.insert(job_id, Arc::new(job));
        self.changes.jobs.insert(job_id);
        self.activity.jobs_submitted += 1;
        self.record(EventKind::JobSubmitted { job: job_id });
        Ok(CommandOutput::Submitted {
            job_id,
            deduplicated: false,
        })
    }

    /// Queued: cancelled at once. Leased: flagged, and the worker, told by its next heartbeat
    /// or renewal, kills the task and completes it as cancelled (or its lease expires, which
    /// cancels it too). Cancelling a cancelled job is not an error, so a retried cancel is
    /// answered as the first.
    pub(super) fn cancel(&mut self, job_id: JobId, now_ms: u64) -> CommandResult {
        let state = self
            .job_state(job_id)
            .ok_or_else(|| self.missing_job(job_id))?;
        match state {
            JobState::Cancelled => {}
            JobState::Queued => self.transition(job_id, JobState::Cancelled, now_ms),
            JobState::PickedUp | JobState::Running => {
                if let Some(job) = self.jobs.get_mut(&job_id).map(Arc::make_mut) {
                    if !job.cancel_requested {
                        job.cancel_requested = true;
                        job.updated_at_ms = now_ms;
                        self.changes.jobs.insert(job_id);
                        self.record(EventKind::CancelRequested { job: job_id });
                    }
                }
            }
            JobState::Succeeded | JobState::Failed => {
                return Err(QueueError::NotCancellable { job_id, state })
            }
        }
        Ok(CommandOutput::Cancelled {
            job_id,
            state: self.job_state(job_id).unwrap_or(state),
        })
    }
}

fn validate_idempotency_key(key: &str) -> Result<(), QueueError> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(QueueError::InvalidSpec(format!(
            "idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes, got {}",
            key.len()
        )));
    }
    Ok(())
}
