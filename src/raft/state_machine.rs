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

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Seek, SeekFrom};
use std::sync::{Arc, PoisonError, RwLock, RwLockWriteGuard};

use super::job_rows::{
    archive_key, finished_key, job_key, read_archived, JobReader, ARCHIVE_PREFIX, FINISHED_PREFIX,
    JOB_PREFIX,
};
use super::legacy::{decode_finished, decode_job, decode_outbox_meta};
use super::log_blocks::{
    convert_single_line_rows, encode_block, job_blocks, parse_line_key, prefix_end, BlockPacker,
    LINES_PREFIX, SINGLE_LINE_PREFIX,
};
use super::log_reader::LogReader;
use super::log_store::LogStore;
use super::outbox_rows::{
    outbox_key, truncation_key, OutboxReadError, OutboxReader, OUTBOX_PREFIX, TRUNCATION_PREFIX,
};
use super::snapshot_data::{DataReader, DataWriter, Record};
use super::snapshot_file::SnapshotFile;
use super::snapshot_store::SnapshotStore;
use super::storage::{decode_loaded, encode, LoadError};
use super::{
    Entry, LogId, ProposalOutcome, Snapshot, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};
use crate::queue::{
    ApplyContext, FinishedJob, Job, JobId, JobLogLine, OutboxEvent, OutboxMeta, Parts, QueueState,
    Rebuild, View, Worker, WorkerId, UNKNOWN_LAST_EVENT,
};
use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder,
    StorageIOError,
};
use serde::Serialize;

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

/// A changed job's rows.
enum JobRows {
    Live(Arc<Job>),
    /// Finished: what the queue keeps, and the full row when it finished in this apply call.
    Finished {
        kept: FinishedJob,
        row: Option<Arc<Job>>,
    },
    Gone,
}

/// The rows changed by one apply call, read under the queue lock and written after it.
struct ChangedRows {
    jobs: Vec<(JobId, JobRows)>,
    /// Jobs whose full row the queue holds until this batch is written.
    archived: Vec<JobId>,
    workers: Vec<(WorkerId, Option<Worker>)>,
    /// Lines written, the last write of each (the truncation notice is rewritten in place).
    log_lines: Vec<JobLogLine>,
    /// Jobs whose lines all go (removed by retention), after the writes above.
    logs_removed: BTreeSet<JobId>,
    /// Events written, the last write of each, not those removed in the same call.
    outbox_written: Vec<OutboxEvent>,
    /// Every event up to this id goes, before the writes above (they are all newer).
    outbox_released: Option<u64>,
    outbox_removed: BTreeSet<u64>,
    truncations: Vec<(JobId, Option<OutboxEvent>)>,
    outbox_meta: Option<OutboxMeta>,
    log_batches: Vec<(JobId, u64, Option<u64>)>,
    next_job_id: JobId,
    next_lease_token: u64,
    clock_ms: u64,
}

impl ChangedRows {
    fn take(queue: &mut QueueState) -> Self {
        let changes = queue.take_changes();
        let jobs: Vec<(JobId, JobRows)> = changes
            .jobs
            .into_iter()
            .map(|id| {
                let rows = match (queue.finished_job(id), queue.shared_job(id)) {
                    (Some(kept), _) => JobRows::Finished {
                        kept: kept.clone(),
                        row: queue.shared_archived(id),
                    },
                    (None, Some(job)) => JobRows::Live(job),
                    (None, None) => JobRows::Gone,
                };
                (id, rows)
            })
            .collect();
        ChangedRows {
            archived: jobs
                .iter()
                .filter(|(_, rows)| matches!(rows, JobRows::Finished { row: Some(_), .. }))
                .map(|&(id, _)| id)
                .collect(),
            jobs,
            workers: changes
                .workers
                .into_iter()
                .map(|id| (id, queue.worker(id).cloned()))
                .collect(),
            // A line written twice in one call (the truncation notice) is kept once, as last
            // written.
            log_lines: changes
                .log_lines
                .into_iter()
                .map(|line| ((line.job_id, line.sequence), line))
                .collect::<BTreeMap<_, _>>()
                .into_values()
                .collect(),
            logs_removed: changes.logs_removed,
            outbox_written: changes
                .outbox_written
                .into_iter()
                .map(|event| (event.id, event))
                .collect::<BTreeMap<_, _>>()
                .into_values()
                .filter(|event| {
                    changes.outbox_released.is_none_or(|up_to| event.id > up_to)
                        && !changes.outbox_removed.contains(&event.id)
                })
                .collect(),
            outbox_released: changes.outbox_released,
            outbox_removed: changes.outbox_removed,
            truncations: changes
                .truncations
                .into_iter()
                .map(|job| (job, queue.truncation(job).cloned()))
                .collect(),
            outbox_meta: changes.outbox_meta.then(|| queue.outbox_meta().clone()),
            log_batches: changes
                .log_batches
                .into_iter()
                .map(|(job, token)| (job, token, queue.log_batch_mark(job, token)))
                .collect(),
            next_job_id: queue.next_job_id(),
            next_lease_token: queue.next_lease_token(),
            clock_ms: queue.clock_ms(),
        }
    }

    /// Adds the rows to `batch`; `tree` is read to find the lines of removed jobs.
    fn write(self, batch: &mut sled::Batch, tree: &sled::Tree) -> Result<(), StorageError> {
        if let Some(up_to) = self.outbox_released {
            // Only the released rows are left before the cut (earlier ones went with earlier
            // releases), so this reads what it removes.
            let first = outbox_key(0);
            let cut = outbox_key(up_to);
            for key in tree.range(first.as_slice()..=cut.as_slice()).keys() {
                batch.remove(key.map_err(|e| sm_write_error(&e))?);
            }
        }
        for id in self.outbox_removed {
            batch.remove(outbox_key(id));
        }
        for event in self.outbox_written {
            batch.insert(
                outbox_key(event.id),
                encode(&event).map_err(|e| sm_write_error(&e))?,
            );
        }
        for (job, event) in self.truncations {
            match event {
                Some(event) => batch.insert(
                    truncation_key(job),
                    encode(&event).map_err(|e| sm_write_error(&e))?,
                ),
                None => batch.remove(truncation_key(job)),
            }
        }
        for (job, token, mark) in self.log_batches {
            match mark {
                Some(mark) => batch.insert(
                    log_batch_key(job, token),
                    encode(&mark).map_err(|e| sm_write_error(&e))?,
                ),
                None => batch.remove(log_batch_key(job, token)),
            }
        }
        if let Some(meta) = self.outbox_meta {
            batch.insert(
                OUTBOX_META_KEY,
                encode(&meta).map_err(|e| sm_write_error(&e))?,
            );
        }
        for (id, rows) in self.jobs {
            match rows {
                JobRows::Live(job) => {
                    batch.insert(job_key(id), encode(&job).map_err(|e| sm_write_error(&e))?)
                }
                JobRows::Finished { kept, row } => {
                    batch.insert(
                        finished_key(id),
                        encode(&kept).map_err(|e| sm_write_error(&e))?,
                    );
                    if let Some(row) = row {
                        batch.insert(
                            archive_key(id),
                            encode(&row).map_err(|e| sm_write_error(&e))?,
                        );
                        batch.remove(job_key(id));
                    }
                }
                JobRows::Gone => {
                    batch.remove(job_key(id));
                    batch.remove(finished_key(id));
                    batch.remove(archive_key(id));
                }
            }
        }
        for (id, worker) in self.workers {
            match worker {
                Some(worker) => batch.insert(
                    worker_key(id),
                    encode(&worker).map_err(|e| sm_write_error(&e))?,
                ),
                None => batch.remove(worker_key(id)),
            }
        }
        // A job removed in this same call may have had lines written before its removal (a late
        // append and a retention sweep in one entry): they are not written at all.
        let mut packer = BlockPacker::default();
        let mut put = |(key, lines): (Vec<u8>, Vec<JobLogLine>)| -> Result<(), StorageError> {
            batch.insert(key, encode_block(&lines).map_err(|e| sm_write_error(&e))?);
            Ok(())
        };
        for line in self
            .log_lines
            .into_iter()
            .filter(|line| !self.logs_removed.contains(&line.job_id))
        {
            if let Some(block) = packer.push(line) {
                put(block)?;
            }
        }
        if let Some(block) = packer.take() {
            put(block)?;
        }
        for job in self.logs_removed {
            for key in tree.range(job_blocks(job)).keys() {
                batch.remove(key.map_err(|e| sm_write_error(&e))?);
            }
        }
        Ok(())
    }
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

/// Rows go to the tree in batches of at most this many bytes and rows when it is rewritten from a
/// snapshot. Small batches: with large ones sled 0.34 keeps the node versions its writes replace
/// (heaptrack: they were most of an installing replica's peak), presumably because it frees them
/// only as fast as threads pin its epoch and a batch pins once for all its rows. Measured with
/// sled 0.34.7 alone, 1.7M rows of 60 bytes (outbox events) written in batches of 256 KiB:
/// 4.3 GiB resident; of 16 KiB: 177 MiB (and faster); one by one: 161 MiB. A replica installing
/// a snapshot of 30,000 jobs with 1.7M outbox events peaked at 5.3 GiB with 256 KiB batches.
const REWRITE_BATCH_BYTES: usize = 16 * 1024;
const REWRITE_BATCH_ROWS: usize = 128;
/// Old keys are removed this many at a time when the tree is rewritten (as above).
const REMOVE_BATCH_KEYS: usize = 128;
/// sled is flushed after this many bytes of a rewrite: sled 0.34 holds what it is given until it
/// flushes. Measured with sled 0.34.7 alone, 50,000 rows of 5 KB (blocks of log lines) written
/// without a flush: 485 MiB resident; flushed every 8 MiB: 72 MiB, for 1.5× the write time. (With
/// a row per log line, as earlier builds stored them, flushing did not help: sled's per-row
/// bookkeeping dominated.)
const REWRITE_FLUSH_BYTES: usize = 8 * 1024 * 1024;

/// Rewrites the sm tree to hold exactly the state in snapshot `data`, `last_applied` and
/// `membership`, streaming the data in bounded batches; returns the state and the number of log
/// lines written. The tree is emptied first (in key order, so `last_applied` goes partway) and
/// the new `last_applied` is written last: a crash in between leaves a tree whose `last_applied`
/// is the old one or none, older than the stored snapshot either way, which opening rewrites
/// again from it. Blocking sled work.
fn rewrite_from_snapshot(
    sm: &sled::Tree,
    data: impl std::io::Read,
    last_applied: Option<LogId>,
    membership: &StoredMembership,
) -> Result<(QueueState, u64), String> {
    let (mut state, mut reader) = DataReader::open(data)?;
    let mut rows = RowBatches::new(sm);
    // Emptied in batches too (sled's own `clear` removes key by key, unflushed).
    let mut old_keys = sm.iter().keys();
    loop {
        let chunk: Vec<sled::IVec> = old_keys
            .by_ref()
            .take(REMOVE_BATCH_KEYS)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("cannot read the state machine tree: {e}"))?;
        if chunk.is_empty() {
            break;
        }
        rows.remove_all(chunk)?;
    }
    drop(old_keys);
    for worker in &state.workers {
        rows.put(worker_key(worker.info.id), worker)?;
    }
    // The events the queue holds (the held outbox, or the truncation events); the others follow
    // as records.
    for event in &state.outbox {
        rows.put(outbox_key(event.id), event)?;
    }
    for &(job, token, mark) in &state.log_batches {
        rows.put(log_batch_key(job, token), &mark)?;
    }
    // Jobs and lines as they stream in: the live jobs and what is kept of finished ones gather
    // in `state`, finished jobs' full rows only pass through. (Building the queue's maps as they
    // arrive, between the tree's writes, left the installing replica 30–130 MiB larger in
    // `bench capacity --jobs 30000`: presumably the maps' nodes, interleaved with sled's
    // short-lived buffers, keep the allocator from reusing or returning that memory.)
    let mut lines = 0;
    let mut packer = BlockPacker::default();
    while let Some(record) = reader.next_record()? {
        match record {
            // Format 7 (an earlier build: its outbox is held).
            Record::Job(job) if job.state.is_terminal() => {
                let kept = FinishedJob::of(&job, UNKNOWN_LAST_EVENT);
                rows.put_finished(&job, &kept)?;
                state.finished.push(kept);
            }
            Record::FinishedRow(kept, job) => {
                rows.put_finished(&job, &kept)?;
                state.finished.push(kept);
            }
            Record::Event(event) => rows.put(outbox_key(event.id), &event)?,
            Record::Job(job) => {
                rows.put(job_key(job.id), &job)?;
                state.jobs.push(*job);
            }
            Record::Finished(kept) => {
                rows.put(finished_key(kept.id), &kept)?;
                state.finished.push(kept);
            }
            Record::Line(line) => {
                if let Some((key, block)) = packer.push(line) {
                    rows.put(key, &block)?;
                }
                lines += 1;
            }
        }
    }
    if let Some((key, block)) = packer.take() {
        rows.put(key, &block)?;
    }
    let queue = QueueState::from_parts(state);
    for event in queue.truncation_events() {
        if let Some(job) = event.kind.job() {
            rows.put(truncation_key(job), event)?;
        }
    }
    let mut batch = rows.finish();
    batch.insert(
        OUTBOX_META_KEY,
        encode(queue.outbox_meta()).map_err(|e| e.to_string())?,
    );
    put_meta(
        &mut batch,
        last_applied,
        Some(membership),
        queue.next_job_id(),
        queue.next_lease_token(),
        queue.clock_ms(),
    )
    .map_err(|e| e.to_string())?;
    sm.apply_batch(batch)
        .map_err(|e| format!("cannot write the state machine tree: {e}"))?;
    Ok((queue, lines))
}

/// Rows written to a tree in batches of about [`REWRITE_BATCH_BYTES`] or
/// [`REWRITE_BATCH_ROWS`].
struct RowBatches<'a> {
    tree: &'a sled::Tree,
    batch: sled::Batch,
    bytes: usize,
    rows: usize,
    unflushed: usize,
}

impl<'a> RowBatches<'a> {
    fn new(tree: &'a sled::Tree) -> Self {
        RowBatches {
            tree,
            batch: sled::Batch::default(),
            bytes: 0,
            rows: 0,
            unflushed: 0,
        }
    }

    /// Removes `keys` at once.
    fn remove_all(&mut self, keys: Vec<sled::IVec>) -> Result<(), String> {
        let mut batch = sled::Batch::default();
        for key in keys {
            // A removal writes a node change, not just its key.
            self.unflushed += key.len() + 64;
            batch.remove(key);
        }
        self.tree
            .apply_batch(batch)
            .map_err(|e| format!("cannot write the state machine tree: {e}"))?;
        self.flush_if_due()
    }

    fn flush_if_due(&mut self) -> Result<(), String> {
        if self.unflushed >= REWRITE_FLUSH_BYTES {
            self.unflushed = 0;
            self.tree
                .flush()
                .map_err(|e| format!("cannot write the state machine tree: {e}"))?;
        }
        Ok(())
    }

    /// Stores a finished job: its full row under `archive/`, what the queue keeps of it under
    /// `finished/`.
    fn put_finished(&mut self, job: &Job, kept: &FinishedJob) -> Result<(), String> {
        self.put(archive_key(job.id), job)?;
        self.put(finished_key(job.id), kept)
    }

    /// Removes one row, in the current batch.
    fn remove(&mut self, key: Vec<u8>) {
        self.rows += 1;
        self.batch.remove(key);
    }

    fn put(&mut self, key: Vec<u8>, value: &impl Serialize) -> Result<(), String> {
        let value = encode(value).map_err(|e| e.to_string())?;
        self.bytes += key.len() + value.len();
        self.rows += 1;
        self.batch.insert(key, value);
        if self.bytes >= REWRITE_BATCH_BYTES || self.rows >= REWRITE_BATCH_ROWS {
            let full = std::mem::take(&mut self.batch);
            self.rows = 0;
            self.unflushed += std::mem::take(&mut self.bytes);
            self.tree
                .apply_batch(full)
                .map_err(|e| format!("cannot write the state machine tree: {e}"))?;
            self.flush_if_due()?;
        }
        Ok(())
    }

    /// The rows not yet written, to go with the last writes.
    fn finish(self) -> sled::Batch {
        self.batch
    }
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

/// Builds a snapshot from the view taken by `get_snapshot_builder`; runs concurrently with
/// later applies.
pub struct SnapshotBuilder {
    /// How long taking the view held up apply (the state machine task waits for it).
    view_ms: u64,
    /// The `sm` tree, for finished jobs' full rows.
    tree: sled::Tree,
    /// The stored lines; those of the view's jobs, as counted in the view, go in the snapshot.
    logs: LogReader,
    /// The view: the queue's rows as of `last_applied`, without log lines nor finished jobs'
    /// full rows.
    state: View,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    snapshots: SnapshotStore,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let build_err = |e: AnyError| snapshot_error(None, ErrorVerb::Write, e);
        let started = std::time::Instant::now();
        // A random part, so two snapshots at the same log id still get different ids.
        let nonce: u32 = rand::random();
        let snapshot_id = match self.last_applied {
            Some(log_id) => format!("{}-{}-{nonce:08x}", log_id.leader_id.term, log_id.index),
            None => format!("0-0-{nonce:08x}"),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        // Off the state machine task: applies go on meanwhile. The view's rows, then its jobs'
        // lines read from the tree straight into the file; stored durably before openraft
        // purges the log behind it, and not stored when a newer snapshot was installed meanwhile
        // (the current snapshot never goes backwards).
        let View {
            jobs: live,
            parts: mut state,
        } = std::mem::take(&mut self.state);
        let jobs = (live.len() + state.finished.len()) as u64;
        let tree = self.tree.clone();
        let logs = self.logs.clone();
        let events_reader = OutboxReader::new(self.tree.clone());
        let snapshots = self.snapshots.clone();
        let build_meta = meta.clone();
        let built = tokio::task::spawn_blocking(move || -> Result<_, String> {
            let finished = std::mem::take(&mut state.finished);
            let outbox = state.outbox_meta.clone();
            // The events the state value carries (the truncation events, or a held outbox).
            let in_state: BTreeSet<u64> = state.outbox.iter().map(|e| e.id).collect();
            let counts: BTreeMap<JobId, u64> = live
                .iter()
                .map(|job| (job.id, job.log_lines))
                .chain(finished.iter().map(|job| (job.id, job.logs.lines)))
                .collect();
            let part = snapshots.create_part()?;
            let write_err = |e: std::io::Error| format!("cannot write the snapshot: {e}");
            let mut writer = DataWriter::start(part, &state).map_err(write_err)?;
            drop(state);
            for job in live {
                writer.job(&job).map_err(write_err)?;
            }
            // A finished job's row as it finished, with the counters of the view. A row removed
            // by retention since the view is missing: the job goes as kept, and the entry that
            // removed it, which follows the snapshot, removes it again on the replica that
            // installs it.
            for kept in finished {
                match read_archived(&tree, &kept).map_err(|e| e.to_string())? {
                    Some(row) => writer.finished_row(&kept, &row).map_err(write_err)?,
                    None => writer.finished(&kept).map_err(write_err)?,
                }
            }
            // The view's pending events, from the tree (a held outbox is in the state already,
            // and so are the truncation events, as the view has them). Events released since
            // the view are missing: the release that follows the snapshot in the log, which the
            // installing replica applies next, releases them again, and its count is the one
            // the view had.
            if !outbox.held {
                let newest = outbox.newest_event_id();
                for event in events_reader.each_after(outbox.acked_up_to) {
                    let event = event.map_err(|e| e.to_string())?;
                    if event.id > newest {
                        break;
                    }
                    if !in_state.contains(&event.id) {
                        writer.event(&event).map_err(write_err)?;
                    }
                }
            }
            logs.each_as_of(&counts, |line| writer.line(line))
                .map_err(write_err)?;
            let (mut data, lines, bytes) = writer.finish().map_err(write_err)?;
            let stored = snapshots.commit(&mut data, &build_meta, true)?;
            Ok((data, lines, bytes, stored))
        })
        .await
        .map_err(|e| build_err(AnyError::error(e)))?;
        let (data, lines, bytes, stored) = built.map_err(|e| build_err(AnyError::error(e)))?;
        tracing::info!(
            last_log_index = meta.last_log_id.map(|id| id.index),
            bytes,
            jobs,
            log_lines = lines,
            view_ms = self.view_ms,
            build_ms = started.elapsed().as_millis() as u64,
            stored,
            "built snapshot"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(data),
        })
    }
}
