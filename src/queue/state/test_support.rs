//! A small driver for tests: applies commands with a clock the test moves, checks every index
//! after each command, and keeps the rows a state machine would have persisted.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::{Parts, QueueState};
use crate::queue::dispatch::{worker_capacity, LoadLimits};
use crate::queue::{
    ApplyContext, Assignment, AttemptOutcome, Command, CommandOutput, CommandResult, FinishedJob,
    Job, JobId, JobLogLine, JobSpec, LeaseRef, LeaseStatus, LogLevel, LogLine, OutboxEvent,
    OutboxMeta, Worker, WorkerId, WorkerInfo,
};

pub const T0: u64 = 1_700_000_000_000;
pub const LEASE_MS: u64 = 30_000;
pub const MAX_CPU: u32 = 700;
pub const MIN_MEM: u64 = 100;

pub fn worker_id(n: u128) -> WorkerId {
    Uuid::from_u128(0x5ca1e000_0000_4000_8000_000000000000 + n)
}

pub fn worker_info(id: WorkerId, tags: &[&str], max_tasks: u32) -> WorkerInfo {
    WorkerInfo {
        id,
        display_name: format!("w-{id}"),
        description: String::new(),
        machine_name: "host".into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        max_tasks,
        version: "test".into(),
    }
}

pub fn spec() -> JobSpec {
    JobSpec {
        argv: vec!["run".into()],
        max_attempts: 1,
        ..JobSpec::default()
    }
}

pub fn lease_of(a: &Assignment) -> LeaseRef {
    LeaseRef {
        job_id: a.job_id,
        token: a.token,
    }
}

pub fn line(text: &str) -> LogLine {
    LogLine {
        at_ms: T0,
        level: LogLevel::Info,
        text: text.into(),
    }
}

/// The rows a state machine holds after persisting every change set.
#[derive(Debug, Default, Clone)]
pub struct Rows {
    /// Live jobs.
    pub jobs: BTreeMap<JobId, Job>,
    /// Finished jobs: what the state keeps, and the full row as it finished.
    pub finished: BTreeMap<JobId, FinishedJob>,
    pub archive: BTreeMap<JobId, Job>,
    pub workers: BTreeMap<WorkerId, Worker>,
    pub logs: BTreeMap<(JobId, u64), JobLogLine>,
    pub next_job_id: JobId,
    pub next_lease_token: u64,
    /// Every pending outbox event (the state holds counters only).
    pub outbox: BTreeMap<u64, OutboxEvent>,
    /// The truncation event of each job the state holds one for.
    pub truncations: BTreeMap<JobId, OutboxEvent>,
    pub outbox_meta: OutboxMeta,
    pub clock_ms: u64,
    pub log_batches: BTreeMap<(JobId, u64), u64>,
}

impl Rows {
    /// Writes what `state` reports as changed, as the sled state machine does.
    pub fn persist(&mut self, state: &mut QueueState) {
        let changes = state.take_changes();
        for id in changes.jobs {
            match (state.finished_job(id), state.job(id)) {
                (Some(kept), _) => {
                    self.finished.insert(id, kept.clone());
                    if let Some(row) = state.archived(id) {
                        self.archive.insert(id, row.clone());
                        self.jobs.remove(&id);
                    }
                }
                (None, Some(job)) => {
                    self.jobs.insert(id, job.clone());
                }
                (None, None) => {
                    self.jobs.remove(&id);
                    self.finished.remove(&id);
                    self.archive.remove(&id);
                }
            }
        }
        for id in changes.workers {
            match state.worker(id) {
                Some(worker) => self.workers.insert(id, worker.clone()),
                None => self.workers.remove(&id),
            };
        }
        for line in changes.log_lines {
            self.logs.insert((line.job_id, line.sequence), line);
        }
        for job in changes.logs_removed {
            self.logs.retain(|(id, _), _| *id != job);
        }
        if let Some(up_to) = changes.outbox_released {
            self.outbox.retain(|&id, _| id > up_to);
        }
        for id in &changes.outbox_removed {
            self.outbox.remove(id);
        }
        for event in changes.outbox_written {
            let released = changes
                .outbox_released
                .is_some_and(|up_to| event.id <= up_to);
            if !released && !changes.outbox_removed.contains(&event.id) {
                self.outbox.insert(event.id, event);
            }
        }
        for job in changes.truncations {
            match state.truncation(job) {
                Some(event) => self.truncations.insert(job, event.clone()),
                None => self.truncations.remove(&job),
            };
        }
        if changes.outbox_meta {
            self.outbox_meta = state.outbox_meta().clone();
        }
        if changes.clock {
            self.clock_ms = state.clock_ms();
        }
        for (job, token) in changes.log_batches {
            match state.log_batch_mark(job, token) {
                Some(batch) => self.log_batches.insert((job, token), batch),
                None => self.log_batches.remove(&(job, token)),
            };
        }
        self.next_job_id = state.next_job_id();
        self.next_lease_token = state.next_lease_token();
    }

    /// A job's stored lines after `after_sequence`, as the store's reader pages them (`limit`
    /// 0: 1000, at most 10,000).
    pub fn job_logs(&self, job: JobId, after_sequence: u64, limit: usize) -> Vec<JobLogLine> {
        let limit = match limit {
            0 => 1000,
            n => n.min(10_000),
        };
        self.logs
            .range((job, after_sequence.saturating_add(1))..=(job, u64::MAX))
            .take(limit)
            .map(|(_, line)| line.clone())
            .collect()
    }

    pub fn rebuild(&self) -> QueueState {
        for (id, kept) in &self.finished {
            let row = self
                .archive
                .get(id)
                .expect("a finished job's row is stored");
            assert!(
                kept.describes(row),
                "job {id}'s stored row is not the job kept"
            );
        }
        QueueState::from_parts(Parts {
            jobs: self.jobs.values().cloned().collect(),
            finished: self.finished.values().cloned().collect(),
            workers: self.workers.values().cloned().collect(),
            log_lines: self.logs.values().cloned().collect(),
            next_job_id: self.next_job_id,
            next_lease_token: self.next_lease_token,
            outbox: match self.outbox_meta.held {
                true => self.outbox.values().cloned().collect(),
                false => self.truncations.values().cloned().collect(),
            },
            outbox_meta: self.outbox_meta.clone(),
            clock_ms: self.clock_ms,
            log_batches: self
                .log_batches
                .iter()
                .map(|(&(job, token), &batch)| (job, token, batch))
                .collect(),
        })
    }
}

pub struct Sim {
    pub state: QueueState,
    pub now: u64,
    pub index: u64,
    pub rows: Rows,
    /// Stamped into every command's context, as the leader stamps its config value.
    pub outbox_limit: u64,
}

impl Sim {
    pub fn new() -> Self {
        Sim {
            state: QueueState::new(),
            now: T0,
            index: 0,
            rows: Rows::default(),
            outbox_limit: u64::MAX,
        }
    }

    pub fn advance(&mut self, ms: u64) {
        self.now += ms;
    }

    /// Applies one command as the next log entry; checks the indexes and that a rejection
    /// changed nothing; persists the changes.
    pub fn apply(&mut self, command: Command) -> CommandResult {
        self.index += 1;
        let before = self.state.clone();
        let ctx = ApplyContext {
            log_index: self.index,
            now_ms: self.now,
            outbox_limit: self.outbox_limit,
        };
        let result = self.state.apply(&ctx, command);
        if let Err(e) = self.state.check_consistency() {
            panic!("after {result:?}: {e}");
        }
        if result.is_err() {
            assert_eq!(self.state, before, "a rejection changed the state");
            assert!(
                self.state.changes.is_empty(),
                "a rejection reported changes"
            );
        }
        self.rows.persist(&mut self.state);
        self.check_stored_outbox();
        // The store holds exactly the lines each job counts: 1 to `log_lines` while none was
        // dropped; once some were, the lines kept (1 to k, with no hole) and the notice.
        let notice = crate::queue::MAX_LOG_LINES_PER_JOB + 1;
        for job in self.state.jobs() {
            let stored: Vec<u64> = self
                .rows
                .logs
                .range((job.id, 0)..=(job.id, u64::MAX))
                .map(|(&(_, sequence), _)| sequence)
                .collect();
            let kept = stored.iter().filter(|&&s| s != notice).count() as u64;
            let mut expected: Vec<u64> = (1..=kept).collect();
            if job.log_lines_dropped > 0 {
                expected.push(notice);
                assert_eq!(job.log_lines, notice, "job {}: the notice is last", job.id);
            } else {
                assert_eq!(kept, job.log_lines, "job {} lines stored", job.id);
            }
            assert_eq!(stored, expected, "job {} lines stored", job.id);
            let bytes: u64 = self
                .rows
                .logs
                .range((job.id, 0)..(job.id, notice))
                .map(|(_, line)| line.line.text.len() as u64)
                .sum();
            assert_eq!(bytes, job.log_bytes, "job {} log bytes", job.id);
        }
        result
    }

    /// The stored outbox agrees with the state: as many events as it counts pending, all after
    /// its cursor, each truncation event it holds stored as it holds it (and only those).
    fn check_stored_outbox(&self) {
        let meta = self.state.outbox_meta();
        assert_eq!(
            self.rows.outbox.len() as u64,
            meta.pending,
            "events stored and counted pending"
        );
        if !meta.held {
            if let Some(&first) = self.rows.outbox.keys().next() {
                assert!(
                    first > meta.acked_up_to,
                    "event {first} stored behind the cursor"
                );
            }
        }
        for event in self.state.truncation_events() {
            assert_eq!(
                self.rows.outbox.get(&event.id),
                Some(event),
                "truncation event stored"
            );
        }
        let held: Vec<&OutboxEvent> = self.state.truncation_events().collect();
        let stored: Vec<&OutboxEvent> = self.rows.truncations.values().collect();
        assert_eq!(held, stored, "truncation rows");
    }

    /// Releases the stored events up to `up_to`, counted as a leader counts the rows it read.
    pub fn release_through(&mut self, up_to: u64) -> CommandResult {
        let after = self.state.outbox_meta().acked_up_to;
        let events = self.rows.outbox.range(after + 1..=up_to).count() as u64;
        self.apply(Command::ReleaseOutbox {
            after,
            up_to,
            events,
        })
    }

    /// Releases the stored events recorded before `before_ms`, as the leader's prune does: the
    /// prefix of them after the cursor.
    pub fn prune(&mut self, before_ms: u64) -> CommandResult {
        let after = self.state.outbox_meta().acked_up_to;
        let aged: Vec<u64> = self
            .rows
            .outbox
            .range(after + 1..)
            .take_while(|(_, event)| event.at_ms < before_ms)
            .map(|(&id, _)| id)
            .collect();
        match aged.last() {
            Some(&up_to) => self.apply(Command::ReleaseOutbox {
                after,
                up_to,
                events: aged.len() as u64,
            }),
            None => Ok(CommandOutput::OutboxAcked {
                acked_up_to: after,
                removed: 0,
            }),
        }
    }

    /// The stored outbox events, oldest first.
    pub fn events(&self) -> Vec<OutboxEvent> {
        self.rows.outbox.values().cloned().collect()
    }

    pub fn submit(&mut self, spec: JobSpec) -> JobId {
        match self.apply(Command::SubmitJob {
            spec,
            idempotency_key: None,
        }) {
            Ok(CommandOutput::Submitted { job_id, .. }) => job_id,
            other => panic!("submit: {other:?}"),
        }
    }

    /// Registers (auto-enabled) and heartbeats a light load, as an agent does at start: until
    /// then its load is unknown (0 % CPU, 0 MB free).
    pub fn register(&mut self, n: u128, tags: &[&str], max_tasks: u32) -> WorkerId {
        let id = worker_id(n);
        self.apply(Command::RegisterWorker {
            info: worker_info(id, tags, max_tasks),
            auto_enable: true,
        })
        .expect("register");
        self.apply(Command::WorkerHeartbeat {
            worker: id,
            running: vec![],
            cpu_percent_x10: 100,
            free_memory_mb: 4096,
        })
        .expect("heartbeat");
        id
    }

    pub fn acquire_at_load(
        &mut self,
        worker: WorkerId,
        free_slots: u32,
        cpu_percent_x10: u32,
        free_memory_mb: u64,
    ) -> Vec<Assignment> {
        match self.apply(Command::AcquireTasks {
            worker,
            free_slots,
            lease_ms: LEASE_MS,
            cpu_percent_x10,
            free_memory_mb,
            max_cpu_percent_x10: MAX_CPU,
            min_free_memory_mb: MIN_MEM,
            request_id: None,
        }) {
            Ok(CommandOutput::Acquired { tasks }) => tasks,
            other => panic!("acquire: {other:?}"),
        }
    }

    pub fn acquire(&mut self, worker: WorkerId, free_slots: u32) -> Vec<Assignment> {
        self.acquire_at_load(worker, free_slots, 100, 4096)
    }

    pub fn renew(&mut self, worker: WorkerId, leases: &[LeaseRef]) -> Vec<LeaseStatus> {
        match self.apply(Command::RenewLeases {
            worker,
            leases: leases.to_vec(),
            lease_ms: LEASE_MS,
        }) {
            Ok(CommandOutput::Renewed { leases }) => leases,
            other => panic!("renew: {other:?}"),
        }
    }

    pub fn complete(
        &mut self,
        worker: WorkerId,
        lease: LeaseRef,
        outcome: AttemptOutcome,
    ) -> CommandResult {
        self.apply(Command::ReportResult {
            worker,
            lease,
            outcome,
            exit_code: Some(i32::from(outcome != AttemptOutcome::Succeeded)),
            error: String::new(),
        })
    }

    pub fn job(&self, id: JobId) -> &Job {
        self.state.job(id).expect("job exists")
    }

    pub fn worker(&self, id: WorkerId) -> &Worker {
        self.state.worker(id).expect("worker exists")
    }

    /// The persisted rows rebuild exactly the live state.
    pub fn assert_rows_rebuild(&self) {
        assert_eq!(self.rows.rebuild(), self.state);
    }
}

/// Dispatch as the tests check it, beside the leader's own pre-check.
impl QueueState {
    /// Whether a new `AcquireTasks` from `worker` at `now_ms` would grant a task, judged on the
    /// worker's last recorded load: what the tests check dispatch against. The leader asks
    /// [`QueueState::acquire_would_grant`], which also knows a retry's grant.
    pub fn has_eligible_task(
        &self,
        worker: WorkerId,
        now_ms: u64,
        max_cpu_percent_x10: u32,
        min_free_memory_mb: u64,
    ) -> bool {
        let Some(w) = self.workers.get(&worker) else {
            return false;
        };
        self.has_eligible_task_at_load(
            worker,
            now_ms,
            w.cpu_percent_x10,
            w.free_memory_mb,
            max_cpu_percent_x10,
            min_free_memory_mb,
        )
    }

    /// As [`QueueState::has_eligible_task`], but with the load the worker reports in the request
    /// at hand (which `AcquireTasks` records before it checks the limits).
    pub fn has_eligible_task_at_load(
        &self,
        worker: WorkerId,
        now_ms: u64,
        cpu_percent_x10: u32,
        free_memory_mb: u64,
        max_cpu_percent_x10: u32,
        min_free_memory_mb: u64,
    ) -> bool {
        let Some(w) = self.workers.get(&worker) else {
            return false;
        };
        let w = Worker {
            cpu_percent_x10,
            free_memory_mb,
            ..w.clone()
        };
        let limits = LoadLimits {
            max_cpu_percent_x10,
            min_free_memory_mb,
        };
        worker_capacity(&w, limits) > 0 && self.eligible_jobs(&w, now_ms).next().is_some()
    }
}
