//! The replica's settings tables below the top level: `[raft]`, `[proposals]`, `[storage]`,
//! `[retention]`, `[api]`, `[workers]` (`[ssisdb]` is in `ssisdb.rs`), with their defaults.

use super::*;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[raft]`: timing and log compaction, passed to openraft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftSettings {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many logs since the last one.
    pub snapshot_every_logs: u64,
    /// Logs kept behind a snapshot for lagging followers.
    pub keep_logs_after_snapshot: u64,
    pub install_snapshot_timeout_ms: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 250,
            election_timeout_max_ms: 500,
            snapshot_every_logs: 10_000,
            keep_logs_after_snapshot: 1_000,
            install_snapshot_timeout_ms: 10_000,
        }
    }
}

impl RaftSettings {
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }
    pub fn election_timeout_min(&self) -> Duration {
        Duration::from_millis(self.election_timeout_min_ms)
    }
    pub fn election_timeout_max(&self) -> Duration {
        Duration::from_millis(self.election_timeout_max_ms)
    }
    pub fn install_snapshot_timeout(&self) -> Duration {
        Duration::from_millis(self.install_snapshot_timeout_ms)
    }
}

/// `[proposals]`: group commit of client commands into Raft entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProposalSettings {
    /// Most commands in one Raft entry.
    pub max_batch: usize,
    /// How long a batch waits for more commands, in microseconds.
    pub linger_us: u64,
    /// Batches proposed concurrently.
    pub max_in_flight: usize,
}

impl Default for ProposalSettings {
    fn default() -> Self {
        ProposalSettings {
            max_batch: 512,
            linger_us: 500,
            max_in_flight: 4,
        }
    }
}

impl ProposalSettings {
    pub fn linger(&self) -> Duration {
        Duration::from_micros(self.linger_us)
    }
}

/// `[storage]`: sled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// sled page cache, MiB.
    pub cache_capacity_mb: u64,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            cache_capacity_mb: 64,
        }
    }
}

impl StorageSettings {
    pub fn cache_capacity_bytes(&self) -> u64 {
        self.cache_capacity_mb << 20
    }
}

/// `[retention]`: how long finished jobs stay in the replicated state (see
/// `queue/state/retention.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// A finished job is removed this long after it finished; 0: never by age.
    pub finished_job_secs: u64,
    /// And the oldest finished jobs beyond this many are removed; 0: no cap.
    pub max_finished_jobs: u64,
    /// How often the leader looks for finished jobs to remove.
    pub sweep_interval_ms: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            finished_job_secs: 86_400,
            max_finished_jobs: 100_000,
            sweep_interval_ms: 10_000,
        }
    }
}

impl RetentionSettings {
    /// The retention as the command carries it: u64::MAX (never) when off.
    pub fn retention_ms(&self) -> u64 {
        match self.finished_job_secs {
            0 => u64::MAX,
            secs => secs.saturating_mul(1000),
        }
    }
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.sweep_interval_ms)
    }
}

/// `[api]`: gRPC limits, for both the API and the peer service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    pub max_message_bytes: usize,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            max_message_bytes: 4 * 1024 * 1024,
        }
    }
}

/// How new workers are admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerApproval {
    /// As in SSIS: a new worker stays disabled until an admin enables it.
    Manual,
    /// A new worker is enabled when it registers.
    Auto,
}

/// `[workers]`: leases, offline detection and admission of worker agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// How long a task's lease lasts without a renewal (SSIS LeaseInterval, 60 s there).
    pub lease_interval_ms: u64,
    /// A worker with no heartbeat for this long shows offline.
    pub offline_after_ms: u64,
    /// `manual` (SSIS's behaviour) or `auto`.
    pub approval: WorkerApproval,
    /// The longest an AcquireTasks long-poll waits for work.
    pub max_acquire_wait_ms: u64,
    /// How often the leader checks for expired leases.
    pub expiry_check_interval_ms: u64,
    /// How far a new leader's wall clock may be ahead of the cluster's time (`master::clock`).
    pub max_clock_jump_ms: u64,
    /// Test only: a file whose signed ms are added to the wall clock (clock-step faults).
    pub test_clock_offset_file: Option<PathBuf>,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            lease_interval_ms: 30_000,
            offline_after_ms: 60_000,
            approval: WorkerApproval::Manual,
            max_acquire_wait_ms: 10_000,
            expiry_check_interval_ms: 500,
            max_clock_jump_ms: 86_400_000,
            test_clock_offset_file: None,
        }
    }
}
