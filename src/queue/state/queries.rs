//! What the state answers without changing: jobs, pages, workers, leases, eligibility.

use std::sync::Arc;

use super::{Changes, JobPage, QueueState, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use crate::queue::dispatch::job_eligible;
use crate::queue::{FinishedJob, Job, JobId, JobState, Worker, WorkerId};

impl QueueState {
    /// A live job, or a finished one whose full row the store does not have yet
    /// ([`QueueState::archived`]). Other finished jobs are read from the store
    /// (`crate::raft::JobReader`); [`QueueState::finished_job`] says whether there is one.
    pub fn job(&self, job_id: JobId) -> Option<&Job> {
        self.jobs
            .get(&job_id)
            .or_else(|| self.archive.get(&job_id))
            .map(|job| &**job)
    }

    /// What is kept of a finished job.
    pub fn finished_job(&self, job_id: JobId) -> Option<&FinishedJob> {
        self.finished_jobs.get(&job_id)
    }

    /// The full row of a job that finished, until the store has confirmed it written
    /// ([`QueueState::release_archived`]); its log counters are current.
    pub fn archived(&self, job_id: JobId) -> Option<&Job> {
        self.archive.get(&job_id).map(|job| &**job)
    }

    /// [`QueueState::job`] shared, for the store to write without a copy.
    pub fn shared_job(&self, job_id: JobId) -> Option<Arc<Job>> {
        self.jobs
            .get(&job_id)
            .or_else(|| self.archive.get(&job_id))
            .cloned()
    }

    /// [`QueueState::archived`] shared, for the store to write without a copy.
    pub fn shared_archived(&self, job_id: JobId) -> Option<Arc<Job>> {
        self.archive.get(&job_id).cloned()
    }

    /// Lets go of the full rows of finished jobs the store has written.
    pub fn release_archived(&mut self, jobs: impl IntoIterator<Item = JobId>) {
        for job in jobs {
            self.archive.remove(&job);
        }
    }

    /// Every job whose full row this state holds, in id order: the live ones and the archive.
    /// Tests never release the archive, so there it is every job.
    #[cfg(test)]
    pub(crate) fn jobs(&self) -> impl Iterator<Item = &Job> + '_ {
        let mut all: Vec<&Job> = self
            .jobs
            .values()
            .chain(self.archive.values())
            .map(|job| &**job)
            .collect();
        all.sort_unstable_by_key(|job| job.id);
        all.into_iter()
    }

    /// How many jobs the state holds, live and finished.
    pub fn job_count(&self) -> usize {
        self.jobs.len() + self.finished_jobs.len()
    }

    /// Whether the state holds job `job_id`, live or finished.
    pub fn has_job(&self, job_id: JobId) -> bool {
        self.jobs.contains_key(&job_id) || self.finished_jobs.contains_key(&job_id)
    }

    /// The state of job `job_id`, live or finished.
    pub fn job_state(&self, job_id: JobId) -> Option<JobState> {
        self.jobs
            .get(&job_id)
            .map(|job| job.state)
            .or_else(|| self.finished_jobs.get(&job_id).map(|job| job.state))
    }

    pub fn count_in(&self, state: JobState) -> usize {
        self.by_state
            .range((state, 0)..=(state, JobId::MAX))
            .count()
    }

    /// The ids of jobs in id order after `after` (exclusive), optionally only those in `state`.
    /// `limit` 0 means the default page size; it is capped at [`MAX_PAGE_SIZE`]. (Finished
    /// jobs' rows are in the store: `crate::raft::JobReader` reads the page.)
    pub fn list(&self, state: Option<JobState>, after: JobId, limit: usize) -> JobPage {
        let limit = match limit {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let ids: Vec<JobId> = match state {
            Some(state) => self
                .by_state
                .range((state, after.saturating_add(1))..=(state, JobId::MAX))
                .map(|&(_, id)| id)
                .take(limit + 1)
                .collect(),
            None => {
                let first = after.saturating_add(1);
                let mut ids: Vec<JobId> = self
                    .jobs
                    .range(first..)
                    .map(|(&id, _)| id)
                    .take(limit + 1)
                    .chain(
                        self.finished_jobs
                            .range(first..)
                            .map(|(&id, _)| id)
                            .take(limit + 1),
                    )
                    .collect();
                ids.sort_unstable();
                ids.truncate(limit + 1);
                ids
            }
        };
        let more = ids.len() > limit;
        let ids: Vec<JobId> = ids.into_iter().take(limit).collect();
        let next_after = if more { ids.last().copied() } else { None };
        JobPage { ids, next_after }
    }

    pub fn worker(&self, id: WorkerId) -> Option<&Worker> {
        self.workers.get(&id)
    }

    /// Every registered worker, in id order.
    pub fn workers(&self) -> impl Iterator<Item = &Worker> + '_ {
        self.workers.values()
    }

    pub fn live_leases(&self) -> usize {
        self.expiry.len()
    }

    /// When the next lease expires: the leader's tick proposes `ExpireLeases` once its clock
    /// passes this.
    pub fn next_lease_expiry(&self) -> Option<u64> {
        self.expiry.first().map(|&(at, _)| at)
    }

    /// What changed since the last call, for the state machine to persist.
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// Queued jobs `worker` may take at `now_ms`, in dispatch order.
    pub(super) fn eligible_jobs<'a>(
        &'a self,
        worker: &'a Worker,
        now_ms: u64,
    ) -> impl Iterator<Item = JobId> + 'a {
        self.dispatch.ready_for(worker, now_ms).filter(move |id| {
            self.jobs
                .get(id)
                .is_some_and(|job| job_eligible(job, worker, now_ms))
        })
    }
}
