//! The primitives: the only code that changes jobs, leases and running sets, keeping every
//! index and the change set right. Handlers validate first and then mutate through these.

use std::sync::Arc;

use super::QueueState;
use crate::queue::{
    Assignment, Attempt, AttemptOutcome, EventKind, FinishedJob, Job, JobId, JobState, Lease,
    Worker, WorkerId,
};

impl QueueState {
    /// Moves a job to `next`, keeping `by_state` and `dispatch` right. Illegal moves are bugs:
    /// every caller checks the state first, and tests run with this assertion on.
    pub(super) fn transition(&mut self, job_id: JobId, next: JobState, now_ms: u64) {
        let Some(job) = self.jobs.get_mut(&job_id).map(Arc::make_mut) else {
            return;
        };
        debug_assert!(
            job.state.can_become(next),
            "illegal transition {} -> {next} of job {job_id}",
            job.state
        );
        if job.state == JobState::Queued {
            self.dispatch.remove(job);
        }
        self.by_state.remove(&(job.state, job_id));
        if let Some(count) = self.job_counts.get_mut(&job.state) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.job_counts.remove(&job.state);
            }
        }
        let from = job.state;
        job.state = next;
        job.updated_at_ms = now_ms;
        if next.is_terminal() {
            self.activity.job_ended(next);
            self.finished.insert((now_ms, job_id));
            self.finishing.push(job_id);
        }
        self.by_state.insert((next, job_id));
        *self.job_counts.entry(next).or_default() += 1;
        if next == JobState::Queued {
            self.dispatch.insert(job);
        }
        self.changes.jobs.insert(job_id);
        self.record(EventKind::JobStateChanged {
            job: job_id,
            from,
            to: next,
        });
    }

    /// Puts a job whose attempt ended back in the queue, eligible from `ready_at_ms`.
    pub(super) fn requeue(&mut self, job_id: JobId, ready_at_ms: u64, now_ms: u64) {
        if let Some(job) = self.jobs.get_mut(&job_id).map(Arc::make_mut) {
            // Not in the dispatch index while leased, so its key may change here.
            job.ready_at_ms = ready_at_ms;
            self.transition(job_id, JobState::Queued, now_ms);
        }
    }

    /// Leases a queued job to `worker`: a fresh token, a new attempt, the job picked up and
    /// the worker's slot taken.
    pub(super) fn grant_lease(
        &mut self,
        job_id: JobId,
        worker: WorkerId,
        lease_ms: u64,
        now_ms: u64,
    ) -> Option<Assignment> {
        let job = self.jobs.get(&job_id)?;
        if job.state != JobState::Queued || !self.workers.contains_key(&worker) {
            return None;
        }
        self.transition(job_id, JobState::PickedUp, now_ms);
        let token = self.next_lease_token;
        self.next_lease_token += 1;
        let expires_at_ms = now_ms.saturating_add(lease_ms);
        let job = self.jobs.get_mut(&job_id).map(Arc::make_mut)?;
        let number = u32::try_from(job.attempts.len() + 1).unwrap_or(u32::MAX);
        job.attempts.push(Attempt {
            number,
            worker,
            token,
            started_at_ms: now_ms,
            ended_at_ms: None,
            outcome: None,
            exit_code: None,
            error: String::new(),
        });
        job.lease = Some(Lease {
            token,
            worker,
            expires_at_ms,
        });
        let assignment = Assignment {
            job_id,
            token,
            attempt: number,
            spec: job.spec.clone(),
            expires_at_ms,
        };
        self.expiry.insert((expires_at_ms, job_id));
        self.activity.leases_granted += 1;
        if let Some(w) = self.workers.get_mut(&worker) {
            w.running.insert(job_id);
            self.changes.workers.insert(worker);
        }
        self.record(EventKind::AttemptStarted {
            job: job_id,
            attempt: number,
            worker,
            lease_token: token,
        });
        Some(assignment)
    }

    /// Moves a live lease's expiry, keeping the `expiry` index right.
    pub(super) fn set_lease_expiry(&mut self, job_id: JobId, expires_at_ms: u64) {
        let Some(lease) = self
            .jobs
            .get_mut(&job_id)
            .map(Arc::make_mut)
            .and_then(|j| j.lease.as_mut())
        else {
            return;
        };
        self.expiry.remove(&(lease.expires_at_ms, job_id));
        lease.expires_at_ms = expires_at_ms;
        self.expiry.insert((expires_at_ms, job_id));
        self.changes.jobs.insert(job_id);
    }

    /// Ends the live attempt of a leased job and releases its lease and worker slot, then
    /// settles the job: done, cancelled, failed, or queued again while attempts remain.
    /// Returns the job's new state.
    pub(super) fn end_attempt(
        &mut self,
        job_id: JobId,
        outcome: AttemptOutcome,
        exit_code: Option<i32>,
        error: String,
        now_ms: u64,
    ) -> Option<JobState> {
        let job = self.jobs.get_mut(&job_id).map(Arc::make_mut)?;
        let lease = job.lease.take()?;
        let mut ended = None;
        if let Some(attempt) = job
            .attempts
            .iter_mut()
            .rev()
            .find(|a| a.token == lease.token)
        {
            attempt.ended_at_ms = Some(now_ms);
            attempt.outcome = Some(outcome);
            attempt.exit_code = exit_code;
            attempt.error = error;
            ended = Some(attempt.number);
        }
        self.expiry.remove(&(lease.expires_at_ms, job_id));
        if let Some(worker) = self.workers.get_mut(&lease.worker) {
            worker.running.remove(&job_id);
            self.changes.workers.insert(lease.worker);
        }
        self.changes.jobs.insert(job_id);

        let attempts_left = job.attempts.len() < job.spec.max_attempts as usize;
        let cancel_requested = job.cancel_requested;
        let retry_delay_secs = job.spec.retry_delay_secs;
        if let Some(attempt) = ended {
            self.activity.attempt_ended(outcome);
            self.record(EventKind::AttemptEnded {
                job: job_id,
                attempt,
                worker: lease.worker,
                outcome,
            });
        }
        let next = match outcome {
            AttemptOutcome::Succeeded => JobState::Succeeded,
            AttemptOutcome::Cancelled => JobState::Cancelled,
            AttemptOutcome::Failed | AttemptOutcome::Expired if cancel_requested => {
                JobState::Cancelled
            }
            AttemptOutcome::Failed | AttemptOutcome::Expired if attempts_left => JobState::Queued,
            AttemptOutcome::Failed | AttemptOutcome::Expired => JobState::Failed,
        };
        if next == JobState::Queued {
            let delay_ms = retry_delay_secs.unwrap_or(0).saturating_mul(1000);
            self.requeue(job_id, now_ms.saturating_add(delay_ms), now_ms);
        } else {
            self.transition(job_id, next, now_ms);
        }
        Some(next)
    }

    /// A worker, marked changed: for handlers that update its registry fields.
    pub(super) fn worker_mut(&mut self, id: WorkerId) -> Option<&mut Worker> {
        let worker = self.workers.get_mut(&id)?;
        self.changes.workers.insert(id);
        Some(worker)
    }

    /// Moves the jobs the command just applied finished to `finished_jobs`, their full rows to
    /// the archive (for the store).
    pub(super) fn archive_finishing(&mut self) {
        for job_id in std::mem::take(&mut self.finishing) {
            let Some(job) = self.jobs.remove(&job_id) else {
                continue;
            };
            debug_assert!(job.state.is_terminal(), "archiving unfinished job {job_id}");
            // The command that finished it recorded its last state change: no later event names
            // it unless it is about it (`note_event_about`).
            let last_event = self.outbox_meta.newest_event_id();
            self.finished_jobs
                .insert(job_id, FinishedJob::of(&job, last_event));
            if self.held_outbox.is_none() && self.truncations.remove(&job_id).is_some() {
                self.changes.truncations.insert(job_id);
            }
            self.archive.insert(job_id, job);
            self.changes.jobs.insert(job_id);
        }
    }

    /// Removes a finished job and everything that is only its: attempts (in the row), log
    /// lines, log batch marks and its idempotency key. Its id is never handed out again. Its
    /// outbox events stay until shipped or pruned (the shipper copes with a job gone).
    pub(super) fn remove_job(&mut self, job_id: JobId) {
        let Some(job) = self.finished_jobs.remove(&job_id) else {
            return;
        };
        self.archive.remove(&job_id);
        self.by_state.remove(&(job.state, job_id));
        if let Some(count) = self.job_counts.get_mut(&job.state) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.job_counts.remove(&job.state);
            }
        }
        self.finished.remove(&(job.finished_at_ms, job_id));
        if let Some(key) = &job.idempotency_key {
            if self.idempotency.get(key) == Some(&job_id) {
                self.idempotency.remove(key);
            }
        }
        if job.logs.lines > 0 {
            self.changes.logs_removed.insert(job_id);
        }
        let marks: Vec<(JobId, u64)> = self
            .log_batches
            .range((job_id, 0)..=(job_id, u64::MAX))
            .map(|(key, _)| *key)
            .collect();
        for key in marks {
            self.log_batches.remove(&key);
            self.changes.log_batches.insert(key);
        }
        self.changes.jobs.insert(job_id);
    }

    /// Adds a live job to the indexes.
    pub(super) fn index_job(&mut self, job: &Job) {
        debug_assert!(!job.state.is_terminal(), "indexing finished job {}", job.id);
        self.by_state.insert((job.state, job.id));
        *self.job_counts.entry(job.state).or_default() += 1;
        if job.state == JobState::Queued {
            self.dispatch.insert(job);
        }
        if let Some(lease) = &job.lease {
            self.expiry.insert((lease.expires_at_ms, job.id));
        }
        if let Some(key) = &job.idempotency_key {
            self.idempotency.insert(key.clone(), job.id);
        }
    }

    /// Adds a finished job to `finished_jobs` and the indexes.
    pub(super) fn index_finished(&mut self, job: FinishedJob) {
        self.finished.insert((job.finished_at_ms, job.id));
        self.by_state.insert((job.state, job.id));
        *self.job_counts.entry(job.state).or_default() += 1;
        if let Some(key) = &job.idempotency_key {
            self.idempotency.insert(key.clone(), job.id);
        }
        self.finished_jobs.insert(job.id, job);
    }
}
