//! What the CLI's commands do, and how they print: a table for people, `--output json` for
//! scripts. Exit codes (DESIGN.md): 0 ok, 1 operation failed, 2 usage or config error,
//! 3 cluster unavailable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, ValueEnum};
use serde_json::json;

use crate::client::{Client, ClientError};
use crate::config::MasterConfig;
use crate::pb::v1::{self, ClusterStatusResponse, Job};
use crate::queue::{JobSpec, JobState};
use crate::tls::{TlsMaterial, TlsPaths};
use crate::transport::Security;

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
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

/// How a client proves who it is: a certificate (mutual TLS), or nothing on an `insecure`
/// cluster.
#[derive(Debug, Clone, Args)]
pub struct ClientTlsArgs {
    /// A directory made by `scaleout certs init`: uses ca.pem, IDENTITY.pem and
    /// IDENTITY-key.pem from it.
    #[arg(long, env = "SCALEOUT_TLS_DIR", value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Which certificate of --tls-dir to use: operator, admin (or any NAME with NAME.pem in it).
    #[arg(long, env = "SCALEOUT_IDENTITY", default_value = "operator")]
    pub identity: String,
    /// The CA certificate (PEM) that issued the replicas' certificates (overrides --tls-dir).
    #[arg(long, env = "SCALEOUT_TLS_CA", value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// This client's certificate (PEM), with an operator or admin role (overrides --tls-dir).
    #[arg(long, env = "SCALEOUT_TLS_CERT", value_name = "PEM")]
    pub cert: Option<PathBuf>,
    /// This client's private key (PEM) (overrides --tls-dir).
    #[arg(long, env = "SCALEOUT_TLS_KEY", value_name = "PEM")]
    pub key: Option<PathBuf>,
    /// Plaintext without a certificate, for a cluster run with `insecure = true`.
    #[arg(long, env = "SCALEOUT_CLIENT_INSECURE", conflicts_with_all = ["tls_dir", "ca", "cert", "key"])]
    pub insecure: bool,
}

impl ClientTlsArgs {
    /// The security these flags ask for; a clear usage error when they name no certificate or
    /// a bad one.
    pub fn security(&self) -> Result<Security, CliError> {
        if self.insecure {
            return Ok(Security::Insecure);
        }
        let from_dir = self
            .tls_dir
            .as_ref()
            .map(|dir| TlsPaths::in_dir(dir, &self.identity));
        let pick = |explicit: &Option<PathBuf>, from_dir: Option<PathBuf>, flag: &str| {
            explicit.clone().or(from_dir).ok_or_else(|| {
                CliError::usage(anyhow!(
                    "no client certificate: --{flag} is missing; pass --tls-dir DIR (made by \
                     `scaleout certs init --dir DIR`), or --ca, --cert and --key (or \
                     SCALEOUT_TLS_DIR / SCALEOUT_TLS_CA, _CERT, _KEY), or --insecure for a \
                     cluster running with insecure = true"
                ))
            })
        };
        let paths = TlsPaths {
            ca: pick(&self.ca, from_dir.as_ref().map(|p| p.ca.clone()), "ca")?,
            cert: pick(
                &self.cert,
                from_dir.as_ref().map(|p| p.cert.clone()),
                "cert",
            )?,
            key: pick(&self.key, from_dir.as_ref().map(|p| p.key.clone()), "key")?,
        };
        let material = TlsMaterial::load(paths).map_err(CliError::usage)?;
        Ok(Security::MutualTls(material))
    }
}

impl ClientArgs {
    fn client(&self) -> Result<Client, CliError> {
        Ok(Client::new(&self.endpoints, self.tls.security()?)?
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

pub async fn master(config_path: &Path, overrides: &[String]) -> Result<(), CliError> {
    let config = MasterConfig::load(config_path, overrides).map_err(CliError::usage)?;
    crate::master::run(config, shutdown_signal())
        .await
        .map_err(|e| match e {
            crate::master::MasterError::Storage(_)
            | crate::master::MasterError::RaftConfig(_)
            | crate::master::MasterError::Tls(_)
            | crate::master::MasterError::Bootstrap(crate::master::BootstrapError::LostState {
                ..
            }) => CliError::usage(e),
            other => CliError::failed(other),
        })
}

pub async fn worker(config_path: &Path, overrides: &[String]) -> Result<(), CliError> {
    let config =
        crate::worker::WorkerConfig::load(config_path, overrides).map_err(CliError::usage)?;
    crate::worker::run(config, shutdown_signal())
        .await
        .map_err(|e| CliError {
            code: e.exit_code(),
            error: e.into(),
        })
}

/// `certs init`: writes the files and lists them with their roles.
pub fn certs_init(options: &crate::certs::CertsInit) -> Result<(), CliError> {
    let report = crate::certs::init(options).map_err(CliError::usage)?;
    println!(
        "CA: {} (key {})",
        report.ca_cert.display(),
        report.ca_key.display()
    );
    let rows: Vec<Vec<String>> = report
        .issued
        .iter()
        .map(|issued| {
            vec![
                issued.role.to_string(),
                issued.cert.display().to_string(),
                issued.key.display().to_string(),
            ]
        })
        .collect();
    print_table(&["ROLE", "CERTIFICATE", "KEY (0600)"], &rows);
    println!("valid until {}", report.not_after);
    Ok(())
}

/// The [ssisdb] section of a replica's config, which must name a connection string.
fn ssisdb_settings(
    config_path: &Path,
    overrides: &[String],
) -> Result<crate::config::SsisdbSettings, CliError> {
    let config = MasterConfig::load(config_path, overrides).map_err(CliError::usage)?;
    if !config.ssisdb.enabled() {
        return Err(CliError::usage(anyhow!(
            "{} has no ssisdb.connection_string: no SSISDB is configured, so events stay on \
             the replicas; add an [ssisdb] section to ship them",
            config_path.display()
        )));
    }
    Ok(config.ssisdb)
}

/// `scaleout ssisdb check`: exit 0 when everything is in place, 1 (with what to fix) otherwise.
/// `scaleout data-dir adopt`: a restored copy becomes this replica's own (see
/// [`crate::raft::adopt_restored_copy`]).
pub fn data_dir_adopt(config_path: &Path, overrides: &[String]) -> Result<(), CliError> {
    let config = MasterConfig::load(config_path, overrides).map_err(CliError::usage)?;
    let identity =
        crate::raft::adopt_restored_copy(&config.data_dir, config.id).map_err(CliError::usage)?;
    println!(
        "{} is now replica {}'s data dir (storage id {})",
        config.data_dir.display(),
        identity.node_id,
        identity.storage_id
    );
    Ok(())
}

pub async fn ssisdb_check(config_path: &Path, overrides: &[String]) -> Result<(), CliError> {
    let settings = ssisdb_settings(config_path, overrides)?;
    let report = crate::ssisdb::check(&settings).await;
    println!("{report}");
    if report.is_ok() {
        Ok(())
    } else {
        Err(CliError::failed(anyhow!(
            "SSISDB is not ready for scaleout (see above)"
        )))
    }
}

/// `scaleout ssisdb install-schema`.
pub async fn ssisdb_install_schema(
    config_path: &Path,
    overrides: &[String],
) -> Result<(), CliError> {
    let settings = ssisdb_settings(config_path, overrides)?;
    crate::ssisdb::install_schema(&settings)
        .await
        .map_err(CliError::failed)?;
    println!("schema scaleout is installed; `scaleout ssisdb check` verifies it");
    Ok(())
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
        retry_delay_secs: args.retry_delay.unwrap_or(0),
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

/// Prints a job's log lines; with `follow`, keeps printing until the job ends.
pub async fn job_logs(id: u64, follow: bool, args: &ClientArgs) -> Result<(), CliError> {
    let client = args.client()?;
    let mut after = 0;
    loop {
        let reply = client.get_job_logs(id, after, args.stale).await?;
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
            return Ok(());
        }
        if reply.lines.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}

/// Waits until the job ends; exits 0 if it succeeded, 1 otherwise.
pub async fn job_wait(id: u64, args: &ClientArgs) -> Result<(), CliError> {
    let client = args.client()?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(args.timeout_secs);
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
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError {
                code: EXIT_FAILED,
                error: anyhow!(
                    "job {id} is still {} after {} s (raise --timeout-secs to wait longer)",
                    state_name(job.state),
                    args.timeout_secs
                ),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// `workers list`.
pub async fn workers_list(args: &ClientArgs) -> Result<(), CliError> {
    let workers = args.client()?.list_workers(args.stale).await?;
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::Value::Array(workers.iter().map(worker_json).collect())
        ),
        Output::Table => {
            let rows: Vec<Vec<String>> = workers
                .iter()
                .map(|w| {
                    let info = w.info.clone().unwrap_or_default();
                    let state = match (w.enabled, w.draining) {
                        (false, _) => "disabled",
                        (true, true) => "draining",
                        (true, false) => "enabled",
                    };
                    vec![
                        info.worker_id,
                        info.display_name,
                        if w.online { "online" } else { "offline" }.to_string(),
                        state.to_string(),
                        format!("{}/{}", w.running_jobs.len(), info.max_tasks),
                        info.tags.join(","),
                        format_ms(w.last_heartbeat_ms),
                    ]
                })
                .collect();
            print_table(
                &[
                    "ID",
                    "NAME",
                    "STATUS",
                    "STATE",
                    "RUNNING",
                    "TAGS",
                    "LAST HEARTBEAT",
                ],
                &rows,
            );
        }
    }
    Ok(())
}

/// `workers enable|disable|drain ID`.
pub async fn workers_set(
    id: &str,
    action: v1::WorkerAction,
    args: &ClientArgs,
) -> Result<(), CliError> {
    let worker = args.client()?.set_worker_state(id, action).await?;
    match args.output {
        Output::Json => println!("{}", worker_json(&worker)),
        Output::Table => {
            let state = match (worker.enabled, worker.draining) {
                (false, _) => "disabled",
                (true, true) => "draining",
                (true, false) => "enabled",
            };
            println!("worker {id} is {state}");
        }
    }
    Ok(())
}

/// `workers remove ID`.
pub async fn workers_remove(id: &str, args: &ClientArgs) -> Result<(), CliError> {
    args.client()?.remove_worker(id).await?;
    if args.output == Output::Table {
        println!("worker {id} removed");
    } else {
        println!("{}", json!({"removed": id}));
    }
    Ok(())
}

pub fn worker_json(worker: &v1::Worker) -> serde_json::Value {
    let info = worker.info.clone().unwrap_or_default();
    json!({
        "id": info.worker_id,
        "display_name": info.display_name,
        "description": info.description,
        "machine_name": info.machine_name,
        "tags": info.tags,
        "max_tasks": info.max_tasks,
        "version": info.version,
        "enabled": worker.enabled,
        "draining": worker.draining,
        "online": worker.online,
        "registered_at_ms": worker.registered_at_ms,
        "last_heartbeat_ms": worker.last_heartbeat_ms,
        "running_jobs": worker.running_jobs,
        "cpu_percent": worker.cpu_percent,
        "free_memory_mb": worker.free_memory_mb,
    })
}

fn format_ms(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let age = crate::wall_time::now_ms().saturating_sub(ms);
    format!("{:.1} s ago", age as f64 / 1000.0)
}

fn outcome_name(outcome: i32) -> &'static str {
    match v1::AttemptOutcome::try_from(outcome) {
        Ok(v1::AttemptOutcome::Succeeded) => "succeeded",
        Ok(v1::AttemptOutcome::Failed) => "failed",
        Ok(v1::AttemptOutcome::Expired) => "expired",
        Ok(v1::AttemptOutcome::Cancelled) => "cancelled",
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
                    "outcome": outcome_name(a.outcome),
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
                outcome_name(a.outcome).to_string(),
                a.exit_code.map_or("-".into(), |c| c.to_string()),
                a.error.clone(),
            ]
        })
        .collect();
    print_table(
        &["ATTEMPT", "WORKER", "LEASE", "OUTCOME", "EXIT", "ERROR"],
        &rows,
    );
}

pub async fn cluster_status(args: &ClientArgs) -> Result<(), CliError> {
    let status = args.client()?.cluster_status().await?;
    match args.output {
        Output::Json => println!("{}", cluster_json(&status)),
        Output::Table => print_cluster(&status),
    }
    Ok(())
}

/// `scaleout status`: the client's options and how often to redraw.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Redraw every SECS seconds (2 when SECS is left out) until Ctrl-C.
    #[arg(
        long,
        value_name = "SECS",
        num_args = 0..=1,
        default_missing_value = "2",
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub watch: Option<u64>,
    /// With --watch: stop after this many frames (for scripts and tests).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub frames: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The shortest time a `--watch` frame may wait for the cluster: a member status that does not
/// come takes the answering replica 1.5 s to give up on.
const MIN_FRAME_DEADLINE: Duration = Duration::from_secs(3);
/// How long a frame waits for the leader it was told about before it keeps a follower's answer.
const LEADER_DEADLINE: Duration = Duration::from_secs(3);

/// Where the status frames come from: ClusterStatus from the leader when there is one (its job
/// counts are the freshest and it asked every member itself), else from whichever replica
/// answers; ListWorkers through the leader, or from any replica while there is none.
struct FrameSource {
    endpoints: Client,
    security: Security,
    deadline: Duration,
    stale: bool,
    /// The leader's API address and a client of it alone, so later frames go straight to it.
    leader: Option<(String, Client)>,
}

impl FrameSource {
    fn new(args: &ClientArgs, watch_secs: Option<u64>) -> Result<FrameSource, CliError> {
        let security = args.tls.security()?;
        let mut deadline = Duration::from_secs(args.timeout_secs);
        if let Some(secs) = watch_secs {
            // While the cluster is down, a frame must not freeze the screen much longer than
            // the interval.
            deadline = deadline.min(Duration::from_secs(secs).max(MIN_FRAME_DEADLINE));
        }
        Ok(FrameSource {
            endpoints: Client::new(&args.endpoints, security.clone())?.with_deadline(deadline),
            security,
            deadline,
            stale: args.stale,
            leader: None,
        })
    }

    /// One frame, and the error that kept every replica from answering, if one did.
    async fn take(&mut self) -> (crate::status_screen::Frame, Option<ClientError>) {
        let (cluster, error) = match self.cluster_status().await {
            Ok(status) => (Ok(status), None),
            Err(error) => (Err(error.to_string()), Some(error)),
        };
        let workers = match &cluster {
            Ok(status) => {
                // Without a leader a linearizable read would only wait out the deadline.
                let stale = self.stale || status.leader_id.is_none();
                self.endpoints
                    .list_workers(stale)
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(_) => Err("not asked: no replica answered".to_string()),
        };
        let frame = crate::status_screen::Frame {
            taken_at_ms: crate::wall_time::now_ms(),
            cluster,
            workers,
            endpoints: self.endpoints.endpoints().to_vec(),
        };
        (frame, error)
    }

    async fn cluster_status(&mut self) -> Result<ClusterStatusResponse, ClientError> {
        let from_leader =
            |status: &ClusterStatusResponse| status.leader_id == Some(status.answered_by);
        if let Some((_, leader)) = &self.leader {
            match leader.cluster_status().await {
                Ok(status) if from_leader(&status) => return Ok(status),
                // It died or stepped down: find the cluster through the endpoints again.
                _ => self.leader = None,
            }
        }
        let status = self.endpoints.cluster_status().await?;
        if status.leader_id.is_none() || status.leader_api_addr.is_empty() {
            return Ok(status);
        }
        let leader = Client::new(&[status.leader_api_addr.as_str()], self.security.clone())?
            .with_deadline(self.deadline.min(LEADER_DEADLINE));
        if from_leader(&status) {
            self.leader = Some((status.leader_api_addr.clone(), leader));
            return Ok(status);
        }
        match leader.cluster_status().await {
            Ok(own) if from_leader(&own) => {
                self.leader = Some((status.leader_api_addr.clone(), leader));
                Ok(own)
            }
            // The follower's view is still a whole screen, if a little behind.
            _ => Ok(status),
        }
    }
}

/// Writes a frame to standard output; `Ok(false)` when the reader has gone away (`| head`).
fn print_frame(
    frame: &crate::status_screen::Frame,
    output: Output,
    layout: crate::status_screen::Layout,
    terminal: bool,
) -> Result<bool, CliError> {
    match crate::status_screen::write_frame(
        &mut std::io::stdout().lock(),
        frame,
        output,
        layout,
        terminal,
    ) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(CliError::failed(anyhow!(
            "cannot write to standard output: {e}"
        ))),
    }
}

/// `scaleout status [--watch [SECS]] [--frames N]`: the cluster, its workers and its queue on
/// one screen. Without --watch it exits 3 when no replica answers.
pub async fn status(args: &StatusArgs) -> Result<(), CliError> {
    use std::io::IsTerminal;
    if let (None, Some(frames @ 2..)) = (args.watch, args.frames) {
        return Err(CliError::usage(anyhow!(
            "--frames {frames} needs --watch: without it, status draws one frame"
        )));
    }
    let mut source = FrameSource::new(&args.client, args.watch)?;
    let output = args.client.output;
    let layout = crate::status_screen::Layout {
        max_lines: crate::status_screen::SCREEN_LINES,
        every_secs: args.watch,
    };
    let terminal = std::io::stdout().is_terminal();
    let Some(every_secs) = args.watch else {
        let (frame, error) = source.take().await;
        print_frame(&frame, output, layout, terminal)?;
        return error.map_or(Ok(()), |e| Err(e.into()));
    };
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let mut ticks = tokio::time::interval(Duration::from_secs(every_secs));
    // A frame slower than the interval delays the next one rather than bunching them up.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drawn = 0;
    loop {
        tokio::select! {
            () = &mut stop => return Ok(()),
            _ = ticks.tick() => {}
        }
        let frame = tokio::select! {
            () = &mut stop => return Ok(()),
            (frame, _) = source.take() => frame,
        };
        if !print_frame(&frame, output, layout, terminal)? {
            return Ok(());
        }
        drawn += 1;
        if args.frames.is_some_and(|frames| drawn >= frames) {
            return Ok(());
        }
    }
}

/// `cluster add-replica ID --api ADDR --peer ADDR`.
pub async fn cluster_add_replica(
    id: u64,
    api: &str,
    peer: &str,
    catch_up: Duration,
    args: &ClientArgs,
) -> Result<(), CliError> {
    let added = args.client()?.add_replica(id, api, peer, catch_up).await?;
    match args.output {
        Output::Json => println!(
            "{}",
            json!({"added": id, "voters": added.voters, "log_index": added.log_index})
        ),
        Output::Table if added.log_index == 0 => {
            println!(
                "replica {id} is already a voter; voters: {:?}",
                added.voters
            )
        }
        Output::Table => println!(
            "replica {id} caught up and is a voter (entry {}); voters: {:?}",
            added.log_index, added.voters
        ),
    }
    Ok(())
}

/// `cluster remove-replica ID`.
pub async fn cluster_remove_replica(id: u64, args: &ClientArgs) -> Result<(), CliError> {
    let removed = args.client()?.remove_replica(id).await?;
    match args.output {
        Output::Json => println!(
            "{}",
            json!({"removed": id, "voters": removed.voters, "log_index": removed.log_index})
        ),
        Output::Table if removed.log_index == 0 => println!(
            "replica {id} is not a member; nothing changed (voters: {:?})",
            removed.voters
        ),
        Output::Table => {
            println!(
                "replica {id} removed (entry {}); voters: {:?}; stop its process now",
                removed.log_index, removed.voters
            );
            if removed.voters.len() % 2 == 0 {
                println!(
                    "note: {} voters tolerate no more failures than {}; add one back or remove \
                     another",
                    removed.voters.len(),
                    removed.voters.len() - 1
                );
            }
        }
    }
    Ok(())
}

/// `scaleout chaos`: exit 0 when every invariant held, 1 when one broke.
pub async fn chaos(
    minutes: u64,
    seed: Option<u64>,
    faults: &[String],
    keep_dir: Option<PathBuf>,
    output: Output,
) -> Result<(), CliError> {
    use crate::chaos::faults::FaultKind;
    let kinds = faults
        .iter()
        .map(|name| {
            FaultKind::ALL
                .into_iter()
                .find(|k| k.name() == name.as_str())
                .ok_or_else(|| {
                    let known: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                    CliError::usage(anyhow::anyhow!(
                        "unknown fault {name:?}; the faults are {}",
                        known.join(", ")
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let binary = std::env::current_exe().map_err(CliError::failed)?;
    let seed = seed.unwrap_or_else(rand::random);
    let mut options =
        crate::chaos::ChaosOptions::new(binary, seed, Duration::from_secs(minutes * 60));
    options.faults = kinds;
    options.keep_dir = keep_dir;
    // Stopped by Ctrl-C or SIGTERM, the run is dropped: its processes are killed and its
    // power-cut file systems unmounted, rather than left behind.
    let report = tokio::select! {
        report = crate::chaos::run(options) => report.map_err(CliError::failed)?,
        () = shutdown_signal() => {
            return Err(CliError::failed(anyhow::anyhow!("the chaos run was stopped")));
        }
    };
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_value(&report).map_err(CliError::failed)?
        ),
        Output::Table => println!("{report}"),
    }
    if report.ok() {
        Ok(())
    } else {
        Err(CliError::failed(anyhow::anyhow!(
            "invariants broken (seed {seed}): {}",
            report.violations().join("; ")
        )))
    }
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

pub fn cluster_json(status: &ClusterStatusResponse) -> serde_json::Value {
    json!({
        "leader_id": status.leader_id,
        "leader_api_addr": status.leader_api_addr,
        "term": status.term,
        "answered_by": status.answered_by,
        "outbox": {
            "events": status.outbox_events,
            "shipped_up_to": status.outbox_shipped_up_to,
            "dropped_log_events": status.outbox_dropped_log_events,
        },
        "jobs": crate::status_screen::job_counts_json(status.job_counts.as_ref()),
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
    for line in table_lines(header, rows) {
        println!("{line}");
    }
}

/// Rows under a header as lines, each column as wide as its widest cell.
pub fn table_lines(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    std::iter::once(line(&header))
        .chain(rows.iter().map(|row| line(row)))
        .collect()
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
    println!(
        "outbox (replica {}): {} events waiting for SSISDB, shipped up to event {}, {} log line events left out",
        status.answered_by,
        status.outbox_events,
        status.outbox_shipped_up_to,
        status.outbox_dropped_log_events
    );
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(max - 1).collect::<String>())
    }
}
