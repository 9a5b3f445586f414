//! Leases: granting tasks, renewing, completing, expiring and extending.
//!
//! The fencing rule (invariant 2) lives in [`Job::holds_lease`](crate::queue::Job::holds_lease):
//! a renew or complete counts only when the job's current lease has the presented token and
//! names the presenting worker. Everything else is answered, per lease, as lost.

use super::QueueState;
use crate::queue::attempt::{truncate_utf8, MAX_ATTEMPT_ERROR_BYTES, MAX_LEASE_MS};
use crate::queue::dispatch::{worker_capacity, worker_capacity_at, LoadLimits};
use crate::queue::worker::Grant;
use crate::queue::{
    AcquireRequest, Assignment, AttemptOutcome, CommandOutput, CommandResult, JobId, JobState,
    LeaseRef, LeaseStatus, LogLevel, LogLine, QueueError, TaskReport, WorkerId,
};

/// Longest request id an AcquireTasks may carry.
const MAX_REQUEST_ID_BYTES: usize = 128;

impl QueueState {
    /// `AcquireTasks`: leases up to the free slots' worth of eligible tasks to `worker`.
    pub(super) fn acquire(
        &mut self,
        worker: WorkerId,
        request: AcquireRequest,
        now_ms: u64,
    ) -> Result<Vec<Assignment>, QueueError> {
        let AcquireRequest {
            free_slots,
            lease_ms,
            cpu_percent_x10,
            free_memory_mb,
            max_cpu_percent_x10,
            min_free_memory_mb,
            request_id,
        } = request;
        let limits = LoadLimits {
            max_cpu_percent_x10,
            min_free_memory_mb,
        };
        validate_acquire(lease_ms, request_id.as_deref())?;
        self.record_load(worker, cpu_percent_x10, free_memory_mb, now_ms)?;
        if let Some(tasks) = self.regrant(worker, request_id.as_deref()) {
            return Ok(tasks);
        }
        let w = self
            .workers
            .get(&worker)
            .ok_or(QueueError::WorkerNotFound(worker))?;
        let wanted = free_slots.min(worker_capacity(w, limits)) as usize;
        let chosen: Vec<JobId> = if wanted == 0 {
            Vec::new()
        } else {
            self.eligible_jobs(w, now_ms).take(wanted).collect()
        };
        let tasks: Vec<Assignment> = chosen
            .into_iter()
            .filter_map(|job_id| self.grant_lease(job_id, worker, lease_ms, now_ms))
            .collect();
        if let Some(request_id) = request_id.filter(|_| !tasks.is_empty()) {
            let leases = tasks
                .iter()
                .map(|t| LeaseRef {
                    job_id: t.job_id,
                    token: t.token,
                })
                .collect();
            if let Some(w) = self.worker_mut(worker) {
                w.last_grant = Some(Grant { request_id, leases });
            }
        }
        Ok(tasks)
    }

    /// Whether [`Command::AcquireTasks`](crate::queue::Command) with `request` would lease
    /// anything to `worker` at `now_ms`: a task it may take, or the grant a retry of the same
    /// request gets back. When it would not, the command would change nothing but the worker's
    /// load and heartbeat time, so a leader in office answers the poll without a log entry.
    /// Refused as the command would refuse it.
    pub fn acquire_would_grant(
        &self,
        worker: WorkerId,
        request: &AcquireRequest,
        now_ms: u64,
    ) -> Result<bool, QueueError> {
        validate_acquire(request.lease_ms, request.request_id.as_deref())?;
        let w = self
            .workers
            .get(&worker)
            .ok_or(QueueError::WorkerNotFound(worker))?;
        if self
            .regrant(worker, request.request_id.as_deref())
            .is_some()
        {
            return Ok(true);
        }
        // Judged on the load the command would record before it checks the limits.
        let limits = LoadLimits {
            max_cpu_percent_x10: request.max_cpu_percent_x10,
            min_free_memory_mb: request.min_free_memory_mb,
        };
        let capacity =
            worker_capacity_at(w, request.cpu_percent_x10, request.free_memory_mb, limits);
        Ok(
            request.free_slots > 0
                && capacity > 0
                && self.eligible_jobs(w, now_ms).next().is_some(),
        )
    }

    /// A retry of a call that was granted is answered with what it was granted and still
    /// holds; when none of it is held any more (the worker was away longer than the lease), the
    /// retry is an ordinary request (`None`).
    fn regrant(&self, worker: WorkerId, request_id: Option<&str>) -> Option<Vec<Assignment>> {
        let grant = self.workers.get(&worker)?.last_grant.as_ref()?;
        if request_id? != grant.request_id {
            return None;
        }
        let tasks: Vec<Assignment> = grant
            .leases
            .iter()
            .filter_map(|lease| self.held_assignment(worker, *lease))
            .collect();
        (!tasks.is_empty()).then_some(tasks)
    }

    /// The assignment of a lease `worker` still holds, as it was granted.
    fn held_assignment(&self, worker: WorkerId, lease: LeaseRef) -> Option<Assignment> {
        let job = self
            .jobs
            .get(&lease.job_id)
            .filter(|job| job.holds_lease(worker, lease.token))?;
        let attempt = job.attempt_with(worker, lease.token)?;
        Some(Assignment {
            job_id: job.id,
            token: lease.token,
            attempt: attempt.number,
            spec: job.spec.clone(),
            expires_at_ms: job.lease.as_ref().map_or(0, |l| l.expires_at_ms),
        })
    }

    /// Each current lease runs on to now + `lease_ms`, and a picked-up task counts as running
    /// from its first renewal. A lease that is not current is answered `renewed: false`, never
    /// an error: the worker kills that task and carries on with the others.
    pub(super) fn renew(
        &mut self,
        worker: WorkerId,
        leases: &[LeaseRef],
        lease_ms: u64,
        now_ms: u64,
    ) -> CommandResult {
        validate_lease_ms(lease_ms)?;
        self.worker_mut(worker)
            .ok_or(QueueError::WorkerNotFound(worker))?
            .last_heartbeat_ms = now_ms;
        let expires_at_ms = now_ms.saturating_add(lease_ms);
        let mut statuses = Vec::with_capacity(leases.len());
        for lease in leases {
            let current = self
                .jobs
                .get(&lease.job_id)
                .filter(|job| job.holds_lease(worker, lease.token));
            let Some(job) = current else {
                statuses.push(LeaseStatus {
                    job_id: lease.job_id,
                    token: lease.token,
                    renewed: false,
                    cancel_requested: false,
                    expires_at_ms: 0,
                });
                continue;
            };
            let (state, cancel_requested) = (job.state, job.cancel_requested);
            self.set_lease_expiry(lease.job_id, expires_at_ms);
            self.activity.leases_renewed += 1;
            if state == JobState::PickedUp {
                self.transition(lease.job_id, JobState::Running, now_ms);
            }
            statuses.push(LeaseStatus {
                job_id: lease.job_id,
                token: lease.token,
                renewed: true,
                cancel_requested,
                expires_at_ms,
            });
        }
        Ok(CommandOutput::Renewed { leases: statuses })
    }

    /// [`Command::ReportAndAcquire`](crate::queue::Command): every report as `ReportResult`,
    /// then the acquire, each answering as its own command would (a refused report changes
    /// nothing and does not stop the others or the acquire). Refused as a whole, with the
    /// acquire's error, only when every part was refused: then nothing changed.
    pub(super) fn report_and_acquire(
        &mut self,
        worker: WorkerId,
        reports: Vec<TaskReport>,
        acquire: AcquireRequest,
        now_ms: u64,
    ) -> CommandResult {
        let mut answers = Vec::with_capacity(reports.len());
        for report in reports {
            answers.push(self.complete(
                worker,
                report.lease,
                (report.outcome, report.exit_code, report.error),
                true,
                now_ms,
            ));
            // What `apply` does after each command, so each part ends as its own would.
            self.archive_finishing();
            self.drop_passing_truncations();
        }
        let reports = answers;
        let acquired = self.acquire(worker, acquire, now_ms);
        match acquired {
            Err(error) if reports.iter().all(Result::is_err) => Err(error),
            acquired => Ok(CommandOutput::ReportedAndAcquired { reports, acquired }),
        }
    }

    /// The worker's verdict on its attempt. Only the current lease's holder may give it, once:
    /// the lease is cleared here. With `decide_ended` (`ReportResult`), a verdict on an attempt
    /// that already ended is answered here too, in the same entry: the same verdict again (its
    /// answer was lost) is `CompletedBefore` and changes nothing; another one (the lease had
    /// expired, the job was cancelled) is `CompletedLate`, kept as a late warning line in the
    /// job's log and not applied. Without (`CompleteTask`, an earlier build's entry), or for a
    /// token this worker never held for the job, it is `LeaseLost`.
    pub(super) fn complete(
        &mut self,
        worker: WorkerId,
        lease: LeaseRef,
        (outcome, exit_code, error): (AttemptOutcome, Option<i32>, String),
        decide_ended: bool,
        now_ms: u64,
    ) -> CommandResult {
        if outcome == AttemptOutcome::Expired {
            return Err(QueueError::InvalidRequest(
                "a worker cannot complete a task as expired (only the master expires leases); \
                 report succeeded, failed or cancelled"
                    .into(),
            ));
        }
        let lease_lost = || QueueError::LeaseLost {
            job_id: lease.job_id,
            token: lease.token,
        };
        // An attempt this worker once ran under this token that is no longer current: its
        // number, whether it ended with this very verdict, the job's state and log counters.
        let ended = match self.jobs.get(&lease.job_id) {
            Some(job) if job.holds_lease(worker, lease.token) => None,
            Some(job) => {
                let attempt = job
                    .attempt_with(worker, lease.token)
                    .ok_or_else(lease_lost)?;
                let repeat = attempt.outcome == Some(outcome) && attempt.exit_code == exit_code;
                Some((attempt.number, repeat, job.state, job.log_counts()))
            }
            None => {
                let job = self
                    .finished_jobs
                    .get(&lease.job_id)
                    .ok_or(QueueError::JobNotFound(lease.job_id))?;
                let number = job
                    .attempt_with(worker, lease.token)
                    .ok_or_else(lease_lost)?;
                // A finished job's record keeps no attempt's outcome: the verdict is the one it
                // ended with when it is its last attempt's and the job's state is that verdict's
                // (a job ends with its last attempt). Every build keeps these fields alike, so
                // every replica decides the same. (A last attempt that expired with no attempt
                // left also ends the job failed: its worker's late "failed" reads as a repeat.)
                let last = usize::try_from(number).is_ok_and(|n| n == job.attempts.len());
                let repeat = last && outcome.final_state() == Some(job.state);
                Some((number, repeat, job.state, job.logs))
            }
        };
        if ended.is_some() && !decide_ended {
            return Err(lease_lost());
        }
        if let Some((number, repeat, state, counts)) = ended {
            if repeat {
                return Ok(CommandOutput::CompletedBefore { state });
            }
            // Not applied, but what the worker said stays in the task's history. (The text is
            // replicated state: built from fixed names, not from `Debug`.)
            let exit_code = exit_code.map_or("none".to_string(), |code| code.to_string());
            let line = LogLine {
                at_ms: now_ms,
                level: LogLevel::Warning,
                text: format!(
                    "late result from worker {worker} (lease {}): {}, exit code {exit_code}, \
                     {error}",
                    lease.token,
                    outcome.as_str()
                ),
            };
            self.append_lines(lease.job_id, number, true, counts, vec![line]);
            return Ok(CommandOutput::CompletedLate);
        }
        let error = truncate_utf8(error, MAX_ATTEMPT_ERROR_BYTES);
        let state = self
            .end_attempt(lease.job_id, outcome, exit_code, error, now_ms)
            .ok_or(QueueError::LeaseLost {
                job_id: lease.job_id,
                token: lease.token,
            })?;
        Ok(CommandOutput::Completed { state })
    }

    /// Ends every lease due at or before `now_ms` (the leader's clock in the entry: expiry is
    /// decided by committed time, invariant 4). Each expiry consumes the attempt.
    pub(super) fn expire(&mut self, now_ms: u64) -> CommandOutput {
        let due: Vec<JobId> = self
            .expiry
            .range(..=(now_ms, JobId::MAX))
            .map(|&(_, id)| id)
            .collect();
        for &job_id in &due {
            self.end_attempt(
                job_id,
                AttemptOutcome::Expired,
                None,
                "the lease expired: the worker did not renew it in time".into(),
                now_ms,
            );
        }
        CommandOutput::Expired { jobs: due }
    }

    /// Gives every live lease `lease_ms` more, counted from now if it is already due: what a
    /// new leader applies first, since no worker could renew while there was no leader.
    pub(super) fn extend(&mut self, lease_ms: u64, now_ms: u64) -> CommandResult {
        validate_lease_ms(lease_ms)?;
        let live: Vec<(u64, JobId)> = self.expiry.iter().copied().collect();
        for &(expires_at_ms, job_id) in &live {
            let extended = expires_at_ms.max(now_ms.saturating_add(lease_ms));
            self.set_lease_expiry(job_id, extended);
        }
        Ok(CommandOutput::Extended {
            leases: live.len() as u64,
        })
    }
}

fn validate_acquire(lease_ms: u64, request_id: Option<&str>) -> Result<(), QueueError> {
    validate_lease_ms(lease_ms)?;
    if request_id.is_some_and(|id| id.len() > MAX_REQUEST_ID_BYTES) {
        return Err(QueueError::InvalidRequest(format!(
            "request_id is longer than {MAX_REQUEST_ID_BYTES} bytes"
        )));
    }
    Ok(())
}

fn validate_lease_ms(lease_ms: u64) -> Result<(), QueueError> {
    if lease_ms == 0 || lease_ms > MAX_LEASE_MS {
        return Err(QueueError::InvalidRequest(format!(
            "a lease of {lease_ms} ms is out of range: give 1 to {MAX_LEASE_MS} ms (one day); \
             check the master's lease settings"
        )));
    }
    Ok(())
}
