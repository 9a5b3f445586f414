//! The domain model: the replicated job queue, its workers and their leases, pure and
//! deterministic.
//!
//! Every replica holds a [`QueueState`] and changes it only by applying committed [`Command`]s in
//! log order. Apply never reads a clock, the network, the disk or a random source: whatever it
//! needs that varies (the leader's clock reading, the log index) arrives in the [`ApplyContext`],
//! so every replica that applies the same log ends in the same state. Ids (job ids, lease
//! tokens) are sequences assigned here, in apply.
//!
//! A job has one task (as in SSIS Scale Out), so the task id is the job id. A worker leases the
//! task (`attempt.rs`), picked by the dispatch rules (`dispatch.rs`) among the registered workers
//! (`worker.rs`); its output lines are stored per job (`logs.rs`).
//!
//! A rejected command (unknown job, invalid spec, stale lease, ...) is a normal, deterministic
//! result ([`QueueError`]) returned to the caller; it changes nothing.
//!
//! What this module deliberately does not do: persistence (the sled state machine in
//! `crate::raft` writes what [`QueueState::take_changes`] reports), protobuf (converted in
//! `crate::pb`), and anything leader-only such as proposal batching or the lease tick.

mod activity;
mod attempt;
mod command;
mod dispatch;
mod error;
mod finished;
mod job;
mod job_filter;
mod logs;
mod outbox;
mod state;
mod worker;

pub use activity::Activity;
pub use attempt::{
    Assignment, Attempt, AttemptOutcome, Lease, LeaseRef, LeaseStatus, MAX_ATTEMPT_ERROR_BYTES,
    MAX_LEASE_MS,
};
pub use command::{
    AcquireRequest, ApplyContext, Command, CommandOutput, CommandResult, TaskReport, WorkerSeen,
};
pub use error::QueueError;
pub use finished::{spec_digest, FinishedJob, SpecDigest, UNKNOWN_LAST_EVENT};
pub use job::{Job, JobId, JobSpec, JobState, MAX_RETRY_DELAY_SECS, MAX_TIMEOUT_SECS};
pub use job_filter::JobFilter;
pub use logs::{
    truncation_notice, JobLogLine, LogCounts, LogLevel, LogLine, MAX_LOG_BYTES_PER_JOB,
    MAX_LOG_LINES_PER_JOB, MAX_LOG_LINE_BYTES,
};
pub use outbox::{
    event_id, event_origin, EventKind, OutboxEvent, OutboxMeta, WorkerChange, EVENT_SEQUENCE_BITS,
};
pub use state::{Changes, JobPage, Parts, QueueState, Rebuild, View, MAX_PAGE_SIZE};
pub use worker::{Grant, Worker, WorkerId, WorkerInfo, MAX_WORKER_TASKS};
