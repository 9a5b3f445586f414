//! Appending a task's log lines.

use super::QueueState;
use crate::queue::logs::{append, LogCounts};
use crate::queue::{
    CommandOutput, CommandResult, EventKind, JobId, LeaseRef, LogLine, QueueError, WorkerId,
    MAX_LOG_LINES_PER_JOB,
};
use std::sync::Arc;

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
        let lease_lost = QueueError::LeaseLost {
            job_id: lease.job_id,
            token: lease.token,
        };
        // A finished job still takes the late lines of a lease it once granted (see
        // `finished.rs`): its kept record has the tokens and the counters.
        let (attempt, late, counts) = match self.jobs.get(&lease.job_id) {
            Some(job) => (
                job.attempt_with(worker, lease.token)
                    .ok_or(lease_lost)?
                    .number,
                !job.holds_lease(worker, lease.token),
                job.log_counts(),
            ),
            None => {
                let job = self
                    .finished_jobs
                    .get(&lease.job_id)
                    .ok_or(QueueError::JobNotFound(lease.job_id))?;
                let attempt = job.attempt_with(worker, lease.token).ok_or(lease_lost)?;
                (attempt, true, job.logs)
            }
        };
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
        self.append_lines(lease.job_id, attempt, late, counts, lines);
        Ok(CommandOutput::LogsAppended { late })
    }

    /// Stores `lines` of attempt number `attempt` of job `job_id` (live or finished), whose
    /// counters are `counts`, flagged `late` or not, with an outbox event each.
    pub(super) fn append_lines(
        &mut self,
        job_id: JobId,
        attempt: u32,
        late: bool,
        mut counts: LogCounts,
        lines: Vec<LogLine>,
    ) {
        if lines.is_empty() {
            return;
        }
        let notice = MAX_LOG_LINES_PER_JOB + 1;
        let had_notice = counts.lines >= notice;
        let first = self.changes.log_lines.len();
        append(
            &mut self.changes.log_lines,
            job_id,
            &mut counts,
            attempt,
            late,
            lines,
        );
        self.set_log_counts(job_id, counts);
        let written: Vec<u64> = self.changes.log_lines[first..]
            .iter()
            .map(|line| line.sequence)
            .collect();
        for sequence in written {
            // The truncation notice is rewritten in place; it is one event, its first.
            if sequence != notice || !had_notice {
                self.record(EventKind::LogLine {
                    job: job_id,
                    sequence,
                });
            }
        }
    }

    /// Stores a job's log counters, live or finished (and in its archived row, if still held).
    fn set_log_counts(&mut self, job_id: JobId, counts: LogCounts) {
        if let Some(job) = self.jobs.get_mut(&job_id).map(Arc::make_mut) {
            job.set_log_counts(counts);
        }
        if let Some(job) = self.finished_jobs.get_mut(&job_id) {
            job.logs = counts;
        }
        if let Some(job) = self.archive.get_mut(&job_id).map(Arc::make_mut) {
            job.set_log_counts(counts);
        }
        self.changes.jobs.insert(job_id);
    }
}
