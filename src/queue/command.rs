//! Commands that change the queue, and what applying one returns.

use serde::{Deserialize, Serialize};

use super::{Job, JobId, JobSpec, QueueError};

/// What a committed log entry carries besides its commands: the leader's clock reading when it
/// proposed them, and the entry's log index. Apply uses these instead of reading a clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyContext {
    pub log_index: u64,
    pub now_ms: u64,
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
    CancelJob {
        job_id: JobId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutput {
    Submitted { job_id: JobId, deduplicated: bool },
    Cancelled { job: Box<Job> },
}

pub type CommandResult = Result<CommandOutput, QueueError>;
