//! The queue's whole state, its indexes, and the few primitives that change it.
//!
//! [`QueueState::apply`] routes each command to a handler (jobs in `state/jobs.rs`, workers in
//! `state/workers.rs`, leases in `state/leases.rs`, logs in `state/logs.rs`). Handlers validate
//! everything first and only then mutate, so a rejection changes nothing; and they mutate only
//! through the primitives at the bottom of this file (`transition`, `requeue`, `grant_lease`,
//! `end_attempt`, `set_lease_expiry`, ...), which keep every index and the change set right.
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

use super::dispatch::{job_eligible, worker_capacity, DispatchIndex, LoadLimits};
use super::{
    Activity, ApplyContext, Assignment, Attempt, AttemptOutcome, Command, CommandResult, EventKind,
    FinishedJob, Job, JobId, JobLogLine, JobState, Lease, OutboxEvent, OutboxMeta, Worker,
    WorkerId,
};

mod jobs;
mod leases;
mod logs;
mod outbox;
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
            } => self.acquire(
                worker,
                free_slots,
                lease_ms,
                (cpu_percent_x10, free_memory_mb),
                LoadLimits {
                    max_cpu_percent_x10,
                    min_free_memory_mb,
                },
                request_id,
                now,
            ),
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

    // ---- Queries ----

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

    /// Whether `AcquireTasks` from `worker` at `now_ms` would grant anything, judged on the
    /// worker's last recorded load. The leader asks before proposing, so an idle long-poll
    /// costs no log entry; apply uses the same rules.
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

    /// What changed since the last call, for the state machine to persist.
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// Queued jobs `worker` may take at `now_ms`, in dispatch order.
    fn eligible_jobs<'a>(
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

    // ---- Primitives: the only code that changes jobs, leases and running sets ----

    /// Moves a job to `next`, keeping `by_state` and `dispatch` right. Illegal moves are bugs:
    /// every caller checks the state first, and tests run with this assertion on.
    fn transition(&mut self, job_id: JobId, next: JobState, now_ms: u64) {
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
    fn requeue(&mut self, job_id: JobId, ready_at_ms: u64, now_ms: u64) {
        if let Some(job) = self.jobs.get_mut(&job_id).map(Arc::make_mut) {
            // Not in the dispatch index while leased, so its key may change here.
            job.ready_at_ms = ready_at_ms;
            self.transition(job_id, JobState::Queued, now_ms);
        }
    }

    /// Leases a queued job to `worker`: a fresh token, a new attempt, the job picked up and
    /// the worker's slot taken.
    fn grant_lease(
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
    fn set_lease_expiry(&mut self, job_id: JobId, expires_at_ms: u64) {
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
    fn end_attempt(
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
    fn worker_mut(&mut self, id: WorkerId) -> Option<&mut Worker> {
        let worker = self.workers.get_mut(&id)?;
        self.changes.workers.insert(id);
        Some(worker)
    }

    /// Moves the jobs the command just applied finished to `finished_jobs`, their full rows to
    /// the archive (for the store).
    fn archive_finishing(&mut self) {
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
    fn remove_job(&mut self, job_id: JobId) {
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
    fn index_job(&mut self, job: &Job) {
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
    fn index_finished(&mut self, job: FinishedJob) {
        self.finished.insert((job.finished_at_ms, job.id));
        self.by_state.insert((job.state, job.id));
        *self.job_counts.entry(job.state).or_default() += 1;
        if let Some(key) = &job.idempotency_key {
            self.idempotency.insert(key.clone(), job.id);
        }
        self.finished_jobs.insert(job.id, job);
    }

    /// Checks every index and cross-reference against the rows; a description of the first
    /// inconsistency found. Tests call it after every command.
    #[cfg(test)]
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
