//! Retention: which finished jobs are due for removal, and their removal
//! (`Command::RemoveFinishedJobs`, proposed by the leader every `retention.sweep_interval_ms`).
//!
//! A master runs for months; SSIS cleans completed jobs every 12 hours
//! (`CleanupCompletedJobsIntervalInMs`) and keeps history in SSISDB. Here a finished job is due
//! when it finished more than the retention before cluster time, or when it is among the oldest
//! finished jobs beyond the cap. The command carries the settings, and apply reads only the
//! replicated state and cluster time, so every replica removes the same jobs at the same index.
//! Queued and leased jobs are never due. With SSISDB configured (`until_shipped`), a job waits
//! until every outbox event that may name it is shipped (its `last_event`, see `finished.rs`),
//! so SSISDB holds its whole story before the replicas forget it. Its idempotency key goes with
//! it: the key's deduplication window is the job's retention.

use std::collections::BTreeSet;

use super::QueueState;
use crate::queue::{CommandOutput, CommandResult, JobId, QueueError};

/// What a retention sweep would remove now: up to `limit` due jobs, oldest finished first, and
/// whether more were due.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DueJobs {
    pub jobs: Vec<JobId>,
    pub more: bool,
}

impl QueueState {
    /// The finished jobs due for removal at cluster time `now_ms` (see the module docs).
    pub fn due_for_removal(
        &self,
        retention_ms: u64,
        max_finished: u64,
        until_shipped: bool,
        limit: usize,
        now_ms: u64,
    ) -> DueJobs {
        let cutoff = now_ms.saturating_sub(retention_ms);
        let over_cap = match max_finished {
            0 => 0,
            cap => (self.finished.len() as u64).saturating_sub(cap),
        };
        // While the outbox is held, the jobs its events name; otherwise each finished job's
        // `last_event` against the cursor.
        let held_named: Option<BTreeSet<JobId>> = until_shipped
            .then(|| self.jobs_named_by_held_events())
            .flatten();
        let acked = self.outbox_meta.acked_up_to;
        let unshipped = |job: JobId| match &held_named {
            _ if !until_shipped => false,
            Some(named) => named.contains(&job),
            None => self
                .finished_jobs
                .get(&job)
                .is_some_and(|kept| kept.last_event > acked),
        };
        let mut due = DueJobs::default();
        for (position, &(finished_at_ms, job)) in self.finished.iter().enumerate() {
            // Oldest first: once one is neither old enough nor over the cap, none after it is.
            if finished_at_ms > cutoff && position as u64 >= over_cap {
                break;
            }
            if unshipped(job) {
                continue;
            }
            if due.jobs.len() >= limit {
                due.more = true;
                break;
            }
            due.jobs.push(job);
        }
        due
    }

    pub(super) fn remove_finished(
        &mut self,
        retention_ms: u64,
        max_finished: u64,
        until_shipped: bool,
        limit: usize,
        now_ms: u64,
    ) -> CommandResult {
        let due = self.due_for_removal(retention_ms, max_finished, until_shipped, limit, now_ms);
        let removed = due.jobs.len() as u64;
        for job in due.jobs {
            self.remove_job(job);
        }
        self.activity.jobs_removed += removed;
        Ok(CommandOutput::JobsRemoved {
            removed,
            more: due.more,
        })
    }

    /// How many finished jobs the state holds.
    pub fn finished_count(&self) -> usize {
        self.finished.len()
    }

    /// The error for a job this state does not hold: removed by retention, or never submitted.
    pub fn missing_job(&self, job_id: JobId) -> QueueError {
        if self.was_removed(job_id) {
            QueueError::JobRemoved(job_id)
        } else {
            QueueError::JobNotFound(job_id)
        }
    }

    /// Whether `job_id` was handed out once and is gone: removed by retention (ids are never
    /// reused), as opposed to never submitted.
    pub fn was_removed(&self, job_id: JobId) -> bool {
        job_id >= 1 && job_id < self.next_job_id && !self.has_job(job_id)
    }
}
