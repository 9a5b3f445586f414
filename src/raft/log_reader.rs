//! Reading tasks' log lines from the store: the model numbers the lines and the state machine
//! writes them to the `sm` tree in blocks (`log_blocks.rs`); nothing holds them in memory. The API
//! (`job logs`) and the SSISDB shipper read them here.
//!
//! A read sees what the state machine has written: an apply call's rows are in the tree before
//! openraft counts the call applied, so a read after a read barrier (applied ≥ the commit index
//! it saw) finds every line committed before it began.

use std::collections::BTreeMap;

use super::log_blocks::{block_key, decode_block};
use crate::queue::{JobId, JobLogLine};

/// The most log lines one [`LogReader::job_logs`] call returns.
pub const MAX_LOG_PAGE_SIZE: usize = 10_000;
const DEFAULT_LOG_PAGE_SIZE: usize = 1000;

/// Why a line could not be read: the store failed, or a row does not decode.
#[derive(Debug, thiserror::Error)]
pub enum LogReadError {
    #[error("reading job {job}'s log lines from the store failed: {detail}")]
    Store { job: JobId, detail: String },
    #[error("job {job}'s stored log lines (read from line {sequence}) are damaged: {detail}")]
    Corrupt {
        job: JobId,
        sequence: u64,
        detail: String,
    },
}

/// A handle on the stored log lines; cheap to clone (sled trees are shared).
#[derive(Clone)]
pub struct LogReader {
    tree: sled::Tree,
}

impl LogReader {
    pub(super) fn new(tree: sled::Tree) -> LogReader {
        LogReader { tree }
    }

    /// A job's lines with a sequence after `after_sequence`, in order. `limit` 0 means the
    /// default page; it is capped at [`MAX_LOG_PAGE_SIZE`]. The truncation notice (the last line
    /// of a capped job) is rewritten in place as more lines are dropped.
    pub fn job_logs(
        &self,
        job: JobId,
        after_sequence: u64,
        limit: usize,
    ) -> Result<Vec<JobLogLine>, LogReadError> {
        let limit = match limit {
            0 => DEFAULT_LOG_PAGE_SIZE,
            n => n.min(MAX_LOG_PAGE_SIZE),
        };
        let first = after_sequence.saturating_add(1);
        let start = match self.block_at(job, first)? {
            Some((key, _)) => key.to_vec(),
            None => block_key(job, first),
        };
        let mut lines = Vec::new();
        for row in self.tree.range(start..=block_key(job, u64::MAX)) {
            let (key, value) = row.map_err(|e| store_error(job, e))?;
            let block = decode_block(&key, &value).map_err(|detail| corrupt(job, first, detail))?;
            for line in block.into_iter().filter(|l| l.sequence >= first) {
                if lines.len() == limit {
                    return Ok(lines);
                }
                lines.push(line);
            }
        }
        Ok(lines)
    }

    /// One line, `None` when it is not stored (never written, or its job was removed).
    pub fn line(&self, job: JobId, sequence: u64) -> Result<Option<JobLogLine>, LogReadError> {
        let Some((key, value)) = self.block_at(job, sequence)? else {
            return Ok(None);
        };
        let block = decode_block(&key, &value).map_err(|detail| corrupt(job, sequence, detail))?;
        Ok(block.into_iter().find(|line| line.sequence == sequence))
    }

    /// The stored lines among `wanted` ((job, sequence) pairs, in any order), each block read
    /// once: one [`LogReader::line`] per line would decode a job's block once per line it holds.
    /// A line not stored (its job removed) is absent from the answer.
    pub fn lines(
        &self,
        wanted: &[(JobId, u64)],
    ) -> Result<BTreeMap<(JobId, u64), JobLogLine>, LogReadError> {
        let wanted: std::collections::BTreeSet<(JobId, u64)> = wanted.iter().copied().collect();
        let mut found = BTreeMap::new();
        let mut block: Vec<JobLogLine> = Vec::new();
        for &(job, sequence) in &wanted {
            let held = block
                .first()
                .zip(block.last())
                .is_some_and(|(first, last)| {
                    first.job_id == job && (first.sequence..=last.sequence).contains(&sequence)
                });
            if !held {
                block = match self.block_at(job, sequence)? {
                    Some((key, value)) => decode_block(&key, &value)
                        .map_err(|detail| corrupt(job, sequence, detail))?,
                    None => Vec::new(),
                };
            }
            if let Some(line) = block.iter().find(|line| line.sequence == sequence) {
                found.insert((job, sequence), line.clone());
            }
        }
        Ok(found)
    }

    /// The block that would hold `sequence` of `job`: the last of that job's blocks starting at
    /// or before it.
    fn block_at(
        &self,
        job: JobId,
        sequence: u64,
    ) -> Result<Option<(sled::IVec, sled::IVec)>, LogReadError> {
        self.tree
            .range(block_key(job, 0)..=block_key(job, sequence))
            .next_back()
            .transpose()
            .map_err(|e| store_error(job, e))
    }

    /// Passes the stored lines of the jobs in `counts` to `each`, each job's up to the count of
    /// lines it had: what the tree held when a snapshot's view counted them, read while later
    /// entries are applied. A line written since (a higher sequence, or a job the view does not
    /// have) is left out; a truncation notice rewritten since is taken as it is now, and lines
    /// whose job retention removed since are missing: the entries after the snapshot, which
    /// every replica that installs it applies next, rewrite that notice and remove that job
    /// again.
    pub(super) fn each_as_of(
        &self,
        counts: &BTreeMap<JobId, u64>,
        mut each: impl FnMut(&JobLogLine) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        for (&job, &count) in counts.iter().filter(|(_, count)| **count > 0) {
            for row in self.tree.range(block_key(job, 0)..=block_key(job, count)) {
                let (key, value) = row.map_err(|e| std::io::Error::other(store_error(job, e)))?;
                let block = decode_block(&key, &value)
                    .map_err(|detail| std::io::Error::other(corrupt(job, 0, detail)))?;
                for line in block.iter().filter(|line| line.sequence <= count) {
                    each(line)?;
                }
            }
        }
        Ok(())
    }
}

fn store_error(job: JobId, e: sled::Error) -> LogReadError {
    LogReadError::Store {
        job,
        detail: e.to_string(),
    }
}

fn corrupt(job: JobId, sequence: u64, detail: String) -> LogReadError {
    LogReadError::Corrupt {
        job,
        sequence,
        detail,
    }
}
