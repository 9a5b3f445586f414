//! Conversions of workers, leases, attempts and log lines between the wire and the domain.

use crate::queue::{
    Assignment, Attempt, AttemptOutcome, JobLogLine, JobSpec, LeaseRef, LeaseStatus, LogLevel,
    LogLine, QueueError, Worker, WorkerId, WorkerInfo,
};

use super::v1;

/// Parses a worker agent id, naming the field on error.
pub fn worker_id_from_pb(text: &str) -> Result<WorkerId, QueueError> {
    // The same check as a job's allowed workers, but a worker call's id is not a job spec.
    JobSpec::parse_worker_id(text).map_err(|error| match error {
        QueueError::InvalidSpec(message) => QueueError::InvalidRequest(message),
        other => other,
    })
}

/// A percentage as the domain stores it: tenths of a percent, an integer so apply stays exact.
pub fn percent_x10(percent: f64) -> u32 {
    if percent.is_finite() {
        (percent * 10.0).round().clamp(0.0, 100_000.0) as u32
    } else {
        0
    }
}

pub fn worker_info_from_pb(info: v1::WorkerInfo) -> Result<WorkerInfo, QueueError> {
    Ok(WorkerInfo {
        id: worker_id_from_pb(&info.worker_id)?,
        display_name: info.display_name,
        description: info.description,
        machine_name: info.machine_name,
        tags: info.tags,
        max_tasks: info.max_tasks,
        version: info.version,
    })
}

impl From<&WorkerInfo> for v1::WorkerInfo {
    fn from(info: &WorkerInfo) -> Self {
        v1::WorkerInfo {
            worker_id: info.id.to_string(),
            display_name: info.display_name.clone(),
            description: info.description.clone(),
            machine_name: info.machine_name.clone(),
            tags: info.tags.clone(),
            max_tasks: info.max_tasks,
            version: info.version.clone(),
        }
    }
}

/// A worker as `workers list` shows it; `online` needs the reader's clock and threshold.
pub fn worker_to_pb(worker: &Worker, now_ms: u64, offline_after_ms: u64) -> v1::Worker {
    v1::Worker {
        info: Some(v1::WorkerInfo::from(&worker.info)),
        enabled: worker.enabled,
        draining: worker.draining,
        online: worker.is_online(now_ms, offline_after_ms),
        registered_at_ms: worker.registered_at_ms,
        last_heartbeat_ms: worker.last_heartbeat_ms,
        running_jobs: worker.running.iter().copied().collect(),
        cpu_percent: f64::from(worker.cpu_percent_x10) / 10.0,
        free_memory_mb: worker.free_memory_mb,
    }
}

pub fn lease_from_pb(lease: Option<v1::LeaseRef>) -> Result<LeaseRef, QueueError> {
    let lease = lease.ok_or_else(|| QueueError::InvalidWorker("the lease is missing".into()))?;
    Ok(LeaseRef {
        job_id: lease.job_id,
        token: lease.lease_token,
    })
}

impl From<&LeaseRef> for v1::LeaseRef {
    fn from(lease: &LeaseRef) -> Self {
        v1::LeaseRef {
            job_id: lease.job_id,
            lease_token: lease.token,
        }
    }
}

impl From<&LeaseStatus> for v1::LeaseStatus {
    fn from(status: &LeaseStatus) -> Self {
        v1::LeaseStatus {
            lease: Some(v1::LeaseRef {
                job_id: status.job_id,
                lease_token: status.token,
            }),
            renewed: status.renewed,
            cancel_requested: status.cancel_requested,
            expires_at_ms: status.expires_at_ms,
        }
    }
}

impl From<&Assignment> for v1::TaskAssignment {
    fn from(assignment: &Assignment) -> Self {
        v1::TaskAssignment {
            job_id: assignment.job_id,
            lease_token: assignment.token,
            attempt: assignment.attempt,
            spec: Some(v1::JobSpec::from(&assignment.spec)),
            lease_expires_at_ms: assignment.expires_at_ms,
        }
    }
}

pub fn outcome_from_pb(value: i32) -> Result<AttemptOutcome, QueueError> {
    match v1::AttemptOutcome::try_from(value) {
        Ok(v1::AttemptOutcome::Succeeded) => Ok(AttemptOutcome::Succeeded),
        Ok(v1::AttemptOutcome::Failed) => Ok(AttemptOutcome::Failed),
        Ok(v1::AttemptOutcome::Cancelled) => Ok(AttemptOutcome::Cancelled),
        _ => Err(QueueError::InvalidWorker(format!(
            "outcome {value} is not one a worker may report: succeeded, failed or cancelled"
        ))),
    }
}

impl From<AttemptOutcome> for v1::AttemptOutcome {
    fn from(outcome: AttemptOutcome) -> Self {
        match outcome {
            AttemptOutcome::Succeeded => v1::AttemptOutcome::Succeeded,
            AttemptOutcome::Failed => v1::AttemptOutcome::Failed,
            AttemptOutcome::Expired => v1::AttemptOutcome::Expired,
            AttemptOutcome::Cancelled => v1::AttemptOutcome::Cancelled,
        }
    }
}

impl From<&Attempt> for v1::Attempt {
    fn from(attempt: &Attempt) -> Self {
        v1::Attempt {
            number: attempt.number,
            worker_id: attempt.worker.to_string(),
            lease_token: attempt.token,
            started_at_ms: attempt.started_at_ms,
            ended_at_ms: attempt.ended_at_ms.unwrap_or(0),
            outcome: attempt
                .outcome
                .map_or(v1::AttemptOutcome::Unspecified, Into::into) as i32,
            exit_code: attempt.exit_code,
            error: attempt.error.clone(),
        }
    }
}

pub fn level_from_pb(value: i32) -> LogLevel {
    match v1::LogLevel::try_from(value) {
        Ok(v1::LogLevel::Verbose) => LogLevel::Verbose,
        Ok(v1::LogLevel::Warning) => LogLevel::Warning,
        Ok(v1::LogLevel::Error) => LogLevel::Error,
        _ => LogLevel::Info,
    }
}

impl From<LogLevel> for v1::LogLevel {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Verbose => v1::LogLevel::Verbose,
            LogLevel::Info => v1::LogLevel::Info,
            LogLevel::Warning => v1::LogLevel::Warning,
            LogLevel::Error => v1::LogLevel::Error,
        }
    }
}

pub fn log_line_from_pb(line: v1::LogLine) -> LogLine {
    LogLine {
        at_ms: line.at_ms,
        level: level_from_pb(line.level),
        text: line.text,
    }
}

impl From<&JobLogLine> for v1::JobLogLine {
    fn from(line: &JobLogLine) -> Self {
        v1::JobLogLine {
            sequence: line.sequence,
            attempt: line.attempt,
            line: Some(v1::LogLine {
                at_ms: line.line.at_ms,
                level: v1::LogLevel::from(line.line.level) as i32,
                text: line.line.text.clone(),
            }),
            late: line.late,
        }
    }
}
