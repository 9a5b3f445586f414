//! What the queue has done since it was loaded: leases granted, renewed and expired, attempts
//! ended by outcome, jobs submitted. Counted in apply, so every replica that applies the same
//! log counts the same; kept in memory only, so the counts restart from zero with the process
//! (or when a snapshot replaces the state), as Prometheus counters may.

use super::AttemptOutcome;

/// Activity counters; not part of the replicated state (two replicas with equal states may
/// have counted differently since they started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    pub jobs_submitted: u64,
    pub leases_granted: u64,
    /// Renewals that a worker asked for and got (not the extension a new leader gives).
    pub leases_renewed: u64,
    pub attempts_succeeded: u64,
    pub attempts_failed: u64,
    /// Attempts whose lease ran out: the leases that expired.
    pub attempts_expired: u64,
    pub attempts_cancelled: u64,
    /// Finished jobs removed by retention.
    pub jobs_removed: u64,
    /// Jobs that ended, by how.
    pub jobs_succeeded: u64,
    pub jobs_failed: u64,
    pub jobs_cancelled: u64,
}

impl Activity {
    pub(crate) fn attempt_ended(&mut self, outcome: AttemptOutcome) {
        let counter = match outcome {
            AttemptOutcome::Succeeded => &mut self.attempts_succeeded,
            AttemptOutcome::Failed => &mut self.attempts_failed,
            AttemptOutcome::Expired => &mut self.attempts_expired,
            AttemptOutcome::Cancelled => &mut self.attempts_cancelled,
        };
        *counter += 1;
    }

    /// A job reached `state`; counted when it is a final one.
    pub(crate) fn job_ended(&mut self, state: super::JobState) {
        match state {
            super::JobState::Succeeded => self.jobs_succeeded += 1,
            super::JobState::Failed => self.jobs_failed += 1,
            super::JobState::Cancelled => self.jobs_cancelled += 1,
            _ => {}
        }
    }

    /// Attempts ended with `outcome`.
    pub fn attempts(&self, outcome: AttemptOutcome) -> u64 {
        match outcome {
            AttemptOutcome::Succeeded => self.attempts_succeeded,
            AttemptOutcome::Failed => self.attempts_failed,
            AttemptOutcome::Expired => self.attempts_expired,
            AttemptOutcome::Cancelled => self.attempts_cancelled,
        }
    }
}
