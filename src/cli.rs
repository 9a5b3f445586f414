//! What the CLI's commands do, and how they print: a table for people, `--output json` for
//! scripts. Exit codes (DESIGN.md): 0 ok, 1 operation failed, 2 usage or config error,
//! 3 cluster unavailable.

use std::path::Path;

use anyhow::anyhow;
use clap::{Args, ValueEnum};
use serde_json::json;

use crate::client::{Client, ClientError};
use crate::config::MasterConfig;
use crate::pb::v1::{self, ClusterStatusResponse, Job};
use crate::queue::{JobSpec, JobState};

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNAVAILABLE: u8 = 3;

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub error: anyhow::Error,
}

impl CliError {
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        CliError {
            code: EXIT_USAGE,
            error: error.into(),
        }
    }

    pub fn failed(error: impl Into<anyhow::Error>) -> Self {
        CliError {
            code: EXIT_FAILED,
            error: error.into(),
        }
    }
}

impl From<ClientError> for CliError {
    fn from(error: ClientError) -> Self {
        let code = match &error {
            ClientError::NoEndpoints | ClientError::BadEndpoint { .. } => EXIT_USAGE,
            ClientError::Unavailable { .. } => EXIT_UNAVAILABLE,
            ClientError::Rejected(status) if status.code() == tonic::Code::InvalidArgument => {
                EXIT_USAGE
            }
            ClientError::Rejected(_) => EXIT_FAILED,
        };
        CliError {
            code,
            error: error.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Options every client command takes.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Replica API addresses, any of them.
    #[arg(
        long,
        env = "SCALEOUT_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103"
    )]
    pub endpoints: Vec<String>,
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
    /// Read this replica's local state instead of a linearizable read through the leader.
    #[arg(long)]
    pub stale: bool,
    /// Give up after this many seconds (redirects and retries included).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout_secs: u64,
}

impl ClientArgs {
    fn client(&self) -> Result<Client, CliError> {
        Ok(Client::new(&self.endpoints)?
            .with_deadline(std::time::Duration::from_secs(self.timeout_secs)))
    }
}

#[derive(Debug, Clone, Args)]
pub struct JobSubmitArgs {
    #[arg(long)]
    pub name: Option<String>,
    /// How many times the job may run (SSIS retry_count + 1).
    #[arg(long, default_value_t = 1)]
    pub max_attempts: u32,
    /// A worker agent id allowed to run the job (repeatable); any worker when not given.
    #[arg(long = "worker")]
    pub workers: Vec<String>,
    /// A tag the worker must have (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Run time limit in seconds.
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Retrying with the same key returns the same job.
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
    #[command(flatten)]
    pub client: ClientArgs,
    /// The command and its arguments, after `--`.
    #[arg(last = true)]
    pub command: Vec<String>,
}

pub async fn master(config_path: &Path, overrides: &[String]) -> Result<(), CliError> {
    let config = MasterConfig::load(config_path, overrides).map_err(CliError::usage)?;
    crate::master::run(config, shutdown_signal())
        .await
        .map_err(|e| match e {
            crate::master::MasterError::Storage(_) | crate::master::MasterError::RaftConfig(_) => {
                CliError::usage(e)
            }
            other => CliError::failed(other),
        })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
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

pub fn spec_from_args(args: &JobSubmitArgs) -> Result<v1::JobSpec, CliError> {
    let spec = v1::JobSpec {
        argv: args.command.clone(),
        name: args.name.clone().unwrap_or_default(),
        env: pairs(&args.env, "--env")?.into_iter().collect(),
        params: pairs(&args.params, "--param")?.into_iter().collect(),
        package: args.package.clone().unwrap_or_default(),
        max_attempts: args.max_attempts,
        allowed_workers: args.workers.clone(),
        tags: args.tags.clone(),
        timeout_secs: args.timeout.unwrap_or(0),
        priority: args.priority,
    };
    // Same checks the replica makes, so a typo fails fast and names the field.
    crate::pb::spec_from_pb(spec.clone())
        .and_then(|domain: JobSpec| domain.validate())
        .map_err(CliError::usage)?;
    Ok(spec)
}

pub async fn job_submit(args: &JobSubmitArgs) -> Result<(), CliError> {
    let spec = spec_from_args(args)?;
    let client = args.client.client()?;
    let reply = client
        .submit_job(spec, args.idempotency_key.clone())
        .await?;
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
        Output::Table => print_jobs(&[job]),
    }
    Ok(())
}

pub async fn job_list(
    state: Option<&str>,
    limit: Option<u32>,
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
    let jobs = match limit {
        Some(limit) => client.list_jobs(state, 0, limit, args.stale).await?.jobs,
        None => client.list_all_jobs(state, args.stale).await?,
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

pub async fn cluster_status(args: &ClientArgs) -> Result<(), CliError> {
    let status = args.client()?.cluster_status().await?;
    match args.output {
        Output::Json => println!("{}", cluster_json(&status)),
        Output::Table => print_cluster(&status),
    }
    Ok(())
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
    })
}

pub fn cluster_json(status: &ClusterStatusResponse) -> serde_json::Value {
    json!({
        "leader_id": status.leader_id,
        "leader_api_addr": status.leader_api_addr,
        "term": status.term,
        "answered_by": status.answered_by,
        "replicas": status.replicas.iter().map(|r| json!({
            "id": r.id,
            "api_addr": r.api_addr,
            "peer_addr": r.peer_addr,
            "reachable": r.reachable,
            "error": r.error,
            "role": r.role,
            "voter": r.voter,
            "term": r.term,
            "leader_id": r.leader_id,
            "commit_index": r.commit_index,
            "applied_index": r.applied_index,
            "last_log_index": r.last_log_index,
        })).collect::<Vec<_>>(),
    })
}

/// Prints rows under a header, each column as wide as its widest cell.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
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
                spec.max_attempts.to_string(),
                truncate(&what, 60),
            ]
        })
        .collect();
    print_table(&["ID", "STATE", "NAME", "MAX ATTEMPTS", "COMMAND"], &rows);
}

fn print_cluster(status: &ClusterStatusResponse) {
    match status.leader_id {
        Some(id) => println!(
            "leader: replica {id} at {}  term: {}  (answered by replica {})",
            status.leader_api_addr, status.term, status.answered_by
        ),
        None => println!(
            "leader: none known (election under way)  term: {}  (answered by replica {})",
            status.term, status.answered_by
        ),
    }
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let rows: Vec<Vec<String>> = status
        .replicas
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.role.clone(),
                if r.reachable {
                    r.term.to_string()
                } else {
                    "-".into()
                },
                opt(r.commit_index),
                opt(r.applied_index),
                r.api_addr.clone(),
                r.peer_addr.clone(),
                r.error.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "ID", "ROLE", "TERM", "COMMIT", "APPLIED", "API", "PEER", "ERROR",
        ],
        &rows,
    );
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(max - 1).collect::<String>())
    }
}
