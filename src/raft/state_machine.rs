//! The replicated queue as openraft's [`RaftStateMachine`]: applies committed proposals to the
//! in-memory [`QueueState`], persists what changed in sled, and builds and installs snapshots.
//!
//! Storage, in the replica's one sled database:
//! - tree `sm`: everything the state machine knows, under the keys
//!   `meta/last_applied`, `meta/membership`, `meta/next_job_id`, `meta/next_lease_token`,
//!   `meta/clock`, `meta/outbox`, `job/<id, 8 bytes BE>` (live jobs), `finished/<id>` and
//!   `archive/<id>` (finished jobs: what the queue keeps, and the full row, which only queries
//!   read; see `job_rows.rs`), `worker/<uuid, 16 bytes>`,
//!   `lines/<job id BE><first sequence BE>` (blocks of a job's log lines, see `log_blocks.rs`;
//!   big-endian, so a job's lines are contiguous and in order),
//!   `logbatch/<job id BE><lease token BE>`, `outbox/<event id BE>` and
//!   `truncation/<job id BE>` (the outbox, never held in memory: see `outbox_rows.rs`);
//!
//! The snapshot is a file of its own (`snapshot_store.rs`), synced before the log behind it is
//! purged. The `sm` tree is never synced: after a power cut sled recovers some earlier state of
//! it, and openraft re-applies the log after that state's `last_applied`. When the recovered state
//! is older than the snapshot (the log before the snapshot may be purged), it is rewritten from the
//! snapshot at open. So the tree holds nothing that the snapshot and the log cannot rebuild.
//!
//! All of `sm` lives in one tree so that each apply call's writes (job, worker and log rows, the
//! counters, last applied) go to disk in one atomic batch. If rows and `last_applied` could be
//! persisted separately, a crash between them would leave jobs whose creating entry is then
//! applied again on restart, and the replay would hand out different job ids or lease tokens
//! than the other replicas did.
//!
//! The API services read the queue through [`StateMachine::queue`]; the lock is held only for
//! in-memory work, never across an `.await`.

// Helpers here return openraft's `StorageError`, the type every storage trait method must return;
// boxing it in between would only move the allocation.
#![allow(clippy::result_large_err)]

use std::io::{Seek, SeekFrom};
use std::sync::{Arc, PoisonError, RwLock, RwLockWriteGuard};

use super::dispatch_signal::DispatchSignal;
use super::job_rows::{job_key, JobReader, ARCHIVE_PREFIX, FINISHED_PREFIX, JOB_PREFIX};
use super::legacy::{decode_finished, decode_job, decode_outbox_meta};
use super::log_blocks::{
    convert_single_line_rows, parse_line_key, prefix_end, LINES_PREFIX, SINGLE_LINE_PREFIX,
};
use super::log_reader::LogReader;
use super::log_store::LogStore;
use super::outbox_rows::{OutboxReadError, OutboxReader, OUTBOX_PREFIX, TRUNCATION_PREFIX};
use super::snapshot_data::DataReader;
use super::snapshot_file::SnapshotFile;
use super::snapshot_store::SnapshotStore;
use super::storage::{decode_loaded, encode, LoadError};
use super::{
    Entry, LogId, ProposalOutcome, Snapshot, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};
use crate::queue::{
    ApplyContext, FinishedJob, JobId, OutboxEvent, Parts, QueueState, Rebuild, Worker, WorkerId,
    UNKNOWN_LAST_EVENT,
};
use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, StorageIOError};

mod changed_rows;
mod rewrite;
mod snapshot_builder;

use changed_rows::ChangedRows;
use rewrite::{rewrite_from_snapshot, RowBatches};
pub use snapshot_builder::SnapshotBuilder;

/// The replica's state as its readers see it: the queue, and the rows it does not hold (finished
/// jobs, log lines, outbox events). Cheap to clone.
#[derive(Clone)]
pub struct StateReaders {
    pub queue: SharedQueue,
    pub jobs: JobReader,
    pub logs: LogReader,
    pub outbox: OutboxReader,
}

/// The queue as the API services see it. Take the lock briefly and never hold it across `.await`.
pub type SharedQueue = Arc<RwLock<QueueState>>;

const SM_TREE: &str = "sm";
const LAST_APPLIED_KEY: &[u8] = b"meta/last_applied";
const MEMBERSHIP_KEY: &[u8] = b"meta/membership";
const NEXT_JOB_ID_KEY: &[u8] = b"meta/next_job_id";
const NEXT_LEASE_TOKEN_KEY: &[u8] = b"meta/next_lease_token";
/// Cluster time (`QueueState::clock_ms`); absent in data dirs from before it was kept (0).
const CLOCK_KEY: &[u8] = b"meta/clock";
const WORKER_PREFIX: &[u8] = b"worker/";
/// `logbatch/{job}{token}`: the last log batch number applied for that lease.
const LOG_BATCH_PREFIX: &[u8] = b"logbatch/";
const OUTBOX_META_KEY: &[u8] = b"meta/outbox";

fn worker_key(id: WorkerId) -> Vec<u8> {
    let mut key = Vec::with_capacity(WORKER_PREFIX.len() + 16);
    key.extend_from_slice(WORKER_PREFIX);
    key.extend_from_slice(id.as_bytes());
    key
}

fn log_batch_key(job: JobId, token: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(LOG_BATCH_PREFIX.len() + 16);
    key.extend_from_slice(LOG_BATCH_PREFIX);
    key.extend_from_slice(&job.to_be_bytes());
    key.extend_from_slice(&token.to_be_bytes());
    key
}

/// A row of the `sm` tree, by its key.
enum Row {
    Job(JobId),
    Finished(JobId),
    Worker(WorkerId),
    /// A block of log lines (read through `LogReader`, never loaded).
    Log,
    /// An outbox event (read through `OutboxReader`, never loaded unless held).
    Outbox,
    Truncation(JobId),
    LogBatch(JobId, u64),
}

fn parse_row_key(key: &[u8]) -> Option<Row> {
    if let Some(rest) = key.strip_prefix(LOG_BATCH_PREFIX) {
        let (job, token) = rest.split_first_chunk::<8>()?;
        return Some(Row::LogBatch(
            u64::from_be_bytes(*job),
            u64::from_be_bytes(token.try_into().ok()?),
        ));
    }
    if key.starts_with(OUTBOX_PREFIX) {
        return Some(Row::Outbox);
    }
    if let Some(job) = key.strip_prefix(TRUNCATION_PREFIX) {
        return Some(Row::Truncation(u64::from_be_bytes(job.try_into().ok()?)));
    }
    if let Some(id) = key.strip_prefix(JOB_PREFIX) {
        return Some(Row::Job(u64::from_be_bytes(id.try_into().ok()?)));
    }
    if let Some(id) = key.strip_prefix(FINISHED_PREFIX) {
        return Some(Row::Finished(u64::from_be_bytes(id.try_into().ok()?)));
    }
    if let Some(id) = key.strip_prefix(WORKER_PREFIX) {
        return Some(Row::Worker(WorkerId::from_bytes(id.try_into().ok()?)));
    }
    parse_line_key(key).map(|_| Row::Log)
}

fn sm_write_error(e: impl Into<AnyError>) -> StorageError {
    StorageIOError::write_state_machine(e).into()
}

fn snapshot_error(
    meta: Option<&SnapshotMeta>,
    verb: ErrorVerb,
    e: impl Into<AnyError>,
) -> StorageError {
    StorageIOError::new(ErrorSubject::Snapshot(meta.map(|m| m.signature())), verb, e).into()
}

/// The replica's state machine. Owned by openraft's state machine task; the API reaches the
/// queue through [`StateMachine::queue`].
pub struct StateMachine {
    sm: sled::Tree,
    snapshots: SnapshotStore,
    /// This replica's log: an applied entry's effects are written only once the entry is
    /// durable in it.
    log: LogStore,
    queue: SharedQueue,
    /// Wakes the leader's long-polls after an apply that may have made work for them.
    dispatch: DispatchSignal,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

impl StateMachine {
    /// Loads the persisted state (meta keys, live jobs, what is kept of finished ones, workers,
    /// the outbox's truncation events; not the finished jobs' full rows, the log lines nor the
    /// outbox's events unless it is held), and rewrites it from the snapshot when it is older
    /// than the snapshot.
    pub(super) fn open(
        db: &sled::Db,
        snapshots: SnapshotStore,
        log: LogStore,
    ) -> Result<Self, LoadError> {
        let sm = db.open_tree(SM_TREE)?;
        let mut last_applied = None;
        let mut membership = StoredMembership::default();
        // Jobs go into the state as they are read; the rest gathers in `parts`.
        let mut rebuild = Rebuild::default();
        let mut parts = Parts {
            next_job_id: 1,
            next_lease_token: 1,
            ..Parts::default()
        };
        // Everything but the finished jobs' full rows (`JobReader`), the log lines (`LogReader`)
        // and the outbox's events (`OutboxReader`), which stay in the store: skipping their
        // ranges, a restart does not even read them.
        let archive_end = prefix_end(ARCHIVE_PREFIX);
        let lines_end = prefix_end(LINES_PREFIX);
        let single_lines_end = prefix_end(SINGLE_LINE_PREFIX);
        let outbox_end = prefix_end(OUTBOX_PREFIX);
        let rows = sm
            .range(..ARCHIVE_PREFIX)
            .chain(sm.range(archive_end.as_slice()..LINES_PREFIX))
            .chain(sm.range(lines_end.as_slice()..SINGLE_LINE_PREFIX))
            .chain(sm.range(single_lines_end.as_slice()..OUTBOX_PREFIX))
            .chain(sm.range(outbox_end.as_slice()..));
        let mut truncations = Vec::new();
        // Finished jobs stored as live rows by earlier builds, moved as they are met.
        let mut moved = RowBatches::new(&sm);
        let mut moved_jobs = 0u64;
        for item in rows {
            let (key, value) = item?;
            match key.as_ref() {
                LAST_APPLIED_KEY => {
                    last_applied = Some(decode_loaded::<LogId>(&value, "the last applied log id")?)
                }
                MEMBERSHIP_KEY => membership = decode_loaded(&value, "the applied membership")?,
                NEXT_JOB_ID_KEY => parts.next_job_id = decode_loaded(&value, "the next job id")?,
                NEXT_LEASE_TOKEN_KEY => {
                    parts.next_lease_token = decode_loaded(&value, "the next lease token")?
                }
                OUTBOX_META_KEY => parts.outbox_meta = decode_outbox_meta(&value)?,
                CLOCK_KEY => parts.clock_ms = decode_loaded(&value, "the cluster time")?,
                key => match parse_row_key(key) {
                    Some(Row::Job(id)) => {
                        let job = decode_job(&value, &format!("job {id}"))?;
                        if job.id != id {
                            return Err(LoadError::Corrupt(format!(
                                "job {} is stored under id {id}",
                                job.id
                            )));
                        }
                        if job.state.is_terminal() {
                            // Only earlier builds stored these, and their outbox is held.
                            let kept = FinishedJob::of(&job, UNKNOWN_LAST_EVENT);
                            // A write that fails here is the disk's fault, not damage to set aside.
                            moved.remove(job_key(id));
                            moved
                                .put_finished(&job, &kept)
                                .map_err(|e| LoadError::Io(std::io::Error::other(e)))?;
                            moved_jobs += 1;
                            rebuild.add_finished(kept);
                        } else {
                            rebuild.add_job(job);
                        }
                    }
                    Some(Row::Finished(id)) => {
                        let kept = decode_finished(&value, &format!("finished job {id}"))?;
                        if kept.id != id {
                            return Err(LoadError::Corrupt(format!(
                                "finished job {} is stored under id {id}",
                                kept.id
                            )));
                        }
                        rebuild.add_finished(kept);
                    }
                    Some(Row::Worker(id)) => {
                        let worker: Worker = decode_loaded(&value, &format!("worker {id}"))?;
                        if worker.info.id != id {
                            return Err(LoadError::Corrupt(format!(
                                "worker {} is stored under id {id}",
                                worker.info.id
                            )));
                        }
                        parts.workers.push(worker);
                    }
                    // Not in the ranges read.
                    Some(Row::Log) => {}
                    Some(Row::LogBatch(job, token)) => {
                        let what = format!("the log batch mark of job {job} lease {token}");
                        parts
                            .log_batches
                            .push((job, token, decode_loaded(&value, &what)?));
                    }
                    // Not in the ranges read.
                    Some(Row::Outbox) => {}
                    Some(Row::Truncation(job)) => {
                        let event: OutboxEvent =
                            decode_loaded(&value, &format!("the truncation event of job {job}"))?;
                        if event.kind.job() != Some(job) {
                            return Err(LoadError::Corrupt(format!(
                                "truncation event {} is stored under job {job}",
                                event.id
                            )));
                        }
                        truncations.push(event);
                    }
                    None => {
                        return Err(LoadError::Corrupt(format!(
                            "unexpected key {:?} in the state machine",
                            String::from_utf8_lossy(key)
                        )))
                    }
                },
            }
        }
        sm.apply_batch(moved.finish())?;
        parts.outbox = match parts.outbox_meta.held {
            // The queue holds a held outbox whole (and counts it: an earlier build did not).
            true => {
                let events = load_held_outbox(&sm)?;
                parts.outbox_meta.pending = events.len() as u64;
                events
            }
            false => truncations,
        };
        if moved_jobs > 0 {
            tracing::info!(
                jobs = moved_jobs,
                "moved the finished jobs stored as live rows (by an earlier build) out of memory"
            );
        }
        let converted = convert_single_line_rows(&sm).map_err(LoadError::Corrupt)?;
        if converted > 0 {
            tracing::info!(
                lines = converted,
                "rewrote the log lines stored one per row (by an earlier build) as blocks"
            );
        }
        let queue = rebuild.finish(parts);
        let mut state_machine = StateMachine {
            sm,
            snapshots,
            log,
            queue: Arc::new(RwLock::new(queue)),
            dispatch: DispatchSignal::default(),
            last_applied,
            membership,
        };
        state_machine.catch_up_with_snapshot()?;
        Ok(state_machine)
    }

    /// After a power cut sled may recover a state older than the snapshot, and the log before
    /// the snapshot may be purged: then the state is rewritten from the snapshot (the log after it
    /// is re-applied by openraft as usual).
    fn catch_up_with_snapshot(&mut self) -> Result<(), LoadError> {
        let Some(meta) = self.snapshots.meta() else {
            return Ok(());
        };
        if meta.last_log_id <= self.last_applied {
            return Ok(());
        }
        let Some((meta, mut data)) = self.snapshots.reader()? else {
            return Ok(());
        };
        let (queue, _) =
            rewrite_from_snapshot(&self.sm, &mut data, meta.last_log_id, &meta.last_membership)
                .map_err(|e| LoadError::Corrupt(format!("the stored snapshot: {e}")))?;
        tracing::info!(
            state_applied = ?self.last_applied.map(|id| id.index),
            snapshot_index = ?meta.last_log_id.map(|id| id.index),
            "the state machine on disk was older than the snapshot (a power cut?); rewrote it from the snapshot"
        );
        *self.queue.write().unwrap_or_else(PoisonError::into_inner) = queue;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership;
        Ok(())
    }

    /// Whether anything was ever applied (or installed from a snapshot).
    pub(super) fn has_applied(&self) -> bool {
        self.last_applied.is_some()
    }

    /// The `sm` tree, for tests that look at rows.
    #[cfg(test)]
    pub(super) fn tree(&self) -> &sled::Tree {
        &self.sm
    }

    /// How many rows hold log lines (blocks, and single lines of earlier builds).
    #[cfg(test)]
    pub(super) fn log_line_rows(&self) -> usize {
        self.sm.scan_prefix(LINES_PREFIX).count() + self.sm.scan_prefix(SINGLE_LINE_PREFIX).count()
    }

    /// The stored log lines, for the API's and the shipper's reads.
    pub fn log_reader(&self) -> LogReader {
        LogReader::new(self.sm.clone())
    }

    /// What the worker service's long-polls wait on.
    pub fn dispatch_signal(&self) -> DispatchSignal {
        self.dispatch.clone()
    }

    /// Every reader at once, for the shipper and the metrics.
    pub fn readers(&self) -> StateReaders {
        StateReaders {
            queue: self.queue(),
            jobs: self.job_reader(),
            logs: self.log_reader(),
            outbox: self.outbox_reader(),
        }
    }

    /// The stored outbox, for the shipper, the leader's retention cut and the metrics.
    pub fn outbox_reader(&self) -> OutboxReader {
        OutboxReader::new(self.sm.clone())
    }

    /// Jobs, live and finished, for the API's and the shipper's reads.
    pub fn job_reader(&self) -> JobReader {
        JobReader::new(self.sm.clone(), self.queue())
    }

    /// The queue, for the API services' reads. Applies change it in place.
    pub fn queue(&self) -> SharedQueue {
        Arc::clone(&self.queue)
    }

    /// The write lock, refused if an earlier holder panicked: that apply may have stopped half
    /// way, and applying more on top would make this replica diverge from the others.
    fn lock_for_apply(&self) -> Result<RwLockWriteGuard<'_, QueueState>, StorageError> {
        self.queue.write().map_err(|_| {
            sm_write_error(AnyError::error(
                "the queue lock was poisoned by a panic during an earlier apply",
            ))
        })
    }
}

/// Every stored outbox event, for a held outbox (see `queue/outbox.rs`): earlier builds held it
/// in memory, so this reads no more than they did.
fn load_held_outbox(sm: &sled::Tree) -> Result<Vec<OutboxEvent>, LoadError> {
    OutboxReader::new(sm.clone())
        .all()
        .map(|event| {
            event.map_err(|e| match e {
                OutboxReadError::Store(detail) => LoadError::Io(std::io::Error::other(detail)),
                corrupt @ OutboxReadError::Corrupt { .. } => {
                    LoadError::Corrupt(corrupt.to_string())
                }
            })
        })
        .collect()
}

/// Adds the meta keys to `batch`; the membership only when it changed (it rarely does).
fn put_meta(
    batch: &mut sled::Batch,
    last_applied: Option<LogId>,
    membership: Option<&StoredMembership>,
    next_job_id: JobId,
    next_lease_token: u64,
    clock_ms: u64,
) -> Result<(), StorageError> {
    match last_applied {
        Some(log_id) => batch.insert(
            LAST_APPLIED_KEY,
            encode(&log_id).map_err(|e| sm_write_error(&e))?,
        ),
        None => batch.remove(LAST_APPLIED_KEY),
    }
    if let Some(membership) = membership {
        batch.insert(
            MEMBERSHIP_KEY,
            encode(membership).map_err(|e| sm_write_error(&e))?,
        );
    }
    batch.insert(
        NEXT_JOB_ID_KEY,
        encode(&next_job_id).map_err(|e| sm_write_error(&e))?,
    );
    batch.insert(
        NEXT_LEASE_TOKEN_KEY,
        encode(&next_lease_token).map_err(|e| sm_write_error(&e))?,
    );
    batch.insert(
        CLOCK_KEY,
        encode(&clock_ms).map_err(|e| sm_write_error(&e))?,
    );
    Ok(())
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ProposalOutcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut outcomes = Vec::new();
        let mut last_applied = self.last_applied;
        let mut membership = None;
        // In-memory work under the lock; the sled write after releasing it.
        let mut changed = {
            let mut queue = self.lock_for_apply()?;
            for entry in entries {
                last_applied = Some(entry.log_id);
                let outcome = match entry.payload {
                    EntryPayload::Blank => ProposalOutcome::default(),
                    EntryPayload::Normal(proposal) => {
                        // The log index and the leader's clock reading come from the entry, so
                        // every replica computes the same results.
                        let ctx = ApplyContext {
                            log_index: entry.log_id.index,
                            now_ms: proposal.now_ms,
                            outbox_limit: proposal.outbox_limit,
                        };
                        let results = proposal
                            .commands
                            .into_iter()
                            .map(|cmd| queue.apply(&ctx, cmd))
                            .collect();
                        ProposalOutcome { results }
                    }
                    EntryPayload::Membership(m) => {
                        membership = Some(StoredMembership::new(Some(entry.log_id), m));
                        ProposalOutcome::default()
                    }
                };
                outcomes.push(outcome);
            }
            ChangedRows::take(&mut queue)
        };
        if outcomes.is_empty() {
            return Ok(outcomes);
        }
        self.last_applied = last_applied;
        let membership_changed = membership.is_some();
        if let Some(membership) = membership {
            self.membership = membership;
        }

        // One atomic batch: job, worker and log rows, the counters and last_applied reach disk
        // together or not at all (see the module docs).
        //
        // No flush: sled recovers a prefix of the writes to this database, and every entry applied
        // here was written to the log (and is committed on a majority) before this batch. After a
        // crash the state machine is exactly as of the end of some earlier apply call, its log
        // entries are still there (locally, or on the majority that committed them), and openraft
        // re-applies the entries after the recovered `last_applied`, producing the same rows and
        // ids again.
        let mut batch = sled::Batch::default();
        let (new_work, changed_workers) = changed.dispatch_wake();
        let archived = std::mem::take(&mut changed.archived);
        let (next_job_id, next_lease_token, clock_ms) = (
            changed.next_job_id,
            changed.next_lease_token,
            changed.clock_ms,
        );
        changed.write(&mut batch, &self.sm)?;
        let membership = membership_changed.then_some(&self.membership);
        put_meta(
            &mut batch,
            self.last_applied,
            membership,
            next_job_id,
            next_lease_token,
            clock_ms,
        )?;
        // sled may persist this batch on its own (its background flush), so it must not get
        // ahead of what this replica's log can replay after a power cut.
        if let Some(last) = self.last_applied {
            self.log
                .wait_durable(last.index)
                .await
                .map_err(|e| sm_write_error(AnyError::error(e)))?;
        }
        // An error here leaves memory ahead of disk; openraft stops this replica on a storage
        // error, and on restart the log replays what is missing.
        self.sm.apply_batch(batch).map_err(|e| sm_write_error(&e))?;
        // Readers find those rows in the tree from now on.
        if !archived.is_empty() {
            self.lock_for_apply()?.release_archived(archived);
        }
        self.dispatch.publish(new_work, changed_workers);
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // openraft calls this on the state machine task between applies, so the clone below is
        // a consistent view as of `last_applied`; the builder then runs while later entries are
        // applied. Finished jobs' full rows and the log lines are not copied here (they are the
        // bulk of the state, and apply waits while this runs): the builder reads them from the
        // tree (`read_archived`, `LogReader::each_as_of`).
        let view_started = std::time::Instant::now();
        let state = self
            .queue
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .view();
        SnapshotBuilder {
            view_ms: view_started.elapsed().as_millis() as u64,
            tree: self.sm.clone(),
            logs: self.log_reader(),
            state,
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        let part = self
            .snapshots
            .create_part()
            .map_err(|e| snapshot_error(None, ErrorVerb::Write, AnyError::error(e)))?;
        Ok(Box::new(part))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        // Checked whole first (a damaged transfer must not replace the stored snapshot nor
        // touch the tree); then the snapshot file, durably: once this returns openraft purges the
        // log up to it. Then the sm tree is rewritten to hold exactly the snapshot's state (old
        // jobs the snapshot does not have must go). A power cut in between leaves a tree older
        // than the snapshot, which opening rewrites from it.
        let started = std::time::Instant::now();
        let snapshots = self.snapshots.clone();
        let sm = self.sm.clone();
        let shared = self.queue();
        let stored_meta = meta.clone();
        let installed = tokio::task::spawn_blocking(move || {
            let mut data = *snapshot;
            let verified = verify_snapshot_data(&mut data).map_err(|e| (ErrorVerb::Read, e))?;
            let mut data = match data.part_path() {
                Some(_) => data,
                None => copy_to_part(&snapshots, &mut data).map_err(|e| (ErrorVerb::Write, e))?,
            };
            snapshots
                .commit(&mut data, &stored_meta, false)
                .map_err(|e| (ErrorVerb::Write, e))?;
            // The old state goes before the new one is built, so the replica never holds both
            // (on a replica far behind, each is the size of the whole queue). Until the new one
            // is in place, stale reads here are refused (`QueueState::is_placeholder`).
            {
                let mut current = shared.write().unwrap_or_else(PoisonError::into_inner);
                let activity = current.activity();
                *current = QueueState::placeholder(activity);
            }
            let (queue, lines) = rewrite_from_snapshot(
                &sm,
                &mut data,
                stored_meta.last_log_id,
                &stored_meta.last_membership,
            )
            .map_err(|e| (ErrorVerb::Write, e))?;
            Ok::<_, (ErrorVerb, String)>((queue, lines, verified))
        })
        .await
        .map_err(|e| snapshot_error(Some(meta), ErrorVerb::Write, AnyError::error(e)))?;
        let (queue, lines, bytes) =
            installed.map_err(|(verb, e)| snapshot_error(Some(meta), verb, AnyError::error(e)))?;

        {
            let mut current = self.lock_for_apply()?;
            let mut queue = queue;
            queue.continue_activity(current.activity());
            *current = queue;
        }
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        // Anything may have changed: every poll looks again.
        self.dispatch.publish(true, []);
        // The old state and the rewrite's buffers are gone: the largest burst of garbage a
        // replica makes (`memory.rs`). Off this task, once the new state serves reads.
        tokio::task::spawn_blocking(crate::memory::return_free_memory);
        tracing::info!(
            snapshot_id = %meta.snapshot_id,
            last_log_index = meta.last_log_id.map(|id| id.index),
            jobs = self.lock_for_apply()?.job_count(),
            log_lines = lines,
            bytes,
            install_ms = started.elapsed().as_millis() as u64,
            "installed snapshot"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let snapshots = self.snapshots.clone();
        let stored = tokio::task::spawn_blocking(move || snapshots.reader())
            .await
            .map_err(|e| snapshot_error(None, ErrorVerb::Read, AnyError::error(e)))?
            .map_err(|e| snapshot_error(None, ErrorVerb::Read, AnyError::error(e.to_string())))?;
        Ok(stored.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(data),
        }))
    }
}

/// Reads snapshot data to its end, checking it whole; returns its length. Leaves it at its start.
fn verify_snapshot_data(data: &mut SnapshotFile) -> Result<u64, String> {
    let rewind = |data: &mut SnapshotFile| {
        data.seek(SeekFrom::Start(0))
            .map_err(|e| format!("cannot read the snapshot data: {e}"))
    };
    rewind(data)?;
    {
        let (_, mut reader) = DataReader::open(&mut *data)?;
        while reader.next_record()?.is_some() {}
    }
    rewind(data)?;
    data.data_len()
        .map_err(|e| format!("cannot read the snapshot data: {e}"))
}

/// A copy of finished snapshot data (one this store did not receive) as a new part file.
fn copy_to_part(
    snapshots: &SnapshotStore,
    data: &mut SnapshotFile,
) -> Result<SnapshotFile, String> {
    let mut part = snapshots.create_part()?;
    std::io::copy(data, &mut part).map_err(|e| format!("cannot copy the snapshot data: {e}"))?;
    Ok(part)
}
