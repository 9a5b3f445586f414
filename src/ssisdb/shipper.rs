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
//! The rows a batch writes are in `rows.rs`; every replica's own row in `scaleout.replicas`
//! (leader or not) in `heartbeat.rs`.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tracing::{debug, info, warn};

use super::connect::{connect_target, target, SqlClient, SsisdbError};
use super::intake;
use super::rows::{read_batch, write_batch, Batch, Fence};
use crate::config::SsisdbSettings;
use crate::queue::{Command, CommandOutput, CommandResult, OutboxEvent, QueueState};
use crate::raft::{JobReader, LogReader, OutboxReader, SharedQueue, StateReaders};
use crate::rpc::backoff::Pauses;
use crate::rpc::Backoff;

/// How often the leader prunes the outbox when no SSISDB is configured.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Most events one prune releases: bounds the entry's apply (its rows are removed in one batch).
pub const PRUNE_BATCH: u64 = 10_000;
/// Retries after a failed batch, never longer than the cap (the jitter stays under it).
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));

/// What the shipper of this process has done; cheap to read (atomics).
#[derive(Debug, Default)]
pub struct ShipperStatus {
    /// Events written to SSISDB and acked by this process.
    pub events_shipped: AtomicU64,
    /// Shipping attempts that failed (connection, SQL or commit of the cursor).
    pub ship_errors: AtomicU64,
    /// Requests (round trips) and SQL statements of the batches shipped.
    pub requests: AtomicU64,
    pub statements: AtomicU64,
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
    /// Ships (or, without SSISDB, prunes) the outbox for one term of office, and takes the jobs
    /// submitted from T-SQL (`intake.rs`). Runs until the leader loop aborts it when the role or
    /// the term changes; dropping the connections then makes SQL Server roll back a batch caught
    /// mid-way.
    pub async fn serve_term(self, term: u64, committer: impl Committer) {
        let intake = async {
            match (self.settings.enabled(), self.settings.intake_interval()) {
                (true, Some(every)) => {
                    intake::take_requests(&self.settings, &committer, every, self.replica_id).await
                }
                _ => std::future::pending().await,
            }
        };
        tokio::join!(self.clone().ship_term(term, &committer), intake);
    }

    /// Ships (or prunes) the outbox for one term; never returns.
    async fn ship_term(self, term: u64, committer: &impl Committer) {
        let mut shipper = Shipper {
            settings: self.settings,
            status: ShipperStatus::global(),
            client: None,
            pauses: BACKOFF.pauses(),
            replica_id: self.replica_id,
        };
        let readers = self.readers;
        if !shipper.settings.enabled() {
            prune_while_leading(&readers, committer, &shipper.settings).await;
        }
        loop {
            match shipper.ship_once(&readers, committer, term).await {
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
        let trips = write_batch(
            client,
            addr,
            &batch,
            fence,
            self.settings.rows_per_statement as usize,
        )
        .await?;
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
        self.status
            .requests
            .fetch_add(trips.requests.into(), Ordering::Relaxed);
        self.status
            .statements
            .fetch_add(trips.statements.into(), Ordering::Relaxed);
        if self.status.set_error(None) {
            info!(replica = self.replica_id, %addr, "SSISDB shipping recovered");
        }
        self.pauses.reset();
        debug!(
            replica = self.replica_id,
            events = n,
            up_to = last,
            requests = trips.requests,
            statements = trips.statements,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "shipped a batch to SSISDB"
        );
        Ok(n)
    }
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
