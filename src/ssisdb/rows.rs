//! The rows a batch of outbox events writes into SSISDB, in one transaction fenced by the
//! leader's term: the fencing row `scaleout.shipper`, then the job, task, attempt and worker rows
//! the events name (each carrying `row_version`, never turned back to an older state), then the
//! events themselves, idempotent by event id. The shipping loop (`shipper.rs`) reads a
//! [`Batch`] and hands it here.

use std::collections::{BTreeMap, BTreeSet};

use super::connect::{SqlClient, SsisdbError};
use super::sql::{big, clip, count_at, rollback, simple, sql_time, MAX_STRING};
use super::upsert::{
    insert_statements, key_text, present_keys_query, statements, Lit, PresentKeys, Row, TableShape,
};
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
    rows_per_statement: usize,
) -> Result<usize, SsisdbError> {
    let batch = read_batch(queue, events);
    write_batch(client, "SSISDB", &batch, fence, rows_per_statement).await?;
    Ok(batch.events.len())
}

/// What one batch sent, for the benchmark and the logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchTrips {
    /// Requests sent to the server (round trips).
    pub requests: u32,
    /// SQL statements in them.
    pub statements: u32,
}

/// Writes `batch` in one transaction fenced by `fence`: claim the fencing row and read which of
/// the batch's keys each table holds (one request), write every table set-based (one request:
/// per table an UPDATE of the present rows and an INSERT of the absent ones, per
/// `rows_per_statement` rows), count the batch's events back, COMMIT.
pub(super) async fn write_batch(
    client: &mut SqlClient,
    addr: &str,
    batch: &Batch,
    fence: Fence,
    rows_per_statement: usize,
) -> Result<BatchTrips, SsisdbError> {
    let (first, last) = match (batch.events.first(), batch.events.last()) {
        (Some(f), Some(l)) => (big(f.id), big(l.id)),
        _ => return Ok(BatchTrips::default()),
    };
    let rows = BatchRows::of(batch);
    let mut trips = BatchTrips::default();
    // A replica that a newer leader has superseded learns it here, before opening a
    // transaction it would only roll back (a rollback racing another session's commit can undo
    // that commit on iridium_server, the tests' SQL Server).
    let stored = fence_term(client, addr).await?;
    trips.requests += 1;
    trips.statements += 1;
    if stored > fence.term {
        return Err(SsisdbError::Superseded {
            replica: fence.replica,
            term: fence.term,
            newer_term: stored,
        });
    }
    let result = async {
        let (claim, reads) = claim_and_read_sql(&rows, fence, first, last, rows_per_statement);
        trips.requests += 1;
        trips.statements += 3 + reads;
        // An error from here on rolls back what the request's BEGIN opened.
        let found = run(client, addr, &claim).await?;
        let present = Present::from_rows(&found, fence)?;
        let mut writes = rows.statements(&present, rows_per_statement);
        trips.statements += writes.len() as u32 + 1;
        writes.push(format!(
            "SELECT {COUNT_TAG} AS tag, COUNT(*) AS k FROM scaleout.event_messages \
             WHERE event_id >= {first} AND event_id <= {last}"
        ));
        trips.requests += 1;
        let counted = run(client, addr, &writes.join(";\n")).await?;
        // Count the batch back: only this batch's events have ids in [first, last]. A server
        // that dropped a statement fails the batch instead of losing events.
        let stored = counted
            .iter()
            .find(|row| tag_of(row) == Some(COUNT_TAG))
            .map(|row| count_at(row, 1))
            .unwrap_or(0);
        if stored != batch.events.len() as i64 {
            return Err(SsisdbError::Sql(format!(
                "SSISDB holds {stored} of the {} events {first}..={last} after writing them \
                 (a statement was dropped by the server); the batch is rolled back and retried",
                batch.events.len()
            )));
        }
        trips.requests += 1;
        trips.statements += 1;
        simple(client, addr, "COMMIT TRANSACTION").await
    }
    .await;
    if result.is_err() {
        rollback(client).await;
    }
    result.map(|()| trips)
}

/// Tags of the result rows of the claim request (column 0), telling its result sets apart.
const FENCE_TAG: i32 = 0;
const COUNT_TAG: i32 = 9;

/// The first request of a batch's transaction: BEGIN, claim `scaleout.shipper` for
/// `fence.term` unless a newer term holds it (the UPDATE locks the row until COMMIT, so the
/// read after it sees the newest committed term: the lock waited for any transaction holding
/// it), read the fence back, and read which of the batch's keys each table holds. Returns the
/// SQL and how many key reads it holds.
fn claim_and_read_sql(
    rows: &BatchRows,
    fence: Fence,
    first: i64,
    last: i64,
    rows_per_statement: usize,
) -> (String, u32) {
    let now = now_ms();
    let mut sql = format!(
        "BEGIN TRANSACTION;\nUPDATE scaleout.shipper SET term = {term}, replica_id = {replica}, \
         claimed_time = CAST(N'{time}' AS DATETIME2), claimed_ms = {now} \
         WHERE shipper_id = 1 AND term <= {term};\n\
         SELECT {FENCE_TAG} AS tag, term AS k FROM scaleout.shipper WHERE shipper_id = 1;\n\
         SELECT {EVENTS_TAG} AS tag, event_id AS k FROM scaleout.event_messages \
         WHERE event_id >= {first} AND event_id <= {last}",
        term = big(fence.term),
        replica = big(fence.replica),
        time = sql_time(now),
    );
    let mut reads = 1;
    for (tag, shape, table_rows) in rows.tables() {
        let keys: Vec<&Lit> = table_rows.iter().map(|r| &r.key).collect();
        for read in present_keys_query(shape, tag, &keys, rows_per_statement) {
            sql.push_str(";\n");
            sql.push_str(&read);
            reads += 1;
        }
    }
    (sql, reads)
}

/// Sends `sql` as one request and returns every row of every result set.
async fn run(
    client: &mut SqlClient,
    addr: &str,
    sql: &str,
) -> Result<Vec<tiberius::Row>, SsisdbError> {
    Ok(client
        .simple_query(sql)
        .await
        .map_err(|e| SsisdbError::from_sql(addr, e))?
        .into_results()
        .await
        .map_err(|e| SsisdbError::from_sql(addr, e))?
        .into_iter()
        .flatten()
        .collect())
}

fn tag_of(row: &tiberius::Row) -> Option<i32> {
    row.try_get::<i32, _>(0).ok().flatten()
}

/// The keys each table already holds, as [`key_text`] renders them, with their digests, by
/// table tag.
struct Present {
    by_tag: BTreeMap<i32, PresentKeys>,
}

impl Present {
    /// Reads the claim request's rows; fails when the fence shows another term than ours.
    fn from_rows(rows: &[tiberius::Row], fence: Fence) -> Result<Present, SsisdbError> {
        let mut by_tag: BTreeMap<i32, PresentKeys> = BTreeMap::new();
        let mut stored_term = None;
        for row in rows {
            let Some(tag) = tag_of(row) else { continue };
            let key = match row.try_get::<i64, _>(1) {
                Ok(Some(n)) => Lit::Big(n),
                _ => match row.try_get::<&str, _>(1) {
                    Ok(Some(text)) => Lit::text(text),
                    _ => continue,
                },
            };
            if tag == FENCE_TAG {
                if let Lit::Big(term) = key {
                    stored_term = Some(u64::try_from(term).unwrap_or(0));
                }
                continue;
            }
            // Column 2, where read, is the stored digest (`try_get` past the last column
            // panics).
            let digest = if row.len() > 2 {
                row.try_get::<i64, _>(2).ok().flatten()
            } else {
                None
            };
            by_tag
                .entry(tag)
                .or_default()
                .insert(key_text(&key), digest);
        }
        let stored = stored_term.ok_or_else(|| SsisdbError::MissingSchema {
            missing: "the row of scaleout.shipper (schema 2)".into(),
        })?;
        match stored.cmp(&fence.term) {
            std::cmp::Ordering::Equal => Ok(Present { by_tag }),
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

    fn of(&self, tag: i32) -> &PresentKeys {
        static NONE: PresentKeys = PresentKeys::new();
        self.by_tag.get(&tag).unwrap_or(&NONE)
    }
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

const EVENTS_TAG: i32 = 1;
const WORKERS_TAG: i32 = 2;
const JOBS_TAG: i32 = 3;
const TASKS_TAG: i32 = 4;
const ATTEMPTS_TAG: i32 = 5;

const WORKERS: TableShape = TableShape {
    table: "scaleout.worker_agents",
    key: "worker_agent_id",
    fixed: &["registered_time", "registered_ms"],
    changing: &[
        "display_name",
        "description",
        "machine_name",
        "tags",
        "max_tasks",
        "agent_version",
        "is_enabled",
        "is_draining",
        "is_removed",
        "last_online_time",
        "last_online_ms",
        "row_version",
    ],
    skip_unchanged: false,
};

/// A removed worker: its row (if any) marked removed, nothing inserted.
const REMOVED_WORKERS: TableShape = TableShape {
    table: "scaleout.worker_agents",
    key: "worker_agent_id",
    fixed: &[],
    changing: &["is_removed", "row_version"],
    skip_unchanged: false,
};

const JOBS: TableShape = TableShape {
    table: "scaleout.jobs",
    key: "job_id",
    fixed: &[
        "job_name",
        "package_path",
        "command_line",
        "priority",
        "max_attempts",
        "created_time",
        "created_ms",
    ],
    changing: &[
        "state",
        "status",
        "attempt_count",
        "cancel_requested",
        "worker_agent_id",
        "updated_time",
        "updated_ms",
        "started_time",
        "ended_time",
        "row_version",
    ],
    skip_unchanged: true,
};

/// The task of a job (task_id = job_id), shaped like SSIS's internal.tasks.
const TASKS: TableShape = TableShape {
    table: "scaleout.tasks",
    key: "task_id",
    fixed: &[
        "job_id",
        "task_type",
        "input_data",
        "max_executed_count",
        "is_critical",
        "priority",
        "created_time",
        "created_ms",
    ],
    changing: &[
        "executed_count",
        "status",
        "ready_for_dispatch_time",
        "ready_for_dispatch_ms",
        "last_updated_time",
        "last_updated_ms",
        "worker_agent_id",
        "expired_time",
        "expired_ms",
        "is_cancelled",
        "last_pickup_time",
        "last_pickup_ms",
        "row_version",
    ],
    skip_unchanged: true,
};

const ATTEMPTS: TableShape = TableShape {
    table: "scaleout.task_attempts",
    key: "task_attempt_id",
    fixed: &[
        "task_id",
        "attempt_number",
        "worker_agent_id",
        "lease_token",
        "started_time",
        "started_ms",
    ],
    changing: &[
        "ended_time",
        "ended_ms",
        "outcome",
        "exit_code",
        "error_message",
        "row_version",
    ],
    skip_unchanged: true,
};

const EVENTS: TableShape = TableShape {
    table: "scaleout.event_messages",
    key: "event_id",
    fixed: &[
        "event_time",
        "event_ms",
        "event_kind",
        "message_type",
        "job_id",
        "attempt_number",
        "worker_agent_id",
        "log_sequence",
        "message",
    ],
    changing: &[],
    skip_unchanged: false,
};

/// The rows of every table a batch writes.
struct BatchRows {
    workers: Vec<Row>,
    removed_workers: Vec<Row>,
    jobs: Vec<Row>,
    tasks: Vec<Row>,
    attempts: Vec<Row>,
    events: Vec<Row>,
}

impl BatchRows {
    fn of(batch: &Batch) -> BatchRows {
        let version = Lit::Big(batch.version);
        let mut rows = BatchRows {
            workers: Vec::new(),
            removed_workers: Vec::new(),
            jobs: Vec::new(),
            tasks: Vec::new(),
            attempts: Vec::new(),
            events: Vec::new(),
        };
        for (id, worker) in &batch.workers {
            match worker {
                Some(w) => rows.workers.push(worker_row(*id, w, &version)),
                None => rows.removed_workers.push(Row {
                    key: Lit::text(id.to_string()),
                    fixed: Vec::new(),
                    changing: vec![Lit::Bit(true), version.clone()],
                }),
            }
        }
        for job in batch.jobs.values() {
            rows.jobs.push(job_row(job, &version));
            rows.tasks.push(task_row(job, &version));
            for (_, number) in batch.attempts.range((job.id, 0)..=(job.id, u32::MAX)) {
                if let Some(attempt) = job.attempts.iter().find(|a| a.number == *number) {
                    rows.attempts.push(attempt_row(job.id, attempt, &version));
                }
            }
        }
        rows.events = batch.events.iter().map(|e| event_row(e, batch)).collect();
        rows
    }

    /// The tables whose present keys are read, with their tags.
    fn tables(&self) -> [(i32, &TableShape, Vec<&Row>); 4] {
        [
            (
                WORKERS_TAG,
                &WORKERS,
                self.workers.iter().chain(&self.removed_workers).collect(),
            ),
            (JOBS_TAG, &JOBS, self.jobs.iter().collect()),
            (TASKS_TAG, &TASKS, self.tasks.iter().collect()),
            (ATTEMPTS_TAG, &ATTEMPTS, self.attempts.iter().collect()),
        ]
    }

    /// Every write of the batch, given the keys the tables hold.
    fn statements(&self, present: &Present, rows_per_statement: usize) -> Vec<String> {
        let per = rows_per_statement;
        let workers = present.of(WORKERS_TAG);
        let mut out = statements(&WORKERS, &self.workers, workers, true, per);
        out.extend(statements(
            &REMOVED_WORKERS,
            &self.removed_workers,
            workers,
            false,
            per,
        ));
        out.extend(statements(
            &JOBS,
            &self.jobs,
            present.of(JOBS_TAG),
            true,
            per,
        ));
        out.extend(statements(
            &TASKS,
            &self.tasks,
            present.of(TASKS_TAG),
            true,
            per,
        ));
        out.extend(statements(
            &ATTEMPTS,
            &self.attempts,
            present.of(ATTEMPTS_TAG),
            true,
            per,
        ));
        // Events are written once: those already there (a batch written again) are left.
        let shipped = present.of(EVENTS_TAG);
        let new: Vec<&Row> = self
            .events
            .iter()
            .filter(|row| !shipped.contains_key(&key_text(&row.key)))
            .collect();
        out.extend(insert_statements(&EVENTS, &new, per));
        out
    }
}

fn int(n: impl TryInto<i32>) -> Lit {
    Lit::Int(n.try_into().unwrap_or(i32::MAX).into())
}

fn worker_row(id: WorkerId, w: &Worker, version: &Lit) -> Row {
    let info = &w.info;
    let mut changing = vec![
        Lit::text(clip(&info.display_name, 256)),
        Lit::text(clip(&info.description, 256)),
        Lit::text(clip(&info.machine_name, 256)),
        Lit::text(clip(&info.tags.join(","), MAX_STRING)),
        int(info.max_tasks),
        Lit::text(clip(&info.version, 256)),
        Lit::Bit(w.enabled),
        Lit::Bit(w.draining),
        Lit::Bit(false),
    ];
    changing.extend(Lit::time(w.last_heartbeat_ms));
    changing.push(version.clone());
    Row {
        key: Lit::text(id.to_string()),
        fixed: Lit::time(w.registered_at_ms).into(),
        changing,
    }
}

fn command_line(job: &Job) -> String {
    clip(&job.spec.argv.join(" "), MAX_STRING)
}

fn job_row(job: &Job, version: &Lit) -> Row {
    let worker = job
        .lease
        .as_ref()
        .map(|l| l.worker)
        .or_else(|| job.attempts.last().map(|a| a.worker))
        .map(|w| w.to_string());
    let mut fixed = vec![
        Lit::text(clip(&job.spec.name, 256)),
        Lit::opt_text(job.spec.package.as_deref().map(|s| clip(s, MAX_STRING))),
        Lit::text(command_line(job)),
        Lit::Int(job.spec.priority.into()),
        int(job.spec.max_attempts),
    ];
    fixed.extend(Lit::time(job.created_at_ms));
    let mut changing = vec![
        Lit::text(job.state.as_str()),
        Lit::Int(status_code(job.state).into()),
        int(job.attempts.len()),
        Lit::Bit(job.cancel_requested),
        Lit::opt_text(worker),
    ];
    changing.extend(Lit::time(job.updated_at_ms));
    let started = job.attempts.first().map(|a| a.started_at_ms);
    changing.push(started.map_or(Lit::NoTime, Lit::Time));
    let ended = job.state.is_terminal().then_some(job.updated_at_ms);
    changing.push(ended.map_or(Lit::NoTime, Lit::Time));
    changing.push(version.clone());
    Row {
        key: Lit::Big(big(job.id)),
        fixed,
        changing,
    }
}

fn task_row(job: &Job, version: &Lit) -> Row {
    let input = clip(
        &job.spec
            .package
            .clone()
            .unwrap_or_else(|| job.spec.argv.join(" ")),
        MAX_STRING,
    );
    let mut fixed = vec![
        Lit::Big(big(job.id)),
        Lit::Int(0),
        Lit::text(input),
        int(job.spec.max_attempts),
        Lit::Bit(false),
        Lit::Int(job.spec.priority.into()),
    ];
    fixed.extend(Lit::time(job.created_at_ms));
    let mut changing = vec![
        int(job.attempts.len()),
        Lit::Int(status_code(job.state).into()),
    ];
    changing.extend(Lit::time(job.ready_at_ms));
    changing.extend(Lit::time(job.updated_at_ms));
    changing.push(Lit::opt_text(
        job.lease.as_ref().map(|l| l.worker.to_string()),
    ));
    changing.extend(Lit::opt_time(job.lease.as_ref().map(|l| l.expires_at_ms)));
    changing.push(Lit::Bit(
        job.state == JobState::Cancelled || job.cancel_requested,
    ));
    changing.extend(Lit::opt_time(job.attempts.last().map(|a| a.started_at_ms)));
    changing.push(version.clone());
    Row {
        key: Lit::Big(big(job.id)),
        fixed,
        changing,
    }
}

/// task_attempt_id: one column key (iridium does not enforce composite keys).
pub fn task_attempt_id(job: JobId, attempt: u32) -> i64 {
    big(job)
        .saturating_mul(1000)
        .saturating_add(i64::from(attempt))
}

fn attempt_row(job: JobId, attempt: &crate::queue::Attempt, version: &Lit) -> Row {
    let mut fixed = vec![
        Lit::Big(big(job)),
        int(attempt.number),
        Lit::text(attempt.worker.to_string()),
        Lit::Big(big(attempt.token)),
    ];
    fixed.extend(Lit::time(attempt.started_at_ms));
    let mut changing = Lit::opt_time(attempt.ended_at_ms).to_vec();
    changing.extend([
        Lit::opt_text(attempt.outcome.map(|o| o.as_str())),
        attempt.exit_code.map_or(Lit::Null, |c| Lit::Int(c.into())),
        Lit::opt_text((!attempt.error.is_empty()).then(|| clip(&attempt.error, MAX_STRING))),
        version.clone(),
    ]);
    Row {
        key: Lit::Big(task_attempt_id(job, attempt.number)),
        fixed,
        changing,
    }
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

fn event_row(event: &OutboxEvent, batch: &Batch) -> Row {
    let line = match &event.kind {
        EventKind::LogLine { job, sequence } => batch.lines.get(&(*job, *sequence)),
        _ => None,
    };
    let (kind, ty, attempt, worker, log_seq, message) = describe(event, line);
    let mut fixed = Lit::time(event.at_ms).to_vec();
    fixed.extend([
        Lit::text(kind),
        Lit::Int(ty.into()),
        event.kind.job().map_or(Lit::Null, |j| Lit::Big(big(j))),
        attempt.map_or(Lit::Null, int),
        Lit::opt_text(worker.map(|w| w.to_string())),
        log_seq.map_or(Lit::Null, |s| Lit::Big(big(s))),
        Lit::text(clip(&message, MAX_STRING)),
    ]);
    Row {
        key: Lit::Big(big(event.id)),
        fixed,
        changing: Vec::new(),
    }
}
