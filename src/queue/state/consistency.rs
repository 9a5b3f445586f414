//! The test check that every index and cross-reference agrees with the rows.

use super::QueueState;

impl QueueState {
    /// Checks every index and cross-reference against the rows; a description of the first
    /// inconsistency found. Tests call it after every command.
    pub(crate) fn check_consistency(&self) -> Result<(), String> {
        let rebuilt = QueueState::from_parts(self.to_parts());
        if rebuilt.by_state != self.by_state
            || rebuilt.job_counts != self.job_counts
            || rebuilt.dispatch != self.dispatch
            || rebuilt.expiry != self.expiry
            || rebuilt.idempotency != self.idempotency
            || rebuilt.finished != self.finished
        {
            return Err("an index disagrees with the jobs".into());
        }
        if rebuilt.truncations != self.truncations {
            return Err("the truncation events disagree with the outbox".into());
        }
        self.check_outbox()?;
        if self.applying.is_some()
            || !self.finishing.is_empty()
            || !self.passing_truncations.is_empty()
        {
            return Err("an apply context outlived its apply".into());
        }
        for (id, row) in &self.archive {
            if !self
                .finished_jobs
                .get(id)
                .is_some_and(|kept| kept.describes(row))
            {
                return Err(format!("the archived row of job {id} is not the job kept"));
            }
        }
        for job in self.jobs.values() {
            if job.state.is_terminal() {
                return Err(format!("finished job {} is among the live jobs", job.id));
            }
            if job.state.is_leased() != job.lease.is_some() {
                return Err(format!(
                    "job {} is {} with lease {:?}",
                    job.id, job.state, job.lease
                ));
            }
            if job.attempts.len() > job.spec.max_attempts as usize {
                return Err(format!("job {} has too many attempts", job.id));
            }
            let live = job.attempts.iter().filter(|a| a.outcome.is_none()).count();
            if live != usize::from(job.lease.is_some()) {
                return Err(format!("job {} has {live} live attempts", job.id));
            }
            if let Some(lease) = &job.lease {
                if lease.token >= self.next_lease_token {
                    return Err(format!("job {} holds a token not yet handed out", job.id));
                }
                let holder = self.workers.get(&lease.worker);
                if !holder.is_some_and(|w| w.running.contains(&job.id)) {
                    return Err(format!("job {}'s worker does not list it", job.id));
                }
                if job
                    .current_attempt()
                    .is_none_or(|a| a.worker != lease.worker)
                {
                    return Err(format!("job {}'s lease has no matching attempt", job.id));
                }
            }
        }
        for worker in self.workers.values() {
            for id in &worker.running {
                let holds = self
                    .jobs
                    .get(id)
                    .and_then(|j| j.lease.as_ref())
                    .is_some_and(|l| l.worker == worker.info.id);
                if !holds {
                    return Err(format!(
                        "worker {} lists job {id} without its lease",
                        worker.info.id
                    ));
                }
            }
        }
        Ok(())
    }
}
