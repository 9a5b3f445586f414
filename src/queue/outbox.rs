//! The outbox: every change of a job, its task's attempts and the workers, and every worker log
//! line, as an event with a stable id, kept in the replicated state until it is shipped to
//! SSISDB (or ages out when no SSISDB is configured).
//!
//! Because the outbox is replicated, whichever replica leads ships it, and a new leader resumes
//! from the shipped cursor that was committed ([`Command::ReleaseOutbox`](super::Command));
//! SSISDB writes are idempotent by event id, so a batch shipped twice (the leader died between
//! the write and the cursor's commit) lands once.
//!
//! Event ids are `(log index, sequence within the entry)` packed into one `u64`
//! ([`event_id`]): the same on every replica, increasing in log order, and never reused.
//!
//! **The events live in the store, not in memory.** An SSISDB outage, or a cluster without
//! SSISDB (events are kept `ssisdb.retention_secs`), can leave millions of them. The queue keeps
//! only counters ([`OutboxMeta`]: the next id, the shipped cursor, how many are pending) and hands
//! each event to the store through its change set; the shipper reads them back from there.
//! Events leave as a prefix: a release names the last event it removes and, stamped by the leader
//! that read them, how many events that is (apply checks the cursor it was counted from). Since
//! cluster time never goes backwards in log order, the events older than a retention cut-off are
//! a prefix too.
//!
//! The outbox is bounded by the limit the leader stamps into each proposal
//! ([`ApplyContext::outbox_limit`](super::ApplyContext)): past it, log line events are not kept
//! (the lines themselves still are, for `job logs`); one [`EventKind::LogTruncated`] event per
//! running job counts them, rewritten in place while it waits (the queue holds those few in
//! memory). State events are never dropped.
//!
//! **Held outbox.** Builds before this one kept every event in memory and pruned by age event by
//! event. A replica whose data (or snapshot) comes from such a build holds its outbox in memory
//! and applies their `AckOutbox` and `PruneOutbox` exactly as they did, so that replicas of both
//! builds agree during an upgrade; the first `ReleaseOutbox` (proposed only by a leader of this
//! build) lets go of it, at the same index on every replica.

use serde::{Deserialize, Serialize};

use super::{AttemptOutcome, JobId, JobState, WorkerId};

/// Bits of an event id that hold the sequence within one log entry.
pub const EVENT_SEQUENCE_BITS: u32 = 20;

/// The id of the `sequence`-th event made by the entry at `log_index`.
pub fn event_id(log_index: u64, sequence: u64) -> u64 {
    (log_index << EVENT_SEQUENCE_BITS) | (sequence & ((1 << EVENT_SEQUENCE_BITS) - 1))
}

/// The log index and the sequence an event id was made from.
pub fn event_origin(id: u64) -> (u64, u64) {
    (
        id >> EVENT_SEQUENCE_BITS,
        id & ((1 << EVENT_SEQUENCE_BITS) - 1),
    )
}

/// One change, as SSISDB will record it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEvent {
    /// See [`event_id`].
    pub id: u64,
    /// The leader's clock when the change was committed.
    pub at_ms: u64,
    pub kind: EventKind,
}

/// What changed. Events name rows rather than copy them: the shipper writes the rows as they
/// are when it ships, which is at least as new as the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    JobSubmitted {
        job: JobId,
    },
    JobStateChanged {
        job: JobId,
        from: JobState,
        to: JobState,
    },
    AttemptStarted {
        job: JobId,
        attempt: u32,
        worker: WorkerId,
        lease_token: u64,
    },
    AttemptEnded {
        job: JobId,
        attempt: u32,
        worker: WorkerId,
        outcome: AttemptOutcome,
    },
    CancelRequested {
        job: JobId,
    },
    WorkerChanged {
        worker: WorkerId,
        change: WorkerChange,
    },
    /// A worker log line, by its place in the job's log.
    LogLine {
        job: JobId,
        sequence: u64,
    },
    /// Log line events of `job` not kept because the outbox was full; rewritten in place (same
    /// id) as more are dropped while it waits to be shipped.
    LogTruncated {
        job: JobId,
        dropped: u64,
    },
}

/// How a worker's registration changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerChange {
    Registered,
    Enabled,
    Disabled,
    Draining,
    Removed,
}

impl WorkerChange {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerChange::Registered => "registered",
            WorkerChange::Enabled => "enabled",
            WorkerChange::Disabled => "disabled",
            WorkerChange::Draining => "draining",
            WorkerChange::Removed => "removed",
        }
    }
}

impl EventKind {
    /// The job the event is about, if any.
    pub fn job(&self) -> Option<JobId> {
        match self {
            EventKind::JobSubmitted { job }
            | EventKind::JobStateChanged { job, .. }
            | EventKind::AttemptStarted { job, .. }
            | EventKind::AttemptEnded { job, .. }
            | EventKind::CancelRequested { job }
            | EventKind::LogLine { job, .. }
            | EventKind::LogTruncated { job, .. } => Some(*job),
            EventKind::WorkerChanged { .. } => None,
        }
    }

    /// The worker the event is about, if any.
    pub fn worker(&self) -> Option<WorkerId> {
        match self {
            EventKind::AttemptStarted { worker, .. }
            | EventKind::AttemptEnded { worker, .. }
            | EventKind::WorkerChanged { worker, .. } => Some(*worker),
            _ => None,
        }
    }

    /// Whether the event may be left out when the outbox is full: only worker log lines.
    pub fn is_droppable(&self) -> bool {
        matches!(self, EventKind::LogLine { .. })
    }
}

/// The outbox's counters, persisted with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxMeta {
    /// The log index of the last entry that made an event, and how many it made: the next
    /// event of that entry gets the next sequence.
    pub last_index: u64,
    pub next_sequence: u64,
    /// Every event up to this id is in SSISDB (or was pruned); 0 when none.
    pub acked_up_to: u64,
    /// Log line events never kept because the outbox was full, in all.
    pub dropped_log_events: u64,
    /// Events recorded and not yet released (shipped or pruned).
    pub pending: u64,
    /// Whether the queue holds every pending event in memory (see "Held outbox" above).
    pub held: bool,
}

impl OutboxMeta {
    /// The id of the newest event recorded (0 when none): a state's version for the rows
    /// shipped from it, since every change of a shipped row records an event.
    pub fn newest_event_id(&self) -> u64 {
        match self.next_sequence {
            0 => 0,
            n => event_id(self.last_index, n - 1),
        }
    }
}
