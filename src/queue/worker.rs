//! Workers: the agents that pull tasks, as the master knows them.
//!
//! A worker identifies itself by a persistent UUID (SSIS's AgentId) and describes itself at
//! registration ([`WorkerInfo`]); the registry adds what the master decides (enabled, draining)
//! and what it last heard (heartbeat time, load) to form a [`Worker`]. Its `running` set mirrors
//! the leases it holds: the queue keeps the two in step, so capacity checks never scan jobs.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::job::validate_tags;
use super::{JobId, QueueError};

/// A worker agent's persistent id.
pub type WorkerId = Uuid;

/// The most tasks a worker may hold at once (SSIS's MaxTaskCount, default 10).
pub const MAX_WORKER_TASKS: u32 = 1000;
const MAX_TEXT_LEN: usize = 256;

/// What a worker says about itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: WorkerId,
    pub display_name: String,
    pub description: String,
    pub machine_name: String,
    /// Tags it offers; a job runs only on workers that have all of its tags. Sorted and
    /// deduplicated in apply, so matching is a binary search and replicas store the same list.
    pub tags: Vec<String>,
    /// How many tasks it runs at once, 1 to [`MAX_WORKER_TASKS`].
    pub max_tasks: u32,
    /// The agent's version, for display.
    pub version: String,
}

impl WorkerInfo {
    /// Checks every field; the message names the field and the limit.
    pub fn validate(&self) -> Result<(), QueueError> {
        let invalid = |msg: String| Err(QueueError::InvalidWorker(msg));
        if self.id.is_nil() {
            return invalid(
                "the worker id is the nil UUID: give the agent a generated id (it keeps one in \
                 its state directory)"
                    .into(),
            );
        }
        if self.max_tasks == 0 || self.max_tasks > MAX_WORKER_TASKS {
            return invalid(format!(
                "max_tasks is {}; it must be between 1 and {MAX_WORKER_TASKS}",
                self.max_tasks
            ));
        }
        for (field, value) in [
            ("display_name", &self.display_name),
            ("description", &self.description),
            ("machine_name", &self.machine_name),
            ("version", &self.version),
        ] {
            if value.len() > MAX_TEXT_LEN {
                return invalid(format!(
                    "{field} is {} bytes; at most {MAX_TEXT_LEN}",
                    value.len()
                ));
            }
        }
        validate_tags(&self.tags).map_err(QueueError::InvalidWorker)
    }

    /// The form apply stores: tags sorted and deduplicated.
    pub(super) fn normalized(mut self) -> Self {
        self.tags.sort();
        self.tags.dedup();
        self
    }

    pub(super) fn has_tag(&self, tag: &str) -> bool {
        self.tags.binary_search_by(|t| t.as_str().cmp(tag)).is_ok()
    }
}

/// A registered worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub info: WorkerInfo,
    /// An admin's approval; a disabled worker gets no tasks (SSIS keeps new workers disabled
    /// until enabled, unless approval is automatic).
    pub enabled: bool,
    /// Finishes what it runs and takes nothing new. Enabling clears it.
    pub draining: bool,
    pub registered_at_ms: u64,
    /// Leader clock of the last heartbeat, acquire, renew or registration.
    pub last_heartbeat_ms: u64,
    /// Last reported CPU load in tenths of a percent: integers keep apply deterministic.
    pub cpu_percent_x10: u32,
    pub free_memory_mb: u64,
    /// Jobs it holds a lease on.
    pub running: BTreeSet<JobId>,
    /// The last AcquireTasks that granted something: its request id and the leases granted.
    #[serde(default)]
    pub last_grant: Option<Grant>,
}

/// What one AcquireTasks call granted, so a retry of the same call gets the same answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub request_id: String,
    pub leases: Vec<crate::queue::LeaseRef>,
}

impl Worker {
    /// Whether it was heard from within `offline_after_ms` of `now_ms`. Display only: dispatch
    /// does not need it (an offline worker does not ask for tasks, and its leases expire).
    pub fn is_online(&self, now_ms: u64, offline_after_ms: u64) -> bool {
        now_ms.saturating_sub(self.last_heartbeat_ms) <= offline_after_ms
    }

    /// Free task slots: what MaxTaskCount still allows. Never negative, even if a
    /// re-registration lowered `max_tasks` below what it already runs.
    pub fn free_slots(&self) -> u32 {
        let running = u32::try_from(self.running.len()).unwrap_or(u32::MAX);
        self.info.max_tasks.saturating_sub(running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> WorkerInfo {
        WorkerInfo {
            id: Uuid::from_u128(7),
            display_name: "w".into(),
            description: String::new(),
            machine_name: "host".into(),
            tags: vec![],
            max_tasks: 10,
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn a_plain_worker_is_valid() {
        assert_eq!(info().validate(), Ok(()));
    }

    #[test]
    fn rejects_what_cannot_be_a_worker() {
        let cases: Vec<(WorkerInfo, &str)> = vec![
            (
                WorkerInfo {
                    id: Uuid::nil(),
                    ..info()
                },
                "nil UUID",
            ),
            (
                WorkerInfo {
                    max_tasks: 0,
                    ..info()
                },
                "max_tasks is 0",
            ),
            (
                WorkerInfo {
                    max_tasks: MAX_WORKER_TASKS + 1,
                    ..info()
                },
                "max_tasks is 1001",
            ),
            (
                WorkerInfo {
                    display_name: "x".repeat(257),
                    ..info()
                },
                "display_name",
            ),
            (
                WorkerInfo {
                    tags: vec!["a,b".into()],
                    ..info()
                },
                "tag",
            ),
        ];
        for (bad, needle) in cases {
            let err = bad.validate().expect_err(needle).to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    #[test]
    fn online_means_heard_from_recently() {
        let worker = Worker {
            info: info(),
            enabled: true,
            draining: false,
            registered_at_ms: 0,
            last_heartbeat_ms: 1_000,
            cpu_percent_x10: 0,
            free_memory_mb: 0,
            running: BTreeSet::new(),
            last_grant: None,
        };
        assert!(worker.is_online(1_500, 500));
        assert!(!worker.is_online(1_501, 500));
        assert!(
            worker.is_online(0, 0),
            "a clock behind the heartbeat is not offline"
        );
    }
}
