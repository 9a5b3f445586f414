//! Dispatch: which queued job a worker gets next, and whether it may get one at all.
//!
//! Both the apply of `AcquireTasks` and the leader's cheap pre-check
//! ([`QueueState::acquire_would_grant`](super::QueueState::acquire_would_grant)) go through the
//! functions here, so the leader never proposes an acquire that apply would answer differently
//! for lack of a rule, and idle long-polls cost no log entries.
//!
//! Order: priority descending, then ready time ascending (SSIS's oldest `ReadyForDispatchTime`
//! first), then job id. Queued jobs are kept in a [`DispatchIndex`] in exactly that order, one
//! ordered set per requirement (the tags and allowed workers a job asks for): a worker's scan
//! merges only the sets whose requirement it meets, so a backlog of jobs that no connected worker
//! can run (a tag nobody offers, a worker that is away) costs its scans nothing. Within one
//! priority the ready jobs come first, so a scan of a set stops at the first job that is not
//! ready yet and jumps to the next priority: the cost is the ready jobs looked at plus the
//! number of distinct requirements and priorities, not the queue length.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use uuid::Uuid;

use super::{Job, JobId, JobState, Worker};

/// (priority, highest first; ready time; id) of a queued job.
pub(super) type DispatchKey = (Reverse<i32>, u64, JobId);

pub(super) fn dispatch_key(job: &Job) -> DispatchKey {
    (Reverse(job.spec.priority), job.ready_at_ms, job.id)
}

/// What a job asks of a worker: every tag (sorted, without repeats) and, when not empty, to be
/// one of these workers. A job's spec does not change, so neither does its requirement.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Requirement {
    tags: Vec<String>,
    allowed_workers: Vec<Uuid>,
}

impl Requirement {
    fn of(job: &Job) -> Requirement {
        let mut tags = job.spec.tags.clone();
        tags.sort();
        tags.dedup();
        let mut allowed_workers = job.spec.allowed_workers.clone();
        allowed_workers.sort();
        allowed_workers.dedup();
        Requirement {
            tags,
            allowed_workers,
        }
    }

    fn met_by(&self, worker: &Worker) -> bool {
        (self.allowed_workers.is_empty()
            || self.allowed_workers.binary_search(&worker.info.id).is_ok())
            && self.tags.iter().all(|tag| worker.info.has_tag(tag))
    }
}

/// Every queued job, in dispatch order within its requirement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct DispatchIndex {
    /// No empty set is kept (so two indexes of the same jobs are equal).
    by_requirement: BTreeMap<Requirement, BTreeSet<DispatchKey>>,
}

impl DispatchIndex {
    pub(super) fn new() -> Self {
        DispatchIndex::default()
    }

    /// Adds a queued job under its current key.
    pub(super) fn insert(&mut self, job: &Job) {
        self.by_requirement
            .entry(Requirement::of(job))
            .or_default()
            .insert(dispatch_key(job));
    }

    /// Removes a job under its current key (before the key changes).
    pub(super) fn remove(&mut self, job: &Job) {
        let requirement = Requirement::of(job);
        if let Some(keys) = self.by_requirement.get_mut(&requirement) {
            keys.remove(&dispatch_key(job));
            if keys.is_empty() {
                self.by_requirement.remove(&requirement);
            }
        }
    }

    /// The ids of queued jobs ready at `now_ms` whose requirement `worker` meets, in dispatch
    /// order.
    pub(super) fn ready_for<'a>(
        &'a self,
        worker: &'a Worker,
        now_ms: u64,
    ) -> impl Iterator<Item = JobId> + 'a {
        let mut sets: Vec<std::iter::Peekable<ReadyJobs<'a>>> = self
            .by_requirement
            .iter()
            .filter(|(requirement, _)| requirement.met_by(worker))
            .map(|(_, keys)| ready_jobs(keys, now_ms).peekable())
            .collect();
        std::iter::from_fn(move || {
            let next = sets
                .iter_mut()
                .enumerate()
                .filter_map(|(n, set)| set.peek().map(|key| (*key, n)))
                .min()?;
            sets[next.1].next().map(|(_, _, id)| id)
        })
    }
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
    worker_capacity_at(
        worker,
        worker.cpu_percent_x10,
        worker.free_memory_mb,
        limits,
    )
}

/// [`worker_capacity`] had the worker reported this load.
pub(super) fn worker_capacity_at(
    worker: &Worker,
    cpu_percent_x10: u32,
    free_memory_mb: u64,
    limits: LoadLimits,
) -> u32 {
    let accepts = worker.enabled
        && !worker.draining
        && cpu_percent_x10 <= limits.max_cpu_percent_x10
        && free_memory_mb >= limits.min_free_memory_mb;
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

/// The keys of the jobs in `index` that are ready at `now_ms`, in dispatch order.
fn ready_jobs(index: &BTreeSet<DispatchKey>, now_ms: u64) -> ReadyJobs<'_> {
    ReadyJobs {
        index,
        now_ms,
        after: Bound::Unbounded,
    }
}

struct ReadyJobs<'a> {
    index: &'a BTreeSet<DispatchKey>,
    now_ms: u64,
    /// Where the scan resumes (exclusive).
    after: Bound<DispatchKey>,
}

impl Iterator for ReadyJobs<'_> {
    type Item = DispatchKey;

    fn next(&mut self) -> Option<DispatchKey> {
        loop {
            let &(priority, ready_at_ms, id) =
                self.index.range((self.after, Bound::Unbounded)).next()?;
            if ready_at_ms <= self.now_ms {
                self.after = Bound::Excluded((priority, ready_at_ms, id));
                return Some((priority, ready_at_ms, id));
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
        let index: BTreeSet<DispatchKey> = [
            (Reverse(5), 10, 1),
            (Reverse(5), 50, 2),
            (Reverse(5), 60, 3),
            (Reverse(0), 5, 4),
            (Reverse(0), 40, 5),
            (Reverse(-3), 0, 6),
        ]
        .into();
        let ids = |now_ms| {
            ready_jobs(&index, now_ms)
                .map(|(_, _, id)| id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(45), vec![1, 4, 5, 6]);
        assert_eq!(ids(0), vec![6]);
        assert_eq!(ids(u64::MAX), vec![1, 2, 3, 4, 5, 6]);
    }
}
