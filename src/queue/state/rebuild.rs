//! Rebuilding the state, every index included, from persisted rows ([`QueueState::from_parts`],
//! and opening the `sm` tree). Jobs are added one at a time, so the open never holds a list of
//! them beside the state they become; the rest (counters, workers, the outbox the queue holds,
//! log batch marks) comes last, in a [`Parts`] without jobs. (A snapshot install collects its
//! jobs first on purpose: see `rewrite_from_snapshot`.)

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Parts, QueueState};
use crate::queue::{EventKind, FinishedJob, Job, UNKNOWN_LAST_EVENT};

/// A state being rebuilt: [`Rebuild::add_job`] and [`Rebuild::add_finished`] each row, then
/// [`Rebuild::finish`].
#[derive(Default)]
pub struct Rebuild {
    state: QueueState,
    /// The highest lease token the rows show: the next one handed out is above it.
    highest_token: u64,
}

impl Rebuild {
    /// A job row: a live job, or (in data of earlier builds, whose outbox is held) a finished
    /// one, kept as a [`FinishedJob`].
    pub fn add_job(&mut self, job: Job) {
        self.highest_token = job
            .attempts
            .iter()
            .map(|a| a.token)
            .fold(self.highest_token, u64::max);
        if job.state.is_terminal() {
            self.state
                .index_finished(FinishedJob::of(&job, UNKNOWN_LAST_EVENT));
        } else {
            self.state.index_job(&job);
            self.state.jobs.insert(job.id, Arc::new(job));
        }
    }

    /// What is kept of a finished job.
    pub fn add_finished(&mut self, kept: FinishedJob) {
        self.highest_token = kept
            .attempts
            .iter()
            .map(|&(token, _)| token)
            .fold(self.highest_token, u64::max);
        self.state.index_finished(kept);
    }

    /// The state, with `rest`'s counters, workers, outbox and log batch marks (its jobs and
    /// lines, if any, are not looked at). The counters never go below what the rows prove was
    /// already handed out.
    pub fn finish(self, rest: Parts) -> QueueState {
        let Rebuild {
            mut state,
            highest_token,
        } = self;
        for worker in rest.workers {
            state.workers.insert(worker.info.id, worker);
        }
        state.outbox_meta = rest.outbox_meta;
        let mut held = state.outbox_meta.held.then(BTreeMap::new);
        for event in rest.outbox {
            if let EventKind::LogTruncated { job, .. } = event.kind {
                state.truncations.insert(job, event.clone());
            }
            if let Some(held) = &mut held {
                held.insert(event.id, event);
            }
        }
        state.held_outbox = held;
        state.clock_ms = rest.clock_ms;
        state.log_batches = rest
            .log_batches
            .into_iter()
            .map(|(job, token, batch)| ((job, token), batch))
            .collect();
        let after_last = state
            .jobs
            .keys()
            .next_back()
            .max(state.finished_jobs.keys().next_back())
            .map_or(1, |id| id + 1);
        state.next_job_id = rest.next_job_id.max(after_last);
        state.next_lease_token = rest.next_lease_token.max(highest_token + 1);
        state
    }
}
