//! Appending a task's log lines.

use super::QueueState;
use crate::queue::logs::append;
use crate::queue::{CommandOutput, CommandResult, LeaseRef, LogLine, QueueError, WorkerId};

impl QueueState {
    /// Lines count as the attempt whose lease token they carry. A token this worker was once
    /// granted for the job is accepted even after the lease ended (the lines are stored flagged
    /// `late`: a spooled log still tells what ran); a token it never held is refused.
    pub(super) fn append_logs(
        &mut self,
        worker: WorkerId,
        lease: LeaseRef,
        lines: Vec<LogLine>,
    ) -> CommandResult {
        let job = self
            .jobs
            .get_mut(&lease.job_id)
            .ok_or(QueueError::JobNotFound(lease.job_id))?;
        let attempt = job
            .attempt_with(worker, lease.token)
            .ok_or(QueueError::LeaseLost {
                job_id: lease.job_id,
                token: lease.token,
            })?
            .number;
        let late = !job.holds_lease(worker, lease.token);
        if !lines.is_empty() {
            let written = append(&mut self.logs, job, attempt, late, lines);
            self.changes.jobs.insert(lease.job_id);
            self.changes.log_lines.extend(written);
        }
        Ok(CommandOutput::LogsAppended { late })
    }
}
