//! The shipper: the leader's duty of moving the replicated outbox into SSISDB, exactly once by
//! event id, with rows that never go back to an older state. The leader loop
//! (`master/leader.rs`) starts [`Shipping::serve_term`] once an entry of its term has committed
//! (proof that a majority follows it) and aborts it as soon as the role or the term changes; a
//! batch caught mid-way loses its connection, and SQL Server rolls it back. The leader's commands
//! go through [`Committer`], so this module never reaches back into the replica.
//!
//! One batch = up to `ssisdb.batch_events` events after the committed cursor
//! (`acked_up_to`), with the rows they name as they are now (job, task, attempts, worker, log
//! line). In ONE SQL transaction:
//! 1. **claim the fencing row** `scaleout.shipper`: set its term to ours where it is not newer,
//!    then read it back; a newer term means a newer leader has shipped, so this replica rolls
//!    back and stops ([`SsisdbError::Superseded`]). Every batch's transaction starts here, so a
//!    deposed leader's transaction (even one that hung on a cut link and COMMITs late) cannot
//!    commit after the new leader's: on SQL Server the row lock orders them and the loser sees
//!    the newer term; on iridium (no-wait locks) the second one fails and retries.
//! 2. upsert the rows (`IF EXISTS UPDATE ELSE INSERT`), each carrying `row_version`, the newest
//!    event id of the state it was read from; an UPDATE applies only where the stored version is
//!    not newer, so no row ever shows an older state than one it showed;
//! 3. insert each event `WHERE NOT EXISTS` its event_id, count the batch's ids back (a server
//!    that silently dropped a statement fails the batch instead of losing events), COMMIT.
//!
//! Then commit `ReleaseOutbox { after: cursor, up_to: last id, events: n }`. A leader that dies
//! between the COMMIT and the release's commit leaves the cursor behind; the next leader ships
//! the same ids again and the NOT EXISTS makes that a no-op, so nothing is duplicated and nothing
//! is skipped.
//!
//! The events are read from the store (`raft::OutboxReader`), not from the queue, which holds
//! only the outbox's counters; the rows they name from the queue and the store, as they are now.
//!
//! Without SSISDB, the leader releases the events older than `ssisdb.retention_secs`, and the
//! oldest beyond 90 % of `ssisdb.max_outbox_events`, every minute, [`PRUNE_BATCH`] at a time
//! (at once again while batches come out full): nothing reads them, and a replica's store, its
//! restart and its memory grow with them (six events a job).
//! With SSISDB, every replica (leader or not) also upserts its own row in `scaleout.replicas`
//! every [`HEARTBEAT_EVERY`] ([`heartbeat`]), like the SSIS Scale Out Master's heartbeat.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tracing::{debug, info, warn};

use super::connect::{connect_target, target, SqlClient, SsisdbError};
use super::sql::{big, clip, rollback, send, simple, sql_time, Packer, Param, MAX_STRING};
use crate::config::SsisdbSettings;
use crate::queue::{
    Command, CommandOutput, CommandResult, EventKind, Job, JobId, JobLogLine, JobState, LogLevel,
    OutboxEvent, QueueState, Worker, WorkerId,
};
use crate::raft::{JobReader, LogReader, OutboxReader, Raft, SharedQueue, StateReaders};
use crate::rpc::backoff::Pauses;
use crate::rpc::{jitter, Backoff};
use crate::wall_time::now_ms;

/// How often each replica writes its row in scaleout.replicas.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// How often the leader prunes the outbox when no SSISDB is configured.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Most events one prune releases: bounds the entry's apply (its rows are removed in one batch).
pub const PRUNE_BATCH: u64 = 10_000;
/// Retries after a failed batch, never longer than the cap (the jitter stays under it).
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
/// A replica heartbeat that met a lock conflict tries again within this.
const LOCK_RETRY: Duration = Duration::from_millis(200);

/// What the shipper of this process has done; cheap to read (atomics).
#[derive(Debug, Default)]
pub struct ShipperStatus {
    /// Events written to SSISDB and acked by this process.
    pub events_shipped: AtomicU64,
    /// Shipping attempts that failed (connection, SQL or commit of the cursor).
    pub ship_errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ShipperStatus {
    /// The process's status (one replica per process).
    pub fn global() -> Arc<ShipperStatus> {
        static STATUS: OnceLock<Arc<ShipperStatus>> = OnceLock::new();
        STATUS.get_or_init(Default::default).clone()
    }

    /// Records `error`; true when it differs from the previous one (log it then, once).
    fn set_error(&self, error: Option<String>) -> bool {
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let changed = *last != error;
        *last = error;
        changed
    }
}

/// What shipping needs from the leader it runs in: commands committed through the log, and the
/// leader's clock. The leader loop hands its proposer in (`master::Proposer` implements this),
/// so this module knows nothing of the replica around it.
pub trait Committer: Send + Sync + 'static {
    /// Commits `command` in one entry of this leader's term and returns what apply said.
    fn commit(
        &self,
        command: Command,
    ) -> impl Future<Output = Result<CommandResult, String>> + Send;
    /// The leader's clock (cluster time, ms), which stamps what it proposes.
    fn now_ms(&self) -> u64;
}

/// The shipping duty of a leader, handed to the leader loop at start-up: it runs
/// [`Shipping::serve_term`] for each term it holds office in.
#[derive(Clone)]
pub struct Shipping {
    pub readers: StateReaders,
    pub settings: SsisdbSettings,
    pub replica_id: u64,
}

impl Shipping {
    /// Ships (or, without SSISDB, prunes) the outbox for one term of office. Runs until the
    /// leader loop aborts it when the role or the term changes; dropping the connection then
    /// makes SQL Server roll back a batch caught mid-way.
    pub async fn serve_term(self, term: u64, committer: impl Committer) {
        let mut shipper = Shipper {
            settings: self.settings,
            status: ShipperStatus::global(),
            client: None,
            pauses: BACKOFF.pauses(),
            replica_id: self.replica_id,
        };
        let readers = self.readers;
        if !shipper.settings.enabled() {
            prune_while_leading(&readers, &committer, &shipper.settings).await;
        }
        loop {
            match shipper.ship_once(&readers, &committer, term).await {
                Ok(0) => tokio::time::sleep(shipper.settings.ship_interval()).await,
                Ok(_) => {}
                Err(e @ SsisdbError::Superseded { .. }) => {
                    // Not a fault of SSISDB: a newer leader has shipped; this replica is about
                    // to hear of it and stop.
                    if shipper.status.set_error(Some(e.to_string())) {
                        info!(replica = shipper.replica_id, term, error = %e, "stopped shipping to SSISDB");
                    }
                    tokio::time::sleep(shipper.pauses.next_jittered().min(BACKOFF.max)).await;
                }
                Err(e) => {
                    shipper.client = None;
                    shipper.status.ship_errors.fetch_add(1, Ordering::Relaxed);
                    let wait = shipper.pauses.next_jittered().min(BACKOFF.max);
                    let lag = read_queue(&readers.queue, |q| q.outbox_len() as u64);
                    if shipper.status.set_error(Some(e.to_string())) {
                        warn!(replica = shipper.replica_id, error = %e, retry_in_ms = wait.as_millis() as u64, outbox_lag = lag,
                            "SSISDB shipping failed; dispatch goes on, events wait in the outbox");
                    } else {
                        debug!(replica = shipper.replica_id, error = %e, "SSISDB shipping still failing");
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// Without SSISDB: every [`PRUNE_EVERY`] (at once again while batches come out full), releases
/// the events older than `ssisdb.retention_secs` and the oldest beyond 90 % of
/// `ssisdb.max_outbox_events`. Never returns.
async fn prune_while_leading(
    readers: &StateReaders,
    committer: &impl Committer,
    settings: &SsisdbSettings,
) {
    loop {
        let before_ms = committer
            .now_ms()
            .saturating_sub(settings.retention().as_millis() as u64);
        // Below the bound: at the bound, apply drops new log line events (`outbox_limit`), and
        // without SSISDB nothing calls for that.
        let most_kept = settings.max_outbox_events / 10 * 9;
        match prune(readers, committer, before_ms, most_kept).await {
            // A full batch: more may be due, at once.
            Ok(PRUNE_BATCH) => continue,
            Ok(_) => {}
            Err(e) => debug!(error = %e, "outbox prune not done; retrying in a minute"),
        }
        tokio::time::sleep(PRUNE_EVERY).await;
    }
}

fn read_queue<T>(queue: &SharedQueue, f: impl FnOnce(&QueueState) -> T) -> T {
    let guard = queue.read().unwrap_or_else(PoisonError::into_inner);
    f(&guard)
}

/// Releases the oldest events recorded before `before_ms`, or beyond the newest `most_kept`,
/// at most [`PRUNE_BATCH`] of them; returns how many went.
async fn prune(
    readers: &StateReaders,
    committer: &impl Committer,
    before_ms: u64,
    most_kept: u64,
) -> Result<u64, String> {
    let (after, pending) = read_queue(&readers.queue, |q| {
        let meta = q.outbox_meta();
        (meta.acked_up_to, meta.pending)
    });
    let Some(aged) = readers
        .outbox
        .aged(
            after,
            before_ms,
            pending.saturating_sub(most_kept),
            PRUNE_BATCH,
        )
        .map_err(|e| e.to_string())?
    else {
        return Ok(0);
    };
    let command = Command::ReleaseOutbox {
        after,
        up_to: aged.up_to,
        events: aged.events,
    };
    match committer.commit(command).await? {
        Ok(CommandOutput::OutboxAcked { removed, .. }) => Ok(removed),
        Ok(other) => Err(format!("unexpected answer to a release: {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

struct Shipper {
    settings: SsisdbSettings,
    status: Arc<ShipperStatus>,
    client: Option<(SqlClient, String)>,
    pauses: Pauses,
    replica_id: u64,
}

/// The fencing row's claim: the term of office this batch is written in, and by whom.
#[derive(Debug, Clone, Copy)]
pub struct Fence {
    pub term: u64,
    pub replica: u64,
}

/// One batch read from the local state, lock released.
struct Batch {
    /// The newest event id of the state the rows were read from: every row carries it as its
    /// `row_version`, and an older state never overwrites a newer one.
    version: i64,
    events: Vec<OutboxEvent>,
    jobs: BTreeMap<JobId, Job>,
    /// Workers named by the events; `None` when removed since.
    workers: BTreeMap<WorkerId, Option<Worker>>,
    /// (job, attempt number) named by attempt events.
    attempts: BTreeSet<(JobId, u32)>,
    /// (job, sequence) named by log line events, read from the store after the queue lock.
    wanted_lines: Vec<(JobId, u64)>,
    /// Finished jobs named by events, read from the store after the queue lock.
    wanted_jobs: BTreeSet<JobId>,
    lines: BTreeMap<(JobId, u64), JobLogLine>,
}

/// Reads the finished jobs the batch's events name (a job removed since is left out, as a job
/// removed before the batch was read).
fn read_jobs(batch: &mut Batch, jobs: &JobReader) -> Result<(), SsisdbError> {
    let read = jobs
        .jobs(&batch.wanted_jobs.iter().copied().collect::<Vec<_>>())
        .map_err(|e| SsisdbError::Sql(format!("cannot ship job events: {e}")))?;
    for job in read {
        batch.jobs.entry(job.id).or_insert(job);
    }
    Ok(())
}

/// Reads the lines the batch's log line events name (a line removed since, with its job, is
/// shipped as a notice that says so).
fn read_lines(batch: &mut Batch, logs: &LogReader) -> Result<(), SsisdbError> {
    batch.lines = logs
        .lines(&batch.wanted_lines)
        .map_err(|e| SsisdbError::Sql(format!("cannot ship log line events: {e}")))?;
    Ok(())
}

impl Shipper {
    /// Ships one batch; returns how many events it shipped (0: nothing to ship).
    async fn ship_once(
        &mut self,
        readers: &StateReaders,
        committer: &impl Committer,
        term: u64,
    ) -> Result<usize, SsisdbError> {
        let limit = self.settings.batch_events.max(1) as usize;
        let acked = read_queue(&readers.queue, |q| q.outbox_meta().acked_up_to);
        let events = read_events(&readers.outbox, acked, limit)?;
        let Some(last) = events.last().map(|e| e.id) else {
            return Ok(0);
        };
        let mut batch = read_queue(&readers.queue, |q| read_batch(q, events));
        read_jobs(&mut batch, &readers.jobs)?;
        read_lines(&mut batch, &readers.logs)?;
        if self.client.is_none() {
            let t = target(&self.settings)?;
            let (client, addr) = connect_target(t, self.settings.connect_timeout()).await?;
            info!(replica = self.replica_id, %addr, "connected to SSISDB; shipping the outbox");
            self.client = Some((client, addr));
        }
        let Some((client, addr)) = self.client.as_mut() else {
            return Ok(0);
        };
        let started = std::time::Instant::now();
        let fence = Fence {
            term,
            replica: self.replica_id,
        };
        write_batch(client, addr, &batch, fence).await?;
        let n = batch.events.len();
        let release = Command::ReleaseOutbox {
            after: acked,
            up_to: last,
            events: n as u64,
        };
        match committer.commit(release).await {
            Ok(Ok(CommandOutput::OutboxAcked { acked_up_to, .. })) if acked_up_to < last => {
                // Counted from a cursor that moved meanwhile (another leader's release): the
                // next batch starts from where it is now.
                debug!(
                    replica = self.replica_id,
                    up_to = last,
                    acked_up_to,
                    "outbox release overtaken; reading again from the cursor"
                );
            }
            Ok(Ok(_)) => {}
            // The queue refused the count (it cannot be wrong but for a bug): said loudly, and the
            // batch is shipped again, harmlessly.
            Ok(Err(e)) => {
                return Err(SsisdbError::Sql(format!(
                    "batch up to event {last} is in SSISDB but the queue refused its release: {e}"
                )))
            }
            // Written but not acked: the next leader (or this one) writes the same ids again,
            // which the NOT EXISTS makes a no-op.
            Err(e) => {
                return Err(SsisdbError::Sql(format!(
                    "batch up to event {last} is in SSISDB but its cursor was not committed \
                     ({e}); it will be shipped again, harmlessly"
                )))
            }
        }
        self.status
            .events_shipped
            .fetch_add(n as u64, Ordering::Relaxed);
        if self.status.set_error(None) {
            info!(replica = self.replica_id, %addr, "SSISDB shipping recovered");
        }
        self.pauses.reset();
        debug!(
            replica = self.replica_id,
            events = n,
            up_to = last,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "shipped a batch to SSISDB"
        );
        Ok(n)
    }
}

/// SSIS task status codes (internal.tasks.status).
pub fn status_code(state: JobState) -> i32 {
    match state {
        JobState::Queued => 1,
        JobState::PickedUp => 2,
        JobState::Running => 3,
        JobState::Failed => 4,
        JobState::Succeeded => 5,
        JobState::Cancelled => 6,
    }
}

/// SSIS message types: 120 error, 110 warning, 70 information, 10 verbose.
fn message_type(level: LogLevel) -> i32 {
    match level {
        LogLevel::Error => 120,
        LogLevel::Warning => 110,
        LogLevel::Info => 70,
        LogLevel::Verbose => 10,
    }
}

fn p<T: tiberius::ToSql + 'static>(v: T) -> Param {
    Box::new(v)
}

fn opt_ms(ms: Option<u64>) -> (Param, Param) {
    (p(ms.map(sql_time)), p(ms.map(big)))
}

/// Up to `limit` stored events after the cursor `acked`.
fn read_events(
    outbox: &OutboxReader,
    acked: u64,
    limit: usize,
) -> Result<Vec<OutboxEvent>, SsisdbError> {
    outbox
        .after(acked, limit)
        .map_err(|e| SsisdbError::Sql(format!("cannot ship the outbox: {e}")))
}

/// `events` and the rows they name, as they are now in `q` (finished jobs and lines are read
/// from the store next).
fn read_batch(q: &QueueState, events: Vec<OutboxEvent>) -> Batch {
    let mut batch = Batch {
        version: big(q.outbox_meta().newest_event_id()),
        events,
        jobs: BTreeMap::new(),
        workers: BTreeMap::new(),
        attempts: BTreeSet::new(),
        wanted_lines: Vec::new(),
        wanted_jobs: BTreeSet::new(),
        lines: BTreeMap::new(),
    };
    for event in &batch.events {
        if let Some(job) = event.kind.job() {
            if let Some(j) = q.job(job) {
                batch.jobs.entry(job).or_insert_with(|| j.clone());
            } else if q.finished_job(job).is_some() {
                batch.wanted_jobs.insert(job);
            }
        }
        if let Some(worker) = event.kind.worker() {
            batch
                .workers
                .entry(worker)
                .or_insert_with(|| q.worker(worker).cloned());
        }
        match &event.kind {
            EventKind::AttemptStarted { job, attempt, .. }
            | EventKind::AttemptEnded { job, attempt, .. } => {
                batch.attempts.insert((*job, *attempt));
            }
            EventKind::LogLine { job, sequence } => {
                batch.wanted_lines.push((*job, *sequence));
            }
            _ => {}
        }
    }
    batch
}

/// Writes `events` and the rows they name in `queue` into SSISDB in one transaction fenced by
/// `fence`, without acknowledging them: what a leader does before its release, and what the next
/// leader repeats when that release never committed. Returns how many events it wrote. Without
/// the store's readers, log line events carry a notice instead of their text, and finished jobs
/// the queue holds no full row of are left out.
pub async fn write_events(
    client: &mut SqlClient,
    queue: &QueueState,
    events: Vec<OutboxEvent>,
    fence: Fence,
) -> Result<usize, SsisdbError> {
    let batch = read_batch(queue, events);
    write_batch(client, "SSISDB", &batch, fence).await?;
    Ok(batch.events.len())
}

async fn write_batch(
    client: &mut SqlClient,
    addr: &str,
    batch: &Batch,
    fence: Fence,
) -> Result<(), SsisdbError> {
    let mut packer = Packer::default();
    for (id, worker) in &batch.workers {
        push_worker(&mut packer, *id, worker.as_ref(), batch.version);
    }
    for job in batch.jobs.values() {
        push_job(&mut packer, job, batch.version);
        for (_, number) in batch.attempts.range((job.id, 0)..=(job.id, u32::MAX)) {
            if let Some(attempt) = job.attempts.iter().find(|a| a.number == *number) {
                push_attempt(&mut packer, job.id, attempt, batch.version);
            }
        }
    }
    for event in &batch.events {
        push_event(&mut packer, event, batch);
    }
    let trips = packer.finish();
    let (first, last) = match (batch.events.first(), batch.events.last()) {
        (Some(f), Some(l)) => (f.id, l.id),
        _ => return Ok(()),
    };
    // A replica that a newer leader has superseded learns it here, before opening a
    // transaction it would only roll back (a rollback racing another session's commit can undo
    // that commit on iridium_server, the tests' SQL Server).
    let stored = fence_term(client, addr).await?;
    if stored > fence.term {
        return Err(SsisdbError::Superseded {
            replica: fence.replica,
            term: fence.term,
            newer_term: stored,
        });
    }
    simple(client, addr, "BEGIN TRANSACTION").await?;
    let result = async {
        claim_fence(client, addr, fence).await?;
        send(client, addr, trips).await?;
        // Count the batch back: only this batch's events have ids in [first, last].
        let row = client
            .query(
                "SELECT COUNT(*) FROM scaleout.event_messages WHERE event_id >= @P1 AND event_id <= @P2",
                &[&big(first), &big(last)],
            )
            .await
            .map_err(|e| SsisdbError::from_sql(addr, e))?
            .into_row()
            .await
            .map_err(|e| SsisdbError::from_sql(addr, e))?;
        let stored = row.as_ref().map(super::sql::count_of).unwrap_or(0);
        if stored != batch.events.len() as i64 {
            return Err(SsisdbError::Sql(format!(
                "SSISDB holds {stored} of the {} events {first}..={last} after writing them \
                 (a statement was dropped by the server); the batch is rolled back and retried",
                batch.events.len()
            )));
        }
        simple(client, addr, "COMMIT TRANSACTION").await
    }
    .await;
    if result.is_err() {
        rollback(client).await;
    }
    result
}

/// The term in `scaleout.shipper` now.
async fn fence_term(client: &mut SqlClient, addr: &str) -> Result<u64, SsisdbError> {
    let row = client
        .simple_query("SELECT term FROM scaleout.shipper WHERE shipper_id = 1")
        .await
        .map_err(|e| SsisdbError::from_sql(addr, e))?
        .into_row()
        .await
        .map_err(|e| SsisdbError::from_sql(addr, e))?;
    row.as_ref()
        .and_then(|r| r.try_get::<i64, _>(0).ok().flatten())
        .map(|t| u64::try_from(t).unwrap_or(0))
        .ok_or_else(|| SsisdbError::MissingSchema {
            missing: "the row of scaleout.shipper (schema 2)".into(),
        })
}

/// Step 1 of a batch, inside its transaction: takes `scaleout.shipper` for `fence.term` unless
/// a newer term holds it. The UPDATE locks the row until COMMIT, and the read after it sees the
/// newest committed term (the lock waited for any transaction holding it).
async fn claim_fence(client: &mut SqlClient, addr: &str, fence: Fence) -> Result<(), SsisdbError> {
    let now = now_ms();
    let row = client
        .query(
            "UPDATE scaleout.shipper SET term = @P1, replica_id = @P2, \
             claimed_time = CAST(@P3 AS DATETIME2), claimed_ms = @P4 \
             WHERE shipper_id = 1 AND term <= @P1; \
             SELECT term FROM scaleout.shipper WHERE shipper_id = 1",
            &[
                &big(fence.term),
                &big(fence.replica),
                &sql_time(now),
                &big(now),
            ],
        )
        .await
        .map_err(|e| SsisdbError::from_sql(addr, e))?
        .into_results()
        .await
        .map_err(|e| SsisdbError::from_sql(addr, e))?
        .into_iter()
        .flatten()
        .next_back();
    let stored = row
        .as_ref()
        .and_then(|r| r.try_get::<i64, _>(0).ok().flatten())
        .ok_or_else(|| SsisdbError::MissingSchema {
            missing: "the row of scaleout.shipper (schema 2)".into(),
        })?;
    let stored = u64::try_from(stored).unwrap_or(0);
    match stored.cmp(&fence.term) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Greater => Err(SsisdbError::Superseded {
            replica: fence.replica,
            term: fence.term,
            newer_term: stored,
        }),
        std::cmp::Ordering::Less => Err(SsisdbError::Sql(format!(
            "scaleout.shipper still shows term {stored} after claiming it for term {} (the \
             server dropped the UPDATE); the batch is rolled back and retried",
            fence.term
        ))),
    }
}

fn push_worker(packer: &mut Packer, id: WorkerId, worker: Option<&Worker>, version: i64) {
    let Some(w) = worker else {
        packer.push(
            "UPDATE scaleout.worker_agents SET is_removed = 1, row_version = ? \
             WHERE worker_agent_id = ? AND row_version <= ?",
            vec![p(version), p(id.to_string()), p(version)],
        );
        return;
    };
    let info = &w.info;
    let id_text = id.to_string();
    // The columns the UPDATE and the INSERT share, in the same order in both.
    let described = || -> Vec<Param> {
        vec![
            p(clip(&info.display_name, 256)),
            p(clip(&info.description, 256)),
            p(clip(&info.machine_name, 256)),
            p(clip(&info.tags.join(","), MAX_STRING)),
            p(i32::try_from(info.max_tasks).unwrap_or(i32::MAX)),
            p(clip(&info.version, 256)),
            p(w.enabled),
            p(w.draining),
        ]
    };
    // Parameters are numbered in the order the `?`s appear: IF EXISTS id; UPDATE columns,
    // online time and ms, version, WHERE id and version; INSERT id, columns, registered and
    // online times, version.
    let mut ordered = vec![p(id_text.clone())];
    ordered.extend(described());
    ordered.extend([
        p(sql_time(w.last_heartbeat_ms)),
        p(big(w.last_heartbeat_ms)),
        p(version),
    ]);
    ordered.push(p(id_text.clone()));
    ordered.push(p(version));
    ordered.push(p(id_text));
    ordered.extend(described());
    ordered.extend([
        p(sql_time(w.registered_at_ms)),
        p(big(w.registered_at_ms)),
        p(sql_time(w.last_heartbeat_ms)),
        p(big(w.last_heartbeat_ms)),
        p(version),
    ]);
    packer.push(
        "IF EXISTS (SELECT 1 FROM scaleout.worker_agents WHERE worker_agent_id = ?) \
         UPDATE scaleout.worker_agents SET display_name = ?, description = ?, machine_name = ?, \
         tags = ?, max_tasks = ?, agent_version = ?, is_enabled = ?, is_draining = ?, \
         is_removed = 0, last_online_time = CAST(? AS DATETIME2), last_online_ms = ?, \
         row_version = ? WHERE worker_agent_id = ? AND row_version <= ? \
         ELSE INSERT INTO scaleout.worker_agents (worker_agent_id, display_name, description, \
         machine_name, tags, max_tasks, agent_version, is_enabled, is_draining, is_removed, \
         registered_time, registered_ms, last_online_time, last_online_ms, row_version) VALUES \
         (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, CAST(? AS DATETIME2), ?, CAST(? AS DATETIME2), ?, ?)",
        ordered,
    );
}

fn command_line(job: &Job) -> String {
    clip(&job.spec.argv.join(" "), MAX_STRING)
}

fn push_job(packer: &mut Packer, job: &Job, version: i64) {
    let worker = job
        .lease
        .as_ref()
        .map(|l| l.worker)
        .or_else(|| job.attempts.last().map(|a| a.worker))
        .map(|w| w.to_string());
    let attempts = i32::try_from(job.attempts.len()).unwrap_or(i32::MAX);
    let set = || -> Vec<Param> {
        vec![
            p(job.state.as_str()),
            p(status_code(job.state)),
            p(attempts),
            p(job.cancel_requested),
            p(worker.clone()),
            p(sql_time(job.updated_at_ms)),
            p(big(job.updated_at_ms)),
            p(version),
        ]
    };
    let mut params = vec![p(big(job.id))];
    params.extend(set());
    params.push(p(big(job.id)));
    params.push(p(version));
    params.extend(vec![
        p(big(job.id)),
        p(clip(&job.spec.name, 256)),
        p(job.spec.package.as_deref().map(|s| clip(s, MAX_STRING))),
        p(command_line(job)),
        p(job.spec.priority),
        p(i32::try_from(job.spec.max_attempts).unwrap_or(i32::MAX)),
        p(sql_time(job.created_at_ms)),
        p(big(job.created_at_ms)),
    ]);
    params.extend(set());
    packer.push(
        "IF EXISTS (SELECT 1 FROM scaleout.jobs WHERE job_id = ?) \
         UPDATE scaleout.jobs SET state = ?, status = ?, attempt_count = ?, cancel_requested = ?, \
         worker_agent_id = ?, updated_time = CAST(? AS DATETIME2), updated_ms = ?, \
         row_version = ? WHERE job_id = ? AND row_version <= ? \
         ELSE INSERT INTO scaleout.jobs (job_id, job_name, package_path, command_line, priority, \
         max_attempts, created_time, created_ms, state, status, attempt_count, cancel_requested, \
         worker_agent_id, updated_time, updated_ms, row_version) VALUES (?, ?, ?, ?, ?, ?, \
         CAST(? AS DATETIME2), ?, ?, ?, ?, ?, ?, CAST(? AS DATETIME2), ?, ?)",
        params,
    );

    // The task (task_id = job_id), shaped like internal.tasks.
    let lease_worker = job.lease.as_ref().map(|l| l.worker.to_string());
    let expires = job.lease.as_ref().map(|l| l.expires_at_ms);
    let pickup = job.attempts.last().map(|a| a.started_at_ms);
    let input = clip(
        &job.spec
            .package
            .clone()
            .unwrap_or_else(|| job.spec.argv.join(" ")),
        MAX_STRING,
    );
    let task_set = || -> Vec<Param> {
        let (exp_t, exp_ms) = opt_ms(expires);
        let (pick_t, pick_ms) = opt_ms(pickup);
        vec![
            p(attempts),
            p(status_code(job.state)),
            p(sql_time(job.ready_at_ms)),
            p(big(job.ready_at_ms)),
            p(sql_time(job.updated_at_ms)),
            p(big(job.updated_at_ms)),
            p(lease_worker.clone()),
            exp_t,
            exp_ms,
            p(job.state == JobState::Cancelled || job.cancel_requested),
            pick_t,
            pick_ms,
            p(version),
        ]
    };
    let mut params = vec![p(big(job.id))];
    params.extend(task_set());
    params.push(p(big(job.id)));
    params.push(p(version));
    params.extend(vec![
        p(big(job.id)),
        p(big(job.id)),
        p(input),
        p(i32::try_from(job.spec.max_attempts).unwrap_or(i32::MAX)),
        p(job.spec.priority),
        p(sql_time(job.created_at_ms)),
        p(big(job.created_at_ms)),
    ]);
    params.extend(task_set());
    packer.push(
        "IF EXISTS (SELECT 1 FROM scaleout.tasks WHERE task_id = ?) \
         UPDATE scaleout.tasks SET executed_count = ?, status = ?, \
         ready_for_dispatch_time = CAST(? AS DATETIME2), ready_for_dispatch_ms = ?, \
         last_updated_time = CAST(? AS DATETIME2), last_updated_ms = ?, worker_agent_id = ?, \
         expired_time = CAST(? AS DATETIME2), expired_ms = ?, is_cancelled = ?, \
         last_pickup_time = CAST(? AS DATETIME2), last_pickup_ms = ?, row_version = ? \
         WHERE task_id = ? AND row_version <= ? \
         ELSE INSERT INTO scaleout.tasks (task_id, job_id, task_type, input_data, \
         max_executed_count, is_critical, priority, created_time, created_ms, executed_count, \
         status, ready_for_dispatch_time, ready_for_dispatch_ms, last_updated_time, \
         last_updated_ms, worker_agent_id, expired_time, expired_ms, is_cancelled, \
         last_pickup_time, last_pickup_ms, row_version) VALUES (?, ?, 0, ?, ?, 0, ?, \
         CAST(? AS DATETIME2), ?, ?, ?, CAST(? AS DATETIME2), ?, CAST(? AS DATETIME2), ?, ?, \
         CAST(? AS DATETIME2), ?, ?, CAST(? AS DATETIME2), ?, ?)",
        params,
    );
}

/// task_attempt_id: one column key (iridium does not enforce composite keys).
pub fn task_attempt_id(job: JobId, attempt: u32) -> i64 {
    big(job)
        .saturating_mul(1000)
        .saturating_add(i64::from(attempt))
}

fn push_attempt(packer: &mut Packer, job: JobId, attempt: &crate::queue::Attempt, version: i64) {
    let key = task_attempt_id(job, attempt.number);
    let set = || -> Vec<Param> {
        let (end_t, end_ms) = opt_ms(attempt.ended_at_ms);
        vec![
            end_t,
            end_ms,
            p(attempt.outcome.map(|o| o.as_str())),
            p(attempt.exit_code),
            p(if attempt.error.is_empty() {
                None
            } else {
                Some(clip(&attempt.error, MAX_STRING))
            }),
            p(version),
        ]
    };
    let mut params = vec![p(key)];
    params.extend(set());
    params.push(p(key));
    params.push(p(version));
    params.extend(vec![
        p(key),
        p(big(job)),
        p(i32::try_from(attempt.number).unwrap_or(i32::MAX)),
        p(attempt.worker.to_string()),
        p(big(attempt.token)),
        p(sql_time(attempt.started_at_ms)),
        p(big(attempt.started_at_ms)),
    ]);
    params.extend(set());
    packer.push(
        "IF EXISTS (SELECT 1 FROM scaleout.task_attempts WHERE task_attempt_id = ?) \
         UPDATE scaleout.task_attempts SET ended_time = CAST(? AS DATETIME2), ended_ms = ?, \
         outcome = ?, exit_code = ?, error_message = ?, row_version = ? \
         WHERE task_attempt_id = ? AND row_version <= ? \
         ELSE INSERT INTO scaleout.task_attempts (task_attempt_id, task_id, attempt_number, \
         worker_agent_id, lease_token, started_time, started_ms, ended_time, ended_ms, outcome, \
         exit_code, error_message, row_version) VALUES (?, ?, ?, ?, ?, CAST(? AS DATETIME2), ?, \
         CAST(? AS DATETIME2), ?, ?, ?, ?, ?)",
        params,
    );
}

/// The event's kind name, SSIS message type, attempt, worker, log sequence and message.
pub fn describe(
    event: &OutboxEvent,
    line: Option<&JobLogLine>,
) -> (
    &'static str,
    i32,
    Option<u32>,
    Option<WorkerId>,
    Option<u64>,
    String,
) {
    match &event.kind {
        EventKind::JobSubmitted { job } => (
            "JobSubmitted",
            70,
            None,
            None,
            None,
            format!("job {job} submitted"),
        ),
        EventKind::JobStateChanged { job, from, to } => {
            let ty = if *to == JobState::Failed { 120 } else { 70 };
            (
                "JobStateChanged",
                ty,
                None,
                None,
                None,
                format!("job {job}: {from} -> {to}"),
            )
        }
        EventKind::AttemptStarted {
            job,
            attempt,
            worker,
            ..
        } => (
            "AttemptStarted",
            70,
            Some(*attempt),
            Some(*worker),
            None,
            format!("job {job} attempt {attempt} started on worker {worker}"),
        ),
        EventKind::AttemptEnded {
            job,
            attempt,
            worker,
            outcome,
        } => (
            "AttemptEnded",
            if matches!(outcome, crate::queue::AttemptOutcome::Succeeded) {
                70
            } else {
                110
            },
            Some(*attempt),
            Some(*worker),
            None,
            format!(
                "job {job} attempt {attempt} on worker {worker} ended: {}",
                outcome.as_str()
            ),
        ),
        EventKind::CancelRequested { job } => (
            "CancelRequested",
            70,
            None,
            None,
            None,
            format!("cancel of job {job} requested"),
        ),
        EventKind::WorkerChanged { worker, change } => (
            "WorkerChanged",
            70,
            None,
            Some(*worker),
            None,
            format!("worker {worker} {}", change.as_str()),
        ),
        EventKind::LogLine { job, sequence } => match line {
            Some(l) => (
                "LogLine",
                message_type(l.line.level),
                Some(l.attempt),
                None,
                Some(*sequence),
                l.line.text.clone(),
            ),
            None => (
                "LogLine",
                70,
                None,
                None,
                Some(*sequence),
                format!("log line {sequence} of job {job} (no longer stored)"),
            ),
        },
        EventKind::LogTruncated { job, dropped } => (
            "LogTruncated",
            110,
            None,
            None,
            None,
            format!("{dropped} log line events of job {job} were not shipped: the outbox was full"),
        ),
    }
}

fn push_event(packer: &mut Packer, event: &OutboxEvent, batch: &Batch) {
    let line = match &event.kind {
        EventKind::LogLine { job, sequence } => batch.lines.get(&(*job, *sequence)),
        _ => None,
    };
    let (kind, ty, attempt, worker, log_seq, message) = describe(event, line);
    let id = big(event.id);
    packer.push(
        "INSERT INTO scaleout.event_messages (event_id, event_time, event_ms, event_kind, \
         message_type, job_id, attempt_number, worker_agent_id, log_sequence, message) \
         SELECT ?, CAST(? AS DATETIME2), ?, ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS \
         (SELECT 1 FROM scaleout.event_messages WHERE event_id = ?)",
        vec![
            p(id),
            p(sql_time(event.at_ms)),
            p(big(event.at_ms)),
            p(kind),
            p(ty),
            p(event.kind.job().map(big)),
            p(attempt.map(|a| i32::try_from(a).unwrap_or(i32::MAX))),
            p(worker.map(|w| w.to_string())),
            p(log_seq.map(big)),
            p(clip(&message, MAX_STRING)),
            p(id),
        ],
    );
}

/// Every replica's own row in scaleout.replicas, every [`HEARTBEAT_EVERY`], on its own
/// connection (iridium's table locks are no-wait: a conflict is retried).
pub async fn heartbeat(
    raft: Raft,
    settings: SsisdbSettings,
    replica_id: u64,
    api: String,
    peer: String,
) {
    let mut client: Option<(SqlClient, String)> = None;
    let mut last_error: Option<String> = None;
    loop {
        let result = async {
            if client.is_none() {
                let t = target(&settings)?;
                client = Some(connect_target(t, settings.connect_timeout()).await?);
            }
            let Some((c, addr)) = client.as_mut() else {
                return Ok(());
            };
            let (role, term, leader) = {
                let m = raft.metrics().borrow().clone();
                (crate::raft::role_name(m.state), m.current_term, m.current_leader)
            };
            let now = now_ms();
            let mut packer = Packer::default();
            let set = || -> Vec<Param> {
                vec![
                    p(clip(&api, 256)),
                    p(clip(&peer, 256)),
                    p(role),
                    p(big(term)),
                    p(leader.map(big)),
                    p(sql_time(now)),
                    p(big(now)),
                ]
            };
            let mut params = vec![p(big(replica_id))];
            params.extend(set());
            params.push(p(big(replica_id)));
            params.push(p(big(replica_id)));
            params.extend(set());
            packer.push(
                "IF EXISTS (SELECT 1 FROM scaleout.replicas WHERE replica_id = ?) \
                 UPDATE scaleout.replicas SET api_address = ?, peer_address = ?, role = ?, term = ?, \
                 leader_id = ?, last_online_time = CAST(? AS DATETIME2), last_online_ms = ? \
                 WHERE replica_id = ? ELSE INSERT INTO scaleout.replicas (replica_id, api_address, \
                 peer_address, role, term, leader_id, last_online_time, last_online_ms) VALUES \
                 (?, ?, ?, ?, ?, ?, CAST(? AS DATETIME2), ?)",
                params,
            );
            send(c, addr, packer.finish()).await
        }
        .await;
        match result {
            Ok(()) => {
                if last_error.take().is_some() {
                    info!(replica = replica_id, "SSISDB replica heartbeat recovered");
                }
                // Never later than the period: `status` counts a replica silent after a few of them.
                tokio::time::sleep(jitter(HEARTBEAT_EVERY).min(HEARTBEAT_EVERY)).await;
            }
            Err(e) if e.is_lock_conflict() => {
                tokio::time::sleep(jitter(LOCK_RETRY).min(LOCK_RETRY)).await;
            }
            Err(e) => {
                client = None;
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    warn!(replica = replica_id, error = %text, "SSISDB replica heartbeat failed");
                    last_error = Some(text);
                }
                tokio::time::sleep(jitter(HEARTBEAT_EVERY).min(HEARTBEAT_EVERY)).await;
            }
        }
    }
}
