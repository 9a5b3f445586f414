//! Reading tasks' log lines from the store: the model numbers the lines and the state machine
//! writes them to the `sm` tree (`log/<job><sequence>`); nothing holds them in memory. The API
//! (`job logs`) and the SSISDB shipper read them here.
//!
//! A read sees what the state machine has written: an apply call's rows are in the tree before
//! openraft counts the call applied, so a read after a read barrier (applied ≥ the commit index
//! it saw) finds every line committed before it began.

use std::collections::BTreeMap;

use super::state_machine::log_key;
use super::storage::decode;
use crate::queue::{JobId, JobLogLine};

/// The most log lines one [`LogReader::job_logs`] call returns.
pub const MAX_LOG_PAGE_SIZE: usize = 10_000;
const DEFAULT_LOG_PAGE_SIZE: usize = 1000;

/// Why a line could not be read: the store failed, or a row does not decode.
#[derive(Debug, thiserror::Error)]
pub enum LogReadError {
    #[error("reading job {job}'s log lines from the store failed: {detail}")]
    Store { job: JobId, detail: String },
    #[error("log line {sequence} of job {job} in the store does not decode: {detail}")]
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
        let from = log_key(job, after_sequence.saturating_add(1));
        let to = log_key(job, u64::MAX);
        let mut lines = Vec::new();
        for row in self.tree.range(from..=to).take(limit) {
            let (key, value) = row.map_err(|e| LogReadError::Store {
                job,
                detail: e.to_string(),
            })?;
            lines.push(decode_line(job, sequence_of(&key), &value)?);
        }
        Ok(lines)
    }

    /// One line, `None` when it is not stored (never written, or its job was removed).
    pub fn line(&self, job: JobId, sequence: u64) -> Result<Option<JobLogLine>, LogReadError> {
        let value = self
            .tree
            .get(log_key(job, sequence))
            .map_err(|e| LogReadError::Store {
                job,
                detail: e.to_string(),
            })?;
        value.map(|v| decode_line(job, sequence, &v)).transpose()
    }

    /// Passes the stored lines of the jobs in `counts` to `each`, as stored (encoded), each
    /// job's up to the count of lines it had: what the tree held when a snapshot's view counted
    /// them, read while later entries are applied. A line written since (a higher sequence, or
    /// a job the view does not have) is left out; a truncation notice rewritten since is taken
    /// as it is now, and lines whose job retention removed since are missing: the entries after
    /// the snapshot, which every replica that installs it applies next, rewrite that notice and
    /// remove that job again.
    pub(super) fn each_as_of(
        &self,
        counts: &BTreeMap<JobId, u64>,
        mut each: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        for (&job, &count) in counts.iter().filter(|(_, count)| **count > 0) {
            for row in self.tree.range(log_key(job, 1)..=log_key(job, count)) {
                let (_, value) = row.map_err(|e| {
                    std::io::Error::other(LogReadError::Store {
                        job,
                        detail: e.to_string(),
                    })
                })?;
                each(&value)?;
            }
        }
        Ok(())
    }
}

/// The sequence in a `log/<job><sequence>` key (its last 8 bytes).
fn sequence_of(key: &[u8]) -> u64 {
    key.last_chunk::<8>()
        .map_or(0, |bytes| u64::from_be_bytes(*bytes))
}

fn decode_line(job: JobId, sequence: u64, value: &[u8]) -> Result<JobLogLine, LogReadError> {
    decode::<JobLogLine>(value).map_err(|e| LogReadError::Corrupt {
        job,
        sequence,
        detail: e.to_string(),
    })
}
