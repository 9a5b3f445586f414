//! Raft glue: openraft's type config, the sled log store and state machine, and the gRPC
//! transport between replicas.
//!
//! A replica runs one [`Raft`] node. Committed entries carry a [`Proposal`]: the leader's clock
//! reading and a batch of queue commands (group commit puts many client commands in one entry).
//! The state machine applies them to the shared [`QueueState`](crate::queue::QueueState) and
//! persists what changed in sled together with the last applied log id, in one atomic batch.
//!
//! Durability: the log store `fdatasync`s its write-ahead log before telling openraft an append
//! or a vote is durable, so a majority's acknowledgment means the entry is on a majority's disks;
//! the snapshot is synced before the log behind it is purged. All of that goes through the narrow
//! [`disk`](crate::disk) interface, which the tests replace with a disk that can lose power.
//!
//! Not here: the leader-only loops and the public API (`crate::master`).

pub mod admission;
mod dispatch_signal;
pub mod election;
pub mod handover;
mod job_rows;
pub mod leader_watch;
pub mod lease;
mod legacy;
mod log_blocks;
mod log_reader;
mod log_store;
mod network;
mod outbox_rows;
mod peer_links;
pub mod pre_vote;
mod service;
#[cfg(test)]
mod sim_disk;
mod snapshot_data;
mod snapshot_file;
mod snapshot_store;
mod state_machine;
mod storage;
#[cfg(test)]
mod store_tests;
mod wal;
#[cfg(test)]
mod wal_tests;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::queue::{Command, CommandResult};

pub use dispatch_signal::{DispatchSignal, DispatchWatch};
pub use job_rows::{JobReadError, JobReader};
pub use log_reader::{LogReadError, LogReader, MAX_LOG_PAGE_SIZE};
pub use log_store::{LogStore, WalStats};
pub use network::{peer_request, PeerAnswers, PeerNetwork, PEER_RPC_TIMEOUT_FLOOR};
pub use outbox_rows::{AgedEvents, OutboxReadError, OutboxReader};
pub use service::{role_name, RaftGrpcService};
pub use snapshot_file::SnapshotFile;
pub use state_machine::{SharedQueue, StateMachine, StateReaders};
pub use storage::{
    adopt_restored_copy, open_storage, OpenedStorage, StorageIdentity, StorageOpenError,
};

pub type NodeId = u64;

/// What openraft knows of a member: where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaNode {
    /// The public API address (clients and workers), given out in leader redirects.
    pub api_addr: String,
    /// The replica-to-replica address (Raft traffic).
    pub peer_addr: String,
    /// The storage id of the data dir the cluster admitted as this member (drawn when that
    /// directory was created). A replica whose data dir has another one (its disk was wiped) is
    /// refused: it neither votes nor acknowledges appends (`admission.rs`). `None` only where the
    /// node is not a member (a leader address in a redirect).
    pub storage_id: Option<uuid::Uuid>,
}

impl fmt::Display for ReplicaNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "api={} peer={}", self.api_addr, self.peer_addr)
    }
}

/// The application data of one log entry: a batch of commands and the leader's clock reading
/// when it proposed them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub now_ms: u64,
    /// The leader's `ssisdb.max_outbox_events`, so every replica bounds the outbox alike.
    pub outbox_limit: u64,
    pub commands: Vec<Command>,
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "proposal(now_ms={}, commands={})",
            self.now_ms,
            self.commands.len()
        )
    }
}

/// One result per command of the entry, in order. Blank and membership entries have none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalOutcome {
    pub results: Vec<CommandResult>,
}

openraft::declare_raft_types!(
    /// openraft's type configuration for a scaleout replica.
    pub TypeConfig:
        D = Proposal,
        R = ProposalOutcome,
        NodeId = NodeId,
        Node = ReplicaNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = snapshot_file::SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, ReplicaNode>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, ReplicaNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, ReplicaNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
