//! A job: what to run (the spec), and where it stands (the state, its attempts and its lease).
//!
//! A job has exactly one task (SSIS Scale Out's model: one execution, one task), so the task id
//! is the job id and the task's history is the job's [`Attempt`] list.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Attempt, Lease, QueueError, WorkerId};

/// Assigned in apply, increasing from 1, never reused (like SSIS's execution_id).
pub type JobId = u64;

/// The longest run time a job may ask for: seven days.
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
const MAX_ATTEMPTS: u32 = 100;
const MAX_NAME_LEN: usize = 256;
const MAX_ARGV_LEN: usize = 1024;
const MAX_ARG_BYTES: usize = 32 * 1024;
const MAX_MAP_ENTRIES: usize = 256;
const MAX_TAGS: usize = 64;
const MAX_KEY_LEN: usize = 256;
/// The longest retry delay a job may ask for: one day. Longer waits are better expressed by
/// submitting later.
pub const MAX_RETRY_DELAY_SECS: u64 = 24 * 3600;

/// What to run and where it may run. Validated by [`JobSpec::validate`] at the API edge and
/// again in apply, so no replica ever stores an invalid spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The command and its arguments; may be empty only when `package` is set.
    pub argv: Vec<String>,
    pub name: String,
    pub env: BTreeMap<String, String>,
    /// SSIS package parameters.
    pub params: BTreeMap<String, String>,
    /// Path of an SSIS package, run through the worker's executor template.
    pub package: Option<String>,
    /// How many times the task may run (SSIS retry_count + 1), 1 to 100.
    pub max_attempts: u32,
    /// Worker agent ids allowed to run the job; empty means any worker.
    pub allowed_workers: Vec<Uuid>,
    /// Tags a worker must all have.
    pub tags: Vec<String>,
    /// Run time limit; `None` means no limit.
    pub timeout_secs: Option<u64>,
    /// Higher runs first.
    pub priority: i32,
    /// How long a failed or expired attempt waits before the task is eligible again; `None`
    /// requeues it at once.
    pub retry_delay_secs: Option<u64>,
}

impl JobSpec {
    /// Parses a worker id as the API receives it, with an error that says what is expected.
    pub fn parse_worker_id(text: &str) -> Result<Uuid, QueueError> {
        Uuid::parse_str(text.trim()).map_err(|_| {
            QueueError::InvalidSpec(format!(
                "worker id {text:?} is not a worker agent id: expected a UUID such as \
                 5f0c6f1e-3c2a-4b8e-9d7a-0e2f4b6c8a10 (see `scaleout workers list`)"
            ))
        })
    }

    /// Checks every field; the message names the field and the limit.
    pub fn validate(&self) -> Result<(), QueueError> {
        let invalid = |msg: String| Err(QueueError::InvalidSpec(msg));
        if self.argv.is_empty() && self.package.is_none() {
            return invalid("argv is empty: give a command to run, or a package".into());
        }
        if let Some(first) = self.argv.first() {
            if first.trim().is_empty() {
                return invalid("argv[0], the program to run, is empty".into());
            }
        }
        if self.argv.len() > MAX_ARGV_LEN {
            return invalid(format!(
                "argv has {} items; at most {MAX_ARGV_LEN}",
                self.argv.len()
            ));
        }
        if let Some(arg) = self.argv.iter().find(|a| a.len() > MAX_ARG_BYTES) {
            return invalid(format!(
                "an argument of {} bytes is too long; at most {MAX_ARG_BYTES}",
                arg.len()
            ));
        }
        if self.argv.iter().any(|a| a.contains('\0')) {
            return invalid("an argument contains a NUL byte".into());
        }
        if let Some(package) = &self.package {
            if package.trim().is_empty() {
                return invalid("package is empty: give the path of a .dtsx package".into());
            }
        }
        if self.name.len() > MAX_NAME_LEN {
            return invalid(format!(
                "name is {} bytes; at most {MAX_NAME_LEN}",
                self.name.len()
            ));
        }
        if self.max_attempts == 0 || self.max_attempts > MAX_ATTEMPTS {
            return invalid(format!(
                "max_attempts is {}; it must be between 1 and {MAX_ATTEMPTS}",
                self.max_attempts
            ));
        }
        match self.timeout_secs {
            Some(0) => return invalid("timeout is 0 seconds; leave it out for no limit".into()),
            Some(t) if t > MAX_TIMEOUT_SECS => {
                return invalid(format!(
                    "timeout of {t} seconds is more than the limit of {MAX_TIMEOUT_SECS} (7 days)"
                ))
            }
            _ => {}
        }
        validate_map("env", &self.env, |k| !k.contains('=') && !k.contains('\0'))?;
        validate_map("params", &self.params, |k| !k.contains(';'))?;
        if let Some(delay) = self.retry_delay_secs {
            if delay > MAX_RETRY_DELAY_SECS {
                return invalid(format!(
                    "retry delay of {delay} seconds is more than the limit of \
                     {MAX_RETRY_DELAY_SECS} (1 day)"
                ));
            }
        }
        validate_tags(&self.tags).map_err(QueueError::InvalidSpec)?;
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = self.allowed_workers.iter().find(|w| !seen.insert(**w)) {
            return invalid(format!("worker {dup} is listed twice"));
        }
        Ok(())
    }
}

/// Tag rules shared by job specs (tags required) and workers (tags offered), so that a tag one
/// accepts the other can match.
pub(super) fn validate_tags(tags: &[String]) -> Result<(), String> {
    if tags.len() > MAX_TAGS {
        return Err(format!("{} tags; at most {MAX_TAGS}", tags.len()));
    }
    if let Some(tag) = tags
        .iter()
        .find(|t| t.trim().is_empty() || t.len() > MAX_KEY_LEN || t.contains(','))
    {
        return Err(format!(
            "tag {tag:?} is not valid: tags are non-empty, without commas, at most {MAX_KEY_LEN} bytes"
        ));
    }
    Ok(())
}

fn validate_map(
    field: &str,
    map: &BTreeMap<String, String>,
    key_ok: impl Fn(&str) -> bool,
) -> Result<(), QueueError> {
    if map.len() > MAX_MAP_ENTRIES {
        return Err(QueueError::InvalidSpec(format!(
            "{field} has {} entries; at most {MAX_MAP_ENTRIES}",
            map.len()
        )));
    }
    for (key, value) in map {
        if key.is_empty() || key.len() > MAX_KEY_LEN || !key_ok(key) {
            return Err(QueueError::InvalidSpec(format!(
                "{field} key {key:?} is not valid (empty, too long, or holds a reserved character)"
            )));
        }
        if value.len() > MAX_ARG_BYTES {
            return Err(QueueError::InvalidSpec(format!(
                "{field} value for {key:?} is {} bytes; at most {MAX_ARG_BYTES}",
                value.len()
            )));
        }
    }
    Ok(())
}

/// Where a job stands. The status codes of SSIS's `internal.tasks` map onto these (1 queued,
/// 2 picked up, 3 running, 4 failed, 5 succeeded, 6 cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum JobState {
    /// Waiting for a worker (possibly until its `ready_at_ms`).
    Queued,
    /// Leased to a worker that has not yet confirmed, by a renewal, that it started the task.
    PickedUp,
    /// Leased, and the worker has renewed the lease at least once.
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::PickedUp,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    /// Whether a job in this state holds a lease (and a worker slot).
    pub fn is_leased(self) -> bool {
        matches!(self, JobState::PickedUp | JobState::Running)
    }

    /// The only state changes the queue ever makes. A leased job goes back to queued when an
    /// attempt fails or expires and attempts remain; a queued job can only be leased or
    /// cancelled (it fails only through an attempt).
    pub fn can_become(self, next: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, next),
            (Queued, PickedUp)
                | (Queued, Cancelled)
                | (PickedUp, Running)
                | (PickedUp, Succeeded)
                | (PickedUp, Failed)
                | (PickedUp, Queued)
                | (PickedUp, Cancelled)
                | (Running, Succeeded)
                | (Running, Failed)
                | (Running, Queued)
                | (Running, Cancelled)
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::PickedUp => "picked_up",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!(
                    "unknown job state {s:?}: expected queued, picked_up, running, succeeded, \
                     failed or cancelled"
                )
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub spec: JobSpec,
    pub state: JobState,
    pub idempotency_key: Option<String>,
    /// Leader clock readings (ms since the Unix epoch) from the committing entries.
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Log index of the entry that created the job.
    pub created_index: u64,
    /// Every attempt so far, oldest first; the last one is the live one while the job is leased.
    pub attempts: Vec<Attempt>,
    /// The current lease; `Some` exactly while the job is picked up or running.
    pub lease: Option<Lease>,
    /// A cancel arrived while the job was leased: the worker is told to kill the task, and the
    /// attempt's end (whatever it reports, unless it succeeded) cancels the job.
    pub cancel_requested: bool,
    /// When the job may next be dispatched: `created_at_ms` at submit, later the requeue time
    /// plus the retry delay.
    pub ready_at_ms: u64,
    /// The highest log line sequence stored for this job: the number of lines kept, or, once
    /// lines were dropped, the truncation notice's sequence (see `logs.rs`).
    pub log_lines: u64,
    /// Log lines refused because the job reached [`MAX_LOG_LINES_PER_JOB`](super::MAX_LOG_LINES_PER_JOB)
    /// or [`MAX_LOG_BYTES_PER_JOB`](super::MAX_LOG_BYTES_PER_JOB).
    pub log_lines_dropped: u64,
    /// Text bytes of the log lines kept (the notice not counted).
    pub log_bytes: u64,
}

impl Job {
    /// The attempt the current lease belongs to.
    pub fn current_attempt(&self) -> Option<&Attempt> {
        let lease = self.lease.as_ref()?;
        self.attempts.iter().rev().find(|a| a.token == lease.token)
    }

    /// Whether `token`, presented by `worker`, is this job's current lease: the fencing check
    /// every renew and complete goes through.
    pub fn holds_lease(&self, worker: WorkerId, token: u64) -> bool {
        self.lease
            .as_ref()
            .is_some_and(|l| l.token == token && l.worker == worker)
    }

    /// The attempt that was granted `token` to `worker`, if any ever was.
    pub fn attempt_with(&self, worker: WorkerId, token: u64) -> Option<&Attempt> {
        self.attempts
            .iter()
            .find(|a| a.token == token && a.worker == worker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            argv: vec!["echo".into(), "hi".into()],
            max_attempts: 1,
            ..JobSpec::default()
        }
    }

    #[test]
    fn a_plain_command_is_valid() {
        assert_eq!(spec().validate(), Ok(()));
    }

    #[test]
    fn rejects_what_cannot_run() {
        let cases: Vec<(JobSpec, &str)> = vec![
            (
                JobSpec {
                    argv: vec![],
                    ..spec()
                },
                "argv is empty",
            ),
            (
                JobSpec {
                    argv: vec![" ".into()],
                    ..spec()
                },
                "argv[0]",
            ),
            (
                JobSpec {
                    max_attempts: 0,
                    ..spec()
                },
                "max_attempts is 0",
            ),
            (
                JobSpec {
                    max_attempts: 101,
                    ..spec()
                },
                "max_attempts is 101",
            ),
            (
                JobSpec {
                    timeout_secs: Some(0),
                    ..spec()
                },
                "timeout is 0",
            ),
            (
                JobSpec {
                    timeout_secs: Some(MAX_TIMEOUT_SECS + 1),
                    ..spec()
                },
                "7 days",
            ),
            (
                JobSpec {
                    retry_delay_secs: Some(MAX_RETRY_DELAY_SECS + 1),
                    ..spec()
                },
                "1 day",
            ),
            (
                JobSpec {
                    package: Some("".into()),
                    argv: vec![],
                    ..spec()
                },
                "package is empty",
            ),
            (
                JobSpec {
                    env: [("A=B".to_string(), "x".to_string())].into(),
                    ..spec()
                },
                "env key",
            ),
            (
                JobSpec {
                    tags: vec!["".into()],
                    ..spec()
                },
                "tag",
            ),
            (
                JobSpec {
                    allowed_workers: vec![Uuid::nil(), Uuid::nil()],
                    ..spec()
                },
                "listed twice",
            ),
        ];
        for (bad, needle) in cases {
            let err = bad.validate().expect_err(needle).to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    #[test]
    fn a_package_needs_no_argv() {
        let package = JobSpec {
            argv: vec![],
            package: Some("/p/load.dtsx".into()),
            ..spec()
        };
        assert_eq!(package.validate(), Ok(()));
    }

    #[test]
    fn worker_ids_must_be_uuids() {
        let err = JobSpec::parse_worker_id("worker-7").expect_err("not a uuid");
        assert!(err.to_string().contains("expected a UUID"));
        assert!(JobSpec::parse_worker_id("5f0c6f1e-3c2a-4b8e-9d7a-0e2f4b6c8a10").is_ok());
    }

    #[test]
    fn terminal_states_go_nowhere() {
        for from in JobState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in JobState::ALL {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn only_leases_lead_out_of_queued_and_only_attempts_end_them() {
        use JobState::*;
        let legal: Vec<(JobState, JobState)> = JobState::ALL
            .into_iter()
            .flat_map(|from| JobState::ALL.into_iter().map(move |to| (from, to)))
            .filter(|(from, to)| from.can_become(*to))
            .collect();
        assert_eq!(
            legal,
            vec![
                (Queued, PickedUp),
                (Queued, Cancelled),
                (PickedUp, Queued),
                (PickedUp, Running),
                (PickedUp, Succeeded),
                (PickedUp, Failed),
                (PickedUp, Cancelled),
                (Running, Queued),
                (Running, Succeeded),
                (Running, Failed),
                (Running, Cancelled),
            ]
        );
    }

    #[test]
    fn states_parse_from_their_names() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>(), Ok(state));
        }
        assert!("done".parse::<JobState>().is_err());
    }
}
