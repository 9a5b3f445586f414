//! The rows a batch of outbox events writes into SSISDB, in one transaction fenced by the
//! leader's term: the fencing row `scaleout.shipper`, then the job, task, attempt and worker rows
//! the events name (each carrying `row_version`, never turned back to an older state), then the
//! events themselves, idempotent by event id. The shipping loop (`shipper.rs`) reads a
//! [`Batch`] and hands it here.

use std::collections::{BTreeMap, BTreeSet};

use super::connect::{SqlClient, SsisdbError};
use super::sql::{big, clip, rollback, send, simple, sql_time, Packer, Param, MAX_STRING};
use crate::queue::{
    EventKind, Job, JobId, JobLogLine, JobState, LogLevel, OutboxEvent, QueueState, Worker,
    WorkerId,
};
use crate::wall_time::now_ms;

/// The fencing row's claim: the term of office this batch is written in, and by whom.
#[derive(Debug, Clone, Copy)]
pub struct Fence {
    pub term: u64,
    pub replica: u64,
}

/// One batch read from the local state, lock released.
pub(super) struct Batch {
    /// The newest event id of the state the rows were read from: every row carries it as its
    /// `row_version`, and an older state never overwrites a newer one.
    pub(super) version: i64,
    pub(super) events: Vec<OutboxEvent>,
    pub(super) jobs: BTreeMap<JobId, Job>,
    /// Workers named by the events; `None` when removed since.
    pub(super) workers: BTreeMap<WorkerId, Option<Worker>>,
    /// (job, attempt number) named by attempt events.
    pub(super) attempts: BTreeSet<(JobId, u32)>,
    /// (job, sequence) named by log line events, read from the store after the queue lock.
    pub(super) wanted_lines: Vec<(JobId, u64)>,
    /// Finished jobs named by events, read from the store after the queue lock.
    pub(super) wanted_jobs: BTreeSet<JobId>,
    pub(super) lines: BTreeMap<(JobId, u64), JobLogLine>,
}

/// SSIS task status codes (internal.tasks.status).
pub fn status_code(state: JobState) -> i32 {
    match state {
        JobState::Queued => 1,
        JobState::PickedUp => 2,
        JobState::Running => 3,
        JobState::Failed => 4,
        JobState::Succeeded => 5,
        JobState::Cancelled => 6,
    }
}

/// SSIS message types: 120 error, 110 warning, 70 information, 10 verbose.
fn message_type(level: LogLevel) -> i32 {
    match level {
        LogLevel::Error => 120,
        LogLevel::Warning => 110,
        LogLevel::Info => 70,
        LogLevel::Verbose => 10,
    }
}

pub(super) fn p<T: tiberius::ToSql + 'static>(v: T) -> Param {
    Box::new(v)
}

fn opt_ms(ms: Option<u64>) -> (Param, Param) {
    (p(ms.map(sql_time)), p(ms.map(big)))
}

/// `events` and the rows they name, as they are now in `q` (finished jobs and lines are read
/// from the store next).
pub(super) fn read_batch(q: &QueueState, events: Vec<OutboxEvent>) -> Batch {
    let mut batch = Batch {
        version: big(q.outbox_meta().newest_event_id()),
        events,
        jobs: BTreeMap::new(),
        workers: BTreeMap::new(),
        attempts: BTreeSet::new(),
        wanted_lines: Vec::new(),
        wanted_jobs: BTreeSet::new(),
        lines: BTreeMap::new(),
    };
    for event in &batch.events {
        if let Some(job) = event.kind.job() {
            if let Some(j) = q.job(job) {
                batch.jobs.entry(job).or_insert_with(|| j.clone());
            } else if q.finished_job(job).is_some() {
                batch.wanted_jobs.insert(job);
            }
        }
        if let Some(worker) = event.kind.worker() {
            batch
                .workers
                .entry(worker)
                .or_insert_with(|| q.worker(worker).cloned());
        }
        match &event.kind {
            EventKind::AttemptStarted { job, attempt, .. }
            | EventKind::AttemptEnded { job, attempt, .. } => {
                batch.attempts.insert((*job, *attempt));
            }
            EventKind::LogLine { job, sequence } => {
                batch.wanted_lines.push((*job, *sequence));
            }
            _ => {}
        }
    }
    batch
}

/// Writes `events` and the rows they name in `queue` into SSISDB in one transaction fenced by
/// `fence`, without acknowledging them: what a leader does before its release, and what the next
/// leader repeats when that release never committed. Returns how many events it wrote. Without
/// the store's readers, log line events carry a notice instead of their text, and finished jobs
/// the queue holds no full row of are left out.
pub async fn write_events(
    client: &mut SqlClient,
    queue: &QueueState,
    events: Vec<OutboxEvent>,
    fence: Fence,
) -> Result<usize, SsisdbError> {
    let batch = read_batch(queue, events);
    write_batch(client, "SSISDB", &batch, fence).await?;
    Ok(batch.events.len())
}

pub(super) async fn write_batch(
    client: &mut SqlClient,
    addr: &str,
    batch: &Batch,
    fence: Fence,
) -> Result<(), SsisdbError> {
    let mut packer = Packer::default();
    for (id, worker) in &batch.workers {
        push_worker(&mut packer, *id, worker.as_ref(), batch.version);
    }
    for job in batch.jobs.values() {
        push_job(&mut packer, job, batch.version);
        for (_, number) in batch.attempts.range((job.id, 0)..=(job.id, u32::MAX)) {
            if let Some(attempt) = job.attempts.iter().find(|a| a.number == *number) {
                push_attempt(&mut packer, job.id, attempt, batch.version);
            }
        }
    }
    for event in &batch.events {
        push_event(&mut packer, event, batch);
    }
    let trips = packer.finish();
    let (first, last) = match (batch.events.first(), batch.events.last()) {
        (Some(f), Some(l)) => (f.id, l.id),
        _ => return Ok(()),
    };
    // A replica that a newer leader has superseded learns it here, before opening a
    // transaction it would only roll back (a rollback racing another session's commit can undo
    // that commit on iridium_server, the tests' SQL Server).
    let stored = fence_term(client, addr).await?;
    if stored > fence.term {
        return Err(SsisdbError::Superseded {
            replica: fence.replica,
            term: fence.term,
            newer_term: stored,
        });
    }
    simple(client, addr, "BEGIN TRANSACTION").await?;
    let result = async {
        claim_fence(client, addr, fence).await?;
        send(client, addr, trips).await?;
        // Count the batch back: only this batch's events have ids in [first, last].
        let row = client
            .query(
                "SELECT COUNT(*) FROM scaleout.event_messages WHERE event_id >= @P1 AND event_id <= @P2",
                &[&big(first), &big(last)],
            )
            .await
            .map_err(|e| SsisdbError::from_sql(addr, e))?
            .into_row()
            .await
            .map_err(|e| SsisdbError::from_sql(addr, e))?;
        let stored = row.as_ref().map(super::sql::count_of).unwrap_or(0);
        if stored != batch.events.len() as i64 {
            return Err(SsisdbError::Sql(format!(
                "SSISDB holds {stored} of the {} events {first}..={last} after writing them \
                 (a statement was dropped by the server); the batch is rolled back and retried",
                batch.events.len()
            )));
        }
        simple(client, addr, "COMMIT TRANSACTION").await
    }
    .await;
    if result.is_err() {
        rollback(client).await;
    }
    result
}

/// The term in `scaleout.shipper` now.
async fn fence_term(client: &mut SqlClient, addr: &str) -> Result<u64, SsisdbError> {
    let row = client
        .simple_query("SELECT term FROM scaleout.shipper WHERE shipper_id = 1")
        .await
        .map_err(|e| SsisdbError::from_sql(addr, e))?
        .into_row()
        .await
        .map_err(|e| SsisdbError::from_sql(addr, e))?;
    row.as_ref()
        .and_then(|r| r.try_get::<i64, _>(0).ok().flatten())
        .map(|t| u64::try_from(t).unwrap_or(0))
        .ok_or_else(|| SsisdbError::MissingSchema {
            missing: "the row of scaleout.shipper (schema 2)".into(),
        })
}

/// Step 1 of a batch, inside its transaction: takes `scaleout.shipper` for `fence.term` unless
/// a newer term holds it. The UPDATE locks the row until COMMIT, and the read after it sees the
/// newest committed term (the lock waited for any transaction holding it).
async fn claim_fence(client: &mut SqlClient, addr: &str, fence: Fence) -> Result<(), SsisdbError> {
    let now = now_ms();
    let row = client
        .query(
            "UPDATE scaleout.shipper SET term = @P1, replica_id = @P2, \
             claimed_time = CAST(@P3 AS DATETIME2), claimed_ms = @P4 \
             WHERE shipper_id = 1 AND term <= @P1; \
             SELECT term FROM scaleout.shipper WHERE shipper_id = 1",
            &[
                &big(fence.term),
                &big(fence.replica),
                &sql_time(now),
                &big(now),
            ],
        )
        .await
        .map_err(|e| SsisdbError::from_sql(addr, e))?
        .into_results()
        .await
        .map_err(|e| SsisdbError::from_sql(addr, e))?
        .into_iter()
        .flatten()
        .next_back();
    let stored = row
        .as_ref()
        .and_then(|r| r.try_get::<i64, _>(0).ok().flatten())
        .ok_or_else(|| SsisdbError::MissingSchema {
            missing: "the row of scaleout.shipper (schema 2)".into(),
        })?;
    let stored = u64::try_from(stored).unwrap_or(0);
    match stored.cmp(&fence.term) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Greater => Err(SsisdbError::Superseded {
            replica: fence.replica,
            term: fence.term,
            newer_term: stored,
        }),
        std::cmp::Ordering::Less => Err(SsisdbError::Sql(format!(
            "scaleout.shipper still shows term {stored} after claiming it for term {} (the \
             server dropped the UPDATE); the batch is rolled back and retried",
            fence.term
        ))),
    }
}

fn push_worker(packer: &mut Packer, id: WorkerId, worker: Option<&Worker>, version: i64) {
    let Some(w) = worker else {
        packer.push(
            "UPDATE scaleout.worker_agents SET is_removed = 1, row_version = ? \
             WHERE worker_agent_id = ? AND row_version <= ?",
            vec![p(version), p(id.to_string()), p(version)],
        );
        return;
    };
    let info = &w.info;
    let id_text = id.to_string();
    // The columns the UPDATE and the INSERT share, in the same order in both.
    let described = || -> Vec<Param> {
        vec![
            p(clip(&info.display_name, 256)),
            p(clip(&info.description, 256)),
            p(clip(&info.machine_name, 256)),
            p(clip(&info.tags.join(","), MAX_STRING)),
            p(i32::try_from(info.max_tasks).unwrap_or(i32::MAX)),
            p(clip(&info.version, 256)),
            p(w.enabled),
            p(w.draining),
        ]
    };
    // Parameters are numbered in the order the `?`s appear: IF EXISTS id; UPDATE columns,
    // online time and ms, version, WHERE id and version; INSERT id, columns, registered and
    // online times, version.
    let mut ordered = vec![p(id_text.clone())];
    ordered.extend(described());
    ordered.extend([
        p(sql_time(w.last_heartbeat_ms)),
        p(big(w.last_heartbeat_ms)),
        p(version),
    ]);
    ordered.push(p(id_text.clone()));
    ordered.push(p(version));
    ordered.push(p(id_text));
    ordered.extend(described());
    ordered.extend([
        p(sql_time(w.registered_at_ms)),
        p(big(w.registered_at_ms)),
        p(sql_time(w.last_heartbeat_ms)),
        p(big(w.last_heartbeat_ms)),
        p(version),
    ]);
    packer.push(
        "IF EXISTS (SELECT 1 FROM scaleout.worker_agents WHERE worker_agent_id = ?) \
         UPDATE scaleout.worker_agents SET display_name = ?, description = ?, machine_name = ?, \
         tags = ?, max_tasks = ?, agent_version = ?, is_enabled = ?, is_draining = ?, \
         is_removed = 0, last_online_time = CAST(? AS DATETIME2), last_online_ms = ?, \
         row_version = ? WHERE worker_agent_id = ? AND row_version <= ? \
         ELSE INSERT INTO scaleout.worker_agents (worker_agent_id, display_name, description, \
         machine_name, tags, max_tasks, agent_version, is_enabled, is_draining, is_removed, \
         registered_time, registered_ms, last_online_time, last_online_ms, row_version) VALUES \
         (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, CAST(? AS DATETIME2), ?, CAST(? AS DATETIME2), ?, ?)",
        ordered,
    );
}

fn command_line(job: &Job) -> String {
    clip(&job.spec.argv.join(" "), MAX_STRING)
}

fn push_job(packer: &mut Packer, job: &Job, version: i64) {
    let worker = job
        .lease
        .as_ref()
        .map(|l| l.worker)
        .or_else(|| job.attempts.last().map(|a| a.worker))
        .map(|w| w.to_string());
    let attempts = i32::try_from(job.attempts.len()).unwrap_or(i32::MAX);
    let set = || -> Vec<Param> {
        vec![
            p(job.state.as_str()),
            p(status_code(job.state)),
            p(attempts),
            p(job.cancel_requested),
            p(worker.clone()),
            p(sql_time(job.updated_at_ms)),
            p(big(job.updated_at_ms)),
            p(version),
        ]
    };
    let mut params = vec![p(big(job.id))];
    params.extend(set());
    params.push(p(big(job.id)));
    params.push(p(version));
    params.extend(vec![
        p(big(job.id)),
        p(clip(&job.spec.name, 256)),
        p(job.spec.package.as_deref().map(|s| clip(s, MAX_STRING))),
        p(command_line(job)),
        p(job.spec.priority),
        p(i32::try_from(job.spec.max_attempts).unwrap_or(i32::MAX)),
        p(sql_time(job.created_at_ms)),
        p(big(job.created_at_ms)),
    ]);
    params.extend(set());
    packer.push(
        "IF EXISTS (SELECT 1 FROM scaleout.jobs WHERE job_id = ?) \
         UPDATE scaleout.jobs SET state = ?, status = ?, attempt_count = ?, cancel_requested = ?, \
         worker_agent_id = ?, updated_time = CAST(? AS DATETIME2), updated_ms = ?, \
         row_version = ? WHERE job_id = ? AND row_version <= ? \
         ELSE INSERT INTO scaleout.jobs (job_id, job_name, package_path, command_line, priority, \
         max_attempts, created_time, created_ms, state, status, attempt_count, cancel_requested, \
         worker_agent_id, updated_time, updated_ms, row_version) VALUES (?, ?, ?, ?, ?, ?, \
         CAST(? AS DATETIME2), ?, ?, ?, ?, ?, ?, CAST(? AS DATETIME2), ?, ?)",
        params,
    );

    // The task (task_id = job_id), shaped like internal.tasks.
    let lease_worker = job.lease.as_ref().map(|l| l.worker.to_string());
    let expires = job.lease.as_ref().map(|l| l.expires_at_ms);
    let pickup = job.attempts.last().map(|a| a.started_at_ms);
    let input = clip(
        &job.spec
            .package
            .clone()
            .unwrap_or_else(|| job.spec.argv.join(" ")),
        MAX_STRING,
    );
    let task_set = || -> Vec<Param> {
        let (exp_t, exp_ms) = opt_ms(expires);
        let (pick_t, pick_ms) = opt_ms(pickup);
        vec![
            p(attempts),
            p(status_code(job.state)),
            p(sql_time(job.ready_at_ms)),
            p(big(job.ready_at_ms)),
            p(sql_time(job.updated_at_ms)),
            p(big(job.updated_at_ms)),
            p(lease_worker.clone()),
            exp_t,
            exp_ms,
            p(job.state == JobState::Cancelled || job.cancel_requested),
            pick_t,
            pick_ms,
            p(version),
        ]
    };
    let mut params = vec![p(big(job.id))];
    params.extend(task_set());
    params.push(p(big(job.id)));
    params.push(p(version));
    params.extend(vec![
        p(big(job.id)),
        p(big(job.id)),
        p(input),
        p(i32::try_from(job.spec.max_attempts).unwrap_or(i32::MAX)),
        p(job.spec.priority),
        p(sql_time(job.created_at_ms)),
        p(big(job.created_at_ms)),
    ]);
    params.extend(task_set());
    packer.push(
        "IF EXISTS (SELECT 1 FROM scaleout.tasks WHERE task_id = ?) \
         UPDATE scaleout.tasks SET executed_count = ?, status = ?, \
         ready_for_dispatch_time = CAST(? AS DATETIME2), ready_for_dispatch_ms = ?, \
         last_updated_time = CAST(? AS DATETIME2), last_updated_ms = ?, worker_agent_id = ?, \
         expired_time = CAST(? AS DATETIME2), expired_ms = ?, is_cancelled = ?, \
         last_pickup_time = CAST(? AS DATETIME2), last_pickup_ms = ?, row_version = ? \
         WHERE task_id = ? AND row_version <= ? \
         ELSE INSERT INTO scaleout.tasks (task_id, job_id, task_type, input_data, \
         max_executed_count, is_critical, priority, created_time, created_ms, executed_count, \
         status, ready_for_dispatch_time, ready_for_dispatch_ms, last_updated_time, \
         last_updated_ms, worker_agent_id, expired_time, expired_ms, is_cancelled, \
         last_pickup_time, last_pickup_ms, row_version) VALUES (?, ?, 0, ?, ?, 0, ?, \
         CAST(? AS DATETIME2), ?, ?, ?, CAST(? AS DATETIME2), ?, CAST(? AS DATETIME2), ?, ?, \
         CAST(? AS DATETIME2), ?, ?, CAST(? AS DATETIME2), ?, ?)",
        params,
    );
}

/// task_attempt_id: one column key (iridium does not enforce composite keys).
pub fn task_attempt_id(job: JobId, attempt: u32) -> i64 {
    big(job)
        .saturating_mul(1000)
        .saturating_add(i64::from(attempt))
}

fn push_attempt(packer: &mut Packer, job: JobId, attempt: &crate::queue::Attempt, version: i64) {
    let key = task_attempt_id(job, attempt.number);
    let set = || -> Vec<Param> {
        let (end_t, end_ms) = opt_ms(attempt.ended_at_ms);
        vec![
            end_t,
            end_ms,
            p(attempt.outcome.map(|o| o.as_str())),
            p(attempt.exit_code),
            p(if attempt.error.is_empty() {
                None
            } else {
                Some(clip(&attempt.error, MAX_STRING))
            }),
            p(version),
        ]
    };
    let mut params = vec![p(key)];
    params.extend(set());
    params.push(p(key));
    params.push(p(version));
    params.extend(vec![
        p(key),
        p(big(job)),
        p(i32::try_from(attempt.number).unwrap_or(i32::MAX)),
        p(attempt.worker.to_string()),
        p(big(attempt.token)),
        p(sql_time(attempt.started_at_ms)),
        p(big(attempt.started_at_ms)),
    ]);
    params.extend(set());
    packer.push(
        "IF EXISTS (SELECT 1 FROM scaleout.task_attempts WHERE task_attempt_id = ?) \
         UPDATE scaleout.task_attempts SET ended_time = CAST(? AS DATETIME2), ended_ms = ?, \
         outcome = ?, exit_code = ?, error_message = ?, row_version = ? \
         WHERE task_attempt_id = ? AND row_version <= ? \
         ELSE INSERT INTO scaleout.task_attempts (task_attempt_id, task_id, attempt_number, \
         worker_agent_id, lease_token, started_time, started_ms, ended_time, ended_ms, outcome, \
         exit_code, error_message, row_version) VALUES (?, ?, ?, ?, ?, CAST(? AS DATETIME2), ?, \
         CAST(? AS DATETIME2), ?, ?, ?, ?, ?)",
        params,
    );
}

/// The event's kind name, SSIS message type, attempt, worker, log sequence and message.
pub fn describe(
    event: &OutboxEvent,
    line: Option<&JobLogLine>,
) -> (
    &'static str,
    i32,
    Option<u32>,
    Option<WorkerId>,
    Option<u64>,
    String,
) {
    match &event.kind {
        EventKind::JobSubmitted { job } => (
            "JobSubmitted",
            70,
            None,
            None,
            None,
            format!("job {job} submitted"),
        ),
        EventKind::JobStateChanged { job, from, to } => {
            let ty = if *to == JobState::Failed { 120 } else { 70 };
            (
                "JobStateChanged",
                ty,
                None,
                None,
                None,
                format!("job {job}: {from} -> {to}"),
            )
        }
        EventKind::AttemptStarted {
            job,
            attempt,
            worker,
            ..
        } => (
            "AttemptStarted",
            70,
            Some(*attempt),
            Some(*worker),
            None,
            format!("job {job} attempt {attempt} started on worker {worker}"),
        ),
        EventKind::AttemptEnded {
            job,
            attempt,
            worker,
            outcome,
        } => (
            "AttemptEnded",
            if matches!(outcome, crate::queue::AttemptOutcome::Succeeded) {
                70
            } else {
                110
            },
            Some(*attempt),
            Some(*worker),
            None,
            format!(
                "job {job} attempt {attempt} on worker {worker} ended: {}",
                outcome.as_str()
            ),
        ),
        EventKind::CancelRequested { job } => (
            "CancelRequested",
            70,
            None,
            None,
            None,
            format!("cancel of job {job} requested"),
        ),
        EventKind::WorkerChanged { worker, change } => (
            "WorkerChanged",
            70,
            None,
            Some(*worker),
            None,
            format!("worker {worker} {}", change.as_str()),
        ),
        EventKind::LogLine { job, sequence } => match line {
            Some(l) => (
                "LogLine",
                message_type(l.line.level),
                Some(l.attempt),
                None,
                Some(*sequence),
                l.line.text.clone(),
            ),
            None => (
                "LogLine",
                70,
                None,
                None,
                Some(*sequence),
                format!("log line {sequence} of job {job} (no longer stored)"),
            ),
        },
        EventKind::LogTruncated { job, dropped } => (
            "LogTruncated",
            110,
            None,
            None,
            None,
            format!("{dropped} log line events of job {job} were not shipped: the outbox was full"),
        ),
    }
}

fn push_event(packer: &mut Packer, event: &OutboxEvent, batch: &Batch) {
    let line = match &event.kind {
        EventKind::LogLine { job, sequence } => batch.lines.get(&(*job, *sequence)),
        _ => None,
    };
    let (kind, ty, attempt, worker, log_seq, message) = describe(event, line);
    let id = big(event.id);
    packer.push(
        "INSERT INTO scaleout.event_messages (event_id, event_time, event_ms, event_kind, \
         message_type, job_id, attempt_number, worker_agent_id, log_sequence, message) \
         SELECT ?, CAST(? AS DATETIME2), ?, ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS \
         (SELECT 1 FROM scaleout.event_messages WHERE event_id = ?)",
        vec![
            p(id),
            p(sql_time(event.at_ms)),
            p(big(event.at_ms)),
            p(kind),
            p(ty),
            p(event.kind.job().map(big)),
            p(attempt.map(|a| i32::try_from(a).unwrap_or(i32::MAX))),
            p(worker.map(|w| w.to_string())),
            p(log_seq.map(big)),
            p(clip(&message, MAX_STRING)),
            p(id),
        ],
    );
}
