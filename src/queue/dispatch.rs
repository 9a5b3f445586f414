//! Dispatch: which queued job a worker gets next, and whether it may get one at all.
//!
//! Both the apply of `AcquireTasks` and the leader's cheap pre-check
//! ([`QueueState::has_eligible_task`](super::QueueState::has_eligible_task)) go through the
//! functions here, so the leader never proposes an acquire that apply would answer differently
//! for lack of a rule, and idle long-polls cost no log entries.
//!
//! Order: priority descending, then ready time ascending (SSIS's oldest `ReadyForDispatchTime`
//! first), then job id. Queued jobs are kept in a [`DispatchIndex`] in exactly that order. Within
//! one priority the ready jobs come first, so a scan stops at the first job that is not ready yet
//! and jumps to the next priority: the cost is the ready jobs looked at plus the number of
//! distinct priorities, not the queue length.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::ops::Bound;

use super::{Job, JobId, JobState, Worker};

/// (priority, highest first; ready time; id) of a queued job.
pub(super) type DispatchKey = (Reverse<i32>, u64, JobId);

/// Every queued job, in dispatch order.
pub(super) type DispatchIndex = BTreeSet<DispatchKey>;

pub(super) fn dispatch_key(job: &Job) -> DispatchKey {
    (Reverse(job.spec.priority), job.ready_at_ms, job.id)
}

/// Load limits a worker must be under to get new tasks (SSIS's TaskRequestMaxCPU and
/// TaskRequestMinMemory), compared with its last reported load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LoadLimits {
    pub max_cpu_percent_x10: u32,
    pub min_free_memory_mb: u64,
}

/// How many new tasks `worker` may take now: 0 unless it is enabled, not draining and within
/// the load limits; else its free slots under MaxTaskCount.
pub(super) fn worker_capacity(worker: &Worker, limits: LoadLimits) -> u32 {
    let accepts = worker.enabled
        && !worker.draining
        && worker.cpu_percent_x10 <= limits.max_cpu_percent_x10
        && worker.free_memory_mb >= limits.min_free_memory_mb;
    if accepts {
        worker.free_slots()
    } else {
        0
    }
}

/// Whether `job` may be handed to `worker` at `now_ms`: queued, ready, the worker allowed and
/// offering every tag the job requires.
pub(super) fn job_eligible(job: &Job, worker: &Worker, now_ms: u64) -> bool {
    job.state == JobState::Queued
        && job.ready_at_ms <= now_ms
        && (job.spec.allowed_workers.is_empty()
            || job.spec.allowed_workers.contains(&worker.info.id))
        && job.spec.tags.iter().all(|tag| worker.info.has_tag(tag))
}

/// The ids of queued jobs that are ready at `now_ms`, in dispatch order.
pub(super) fn ready_jobs(index: &DispatchIndex, now_ms: u64) -> ReadyJobs<'_> {
    ReadyJobs {
        index,
        now_ms,
        after: Bound::Unbounded,
    }
}

pub(super) struct ReadyJobs<'a> {
    index: &'a DispatchIndex,
    now_ms: u64,
    /// Where the scan resumes (exclusive).
    after: Bound<DispatchKey>,
}

impl Iterator for ReadyJobs<'_> {
    type Item = JobId;

    fn next(&mut self) -> Option<JobId> {
        loop {
            let &(priority, ready_at_ms, id) =
                self.index.range((self.after, Bound::Unbounded)).next()?;
            if ready_at_ms <= self.now_ms {
                self.after = Bound::Excluded((priority, ready_at_ms, id));
                return Some(id);
            }
            // Nothing else of this priority is ready: skip to the next priority.
            self.after = Bound::Excluded((priority, u64::MAX, JobId::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_jobs_skip_waiting_ones_by_priority_band() {
        let index: DispatchIndex = [
            (Reverse(5), 10, 1),
            (Reverse(5), 50, 2),
            (Reverse(5), 60, 3),
            (Reverse(0), 5, 4),
            (Reverse(0), 40, 5),
            (Reverse(-3), 0, 6),
        ]
        .into();
        assert_eq!(ready_jobs(&index, 45).collect::<Vec<_>>(), vec![1, 4, 5, 6]);
        assert_eq!(ready_jobs(&index, 0).collect::<Vec<_>>(), vec![6]);
        assert_eq!(
            ready_jobs(&index, u64::MAX).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6]
        );
    }
}
