//! `scaleout job …`: submit, inspect, follow and cancel jobs.

use anyhow::anyhow;
use clap::{Args, Subcommand};
use serde_json::json;

use super::table::{print_table, truncate};
use super::{CliError, ClientArgs, Output, EXIT_FAILED};
use crate::client::ClientError;
use crate::pb::v1::{self, Job};
use crate::queue::{JobSpec, JobState};

#[derive(Subcommand)]
pub enum JobCommand {
    /// Submit a job: scaleout job submit [options] -- CMD [ARGS...]
    Submit(JobSubmitArgs),
    /// Show one job.
    Get {
        id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List jobs, optionally in one state.
    List {
        #[arg(long)]
        state: Option<String>,
        /// At most this many (all when not given).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
        #[command(flatten)]
        filter: JobListFilter,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a job's log lines.
    Logs {
        id: u64,
        /// Keep printing new lines until the job ends.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Wait until a job ends (for as long as it takes, unless --timeout); exit 0 if it
    /// succeeded, 1 otherwise. On a terminal, each change of state is shown as it happens.
    Wait {
        id: u64,
        /// Give up (exit 1) if the job has not ended after this many seconds. ETL jobs run for
        /// hours: by default the wait has no end.
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
        timeout: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a job: a queued one at once, a running one on its worker's next heartbeat.
    Cancel {
        id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

impl JobCommand {
    pub async fn run(self) -> Result<(), CliError> {
        match self {
            JobCommand::Submit(args) => job_submit(&args).await,
            JobCommand::Get { id, client } => job_get(id, &client).await,
            JobCommand::List {
                state,
                limit,
                filter,
                client,
            } => job_list(state.as_deref(), limit, &filter, &client).await,
            JobCommand::Cancel { id, client } => job_cancel(id, &client).await,
            JobCommand::Logs { id, follow, client } => job_logs(id, follow, &client).await,
            JobCommand::Wait {
                id,
                timeout,
                client,
            } => job_wait(id, timeout, &client).await,
        }
    }
}

/// `job list`'s filters besides the state.
#[derive(Debug, Clone, Default, Args)]
pub struct JobListFilter {
    /// Only jobs whose name contains this (any case).
    #[arg(long)]
    pub name: Option<String>,
    /// Only jobs that require this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// Only jobs with an attempt on this worker (an id prefix or a display name).
    #[arg(long)]
    pub worker: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct JobSubmitArgs {
    #[arg(long)]
    pub name: Option<String>,
    /// How many times the job may run (SSIS retry_count + 1), 1 to 100.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
    /// A worker allowed to run the job (repeatable): its id, a unique prefix of it or its display
    /// name; any worker when not given.
    #[arg(long = "worker")]
    pub workers: Vec<String>,
    /// A tag the worker must have (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Run time limit in seconds.
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Retrying with the same key returns the same job. Without one, the CLI makes a key and
    /// prints it when the outcome is unknown (exit 3), for a safe retry.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// A package parameter name=value (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// An environment variable NAME=VALUE for the command (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// An SSIS package (.dtsx) to run through the worker's executor.
    #[arg(long)]
    pub package: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub priority: i32,
    /// Wait this many seconds before a failed or expired attempt runs again.
    #[arg(long, value_name = "SECS")]
    pub retry_delay: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
    /// The command and its arguments, after `--`.
    #[arg(last = true)]
    pub command: Vec<String>,
}

fn pairs(items: &[String], what: &str) -> Result<Vec<(String, String)>, CliError> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| CliError::usage(anyhow!("{what} {item:?} is not NAME=VALUE")))
        })
        .collect()
}

/// The job spec the flags describe, checked as the replica will check it, and the `--worker`
/// values that are not whole worker ids (a prefix or a display name, resolved through the
/// registry by [`job_submit`]).
pub fn spec_from_args(args: &JobSubmitArgs) -> Result<(v1::JobSpec, Vec<String>), CliError> {
    let (ids, named): (Vec<String>, Vec<String>) = args
        .workers
        .iter()
        .map(|worker| worker.trim().to_string())
        .partition(|worker| uuid::Uuid::parse_str(worker).is_ok());
    let spec = v1::JobSpec {
        argv: args.command.clone(),
        name: args.name.clone().unwrap_or_default(),
        env: pairs(&args.env, "--env")?.into_iter().collect(),
        params: pairs(&args.params, "--param")?.into_iter().collect(),
        package: args.package.clone().unwrap_or_default(),
        max_attempts: args.max_attempts,
        allowed_workers: ids,
        tags: args.tags.clone(),
        timeout_secs: args.timeout.unwrap_or(0),
        priority: args.priority,
        retry_delay_secs: args.retry_delay.unwrap_or(0),
    };
    // Same checks the replica makes, so a typo fails fast and names the field.
    crate::pb::spec_from_pb(spec.clone())
        .and_then(|domain: JobSpec| domain.validate())
        .map_err(CliError::usage)?;
    Ok((spec, named))
}

pub async fn job_submit(args: &JobSubmitArgs) -> Result<(), CliError> {
    let (mut spec, named) = spec_from_args(args)?;
    let client = args.client.client()?;
    for worker in named {
        let id = super::workers::resolve_worker(&client, &worker).await?;
        spec.allowed_workers.push(id);
    }
    // Made here, not in the client, so that it can be shown when the outcome is unknown.
    let key = args
        .idempotency_key
        .clone()
        .filter(|key| !key.is_empty())
        .unwrap_or_else(|| format!("cli-{}", uuid::Uuid::new_v4()));
    let reply = match client.submit_job(spec, Some(key.clone())).await {
        Ok(reply) => reply,
        Err(error) => {
            let unknown = match &error {
                ClientError::Unavailable { .. } => true,
                ClientError::Rejected(status) => crate::client::outcome_unknown(status.code()),
                _ => false,
            };
            let mut failure = CliError::from(error);
            if unknown {
                failure.error = failure.error.context(format!(
                    "the submit's outcome is unknown: the job may have been created. Retry \
                     with the same idempotency key, which cannot create a second job: run the \
                     same command with --idempotency-key {key}"
                ));
            }
            return Err(failure);
        }
    };
    match args.client.output {
        Output::Json => println!(
            "{}",
            json!({"job_id": reply.job_id, "deduplicated": reply.deduplicated})
        ),
        Output::Table if reply.deduplicated => {
            println!(
                "job {} (already submitted with this idempotency key)",
                reply.job_id
            )
        }
        Output::Table => println!("job {} submitted", reply.job_id),
    }
    Ok(())
}

pub async fn job_get(id: u64, args: &ClientArgs) -> Result<(), CliError> {
    let job = args.client()?.get_job(id, args.stale).await?;
    match args.output {
        Output::Json => println!("{}", job_json(&job)),
        Output::Table => print_job_detail(&job),
    }
    Ok(())
}

pub async fn job_list(
    state: Option<&str>,
    limit: Option<u32>,
    filter: &JobListFilter,
    args: &ClientArgs,
) -> Result<(), CliError> {
    let state = state
        .map(|s| {
            s.parse::<JobState>()
                .map_err(|e| CliError::usage(anyhow!(e)))
        })
        .transpose()?
        .map(v1::JobState::from);
    let client = args.client()?;
    let request = v1::ListJobsRequest {
        state: state.unwrap_or(v1::JobState::Unspecified) as i32,
        stale: args.stale,
        name_contains: filter.name.clone().unwrap_or_default(),
        tag: filter.tag.clone().unwrap_or_default(),
        worker: filter.worker.clone().unwrap_or_default(),
        ..v1::ListJobsRequest::default()
    };
    let jobs = match limit {
        // A filtered page may come back short with more to scan: follow it to `limit` jobs.
        Some(limit) => {
            let mut request = v1::ListJobsRequest { limit, ..request };
            let mut jobs = Vec::new();
            loop {
                let page = client.list_jobs_where(request.clone()).await?;
                jobs.extend(page.jobs);
                if page.next_after_id == 0 || jobs.len() >= limit as usize {
                    jobs.truncate(limit as usize);
                    break jobs;
                }
                request.after_id = page.next_after_id;
                request.limit = limit - jobs.len() as u32;
            }
        }
        None => client.list_all_jobs_where(request).await?,
    };
    match args.output {
        Output::Json => {
            println!(
                "{}",
                serde_json::Value::Array(jobs.iter().map(job_json).collect())
            )
        }
        Output::Table => print_jobs(&jobs),
    }
    Ok(())
}

pub async fn job_cancel(id: u64, args: &ClientArgs) -> Result<(), CliError> {
    let job = args.client()?.cancel_job(id).await?;
    match args.output {
        Output::Json => println!("{}", job_json(&job)),
        Output::Table => println!("job {} is {}", job.id, state_name(job.state)),
    }
    Ok(())
}

/// Prints a job's log lines; with `follow`, keeps printing until the job ends.
pub async fn job_logs(id: u64, follow: bool, args: &ClientArgs) -> Result<(), CliError> {
    let client = args.client()?;
    let mut after = 0;
    let mut printed = 0;
    loop {
        let reply = client.get_job_logs(id, after, args.stale).await?;
        printed += reply.lines.len();
        for line in &reply.lines {
            after = after.max(line.sequence);
            let text = line.line.as_ref().map_or("", |l| l.text.as_str());
            let level = line
                .line
                .as_ref()
                .and_then(|l| v1::LogLevel::try_from(l.level).ok())
                .map_or("info", |l| match l {
                    v1::LogLevel::Verbose => "verbose",
                    v1::LogLevel::Warning => "warning",
                    v1::LogLevel::Error => "error",
                    _ => "info",
                });
            match args.output {
                Output::Json => println!(
                    "{}",
                    json!({
                        "sequence": line.sequence,
                        "attempt": line.attempt,
                        "at_ms": line.line.as_ref().map_or(0, |l| l.at_ms),
                        "level": level,
                        "text": text,
                        "late": line.late,
                    })
                ),
                Output::Table => {
                    let late = if line.late { " (late)" } else { "" };
                    println!("[attempt {}] {level}{late}: {text}", line.attempt)
                }
            }
        }
        if !follow || reply.complete {
            // Said on stderr, so a script reading the lines gets none and a person knows why.
            if printed == 0 && args.output == Output::Table {
                let why = match reply.complete {
                    true => "it ended without writing any",
                    false => "none yet; --follow waits for them",
                };
                eprintln!("job {id} has no log lines: {why}");
            }
            return Ok(());
        }
        if reply.lines.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}

/// Waits until the job ends (or `timeout_secs` pass); exits 0 if it succeeded, 1 otherwise.
/// Each call to the cluster has the client's own deadline, so a cluster that stays unavailable
/// still ends the wait (exit 3), with the job's last known state on the terminal.
pub async fn job_wait(
    id: u64,
    timeout_secs: Option<u64>,
    args: &ClientArgs,
) -> Result<(), CliError> {
    use std::io::IsTerminal;
    let client = args.client()?;
    let started = tokio::time::Instant::now();
    let deadline = timeout_secs.map(|secs| started + std::time::Duration::from_secs(secs));
    let show_progress = std::io::stderr().is_terminal();
    let mut shown: Option<String> = None;
    loop {
        let job = client.get_job(id, args.stale).await?;
        let state = crate::pb::state_from_pb(job.state).ok().flatten();
        if state.is_some_and(JobState::is_terminal) {
            match args.output {
                Output::Json => println!("{}", job_json(&job)),
                Output::Table => print_job_detail(&job),
            }
            return if state == Some(JobState::Succeeded) {
                Ok(())
            } else {
                Err(CliError::failed(anyhow!(
                    "job {id} ended {}",
                    state_name(job.state)
                )))
            };
        }
        let progress = wait_progress(&job);
        if show_progress && shown.as_ref() != Some(&progress) {
            eprintln!(
                "[{:>6.0} s] job {id}: {progress}",
                started.elapsed().as_secs_f64()
            );
            shown = Some(progress);
        }
        if deadline.is_some_and(|deadline| tokio::time::Instant::now() >= deadline) {
            return Err(CliError {
                code: EXIT_FAILED,
                error: anyhow!(
                    "job {id} is still {} after {} s (--timeout); it goes on: wait again, or \
                     cancel it with `scaleout job cancel {id}`",
                    state_name(job.state),
                    timeout_secs.unwrap_or_default()
                ),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// One line on where a job is: its state, and its attempt and worker once it has one.
fn wait_progress(job: &Job) -> String {
    match job.attempts.last() {
        Some(attempt) => format!(
            "{} (attempt {} on worker {})",
            state_name(job.state),
            attempt.number,
            attempt.worker_id
        ),
        None => state_name(job.state).to_string(),
    }
}

pub(super) fn format_ms(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let age = crate::wall_time::now_ms().saturating_sub(ms);
    format!("{:.1} s ago", age as f64 / 1000.0)
}

/// When an attempt started, in UTC to the second (`-` when unknown).
fn started_at(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    super::screen::format_utc_with(ms, "Z")
}

/// How long an attempt ran (`… so far` while it runs), from the leader's clock readings.
fn attempt_duration(attempt: &v1::Attempt, now_ms: u64) -> String {
    if attempt.started_at_ms == 0 {
        return "-".into();
    }
    let (end, running) = match attempt.ended_at_ms {
        0 => (now_ms, true),
        ended => (ended, false),
    };
    let secs = end.saturating_sub(attempt.started_at_ms) as f64 / 1000.0;
    let shown = if secs < 60.0 {
        format!("{secs:.1} s")
    } else {
        let whole = secs as u64;
        format!("{}h{:02}m{:02}s", whole / 3600, whole / 60 % 60, whole % 60)
    };
    if running {
        format!("{shown} so far")
    } else {
        shown
    }
}

/// An attempt's state as the job's own says it: an attempt still under way is `picked_up`
/// until its worker confirmed the lease and started the task, then `running`, exactly when the
/// job is; an ended one is its outcome.
fn attempt_state(attempt: &v1::Attempt, job: &Job) -> &'static str {
    match v1::AttemptOutcome::try_from(attempt.outcome) {
        Ok(v1::AttemptOutcome::Succeeded) => "succeeded",
        Ok(v1::AttemptOutcome::Failed) => "failed",
        Ok(v1::AttemptOutcome::Expired) => "expired",
        Ok(v1::AttemptOutcome::Cancelled) => "cancelled",
        _ if job.state == v1::JobState::PickedUp as i32 => "picked_up",
        _ => "running",
    }
}

fn attempts_json(job: &Job) -> serde_json::Value {
    serde_json::Value::Array(
        job.attempts
            .iter()
            .map(|a| {
                json!({
                    "number": a.number,
                    "worker_id": a.worker_id,
                    "lease_token": a.lease_token,
                    "started_at_ms": a.started_at_ms,
                    "ended_at_ms": a.ended_at_ms,
                    "outcome": attempt_state(a, job),
                    "exit_code": a.exit_code,
                    "error": a.error,
                })
            })
            .collect(),
    )
}

/// One job with its attempts.
pub fn print_job_detail(job: &Job) {
    print_jobs(std::slice::from_ref(job));
    if job.attempts.is_empty() {
        return;
    }
    println!();
    let rows: Vec<Vec<String>> = job
        .attempts
        .iter()
        .map(|a| {
            vec![
                a.number.to_string(),
                a.worker_id.clone(),
                a.lease_token.to_string(),
                attempt_state(a, job).to_string(),
                started_at(a.started_at_ms),
                attempt_duration(a, crate::wall_time::now_ms()),
                a.exit_code.map_or("-".into(), |c| c.to_string()),
                a.error.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "ATTEMPT", "WORKER", "LEASE", "STATE", "STARTED", "DURATION", "EXIT", "ERROR",
        ],
        &rows,
    );
}

pub fn state_name(state: i32) -> &'static str {
    crate::pb::state_from_pb(state)
        .ok()
        .flatten()
        .map_or("unknown", JobState::as_str)
}

pub fn job_json(job: &Job) -> serde_json::Value {
    let spec = job.spec.clone().unwrap_or_default();
    json!({
        "id": job.id,
        "state": state_name(job.state),
        "name": spec.name,
        "argv": spec.argv,
        "package": spec.package,
        "params": spec.params,
        "env": spec.env,
        "max_attempts": spec.max_attempts,
        "workers": spec.allowed_workers,
        "tags": spec.tags,
        "timeout_secs": spec.timeout_secs,
        "priority": spec.priority,
        "idempotency_key": job.idempotency_key,
        "created_at_ms": job.created_at_ms,
        "updated_at_ms": job.updated_at_ms,
        "created_index": job.created_index,
        "retry_delay_secs": spec.retry_delay_secs,
        "cancel_requested": job.cancel_requested,
        "ready_at_ms": job.ready_at_ms,
        "attempts": attempts_json(job),
    })
}

fn print_jobs(jobs: &[Job]) {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|job| {
            let spec = job.spec.clone().unwrap_or_default();
            let what = if spec.package.is_empty() {
                spec.argv.join(" ")
            } else {
                spec.package
            };
            vec![
                job.id.to_string(),
                state_name(job.state).to_string(),
                spec.name,
                format!("{}/{}", job.attempts.len(), spec.max_attempts),
                truncate(&what, 60),
            ]
        })
        .collect();
    print_table(&["ID", "STATE", "NAME", "ATTEMPTS", "COMMAND"], &rows);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_show_their_start_in_utc_and_how_long_they_ran() {
        assert_eq!(started_at(1_795_669_200_123), "2026-11-26 05:00:00Z");
        assert_eq!(started_at(0), "-");
        let attempt = |started_at_ms, ended_at_ms| v1::Attempt {
            started_at_ms,
            ended_at_ms,
            ..Default::default()
        };
        assert_eq!(attempt_duration(&attempt(1_000, 13_300), 99_000), "12.3 s");
        assert_eq!(
            attempt_duration(&attempt(1_000, 0), 4_000),
            "3.0 s so far",
            "a running attempt"
        );
        assert_eq!(attempt_duration(&attempt(0, 7_200_000 + 65_000), 0), "-");
        assert_eq!(
            attempt_duration(&attempt(1_000, 1_000 + 3_725_000), 0),
            "1h02m05s"
        );
    }

    #[test]
    fn an_attempt_under_way_is_in_the_state_of_its_job() {
        let under_way = v1::Attempt::default();
        let job = |state: v1::JobState| Job {
            state: state as i32,
            ..Default::default()
        };
        assert_eq!(
            attempt_state(&under_way, &job(v1::JobState::PickedUp)),
            "picked_up"
        );
        assert_eq!(
            attempt_state(&under_way, &job(v1::JobState::Running)),
            "running"
        );
        let expired = v1::Attempt {
            outcome: v1::AttemptOutcome::Expired as i32,
            ..Default::default()
        };
        assert_eq!(
            attempt_state(&expired, &job(v1::JobState::PickedUp)),
            "expired"
        );
    }
}
