//! Replica configuration: the TOML file given to `scaleout master --config FILE`.
//!
//! # Example
//! ```toml
//! id = 1                                # this replica's id; must be one of the member ids
//! data_dir = "data/master-1"            # Raft log, vote and state machine (sled)
//! api_listen = "0.0.0.0:7101"           # optional, default: this replica's `api` address
//! peer_listen = "0.0.0.0:7201"          # optional, default: this replica's `peer` address
//! metrics_listen = "0.0.0.0:9464"       # optional: /metrics, /healthz, /readyz over plain HTTP
//!
//! [[members]]                           # one table per replica, the same list in every file
//! id = 1
//! api = "10.0.0.1:7101"
//! peer = "10.0.0.1:7201"
//! # ... one [[members]] table per replica
//!
//! [tls]                                 # mutual TLS; or `insecure = true` instead
//! ca = "certs/ca.pem"
//! cert = "certs/replica-1.pem"
//! key = "certs/replica-1-key.pem"
//!
//! [raft]
//! heartbeat_interval_ms = 100
//!
//! [ssisdb]                              # optional: ship job events to SSISDB
//! connection_string = "Server=tcp:ag-listener.corp,1433;Database=SSISDB;User Id=scaleout_master;Encrypt=true"
//! password_file = "secrets/ssisdb-password"
//! ```
//!
//! # Keys
//! Required: `id`, `data_dir`, `members`, and either `[tls]` or `insecure = true`. Everything
//! else has a default (shown in parentheses).
//!
//! | key | meaning |
//! |-----|---------|
//! | `id` | This replica's Raft node id, a non-negative integer; one of the `members` ids. |
//! | `data_dir` | Directory for the Raft log, vote and state machine. Created if missing; must be writable. A relative path in the file is relative to the **config file's directory**; a relative path given by env or `--set` is relative to the current directory. |
//! | `insecure` | (default: `false`) Serve and dial plaintext gRPC without authentication, on a trusted network only. Exactly one of `insecure = true` and `[tls]` must be given. |
//! | `tls.ca` | PEM file of the CA that issued every scaleout certificate; the only CA trusted for peers. |
//! | `tls.cert` | PEM file of this replica's certificate (chain), which must carry the URI SAN `scaleout://replica/<id>` of this `id`. |
//! | `tls.key` | PEM file of the private key of `tls.cert`. All three `tls` paths are required when `[tls]` is given, and follow the `data_dir` rule for relative paths (the config file's directory, or the current directory when given by env or `--set`). Development certificates: `scaleout certs init --dir certs`. |
//! | `api_listen` | (default: this replica's `api`) Socket address the client/worker API binds, e.g. `0.0.0.0:7101`. |
//! | `peer_listen` | (default: this replica's `peer`) Socket address the Raft (replica to replica) service binds. |
//! | `metrics_listen` | (default: none, off) Socket address of the plain-HTTP endpoint serving `/metrics` (Prometheus text format), `/healthz` (the process is alive) and `/readyz` (a voter that hears a leader and has applied what it knows committed). It carries numbers and ids, never job parameters or logs; bind it to a management network. |
//! | `peer_routes` | (default: none) An array of tables (`[[peer_routes]]`), each with `id` and `address`: the host:port this replica dials to reach member `id`, instead of that member's `peer` address (NAT, a proxy, another interface). Only this replica uses it; the others still learn the member's `peer` address. |
//! | `members` | The static bootstrap member list, an array of tables (`[[members]]`), identical in every replica's file. Each entry has `id`, `api` (host:port that clients and workers dial) and `peer` (host:port that other replicas dial). All ids and all addresses must be distinct. |
//! | `raft.heartbeat_interval_ms` | (default: 100) Leader heartbeat interval; also openraft's append RPC deadline. |
//! | `raft.election_timeout_min_ms` | (default: 250) Lower bound of the randomized election timeout; at least twice the heartbeat interval. A follower that loses its leader waits `election_timeout_max_ms` (the leader lease, during which the other voters refuse to vote) plus a random part of up to `max - min`, drawn afresh each time, then stands for election; after an attempt that made no leader it waits a random timeout between min and max. Failover takes about 0.6 to 0.8 s with the defaults (`raft::election`). |
//! | `raft.election_timeout_max_ms` | (default: 500) Upper bound of the election timeout; greater than the minimum. |
//! | `raft.snapshot_every_logs` | (default: 10000) Build a snapshot after this many log entries since the last one; replica 2 waits 1/8 longer, replica 3 2/8, replica 4 3/8 (then again from replica 5), so the replicas do not all build one at once. |
//! | `raft.keep_logs_after_snapshot` | (default: 1000) Log entries kept behind a snapshot so lagging followers can catch up without one. |
//! | `raft.install_snapshot_timeout_ms` | (default: 10000) Deadline for sending one snapshot to a follower. |
//! | `proposals.max_batch` | (default: 512) Group commit: at most this many commands per Raft entry (1..=10000). |
//! | `proposals.linger_us` | (default: 500) How long a batch waits for more commands before it is proposed (at most 100000 µs). |
//! | `proposals.max_in_flight` | (default: 4) Batches proposed concurrently (at least 1). |
//! | `storage.cache_capacity_mb` | (default: 64) sled page cache size in MiB (at least 1). |
//! | `retention.finished_job_secs` | (default: 86400, a day) A finished job (succeeded, failed or cancelled) is removed from every replica this long after it finished, with its attempts, log lines and idempotency key; 0 keeps finished jobs whatever their age (at least 60 otherwise). This is also the deduplication window of idempotency keys: once its job is removed, a key submits a new job. With SSISDB configured, a job is removed only once all its events are shipped (SSISDB keeps the history; SSIS's own `CleanupCompletedJobsIntervalInMs` does the same cleanup). |
//! | `retention.max_finished_jobs` | (default: 100000) The oldest finished jobs beyond this many are removed too, whatever their age; 0: no cap (at least 100 otherwise). |
//! | `retention.sweep_interval_ms` | (default: 10000) How often the leader looks for finished jobs to remove (100..=3600000); one sweep removes at most 1,000 and the next follows at once while more are due. |
//! | `workers.lease_interval_ms` | (default: 30000) How long a task's lease lasts without a renewal (SSIS LeaseInterval). An expired lease consumes an attempt and requeues the task. |
//! | `workers.offline_after_ms` | (default: 60000) A worker with no heartbeat for this long shows offline. |
//! | `workers.approval` | (default: `manual`) `manual` keeps a new worker disabled until an admin enables it (`scaleout workers enable ID`), as SSIS does; `auto` enables it when it registers. |
//! | `workers.max_acquire_wait_ms` | (default: 10000) The longest an AcquireTasks long-poll waits for work (at most 60000). |
//! | `workers.expiry_check_interval_ms` | (default: 500) How often the leader looks for expired leases (10..=60000). |
//! | `workers.max_clock_jump_ms` | (default: 86400000, 1 day) How far a new leader's wall clock may be ahead of the cluster's time (the last time applied) and still be taken as it is; beyond it, time moves on from the cluster's time plus this bound, with a WARN, so one host with a wrong clock cannot age every lease, retry delay and retention at once. Within a term, time follows the monotonic clock, so a clock step there changes nothing (`master::clock`). 0: no bound. |
//! | `workers.test_clock_offset_file` | (default: none) **Test only**: a file holding a signed number of ms added to this replica's wall clock, re-read every 50 ms; the chaos suite steps clocks with it. Never set it in production. |
//! | `api.max_message_bytes` | (default: 4194304) Largest gRPC message accepted or sent, on both the API and the peer service (64 KiB..=256 MiB). |
//! | `ssisdb.connection_string` | (default: none) ADO.NET connection string of the SSISDB the leader ships job, attempt, worker and log events to, e.g. `Server=tcp:ag-listener.corp,1433;Database=SSISDB;User Id=scaleout_master;Encrypt=true`: `;`-separated `key=value` pairs (values may be quoted with `"` or `'`). It needs a server (`Server`, `Data Source`, `Address`, `Addr` or `Network Address`) and a SQL login (`User Id`, `UID` or `User`; integrated authentication is not supported), and must not hold the password (`Password`/`Pwd`): give that by `ssisdb.password_file` or `ssisdb.password_env`. Absent or empty: no SSISDB; events stay on the replicas for `ssisdb.retention_secs`, and the other `ssisdb` keys but the numbers are ignored. |
//! | `ssisdb.password_file` | File holding the SQL login's password (one trailing line break is dropped); follows the `data_dir` rule for relative paths. With a connection string, exactly one of `password_file` and `password_env` is required; the file must be readable and not empty. |
//! | `ssisdb.password_env` | Name of an environment variable holding the SQL login's password, e.g. `SSISDB_PASSWORD`. Whether it is set is checked when the leader connects, not at load. |
//! | `ssisdb.ca` | (default: the system's root certificates) PEM file of the CA trusted for the SQL Server's TLS certificate; follows the `data_dir` rule for relative paths. |
//! | `ssisdb.max_outbox_events` | (default: 100000) Most events kept on the replicas awaiting shipment; past it, worker log line events are dropped (and counted), state events never are (1000..=100000000). |
//! | `ssisdb.retention_secs` | (default: 604800, 7 days) How long events are kept on the replicas when no SSISDB is configured (60..=31536000). |
//! | `ssisdb.batch_events` | (default: 1000) Events written to SSISDB per transaction (1..=10000). |
//! | `ssisdb.connect_timeout_ms` | (default: 15000) Deadline for connecting and logging in to SQL Server (100..=300000). |
//! | `ssisdb.ship_interval_ms` | (default: 200) How often the leader looks for new events when it has shipped everything (10..=60000). |
//!
//! # Overrides
//! Every key can be overridden. Sources, in increasing precedence:
//! 1. the file;
//! 2. environment variables `SCALEOUT_<KEY>`: the dotted key path upper-cased with `.` replaced by
//!    `__`, e.g. `SCALEOUT_RAFT__HEARTBEAT_INTERVAL_MS=150`, `SCALEOUT_DATA_DIR=/var/lib/scaleout`,
//!    `SCALEOUT_MEMBERS__0__API=10.0.0.1:7101` (array entries by 0-based index). Variables whose
//!    names do not map to a key (such as `SCALEOUT_ENDPOINTS`, `SCALEOUT_LOG`, `SCALEOUT_CONFIG`,
//!    used by the CLI) are ignored;
//! 3. `--set key.path=value` flags, in order, e.g. `--set raft.heartbeat_interval_ms=150`,
//!    `--set members[0].api=10.0.0.1:7101` (or `members.0.api`).
//!
//! A value is read as a TOML literal (number, boolean, array, inline table, quoted string) when it
//! parses as one, else as a plain string; keys that take a string always accept the raw text.
//! Setting a table merges into it (`--set 'raft={heartbeat_interval_ms=150}'`); setting an array
//! replaces it (`--set 'members=[{id=1,api="a:1",peer="a:2"}]'`).
//!
//! # Errors
//! Every [`ConfigError`] names the file and the key (and, for overridden values, the environment
//! variable or flag that set it) and says what would be accepted.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use crate::tls::{load_identity, Role, TlsError, TlsIdentity, TlsPaths};

/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "SCALEOUT_";

/// `SCALEOUT_*` variables used elsewhere by the CLI; never read as config keys.
const IGNORED_ENV: &[&str] = &["SCALEOUT_ENDPOINTS", "SCALEOUT_LOG", "SCALEOUT_CONFIG"];

/// The file name shown in errors for configs that did not come from a file.
const INLINE: &str = "<inline config>";

/// A replica's validated configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MasterConfig {
    /// This replica's Raft node id; one of `members`.
    pub id: u64,
    /// Where the Raft log and state machine live; absolute after loading.
    pub data_dir: PathBuf,
    /// Plaintext gRPC without authentication; exclusive with `tls`.
    pub insecure: bool,
    /// `[tls]`: the CA, certificate and key for mutual TLS; absolute after loading. `None` only
    /// with `insecure`.
    pub tls: Option<TlsPaths>,
    /// Address the client/worker API binds (defaults to this replica's `api`).
    pub api_listen: String,
    /// Address the Raft peer service binds (defaults to this replica's `peer`).
    pub peer_listen: String,
    /// `/metrics`, `/healthz` and `/readyz` (plain HTTP); `None`: not served.
    pub metrics_listen: Option<String>,
    /// The static bootstrap member list.
    pub members: Vec<MemberConfig>,
    /// Where this replica dials some members instead of their `peer` address.
    pub peer_routes: Vec<PeerRoute>,
    pub raft: RaftSettings,
    pub proposals: ProposalSettings,
    pub storage: StorageSettings,
    pub retention: RetentionSettings,
    pub api: ApiSettings,
    pub workers: WorkerSettings,
    pub ssisdb: SsisdbSettings,
}

/// One replica of the cluster, as every replica's file lists it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub id: u64,
    /// host:port that clients and workers dial.
    pub api: String,
    /// host:port that other replicas dial for Raft.
    pub peer: String,
}

/// `[[peer_routes]]`: the address this replica dials to reach member `id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRoute {
    pub id: u64,
    pub address: String,
}

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

/// `[ssisdb]`: where the leader ships the outbox (job, attempt, worker and log events) and how
/// much of it the replicas keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SsisdbSettings {
    /// ADO.NET connection string, without the password; `None` or empty: no SSISDB.
    pub connection_string: Option<String>,
    /// File holding the SQL login's password; absolute after loading.
    pub password_file: Option<PathBuf>,
    /// Name of an environment variable holding the SQL login's password.
    pub password_env: Option<String>,
    /// PEM CA trusted for the SQL Server's certificate (absolute after loading); `None`: the
    /// system roots.
    pub ca: Option<PathBuf>,
    /// Most events kept in the replicated outbox.
    pub max_outbox_events: u64,
    /// How long events are kept when no SSISDB is configured.
    pub retention_secs: u64,
    /// Events per shipped transaction.
    pub batch_events: u32,
    pub connect_timeout_ms: u64,
    /// How often the leader looks for new events when idle.
    pub ship_interval_ms: u64,
}

impl Default for SsisdbSettings {
    fn default() -> Self {
        SsisdbSettings {
            connection_string: None,
            password_file: None,
            password_env: None,
            ca: None,
            max_outbox_events: 100_000,
            retention_secs: 604_800,
            batch_events: 1_000,
            connect_timeout_ms: 15_000,
            ship_interval_ms: 200,
        }
    }
}

impl SsisdbSettings {
    /// Whether an SSISDB is configured: `connection_string` is set and not blank.
    pub fn enabled(&self) -> bool {
        self.connection_string
            .as_deref()
            .is_some_and(|s| !s.trim().is_empty())
    }

    /// The SQL login's password, from `password_file` (without one trailing line break) or the
    /// variable named by `password_env`. The error names the file or variable and says what to
    /// do.
    pub fn password(&self) -> Result<String, String> {
        match (&self.password_file, &self.password_env) {
            (Some(file), None) => read_password_file(file),
            (None, Some(name)) => {
                let name = name.trim();
                if name.is_empty() {
                    return Err("ssisdb.password_env is empty; set it to the name of the \
                                environment variable that holds the SSISDB password"
                        .into());
                }
                match std::env::var(name) {
                    Ok(password) if !password.is_empty() => Ok(password),
                    Ok(_) => Err(format!(
                        "environment variable {name} (named by ssisdb.password_env) is empty; \
                         set it to the SSISDB login's password"
                    )),
                    Err(std::env::VarError::NotPresent) => Err(format!(
                        "environment variable {name} (named by ssisdb.password_env) is not set; \
                         set it to the SSISDB login's password in the master's environment"
                    )),
                    Err(std::env::VarError::NotUnicode(_)) => Err(format!(
                        "environment variable {name} (named by ssisdb.password_env) is not valid \
                         UTF-8; set it to the SSISDB login's password"
                    )),
                }
            }
            (None, None) => Err(
                "no SSISDB password is configured; set ssisdb.password_file to \
                                 a file holding it, or ssisdb.password_env to the name of an \
                                 environment variable holding it"
                    .into(),
            ),
            (Some(_), Some(_)) => Err("both ssisdb.password_file and ssisdb.password_env are \
                                       set; keep only one"
                .into()),
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn ship_interval(&self) -> Duration {
        Duration::from_millis(self.ship_interval_ms)
    }
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_secs)
    }

    /// The rules of `[ssisdb]`, as (key, message) of the first violation.
    fn check(&self) -> Result<(), (&'static str, String)> {
        let ranges: [(&'static str, u64, std::ops::RangeInclusive<u64>, u64); 5] = [
            (
                "ssisdb.max_outbox_events",
                self.max_outbox_events,
                1_000..=100_000_000,
                100_000,
            ),
            (
                "ssisdb.retention_secs",
                self.retention_secs,
                60..=31_536_000,
                604_800,
            ),
            (
                "ssisdb.batch_events",
                u64::from(self.batch_events),
                1..=10_000,
                1_000,
            ),
            (
                "ssisdb.connect_timeout_ms",
                self.connect_timeout_ms,
                100..=300_000,
                15_000,
            ),
            (
                "ssisdb.ship_interval_ms",
                self.ship_interval_ms,
                10..=60_000,
                200,
            ),
        ];
        for (key, value, range, default) in ranges {
            if !range.contains(&value) {
                return Err((
                    key,
                    format!(
                        "is {value} but must be between {} and {}; the default is {default}",
                        range.start(),
                        range.end()
                    ),
                ));
            }
        }
        let Some(text) = self.connection_string.as_deref().filter(|_| self.enabled()) else {
            // No SSISDB: the password and CA settings are not used.
            return Ok(());
        };
        let key = "ssisdb.connection_string";
        let pairs = parse_connection_string(text).map_err(|e| (key, e))?;
        let has = |names: &[&str]| {
            pairs
                .iter()
                .find(|(k, _)| names.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
        };
        if let Some((name, _)) = has(&["password", "pwd"]) {
            return Err((
                key,
                format!(
                    "contains a password (the `{name}` key); the password must not be in the \
                     config file; put it in ssisdb.password_file or the variable named by \
                     ssisdb.password_env, and remove `{name}=` from the connection string"
                ),
            ));
        }
        match has(&[
            "server",
            "data source",
            "address",
            "addr",
            "network address",
        ]) {
            Some((_, v)) if !v.is_empty() => {}
            _ => {
                return Err((
                    key,
                    "names no server; add Server=<host> (e.g. Server=tcp:ag-listener.corp,1433)"
                        .into(),
                ))
            }
        }
        match has(&["user id", "uid", "user"]) {
            Some((_, v)) if !v.is_empty() => {}
            _ => {
                return Err((
                    key,
                    "names no SQL login; add User Id=<login> (scaleout logs in with SQL Server \
                     authentication only, with the password from ssisdb.password_file or \
                     ssisdb.password_env)"
                        .into(),
                ))
            }
        }
        match (&self.password_file, &self.password_env) {
            (None, None) => {
                return Err((
                    "ssisdb.password_file",
                    "is required with ssisdb.connection_string (or ssisdb.password_env instead); \
                     set it to a file holding the SQL login's password"
                        .into(),
                ))
            }
            (Some(_), Some(_)) => {
                return Err((
                    "ssisdb.password_env",
                    "is set as well as ssisdb.password_file; keep only one of them".into(),
                ))
            }
            (Some(file), None) => {
                read_password_file(file).map_err(|e| ("ssisdb.password_file", e))?;
            }
            (None, Some(name)) => {
                let name = name.trim();
                if name.is_empty() || name.contains(['=', '\0']) {
                    return Err((
                        "ssisdb.password_env",
                        format!(
                            "{name:?} is not an environment variable name; set it to the name of \
                             the variable that holds the SQL login's password, e.g. \
                             SSISDB_PASSWORD"
                        ),
                    ));
                }
            }
        }
        if let Some(ca) = &self.ca {
            check_readable_file(
                ca,
                "the PEM file of the CA that issued the SQL Server's certificate",
            )
            .map_err(|e| ("ssisdb.ca", e))?;
        }
        Ok(())
    }
}

/// `file` as a regular file that can be opened; the error names it and says what is wanted.
fn check_readable_file(file: &Path, what: &str) -> Result<(), String> {
    if file.as_os_str().is_empty() {
        return Err(format!("is empty; set it to {what}"));
    }
    let opened = std::fs::metadata(file).and_then(|meta| {
        if meta.is_file() {
            std::fs::File::open(file).map(drop)
        } else {
            Err(std::io::Error::other("it is not a regular file"))
        }
    });
    opened.map_err(|e| format!("cannot read {}: {e}; set it to {what}", file.display()))
}

/// The password in `file`, without one trailing line break.
fn read_password_file(file: &Path) -> Result<String, String> {
    const WHAT: &str = "a file (readable by this user) holding the SQL login's password";
    check_readable_file(file, WHAT)?;
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}; set it to {WHAT}", file.display()))?;
    let password = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if password.is_empty() {
        return Err(format!(
            "{} is empty; write the SQL login's password into it",
            file.display()
        ));
    }
    Ok(password.to_string())
}

/// An ADO.NET connection string as (key, value) pairs: keys lower-cased with runs of spaces
/// made one, values trimmed and unquoted. A value quoted with `"` or `'` may hold `;` and the
/// quote doubled. Errors never repeat the string, which could hold a password.
fn parse_connection_string(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ';' || c.is_whitespace());
        if rest.is_empty() {
            return Ok(pairs);
        }
        let part = pairs.len() + 1;
        let eq = match rest.find(['=', ';']) {
            Some(eq) if rest[eq..].starts_with('=') => eq,
            _ => {
                return Err(format!(
                    "part {part} (counting from 1) has no `=`; write `;`-separated key=value \
                     pairs like Server=tcp:host,1433;Database=SSISDB;User Id=login"
                ))
            }
        };
        let key = rest[..eq]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_ascii_lowercase();
        if key.is_empty() {
            return Err(format!(
                "part {part} (counting from 1) has no key before its `=`; write `;`-separated \
                 key=value pairs like Server=tcp:host,1433;Database=SSISDB;User Id=login"
            ));
        }
        rest = rest[eq + 1..].trim_start();
        let value = match rest.chars().next() {
            Some(quote @ ('"' | '\'')) => {
                let mut value = String::new();
                let mut chars = rest[1..].char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    if c != quote {
                        value.push(c);
                    } else if rest[1 + i + 1..].starts_with(quote) {
                        value.push(quote);
                        chars.next();
                    } else {
                        end = Some(1 + i + 1);
                        break;
                    }
                }
                let Some(end) = end else {
                    return Err(format!(
                        "the value of `{key}` opens a {quote} quote that is never closed"
                    ));
                };
                rest = rest[end..].trim_start();
                if !(rest.is_empty() || rest.starts_with(';')) {
                    return Err(format!(
                        "the quoted value of `{key}` is followed by more text before the next `;`"
                    ));
                }
                value
            }
            _ => {
                let end = rest.find(';').unwrap_or(rest.len());
                let value = rest[..end].trim().to_string();
                rest = &rest[end..];
                value
            }
        };
        pairs.push((key, value));
    }
}

/// Why a configuration could not be loaded. Every message names the file and, where there is
/// one, the key, and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}; check the path given to --config", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error(
        "unknown key `{key}` in {}{}: expected one of {expected}; fix the spelling or remove it",
        path.display(),
        origin_note(.origin)
    )]
    UnknownKey {
        path: PathBuf,
        key: String,
        /// The env variable or `--set` flag the key came from, if not the file.
        origin: Option<String>,
        /// The keys allowed at that place, formatted for the message.
        expected: String,
    },
    #[error("invalid `{key}` in {}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("cannot apply `{arg}` to {}: {message}", path.display())]
    Override {
        path: PathBuf,
        arg: String,
        message: String,
    },
}

fn origin_note(origin: &Option<String>) -> String {
    match origin {
        Some(origin) => format!(" (set by {origin})"),
        None => String::new(),
    }
}

impl ConfigError {
    /// The key the error is about, when it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. } | ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

impl MasterConfig {
    /// Reads `path`, applies `SCALEOUT_*` environment variables and then `overrides`
    /// (`"key.path=value"`, as given to `--set`), and validates the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        load_with_env(path, overrides, env)
    }

    /// Parses a config from text (no environment variables are read); relative paths in `text`
    /// are relative to `base_dir`. Validates the result.
    pub fn from_toml_str(
        text: &str,
        base_dir: &Path,
        overrides: &[String],
    ) -> Result<Self, ConfigError> {
        build(
            text,
            Path::new(INLINE),
            base_dir,
            overrides,
            std::iter::empty(),
        )
    }

    /// Checks the rules in the module documentation; loads the TLS identity (when `tls` is set)
    /// and checks it is this replica's; creates `data_dir` and probes that it is writable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(|(key, message)| ConfigError::Invalid {
            path: PathBuf::from("<in-memory config>"),
            key,
            message,
        })
    }

    /// This replica's own entry in `members`.
    ///
    /// # Panics
    /// If `id` is not among the members, which [`MasterConfig::validate`] rules out.
    pub fn me(&self) -> &MemberConfig {
        self.member(self.id)
            .unwrap_or_else(|| panic!("replica id {} is not among the configured members", self.id))
    }

    /// The member with id `id`.
    pub fn member(&self, id: u64) -> Option<&MemberConfig> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The other members.
    pub fn peers(&self) -> impl Iterator<Item = &MemberConfig> + '_ {
        self.members.iter().filter(move |m| m.id != self.id)
    }

    /// The validation rules, returning (key, message) of the first violation.
    fn check(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, message: String| Err((key.to_string(), message));

        if self.members.is_empty() {
            return bad(
                "members",
                "the member list is empty; add one [[members]] table (id, api, peer) per replica, \
                 the same list in every replica's file"
                    .into(),
            );
        }
        let mut ids = BTreeMap::new();
        for (i, m) in self.members.iter().enumerate() {
            if let Some(first) = ids.insert(m.id, i) {
                return bad(
                    "members",
                    format!(
                        "member id {} is listed twice (members[{first}] and members[{i}]); \
                         every replica needs its own id",
                        m.id
                    ),
                );
            }
        }
        for (i, m) in self.members.iter().enumerate() {
            check_addr(&m.api, false).or_else(|e| bad(&format!("members[{i}].api"), e))?;
            check_addr(&m.peer, false).or_else(|e| bad(&format!("members[{i}].peer"), e))?;
        }
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for (i, m) in self.members.iter().enumerate() {
            for (which, addr) in [("api", &m.api), ("peer", &m.peer)] {
                let here = format!("members[{i}].{which}");
                if let Some(first) = seen.insert(addr.to_ascii_lowercase(), here.clone()) {
                    return bad(
                        "members",
                        format!(
                            "address {addr} is used twice ({first} and {here}); every api and \
                             peer address must be distinct"
                        ),
                    );
                }
            }
        }
        if self.member(self.id).is_none() {
            let listed: Vec<String> = self.members.iter().map(|m| m.id.to_string()).collect();
            return bad(
                "id",
                format!(
                    "id {} is not among the members (ids {}); set id to this replica's entry \
                     in [[members]]",
                    self.id,
                    listed.join(", ")
                ),
            );
        }
        check_addr(&self.api_listen, true).or_else(|e| bad("api_listen", e))?;
        check_addr(&self.peer_listen, true).or_else(|e| bad("peer_listen", e))?;
        if let Some(metrics_listen) = &self.metrics_listen {
            check_addr(metrics_listen, true).or_else(|e| bad("metrics_listen", e))?;
            if [&self.api_listen, &self.peer_listen]
                .iter()
                .any(|taken| taken.eq_ignore_ascii_case(metrics_listen))
            {
                return bad(
                    "metrics_listen",
                    format!(
                        "{metrics_listen} is also api_listen or peer_listen; give the metrics \
                         endpoint an address of its own"
                    ),
                );
            }
        }
        let mut routed = std::collections::BTreeSet::new();
        for (i, route) in self.peer_routes.iter().enumerate() {
            check_addr(&route.address, false)
                .or_else(|e| bad(&format!("peer_routes[{i}].address"), e))?;
            if route.id == self.id {
                return bad(
                    &format!("peer_routes[{i}].id"),
                    format!(
                        "{} is this replica's own id; a replica does not dial itself",
                        route.id
                    ),
                );
            }
            if !routed.insert(route.id) {
                return bad(
                    &format!("peer_routes[{i}].id"),
                    format!(
                        "member {} has two routes; give one address per member",
                        route.id
                    ),
                );
            }
        }
        if self.api_listen.eq_ignore_ascii_case(&self.peer_listen) {
            return bad(
                "peer_listen",
                format!(
                    "{} is also api_listen; the API and the peer service need different addresses",
                    self.peer_listen
                ),
            );
        }
        if let Some((key, message)) = tls_choice_error(self.insecure, self.tls.is_some(), "replica")
        {
            return bad(key, message);
        }

        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 {
            return bad(
                "raft.heartbeat_interval_ms",
                "must be greater than 0 (e.g. 100)".into(),
            );
        }
        let min_election = r.heartbeat_interval_ms.saturating_mul(2);
        if r.election_timeout_min_ms < min_election {
            return bad(
                "raft.election_timeout_min_ms",
                format!(
                    "is {} ms but must be at least twice raft.heartbeat_interval_ms ({} ms), i.e. \
                     at least {min_election} ms, or followers start elections under a healthy leader",
                    r.election_timeout_min_ms, r.heartbeat_interval_ms
                ),
            );
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return bad(
                "raft.election_timeout_max_ms",
                format!(
                    "is {} ms but must be greater than raft.election_timeout_min_ms ({} ms), \
                     e.g. twice the minimum",
                    r.election_timeout_max_ms, r.election_timeout_min_ms
                ),
            );
        }
        if r.snapshot_every_logs == 0 {
            return bad(
                "raft.snapshot_every_logs",
                "must be greater than 0 (e.g. 10000)".into(),
            );
        }
        if r.install_snapshot_timeout_ms == 0 {
            return bad(
                "raft.install_snapshot_timeout_ms",
                "must be greater than 0 (e.g. 10000)".into(),
            );
        }

        let p = &self.proposals;
        if !(1..=10_000).contains(&p.max_batch) {
            return bad(
                "proposals.max_batch",
                format!(
                    "is {} but must be between 1 and 10000 (e.g. 512)",
                    p.max_batch
                ),
            );
        }
        if p.linger_us > 100_000 {
            return bad(
                "proposals.linger_us",
                format!(
                    "is {} but must be at most 100000 (100 ms; e.g. 500)",
                    p.linger_us
                ),
            );
        }
        if p.max_in_flight == 0 {
            return bad(
                "proposals.max_in_flight",
                "must be at least 1 (e.g. 4)".into(),
            );
        }
        let t = &self.retention;
        if t.finished_job_secs != 0 && t.finished_job_secs < 60 {
            return bad(
                "retention.finished_job_secs",
                format!(
                    "is {} but must be 0 (never by age) or at least 60, so that a client \
                     waiting on a job sees it end (e.g. 86400, a day)",
                    t.finished_job_secs
                ),
            );
        }
        if t.max_finished_jobs != 0 && t.max_finished_jobs < 100 {
            return bad(
                "retention.max_finished_jobs",
                format!(
                    "is {} but must be 0 (no cap) or at least 100 (e.g. 100000)",
                    t.max_finished_jobs
                ),
            );
        }
        if !(100..=3_600_000).contains(&t.sweep_interval_ms) {
            return bad(
                "retention.sweep_interval_ms",
                format!(
                    "is {} but must be between 100 and 3600000 (e.g. 10000)",
                    t.sweep_interval_ms
                ),
            );
        }
        if !(1..=1 << 20).contains(&self.storage.cache_capacity_mb) {
            return bad(
                "storage.cache_capacity_mb",
                format!(
                    "is {} but must be between 1 and 1048576 MiB (e.g. 64)",
                    self.storage.cache_capacity_mb
                ),
            );
        }
        const MIN_MSG: usize = 64 << 10;
        const MAX_MSG: usize = 256 << 20;
        if !(MIN_MSG..=MAX_MSG).contains(&self.api.max_message_bytes) {
            return bad(
                "api.max_message_bytes",
                format!(
                    "is {} but must be between {MIN_MSG} (64 KiB) and {MAX_MSG} (256 MiB); the \
                     default is 4194304",
                    self.api.max_message_bytes
                ),
            );
        }

        let w = &self.workers;
        if !(1_000..=86_400_000).contains(&w.lease_interval_ms) {
            return bad(
                "workers.lease_interval_ms",
                format!(
                    "is {} but must be between 1000 (1 s) and 86400000 (1 day); e.g. 30000",
                    w.lease_interval_ms
                ),
            );
        }
        if w.offline_after_ms < 1_000 {
            return bad(
                "workers.offline_after_ms",
                "must be at least 1000 (1 s); e.g. 60000".into(),
            );
        }
        if w.max_acquire_wait_ms > 60_000 {
            return bad(
                "workers.max_acquire_wait_ms",
                "must be at most 60000 (1 min); e.g. 10000".into(),
            );
        }
        if !(10..=60_000).contains(&w.expiry_check_interval_ms) {
            return bad(
                "workers.expiry_check_interval_ms",
                "must be between 10 and 60000; e.g. 500".into(),
            );
        }
        if let Err((key, message)) = self.ssisdb.check() {
            return bad(key, message);
        }

        // After the cheap checks: reads and verifies the certificate files.
        if let Some(paths) = &self.tls {
            let identity = match load_tls_identity(paths) {
                Ok(identity) => identity,
                Err((key, message)) => return bad(key, message),
            };
            let want = Role::Replica(self.id);
            if identity.role() != &want {
                return bad(
                    "tls.cert",
                    format!(
                        "the certificate in {} is for {}, but this is replica {}; fix: use \
                         replica-{}.pem (a certificate with the SAN URI {})",
                        paths.cert.display(),
                        identity.role().uri(),
                        self.id,
                        self.id,
                        want.uri()
                    ),
                );
            }
        }

        // Last: the only check with a side effect.
        probe_data_dir(&self.data_dir).or_else(|e| bad("data_dir", e))
    }
}

/// [`MasterConfig::load`] with the environment given explicitly (tests must not touch the
/// process environment).
pub(crate) fn load_with_env(
    path: &Path,
    overrides: &[String],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<MasterConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let base_dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    build(&text, path, base_dir, overrides, env)
}

/// Parse, merge overrides, check the shape, deserialize, resolve defaults and paths, validate.
fn build(
    text: &str,
    file: &Path,
    base_dir: &Path,
    overrides: &[String],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<MasterConfig, ConfigError> {
    let mut tree: Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: file.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })?;
    let mut origins = Origins::default();

    // Environment: only names that map to keys; shallow keys first so `SCALEOUT_MEMBERS` is
    // applied before `SCALEOUT_MEMBERS__0__API`.
    let mut from_env: Vec<(Vec<Seg>, Kind, String, String)> = env
        .into_iter()
        .filter_map(|(name, value)| {
            let rest = name.strip_prefix(ENV_PREFIX)?;
            if IGNORED_ENV.contains(&name.as_str()) || rest.is_empty() {
                return None;
            }
            let segs: Option<Vec<Seg>> = rest
                .split("__")
                .map(|part| parse_segment(&part.to_ascii_lowercase()))
                .collect();
            let segs = segs?;
            let kind = lookup(&segs).ok()?;
            Some((segs, kind, name, value))
        })
        .collect();
    from_env.sort_by(|a, b| (a.0.len(), &a.2).cmp(&(b.0.len(), &b.2)));
    for (segs, kind, name, raw) in from_env {
        let origin = format!("environment variable {name}");
        apply(&mut tree, &segs, parse_value(&raw, kind), file, &origin)?;
        origins.set(&segs, origin);
    }

    for arg in overrides {
        let shown = shown_override(arg);
        let bad = |message: String| ConfigError::Override {
            path: file.to_path_buf(),
            arg: format!("--set {shown}"),
            message,
        };
        let (key, raw) = arg.split_once('=').ok_or_else(|| {
            bad("expected key.path=value, e.g. raft.heartbeat_interval_ms=150".into())
        })?;
        let key = key.trim();
        let segs = parse_key(key).ok_or_else(|| {
            bad(format!(
                "`{key}` is not a key path; write dotted keys like raft.heartbeat_interval_ms or \
                 members[0].api"
            ))
        })?;
        let origin = format!("--set {shown}");
        let kind = match lookup(&segs) {
            Ok(kind) => kind,
            Err(LookupError::Unknown { at, expected }) => {
                return Err(ConfigError::UnknownKey {
                    path: file.to_path_buf(),
                    key: display_path(&segs[..=at]),
                    origin: Some(origin),
                    expected: expected_list(expected),
                })
            }
            Err(LookupError::Shape { at, message }) => {
                return Err(bad(format!("`{}` {message}", display_path(&segs[..at]))))
            }
        };
        apply(&mut tree, &segs, parse_value(raw, kind), file, &origin)?;
        origins.set(&segs, origin);
    }

    check_table(&tree, TOP, &mut Vec::new(), file, &origins)?;

    let raw: RawConfig = Value::Table(tree)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            path: file.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;

    let data_dir_origin = origins.get("data_dir");
    if raw.data_dir.trim().is_empty() {
        return Err(ConfigError::Invalid {
            path: file.to_path_buf(),
            key: "data_dir".into(),
            message: format!(
                "must not be empty; name the directory for this replica's Raft log{}",
                origin_note(&data_dir_origin)
            ),
        });
    }
    let data_dir = resolve_path(&raw.data_dir, data_dir_origin.is_some(), base_dir);
    // An error found here, before `check`, reads like one found there.
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        path: file.to_path_buf(),
        key: key.to_string(),
        message: format!("{message}{}", origins.note(key, &message)),
    };
    if let (true, Some(_)) = (raw.insecure, &raw.tls) {
        if let Some((key, message)) = tls_choice_error(true, true, "replica") {
            return Err(invalid(key, message));
        }
    }
    let tls = match raw.tls {
        None => None,
        Some(raw_tls) => {
            let path =
                |key: &'static str, value: Option<String>| match value.as_deref().map(str::trim) {
                    Some(value) if !value.is_empty() => {
                        let overridden = origins.get(key).is_some();
                        Ok(absolute(resolve_path(value, overridden, base_dir)))
                    }
                    _ => Err(invalid(key, tls_missing_message(key, "replica-N"))),
                };
            Some(TlsPaths {
                ca: path("tls.ca", raw_tls.ca)?,
                cert: path("tls.cert", raw_tls.cert)?,
                key: path("tls.key", raw_tls.key)?,
            })
        }
    };
    let mut ssisdb = raw.ssisdb;
    // Like data_dir; an empty path stays empty for `check` to name.
    let ssisdb_path = |key: &str, path: Option<PathBuf>| {
        path.map(|path| {
            let text = path.to_string_lossy();
            match text.trim() {
                "" => PathBuf::new(),
                value => absolute(resolve_path(value, origins.get(key).is_some(), base_dir)),
            }
        })
    };
    ssisdb.password_file = ssisdb_path("ssisdb.password_file", ssisdb.password_file.take());
    ssisdb.ca = ssisdb_path("ssisdb.ca", ssisdb.ca.take());
    let me = raw.members.iter().find(|m| m.id == raw.id);
    let mut config = MasterConfig {
        id: raw.id,
        data_dir,
        insecure: raw.insecure,
        tls,
        api_listen: raw
            .api_listen
            .or_else(|| me.map(|m| m.api.clone()))
            .unwrap_or_default(),
        peer_listen: raw
            .peer_listen
            .or_else(|| me.map(|m| m.peer.clone()))
            .unwrap_or_default(),
        metrics_listen: raw.metrics_listen.filter(|addr| !addr.trim().is_empty()),
        members: raw.members,
        peer_routes: raw.peer_routes,
        raft: raw.raft,
        proposals: raw.proposals,
        storage: raw.storage,
        retention: raw.retention,
        api: raw.api,
        workers: raw.workers,
        ssisdb,
    };
    config.check().map_err(|(key, message)| {
        let note = origins.note(&key, &message);
        ConfigError::Invalid {
            path: file.to_path_buf(),
            key,
            message: format!("{message}{note}"),
        }
    })?;
    if let Ok(absolute) = std::fs::canonicalize(&config.data_dir) {
        config.data_dir = absolute;
    }
    Ok(config)
}

/// The file as written, before defaults are resolved.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    id: u64,
    data_dir: String,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    api_listen: Option<String>,
    #[serde(default)]
    peer_listen: Option<String>,
    #[serde(default)]
    metrics_listen: Option<String>,
    #[serde(default)]
    peer_routes: Vec<PeerRoute>,
    members: Vec<MemberConfig>,
    #[serde(default)]
    raft: RaftSettings,
    #[serde(default)]
    proposals: ProposalSettings,
    #[serde(default)]
    storage: StorageSettings,
    #[serde(default)]
    retention: RetentionSettings,
    #[serde(default)]
    api: ApiSettings,
    #[serde(default)]
    workers: WorkerSettings,
    #[serde(default)]
    ssisdb: SsisdbSettings,
}

/// A `--set` argument as errors show it: the value of `ssisdb.connection_string` (or of the
/// whole `ssisdb` table) is hidden, since a rejected one may hold a password.
fn shown_override(arg: &str) -> String {
    match arg.split_once('=') {
        Some((key, _))
            if matches!(
                key.trim().to_ascii_lowercase().as_str(),
                "ssisdb" | "ssisdb.connection_string"
            ) =>
        {
            format!("{}=<hidden>", key.trim())
        }
        _ => arg.to_string(),
    }
}

/// `[tls]` as written; every key is required, which `build` checks to name the missing one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    ca: Option<String>,
    #[serde(default)]
    cert: Option<String>,
    #[serde(default)]
    key: Option<String>,
}

/// A path as configured: absolute stays; relative is relative to the current directory when an
/// environment variable or `--set` gave it (`overridden`), else to the config file's directory.
fn resolve_path(value: &str, overridden: bool, base_dir: &Path) -> PathBuf {
    let path = PathBuf::from(value);
    if path.is_absolute() {
        path
    } else if overridden {
        std::env::current_dir()
            .map(|cwd| cwd.join(&path))
            .unwrap_or(path)
    } else {
        base_dir.join(path)
    }
}

/// `path` made absolute against the current directory, without resolving symlinks (a
/// certificate reload must follow a swapped symlink); `.` components dropped.
fn absolute(path: PathBuf) -> PathBuf {
    let path = if path.is_absolute() {
        path
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(&path))
            .unwrap_or(path)
    };
    path.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// TLS settings, shared with the worker's config (`crate::worker::config`).

/// The rule that exactly one of `insecure = true` and `[tls]` is given, as (key, message) of
/// the violation. `who` is "replica" or "worker", for the hint.
pub(crate) fn tls_choice_error(
    insecure: bool,
    has_tls: bool,
    who: &str,
) -> Option<(&'static str, String)> {
    match (insecure, has_tls) {
        (true, true) => Some((
            "insecure",
            "is true, but a [tls] section is given too; choose one: remove [tls] for plaintext, \
             or set insecure = false to use TLS"
                .into(),
        )),
        (false, false) => Some((
            "tls",
            format!(
                "no [tls] section: set tls.ca, tls.cert and tls.key (development certificates: \
                 `scaleout certs init --dir certs`, then this {who}'s files from certs/), or \
                 insecure = true for plaintext on a trusted network"
            ),
        )),
        _ => None,
    }
}

/// The message for a `tls.*` key that `[tls]` lacks; `stem` names the development file, e.g.
/// `replica-N` or `worker-<uuid>`.
pub(crate) fn tls_missing_message(key: &str, stem: &str) -> String {
    let what = match key {
        "tls.ca" => {
            "the PEM file of the CA that issued the certificates (development: certs/ca.pem)"
                .to_string()
        }
        "tls.cert" => {
            format!("the PEM file of this process's certificate (development: certs/{stem}.pem)")
        }
        _ => format!(
            "the PEM file of the private key of tls.cert (development: certs/{stem}-key.pem)"
        ),
    };
    format!("is missing or empty in [tls]; set {key} to {what}; ca, cert and key are all required")
}

/// The config key a [`TlsError`] from loading the files is most specifically about.
pub(crate) fn tls_error_key(error: &TlsError) -> &'static str {
    let by_what = |what: &str| match what {
        "ca" => "tls.ca",
        "cert" => "tls.cert",
        "key" => "tls.key",
        _ => "tls",
    };
    match error {
        TlsError::Read { what, .. }
        | TlsError::NotPem { what, .. }
        | TlsError::NoCertificate { what, .. }
        | TlsError::Expired { what, .. }
        | TlsError::NotYetValid { what, .. } => by_what(what),
        TlsError::NoKey { .. } | TlsError::BadKey { .. } | TlsError::KeyMismatch { .. } => {
            "tls.key"
        }
        TlsError::WrongCa { .. }
        | TlsError::Rejected { .. }
        | TlsError::NoRole { .. }
        | TlsError::BadRole { .. } => "tls.cert",
        _ => "tls",
    }
}

/// Loads and checks the files of `[tls]`; an error as (key, message).
pub(crate) fn load_tls_identity(paths: &TlsPaths) -> Result<TlsIdentity, (&'static str, String)> {
    load_identity(&paths.ca, &paths.cert, &paths.key)
        .map_err(|e| (tls_error_key(&e), e.to_string()))
}

// ---------------------------------------------------------------------------------------------
// The schema: what keys exist and what they hold. Checked before deserializing so errors can
// name the full key path; `schema_matches_structs` keeps it in step with the structs.

#[derive(Clone, Copy, Debug)]
enum Kind {
    Int,
    Bool,
    Str,
    Table(&'static [Field]),
    TableArray(&'static [Field]),
}

#[derive(Clone, Copy, Debug)]
struct Field {
    name: &'static str,
    kind: Kind,
    /// `Some(hint)` when the key is required; the hint says what to write.
    required: Option<&'static str>,
}

const fn opt(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: None,
    }
}

const fn req(name: &'static str, kind: Kind, hint: &'static str) -> Field {
    Field {
        name,
        kind,
        required: Some(hint),
    }
}

const MEMBER_HINT: &str = "every [[members]] entry needs id, api (host:port for clients and \
                           workers) and peer (host:port for Raft)";

const PEER_ROUTE_HINT: &str = "every [[peer_routes]] entry needs id (a member's id) and address \
                               (the host:port to dial it at)";

const PEER_ROUTE: &[Field] = &[
    req("id", Kind::Int, PEER_ROUTE_HINT),
    req("address", Kind::Str, PEER_ROUTE_HINT),
];

const MEMBER: &[Field] = &[
    req("id", Kind::Int, MEMBER_HINT),
    req("api", Kind::Str, MEMBER_HINT),
    req("peer", Kind::Str, MEMBER_HINT),
];

const RAFT: &[Field] = &[
    opt("heartbeat_interval_ms", Kind::Int),
    opt("election_timeout_min_ms", Kind::Int),
    opt("election_timeout_max_ms", Kind::Int),
    opt("snapshot_every_logs", Kind::Int),
    opt("keep_logs_after_snapshot", Kind::Int),
    opt("install_snapshot_timeout_ms", Kind::Int),
];

const PROPOSALS: &[Field] = &[
    opt("max_batch", Kind::Int),
    opt("linger_us", Kind::Int),
    opt("max_in_flight", Kind::Int),
];

const STORAGE: &[Field] = &[opt("cache_capacity_mb", Kind::Int)];

const RETENTION: &[Field] = &[
    opt("finished_job_secs", Kind::Int),
    opt("max_finished_jobs", Kind::Int),
    opt("sweep_interval_ms", Kind::Int),
];

const API: &[Field] = &[opt("max_message_bytes", Kind::Int)];

const TLS: &[Field] = &[
    opt("ca", Kind::Str),
    opt("cert", Kind::Str),
    opt("key", Kind::Str),
];

const WORKERS: &[Field] = &[
    opt("lease_interval_ms", Kind::Int),
    opt("offline_after_ms", Kind::Int),
    opt("approval", Kind::Str),
    opt("max_acquire_wait_ms", Kind::Int),
    opt("expiry_check_interval_ms", Kind::Int),
    opt("max_clock_jump_ms", Kind::Int),
    opt("test_clock_offset_file", Kind::Str),
];

const SSISDB: &[Field] = &[
    opt("connection_string", Kind::Str),
    opt("password_file", Kind::Str),
    opt("password_env", Kind::Str),
    opt("ca", Kind::Str),
    opt("max_outbox_events", Kind::Int),
    opt("retention_secs", Kind::Int),
    opt("batch_events", Kind::Int),
    opt("connect_timeout_ms", Kind::Int),
    opt("ship_interval_ms", Kind::Int),
];

const TOP: &[Field] = &[
    req(
        "id",
        Kind::Int,
        "add `id = N`, this replica's id among the [[members]] ids",
    ),
    req(
        "data_dir",
        Kind::Str,
        "add `data_dir = \"...\"`, the directory for this replica's Raft log (relative to the \
         config file's directory)",
    ),
    opt("insecure", Kind::Bool),
    opt("tls", Kind::Table(TLS)),
    opt("api_listen", Kind::Str),
    opt("peer_listen", Kind::Str),
    opt("metrics_listen", Kind::Str),
    opt("peer_routes", Kind::TableArray(PEER_ROUTE)),
    req(
        "members",
        Kind::TableArray(MEMBER),
        "add one [[members]] table (id, api, peer) per replica, the same list in every \
         replica's file",
    ),
    opt("raft", Kind::Table(RAFT)),
    opt("proposals", Kind::Table(PROPOSALS)),
    opt("storage", Kind::Table(STORAGE)),
    opt("retention", Kind::Table(RETENTION)),
    opt("api", Kind::Table(API)),
    opt("workers", Kind::Table(WORKERS)),
    opt("ssisdb", Kind::Table(SSISDB)),
];

/// One step of a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn display_path(segs: &[Seg]) -> String {
    let mut out = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn parse_segment(part: &str) -> Option<Seg> {
    if part.is_empty() {
        None
    } else if part.bytes().all(|b| b.is_ascii_digit()) {
        part.parse().ok().map(Seg::Index)
    } else {
        Some(Seg::Key(part.to_string()))
    }
}

/// `raft.heartbeat_interval_ms`, `members[0].api`, `members.0.api`.
fn parse_key(key: &str) -> Option<Vec<Seg>> {
    let mut segs = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => part.split_at(i),
            None => (part, ""),
        };
        if !name.is_empty() {
            segs.push(parse_segment(name)?);
        } else if rest.is_empty() {
            return None;
        }
        while !rest.is_empty() {
            let inner = rest.strip_prefix('[')?;
            let close = inner.find(']')?;
            segs.push(Seg::Index(inner[..close].trim().parse().ok()?));
            rest = &inner[close + 1..];
        }
    }
    (!segs.is_empty()).then_some(segs)
}

enum LookupError {
    /// `segs[at]` is not a key of the table it names; `expected` are the keys that are.
    Unknown {
        at: usize,
        expected: Vec<&'static str>,
    },
    /// `segs[..at]` cannot be indexed by `segs[at]`.
    Shape { at: usize, message: &'static str },
}

/// The kind of value at a key path.
fn lookup(segs: &[Seg]) -> Result<Kind, LookupError> {
    let mut kind = Kind::Table(TOP);
    for (at, seg) in segs.iter().enumerate() {
        kind = match (kind, seg) {
            (Kind::Table(fields), Seg::Key(k)) => match fields.iter().find(|f| f.name == k) {
                Some(field) => field.kind,
                None => {
                    return Err(LookupError::Unknown {
                        at,
                        expected: fields.iter().map(|f| f.name).collect(),
                    })
                }
            },
            (Kind::TableArray(fields), Seg::Index(_)) => Kind::Table(fields),
            (Kind::TableArray(_), Seg::Key(_)) => {
                return Err(LookupError::Shape {
                    at,
                    message: "is an array: pick an entry by index, e.g. members[0].api",
                })
            }
            (Kind::Table(_), Seg::Index(_)) => {
                return Err(LookupError::Shape {
                    at,
                    message: "is a table, not an array",
                })
            }
            (_, _) => {
                return Err(LookupError::Shape {
                    at,
                    message: "is a single value and has no keys inside it",
                })
            }
        };
    }
    Ok(kind)
}

fn expected_list(names: Vec<&'static str>) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An override's text as a TOML value: a TOML literal if it parses as one, else a string;
/// string keys take the raw text unless it is a quoted TOML string.
fn parse_value(raw: &str, kind: Kind) -> Value {
    let literal = toml::from_str::<Table>(&format!("v = {}", raw.trim()))
        .ok()
        .filter(|t| t.len() == 1)
        .and_then(|mut t| t.remove("v"));
    match (kind, literal) {
        (Kind::Str, Some(Value::String(s))) => Value::String(s),
        (Kind::Str, _) | (_, None) => Value::String(raw.to_string()),
        (_, Some(value)) => value,
    }
}

/// Sets `value` at `segs` in the tree: tables merge, anything else replaces.
fn apply(
    tree: &mut Table,
    segs: &[Seg],
    value: Value,
    file: &Path,
    origin: &str,
) -> Result<(), ConfigError> {
    fn set(
        cur: &mut Value,
        segs: &[Seg],
        depth: usize,
        value: Value,
    ) -> Result<(), (usize, String)> {
        let Some((first, rest)) = segs.split_first() else {
            merge(cur, value);
            return Ok(());
        };
        match first {
            Seg::Key(k) => {
                let Value::Table(table) = cur else {
                    return Err((depth, format!("is {}, not a table", describe(cur))));
                };
                if rest.is_empty() && !table.contains_key(k) {
                    table.insert(k.clone(), value);
                    return Ok(());
                }
                let child = table
                    .entry(k.clone())
                    .or_insert_with(|| match rest.first() {
                        Some(Seg::Index(_)) => Value::Array(Vec::new()),
                        _ => Value::Table(Table::new()),
                    });
                set(child, rest, depth + 1, value)
            }
            Seg::Index(i) => {
                let Value::Array(items) = cur else {
                    return Err((depth, format!("is {}, not an array", describe(cur))));
                };
                if *i > items.len() {
                    return Err((
                        depth,
                        format!(
                            "has {} entries, so there is no index {i} (index {} adds one)",
                            items.len(),
                            items.len()
                        ),
                    ));
                }
                if *i == items.len() {
                    items.push(Value::Table(Table::new()));
                }
                set(&mut items[*i], rest, depth + 1, value)
            }
        }
    }
    fn merge(cur: &mut Value, value: Value) {
        match (cur, value) {
            (Value::Table(existing), Value::Table(new)) => {
                for (k, v) in new {
                    match existing.get_mut(&k) {
                        Some(slot) => merge(slot, v),
                        None => {
                            existing.insert(k, v);
                        }
                    }
                }
            }
            (cur, value) => *cur = value,
        }
    }

    let mut root = Value::Table(std::mem::take(tree));
    let result = set(&mut root, segs, 0, value);
    if let Value::Table(table) = root {
        *tree = table;
    }
    result.map_err(|(depth, message)| ConfigError::Override {
        path: file.to_path_buf(),
        arg: origin.to_string(),
        message: format!("`{}` {message}", display_path(&segs[..depth])),
    })
}

/// Which override last set each key (by display path); the file otherwise.
#[derive(Default)]
struct Origins(BTreeMap<String, String>);

impl Origins {
    fn set(&mut self, segs: &[Seg], origin: String) {
        let key = display_path(segs);
        let (dot, bracket) = (format!("{key}."), format!("{key}["));
        self.0
            .retain(|k, _| !k.starts_with(&dot) && !k.starts_with(&bracket));
        self.0.insert(key, origin);
    }

    /// Where the value of `key`, and of any other overridden key path that `message` mentions
    /// (e.g. the heartbeat an election timeout is compared with) or that decides it (`insecure`
    /// and `[tls]` for each other), came from; empty if from the file.
    fn note(&self, key: &str, message: &str) -> String {
        let mut notes: Vec<String> = self
            .get(key)
            .map(|o| format!("set by {o}"))
            .into_iter()
            .collect();
        let in_tls = |k: &str| k == "tls" || k.starts_with("tls.");
        for (other, origin) in &self.0 {
            let nested = other.contains(['.', '[']);
            let related = match key {
                "insecure" => in_tls(other),
                "tls" => other == "insecure",
                _ => in_tls(key) && other.starts_with("tls."),
            };
            if other != key && (related || nested && mentions(message, other)) {
                notes.push(format!("{other} set by {origin}"));
            }
        }
        if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join("; "))
        }
    }

    /// The origin of `key` or of the closest enclosing key that was overridden.
    fn get(&self, key: &str) -> Option<String> {
        let mut key = key;
        loop {
            if let Some(origin) = self.0.get(key) {
                return Some(origin.clone());
            }
            key = &key[..key.rfind(['.', '['])?];
        }
    }
}

/// Whether `text` names the key path `key` as a whole word.
fn mentions(text: &str, key: &str) -> bool {
    let part_of_key = |c: char| c.is_ascii_alphanumeric() || "_.[]".contains(c);
    text.match_indices(key).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + key.len()..].chars().next();
        !before.is_some_and(part_of_key) && !after.is_some_and(|c| part_of_key(c) && c != '.')
    })
}

fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the string {s:?}"),
        Value::Integer(i) => format!("the integer {i}"),
        Value::Float(f) => format!("the float {f}"),
        Value::Boolean(b) => format!("the boolean {b}"),
        Value::Datetime(d) => format!("the date-time {d}"),
        Value::Array(_) => "an array".into(),
        Value::Table(_) => "a table".into(),
    }
}

fn check_table(
    table: &Table,
    fields: &'static [Field],
    path: &mut Vec<Seg>,
    file: &Path,
    origins: &Origins,
) -> Result<(), ConfigError> {
    for (k, v) in table {
        path.push(Seg::Key(k.clone()));
        let key = display_path(path);
        let Some(field) = fields.iter().find(|f| f.name == k) else {
            return Err(ConfigError::UnknownKey {
                path: file.to_path_buf(),
                origin: origins.get(&key),
                key,
                expected: expected_list(fields.iter().map(|f| f.name).collect()),
            });
        };
        let wrong = |what: &str| ConfigError::Invalid {
            path: file.to_path_buf(),
            key: key.clone(),
            message: format!(
                "must be {what}, found {}{}",
                match v {
                    // May be a connection string with a password in it.
                    Value::String(_) if key == "ssisdb" || key.starts_with("ssisdb.") => {
                        "a string".into()
                    }
                    _ => describe(v),
                },
                origin_note(&origins.get(&key))
            ),
        };
        match (field.kind, v) {
            (Kind::Int, Value::Integer(i)) if *i >= 0 => {}
            (Kind::Int, _) => return Err(wrong("a whole number, 0 or more")),
            (Kind::Bool, Value::Boolean(_)) => {}
            (Kind::Bool, _) => return Err(wrong("true or false")),
            (Kind::Str, Value::String(_)) => {}
            (Kind::Str, _) => return Err(wrong("a string in quotes")),
            (Kind::Table(inner), Value::Table(t)) => check_table(t, inner, path, file, origins)?,
            (Kind::Table(_), _) => return Err(wrong(&format!("a table ([{key}])"))),
            (Kind::TableArray(inner), Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(Seg::Index(i));
                    match item {
                        Value::Table(t) => check_table(t, inner, path, file, origins)?,
                        other => {
                            let key = display_path(path);
                            return Err(ConfigError::Invalid {
                                path: file.to_path_buf(),
                                message: format!(
                                    "must be a table ([[{}]] entry), found {}{}",
                                    k,
                                    describe(other),
                                    origin_note(&origins.get(&key))
                                ),
                                key,
                            });
                        }
                    }
                    path.pop();
                }
            }
            (Kind::TableArray(_), _) => {
                return Err(wrong(&format!("an array of tables ([[{key}]] entries)")))
            }
        }
        path.pop();
    }
    for field in fields {
        if let (Some(hint), false) = (field.required, table.contains_key(field.name)) {
            path.push(Seg::Key(field.name.to_string()));
            let key = display_path(path);
            path.pop();
            return Err(ConfigError::Invalid {
                path: file.to_path_buf(),
                message: format!("is missing; {hint}{}", origin_note(&origins.get(&key))),
                key,
            });
        }
    }
    Ok(())
}

/// `host:port` (or `[v6]:port`) with a numeric port; port 0 only when `allow_port_zero`.
fn check_addr(addr: &str, allow_port_zero: bool) -> Result<(), String> {
    const EXAMPLE: &str = "e.g. 127.0.0.1:7101 or replica-1.example.net:7101";
    if addr.contains("://") {
        return Err(format!(
            "`{addr}` has a scheme; write only host:port, {EXAMPLE}"
        ));
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!(
            "`{addr}` is not host:port (the :port is missing), {EXAMPLE}"
        ));
    };
    if host.is_empty() {
        return Err(format!("`{addr}` has no host, {EXAMPLE}"));
    }
    if let Some(inner) = host.strip_prefix('[') {
        let ok = inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<Ipv6Addr>().is_ok());
        if !ok {
            return Err(format!(
                "`{addr}`: `{host}` is not a bracketed IPv6 address like [::1]"
            ));
        }
    } else if host.contains(':') {
        return Err(format!(
            "`{addr}`: write IPv6 addresses in brackets, e.g. [::1]:7101"
        ));
    } else if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        return Err(format!(
            "`{addr}`: `{host}` is not a host name or IP address, {EXAMPLE}"
        ));
    }
    match port.parse::<u16>() {
        Ok(0) if !allow_port_zero => Err(format!(
            "`{addr}` has port 0; members need a fixed port other replicas and clients can dial"
        )),
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "`{addr}`: port `{port}` is not a number between 1 and 65535, {EXAMPLE}"
        )),
    }
}

/// Creates `dir` and checks a file can be written and removed in it.
fn probe_data_dir(dir: &Path) -> Result<(), String> {
    static PROBES: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(dir).map_err(|e| {
        format!(
            "cannot create directory {}: {e}; choose a directory this user can write",
            dir.display()
        )
    })?;
    let probe = dir.join(format!(
        ".scaleout-write-probe-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&probe, b"probe").map_err(|e| {
        format!(
            "directory {} is not writable: {e}; choose a directory this user can write",
            dir.display()
        )
    })?;
    std::fs::remove_file(&probe)
        .map_err(|e| format!("cannot remove the probe file {}: {e}", probe.display()))
}

impl fmt::Display for MemberConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (api {}, peer {})", self.id, self.api, self.peer)
    }
}

/// Every key a replica's file accepts, as docs/configuration.md names them: keys of tables as
/// dotted paths (`raft.heartbeat_interval_ms`), an array of tables by its name (`members`) and
/// its entries' keys as `members[].id`. Tables themselves (`raft`, `tls`) are not listed.
/// `tests/deploy_files.rs` checks the reference against this list.
pub fn known_keys() -> Vec<String> {
    fn walk(fields: &[Field], prefix: &str, out: &mut Vec<String>) {
        for field in fields {
            let key = format!("{prefix}{}", field.name);
            match field.kind {
                Kind::Table(inner) => walk(inner, &format!("{key}."), out),
                Kind::TableArray(inner) => {
                    walk(inner, &format!("{key}[]."), out);
                    out.push(key);
                }
                Kind::Int | Kind::Bool | Kind::Str => out.push(key),
            }
        }
    }
    let mut out = Vec::new();
    walk(TOP, "", &mut out);
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const VALID: &str = r#"
id = 2
data_dir = "data/m2"
insecure = true

[[members]]
id = 1
api = "127.0.0.1:7101"
peer = "127.0.0.1:7201"

[[members]]
id = 2
api = "127.0.0.1:7102"
peer = "127.0.0.1:7202"

[[members]]
id = 3
api = "127.0.0.1:7103"
peer = "127.0.0.1:7203"

[raft]
heartbeat_interval_ms = 100
"#;

    fn sets(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn parse(dir: &Path, text: &str, overrides: &[&str]) -> Result<MasterConfig, ConfigError> {
        MasterConfig::from_toml_str(text, dir, &sets(overrides))
    }

    fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn valid_file_parses_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let c = parse(dir.path(), VALID, &[]).unwrap();
        assert_eq!(c.id, 2);
        assert!(c.insecure);
        assert_eq!(c.members.len(), 3);
        assert_eq!(c.me().api, "127.0.0.1:7102");
        assert_eq!(c.api_listen, "127.0.0.1:7102");
        assert_eq!(c.peer_listen, "127.0.0.1:7202");
        assert_eq!(c.peers().map(|m| m.id).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(c.raft, RaftSettings::default());
        assert_eq!(c.proposals, ProposalSettings::default());
        assert_eq!(c.retention, RetentionSettings::default());
        assert_eq!(c.retention.retention_ms(), 86_400_000);
        let never = RetentionSettings {
            finished_job_secs: 0,
            ..RetentionSettings::default()
        };
        assert_eq!(never.retention_ms(), u64::MAX, "0: never by age");
        assert_eq!(c.storage.cache_capacity_bytes(), 64 << 20);
        assert_eq!(c.api.max_message_bytes, 4 << 20);
        assert!(c.data_dir.is_absolute());
        assert!(c.data_dir.is_dir());
        assert_eq!(
            c.data_dir,
            dir.path().canonicalize().unwrap().join("data/m2")
        );
        // The probe file is gone.
        assert_eq!(std::fs::read_dir(&c.data_dir).unwrap().count(), 0);
        c.validate().unwrap();
    }

    #[test]
    fn explicit_listen_addresses_and_sections() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{VALID}\n[proposals]\nmax_batch = 64\nlinger_us = 0\nmax_in_flight = 1\n\
             [storage]\ncache_capacity_mb = 8\n[api]\nmax_message_bytes = 65536\n"
        );
        let c = parse(
            dir.path(),
            &text,
            &[
                "api_listen=0.0.0.0:7102",
                "peer_listen=[::]:7202",
                "raft.keep_logs_after_snapshot=0",
            ],
        )
        .unwrap();
        assert_eq!(c.api_listen, "0.0.0.0:7102");
        assert_eq!(c.peer_listen, "[::]:7202");
        assert_eq!(
            c.proposals,
            ProposalSettings {
                max_batch: 64,
                linger_us: 0,
                max_in_flight: 1
            }
        );
        assert_eq!(c.storage.cache_capacity_mb, 8);
        assert_eq!(c.api.max_message_bytes, 65536);
        assert_eq!(c.raft.keep_logs_after_snapshot, 0);
    }

    /// Each rule: overrides applied to VALID, the key the error must name, and a fragment of
    /// its message.
    #[test]
    fn each_validation_rule_names_its_key() {
        let members = |list: &str| format!("members=[{list}]");
        let m =
            |id: u64, api: &str, peer: &str| format!("{{id={id},api=\"{api}\",peer=\"{peer}\"}}");
        let one = m(2, "127.0.0.1:7102", "127.0.0.1:7202");
        let cases: Vec<(Vec<String>, &str, &str)> = vec![
            (vec![members("")], "members", "empty"),
            (
                vec![members(&format!(
                    "{one},{}",
                    m(2, "127.0.0.1:7103", "127.0.0.1:7203")
                ))],
                "members",
                "member id 2 is listed twice",
            ),
            (
                vec!["members[0].api=127.0.0.1:7102".into()],
                "members",
                "address 127.0.0.1:7102",
            ),
            (
                vec!["members[2].peer=127.0.0.1:7102".into()],
                "members",
                "used twice",
            ),
            (vec!["id=9".into()], "id", "not among the members"),
            (
                vec!["members[2].peer=127.0.0.1".into()],
                "members[2].peer",
                "not host:port",
            ),
            (
                vec!["members[2].peer=127.0.0.1:peer".into()],
                "members[2].peer",
                "port `peer`",
            ),
            (
                vec!["members[1].api=127.0.0.1:0".into()],
                "members[1].api",
                "port 0",
            ),
            (
                vec!["members[0].api=http://a:1".into()],
                "members[0].api",
                "scheme",
            ),
            (
                vec!["members[0].api=::1:7101".into()],
                "members[0].api",
                "brackets",
            ),
            (
                vec!["api_listen=localhost".into()],
                "api_listen",
                "not host:port",
            ),
            (
                vec!["peer_listen=127.0.0.1:7102".into()],
                "peer_listen",
                "also api_listen",
            ),
            (
                vec!["metrics_listen=127.0.0.1:7202".into()],
                "metrics_listen",
                "address of its own",
            ),
            (
                vec!["metrics_listen=metrics-host".into()],
                "metrics_listen",
                "not host:port",
            ),
            (
                vec!["peer_routes=[{id=2,address=\"127.0.0.1:7999\"}]".into()],
                "peer_routes[0].id",
                "own id",
            ),
            (
                vec![
                    "peer_routes=[{id=1,address=\"127.0.0.1:7999\"},{id=1,address=\"127.0.0.1:7998\"}]"
                        .into(),
                ],
                "peer_routes[1].id",
                "two routes",
            ),
            (
                vec!["peer_routes=[{id=1,address=\"nowhere\"}]".into()],
                "peer_routes[0].address",
                "not host:port",
            ),
            (
                vec!["peer_routes=[{id=1}]".into()],
                "peer_routes[0].address",
                "needs id",
            ),
            (vec!["insecure=false".into()], "tls", "no [tls] section"),
            (
                vec!["tls={ca=\"ca.pem\",cert=\"c.pem\",key=\"k.pem\"}".into()],
                "insecure",
                "choose one",
            ),
            (
                vec!["insecure=false".into(), "tls.ca=ca.pem".into()],
                "tls.cert",
                "is missing",
            ),
            (vec!["tls.ca=1".into(), "tls=2".into()], "tls", "a table"),
            (
                vec!["raft.heartbeat_interval_ms=0".into()],
                "raft.heartbeat_interval_ms",
                "greater than 0",
            ),
            (
                vec!["raft.election_timeout_min_ms=150".into()],
                "raft.election_timeout_min_ms",
                "at least twice",
            ),
            (
                vec!["raft.election_timeout_max_ms=250".into()],
                "raft.election_timeout_max_ms",
                "greater than raft.election_timeout_min_ms",
            ),
            (
                vec!["raft.snapshot_every_logs=0".into()],
                "raft.snapshot_every_logs",
                "greater than 0",
            ),
            (
                vec!["raft.install_snapshot_timeout_ms=0".into()],
                "raft.install_snapshot_timeout_ms",
                "greater than 0",
            ),
            (
                vec!["proposals.max_batch=0".into()],
                "proposals.max_batch",
                "between 1 and 10000",
            ),
            (
                vec!["proposals.max_batch=10001".into()],
                "proposals.max_batch",
                "between 1 and 10000",
            ),
            (
                vec!["proposals.linger_us=100001".into()],
                "proposals.linger_us",
                "at most 100000",
            ),
            (
                vec!["proposals.max_in_flight=0".into()],
                "proposals.max_in_flight",
                "at least 1",
            ),
            (
                vec!["storage.cache_capacity_mb=0".into()],
                "storage.cache_capacity_mb",
                "between 1",
            ),
            (
                vec!["retention.finished_job_secs=30".into()],
                "retention.finished_job_secs",
                "at least 60",
            ),
            (
                vec!["retention.max_finished_jobs=10".into()],
                "retention.max_finished_jobs",
                "at least 100",
            ),
            (
                vec!["retention.sweep_interval_ms=0".into()],
                "retention.sweep_interval_ms",
                "between 100",
            ),
            (
                vec!["api.max_message_bytes=65535".into()],
                "api.max_message_bytes",
                "64 KiB",
            ),
            (
                vec!["api.max_message_bytes=268435457".into()],
                "api.max_message_bytes",
                "256 MiB",
            ),
            // Shape errors, caught before deserializing.
            (
                vec!["raft.heartbeat_interval_ms=fast".into()],
                "raft.heartbeat_interval_ms",
                "whole number",
            ),
            (
                vec!["raft.heartbeat_interval_ms=-5".into()],
                "raft.heartbeat_interval_ms",
                "whole number",
            ),
            (vec!["insecure=yes".into()], "insecure", "true or false"),
            (vec!["raft=3".into()], "raft", "a table"),
            (
                vec!["members=[1]".into()],
                "members[0]",
                "[[members]] entry",
            ),
            (
                vec![members("{id=2,api=\"127.0.0.1:7102\"}")],
                "members[0].peer",
                "is missing",
            ),
        ];
        for (overrides, key, fragment) in cases {
            let dir = tempfile::tempdir().unwrap();
            let err = MasterConfig::from_toml_str(VALID, dir.path(), &overrides)
                .expect_err(&format!("{overrides:?} should be rejected"));
            let text = err.to_string();
            assert_eq!(err.key(), Some(key), "{overrides:?}: {text}");
            assert!(text.contains(&format!("`{key}`")), "{overrides:?}: {text}");
            assert!(text.contains(fragment), "{overrides:?}: {text}");
            assert!(text.contains("<inline config>"), "{overrides:?}: {text}");
            if key != "members" {
                assert!(
                    text.contains("set by --set"),
                    "{overrides:?} names its origin: {text}"
                );
            }
        }
    }

    #[test]
    fn missing_required_keys() {
        let dir = tempfile::tempdir().unwrap();
        for (key, text) in [
            ("id", VALID.replacen("id = 2\n", "", 1)),
            ("data_dir", VALID.replace("data_dir = \"data/m2\"\n", "")),
            (
                "members",
                "id = 1\ndata_dir = \"d\"\ninsecure = true\n".to_string(),
            ),
        ] {
            let err = parse(dir.path(), &text, &[]).unwrap_err();
            assert_eq!(err.key(), Some(key), "{err}");
            assert!(err.to_string().contains("is missing"), "{err}");
        }
        let err = parse(dir.path(), VALID, &["data_dir="]).unwrap_err();
        assert_eq!(err.key(), Some("data_dir"), "{err}");
    }

    #[test]
    fn unwritable_data_dir_names_path_and_os_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = write_file(dir.path(), "not-a-dir", "x");
        let text = VALID.replace("data/m2", "not-a-dir/m2");
        let err = parse(dir.path(), &text, &[]).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.key(), Some("data_dir"), "{msg}");
        assert!(
            msg.contains(&blocker.join("m2").display().to_string()),
            "{msg}"
        );
        assert!(msg.to_lowercase().contains("not a directory"), "{msg}");
    }

    #[test]
    fn insecure_defaults_to_false_and_then_tls_is_required() {
        let dir = tempfile::tempdir().unwrap();
        let err = parse(dir.path(), &VALID.replace("insecure = true\n", ""), &[]).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.key(), Some("tls"), "{msg}");
        assert!(msg.contains("no [tls] section"), "{msg}");
        assert!(msg.contains("tls.ca, tls.cert and tls.key"), "{msg}");
        assert!(msg.contains("scaleout certs init --dir certs"), "{msg}");
        assert!(msg.contains("insecure = true"), "{msg}");
        assert!(!msg.contains("set by"), "{msg}");

        // An override that turns insecure off is named.
        let err = parse(dir.path(), VALID, &["insecure=false"]).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.key(), Some("tls"), "{msg}");
        assert!(
            msg.contains("(insecure set by --set insecure=false)"),
            "{msg}"
        );
    }

    /// Development certificates (3 replicas, one worker, operator, admin) in `dir/<name>`.
    fn dev_certs(dir: &Path, name: &str) -> crate::certs::CertsReport {
        crate::certs::init(&crate::certs::CertsInit::new(dir.join(name)).with_worker_count(1))
            .unwrap()
    }

    /// VALID (replica 2) with `[tls]` instead of `insecure = true`.
    fn with_tls(ca: &str, cert: &str, key: &str) -> String {
        format!(
            "{}\n[tls]\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n",
            VALID.replace("insecure = true\n", "")
        )
    }

    fn replica_2_tls() -> String {
        with_tls(
            "certs/ca.pem",
            "certs/replica-2.pem",
            "certs/replica-2-key.pem",
        )
    }

    #[test]
    fn tls_identity_of_this_replica_loads() {
        let dir = tempfile::tempdir().unwrap();
        dev_certs(dir.path(), "certs");
        let c = parse(dir.path(), &replica_2_tls(), &[]).unwrap();
        assert!(!c.insecure);
        let certs = dir.path().join("certs");
        assert_eq!(
            c.tls,
            Some(TlsPaths {
                ca: certs.join("ca.pem"),
                cert: certs.join("replica-2.pem"),
                key: certs.join("replica-2-key.pem"),
            })
        );
        c.validate().unwrap();
    }

    #[test]
    fn tls_paths_resolve_against_the_config_directory() {
        let dir = tempfile::tempdir().unwrap();
        dev_certs(dir.path(), "etc/certs");
        let file = write_file(dir.path(), "etc/scaleout/m2.toml", &{
            with_tls(
                "../certs/ca.pem",
                "../certs/replica-2.pem",
                "../certs/replica-2-key.pem",
            )
        });
        let c = load_with_env(&file, &[], std::iter::empty()).unwrap();
        let tls = c.tls.unwrap();
        let conf = dir.path().join("etc/scaleout");
        assert_eq!(tls.ca, conf.join("../certs/ca.pem"));
        assert_eq!(tls.cert, conf.join("../certs/replica-2.pem"));
        assert_eq!(tls.key, conf.join("../certs/replica-2-key.pem"));
        assert!(tls.ca.is_absolute() && tls.ca.is_file());

        // From the environment or --set: relative to the current directory, like data_dir.
        let cwd = std::env::current_dir().unwrap();
        let env = vec![(
            "SCALEOUT_TLS__CA".to_string(),
            "no-such-dir/ca.pem".to_string(),
        )];
        let err = load_with_env(&file, &[], env).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.key(), Some("tls.ca"), "{msg}");
        assert!(
            msg.contains(&cwd.join("no-such-dir/ca.pem").display().to_string()),
            "{msg}"
        );
        assert!(
            msg.contains("environment variable SCALEOUT_TLS__CA"),
            "{msg}"
        );
        let err = load_with_env(
            &file,
            &sets(&["tls.key=no-such-dir/k.pem"]),
            std::iter::empty(),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.key(), Some("tls.key"), "{msg}");
        assert!(
            msg.contains(&cwd.join("no-such-dir/k.pem").display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("set by --set tls.key="), "{msg}");
    }

    #[test]
    fn insecure_and_tls_conflict() {
        let dir = tempfile::tempdir().unwrap();
        dev_certs(dir.path(), "certs");
        let text = format!("insecure = true\n{}", replica_2_tls());
        let err = parse(dir.path(), &text, &[]).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.key(), Some("insecure"), "{msg}");
        assert!(msg.contains("remove [tls] for plaintext"), "{msg}");
        assert!(msg.contains("insecure = false"), "{msg}");
        // Also when [tls] is incomplete: the conflict is the first thing to fix.
        let text = format!("{VALID}\n[tls]\nca = \"certs/ca.pem\"\n");
        let err = parse(dir.path(), &text, &[]).unwrap_err();
        assert_eq!(err.key(), Some("insecure"), "{err}");
        // And via an override.
        let err = parse(dir.path(), &replica_2_tls(), &["insecure=true"]).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.key(), Some("insecure"), "{msg}");
        assert!(msg.contains("set by --set insecure=true"), "{msg}");
    }

    #[test]
    fn missing_tls_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        dev_certs(dir.path(), "certs");
        for missing in ["ca", "cert", "key"] {
            let text = replica_2_tls()
                .lines()
                .filter(|line| !line.starts_with(&format!("{missing} = ")))
                .collect::<Vec<_>>()
                .join("\n");
            let err = parse(dir.path(), &text, &[]).unwrap_err();
            let msg = err.to_string();
            let key = format!("tls.{missing}");
            assert_eq!(err.key(), Some(key.as_str()), "{msg}");
            assert!(msg.contains("is missing"), "{msg}");
        }
        let err = parse(dir.path(), &replica_2_tls(), &["tls.key= "]).unwrap_err();
        assert_eq!(err.key(), Some("tls.key"), "{err}");
        let err = parse(
            dir.path(),
            &format!("{}keyfile = \"k.pem\"\n", replica_2_tls()),
            &[],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown key `tls.keyfile`"),
            "{err}"
        );
    }

    #[test]
    fn certificate_of_another_replica_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        dev_certs(dir.path(), "certs");
        let err = parse(dir.path(), &replica_2_tls(), &["id=1"]).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.key(), Some("tls.cert"), "{msg}");
        assert!(msg.contains("replica-2.pem"), "{msg}");
        assert!(msg.contains("is for scaleout://replica/2"), "{msg}");
        assert!(msg.contains("this is replica 1"), "{msg}");
        assert!(msg.contains("use replica-1.pem"), "{msg}");
        assert!(msg.contains("scaleout://replica/1"), "{msg}");

        // A worker's certificate is not a replica's either.
        let worker = std::fs::read_dir(dir.path().join("certs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .find(|n| n.starts_with("worker-") && !n.ends_with("-key.pem"))
            .unwrap();
        let stem = worker.trim_end_matches(".pem");
        let text = with_tls(
            "certs/ca.pem",
            &format!("certs/{stem}.pem"),
            &format!("certs/{stem}-key.pem"),
        );
        let err = parse(dir.path(), &text, &[]).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.key(), Some("tls.cert"), "{msg}");
        assert!(msg.contains("is for scaleout://worker/"), "{msg}");
    }

    #[test]
    fn certificate_from_another_ca_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        dev_certs(dir.path(), "certs");
        dev_certs(dir.path(), "other");
        let text = with_tls(
            "certs/ca.pem",
            "other/replica-2.pem",
            "other/replica-2-key.pem",
        );
        let err = parse(dir.path(), &text, &[]).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.key(), Some("tls.cert"), "{msg}");
        assert!(msg.contains("wrong CA"), "{msg}");
        assert!(msg.contains("other/replica-2.pem"), "{msg}");

        // The key of another certificate.
        let text = with_tls(
            "certs/ca.pem",
            "certs/replica-2.pem",
            "certs/replica-1-key.pem",
        );
        let err = parse(dir.path(), &text, &[]).unwrap_err();
        assert_eq!(err.key(), Some("tls.key"), "{err}");
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn missing_tls_files_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        dev_certs(dir.path(), "certs");
        for (key, text) in [
            (
                "tls.ca",
                with_tls(
                    "certs/absent.pem",
                    "certs/replica-2.pem",
                    "certs/replica-2-key.pem",
                ),
            ),
            (
                "tls.cert",
                with_tls(
                    "certs/ca.pem",
                    "certs/absent.pem",
                    "certs/replica-2-key.pem",
                ),
            ),
            (
                "tls.key",
                with_tls("certs/ca.pem", "certs/replica-2.pem", "certs/absent.pem"),
            ),
            (
                "tls.cert",
                with_tls(
                    "certs/ca.pem",
                    "certs/replica-2-key.pem",
                    "certs/replica-2-key.pem",
                ),
            ),
        ] {
            let err = parse(dir.path(), &text, &[]).unwrap_err();
            let msg = err.to_string();
            assert_eq!(err.key(), Some(key), "{msg}");
            assert!(msg.contains(&format!("`{key}`")), "{msg}");
            assert!(
                msg.contains(&dir.path().join("certs").display().to_string()),
                "{msg}"
            );
        }
        let err = parse(
            dir.path(),
            &with_tls(
                "certs/absent.pem",
                "certs/replica-2.pem",
                "certs/replica-2-key.pem",
            ),
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("cannot read the ca file"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named_with_their_full_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(
            dir.path(),
            "m.toml",
            &VALID.replace("heartbeat_interval_ms", "heartbeat_ms"),
        );
        let err = load_with_env(&file, &[], std::iter::empty()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::UnknownKey { .. }), "{msg}");
        assert!(msg.contains("unknown key `raft.heartbeat_ms`"), "{msg}");
        assert!(msg.contains(&file.display().to_string()), "{msg}");
        assert!(msg.contains("`heartbeat_interval_ms`"), "{msg}");

        let text = VALID.replacen(
            "peer = \"127.0.0.1:7202\"",
            "peer = \"127.0.0.1:7202\"\nadress = \"x\"",
            1,
        );
        let err = parse(dir.path(), &text, &[]).unwrap_err();
        assert!(
            err.to_string().contains("unknown key `members[1].adress`"),
            "{err}"
        );

        let err = parse(dir.path(), &VALID.replace("[raft]", "[rafts]"), &[]).unwrap_err();
        assert!(err.to_string().contains("unknown key `rafts`"), "{err}");

        let err = parse(dir.path(), VALID, &["raft.heartbeat=1"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unknown key `raft.heartbeat`"), "{msg}");
        assert!(msg.contains("set by --set raft.heartbeat=1"), "{msg}");

        let err = parse(dir.path(), VALID, &["raft={heartbeat=1}"]).unwrap_err();
        assert!(
            err.to_string().contains("unknown key `raft.heartbeat`"),
            "{err}"
        );
    }

    #[test]
    fn malformed_overrides_and_syntax_errors() {
        let dir = tempfile::tempdir().unwrap();
        for (arg, fragment) in [
            ("raft.heartbeat_interval_ms", "key.path=value"),
            ("raft..x=1", "not a key path"),
            ("members.api=x:1", "pick an entry by index"),
            ("members[7].api=x:1", "no index 7"),
            ("id.x=1", "single value"),
        ] {
            let err = parse(dir.path(), VALID, &[arg]).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(arg) || msg.contains("members"), "{arg}: {msg}");
            assert!(msg.contains(fragment), "{arg}: {msg}");
        }
        let err = parse(dir.path(), "id = = 1", &[]).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        assert!(err.to_string().contains("line 1"), "{err}");

        let err =
            load_with_env(&dir.path().join("absent.toml"), &[], std::iter::empty()).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
        assert!(err.to_string().contains("absent.toml"), "{err}");
    }

    #[test]
    fn env_and_set_overrides_apply_in_precedence_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(dir.path(), "conf/m2.toml", VALID);
        let abs = dir.path().join("elsewhere");
        let env = |extra: &[(&str, &str)]| {
            let mut vars = vec![
                (
                    "SCALEOUT_RAFT__HEARTBEAT_INTERVAL_MS".to_string(),
                    "110".to_string(),
                ),
                ("SCALEOUT_DATA_DIR".to_string(), abs.display().to_string()),
                (
                    "SCALEOUT_PROPOSALS__MAX_BATCH".to_string(),
                    "64".to_string(),
                ),
                (
                    "SCALEOUT_MEMBERS__1__API".to_string(),
                    "localhost:7302".to_string(),
                ),
                // Used by the CLI or unrelated: ignored.
                ("SCALEOUT_ENDPOINTS".to_string(), "a:1,b:2".to_string()),
                ("SCALEOUT_LOG".to_string(), "debug".to_string()),
                ("SCALEOUT_CONFIG".to_string(), "/nowhere.toml".to_string()),
                ("SCALEOUT_SOMETHING_ELSE".to_string(), "1".to_string()),
                ("SCALEOUT_RAFT__NOPE".to_string(), "1".to_string()),
                ("PATH".to_string(), "/bin".to_string()),
            ];
            vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            vars
        };

        let c = load_with_env(&file, &[], env(&[])).unwrap();
        assert_eq!(c.raft.heartbeat_interval_ms, 110, "env beats the file");
        assert_eq!(c.proposals.max_batch, 64);
        assert_eq!(c.data_dir, abs.canonicalize().unwrap());
        assert_eq!(c.me().api, "localhost:7302");
        assert_eq!(
            c.api_listen, "localhost:7302",
            "listen default follows the overridden member"
        );

        let c = load_with_env(
            &file,
            &sets(&[
                "raft.heartbeat_interval_ms=120",
                "proposals.max_batch=32",
                "proposals.max_batch=16",
            ]),
            env(&[]),
        )
        .unwrap();
        assert_eq!(c.raft.heartbeat_interval_ms, 120, "--set beats env");
        assert_eq!(c.proposals.max_batch, 16, "later --set wins");

        // A whole-array env override applies before an indexed one.
        let c = load_with_env(
            &file,
            &[],
            env(&[(
                "SCALEOUT_MEMBERS",
                r#"[{id=2,api="127.0.0.1:7402",peer="127.0.0.1:7502"},{id=3,api="127.0.0.1:7403",peer="127.0.0.1:7503"}]"#,
            )]),
        )
        .unwrap();
        assert_eq!(c.members.len(), 2);
        assert_eq!(c.members[1].api, "localhost:7302");

        // Bad values name the variable that set them.
        let err = load_with_env(
            &file,
            &[],
            env(&[("SCALEOUT_RAFT__ELECTION_TIMEOUT_MAX_MS", "200")]),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.key(), Some("raft.election_timeout_max_ms"), "{msg}");
        assert!(
            msg.contains("environment variable SCALEOUT_RAFT__ELECTION_TIMEOUT_MAX_MS"),
            "{msg}"
        );
        assert!(msg.contains(&file.display().to_string()), "{msg}");
        // A rule comparing two keys also names the source of the other one.
        let err =
            load_with_env(&file, &sets(&["raft.heartbeat_interval_ms=250"]), env(&[])).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.key(), Some("raft.election_timeout_min_ms"), "{msg}");
        assert!(
            msg.contains(
                "(raft.heartbeat_interval_ms set by --set raft.heartbeat_interval_ms=250)"
            ),
            "{msg}"
        );
        let err = load_with_env(&file, &[], env(&[("SCALEOUT_ID", "two")])).unwrap_err();
        assert!(err.to_string().contains("SCALEOUT_ID"), "{err}");
    }

    #[test]
    fn string_keys_take_raw_text_and_literals_parse() {
        assert_eq!(parse_value("150", Kind::Int), Value::Integer(150));
        assert_eq!(parse_value("true", Kind::Bool), Value::Boolean(true));
        assert_eq!(parse_value("150", Kind::Str), Value::String("150".into()));
        assert_eq!(
            parse_value("\"a b\"", Kind::Str),
            Value::String("a b".into())
        );
        assert_eq!(
            parse_value("/var/lib/x", Kind::Str),
            Value::String("/var/lib/x".into())
        );
        assert_eq!(
            parse_value("1\nx = 2", Kind::Int),
            Value::String("1\nx = 2".into())
        );
        assert!(matches!(parse_value("[1, 2]", Kind::Int), Value::Array(_)));
        assert_eq!(parse_key("members[0].api"), parse_key("members.0.api"));
        assert_eq!(
            parse_key("members[1].peer").unwrap(),
            vec![
                Seg::Key("members".into()),
                Seg::Index(1),
                Seg::Key("peer".into())
            ]
        );
        assert_eq!(parse_key(""), None);
        assert_eq!(parse_key("a..b"), None);
    }

    #[test]
    fn relative_data_dir_resolves_against_the_config_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(
            dir.path(),
            "etc/scaleout/m2.toml",
            &VALID.replace("data/m2", "../../var/m2"),
        );
        let c = load_with_env(&file, &[], std::iter::empty()).unwrap();
        assert_eq!(
            c.data_dir,
            dir.path().canonicalize().unwrap().join("var/m2")
        );
        assert!(c.data_dir.is_dir());
    }

    /// The schema used for key checks and overrides lists exactly the structs' fields.
    #[test]
    fn schema_matches_structs() {
        fn leaves(value: &Value, prefix: String, out: &mut BTreeSet<String>) {
            match value {
                Value::Table(t) => {
                    for (k, v) in t {
                        let key = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        leaves(v, key, out);
                    }
                }
                Value::Array(items) => {
                    for item in items {
                        leaves(item, format!("{prefix}[]"), out);
                    }
                }
                _ => {
                    out.insert(prefix);
                }
            }
        }
        fn schema(fields: &[Field], prefix: &str, out: &mut BTreeSet<String>) {
            for f in fields {
                let key = if prefix.is_empty() {
                    f.name.to_string()
                } else {
                    format!("{prefix}.{}", f.name)
                };
                match f.kind {
                    Kind::Table(inner) => schema(inner, &key, out),
                    Kind::TableArray(inner) => schema(inner, &format!("{key}[]"), out),
                    _ => {
                        out.insert(key);
                    }
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let mut c = parse(dir.path(), VALID, &[]).unwrap();
        // Optional tables are left out when unset; fill them so their keys are compared too.
        c.tls = Some(TlsPaths::in_dir(dir.path(), "replica-2"));
        c.ssisdb = SsisdbSettings {
            connection_string: Some("Server=h;User Id=u".into()),
            password_file: Some(dir.path().join("pw")),
            password_env: Some("PW".into()),
            ca: Some(dir.path().join("ca.pem")),
            ..SsisdbSettings::default()
        };
        c.peer_routes = vec![PeerRoute {
            id: 3,
            address: "127.0.0.1:7303".into(),
        }];
        c.metrics_listen = Some("127.0.0.1:9464".into());
        c.workers.test_clock_offset_file = Some(dir.path().join("clock-offset"));
        let mut from_structs = BTreeSet::new();
        leaves(
            &Value::try_from(&c).unwrap(),
            String::new(),
            &mut from_structs,
        );
        let mut from_schema = BTreeSet::new();
        schema(TOP, "", &mut from_schema);
        assert_eq!(from_structs, from_schema);
    }

    #[test]
    fn peer_routes_parse() {
        let dir = tempfile::tempdir().unwrap();
        let c = parse(
            dir.path(),
            &format!("{VALID}\n[[peer_routes]]\nid = 1\naddress = \"10.0.0.9:7201\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(
            c.peer_routes,
            vec![PeerRoute {
                id: 1,
                address: "10.0.0.9:7201".into()
            }]
        );
    }

    const SSISDB_CS: &str =
        "Server=tcp:ag-listener.corp,1433;Database=SSISDB;User Id=scaleout_master;Encrypt=true";

    #[test]
    fn ssisdb_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let c = parse(dir.path(), VALID, &[]).unwrap();
        let s = &c.ssisdb;
        assert_eq!(*s, SsisdbSettings::default());
        assert!(!s.enabled());
        assert_eq!(s.connection_string, None);
        assert_eq!(s.password_file, None);
        assert_eq!(s.password_env, None);
        assert_eq!(s.ca, None);
        assert_eq!(s.max_outbox_events, 100_000);
        assert_eq!(s.retention_secs, 604_800);
        assert_eq!(s.retention(), Duration::from_secs(7 * 24 * 3600));
        assert_eq!(s.batch_events, 1_000);
        assert_eq!(s.connect_timeout(), Duration::from_millis(15_000));
        assert_eq!(s.ship_interval(), Duration::from_millis(200));
        let err = s.password().unwrap_err();
        assert!(err.contains("ssisdb.password_file"), "{err}");
        // Blank is not configured either.
        let c = parse(dir.path(), VALID, &["ssisdb.connection_string=\" \""]).unwrap();
        assert!(!c.ssisdb.enabled());
        assert!(SsisdbSettings {
            connection_string: Some(SSISDB_CS.into()),
            ..SsisdbSettings::default()
        }
        .enabled());
    }

    /// Each rule: overrides applied to VALID, the key the error must name, and a fragment of
    /// its message.
    #[test]
    fn each_ssisdb_rule_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let pw = write_file(dir.path(), "pw", "secret\n");
        let empty = write_file(dir.path(), "empty-pw", "\n");
        let absent = dir.path().join("absent");
        let cs = |text: &str| format!("ssisdb.connection_string={text}");
        let pw_file = |path: &Path| format!("ssisdb.password_file={}", path.display());
        let ok_cs = || cs(SSISDB_CS);
        let ok_pw = || pw_file(&pw);
        let cases: Vec<(Vec<String>, &str, &str)> = vec![
            (
                vec!["ssisdb.max_outbox_events=999".into()],
                "ssisdb.max_outbox_events",
                "between 1000 and 100000000",
            ),
            (
                vec!["ssisdb.max_outbox_events=100000001".into()],
                "ssisdb.max_outbox_events",
                "between 1000 and 100000000",
            ),
            (
                vec!["ssisdb.retention_secs=59".into()],
                "ssisdb.retention_secs",
                "between 60 and 31536000",
            ),
            (
                vec!["ssisdb.retention_secs=31536001".into()],
                "ssisdb.retention_secs",
                "between 60 and 31536000",
            ),
            (
                vec!["ssisdb.batch_events=0".into()],
                "ssisdb.batch_events",
                "between 1 and 10000",
            ),
            (
                vec!["ssisdb.batch_events=10001".into()],
                "ssisdb.batch_events",
                "between 1 and 10000",
            ),
            (
                vec!["ssisdb.connect_timeout_ms=99".into()],
                "ssisdb.connect_timeout_ms",
                "between 100 and 300000",
            ),
            (
                vec!["ssisdb.connect_timeout_ms=300001".into()],
                "ssisdb.connect_timeout_ms",
                "between 100 and 300000",
            ),
            (
                vec!["ssisdb.ship_interval_ms=9".into()],
                "ssisdb.ship_interval_ms",
                "between 10 and 60000",
            ),
            (
                vec!["ssisdb.ship_interval_ms=60001".into()],
                "ssisdb.ship_interval_ms",
                "between 10 and 60000",
            ),
            (
                vec![cs("Server=h;User Id=u;Password=hunter2"), ok_pw()],
                "ssisdb.connection_string",
                "the password must not be in the config file; put it in ssisdb.password_file \
                 or the variable named by ssisdb.password_env",
            ),
            (
                vec![cs("Server=h; user id = u ;  PWD = hunter2"), ok_pw()],
                "ssisdb.connection_string",
                "must not be in the config file",
            ),
            (
                vec![cs("Database=SSISDB;User Id=u"), ok_pw()],
                "ssisdb.connection_string",
                "names no server",
            ),
            (
                vec![cs("Server=;User Id=u"), ok_pw()],
                "ssisdb.connection_string",
                "names no server",
            ),
            (
                vec![cs("Server=tcp:h,1433;Database=SSISDB"), ok_pw()],
                "ssisdb.connection_string",
                "names no SQL login",
            ),
            (
                vec![cs("Server=h;Integrated Security=true"), ok_pw()],
                "ssisdb.connection_string",
                "User Id=",
            ),
            (
                vec![cs("Server=h;User Id=u;hunter2"), ok_pw()],
                "ssisdb.connection_string",
                "part 3 (counting from 1) has no `=`",
            ),
            (
                vec![cs("Server=h;=x;User Id=u"), ok_pw()],
                "ssisdb.connection_string",
                "no key before",
            ),
            (
                vec![cs("Server='h;User Id=u"), ok_pw()],
                "ssisdb.connection_string",
                "never closed",
            ),
            (vec![ok_cs()], "ssisdb.password_file", "is required"),
            (
                vec![ok_cs(), ok_pw(), "ssisdb.password_env=SSISDB_PW".into()],
                "ssisdb.password_env",
                "keep only one",
            ),
            (
                vec![ok_cs(), pw_file(&absent)],
                "ssisdb.password_file",
                "cannot read",
            ),
            (
                vec![ok_cs(), pw_file(dir.path())],
                "ssisdb.password_file",
                "not a regular file",
            ),
            (
                vec![ok_cs(), pw_file(&empty)],
                "ssisdb.password_file",
                "is empty",
            ),
            (
                vec![ok_cs(), "ssisdb.password_env=\"\"".into()],
                "ssisdb.password_env",
                "not an environment variable name",
            ),
            (
                vec![ok_cs(), "ssisdb.password_env=A=B".into()],
                "ssisdb.password_env",
                "not an environment variable name",
            ),
            (
                vec![ok_cs(), ok_pw(), format!("ssisdb.ca={}", absent.display())],
                "ssisdb.ca",
                "cannot read",
            ),
            // Shape errors, caught before deserializing.
            (
                vec!["ssisdb.batch_events=many".into()],
                "ssisdb.batch_events",
                "whole number",
            ),
            (vec!["ssisdb=3".into()], "ssisdb", "a table"),
        ];
        for (overrides, key, fragment) in cases {
            let err = MasterConfig::from_toml_str(VALID, dir.path(), &overrides)
                .expect_err(&format!("{overrides:?} should be rejected"));
            let text = err.to_string();
            assert_eq!(err.key(), Some(key), "{overrides:?}: {text}");
            assert!(text.contains(&format!("`{key}`")), "{overrides:?}: {text}");
            assert!(text.contains(fragment), "{overrides:?}: {text}");
            assert!(text.contains("set by --set"), "{overrides:?}: {text}");
            assert!(!text.contains("hunter2"), "{overrides:?}: {text}");
        }

        // Errors about files name the file.
        let err = parse(dir.path(), VALID, &[&ok_cs(), &pw_file(&absent)]).unwrap_err();
        assert!(
            err.to_string().contains(&absent.display().to_string()),
            "{err}"
        );
        let err = parse(
            dir.path(),
            VALID,
            &[
                &ok_cs(),
                &ok_pw(),
                &format!("ssisdb.ca={}", absent.display()),
            ],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains(&absent.display().to_string()),
            "{err}"
        );

        // Without a connection string the password and CA settings are not looked at.
        let c = parse(
            dir.path(),
            VALID,
            &[
                &pw_file(&absent),
                "ssisdb.password_env=SSISDB_PW",
                &format!("ssisdb.ca={}", absent.display()),
            ],
        )
        .unwrap();
        assert!(!c.ssisdb.enabled());

        // Accepted spellings: other server and login keys, quoted values, a trailing `;`.
        for text in [
            SSISDB_CS,
            "Data Source=tcp:h,1433;UID=u",
            "address=h;user=u;",
            "Addr = h ; User ID = u",
            "Network  Address=h;User Id=u",
            "Server=\"tcp:h,1433\";User Id='o''brien;x';Application Name=\"a \"\"b\"\"\"",
        ] {
            let c = parse(dir.path(), VALID, &[&cs(text), &ok_pw()])
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(c.ssisdb.enabled());
            assert_eq!(c.ssisdb.password().unwrap(), "secret");
        }
    }

    #[test]
    fn ssisdb_connection_string_parses_into_pairs() {
        let pairs = parse_connection_string(
            " Server = tcp:h,1433 ;;USER   ID='o''brien;x'; Database=\"SSIS\"\"DB\" ;Encrypt=true;",
        )
        .unwrap();
        let expect = [
            ("server", "tcp:h,1433"),
            ("user id", "o'brien;x"),
            ("database", "SSIS\"DB"),
            ("encrypt", "true"),
        ];
        assert_eq!(
            pairs,
            expect
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        );
        assert_eq!(parse_connection_string("").unwrap(), vec![]);
        assert!(parse_connection_string("Server=\"h\" x;User Id=u")
            .unwrap_err()
            .contains("followed by more text"));
        // The errors never repeat the text, which may hold a password.
        let err = parse_connection_string("Server=h;hunter2").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn ssisdb_connection_string_override_is_hidden_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = parse(
            dir.path(),
            VALID,
            &["ssisdb.connection_string=Server=h;User Id=u;Password=hunter2"],
        )
        .unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.key(), Some("ssisdb.connection_string"), "{msg}");
        assert!(
            msg.contains("set by --set ssisdb.connection_string=<hidden>"),
            "{msg}"
        );
        assert!(!msg.contains("hunter2"), "{msg}");
        let err = parse(
            dir.path(),
            VALID,
            &["ssisdb={connection_string=\"Server=h;User Id=u;Pwd=hunter2\"}"],
        )
        .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = parse(dir.path(), VALID, &["ssisdb=Server=h;Pwd=hunter2"]).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.key(), Some("ssisdb"), "{msg}");
        assert!(msg.contains("found a string"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        // From the file: the message does not quote the string either.
        let text = format!(
            "{VALID}\n[ssisdb]\nconnection_string = \"Server=h;User Id=u;Password=hunter2\"\n"
        );
        let err = parse(dir.path(), &text, &[]).unwrap_err();
        assert_eq!(err.key(), Some("ssisdb.connection_string"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn ssisdb_password_from_a_file_relative_to_the_config_directory() {
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path(), "etc/secrets/ssisdb-password", "s3 cret\r\n");
        dev_certs(dir.path(), "etc/certs");
        let file = write_file(
            dir.path(),
            "etc/scaleout/m2.toml",
            &format!(
                "{VALID}\n[ssisdb]\nconnection_string = \"{SSISDB_CS}\"\n\
                 password_file = \"../secrets/ssisdb-password\"\nca = \"../certs/ca.pem\"\n"
            ),
        );
        let c = load_with_env(&file, &[], std::iter::empty()).unwrap();
        let conf = dir.path().join("etc/scaleout");
        assert_eq!(
            c.ssisdb.password_file,
            Some(conf.join("../secrets/ssisdb-password"))
        );
        assert_eq!(c.ssisdb.ca, Some(conf.join("../certs/ca.pem")));
        assert!(c.ssisdb.enabled());
        // One trailing line break is dropped; other whitespace is part of the password.
        assert_eq!(c.ssisdb.password().unwrap(), "s3 cret");
        let settings = |path: PathBuf| SsisdbSettings {
            password_file: Some(path),
            ..c.ssisdb.clone()
        };
        let two = write_file(dir.path(), "two-lines", "pw\n\n");
        assert_eq!(settings(two).password().unwrap(), "pw\n");
        let absent = dir.path().join("absent");
        let err = settings(absent.clone()).password().unwrap_err();
        assert!(err.contains(&absent.display().to_string()), "{err}");
        assert!(err.contains("password"), "{err}");

        // From --set or the environment: relative to the current directory.
        let cwd = std::env::current_dir().unwrap();
        let err = load_with_env(
            &file,
            &sets(&["ssisdb.password_file=no-such-dir/pw"]),
            std::iter::empty(),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.key(), Some("ssisdb.password_file"), "{msg}");
        assert!(
            msg.contains(&cwd.join("no-such-dir/pw").display().to_string()),
            "{msg}"
        );
        let env = vec![(
            "SCALEOUT_SSISDB__CA".to_string(),
            "no-such-dir/ca.pem".to_string(),
        )];
        let err = load_with_env(&file, &[], env).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.key(), Some("ssisdb.ca"), "{msg}");
        assert!(
            msg.contains(&cwd.join("no-such-dir/ca.pem").display().to_string()),
            "{msg}"
        );
        assert!(
            msg.contains("environment variable SCALEOUT_SSISDB__CA"),
            "{msg}"
        );
    }

    #[test]
    fn ssisdb_password_from_an_environment_variable() {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("SCALEOUT_TEST_SSISDB_PASSWORD_{}", std::process::id());
        let c = parse(
            dir.path(),
            VALID,
            &[
                &format!("ssisdb.connection_string={SSISDB_CS}"),
                &format!("ssisdb.password_env={name}"),
            ],
        )
        .unwrap();
        assert_eq!(c.ssisdb.password_env.as_deref(), Some(name.as_str()));
        // Not set: an error at connect time, naming the variable.
        let err = c.ssisdb.password().unwrap_err();
        assert!(err.contains(&name) && err.contains("is not set"), "{err}");
        std::env::set_var(&name, "");
        let err = c.ssisdb.password().unwrap_err();
        assert!(err.contains(&name) && err.contains("is empty"), "{err}");
        std::env::set_var(&name, " pass word\n");
        assert_eq!(c.ssisdb.password().unwrap(), " pass word\n");
        std::env::remove_var(&name);
    }

    #[test]
    fn ssisdb_table_parses() {
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path(), "secrets/ssisdb-password", "pw\n");
        dev_certs(dir.path(), "certs");
        let text = format!(
            r#"{VALID}
[ssisdb]
connection_string = "{SSISDB_CS}"
password_file = "secrets/ssisdb-password"
ca = "certs/ca.pem"
max_outbox_events = 250000
retention_secs = 86400
batch_events = 500
connect_timeout_ms = 5000
ship_interval_ms = 50
"#
        );
        let c = parse(dir.path(), &text, &[]).unwrap();
        assert_eq!(
            c.ssisdb,
            SsisdbSettings {
                connection_string: Some(SSISDB_CS.into()),
                password_file: Some(dir.path().join("secrets/ssisdb-password")),
                password_env: None,
                ca: Some(dir.path().join("certs/ca.pem")),
                max_outbox_events: 250_000,
                retention_secs: 86_400,
                batch_events: 500,
                connect_timeout_ms: 5_000,
                ship_interval_ms: 50,
            }
        );
        assert_eq!(c.ssisdb.password().unwrap(), "pw");
        c.validate().unwrap();

        // Overrides reach into the table; unknown keys are named with their full path.
        let c = parse(dir.path(), &text, &["ssisdb.batch_events=10000"]).unwrap();
        assert_eq!(c.ssisdb.batch_events, 10_000);
        let err = parse(dir.path(), &format!("{text}password = \"x\"\n"), &[]).unwrap_err();
        assert!(
            err.to_string().contains("unknown key `ssisdb.password`"),
            "{err}"
        );
    }

    /// Lexically resolves `.` and `..`.
    fn normalize(path: &Path) -> PathBuf {
        let mut out = PathBuf::new();
        for part in path.components() {
            match part {
                std::path::Component::ParentDir => {
                    out.pop();
                }
                std::path::Component::CurDir => {}
                other => out.push(other),
            }
        }
        out
    }

    #[test]
    fn sample_local_configs_agree() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let local = root.join("deploy/config/local");
        let scratch = tempfile::tempdir().unwrap();
        // The files name development certificates made by `scaleout certs init`, which are
        // not in the repository: make a set in the scratch directory instead.
        let certs = scratch.path().join("certs");
        crate::certs::init(&crate::certs::CertsInit::new(&certs)).unwrap();
        let mut member_lists = Vec::new();
        for n in 1..=3u64 {
            let file = local.join(format!("master-{n}.toml"));
            let text = std::fs::read_to_string(&file).unwrap();
            let raw: Table = toml::from_str(&text).unwrap();
            // Keep the test hermetic: data_dir and the certificates come from a scratch
            // directory ...
            let data = scratch.path().join(format!("master-{n}"));
            let mut set = vec![format!("data_dir={}", data.display())];
            let scratch_tls = TlsPaths::in_dir(&certs, &format!("replica-{n}"));
            if raw.contains_key("tls") {
                set.extend([
                    format!("tls.ca={}", scratch_tls.ca.display()),
                    format!("tls.cert={}", scratch_tls.cert.display()),
                    format!("tls.key={}", scratch_tls.key.display()),
                ]);
            }
            let c = load_with_env(&file, &set, std::iter::empty())
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert_eq!(c.id, n, "{} has the id of its name", file.display());
            assert_eq!(c.me().api, format!("127.0.0.1:710{n}"));
            assert_eq!(c.me().peer, format!("127.0.0.1:720{n}"));
            assert_eq!(c.api_listen, c.me().api);
            assert_eq!(c.peer_listen, c.me().peer);
            match &c.tls {
                Some(tls) => {
                    assert!(!c.insecure);
                    assert_eq!(*tls, scratch_tls);
                }
                None => assert!(c.insecure),
            }
            member_lists.push(c.members.clone());
            // ... while the file's own data_dir points into <repo>/target/scaleout-local ...
            let dir = raw["data_dir"].as_str().unwrap();
            assert_eq!(
                normalize(&local.join(dir)),
                normalize(&root.join(format!("target/scaleout-local/master-{n}")))
            );
            // ... and its certificates are this replica's, in the directory next to it.
            if let Some(Value::Table(tls)) = raw.get("tls") {
                let expected = TlsPaths::in_dir(&local.join("certs"), &format!("replica-{n}"));
                for (key, path) in [
                    ("ca", &expected.ca),
                    ("cert", &expected.cert),
                    ("key", &expected.key),
                ] {
                    let value = tls[key].as_str().unwrap();
                    assert_eq!(normalize(&local.join(value)), *path, "{}", file.display());
                }
            }
        }
        assert_eq!(member_lists[0].len(), 3);
        assert!(
            member_lists.iter().all(|list| *list == member_lists[0]),
            "{member_lists:?}"
        );
    }

    #[test]
    fn known_keys_are_the_schema() {
        let keys = known_keys();
        for key in [
            "id",
            "data_dir",
            "metrics_listen",
            "tls.cert",
            "members",
            "members[].api",
            "peer_routes[].address",
            "raft.heartbeat_interval_ms",
            "ssisdb.password_file",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
        }
        for key in &keys {
            // `members[].id` is set as `members[0].id`; every key names a value, tables
            // (`raft`, `tls`) are not keys of their own.
            let segs = parse_key(&key.replace("[]", "[0]")).expect(key);
            match lookup(&segs) {
                Ok(Kind::Table(_)) | Err(_) => panic!("{key} is not a key of the schema"),
                Ok(Kind::TableArray(_)) => assert!(!key.contains('.'), "{key}"),
                Ok(_) => {}
            }
        }
        let mut unique = keys.clone();
        unique.dedup();
        assert_eq!(unique, keys, "sorted, each once");
    }
}
