//! What the queue keeps in memory of a finished job: the few fields apply still decides on.
//!
//! A finished job's full row (its spec, attempts with their errors, timestamps) is read by people
//! and by the SSISDB shipper, never by dispatch. Once a job finishes, the state keeps only a
//! [`FinishedJob`] and hands the full row to the store (`crate::raft` writes it and reads it back
//! for queries), so resident memory does not grow with the spec and history of every job kept
//! for retention. What stays is what a later command can still ask of a finished job:
//! - its state, to refuse a cancel or a completion the same way on every replica;
//! - when it finished, for retention, and its idempotency key with a digest of its spec, so a
//!   resubmit with the same key is recognised (or refused as a conflict) exactly as before;
//! - which worker held which lease token, because a worker's spooled log lines are accepted,
//!   flagged late, after the job ended, and a completion that arrives again for its last
//!   attempt is recognised by the job's state (`state/leases.rs`);
//! - its log counters, which those late lines still move. The stored row's counters are the
//!   ones of the moment it finished: a reader takes these instead ([`FinishedJob::counters_onto`]);
//! - the id of the newest outbox event that may name it, so retention can wait until SSISDB has
//!   its whole story without the queue holding the outbox.

use ring::digest::{digest, SHA256};
use serde::{Deserialize, Serialize};

use super::logs::LogCounts;
use super::{Job, JobId, JobSpec, JobState, WorkerId};

/// A finished job as the state keeps it (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishedJob {
    pub id: JobId,
    pub state: JobState,
    /// Cluster time of the transition that finished it (the job's `updated_at_ms`, which nothing
    /// changes afterwards).
    pub finished_at_ms: u64,
    pub idempotency_key: Option<String>,
    /// [`spec_digest`] of its spec, kept only with an idempotency key (the only use).
    pub spec_digest: Option<SpecDigest>,
    /// (lease token, worker) of every attempt, oldest first.
    pub attempts: Vec<(u64, WorkerId)>,
    /// Current; the stored row holds those of the moment it finished.
    pub logs: LogCounts,
    /// No outbox event after this id names the job: the newest event when it finished, or a
    /// later one about it (a late log line). [`UNKNOWN_LAST_EVENT`] for a job that finished
    /// under an earlier build, until the held outbox is let go (`outbox.rs`).
    pub last_event: u64,
}

/// [`FinishedJob::last_event`] of a job kept by an earlier build, which did not record it.
pub const UNKNOWN_LAST_EVENT: u64 = u64::MAX;

/// The first 16 bytes of the SHA-256 of a spec's encoding: equal specs, equal digests, on every
/// replica and every build (a hash of the standard library's may change between releases).
pub type SpecDigest = [u8; 16];

/// The digest of `spec`. bincode encodes a struct field by field and the spec's maps are
/// `BTreeMap`s (encoded in key order), so equal specs encode to equal bytes.
pub fn spec_digest(spec: &JobSpec) -> SpecDigest {
    // Encoding a plain struct into memory cannot fail; an empty encoding would still be
    // deterministic.
    let encoded = bincode::serialize(spec).unwrap_or_default();
    let hash = digest(&SHA256, &encoded);
    let mut out = [0; 16];
    out.copy_from_slice(&hash.as_ref()[..16]);
    out
}

impl FinishedJob {
    /// What the state keeps of `job`, which has finished, no outbox event after `last_event`
    /// naming it.
    pub fn of(job: &Job, last_event: u64) -> FinishedJob {
        debug_assert!(job.state.is_terminal(), "job {} has not finished", job.id);
        FinishedJob {
            id: job.id,
            state: job.state,
            finished_at_ms: job.updated_at_ms,
            idempotency_key: job.idempotency_key.clone(),
            spec_digest: job.idempotency_key.as_ref().map(|_| spec_digest(&job.spec)),
            attempts: job.attempts.iter().map(|a| (a.token, a.worker)).collect(),
            logs: job.log_counts(),
            last_event,
        }
    }

    /// The number of the attempt that was granted `token` to `worker`, if any ever was.
    pub fn attempt_with(&self, worker: WorkerId, token: u64) -> Option<u32> {
        let index = self
            .attempts
            .iter()
            .position(|&(t, w)| t == token && w == worker)?;
        Some(u32::try_from(index + 1).unwrap_or(u32::MAX))
    }

    /// Whether `spec` is the one this job was submitted with (by digest).
    pub fn has_spec(&self, spec: &JobSpec) -> bool {
        self.spec_digest == Some(spec_digest(spec))
    }

    /// Puts this job's current log counters onto its stored row (which holds those of the moment
    /// it finished).
    pub fn counters_onto(&self, job: &mut Job) {
        job.set_log_counts(self.logs);
    }

    /// Whether `row` is this job's stored row: the same job, as it finished.
    #[cfg(test)]
    pub fn describes(&self, row: &Job) -> bool {
        let mut row_now = row.clone();
        self.counters_onto(&mut row_now);
        FinishedJob::of(&row_now, self.last_event) == *self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[&str]) -> JobSpec {
        JobSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            max_attempts: 1,
            ..JobSpec::default()
        }
    }

    #[test]
    fn equal_specs_have_equal_digests_and_different_ones_do_not() {
        assert_eq!(
            spec_digest(&spec(&["a", "b"])),
            spec_digest(&spec(&["a", "b"]))
        );
        assert_ne!(
            spec_digest(&spec(&["a", "b"])),
            spec_digest(&spec(&["a", "c"]))
        );
        assert_ne!(spec_digest(&spec(&["ab"])), spec_digest(&spec(&["a", "b"])));
    }

    #[test]
    fn the_digest_is_the_same_on_every_build() {
        // A changed digest would make a replica of a new build refuse, as a conflict, a
        // resubmit that replicas of the previous build deduplicate.
        let digest = spec_digest(&spec(&["echo", "hi"]));
        assert_eq!(
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            FROZEN_DIGEST
        );
    }

    const FROZEN_DIGEST: &str = "1c3ccd6bd026161a10b1a7414995eb21";
}
