//! The queue's whole state, its indexes, and the few primitives that change it.
//!
//! [`QueueState::apply`] routes each command to a handler (jobs in `state/jobs.rs`, workers in
//! `state/workers.rs`, leases in `state/leases.rs`, logs in `state/logs.rs`). Handlers validate
//! everything first and only then mutate, so a rejection changes nothing; and they mutate only
//! through the primitives (`state/primitives.rs`: `transition`, `requeue`, `grant_lease`,
//! `end_attempt`, `set_lease_expiry`, ...), which keep every index and the change set right.
//! Queries are in `state/queries.rs`.
//!
//! A job lives in `jobs` while it is queued or leased. The command that finishes it ends by
//! moving it to `finished_jobs`, which keeps only what later commands decide on
//! ([`FinishedJob`]); its full row goes to the store (`Changes::jobs`, read back through
//! [`QueueState::archived`] until the store has it, then from the store), so memory does not
//! grow with the spec and history of every finished job that retention keeps.
//!
//! Indexes, all derived from jobs and rebuilt by [`QueueState::from_parts`]:
//! - `by_state`: listing by state;
//! - `dispatch`: queued jobs in dispatch order (see `dispatch.rs`);
//! - `expiry`: live leases by expiry time, for `ExpireLeases` and the leader's tick;
//! - `idempotency`: key -> job;
//! - `finished`: finished jobs by the time they finished, for retention (`state/retention.rs`).
//!
//! Each worker's `running` set is part of the worker row (persisted with it) and always equals
//! the jobs whose lease names that worker.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::dispatch::DispatchIndex;
use super::{
    AcquireRequest, Activity, ApplyContext, Command, CommandOutput, CommandResult, FinishedJob,
    Job, JobId, JobLogLine, JobState, OutboxEvent, OutboxMeta, Worker, WorkerId,
};

#[cfg(test)]
mod consistency;
mod jobs;
mod leases;
mod logs;
mod outbox;
mod primitives;
mod queries;
mod rebuild;
mod retention;
mod workers;

pub use rebuild::Rebuild;

/// The most jobs one page of a listing returns.
pub const MAX_PAGE_SIZE: usize = 1000;
const DEFAULT_PAGE_SIZE: usize = 100;

/// Everything the replicated queue knows. Changed only by [`QueueState::apply`].
#[derive(Debug, Clone)]
pub struct QueueState {
    /// Queued and leased jobs (and, during the command that finished it, a finished one).
    /// Shared, not inline: a snapshot's view ([`QueueState::view`]) takes the live jobs while
    /// apply waits, and sharing them costs a count each where copying cost a second at 800,000
    /// jobs; apply copies a job the view still holds before changing it (`Arc::make_mut`).
    /// And a map node holds eleven entries whatever their size and is about half full after
    /// appends and removals at its ends, so a job inline (about 500 bytes) would cost twice
    /// that; behind a pointer it costs itself and 24 bytes.
    jobs: BTreeMap<JobId, Arc<Job>>,
    /// What is kept of each finished job (see `finished.rs`).
    finished_jobs: BTreeMap<JobId, FinishedJob>,
    workers: BTreeMap<WorkerId, Worker>,
    /// The id the next submitted job gets.
    next_job_id: JobId,
    /// The token the next lease gets: only grows, never reused (fencing, invariant 2).
    next_lease_token: u64,
    idempotency: BTreeMap<String, JobId>,
    by_state: BTreeSet<(JobState, JobId)>,
    /// How many jobs are in each state (the sizes of `by_state`'s ranges).
    job_counts: BTreeMap<JobState, u64>,
    dispatch: DispatchIndex,
    /// (expires_at_ms, job) of every live lease.
    expiry: BTreeSet<(u64, JobId)>,
    /// (finished_at_ms, job) of every finished job: its `updated_at_ms`, which nothing changes
    /// once it has finished.
    finished: BTreeSet<(u64, JobId)>,
    /// The outbox's counters; its events are in the store (see `outbox.rs`).
    outbox_meta: OutboxMeta,
    /// The pending `LogTruncated` event of each live job (of any job while the outbox is held):
    /// rewritten in place as more log line events are dropped.
    truncations: BTreeMap<JobId, OutboxEvent>,
    /// Every pending event, by id, while the outbox is held (`outbox_meta.held`).
    held_outbox: Option<BTreeMap<u64, OutboxEvent>>,
    /// The last numbered log batch applied for each (job, lease token): a batch numbered at or
    /// below it is a retry (`Command::AppendLogBatch`).
    log_batches: BTreeMap<(JobId, u64), u64>,
    /// Cluster time: the latest leader clock reading applied. Apply runs every command at
    /// max(this, the entry's reading), so time never goes backwards in log order, whatever the
    /// order in which concurrent batches were stamped, or whatever a leader's clock did.
    clock_ms: u64,
    /// The context of the command being applied; `None` between applies (not state).
    applying: Option<ApplyContext>,
    /// Jobs the command being applied finished: moved to `finished_jobs` when it ends (not
    /// state).
    finishing: Vec<JobId>,
    /// Jobs given a truncation event by the command being applied while not live: it counts
    /// that command's drops only (not state).
    passing_truncations: Vec<JobId>,
    /// Full rows of finished jobs that the store has not confirmed written
    /// ([`QueueState::release_archived`]); bookkeeping for persistence and reads, not state.
    archive: BTreeMap<JobId, Arc<Job>>,
    /// What changed since the last [`QueueState::take_changes`]; bookkeeping for persistence,
    /// not state (ignored by `==`).
    changes: Changes,
    /// Counters since this state was loaded; not state (ignored by `==`).
    activity: Activity,
    /// Stands in for the state while a snapshot replaces it ([`QueueState::placeholder`]); not
    /// state (ignored by `==`).
    placeholder: bool,
}

/// What changed since the last [`QueueState::take_changes`]: the state machine rewrites these
/// rows (or deletes them, for a job or worker that no longer exists).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Jobs changed: a live job's row ([`QueueState::job`]); a finished one's record
    /// ([`QueueState::finished_job`]) and, when it finished since the last call, its full row
    /// ([`QueueState::archived`]); or gone.
    pub jobs: BTreeSet<JobId>,
    pub workers: BTreeSet<WorkerId>,
    /// Log lines written, in order: the model numbers them and the store keeps them (the
    /// state does not hold them). The same line may appear more than once (the truncation
    /// notice is rewritten in place); the last one is the line.
    pub log_lines: Vec<JobLogLine>,
    /// Jobs whose every log line goes (removed by retention); applied after `log_lines`.
    pub logs_removed: BTreeSet<JobId>,
    /// Outbox events written, in order: new ones, and truncation events rewritten in place (the
    /// last write of an id is the event). Not those removed in the same change set.
    pub outbox_written: Vec<OutboxEvent>,
    /// Every event up to this id goes (a release, or an ack of an earlier build).
    pub outbox_released: Option<u64>,
    /// Events that go one by one (an earlier build's prune of a held outbox).
    pub outbox_removed: BTreeSet<u64>,
    /// Jobs whose truncation event ([`QueueState::truncation`]) changed or went.
    pub truncations: BTreeSet<JobId>,
    /// The outbox counters changed.
    pub outbox_meta: bool,
    /// Cluster time moved.
    pub clock: bool,
    /// (job, lease token) whose last applied log batch number changed.
    pub log_batches: BTreeSet<(JobId, u64)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
            && self.workers.is_empty()
            && self.log_lines.is_empty()
            && self.logs_removed.is_empty()
            && self.outbox_written.is_empty()
            && self.outbox_released.is_none()
            && self.outbox_removed.is_empty()
            && self.truncations.is_empty()
            && !self.outbox_meta
            && !self.clock
            && self.log_batches.is_empty()
    }
}

/// The state without its indexes: what is persisted, row by row, and what a snapshot carries.
/// `log_lines` is filled by the state machine from its store (the model holds no lines).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parts {
    /// Live jobs; a finished job here is kept as a [`FinishedJob`] by `from_parts`.
    pub jobs: Vec<Job>,
    /// What is kept of finished jobs (their full rows are in the store).
    pub finished: Vec<FinishedJob>,
    pub workers: Vec<Worker>,
    pub log_lines: Vec<JobLogLine>,
    pub next_job_id: JobId,
    pub next_lease_token: u64,
    /// The events the queue holds: every pending one when the outbox is held, else the pending
    /// truncation events of live jobs (the others are in the store).
    #[serde(default)]
    pub outbox: Vec<OutboxEvent>,
    #[serde(default)]
    pub outbox_meta: OutboxMeta,
    /// Cluster time (see [`QueueState`]); 0 in snapshots from before it was kept.
    #[serde(default)]
    pub clock_ms: u64,
    /// The last log batch number applied per lease: (job, lease token, batch).
    #[serde(default)]
    pub log_batches: Vec<(JobId, u64, u64)>,
}

/// What a snapshot is built from ([`QueueState::view`]).
#[derive(Debug, Default)]
pub struct View {
    /// Everything but the live jobs (`parts.jobs` is empty).
    pub parts: Parts,
    /// The live jobs, shared with the state that made the view.
    pub jobs: Vec<Arc<Job>>,
}

/// One page of a job listing: the jobs' ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPage {
    pub ids: Vec<JobId>,
    /// Where the next page starts (exclusive), when there is one.
    pub next_after: Option<JobId>,
}

impl Default for QueueState {
    fn default() -> Self {
        QueueState::new()
    }
}

impl PartialEq for QueueState {
    fn eq(&self, other: &Self) -> bool {
        // Destructured so that a new field cannot be forgotten here.
        let QueueState {
            jobs,
            finished_jobs,
            workers,
            next_job_id,
            next_lease_token,
            idempotency,
            by_state,
            job_counts,
            dispatch,
            expiry,
            finished,
            outbox_meta,
            truncations,
            held_outbox,
            clock_ms,
            log_batches,
            applying: _,
            finishing: _,
            passing_truncations: _,
            archive: _,
            changes: _,
            activity: _,
            placeholder: _,
        } = self;
        *jobs == other.jobs
            && *finished_jobs == other.finished_jobs
            && *workers == other.workers
            && *next_job_id == other.next_job_id
            && *next_lease_token == other.next_lease_token
            && *idempotency == other.idempotency
            && *by_state == other.by_state
            && *job_counts == other.job_counts
            && *dispatch == other.dispatch
            && *expiry == other.expiry
            && *finished == other.finished
            && *outbox_meta == other.outbox_meta
            && *truncations == other.truncations
            && *held_outbox == other.held_outbox
            && *clock_ms == other.clock_ms
            && *log_batches == other.log_batches
    }
}

impl Eq for QueueState {}

impl QueueState {
    pub fn new() -> Self {
        QueueState {
            jobs: BTreeMap::new(),
            finished_jobs: BTreeMap::new(),
            workers: BTreeMap::new(),
            next_job_id: 1,
            next_lease_token: 1,
            idempotency: BTreeMap::new(),
            by_state: BTreeSet::new(),
            job_counts: BTreeMap::new(),
            dispatch: DispatchIndex::new(),
            expiry: BTreeSet::new(),
            finished: BTreeSet::new(),
            outbox_meta: OutboxMeta::default(),
            truncations: BTreeMap::new(),
            held_outbox: None,
            clock_ms: 0,
            log_batches: BTreeMap::new(),
            applying: None,
            finishing: Vec::new(),
            passing_truncations: Vec::new(),
            archive: BTreeMap::new(),
            changes: Changes::default(),
            activity: Activity::default(),
            placeholder: false,
        }
    }

    /// Rebuilds the state, every index included, from persisted rows. The counters never go
    /// below what the rows prove was already handed out. (`Rebuild` takes the jobs one by one.)
    pub fn from_parts(mut parts: Parts) -> Self {
        let mut rebuild = Rebuild::default();
        for job in std::mem::take(&mut parts.jobs) {
            rebuild.add_job(job);
        }
        for kept in std::mem::take(&mut parts.finished) {
            rebuild.add_finished(kept);
        }
        rebuild.finish(parts)
    }

    /// The state without indexes (a copy), for snapshots: live jobs whole, finished ones as
    /// kept here.
    pub fn to_parts(&self) -> Parts {
        let View { mut parts, jobs } = self.view();
        parts.jobs = jobs.iter().map(|job| Job::clone(job)).collect();
        parts
    }

    /// The state as a snapshot takes it: [`QueueState::to_parts`] with the live jobs shared
    /// rather than copied, so taking it costs a count per job (apply waits while it is taken).
    pub fn view(&self) -> View {
        View {
            parts: self.parts_without_jobs(),
            jobs: self.jobs.values().cloned().collect(),
        }
    }

    fn parts_without_jobs(&self) -> Parts {
        Parts {
            jobs: Vec::new(),
            finished: self.finished_jobs.values().cloned().collect(),
            workers: self.workers.values().cloned().collect(),
            // In the store, not here: the state machine adds them to a snapshot.
            log_lines: Vec::new(),
            next_job_id: self.next_job_id,
            next_lease_token: self.next_lease_token,
            outbox: match &self.held_outbox {
                Some(held) => held.values().cloned().collect(),
                None => self.truncations.values().cloned().collect(),
            },
            outbox_meta: self.outbox_meta.clone(),
            clock_ms: self.clock_ms,
            log_batches: self.log_batch_marks().collect(),
        }
    }

    /// The last log batch number applied per lease, as (job, lease token, batch).
    pub fn log_batch_marks(&self) -> impl Iterator<Item = (JobId, u64, u64)> + '_ {
        self.log_batches
            .iter()
            .map(|(&(job, token), &batch)| (job, token, batch))
    }

    /// The last log batch number applied for (job, lease token), if any.
    pub fn log_batch_mark(&self, job: JobId, token: u64) -> Option<u64> {
        self.log_batches.get(&(job, token)).copied()
    }

    /// How many jobs are in `state`.
    pub fn jobs_in(&self, state: JobState) -> u64 {
        self.job_counts.get(&state).copied().unwrap_or(0)
    }

    /// What apply has done since this state was loaded.
    pub fn activity(&self) -> Activity {
        self.activity
    }

    /// Carries the counters of the state this one replaces (a snapshot install), so they do
    /// not restart from zero.
    pub fn continue_activity(&mut self, before: Activity) {
        self.activity = before;
    }

    /// An empty state standing in for one a snapshot is replacing: the replica lets go of its
    /// old state before it builds the new one, so it never holds both. Reads that would answer
    /// from it refuse instead ([`QueueState::is_placeholder`]).
    pub fn placeholder(activity: Activity) -> QueueState {
        let mut state = QueueState::new();
        state.placeholder = true;
        state.activity = activity;
        state
    }

    /// Whether this is [`QueueState::placeholder`]: the replica is installing a snapshot.
    pub fn is_placeholder(&self) -> bool {
        self.placeholder
    }

    pub fn next_job_id(&self) -> JobId {
        self.next_job_id
    }

    pub fn next_lease_token(&self) -> u64 {
        self.next_lease_token
    }

    /// Cluster time: the latest leader clock reading applied (ms since the Unix epoch).
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// Applies one committed command at cluster time max(cluster time, `ctx.now_ms`), which
    /// it then becomes. A rejection changes nothing, the clock included.
    pub fn apply(&mut self, ctx: &ApplyContext, command: Command) -> CommandResult {
        let ctx = &ApplyContext {
            now_ms: ctx.now_ms.max(self.clock_ms),
            ..*ctx
        };
        self.applying = Some(*ctx);
        let result = self.apply_command(ctx, command);
        self.applying = None;
        self.archive_finishing();
        self.drop_passing_truncations();
        if result.is_ok() && ctx.now_ms > self.clock_ms {
            self.clock_ms = ctx.now_ms;
            self.changes.clock = true;
        }
        result
    }

    fn apply_command(&mut self, ctx: &ApplyContext, command: Command) -> CommandResult {
        let now = ctx.now_ms;
        match command {
            Command::SubmitJob {
                spec,
                idempotency_key,
            } => self.submit(ctx, spec, idempotency_key),
            Command::CancelJob { job_id } => self.cancel(job_id, now),
            Command::RegisterWorker { info, auto_enable } => {
                self.register_worker(info, auto_enable, now)
            }
            Command::WorkerHeartbeat {
                worker,
                running,
                cpu_percent_x10,
                free_memory_mb,
            } => self.heartbeat(worker, &running, cpu_percent_x10, free_memory_mb, now),
            Command::AcquireTasks {
                worker,
                free_slots,
                lease_ms,
                cpu_percent_x10,
                free_memory_mb,
                max_cpu_percent_x10,
                min_free_memory_mb,
                request_id,
            } => self
                .acquire(
                    worker,
                    AcquireRequest {
                        free_slots,
                        lease_ms,
                        cpu_percent_x10,
                        free_memory_mb,
                        max_cpu_percent_x10,
                        min_free_memory_mb,
                        request_id,
                    },
                    now,
                )
                .map(|tasks| CommandOutput::Acquired { tasks }),
            Command::RenewLeases {
                worker,
                leases,
                lease_ms,
            } => self.renew(worker, &leases, lease_ms, now),
            Command::AppendLogs {
                worker,
                lease,
                lines,
            } => self.append_logs(worker, lease, 0, lines),
            Command::AppendLogBatch {
                worker,
                lease,
                batch,
                lines,
            } => self.append_logs(worker, lease, batch, lines),
            Command::CompleteTask {
                worker,
                lease,
                outcome,
                exit_code,
                error,
            } => self.complete(worker, lease, (outcome, exit_code, error), false, now),
            Command::ReportResult {
                worker,
                lease,
                outcome,
                exit_code,
                error,
            } => self.complete(worker, lease, (outcome, exit_code, error), true, now),
            Command::ReportAndAcquire {
                worker,
                reports,
                acquire,
            } => self.report_and_acquire(worker, reports, acquire, now),
            Command::ExpireLeases => Ok(self.expire(now)),
            Command::ExtendLeases { lease_ms } => self.extend(lease_ms, now),
            Command::SetWorkerState {
                worker,
                enabled,
                draining,
            } => self.set_worker_state(worker, enabled, draining),
            Command::RemoveWorker { worker } => self.remove_worker(worker),
            Command::AckOutbox { up_to } => self.ack_held_outbox(up_to),
            Command::PruneOutbox { before_ms } => self.prune_held_outbox(before_ms),
            Command::ReleaseOutbox {
                after,
                up_to,
                events,
            } => self.release_outbox(after, up_to, events),
            Command::WorkersSeen { seen } => self.workers_seen(seen, now),
            Command::RemoveFinishedJobs {
                retention_ms,
                max_finished,
                until_shipped,
                limit,
            } => self.remove_finished(
                retention_ms,
                max_finished,
                until_shipped,
                limit as usize,
                now,
            ),
        }
    }
}

#[cfg(test)]
mod outbox_tests;
#[cfg(test)]
mod property_tests;
#[cfg(test)]
mod retention_tests;
#[cfg(test)]
mod scenario_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
