//! Commands that change the queue, and what applying one returns.
//!
//! Commands travel through the Raft log (bincode), so variants are only ever appended: an
//! existing variant's position is its encoding.

use serde::{Deserialize, Serialize};

use super::{
    Assignment, AttemptOutcome, JobId, JobSpec, JobState, LeaseRef, LeaseStatus, LogLine,
    QueueError, Worker, WorkerId, WorkerInfo,
};

/// What a committed log entry carries besides its commands: the leader's clock reading when it
/// proposed them, the leader's outbox limit, and the entry's log index. Apply uses these instead
/// of reading a clock or a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyContext {
    pub log_index: u64,
    pub now_ms: u64,
    /// Events the outbox keeps before log line events are left out (see `outbox.rs`).
    pub outbox_limit: u64,
}

impl ApplyContext {
    /// A context with no outbox limit (tests, and entries from before the limit existed).
    pub fn unbounded(log_index: u64, now_ms: u64) -> Self {
        ApplyContext {
            log_index,
            now_ms,
            outbox_limit: u64::MAX,
        }
    }
}

/// A change to the queue, as it travels through the Raft log.
// A command is built once, serialized into the log and applied: boxing the spec would save
// nothing worth an allocation per submit.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    SubmitJob {
        spec: JobSpec,
        idempotency_key: Option<String>,
    },
    /// A queued job is cancelled at once; a leased one gets `cancel_requested`, which its
    /// worker learns from its next heartbeat or renewal.
    CancelJob { job_id: JobId },
    /// Adds a worker (enabled when `auto_enable`) or refreshes a known one's description.
    RegisterWorker { info: WorkerInfo, auto_enable: bool },
    /// The agent heartbeat: records its load and compares the leases it runs with the master's.
    WorkerHeartbeat {
        worker: WorkerId,
        running: Vec<LeaseRef>,
        cpu_percent_x10: u32,
        free_memory_mb: u64,
    },
    /// Leases up to `free_slots` eligible tasks to the worker for `lease_ms`.
    AcquireTasks {
        worker: WorkerId,
        free_slots: u32,
        lease_ms: u64,
        cpu_percent_x10: u32,
        free_memory_mb: u64,
        max_cpu_percent_x10: u32,
        min_free_memory_mb: u64,
        /// Chosen by the worker per call and kept when it retries the call: a retry whose first
        /// try was granted (and whose answer was lost with a dying leader) gets the same leases
        /// back instead of new ones, so no task is leased to a worker that never heard of it.
        request_id: Option<String>,
    },
    /// The task heartbeat: extends each current lease to now + `lease_ms`.
    RenewLeases {
        worker: WorkerId,
        leases: Vec<LeaseRef>,
        lease_ms: u64,
    },
    AppendLogs {
        worker: WorkerId,
        lease: LeaseRef,
        lines: Vec<LogLine>,
    },
    /// A worker's verdict as earlier builds propose it: one on an attempt that already ended
    /// is refused (`LeaseLost`), and their leader records a late one by a second entry. Kept so
    /// that replicas of both builds apply their entries alike during an upgrade; this build
    /// proposes [`Command::ReportResult`].
    CompleteTask {
        worker: WorkerId,
        lease: LeaseRef,
        /// Succeeded, Failed or Cancelled; Expired is the master's to decide.
        outcome: AttemptOutcome,
        exit_code: Option<i32>,
        error: String,
    },
    /// Ends every lease whose expiry is at or before the entry's clock. Proposed by the leader's
    /// lease tick only.
    ExpireLeases,
    /// Pushes every live lease to at least now + `lease_ms` (a lease already running longer
    /// keeps its expiry, so applying it twice changes nothing). A new leader applies this
    /// before anything else, so a failover never expires running work.
    ExtendLeases { lease_ms: u64 },
    SetWorkerState {
        worker: WorkerId,
        enabled: Option<bool>,
        draining: Option<bool>,
    },
    /// Forgets an idle worker.
    RemoveWorker { worker: WorkerId },
    /// Earlier builds' ack: every outbox event up to this id is in SSISDB. Applied only while
    /// the outbox is held (see `outbox.rs`); a no-op otherwise.
    AckOutbox { up_to: u64 },
    /// Earlier builds' prune: drops the events older than this. Held outbox only, as above.
    PruneOutbox { before_ms: u64 },
    /// [`Command::AppendLogs`] with the batch's number: a worker numbers the log batches of one
    /// lease from 1, in the order it sends them, and a batch whose number was already applied
    /// for that lease is acknowledged without storing its lines again (a retry after a lost
    /// answer, or a spool re-send). 0: not numbered, always stored.
    AppendLogBatch {
        worker: WorkerId,
        lease: LeaseRef,
        batch: u64,
        lines: Vec<LogLine>,
    },
    /// Retention (the leader's duty, see `state/retention.rs`): removes finished jobs, with
    /// their attempts, log lines, log batch marks and idempotency key, that finished more than
    /// `retention_ms` before cluster time, and the oldest finished jobs beyond `max_finished`
    /// (0: no cap); with `until_shipped`, never a job an outbox event still names (SSISDB keeps
    /// the history). At most `limit` jobs per command, oldest finished first.
    RemoveFinishedJobs {
        retention_ms: u64,
        max_finished: u64,
        until_shipped: bool,
        limit: u32,
    },
    /// The outbox events after the shipped cursor `after` up to `up_to`, which are `events`
    /// events, are in SSISDB (or past retention, without SSISDB): they go and the cursor moves
    /// to `up_to`. The leader counts them where it read them (the store); a release counted from
    /// a cursor that has moved since (a retry, or a slower leader's) changes nothing.
    ReleaseOutbox { after: u64, up_to: u64, events: u64 },
    /// A worker's verdict on its attempt: applied when its lease is current; on an attempt
    /// that already ended, decided in this same entry (`CompletedBefore` for the verdict it
    /// ended with, sent again; `CompletedLate`, kept as a late log line, for another). Earlier
    /// builds cannot read it (they fall behind until upgraded, as with `ReleaseOutbox`).
    ReportResult {
        worker: WorkerId,
        lease: LeaseRef,
        /// Succeeded, Failed or Cancelled; Expired is the master's to decide.
        outcome: AttemptOutcome,
        exit_code: Option<i32>,
        error: String,
    },
    /// A worker's verdicts on the tasks it finished and its request for the next ones, as one
    /// command: each report is applied as [`Command::ReportResult`], in order, then the acquire
    /// as [`Command::AcquireTasks`], so the slots the reports free are free for it. One call and
    /// one command per task instead of two keeps a worker's slots busy. Refused (with the
    /// acquire's error) only when every part is.
    ReportAndAcquire {
        worker: WorkerId,
        reports: Vec<TaskReport>,
        acquire: AcquireRequest,
    },
    /// The workers the leader heard from without a log entry (heartbeats, and long-polls that
    /// had nothing to grant) since its last such command, each with the time and load of its
    /// last sighting: one command per interval for all of them, so an idle worker costs no
    /// entry of its own while every replica still shows when it was last heard from.
    WorkersSeen { seen: Vec<WorkerSeen> },
}

/// One worker's latest sighting by the leader (see [`Command::WorkersSeen`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSeen {
    pub worker: WorkerId,
    /// The leader's clock when it heard from the worker.
    pub at_ms: u64,
    pub cpu_percent_x10: u32,
    pub free_memory_mb: u64,
}

/// A worker's verdict on one attempt (see [`Command::ReportResult`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    pub lease: LeaseRef,
    /// Succeeded, Failed or Cancelled; Expired is the master's to decide.
    pub outcome: AttemptOutcome,
    pub exit_code: Option<i32>,
    pub error: String,
}

/// What a worker asks for when it acquires tasks (see [`Command::AcquireTasks`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireRequest {
    pub free_slots: u32,
    pub lease_ms: u64,
    pub cpu_percent_x10: u32,
    pub free_memory_mb: u64,
    pub max_cpu_percent_x10: u32,
    pub min_free_memory_mb: u64,
    pub request_id: Option<String>,
}

impl AcquireRequest {
    /// The same request as a [`Command::AcquireTasks`] of `worker`.
    pub fn into_command(self, worker: WorkerId) -> Command {
        Command::AcquireTasks {
            worker,
            free_slots: self.free_slots,
            lease_ms: self.lease_ms,
            cpu_percent_x10: self.cpu_percent_x10,
            free_memory_mb: self.free_memory_mb,
            max_cpu_percent_x10: self.max_cpu_percent_x10,
            min_free_memory_mb: self.min_free_memory_mb,
            request_id: self.request_id,
        }
    }
}

impl TaskReport {
    /// The same report as a [`Command::ReportResult`] of `worker`.
    pub fn into_command(self, worker: WorkerId) -> Command {
        Command::ReportResult {
            worker,
            lease: self.lease,
            outcome: self.outcome,
            exit_code: self.exit_code,
            error: self.error,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutput {
    Submitted {
        job_id: JobId,
        deduplicated: bool,
    },
    /// The job's state after the cancel: cancelled, or still leased with the cancel requested
    /// (the worker is told to stop).
    Cancelled {
        job_id: JobId,
        state: JobState,
    },
    WorkerRegistered {
        enabled: bool,
    },
    Heartbeat {
        enabled: bool,
        draining: bool,
        /// The worker's current leases whose job was cancelled: kill those tasks.
        cancel: Vec<LeaseRef>,
        /// Leases it reported that are not current: kill those tasks, their results will be
        /// refused.
        lost: Vec<LeaseRef>,
    },
    Acquired {
        tasks: Vec<Assignment>,
    },
    /// One status per lease asked about, in the same order.
    Renewed {
        leases: Vec<LeaseStatus>,
    },
    LogsAppended {
        /// The lease was not current: the lines were kept, flagged late.
        late: bool,
    },
    Completed {
        /// The job's state after the attempt ended (queued again when it will be retried).
        state: JobState,
    },
    /// The same completion arrived again (its answer was lost, e.g. with a dying leader): the
    /// attempt already ended with this outcome and exit code (for a finished job, whose record
    /// keeps no outcomes: its last attempt, and the job ended in this outcome's state). Nothing
    /// changed.
    CompletedBefore {
        /// The job's state now.
        state: JobState,
    },
    /// The completion came after its attempt had ended otherwise (the lease expired, or the
    /// job was cancelled): not applied, but kept in the job's log as a late warning line.
    CompletedLate,
    /// Jobs whose lease expired, in expiry order.
    Expired {
        jobs: Vec<JobId>,
    },
    /// How many leases were extended.
    Extended {
        leases: u64,
    },
    WorkerUpdated {
        worker: Box<Worker>,
    },
    WorkerRemoved,
    /// The shipped cursor after a release (or an earlier build's ack or prune), and how many
    /// events went.
    OutboxAcked {
        acked_up_to: u64,
        removed: u64,
    },
    /// How many finished jobs retention removed, and whether more were due than `limit`.
    JobsRemoved {
        removed: u64,
        more: bool,
    },
    /// Each report's result, in order (as [`Command::ReportResult`] answers it), and the
    /// acquire's: the tasks leased, or why none could be.
    ReportedAndAcquired {
        reports: Vec<CommandResult>,
        acquired: Result<Vec<Assignment>, QueueError>,
    },
    /// How many sightings were recorded (the others were of removed workers, or older than
    /// what the log already had).
    WorkersSeen {
        recorded: u32,
    },
}

pub type CommandResult = Result<CommandOutput, QueueError>;
