//! Worker agent configuration: the TOML file given to `scaleout worker --config FILE`.
//!
//! Keys follow SSIS's `WorkerSettings.config` where they fit (snake_case, intervals in
//! milliseconds), with our defaults where they differ.
//!
//! # Example
//! ```toml
//! endpoints = ["10.0.0.1:7101", "10.0.0.2:7101", "10.0.0.3:7101"]  # any replicas' api addresses
//! state_dir = "data/worker-1"          # agent_id and the spool
//! tags = ["etl", "linux"]
//! max_task_count = 4
//!
//! [tls]                                # mutual TLS; or `insecure = true` instead
//! ca = "certs/ca.pem"
//! cert = "certs/worker-6f1c2b9e-5d1a-4a67-9d0e-2f4b8c3a7e10.pem"
//! key = "certs/worker-6f1c2b9e-5d1a-4a67-9d0e-2f4b8c3a7e10-key.pem"
//! ```
//!
//! # Keys
//! Required: `endpoints`, `state_dir`, and either `[tls]` or `insecure = true`. Everything else
//! has a default.
//!
//! | key | SSIS WorkerSettings | default | meaning |
//! |-----|---------------------|---------|---------|
//! | `agent_id` | AgentId | generated | The worker's persistent identity, a UUID. When absent, one is generated on first start and kept in `<state_dir>/agent_id`. With TLS the id is the one in the certificate (`scaleout://worker/<uuid>`): `agent_id`, if set, and `<state_dir>/agent_id`, if present, must equal it, and the file is written with it on first start. |
//! | `display_name` | DisplayName | machine name | Shown by `scaleout workers list`. |
//! | `description` | Description | empty | |
//! | `endpoints` | MasterEndpoint | (required) | The replicas' `api` addresses (host:port); any of them will do, leader redirects are followed. |
//! | `tags` | (catalog tags) | `[]` | A job that requires tags runs only on workers that have all of them. |
//! | `max_task_count` | MaxTaskCount | 10 | Tasks run at once (1..=1000). |
//! | `agent_heartbeat_interval_ms` | AgentHeartbeatInterval | 5000 | Worker heartbeat. SSIS uses 60 s; we report more often so an offline worker shows sooner. |
//! | `task_heartbeat_interval_ms` | TaskHeartbeatInterval | 10000 | Lease renewal of every running task, in one call. Keep it well under the master's `workers.lease_interval_ms`. |
//! | `heartbeat_error_tolerance_ms` | HeartbeatErrorTolerance | derived from the lease | A task is killed once this long has passed since its last successful renewal was *sent*. By default it is derived from the master's lease interval (learned at registration): lease − `task_heartbeat_interval_ms` − a tenth of the lease (at least half the lease), so the task is dead before the master can expire its lease and run it again elsewhere. A value longer than the lease is refused when the agent registers (exit 2) unless `allow_overlapping_attempts = true`. |
//! | `allow_overlapping_attempts` | | false | Accept a `heartbeat_error_tolerance_ms` longer than the master's lease: a worker cut off from the cluster then keeps running a task after the master has given it to another worker, and the package's side effects can happen twice at once. |
//! | `task_request_max_cpu` | TaskRequestMaxCPU | 70.0 | No new task while CPU use is above this percentage. |
//! | `task_request_min_memory_mb` | TaskRequestMinMemory | 100 | No new task while free memory is below this many MiB. |
//! | `tasks_root_folder` | TasksRootFolder | `<state_dir>/tasks` | Each attempt runs in `<tasks_root_folder>/<job_id>-<attempt>`, created fresh. |
//! | `state_dir` | (ExecutionLogCacheFolder) | (required) | Holds `agent_id` and `spool/`, the on-disk queue of logs and results not yet delivered. Created when the worker starts, if missing, with `tasks_root_folder` (loading the config creates nothing); both must be writable. |
//! | `executor` | (ISServerExec) | `["/opt/ssis/bin/dtexec", "/F", "{package}"]` | How a `package` job runs: `{package}` is replaced by the package path, then `/Par` `name;value` is appended for each parameter, then the job's argv, if any. |
//! | `insecure` | | `false` | Plaintext gRPC without authentication, on a trusted network only. Exactly one of `insecure = true` and `[tls]` must be given. |
//! | `tls.ca` | | | PEM file of the CA that issued every scaleout certificate. |
//! | `tls.cert` | | | PEM file of this worker's certificate, with the URI SAN `scaleout://worker/<uuid>`; the uuid is the agent id. |
//! | `tls.key` | | | PEM file of the private key of `tls.cert`. All three are required when `[tls]` is given. Development certificates: `scaleout certs init --dir certs --workers N`. |
//! | `acquire_wait_ms` | | 10000 | How long one AcquireTasks long-poll waits for work (the master caps it). |
//! | `metrics_listen` | | none (off) | Socket address of the plain-HTTP endpoint serving `/metrics` (Prometheus text format), `/healthz` (the process is alive) and `/readyz` (registered with the cluster and in touch with its leader), e.g. `0.0.0.0:9465`. |
//! | `noop_executor` | | false | Benchmarks only: tasks succeed at once without starting a process (`scaleout bench capacity`). |
//! | `noop_log_lines` | | 0 | Benchmarks only: with `noop_executor`, each task first sends this many log lines of `noop_log_line_bytes` bytes (`scaleout bench capacity`). |
//! | `noop_log_line_bytes` | | 100 | Benchmarks only: the length of each of those lines (at most 16384). |
//!
//! Relative paths in the file are relative to the config file's directory; relative paths given
//! with `--set` are relative to the current directory.
//!
//! # Overrides
//! The replica's layering engine (`crate::config::Layers`), with the worker's keys. Sources,
//! in increasing precedence: the file; environment variables `SCALEOUT_WORKER_<KEY>` (the key
//! upper-cased, `.` written `__`: `SCALEOUT_WORKER_MAX_TASK_COUNT=4`,
//! `SCALEOUT_WORKER_TLS__CERT=FILE`); `--set key=value` (repeatable, later wins). The value is
//! read as a TOML literal (number, boolean, array, quoted string) when it parses as one, else as
//! plain text; string keys always take the raw text, and list keys (`endpoints`, `tags`,
//! `executor`) also take a comma-separated list (`--set endpoints=a:7101,b:7101`). The `[tls]`
//! keys are set as `--set tls.cert=FILE`. Relative paths from a variable or `--set` are relative
//! to the current directory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Value;
use uuid::Uuid;

use super::agent_id;
pub use super::agent_id::{AgentIdSource, AGENT_ID_FILE};
use crate::config::{
    check_addr, check_bounds, check_dir_possible, keys_of, opt, origin_note, probe_dir,
    process_env, resolve_path, resolve_tls, tls_choice_error, Bound, ConfigError, ConfigText,
    Field, Kind, Layered, Layers, RawTls, TLS,
};
use crate::tls::TlsPaths;

/// Every key of the file.
const KEYS: &[Field] = &[
    opt("agent_id", Kind::Str),
    opt("display_name", Kind::Str),
    opt("description", Kind::Str),
    opt("endpoints", Kind::List),
    opt("tags", Kind::List),
    opt("max_task_count", Kind::Int),
    opt("agent_heartbeat_interval_ms", Kind::Int),
    opt("task_heartbeat_interval_ms", Kind::Int),
    opt("heartbeat_error_tolerance_ms", Kind::Int),
    opt("allow_overlapping_attempts", Kind::Bool),
    opt("task_request_max_cpu", Kind::Float),
    opt("task_request_min_memory_mb", Kind::Int),
    opt("tasks_root_folder", Kind::Str),
    opt("state_dir", Kind::Str),
    opt("executor", Kind::List),
    opt("insecure", Kind::Bool),
    opt("acquire_wait_ms", Kind::Int),
    opt("noop_executor", Kind::Bool),
    opt("noop_log_lines", Kind::Int),
    opt("noop_log_line_bytes", Kind::Int),
    opt("metrics_listen", Kind::Str),
    opt("tls", Kind::Table(TLS)),
];

/// Prefix of the environment variables that override a worker's keys:
/// `SCALEOUT_WORKER_MAX_TASK_COUNT=4`, `SCALEOUT_WORKER_TLS__CERT=/etc/scaleout/worker.pem`.
pub const WORKER_ENV_PREFIX: &str = "SCALEOUT_WORKER_";

/// The worker's keys, `SCALEOUT_WORKER_*` variables and `--set` forms, on the replica's
/// layering engine.
const LAYERS: Layers = Layers {
    schema: KEYS,
    env_prefix: WORKER_ENV_PREFIX,
    // The CLI's: where `scaleout worker` reads its file.
    ignored_env: &["SCALEOUT_WORKER_CONFIG"],
    foreign_env: &[],
    every_env_is_a_key: true,
    example: "max_task_count=4",
    key_examples: "max_task_count or tls.cert",
};

/// A worker's validated configuration. Paths are absolute; `agent_id` is settled (and kept in
/// the state dir by [`WorkerConfig::prepare`], the start-up step, when it must be).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    pub agent_id: Uuid,
    pub agent_id_source: AgentIdSource,
    /// The file it was loaded from (`<inline config>` for text), named in start-up errors.
    pub config_file: PathBuf,
    pub display_name: String,
    pub description: String,
    /// This host's name (reported as the machine name; the default display name).
    pub machine_name: String,
    pub endpoints: Vec<String>,
    pub tags: Vec<String>,
    pub max_task_count: u32,
    pub agent_heartbeat_interval_ms: u64,
    pub task_heartbeat_interval_ms: u64,
    /// `None`: derived from the master's lease at registration ([`kill_after`]).
    pub heartbeat_error_tolerance_ms: Option<u64>,
    pub allow_overlapping_attempts: bool,
    pub task_request_max_cpu: f64,
    pub task_request_min_memory_mb: u64,
    pub tasks_root_folder: PathBuf,
    pub state_dir: PathBuf,
    pub executor: Vec<String>,
    /// Plaintext gRPC without authentication; exclusive with `tls`.
    pub insecure: bool,
    /// `[tls]`: the CA, certificate and key for mutual TLS; absolute. `None` only with
    /// `insecure`. The certificate's worker id is `agent_id`.
    pub tls: Option<TlsPaths>,
    pub acquire_wait_ms: u32,
    /// `/metrics`, `/healthz` and `/readyz` (plain HTTP); `None`: not served.
    pub metrics_listen: Option<String>,
    /// Benchmarks only: every task succeeds at once without starting a process, so a
    /// benchmark measures dispatch, not process start-up.
    pub noop_executor: bool,
    /// Benchmarks only: log lines each no-op task sends first, and their length.
    pub noop_log_lines: u32,
    pub noop_log_line_bytes: u32,
}

/// How long after the last successful renewal was sent a task is killed, for a master whose
/// lease interval is `lease_ms`: the configured `heartbeat_error_tolerance_ms`, or else lease −
/// renewal interval − a tenth of the lease (never under half the lease). The master expires a
/// lease no sooner than a lease interval after the renewal was sent, so a task killed by then
/// never runs beside its next attempt.
pub fn kill_after(config: &WorkerConfig, lease_ms: u64) -> Duration {
    let derived = lease_ms
        .saturating_sub(config.task_heartbeat_interval_ms)
        .saturating_sub(lease_ms / 10)
        .max(lease_ms / 2);
    Duration::from_millis(config.heartbeat_error_tolerance_ms.unwrap_or(derived))
}

/// Why this worker refuses the master's lease interval: a tolerance longer than the lease lets
/// a cut-off worker run a task beside its next attempt, unless the operator accepted that.
pub fn check_tolerance(config: &WorkerConfig, lease_ms: u64) -> Result<(), String> {
    match config.heartbeat_error_tolerance_ms {
        Some(tolerance)
            if lease_ms > 0 && tolerance > lease_ms && !config.allow_overlapping_attempts =>
        {
            Err(format!(
                "heartbeat_error_tolerance_ms is {tolerance} ms, longer than the master's lease \
                 interval ({lease_ms} ms): a worker cut off from the cluster would keep running \
                 a task after the master has given it to another worker, and the package's side \
                 effects would happen twice. Leave heartbeat_error_tolerance_ms out (it is then \
                 derived from the lease), set it below {lease_ms}, or set \
                 allow_overlapping_attempts = true to accept duplicate side effects"
            ))
        }
        _ => Ok(()),
    }
}

impl WorkerConfig {
    /// The start-up step (loading writes nothing): creates `state_dir` and `tasks_root_folder`
    /// and checks a file can be written in each, then keeps a generated or certificate agent id
    /// in `<state_dir>/agent_id`. [`Worker::start`](super::Worker::start) calls it first.
    pub fn prepare(&self) -> Result<(), WorkerConfigError> {
        let invalid = |key: &str, message: String| WorkerConfigError::Invalid {
            path: self.config_file.clone(),
            key: key.to_string(),
            origin: None,
            message,
        };
        probe_dir(&self.state_dir).map_err(|e| invalid("state_dir", e))?;
        probe_dir(&self.tasks_root_folder).map_err(|e| invalid("tasks_root_folder", e))?;
        agent_id::keep(&self.state_dir, self.agent_id, self.agent_id_source)
            .map_err(|e| invalid("agent_id", e))
    }

    pub fn agent_heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.agent_heartbeat_interval_ms)
    }
    pub fn task_heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.task_heartbeat_interval_ms)
    }
    pub fn acquire_wait(&self) -> Duration {
        Duration::from_millis(u64::from(self.acquire_wait_ms))
    }
    /// Where undelivered logs and results wait.
    pub fn spool_dir(&self) -> PathBuf {
        self.state_dir.join("spool")
    }
}

/// The file as written; `None` means "use the default".
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    agent_id: Option<String>,
    display_name: Option<String>,
    description: Option<String>,
    endpoints: Option<Vec<String>>,
    tags: Option<Vec<String>>,
    max_task_count: Option<u32>,
    agent_heartbeat_interval_ms: Option<u64>,
    task_heartbeat_interval_ms: Option<u64>,
    heartbeat_error_tolerance_ms: Option<u64>,
    allow_overlapping_attempts: Option<bool>,
    task_request_max_cpu: Option<f64>,
    task_request_min_memory_mb: Option<u64>,
    tasks_root_folder: Option<String>,
    state_dir: Option<String>,
    executor: Option<Vec<String>>,
    insecure: Option<bool>,
    tls: Option<RawTls>,
    acquire_wait_ms: Option<u32>,
    noop_executor: Option<bool>,
    noop_log_lines: Option<u32>,
    noop_log_line_bytes: Option<u32>,
    metrics_listen: Option<String>,
}

/// Why a worker configuration could not be loaded. Every message names the file and, where
/// there is one, the key, and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum WorkerConfigError {
    #[error("cannot read worker config file {}: {source}; check the path given to --config", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse worker config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error(
        "unknown key `{key}` in {}{}: expected one of {}; fix the spelling or remove it",
        path.display(),
        origin_note(.origin),
        expected_keys()
    )]
    UnknownKey {
        path: PathBuf,
        key: String,
        /// The `--set` flag the key came from, if not the file.
        origin: Option<String>,
    },
    #[error("invalid `{key}` in {}{}: {message}", path.display(), origin_note(.origin))]
    Invalid {
        path: PathBuf,
        key: String,
        origin: Option<String>,
        message: String,
    },
    #[error("cannot apply `{arg}` to {}: {message}", path.display())]
    Override {
        path: PathBuf,
        arg: String,
        message: String,
    },
}

impl WorkerConfigError {
    /// The key the error is about, when it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            WorkerConfigError::UnknownKey { key, .. } | WorkerConfigError::Invalid { key, .. } => {
                Some(key)
            }
            _ => None,
        }
    }
}

fn expected_keys() -> String {
    known_keys()
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The layering engine's errors, as a worker's loader words them.
impl From<ConfigError> for WorkerConfigError {
    fn from(error: ConfigError) -> Self {
        match error {
            ConfigError::Read { path, source } => WorkerConfigError::Read { path, source },
            ConfigError::Parse { path, message } => WorkerConfigError::Parse { path, message },
            ConfigError::UnknownKey {
                path, key, origin, ..
            } => WorkerConfigError::UnknownKey { path, key, origin },
            // The engine's message already says where an overridden value came from.
            ConfigError::Invalid { path, key, message } => WorkerConfigError::Invalid {
                path,
                key,
                origin: None,
                message,
            },
            ConfigError::Override { path, arg, message } => {
                WorkerConfigError::Override { path, arg, message }
            }
        }
    }
}

impl WorkerConfig {
    /// Reads `path`, applies `SCALEOUT_WORKER_*` environment variables and then `overrides`
    /// (`"key=value"`, as given to `--set`), fills in defaults, validates, and settles the agent
    /// id (generating one on first start). Writes nothing: see [`WorkerConfig::prepare`].
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, WorkerConfigError> {
        build(&ConfigText::read(path)?, overrides, process_env())
    }

    /// Like [`WorkerConfig::load`] for text, without environment variables; relative paths in
    /// `text` are relative to `base_dir`.
    pub fn from_toml_str(
        text: &str,
        base_dir: &Path,
        overrides: &[String],
    ) -> Result<Self, WorkerConfigError> {
        build(&ConfigText::inline(text, base_dir), overrides, [])
    }
}

/// Parse, merge overrides, check keys, deserialize, fill defaults, validate, settle the id;
/// nothing written.
fn build(
    source: &ConfigText,
    overrides: &[String],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<WorkerConfig, WorkerConfigError> {
    let (text, file, base_dir) = (&source.text, source.file.as_path(), &source.base_dir);
    // Absolute from the start, so task folders and the spool do not depend on the cwd later.
    let base_dir: PathBuf = if base_dir.is_absolute() {
        base_dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(base_dir))
            .unwrap_or_else(|_| base_dir.to_path_buf())
    }
    .components()
    .filter(|c| !matches!(c, std::path::Component::CurDir))
    .collect();
    let base_dir = base_dir.as_path();
    let Layered { tree, origins } = LAYERS.layer(text, file, overrides, env)?;
    let origin_of = |key: &str| origins.get(key);
    let raw: RawConfig = Value::Table(tree)
        .try_into()
        .map_err(|e: toml::de::Error| {
            let message = e.to_string().trim_end().to_string();
            // toml names the key as "...\nin `key`"; lift it into the message's key slot.
            match message.rsplit_once("\nin `") {
                Some((what, key)) => {
                    let key = key.trim_end_matches('`').to_string();
                    WorkerConfigError::Invalid {
                        path: file.to_path_buf(),
                        origin: origin_of(&key),
                        key,
                        message: what.to_string(),
                    }
                }
                None => WorkerConfigError::Parse {
                    path: file.to_path_buf(),
                    message,
                },
            }
        })?;

    let invalid = |key: &str, message: String| WorkerConfigError::Invalid {
        path: file.to_path_buf(),
        key: key.to_string(),
        origin: origin_of(key),
        message,
    };
    let resolve = |key: &str, value: &str| resolve_path(value, origin_of(key).is_some(), base_dir);

    let state_dir = match raw.state_dir.as_deref().map(str::trim) {
        Some(dir) if !dir.is_empty() => resolve("state_dir", dir),
        _ => {
            return Err(invalid(
                "state_dir",
                "is missing or empty; name a directory for the agent id and the spool, e.g. \
                 state_dir = \"/var/lib/scaleout/worker\""
                    .into(),
            ))
        }
    };
    let tasks_root_folder = match raw.tasks_root_folder.as_deref().map(str::trim) {
        Some(dir) if !dir.is_empty() => resolve("tasks_root_folder", dir),
        Some(_) => {
            return Err(invalid(
                "tasks_root_folder",
                "must not be empty; leave it out for <state_dir>/tasks".into(),
            ))
        }
        None => state_dir.join("tasks"),
    };
    let insecure = raw.insecure.unwrap_or(false);
    let tls = resolve_tls(
        raw.tls,
        insecure,
        &origins,
        base_dir,
        "worker",
        "worker-<uuid>",
    )
    .map_err(|(key, message)| invalid(key, message))?;
    let machine_name = machine_name();
    let config = WorkerConfig {
        // Settled below, once the certificate is read.
        agent_id: Uuid::nil(),
        agent_id_source: AgentIdSource::Configured,
        config_file: file.to_path_buf(),
        display_name: raw
            .display_name
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| machine_name.clone()),
        description: raw.description.unwrap_or_default(),
        machine_name,
        endpoints: raw
            .endpoints
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.trim().to_string())
            .collect(),
        tags: raw
            .tags
            .unwrap_or_default()
            .into_iter()
            .map(|t| t.trim().to_string())
            .collect(),
        max_task_count: raw.max_task_count.unwrap_or(10),
        agent_heartbeat_interval_ms: raw.agent_heartbeat_interval_ms.unwrap_or(5_000),
        task_heartbeat_interval_ms: raw.task_heartbeat_interval_ms.unwrap_or(10_000),
        heartbeat_error_tolerance_ms: raw.heartbeat_error_tolerance_ms,
        allow_overlapping_attempts: raw.allow_overlapping_attempts.unwrap_or(false),
        task_request_max_cpu: raw.task_request_max_cpu.unwrap_or(70.0),
        task_request_min_memory_mb: raw.task_request_min_memory_mb.unwrap_or(100),
        tasks_root_folder,
        state_dir,
        executor: raw.executor.unwrap_or_else(|| {
            ["/opt/ssis/bin/dtexec", "/F", "{package}"]
                .map(String::from)
                .to_vec()
        }),
        insecure,
        tls,
        acquire_wait_ms: raw.acquire_wait_ms.unwrap_or(10_000),
        noop_executor: raw.noop_executor.unwrap_or(false),
        noop_log_lines: raw.noop_log_lines.unwrap_or(0),
        noop_log_line_bytes: raw.noop_log_line_bytes.unwrap_or(100).min(16_384),
        metrics_listen: raw
            .metrics_listen
            .map(|addr| addr.trim().to_string())
            .filter(|addr| !addr.is_empty()),
    };
    check(&config).map_err(|(key, message)| invalid(key, message))?;
    // The certificate, when there is one, decides the agent id.
    let certificate = match &config.tls {
        Some(paths) => Some((
            agent_id::of_certificate(paths).map_err(|(key, e)| invalid(key, e))?,
            paths.cert.as_path(),
        )),
        None => None,
    };
    // Loading writes nothing: whether the directories can be made and written is checked at
    // start-up (`prepare`); here only what can be seen without writing.
    check_dir_possible(&config.state_dir).map_err(|e| invalid("state_dir", e))?;
    check_dir_possible(&config.tasks_root_folder).map_err(|e| invalid("tasks_root_folder", e))?;
    let (agent_id, agent_id_source) =
        agent_id::settle(certificate, raw.agent_id.as_deref(), &config.state_dir)
            .map_err(|e| invalid("agent_id", e))?;
    Ok(WorkerConfig {
        agent_id,
        agent_id_source,
        ..config
    })
}

/// The validation rules, returning (key, message) of the first violation.
fn check(c: &WorkerConfig) -> Result<(), (&'static str, String)> {
    if c.endpoints.is_empty() {
        return Err((
            "endpoints",
            "no replica endpoints given; list the replicas' api addresses, e.g. endpoints = \
             [\"10.0.0.1:7101\", \"10.0.0.2:7101\", \"10.0.0.3:7101\"]"
                .into(),
        ));
    }
    let mut seen = BTreeSet::new();
    for endpoint in &c.endpoints {
        check_addr(endpoint, false).map_err(|e| ("endpoints", e))?;
        if !seen.insert(endpoint.to_ascii_lowercase()) {
            return Err(("endpoints", format!("`{endpoint}` is listed twice")));
        }
    }
    if c.display_name.is_empty() {
        return Err((
            "display_name",
            "must not be empty; leave it out to use the machine name".into(),
        ));
    }
    let mut tags = BTreeSet::new();
    for tag in &c.tags {
        if tag.is_empty() {
            return Err(("tags", "a tag is empty".into()));
        }
        if !tags.insert(tag.as_str()) {
            return Err(("tags", format!("tag `{tag}` is listed twice")));
        }
    }
    check_bounds([
        Bound::new(
            "max_task_count",
            c.max_task_count,
            1..=1000,
            "SSIS default: 10",
        ),
        Bound::new(
            "agent_heartbeat_interval_ms",
            c.agent_heartbeat_interval_ms,
            100..=3_600_000,
            "1 h; e.g. 5000",
        ),
        Bound::new(
            "task_heartbeat_interval_ms",
            c.task_heartbeat_interval_ms,
            100..=3_600_000,
            "1 h; e.g. 10000, well under the master's lease interval",
        ),
        Bound::new(
            "acquire_wait_ms",
            c.acquire_wait_ms,
            0..=60_000,
            "1 min; e.g. 10000",
        ),
    ])?;
    if let Some(tolerance) = c
        .heartbeat_error_tolerance_ms
        .filter(|t| *t <= c.task_heartbeat_interval_ms)
    {
        return Err((
            "heartbeat_error_tolerance_ms",
            format!(
                "is {tolerance} ms but must be greater than task_heartbeat_interval_ms ({} ms), \
                 or every task is killed before its first renewal; leave it out to derive it \
                 from the master's lease",
                c.task_heartbeat_interval_ms
            ),
        ));
    }
    if !(c.task_request_max_cpu > 0.0 && c.task_request_max_cpu <= 100.0) {
        return Err((
            "task_request_max_cpu",
            format!(
                "is {} but must be a percentage above 0 and at most 100; e.g. 70.0",
                c.task_request_max_cpu
            ),
        ));
    }
    if c.executor.is_empty() || c.executor[0].trim().is_empty() {
        return Err((
            "executor",
            "must start with a program, e.g. [\"/opt/ssis/bin/dtexec\", \"/F\", \"{package}\"]"
                .into(),
        ));
    }
    if !c.executor.iter().any(|arg| arg.contains("{package}")) {
        return Err((
            "executor",
            "has no `{package}` placeholder, so a package job could not name its package; \
             e.g. [\"/opt/ssis/bin/dtexec\", \"/F\", \"{package}\"]"
                .into(),
        ));
    }
    if let Some(violation) = tls_choice_error(c.insecure, c.tls.is_some(), "worker") {
        return Err(violation);
    }
    if let Some(addr) = &c.metrics_listen {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            return Err((
                "metrics_listen",
                format!(
                    "`{addr}` is not a socket address to listen on; e.g. 0.0.0.0:9465 or \
                     127.0.0.1:9465"
                ),
            ));
        }
    }
    Ok(())
}

/// This host's name: /etc/hostname, else the kernel's, else `hostname`, else "localhost".
pub fn machine_name() -> String {
    let from_file = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    from_file("/etc/hostname")
        .or_else(|| from_file("/proc/sys/kernel/hostname"))
        .or_else(|| {
            std::process::Command::new("hostname")
                .output()
                .ok()
                .filter(|out| out.status.success())
                .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_string())
}

/// Every key a worker's file accepts, as docs/configuration.md names them (`[tls]` keys as
/// `tls.ca`, `tls.cert`, `tls.key`). `tests/deploy_files.rs` checks the reference against it.
pub fn known_keys() -> Vec<String> {
    keys_of(KEYS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
endpoints = ["127.0.0.1:7101", "127.0.0.1:7102"]
state_dir = "state"
insecure = true
"#;

    /// Loads `text` and runs the start-up step, as a worker does when it starts.
    fn parse(dir: &Path, text: &str, sets: &[&str]) -> Result<WorkerConfig, WorkerConfigError> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let config = WorkerConfig::from_toml_str(text, dir, &sets)?;
        config.prepare()?;
        Ok(config)
    }

    #[test]
    fn loading_writes_nothing_and_the_start_up_step_keeps_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let c = WorkerConfig::from_toml_str(MINIMAL, dir.path(), &[]).unwrap();
        assert_eq!(c.agent_id_source, AgentIdSource::Generated);
        assert!(
            !dir.path().join("state").exists(),
            "loading created the state dir"
        );
        c.prepare().unwrap();
        assert!(c.tasks_root_folder.is_dir());
        let stored = std::fs::read_to_string(dir.path().join("state/agent_id")).unwrap();
        assert_eq!(stored.trim(), c.agent_id.to_string());
        let again = WorkerConfig::from_toml_str(MINIMAL, dir.path(), &[]).unwrap();
        assert_eq!(
            (again.agent_id, again.agent_id_source),
            (c.agent_id, AgentIdSource::StateDir)
        );

        // Another worker's start wrote the file meanwhile: refused, not a change of identity.
        let late = WorkerConfig::from_toml_str(MINIMAL, dir.path(), &[]).unwrap();
        let racing = WorkerConfig {
            agent_id: Uuid::new_v4(),
            agent_id_source: AgentIdSource::Generated,
            ..late
        };
        let err = racing.prepare().unwrap_err();
        assert_eq!(err.key(), Some("agent_id"), "{err}");
        assert!(err.to_string().contains("its own"), "{err}");

        // A directory that cannot be made is found at load only when it is plain to see.
        std::fs::write(dir.path().join("a-file"), "x").unwrap();
        let text = MINIMAL.replace("\"state\"", "\"a-file/state\"");
        let err = WorkerConfig::from_toml_str(&text, dir.path(), &[]).unwrap_err();
        assert_eq!(err.key(), Some("state_dir"), "{err}");
    }

    #[test]
    fn defaults_follow_ssis_worker_settings() {
        let dir = tempfile::tempdir().unwrap();
        let c = parse(dir.path(), MINIMAL, &[]).unwrap();
        assert_eq!(c.state_dir, dir.path().join("state"));
        assert_eq!(c.tasks_root_folder, dir.path().join("state/tasks"));
        assert!(c.tasks_root_folder.is_dir());
        assert_eq!(c.max_task_count, 10);
        assert_eq!(c.agent_heartbeat_interval_ms, 5_000);
        assert_eq!(c.task_heartbeat_interval_ms, 10_000);
        assert_eq!(c.heartbeat_error_tolerance_ms, None);
        assert!(!c.allow_overlapping_attempts);
        assert_eq!(c.task_request_max_cpu, 70.0);
        assert_eq!(c.task_request_min_memory_mb, 100);
        assert_eq!(c.acquire_wait_ms, 10_000);
        assert_eq!(c.executor, vec!["/opt/ssis/bin/dtexec", "/F", "{package}"]);
        assert_eq!(c.display_name, c.machine_name);
        assert!(!c.display_name.is_empty());
        assert_eq!(c.description, "");
        assert!(c.tags.is_empty());
        assert!(!c.agent_id.is_nil());
        assert_eq!(c.spool_dir(), dir.path().join("state/spool"));
    }

    #[test]
    fn agent_id_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = parse(dir.path(), MINIMAL, &[]).unwrap().agent_id;
        let second = parse(dir.path(), MINIMAL, &[]).unwrap().agent_id;
        assert_eq!(first, second, "the id survives a restart");
        let stored = std::fs::read_to_string(dir.path().join("state/agent_id")).unwrap();
        assert_eq!(stored.trim(), first.to_string());

        // An explicit id wins and does not touch the file.
        let explicit = "6f1c2b9e-5d1a-4a67-9d0e-2f4b8c3a7e10";
        let c = parse(
            dir.path(),
            &format!("{MINIMAL}agent_id = \"{explicit}\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(c.agent_id.to_string(), explicit);
        let stored = std::fs::read_to_string(dir.path().join("state/agent_id")).unwrap();
        assert_eq!(stored.trim(), first.to_string());

        // A damaged file is an error naming it, not a silent new identity.
        std::fs::write(dir.path().join("state/agent_id"), "garbage\n").unwrap();
        let err = parse(dir.path(), MINIMAL, &[]).unwrap_err();
        assert_eq!(err.key(), Some("agent_id"), "{err}");
        assert!(err.to_string().contains("agent_id"), "{err}");
    }

    #[test]
    fn each_mistake_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let file_in_the_way = dir.path().join("a-file");
        std::fs::write(&file_in_the_way, "x").unwrap();
        let cases: Vec<(String, &str, &str)> = vec![
            (
                format!("{MINIMAL}max_tasks = 3\n"),
                "max_tasks",
                "unknown key",
            ),
            (
                MINIMAL.replace("insecure = true", "insecure = false"),
                "tls",
                "no [tls] section",
            ),
            (
                MINIMAL.replace("insecure = true", ""),
                "tls",
                "insecure = true",
            ),
            (
                format!("{MINIMAL}tls = \"certs\"\n"),
                "tls",
                "must be a table",
            ),
            (
                format!("{MINIMAL}[tls]\ncertificate = \"c.pem\"\n"),
                "tls.certificate",
                "unknown key",
            ),
            (
                MINIMAL.replace("state_dir = \"state\"", ""),
                "state_dir",
                "missing",
            ),
            (MINIMAL.replace(":7102", ""), "endpoints", "host:port"),
            (MINIMAL.replace(":7102", ":7101"), "endpoints", "twice"),
            (
                MINIMAL.replace("127.0.0.1:7102", "http://a:1"),
                "endpoints",
                "scheme",
            ),
            (
                MINIMAL.replace("127.0.0.1:7102", "a:0"),
                "endpoints",
                "port",
            ),
            (
                MINIMAL.replace(
                    "endpoints = [\"127.0.0.1:7101\", \"127.0.0.1:7102\"]",
                    "endpoints = []",
                ),
                "endpoints",
                "no replica",
            ),
            (
                format!("{MINIMAL}max_task_count = 0\n"),
                "max_task_count",
                "between 1 and 1000",
            ),
            (
                format!("{MINIMAL}max_task_count = \"ten\"\n"),
                "max_task_count",
                "must be a whole number",
            ),
            (
                format!("{MINIMAL}max_task_count = -1\n"),
                "max_task_count",
                "0 or more",
            ),
            (
                // The schema says a whole number; the field's type says how large.
                format!("{MINIMAL}max_task_count = 5000000000\n"),
                "max_task_count",
                "u32",
            ),
            (
                format!("{MINIMAL}task_heartbeat_interval_ms = 50\n"),
                "task_heartbeat_interval_ms",
                "between",
            ),
            (
                format!("{MINIMAL}heartbeat_error_tolerance_ms = 10000\n"),
                "heartbeat_error_tolerance_ms",
                "greater than",
            ),
            (
                format!("{MINIMAL}task_request_max_cpu = 150.0\n"),
                "task_request_max_cpu",
                "percentage",
            ),
            (
                format!("{MINIMAL}executor = [\"/bin/run\"]\n"),
                "executor",
                "{package}",
            ),
            (format!("{MINIMAL}executor = []\n"), "executor", "program"),
            (
                format!("{MINIMAL}agent_id = \"not-a-uuid\"\n"),
                "agent_id",
                "UUID",
            ),
            (
                format!("{MINIMAL}agent_id = \"11111111-1111-1111-1111-111111111111\"\n"),
                "agent_id",
                "reserved",
            ),
            (format!("{MINIMAL}tags = [\"a\", \"a\"]\n"), "tags", "twice"),
            (
                format!("{MINIMAL}acquire_wait_ms = 120000\n"),
                "acquire_wait_ms",
                "60000",
            ),
            (
                format!("{MINIMAL}display_name = \" \"\n"),
                "display_name",
                "empty",
            ),
            (
                MINIMAL.replace(
                    "\"state\"",
                    &format!("\"{}\"", file_in_the_way.join("sub").display()),
                ),
                "state_dir",
                "cannot create",
            ),
        ];
        for (text, key, fragment) in cases {
            let err = parse(dir.path(), &text, &[]).unwrap_err();
            let msg = err.to_string();
            assert_eq!(err.key(), Some(key), "{msg}");
            assert!(msg.contains(&format!("`{key}`")), "{key}: {msg}");
            assert!(msg.contains(fragment), "{key}: {fragment:?} not in {msg}");
            assert!(msg.contains("<inline config>"), "{msg}");
        }
        let err = parse(dir.path(), "endpoints = [", &[]).unwrap_err();
        assert!(matches!(err, WorkerConfigError::Parse { .. }), "{err}");
        let err = WorkerConfig::load(&dir.path().join("absent.toml"), &[]).unwrap_err();
        assert!(matches!(err, WorkerConfigError::Read { .. }), "{err}");
        assert!(err.to_string().contains("absent.toml"), "{err}");
    }

    #[test]
    fn overrides_apply_and_are_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let c = parse(
            dir.path(),
            MINIMAL,
            &[
                "max_task_count=4",
                "max_task_count=5",
                "display_name=123",
                "endpoints=a:1, b:2",
                "tags=[\"x\",\"y\"]",
                "task_request_max_cpu=90",
                "executor=[\"/bin/echo\",\"{package}\"]",
            ],
        )
        .unwrap();
        assert_eq!(c.max_task_count, 5, "later --set wins");
        assert_eq!(c.display_name, "123", "string keys take the raw text");
        assert_eq!(c.endpoints, vec!["a:1", "b:2"]);
        assert_eq!(c.tags, vec!["x", "y"]);
        assert_eq!(c.task_request_max_cpu, 90.0);
        assert_eq!(c.executor, vec!["/bin/echo", "{package}"]);

        let err = parse(dir.path(), MINIMAL, &["max_task_count=0"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("set by --set max_task_count=0"), "{msg}");
        let err = parse(dir.path(), MINIMAL, &["max_task_count=lots"]).unwrap_err();
        assert_eq!(err.key(), Some("max_task_count"), "{err}");
        let err = parse(dir.path(), MINIMAL, &["maxtasks=1"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unknown key `maxtasks`"), "{msg}");
        assert!(msg.contains("`max_task_count`"), "{msg}");
        let err = parse(dir.path(), MINIMAL, &["max_task_count"]).unwrap_err();
        assert!(matches!(err, WorkerConfigError::Override { .. }), "{err}");

        // A relative path from --set is relative to the current directory.
        let abs = dir.path().join("elsewhere");
        let c = parse(
            dir.path(),
            MINIMAL,
            &[&format!("tasks_root_folder={}", abs.display())],
        )
        .unwrap();
        assert_eq!(c.tasks_root_folder, abs);
    }

    #[test]
    fn worker_variables_override_the_file_and_set_overrides_them() {
        let dir = tempfile::tempdir().unwrap();
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let build_with = |sets: &[&str], vars: &[(&str, &str)]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            build(&ConfigText::inline(MINIMAL, dir.path()), &sets, env(vars))
        };
        let state = dir.path().join("from-env");
        let state_text = state.display().to_string();
        let vars = [
            ("SCALEOUT_WORKER_MAX_TASK_COUNT", "4"),
            ("SCALEOUT_WORKER_TAGS", "etl, linux"),
            ("SCALEOUT_WORKER_STATE_DIR", state_text.as_str()),
            // A replica's variable and the CLI's are not the worker's.
            ("SCALEOUT_DATA_DIR", "/nowhere"),
            ("SCALEOUT_ENDPOINTS", "x:1"),
        ];
        let c = build_with(&[], &vars).unwrap();
        assert_eq!(c.max_task_count, 4);
        assert_eq!(c.tags, vec!["etl", "linux"]);
        assert_eq!(c.endpoints, vec!["127.0.0.1:7101", "127.0.0.1:7102"]);
        assert_eq!(c.state_dir, state);

        let c = build_with(&["max_task_count=6"], &vars[..2]).unwrap();
        assert_eq!(c.max_task_count, 6, "--set wins over the environment");

        let err = build_with(&[], &[("SCALEOUT_WORKER_MAX_TASK_COUNT", "0")]).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.key(), Some("max_task_count"), "{msg}");
        assert!(
            msg.contains("set by environment variable SCALEOUT_WORKER_MAX_TASK_COUNT"),
            "{msg}"
        );

        // Every SCALEOUT_WORKER_* is the worker's: a typo is an error naming it and the key.
        let err = build_with(&[], &[("SCALEOUT_WORKER_MAX_TASKS_COUNT", "4")]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("SCALEOUT_WORKER_MAX_TASKS_COUNT") && msg.contains("max_tasks_count"),
            "{msg}"
        );
        // The CLI's own variable is not a key.
        assert!(build_with(&[], &[("SCALEOUT_WORKER_CONFIG", "/etc/w.toml")]).is_ok());
    }

    #[test]
    fn relative_paths_resolve_against_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("etc");
        std::fs::create_dir_all(&conf).unwrap();
        let file = conf.join("worker.toml");
        std::fs::write(
            &file,
            MINIMAL.replace("\"state\"", "\"../var/w1\"") + "tasks_root_folder = \"t\"\n",
        )
        .unwrap();
        let c = WorkerConfig::load(&file, &[]).unwrap();
        c.prepare().unwrap();
        assert_eq!(c.state_dir, conf.join("../var/w1"));
        assert_eq!(c.tasks_root_folder, conf.join("t"));
        assert!(dir.path().join("var/w1/agent_id").is_file());
    }

    /// The id of the one worker certificate made by [`dev_certs`].
    const WORKER: Uuid = Uuid::from_u128(0x6f1c2b9e_5d1a_4a67_9d0e_2f4b8c3a7e10);

    /// Development certificates in `dir/certs`: replicas, worker [`WORKER`], operator, admin.
    fn dev_certs(dir: &Path) {
        let options = crate::certs::CertsInit {
            workers: vec![WORKER],
            ..crate::certs::CertsInit::new(dir.join("certs"))
        };
        crate::certs::init(&options).unwrap();
    }

    /// MINIMAL with `extra` top-level keys and `[tls]` for the certificate `certs/<stem>.pem`
    /// instead of `insecure = true`.
    fn with_tls(extra: &str, stem: &str) -> String {
        format!(
            "{}{extra}\n[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/{stem}.pem\"\n\
             key = \"certs/{stem}-key.pem\"\n",
            MINIMAL.replace("insecure = true\n", "")
        )
    }

    fn worker_stem() -> String {
        format!("worker-{WORKER}")
    }

    #[test]
    fn tls_certificate_gives_the_agent_id_and_it_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        dev_certs(dir.path());
        let c = parse(dir.path(), &with_tls("", &worker_stem()), &[]).unwrap();
        assert_eq!(c.agent_id, WORKER);
        assert!(!c.insecure);
        let certs = dir.path().join("certs");
        assert_eq!(
            c.tls,
            Some(TlsPaths {
                ca: certs.join("ca.pem"),
                cert: certs.join(format!("{}.pem", worker_stem())),
                key: certs.join(format!("{}-key.pem", worker_stem())),
            })
        );
        let stored = std::fs::read_to_string(dir.path().join("state").join(AGENT_ID_FILE)).unwrap();
        assert_eq!(stored.trim(), WORKER.to_string());
        // A restart agrees with the stored id; so does an explicit, matching agent_id.
        let c = parse(dir.path(), &with_tls("", &worker_stem()), &[]).unwrap();
        assert_eq!(c.agent_id, WORKER);
        let c = parse(
            dir.path(),
            &with_tls(&format!("agent_id = \"{WORKER}\"\n"), &worker_stem()),
            &[],
        )
        .unwrap();
        assert_eq!(c.agent_id, WORKER);
        // Without TLS the stored id is used as before.
        let c = parse(dir.path(), MINIMAL, &[]).unwrap();
        assert_eq!(c.agent_id, WORKER);
        assert_eq!(c.tls, None);
    }

    #[test]
    fn tls_paths_resolve_against_the_config_file_or_the_cwd() {
        let dir = tempfile::tempdir().unwrap();
        dev_certs(&dir.path().join("etc"));
        let file = dir.path().join("etc/worker.toml");
        std::fs::write(&file, with_tls("", &worker_stem())).unwrap();
        let c = WorkerConfig::load(&file, &[]).unwrap();
        c.prepare().unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.ca, dir.path().join("etc/certs/ca.pem"));
        assert!(tls.cert.is_file() && tls.key.is_file());
        assert!(dir.path().join("etc/state/agent_id").is_file());

        // From --set: relative to the current directory.
        let err = WorkerConfig::load(&file, &["tls.ca=no-such-dir/ca.pem".into()]).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.key(), Some("tls.ca"), "{msg}");
        let cwd = std::env::current_dir().unwrap();
        assert!(
            msg.contains(&cwd.join("no-such-dir/ca.pem").display().to_string()),
            "{msg}"
        );
        assert!(
            msg.contains("set by --set tls.ca=no-such-dir/ca.pem"),
            "{msg}"
        );
        // --set can make the whole [tls] table.
        let certs = dir.path().join("etc/certs");
        let c = WorkerConfig::load(
            &dir.path().join("etc/worker.toml"),
            &[
                format!("tls.ca={}", certs.join("ca.pem").display()),
                format!(
                    "tls.cert={}",
                    certs.join(format!("{}.pem", worker_stem())).display()
                ),
                format!(
                    "tls.key={}",
                    certs.join(format!("{}-key.pem", worker_stem())).display()
                ),
            ],
        )
        .unwrap();
        assert_eq!(c.agent_id, WORKER);
    }

    #[test]
    fn tls_agent_id_must_match_an_explicit_agent_id() {
        let dir = tempfile::tempdir().unwrap();
        dev_certs(dir.path());
        let other = "0b5e7d2c-9a14-4f3e-8c61-7d2a9e4b1f05";
        let err = parse(
            dir.path(),
            &with_tls(&format!("agent_id = \"{other}\"\n"), &worker_stem()),
            &[],
        )
        .unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.key(), Some("agent_id"), "{msg}");
        assert!(msg.contains(other), "{msg}");
        assert!(msg.contains(&WORKER.to_string()), "{msg}");
        assert!(msg.contains("remove agent_id"), "{msg}");
        assert!(
            !dir.path().join("state/agent_id").exists(),
            "nothing stored"
        );
    }

    #[test]
    fn tls_agent_id_must_match_the_stored_one() {
        let dir = tempfile::tempdir().unwrap();
        dev_certs(dir.path());
        // An earlier plaintext run kept a generated id in this state dir.
        let old = parse(dir.path(), MINIMAL, &[]).unwrap().agent_id;
        let err = parse(dir.path(), &with_tls("", &worker_stem()), &[]).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.key(), Some("agent_id"), "{msg}");
        let file = dir.path().join("state").join(AGENT_ID_FILE);
        assert!(msg.contains(&file.display().to_string()), "{msg}");
        assert!(msg.contains(&old.to_string()), "{msg}");
        assert!(msg.contains(&WORKER.to_string()), "{msg}");
        assert!(msg.contains("fresh state_dir"), "{msg}");
        let stored = std::fs::read_to_string(&file).unwrap();
        assert_eq!(stored.trim(), old.to_string(), "the file is left alone");
    }

    #[test]
    fn a_certificate_that_is_not_a_workers_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        dev_certs(dir.path());
        for (stem, uri) in [
            ("operator", "scaleout://operator/operator"),
            ("replica-1", "scaleout://replica/1"),
        ] {
            let err = parse(dir.path(), &with_tls("", stem), &[]).unwrap_err();
            let msg = err.to_string();
            assert_eq!(err.key(), Some("tls.cert"), "{msg}");
            assert!(msg.contains(&format!("is for {uri}")), "{msg}");
            assert!(msg.contains("scaleout://worker/<uuid>"), "{msg}");
            assert!(msg.contains(&format!("{stem}.pem")), "{msg}");
        }
        // The certificate was read before any id could be generated.
        assert!(!dir.path().join("state/agent_id").exists());
    }

    #[test]
    fn tls_mistakes_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        dev_certs(dir.path());
        // insecure and [tls] together.
        let text = format!("insecure = true\n{}", with_tls("", &worker_stem()));
        let err = parse(dir.path(), &text, &[]).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.key(), Some("insecure"), "{msg}");
        assert!(msg.contains("remove [tls] for plaintext"), "{msg}");
        let err = parse(
            dir.path(),
            &with_tls("", &worker_stem()),
            &["insecure=true"],
        )
        .unwrap_err();
        assert_eq!(err.key(), Some("insecure"), "{err}");

        // A missing key of [tls].
        let text = with_tls("", &worker_stem()).replace("key = ", "# key = ");
        let err = parse(dir.path(), &text, &[]).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.key(), Some("tls.key"), "{msg}");
        assert!(msg.contains("is missing"), "{msg}");
        // A missing file, a key of another certificate, another CA.
        let text = with_tls("", &worker_stem()).replace("certs/ca.pem", "certs/absent.pem");
        let err = parse(dir.path(), &text, &[]).unwrap_err();
        assert_eq!(err.key(), Some("tls.ca"), "{err}");
        let text = with_tls("", &worker_stem())
            .replace(&format!("{}-key.pem", worker_stem()), "operator-key.pem");
        let err = parse(dir.path(), &text, &[]).unwrap_err();
        assert_eq!(err.key(), Some("tls.key"), "{err}");
        let other = tempfile::tempdir().unwrap();
        dev_certs(other.path());
        let text = with_tls("", &worker_stem()).replace(
            "\"certs/ca.pem\"",
            &format!("\"{}\"", other.path().join("certs/ca.pem").display()),
        );
        let err = parse(dir.path(), &text, &[]).unwrap_err();
        assert_eq!(err.key(), Some("tls.cert"), "{err}");
        assert!(err.to_string().contains("wrong CA"), "{err}");
        assert!(!dir.path().join("state/agent_id").exists());
    }

    #[test]
    fn known_keys_are_every_key() {
        let keys = known_keys();
        // `[tls]` is listed as its three keys.
        assert_eq!(keys.len(), KEYS.len() - 1 + TLS.len());
        for key in [
            "endpoints",
            "state_dir",
            "metrics_listen",
            "tls.ca",
            "tls.cert",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
        }
        // Each is accepted by `--set` (an unknown key would be refused before validation).
        for key in &keys {
            let err = WorkerConfig::from_toml_str("", Path::new("."), &[format!("{key}=x")])
                .expect_err("an empty file is not a valid config");
            assert!(
                !matches!(err, WorkerConfigError::UnknownKey { .. }),
                "{key}: {err}"
            );
        }
    }
}
