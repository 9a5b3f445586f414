//! Where the `sm` tree keeps jobs, and reading them back for the API and the SSISDB shipper.
//!
//! A live job is one row, `job/<id>`, read into memory at open. A finished job is two: the
//! record the queue keeps of it, `finished/<id>` ([`FinishedJob`], read at open), and its full
//! row as it finished, `archive/<id>`, never read at open nor held in memory: a query reads it
//! here and takes the log counters from the kept record (late log lines still move them).
//!
//! A read of a finished job takes the queue's lock only to look the job up: a row the store has
//! not written yet is still in the queue ([`QueueState::archived`]), and the queue lets go of
//! it only once the row is written, so a job the queue knows is always found in one or the
//! other, unless retention removes it in between (then it reads as removed). One exception: while
//! a follower installs a snapshot, the tree is rewritten before the new queue replaces the old
//! one, so for those seconds a stale read there may find a finished job's row gone (read as
//! removed).

use super::legacy::decode_job;
use super::state_machine::SharedQueue;
use crate::queue::{FinishedJob, Job, JobId, QueueError, QueueState};
use std::sync::PoisonError;

pub(super) const JOB_PREFIX: &[u8] = b"job/";
pub(super) const FINISHED_PREFIX: &[u8] = b"finished/";
pub(super) const ARCHIVE_PREFIX: &[u8] = b"archive/";

/// `prefix` then `id`, big-endian (so keys sort by id).
pub(super) fn id_key(prefix: &[u8], id: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 8);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

pub(super) fn job_key(id: JobId) -> Vec<u8> {
    id_key(JOB_PREFIX, id)
}

pub(super) fn finished_key(id: JobId) -> Vec<u8> {
    id_key(FINISHED_PREFIX, id)
}

pub(super) fn archive_key(id: JobId) -> Vec<u8> {
    id_key(ARCHIVE_PREFIX, id)
}

/// Why a job could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JobReadError {
    /// The queue does not hold it: never submitted, or removed by retention.
    #[error(transparent)]
    Missing(QueueError),
    #[error("reading job {job} from the store failed: {detail}")]
    Store { job: JobId, detail: String },
    #[error("job {job}'s stored row is damaged: {detail}")]
    Corrupt { job: JobId, detail: String },
}

/// Reads jobs, live ones from the queue and finished ones from the store; cheap to clone.
#[derive(Clone)]
pub struct JobReader {
    tree: sled::Tree,
    queue: SharedQueue,
}

/// Where a job is, as the queue says.
enum Found {
    Whole(Box<Job>),
    Stored(FinishedJob),
    Missing(QueueError),
}

impl JobReader {
    pub(super) fn new(tree: sled::Tree, queue: SharedQueue) -> JobReader {
        JobReader { tree, queue }
    }

    /// Job `id` as it is now.
    pub fn job(&self, id: JobId) -> Result<Job, JobReadError> {
        let found = {
            let queue = self.queue.read().unwrap_or_else(PoisonError::into_inner);
            find(&queue, id)
        };
        match found {
            Found::Whole(job) => Ok(*job),
            Found::Missing(error) => Err(JobReadError::Missing(error)),
            // None: removed by retention since the lookup.
            Found::Stored(kept) => read_archived(&self.tree, &kept)?
                .ok_or(JobReadError::Missing(QueueError::JobRemoved(id))),
        }
    }

    /// The jobs among `ids` that exist, in the order given (a job removed meanwhile is left
    /// out).
    pub fn jobs(&self, ids: &[JobId]) -> Result<Vec<Job>, JobReadError> {
        let found: Vec<Found> = {
            let queue = self.queue.read().unwrap_or_else(PoisonError::into_inner);
            ids.iter().map(|&id| find(&queue, id)).collect()
        };
        let mut jobs = Vec::with_capacity(found.len());
        for found in found {
            match found {
                Found::Whole(job) => jobs.push(*job),
                Found::Stored(kept) => jobs.extend(read_archived(&self.tree, &kept)?),
                Found::Missing(_) => {}
            }
        }
        Ok(jobs)
    }
}

/// The stored row of a finished job with the kept record's log counters; `None` once removed.
pub(super) fn read_archived(
    tree: &sled::Tree,
    kept: &FinishedJob,
) -> Result<Option<Job>, JobReadError> {
    let Some(row) = tree
        .get(archive_key(kept.id))
        .map_err(|e| JobReadError::Store {
            job: kept.id,
            detail: e.to_string(),
        })?
    else {
        return Ok(None);
    };
    let mut job =
        decode_job(&row, &format!("job {}", kept.id)).map_err(|e| JobReadError::Corrupt {
            job: kept.id,
            detail: e.to_string(),
        })?;
    kept.counters_onto(&mut job);
    Ok(Some(job))
}

fn find(queue: &QueueState, id: JobId) -> Found {
    if let Some(job) = queue.job(id) {
        return Found::Whole(Box::new(job.clone()));
    }
    match queue.finished_job(id) {
        Some(kept) => Found::Stored(kept.clone()),
        None => Found::Missing(queue.missing_job(id)),
    }
}
