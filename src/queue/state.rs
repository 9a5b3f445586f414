//! The queue's whole state and the one function that changes it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{
    ApplyContext, Command, CommandOutput, CommandResult, Job, JobId, JobState, QueueError,
};

/// The most jobs one page of a listing returns.
pub const MAX_PAGE_SIZE: usize = 1000;
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// Everything the replicated queue knows. Changed only by [`QueueState::apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    jobs: BTreeMap<JobId, Job>,
    /// The id the next submitted job gets.
    next_job_id: JobId,
    /// Idempotency key -> the job it created.
    idempotency: BTreeMap<String, JobId>,
    /// (state, id) of every job: listing by state and, later, dispatch scan only what they need.
    by_state: BTreeSet<(JobState, JobId)>,
    /// Jobs changed since the last [`QueueState::take_changed`]; not part of the state proper.
    #[serde(skip)]
    changed: BTreeSet<JobId>,
}

/// One page of a job listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// Where the next page starts (exclusive), when there is one.
    pub next_after: Option<JobId>,
}

impl QueueState {
    pub fn new() -> Self {
        QueueState {
            next_job_id: 1,
            ..QueueState::default()
        }
    }

    /// Rebuilds the state from persisted jobs and the persisted id sequence.
    pub fn from_parts(jobs: impl IntoIterator<Item = Job>, next_job_id: JobId) -> Self {
        let mut state = QueueState::new();
        for job in jobs {
            state.index(&job);
            state.jobs.insert(job.id, job);
        }
        let after_last = state.jobs.keys().next_back().map_or(1, |id| id + 1);
        state.next_job_id = next_job_id.max(after_last);
        state
    }

    pub fn next_job_id(&self) -> JobId {
        self.next_job_id
    }

    /// Applies one committed command. A rejection changes nothing.
    pub fn apply(&mut self, ctx: &ApplyContext, command: Command) -> CommandResult {
        match command {
            Command::SubmitJob {
                spec,
                idempotency_key,
            } => {
                spec.validate()?;
                if let Some(key) = &idempotency_key {
                    validate_idempotency_key(key)?;
                    if let Some(&job_id) = self.idempotency.get(key) {
                        let same = self.jobs.get(&job_id).is_some_and(|job| job.spec == spec);
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
                };
                if let Some(key) = &job.idempotency_key {
                    self.idempotency.insert(key.clone(), job_id);
                }
                self.index(&job);
                self.jobs.insert(job_id, job);
                self.changed.insert(job_id);
                Ok(CommandOutput::Submitted {
                    job_id,
                    deduplicated: false,
                })
            }
            Command::CancelJob { job_id } => {
                let state = self
                    .jobs
                    .get(&job_id)
                    .ok_or(QueueError::JobNotFound(job_id))?
                    .state;
                match state {
                    JobState::Cancelled => {}
                    JobState::Queued => self.transition(job_id, JobState::Cancelled, ctx.now_ms),
                    state => return Err(QueueError::NotCancellable { job_id, state }),
                }
                let job = self
                    .jobs
                    .get(&job_id)
                    .cloned()
                    .ok_or(QueueError::JobNotFound(job_id))?;
                Ok(CommandOutput::Cancelled { job: Box::new(job) })
            }
        }
    }

    pub fn job(&self, job_id: JobId) -> Option<&Job> {
        self.jobs.get(&job_id)
    }

    /// Every job in id order (the state machine persists and snapshots them).
    pub fn jobs(&self) -> impl Iterator<Item = &Job> + '_ {
        self.jobs.values()
    }

    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    pub fn count_in(&self, state: JobState) -> usize {
        self.by_state
            .range((state, 0)..=(state, JobId::MAX))
            .count()
    }

    /// Jobs in id order after `after` (exclusive), optionally only those in `state`.
    /// `limit` 0 means the default page size; it is capped at [`MAX_PAGE_SIZE`].
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
            None => self
                .jobs
                .range(after.saturating_add(1)..)
                .map(|(&id, _)| id)
                .take(limit + 1)
                .collect(),
        };
        let more = ids.len() > limit;
        let jobs: Vec<Job> = ids
            .iter()
            .take(limit)
            .filter_map(|id| self.jobs.get(id).cloned())
            .collect();
        let next_after = if more {
            jobs.last().map(|job| job.id)
        } else {
            None
        };
        JobPage { jobs, next_after }
    }

    /// The jobs changed since the last call, for the state machine to persist.
    pub fn take_changed(&mut self) -> BTreeSet<JobId> {
        std::mem::take(&mut self.changed)
    }

    /// Every state change goes through here, so the index stays right and illegal moves are
    /// caught in tests.
    fn transition(&mut self, job_id: JobId, next: JobState, now_ms: u64) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        debug_assert!(
            job.state.can_become(next),
            "illegal transition {} -> {next}",
            job.state
        );
        self.by_state.remove(&(job.state, job_id));
        job.state = next;
        job.updated_at_ms = now_ms;
        self.by_state.insert((next, job_id));
        self.changed.insert(job_id);
    }

    fn index(&mut self, job: &Job) {
        self.by_state.insert((job.state, job.id));
        if let Some(key) = &job.idempotency_key {
            self.idempotency.insert(key.clone(), job.id);
        }
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

#[cfg(test)]
mod tests;
