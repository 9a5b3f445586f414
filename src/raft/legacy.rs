//! Encodings written by earlier builds that this one still reads: bincode has no optional
//! fields, so a record that gained a field keeps its old shape here, decoded and then upgraded.
//!
//! - [`JobV1`]: a job before `log_bytes` (the per-job byte cap), in job rows of the `sm` tree
//!   and in snapshots of formats 3 to 5;
//! - [`PartsV5`]: the snapshot state of formats 4 and 5 (jobs without `log_bytes`);
//! - [`PartsV6`]: the snapshot state of format 6 (every job whole, finished ones too);
//! - [`OutboxMetaV1`]: the outbox counters before the outbox left memory (no `pending`, no
//!   `held`), in the `sm` tree and in snapshots of formats 3 to 7; such an outbox is held;
//! - [`FinishedJobV1`]: the record of a finished job before `last_event`, in `finished/` rows
//!   and in snapshots of format 7; its last event is unknown until the held outbox is let go;
//! - [`PartsV7`]: the snapshot state of format 7.
//!
//! A job from before the byte cap starts counting its bytes at 0: lines it already had are not
//! counted against the cap.

use serde::Deserialize;

use super::storage::{decode, decode_loaded, LoadError};
use crate::queue::{
    Attempt, FinishedJob, Job, JobId, JobLogLine, JobSpec, JobState, Lease, LogCounts, OutboxEvent,
    OutboxMeta, Parts, SpecDigest, Worker, WorkerId, UNKNOWN_LAST_EVENT,
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
    pub(super) outbox_meta: OutboxMetaV1,
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
            outbox_meta: old.outbox_meta.holding(&old.outbox),
            outbox: old.outbox,
            clock_ms: old.clock_ms,
            log_batches: old.log_batches,
        }
    }
}

/// The snapshot state of format 7: finished jobs and the outbox counters of their time (the
/// finished jobs always empty: they follow as records).
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct PartsV7 {
    pub(super) jobs: Vec<Job>,
    pub(super) finished: Vec<FinishedJobV1>,
    pub(super) workers: Vec<Worker>,
    pub(super) log_lines: Vec<JobLogLine>,
    pub(super) next_job_id: JobId,
    pub(super) next_lease_token: u64,
    pub(super) outbox: Vec<OutboxEvent>,
    pub(super) outbox_meta: OutboxMetaV1,
    pub(super) clock_ms: u64,
    pub(super) log_batches: Vec<(JobId, u64, u64)>,
}

impl From<PartsV7> for Parts {
    fn from(old: PartsV7) -> Parts {
        Parts {
            jobs: old.jobs,
            finished: old.finished.into_iter().map(Into::into).collect(),
            workers: old.workers,
            log_lines: old.log_lines,
            next_job_id: old.next_job_id,
            next_lease_token: old.next_lease_token,
            outbox_meta: old.outbox_meta.holding(&old.outbox),
            outbox: old.outbox,
            clock_ms: old.clock_ms,
            log_batches: old.log_batches,
        }
    }
}

/// The outbox counters of builds that held the outbox in memory.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct OutboxMetaV1 {
    pub(super) last_index: u64,
    pub(super) next_sequence: u64,
    pub(super) acked_up_to: u64,
    pub(super) dropped_log_events: u64,
}

impl OutboxMetaV1 {
    /// These counters, for an outbox the queue holds: `events`, all of it.
    pub(super) fn holding(self, events: &[OutboxEvent]) -> OutboxMeta {
        OutboxMeta {
            last_index: self.last_index,
            next_sequence: self.next_sequence,
            acked_up_to: self.acked_up_to,
            dropped_log_events: self.dropped_log_events,
            pending: events.len() as u64,
            held: true,
        }
    }
}

/// The outbox counters as stored now, or as an earlier build stored them (then held, with
/// `pending` 0 for the caller to count). The old shape is a prefix of the new, as for jobs.
pub(super) fn decode_outbox_meta(bytes: &[u8]) -> Result<OutboxMeta, LoadError> {
    match decode::<OutboxMeta>(bytes) {
        Ok(meta) => Ok(meta),
        // Counted again once its rows are loaded.
        Err(_) => {
            decode_loaded::<OutboxMetaV1>(bytes, "the outbox counters").map(|old| old.holding(&[]))
        }
    }
}

/// What builds before `last_event` kept of a finished job.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct FinishedJobV1 {
    id: JobId,
    state: JobState,
    finished_at_ms: u64,
    idempotency_key: Option<String>,
    spec_digest: Option<SpecDigest>,
    attempts: Vec<(u64, WorkerId)>,
    logs: LogCounts,
}

#[cfg(test)]
impl FinishedJobV1 {
    /// What an earlier build stored for `kept` (everything but `last_event`).
    pub(super) fn of(kept: &FinishedJob) -> FinishedJobV1 {
        FinishedJobV1 {
            id: kept.id,
            state: kept.state,
            finished_at_ms: kept.finished_at_ms,
            idempotency_key: kept.idempotency_key.clone(),
            spec_digest: kept.spec_digest,
            attempts: kept.attempts.clone(),
            logs: kept.logs,
        }
    }
}

impl From<FinishedJobV1> for FinishedJob {
    fn from(old: FinishedJobV1) -> FinishedJob {
        FinishedJob {
            id: old.id,
            state: old.state,
            finished_at_ms: old.finished_at_ms,
            idempotency_key: old.idempotency_key,
            spec_digest: old.spec_digest,
            attempts: old.attempts,
            logs: old.logs,
            last_event: UNKNOWN_LAST_EVENT,
        }
    }
}

/// A finished job's kept record as stored now, or as an earlier build stored it.
pub(super) fn decode_finished(bytes: &[u8], what: &str) -> Result<FinishedJob, LoadError> {
    match decode::<FinishedJob>(bytes) {
        Ok(kept) => Ok(kept),
        Err(_) => decode_loaded::<FinishedJobV1>(bytes, what).map(Into::into),
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
    fn old_outbox_counters_and_finished_records_read_as_held_and_unknown() {
        let old_meta = OutboxMetaV1 {
            last_index: 7,
            next_sequence: 2,
            acked_up_to: 3,
            dropped_log_events: 1,
        };
        let meta = decode_outbox_meta(&encode(&old_meta).unwrap()).unwrap();
        assert_eq!((meta.acked_up_to, meta.pending, meta.held), (3, 0, true));
        let new_meta = OutboxMeta {
            pending: 4,
            held: false,
            ..meta
        };
        assert_eq!(
            decode_outbox_meta(&encode(&new_meta).unwrap()).unwrap(),
            new_meta
        );

        let kept = FinishedJob::of(&Job::from(old_job(7)), 42);
        let old_kept = FinishedJobV1::of(&kept);
        let read = decode_finished(&encode(&old_kept).unwrap(), "finished job 7").unwrap();
        assert_eq!(
            read,
            FinishedJob {
                last_event: UNKNOWN_LAST_EVENT,
                ..kept.clone()
            }
        );
        assert_eq!(
            decode_finished(&encode(&kept).unwrap(), "finished job 7").unwrap(),
            kept
        );
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
