//! Rewriting the `sm` tree from a snapshot, in bounded batches (at install, and at open when
//! the tree is older than the stored snapshot).

use serde::Serialize;

use super::{log_batch_key, put_meta, worker_key, OUTBOX_META_KEY};
use crate::queue::{FinishedJob, Job, QueueState, UNKNOWN_LAST_EVENT};
use crate::raft::job_rows::{archive_key, finished_key, job_key};
use crate::raft::log_blocks::BlockPacker;
use crate::raft::outbox_rows::{outbox_key, truncation_key};
use crate::raft::snapshot_data::{DataReader, Record};
use crate::raft::storage::encode;
use crate::raft::{LogId, StoredMembership};

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
pub(super) fn rewrite_from_snapshot(
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
pub(super) struct RowBatches<'a> {
    tree: &'a sled::Tree,
    batch: sled::Batch,
    bytes: usize,
    rows: usize,
    unflushed: usize,
}

impl<'a> RowBatches<'a> {
    pub(super) fn new(tree: &'a sled::Tree) -> Self {
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
    pub(super) fn put_finished(&mut self, job: &Job, kept: &FinishedJob) -> Result<(), String> {
        self.put(archive_key(job.id), job)?;
        self.put(finished_key(job.id), kept)
    }

    /// Removes one row, in the current batch.
    pub(super) fn remove(&mut self, key: Vec<u8>) {
        self.rows += 1;
        self.batch.remove(key);
    }

    pub(super) fn put(&mut self, key: Vec<u8>, value: &impl Serialize) -> Result<(), String> {
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
    pub(super) fn finish(self) -> sled::Batch {
        self.batch
    }
}
