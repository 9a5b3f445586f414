//! Encodings written by earlier builds that this one still reads: bincode has no optional
//! fields, so a record that gained a field keeps its old shape here, decoded and then upgraded.
//!
//! - [`JobV1`]: a job before `log_bytes` (the per-job byte cap), in job rows of the `sm` tree
//!   and in snapshots of formats 3 to 5;
//! - [`PartsV5`]: the snapshot state of formats 4 and 5 (jobs without `log_bytes`);
//! - [`PartsV6`]: the snapshot state of format 6 (every job whole, finished ones too).
//!
//! A job from before the byte cap starts counting its bytes at 0: lines it already had are not
//! counted against the cap.

use serde::Deserialize;

use super::storage::{decode, decode_loaded, LoadError};
use crate::queue::{
    Attempt, Job, JobId, JobLogLine, JobSpec, JobState, Lease, OutboxEvent, OutboxMeta, Parts,
    Worker,
};

/// A job as builds before the per-job log byte cap stored it.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct JobV1 {
    id: JobId,
    spec: JobSpec,
    state: JobState,
    idempotency_key: Option<String>,
    created_at_ms: u64,
    updated_at_ms: u64,
    created_index: u64,
    attempts: Vec<Attempt>,
    lease: Option<Lease>,
    cancel_requested: bool,
    ready_at_ms: u64,
    log_lines: u64,
    log_lines_dropped: u64,
}

impl From<JobV1> for Job {
    fn from(old: JobV1) -> Job {
        Job {
            id: old.id,
            spec: old.spec,
            state: old.state,
            idempotency_key: old.idempotency_key,
            created_at_ms: old.created_at_ms,
            updated_at_ms: old.updated_at_ms,
            created_index: old.created_index,
            attempts: old.attempts,
            lease: old.lease,
            cancel_requested: old.cancel_requested,
            ready_at_ms: old.ready_at_ms,
            log_lines: old.log_lines,
            log_lines_dropped: old.log_lines_dropped,
            log_bytes: 0,
        }
    }
}

/// A job row as stored now, or as an earlier build stored it. A row of the current shape never
/// decodes as the old one is tried first: the old shape is a prefix of the new, so only the
/// new decode of an old row runs out of bytes.
pub(super) fn decode_job(bytes: &[u8], what: &str) -> Result<Job, LoadError> {
    match decode::<Job>(bytes) {
        Ok(job) => Ok(job),
        Err(_) => decode_loaded::<JobV1>(bytes, what).map(Job::from),
    }
}

/// The snapshot state of formats 4 to 6: every job inside it, as a job of its time (`J`).
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct LegacyParts<J> {
    pub(super) jobs: Vec<J>,
    pub(super) workers: Vec<Worker>,
    pub(super) log_lines: Vec<JobLogLine>,
    pub(super) next_job_id: JobId,
    pub(super) next_lease_token: u64,
    pub(super) outbox: Vec<OutboxEvent>,
    pub(super) outbox_meta: OutboxMeta,
    pub(super) clock_ms: u64,
    pub(super) log_batches: Vec<(JobId, u64, u64)>,
}

/// The snapshot state of formats 4 and 5 (jobs without `log_bytes`).
pub(super) type PartsV5 = LegacyParts<JobV1>;
/// The snapshot state of format 6 (every job whole, finished ones too).
pub(super) type PartsV6 = LegacyParts<Job>;

impl<J: Into<Job>> From<LegacyParts<J>> for Parts {
    fn from(old: LegacyParts<J>) -> Parts {
        Parts {
            jobs: old.jobs.into_iter().map(Into::into).collect(),
            finished: Vec::new(),
            workers: old.workers,
            log_lines: old.log_lines,
            next_job_id: old.next_job_id,
            next_lease_token: old.next_lease_token,
            outbox: old.outbox,
            outbox_meta: old.outbox_meta,
            clock_ms: old.clock_ms,
            log_batches: old.log_batches,
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::raft::storage::encode;

    pub(in crate::raft) fn old_job(id: JobId) -> JobV1 {
        JobV1 {
            id,
            spec: JobSpec {
                argv: vec!["echo".into()],
                max_attempts: 1,
                ..JobSpec::default()
            },
            state: JobState::Succeeded,
            idempotency_key: Some("k".into()),
            created_at_ms: 1,
            updated_at_ms: 2,
            created_index: 3,
            attempts: Vec::new(),
            lease: None,
            cancel_requested: false,
            ready_at_ms: 1,
            log_lines: 12,
            log_lines_dropped: 0,
        }
    }

    #[test]
    fn an_old_job_row_reads_with_no_bytes_counted_and_a_new_one_as_written() {
        let old = decode_job(&encode(&old_job(7)).unwrap(), "job 7").unwrap();
        assert_eq!((old.id, old.log_lines, old.log_bytes), (7, 12, 0));
        let new = Job {
            log_bytes: 4096,
            ..old
        };
        assert_eq!(decode_job(&encode(&new).unwrap(), "job 7").unwrap(), new);
        assert!(decode_job(&[1, 2, 3], "job 7").is_err());
    }
}
