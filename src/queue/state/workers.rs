//! The worker registry: registration, heartbeats, enable/disable/drain, removal.

use std::collections::BTreeSet;

use super::QueueState;
use crate::queue::{
    CommandOutput, CommandResult, EventKind, LeaseRef, QueueError, Worker, WorkerChange, WorkerId,
    WorkerInfo, WorkerSeen,
};

impl QueueState {
    /// A new worker starts enabled only under automatic approval. A known one (the agent
    /// restarted, or re-registers after a master failover) keeps the admin's decisions and the
    /// tasks it holds: its running tasks may well still be running.
    pub(super) fn register_worker(
        &mut self,
        info: WorkerInfo,
        auto_enable: bool,
        now_ms: u64,
    ) -> CommandResult {
        info.validate()?;
        let info = info.normalized();
        let id = info.id;
        let is_new = !self.workers.contains_key(&id);
        let worker = self.workers.entry(id).or_insert_with(|| Worker {
            info: info.clone(),
            enabled: auto_enable,
            draining: false,
            registered_at_ms: now_ms,
            last_heartbeat_ms: now_ms,
            cpu_percent_x10: 0,
            free_memory_mb: 0,
            running: BTreeSet::new(),
            last_grant: None,
        });
        worker.info = info;
        worker.last_heartbeat_ms = now_ms;
        let enabled = worker.enabled;
        self.changes.workers.insert(id);
        if is_new {
            self.record(EventKind::WorkerChanged {
                worker: id,
                change: WorkerChange::Registered,
            });
        }
        Ok(CommandOutput::WorkerRegistered { enabled })
    }

    pub(super) fn heartbeat(
        &mut self,
        worker: WorkerId,
        running: &[LeaseRef],
        cpu_percent_x10: u32,
        free_memory_mb: u64,
        now_ms: u64,
    ) -> CommandResult {
        self.record_load(worker, cpu_percent_x10, free_memory_mb, now_ms)?;
        self.heartbeat_answer(worker, running)
    }

    /// What [`Command::WorkerHeartbeat`](crate::queue::Command) answers `worker`, running
    /// `running`, from this state: its admin state, the leases it holds whose jobs are to be
    /// cancelled, and the leases it reports that it does not hold. The leader in office answers
    /// a heartbeat from here without a log entry when nothing is lost (the sighting goes into
    /// the next [`Command::WorkersSeen`](crate::queue::Command)).
    pub fn heartbeat_answer(&self, worker: WorkerId, running: &[LeaseRef]) -> CommandResult {
        let w = self
            .workers
            .get(&worker)
            .ok_or(QueueError::WorkerNotFound(worker))?;
        let cancel = w
            .running
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .filter(|job| job.cancel_requested)
            .filter_map(|job| {
                job.lease.as_ref().map(|lease| LeaseRef {
                    job_id: job.id,
                    token: lease.token,
                })
            })
            .collect();
        let lost = running
            .iter()
            .filter(|lease| {
                !self
                    .jobs
                    .get(&lease.job_id)
                    .is_some_and(|job| job.holds_lease(worker, lease.token))
            })
            .copied()
            .collect();
        Ok(CommandOutput::Heartbeat {
            enabled: w.enabled,
            draining: w.draining,
            cancel,
            lost,
        })
    }

    /// `WorkersSeen`: the sightings the leader gathered without log entries. A worker removed
    /// since is skipped, and so is a sighting older than the one recorded (a heartbeat that
    /// went through the log after it); none is recorded later than the apply's own time.
    pub(super) fn workers_seen(&mut self, seen: Vec<WorkerSeen>, now_ms: u64) -> CommandResult {
        let mut recorded = 0;
        for sighting in seen {
            let at_ms = sighting.at_ms.min(now_ms);
            let newer = self
                .workers
                .get(&sighting.worker)
                .is_some_and(|w| at_ms >= w.last_heartbeat_ms);
            if newer {
                self.record_load(
                    sighting.worker,
                    sighting.cpu_percent_x10,
                    sighting.free_memory_mb,
                    at_ms,
                )?;
                recorded += 1;
            }
        }
        Ok(CommandOutput::WorkersSeen { recorded })
    }

    /// Records what a worker just told us about itself; an unknown worker is refused (it must
    /// register first).
    pub(super) fn record_load(
        &mut self,
        worker: WorkerId,
        cpu_percent_x10: u32,
        free_memory_mb: u64,
        now_ms: u64,
    ) -> Result<(), QueueError> {
        let w = self
            .worker_mut(worker)
            .ok_or(QueueError::WorkerNotFound(worker))?;
        w.last_heartbeat_ms = now_ms;
        w.cpu_percent_x10 = cpu_percent_x10;
        w.free_memory_mb = free_memory_mb;
        Ok(())
    }

    /// Enabling also ends a drain (the admin wants the worker fully back); `draining` is applied
    /// after `enabled`, so asking for both leaves it enabled and draining.
    pub(super) fn set_worker_state(
        &mut self,
        worker: WorkerId,
        enabled: Option<bool>,
        draining: Option<bool>,
    ) -> CommandResult {
        let w = self
            .worker_mut(worker)
            .ok_or(QueueError::WorkerNotFound(worker))?;
        let before = (w.enabled, w.draining);
        if let Some(enabled) = enabled {
            w.enabled = enabled;
            if enabled {
                w.draining = false;
            }
        }
        if let Some(draining) = draining {
            w.draining = draining;
        }
        let after = (w.enabled, w.draining);
        let updated = w.clone();
        let change = match (before, after) {
            (before, after) if before == after => None,
            ((_, false), (_, true)) => Some(WorkerChange::Draining),
            ((false, _), (true, _)) => Some(WorkerChange::Enabled),
            ((true, _), (false, _)) => Some(WorkerChange::Disabled),
            // Only the drain ended (by an enable of an enabled worker).
            _ => Some(WorkerChange::Enabled),
        };
        if let Some(change) = change {
            self.record(EventKind::WorkerChanged { worker, change });
        }
        Ok(CommandOutput::WorkerUpdated {
            worker: Box::new(updated),
        })
    }

    /// Only an idle worker may go: removing one that holds leases would leave tasks no worker
    /// slot accounts for.
    pub(super) fn remove_worker(&mut self, worker: WorkerId) -> CommandResult {
        let w = self
            .workers
            .get(&worker)
            .ok_or(QueueError::WorkerNotFound(worker))?;
        if !w.running.is_empty() {
            return Err(QueueError::WorkerBusy {
                worker,
                running: w.running.len(),
            });
        }
        self.workers.remove(&worker);
        self.changes.workers.insert(worker);
        self.record(EventKind::WorkerChanged {
            worker,
            change: WorkerChange::Removed,
        });
        Ok(CommandOutput::WorkerRemoved)
    }
}
