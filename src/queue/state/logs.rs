//! Appending a task's log lines.

use super::QueueState;
use crate::queue::logs::append;
use crate::queue::{
    CommandOutput, CommandResult, EventKind, LeaseRef, LogLine, QueueError, WorkerId,
    MAX_LOG_LINES_PER_JOB,
};

impl QueueState {
    /// Lines count as the attempt whose lease token they carry. A token this worker was once
    /// granted for the job is accepted even after the lease ended (the lines are stored flagged
    /// `late`: a spooled log still tells what ran); a token it never held is refused. A batch
    /// numbered (`batch` > 0) at or below the last one applied for this lease is a retry: it is
    /// answered as the first delivery was and stores nothing.
    pub(super) fn append_logs(
        &mut self,
        worker: WorkerId,
        lease: LeaseRef,
        batch: u64,
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
        let key = (lease.job_id, lease.token);
        if batch > 0 {
            if self
                .log_batches
                .get(&key)
                .is_some_and(|&last| batch <= last)
            {
                return Ok(CommandOutput::LogsAppended { late });
            }
            self.log_batches.insert(key, batch);
            self.changes.log_batches.insert(key);
        }
        if !lines.is_empty() {
            let notice = MAX_LOG_LINES_PER_JOB + 1;
            let had_notice = job.log_lines >= notice;
            let first = self.changes.log_lines.len();
            append(&mut self.changes.log_lines, job, attempt, late, lines);
            self.changes.jobs.insert(lease.job_id);
            let written: Vec<u64> = self.changes.log_lines[first..]
                .iter()
                .map(|line| line.sequence)
                .collect();
            for sequence in written {
                // The truncation notice is rewritten in place; it is one event, its first.
                if sequence != notice || !had_notice {
                    self.record(EventKind::LogLine {
                        job: lease.job_id,
                        sequence,
                    });
                }
            }
        }
        Ok(CommandOutput::LogsAppended { late })
    }
}
