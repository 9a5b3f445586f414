//! The domain model: the replicated job queue, pure and deterministic.
//!
//! Every replica holds a [`QueueState`] and changes it only by applying committed [`Command`]s in
//! log order. Apply never reads a clock, the network, the disk or a random source: whatever it
//! needs that varies (the leader's clock reading, the log index) arrives in the [`ApplyContext`],
//! so every replica that applies the same log ends in the same state. Ids (job ids) are sequences
//! assigned here, in apply.
//!
//! A rejected command (unknown job, invalid spec, a job that can no longer be cancelled) is a
//! normal, deterministic result ([`QueueError`]) returned to the caller; it changes nothing.
//!
//! What this module deliberately does not do: persistence (the sled state machine in
//! `crate::raft` writes what [`QueueState::take_changed`] reports), protobuf (converted in
//! `crate::pb`), and anything leader-only such as proposal batching.

mod command;
mod error;
mod job;
mod state;

pub use command::{ApplyContext, Command, CommandOutput, CommandResult};
pub use error::QueueError;
pub use job::{Job, JobId, JobSpec, JobState, MAX_TIMEOUT_SECS};
pub use state::{JobPage, QueueState, MAX_PAGE_SIZE};
