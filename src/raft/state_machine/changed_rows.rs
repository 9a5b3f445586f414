//! What one apply call changed, read from the queue under its lock and written to the `sm`
//! tree in one batch after it ([`ChangedRows`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{log_batch_key, sm_write_error, worker_key, OUTBOX_META_KEY};
use crate::queue::{
    EventKind, FinishedJob, Job, JobId, JobLogLine, OutboxEvent, OutboxMeta, QueueState, Worker,
    WorkerId,
};
use crate::raft::job_rows::{archive_key, finished_key, job_key};
use crate::raft::log_blocks::{encode_block, job_blocks, BlockPacker};
use crate::raft::outbox_rows::{block_key, decode_row, is_block_key, outbox_key, truncation_key};
use crate::raft::storage::encode;
use crate::raft::StorageError;

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
pub(super) struct ChangedRows {
    jobs: Vec<(JobId, JobRows)>,
    /// Jobs whose full row the queue holds until this batch is written.
    pub(super) archived: Vec<JobId>,
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
    /// The outbox is held (an earlier build's data): every event a single row.
    held_outbox: bool,
    log_batches: Vec<(JobId, u64, Option<u64>)>,
    pub(super) next_job_id: JobId,
    pub(super) next_lease_token: u64,
    pub(super) clock_ms: u64,
}

impl ChangedRows {
    pub(super) fn take(queue: &mut QueueState) -> Self {
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
            held_outbox: queue.outbox_meta().held,
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

    /// Whether a job became (or stayed, changed) queued, and the workers whose rows changed:
    /// what may have made work for a waiting long-poll ([`DispatchSignal`]).
    ///
    /// [`DispatchSignal`]: crate::raft::DispatchSignal
    pub(super) fn dispatch_wake(&self) -> (bool, Vec<WorkerId>) {
        let new_work = self.jobs.iter().any(|(_, rows)| {
            matches!(rows, JobRows::Live(job) if job.state == crate::queue::JobState::Queued)
        });
        (new_work, self.workers.iter().map(|(id, _)| *id).collect())
    }

    /// Adds the rows to `batch`; `tree` is read to find the lines of removed jobs.
    pub(super) fn write(
        self,
        batch: &mut sled::Batch,
        tree: &sled::Tree,
    ) -> Result<(), StorageError> {
        if let Some(up_to) = self.outbox_released {
            // Only the released rows, and perhaps one block the cut goes through, start at or
            // before the cut (earlier ones went with earlier releases), so this reads what it
            // removes.
            let first = outbox_key(0);
            let past_cut = outbox_key(up_to.saturating_add(1));
            for row in tree.range(first.as_slice()..past_cut.as_slice()) {
                let (key, value) = row.map_err(|e| sm_write_error(&e))?;
                if !is_block_key(&key) {
                    batch.remove(key);
                    continue;
                }
                let events = decode_row(&key, &value).map_err(|e| sm_write_error(&e))?;
                batch.remove(key);
                let kept: Vec<OutboxEvent> = events
                    .into_iter()
                    .filter(|event| event.id > up_to)
                    .collect();
                if let Some(first_kept) = kept.first() {
                    batch.insert(
                        block_key(first_kept.id),
                        encode(&kept).map_err(|e| sm_write_error(&e))?,
                    );
                }
            }
        }
        for id in self.outbox_removed {
            batch.remove(outbox_key(id));
        }
        // New events in one block. Single rows instead for a held outbox's (pruned one by
        // one) and for every event of an apply that writes a job's log truncation event (which
        // is rewritten in place later): so no single row falls inside a block's span, which
        // readers rely on to find the block holding an id.
        let singles = self.held_outbox
            || self
                .outbox_written
                .iter()
                .any(|event| matches!(event.kind, EventKind::LogTruncated { .. }));
        let (single, block): (Vec<OutboxEvent>, Vec<OutboxEvent>) = if singles {
            (self.outbox_written, Vec::new())
        } else {
            (Vec::new(), self.outbox_written)
        };
        for event in single {
            batch.insert(
                outbox_key(event.id),
                encode(&event).map_err(|e| sm_write_error(&e))?,
            );
        }
        if let Some(first) = block.first() {
            batch.insert(
                block_key(first.id),
                encode(&block).map_err(|e| sm_write_error(&e))?,
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
