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
//! | `data_dir` | Directory for the Raft log, vote and state machine. Created when the replica starts, if missing (loading the config, as `scaleout ssisdb check` does, creates nothing); must be writable. A relative path in the file is relative to the **config file's directory**; a relative path given by env or `--set` is relative to the current directory. |
//! | `insecure` | (default: `false`) Serve and dial plaintext gRPC without authentication, on a trusted network only. Exactly one of `insecure = true` and `[tls]` must be given. |
//! | `tls.ca` | PEM file of the CA that issued every scaleout certificate; the only CA trusted for peers. |
//! | `tls.cert` | PEM file of this replica's certificate (chain), which must carry the URI SAN `scaleout://replica/<id>` of this `id`. |
//! | `tls.key` | PEM file of the private key of `tls.cert`. All three `tls` paths are required when `[tls]` is given, and follow the `data_dir` rule for relative paths (the config file's directory, or the current directory when given by env or `--set`). Development certificates: `scaleout certs init --dir certs`. |
//! | `api_listen` | (default: this replica's `api`) Socket address the client/worker API binds, e.g. `0.0.0.0:7101`. |
//! | `peer_listen` | (default: this replica's `peer`) Socket address the Raft (replica to replica) service binds. |
//! | `metrics_listen` | (default: none, off) Socket address of the plain-HTTP endpoint serving `/metrics` (Prometheus text format), `/healthz` (the process is alive) and `/readyz` (a voter that hears a leader and has applied what it knows committed). It carries numbers and ids, never job parameters or logs; bind it to a management network. |
//! | `console_listen` | (default: none, off) Socket address of the web console, served over HTTPS with the replica's own certificate (no client certificate asked: people sign in with a token from `scaleout console token`, checked against the CA, and get the API's rights of its operator or admin role). Needs `[tls]`. Off in the production samples, on in the local ones and the demo. |
//! | `peer_routes` | (default: none) An array of tables (`[[peer_routes]]`), each with `id` and `address`: the host:port this replica dials to reach member `id`, instead of that member's `peer` address (NAT, a proxy, another interface). Only this replica uses it; the others still learn the member's `peer` address. |
//! | `members` | The static bootstrap member list, an array of tables (`[[members]]`), identical in every replica's file. Each entry has `id`, `api` (host:port that clients and workers dial) and `peer` (host:port that other replicas dial). All ids and all addresses must be distinct. |
//! | `raft.heartbeat_interval_ms` | (default: 100) Leader heartbeat interval; also openraft's append RPC deadline. |
//! | `raft.election_timeout_min_ms` | (default: 250) Lower bound of the randomized election timeout; at least twice the heartbeat interval. A follower that loses its leader waits `election_timeout_max_ms` (the leader lease, during which the other voters refuse to vote) plus its turn: `max - min` is cut into one slot per voter that may stand (by id), and the wait falls at random in the first three fifths of its own slot, so followers of the same silent leader do not split the vote; then it stands for election; after an attempt that made no leader it waits a random timeout between min and max. A silent leader is replaced about 0.6 to 0.8 s after it fell silent with the defaults (`raft::election`); a leader whose process died is replaced within about 0.2 s (`raft::leader_watch`), and a stopping one hands over (`master::handover`). |
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
//! | `workers.offline_after_ms` | (default: 60000) A worker with no heartbeat for this long shows offline. The leader commits the heartbeats it hears every sixth of this (at most every 10 s), so a follower shows them that much later. |
//! | `workers.approval` | (default: `manual`) `manual` keeps a new worker disabled until an admin enables it (`scaleout workers enable ID`), as SSIS does; `auto` enables it when it registers. |
//! | `workers.max_acquire_wait_ms` | (default: 10000) The longest an AcquireTasks long-poll waits for work (at most 60000). |
//! | `workers.expiry_check_interval_ms` | (default: 500) How often the leader looks for expired leases (10..=60000). |
//! | `workers.max_clock_jump_ms` | (default: 86400000, 1 day) How far a new leader's wall clock may be ahead of the cluster's time (the last time applied) and still be taken as it is; beyond it, time moves on from the cluster's time plus this bound, with a WARN, so one host with a wrong clock cannot age every lease, retry delay and retention at once. Within a term, time follows the monotonic clock, so a clock step there changes nothing (`master::clock`). 0: no bound. |
//! | `workers.test_clock_offset_file` | (default: none) **Test only**: a file holding a signed number of ms added to this replica's wall clock, re-read every 50 ms; the chaos suite steps clocks with it. Never set it in production. |
//! | `api.max_message_bytes` | (default: 4194304) Largest gRPC message accepted or sent, on both the API and the peer service (64 KiB..=256 MiB). |
//! | `ssisdb.connection_string` | (default: none) ADO.NET connection string of the SSISDB the leader ships job, attempt, worker and log events to, e.g. `Server=tcp:ag-listener.corp,1433;Database=SSISDB;User Id=scaleout_master;Encrypt=true`: `;`-separated `key=value` pairs (values may be quoted with `"` or `'`), read by the same parser tiberius connects with, so a string that loads is one that connects. It needs a server (`Server`, `Data Source`, `Address`, `Addr` or `Network Address`) and a SQL login (`User Id`, `UID`, `User` or `Username`; integrated authentication is not supported), and must not hold the password (`Password`/`Pwd`): give that by `ssisdb.password_file` or `ssisdb.password_env`. Absent or empty: no SSISDB; events stay on the replicas for `ssisdb.retention_secs` (the newest `ssisdb.max_outbox_events` at most), and the other `ssisdb` keys but the numbers are ignored. |
//! | `ssisdb.password_file` | File holding the SQL login's password (one trailing line break is dropped); follows the `data_dir` rule for relative paths. With a connection string, exactly one of `password_file` and `password_env` is required; the file must be readable and not empty. |
//! | `ssisdb.password_env` | Name of an environment variable holding the SQL login's password, e.g. `SSISDB_PASSWORD`. Whether it is set is checked when the leader connects, not at load. |
//! | `ssisdb.ca` | (default: the system's root certificates) PEM file of the CA trusted for the SQL Server's TLS certificate; follows the `data_dir` rule for relative paths. |
//! | `ssisdb.max_outbox_events` | (default: 100000) Most events kept on the replicas. With SSISDB, awaiting shipment: past it, worker log line events are dropped (and counted), state events never are. Without SSISDB, the oldest past 90 % of it are let go every minute, like those older than `ssisdb.retention_secs` (1000..=100000000). |
//! | `ssisdb.retention_secs` | (default: 604800, 7 days) How long events are kept on the replicas when no SSISDB is configured, at most `ssisdb.max_outbox_events` of them (60..=31536000). |
//! | `ssisdb.batch_events` | (default: 1000) Events written to SSISDB per transaction (1..=10000). |
//! | `ssisdb.connect_timeout_ms` | (default: 15000) Deadline for connecting and logging in to SQL Server (100..=300000). |
//! | `ssisdb.ship_interval_ms` | (default: 200) How often the leader looks for new events when it has shipped everything (10..=60000). |
//! | `ssisdb.rows_per_statement` | (default: 1000) Most rows one statement of a shipped batch writes or reads: each table's rows go as one `UPDATE … FROM (VALUES …)` and one `INSERT … VALUES` per this many rows, values written as literals (SQL Server takes at most 1000 rows in a `VALUES` list and 2,100 parameters in a request, too few for parameters) (1..=1000). |
//! | `ssisdb.intake_interval_ms` | (default: 2000) How often the leader reads `scaleout.job_requests` for jobs submitted from T-SQL with `EXEC scaleout.submit_job` (schema 3), submits each pending request (its `request_key` or `ssisdb-request-<id>` is the idempotency key: one job per request however often it is read) and writes back the job id or why it was rejected. 0: no intake (100..=600000). |
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

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use crate::tls::{load_identity, Role, TlsError, TlsIdentity, TlsPaths};

mod checks;
mod layering;
mod schema;
mod settings;
mod ssisdb;
#[cfg(test)]
mod tests;

pub(crate) use checks::{
    check_addr, check_bounds, check_dir_possible, load_tls_identity, probe_dir, tls_choice_error,
    tls_missing_message, Bound,
};
pub use settings::{
    ApiSettings, ProposalSettings, RaftSettings, RetentionSettings, StorageSettings,
    WorkerApproval, WorkerSettings,
};
pub use ssisdb::SsisdbSettings;
pub(crate) use ssisdb::{parse_connection_string, LOGIN_KEYS, PASSWORD_KEYS};

use layering::*;
pub(crate) use layering::{
    process_env, resolve_path, resolve_tls, ConfigText, Layered, Layers, RawTls,
};
use schema::*;
pub(crate) use schema::{opt, Field, Kind, TLS};

/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "SCALEOUT_";

/// `SCALEOUT_*` variables used elsewhere by the CLI; never read as config keys.
const IGNORED_ENV: &[&str] = &["SCALEOUT_ENDPOINTS", "SCALEOUT_LOG", "SCALEOUT_CONFIG"];

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
    /// The web console (HTTPS); `None`: not served.
    pub console_listen: Option<String>,
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

/// " (set by ENV or --set …)" after a key that did not come from the file.
pub(crate) fn origin_note(origin: &Option<String>) -> String {
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
        load_with_env(path, overrides, process_env())
    }

    /// Parses a config from text (no environment variables are read); relative paths in `text`
    /// are relative to `base_dir`. Validates the result.
    pub fn from_toml_str(
        text: &str,
        base_dir: &Path,
        overrides: &[String],
    ) -> Result<Self, ConfigError> {
        build(&ConfigText::inline(text, base_dir), overrides, [])
    }

    /// Checks the rules in the module documentation; loads the TLS identity (when `tls` is set)
    /// and checks it is this replica's. Writes nothing (see [`MasterConfig::prepare_data_dir`]).
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
        if let Some(console_listen) = &self.console_listen {
            check_addr(console_listen, true).or_else(|e| bad("console_listen", e))?;
            let taken = [
                Some(&self.api_listen),
                Some(&self.peer_listen),
                self.metrics_listen.as_ref(),
            ];
            if taken
                .iter()
                .flatten()
                .any(|taken| taken.eq_ignore_ascii_case(console_listen))
            {
                return bad(
                    "console_listen",
                    format!(
                        "{console_listen} is also api_listen, peer_listen or metrics_listen; give \
                         the console an address of its own"
                    ),
                );
            }
            if self.insecure {
                return bad(
                    "console_listen",
                    "the console is served over HTTPS with the replica's certificate and signs \
                     people in with tokens checked against the CA: it needs [tls], not \
                     insecure = true"
                        .to_string(),
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

        let (r, p, t, w) = (&self.raft, &self.proposals, &self.retention, &self.workers);
        const MAX: u64 = u64::MAX;
        check_bounds([
            Bound::new(
                "raft.heartbeat_interval_ms",
                r.heartbeat_interval_ms,
                1..=MAX,
                "e.g. 100",
            ),
            Bound::new(
                "raft.snapshot_every_logs",
                r.snapshot_every_logs,
                1..=MAX,
                "e.g. 10000",
            ),
            Bound::new(
                "raft.install_snapshot_timeout_ms",
                r.install_snapshot_timeout_ms,
                1..=MAX,
                "e.g. 10000",
            ),
            Bound::new("proposals.max_batch", p.max_batch, 1..=10_000, "e.g. 512"),
            Bound::new(
                "proposals.linger_us",
                p.linger_us,
                0..=100_000,
                "100 ms; e.g. 500",
            ),
            Bound::new(
                "proposals.max_in_flight",
                p.max_in_flight,
                1..=MAX,
                "e.g. 4",
            ),
            Bound::new(
                "retention.finished_job_secs",
                t.finished_job_secs,
                60..=MAX,
                "at least a minute, so that a client waiting on a job sees it end; e.g. \
                 86400, a day",
            )
            .or_zero("never by age"),
            Bound::new(
                "retention.max_finished_jobs",
                t.max_finished_jobs,
                100..=MAX,
                "e.g. 100000",
            )
            .or_zero("no cap"),
            Bound::new(
                "retention.sweep_interval_ms",
                t.sweep_interval_ms,
                100..=3_600_000,
                "e.g. 10000",
            ),
            Bound::new(
                "storage.cache_capacity_mb",
                self.storage.cache_capacity_mb,
                1..=1 << 20,
                "MiB, up to 1 TiB; e.g. 64",
            ),
            Bound::new(
                "api.max_message_bytes",
                self.api.max_message_bytes,
                64 << 10..=256 << 20,
                "64 KiB to 256 MiB; the default is 4194304",
            ),
            Bound::new(
                "workers.lease_interval_ms",
                w.lease_interval_ms,
                1_000..=86_400_000,
                "1 s to 1 day; e.g. 30000",
            ),
            Bound::new(
                "workers.offline_after_ms",
                w.offline_after_ms,
                1_000..=MAX,
                "1 s; e.g. 60000",
            ),
            Bound::new(
                "workers.max_acquire_wait_ms",
                w.max_acquire_wait_ms,
                0..=60_000,
                "1 min; e.g. 10000",
            ),
            Bound::new(
                "workers.expiry_check_interval_ms",
                w.expiry_check_interval_ms,
                10..=60_000,
                "e.g. 500",
            ),
        ])
        .or_else(|(key, message)| bad(key, message))?;
        // The rules between settings.
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

        // Loading writes nothing: whether `data_dir` can be made and written is checked when
        // a replica starts (`prepare_data_dir`); here only what can be seen without writing.
        check_dir_possible(&self.data_dir).or_else(|e| bad("data_dir", e))
    }

    /// The start-up step of a replica: creates `data_dir` if missing and checks a file can be
    /// written in it, so an unusable directory is a config error (exit 2) before anything runs.
    /// `config_file` is named in the error.
    pub fn prepare_data_dir(&self, config_file: &Path) -> Result<(), ConfigError> {
        probe_dir(&self.data_dir).map_err(|message| ConfigError::Invalid {
            path: config_file.to_path_buf(),
            key: "data_dir".into(),
            message,
        })
    }
}

/// [`MasterConfig::load`] with the environment given explicitly (tests must not touch the
/// process environment).
pub(crate) fn load_with_env(
    path: &Path,
    overrides: &[String],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<MasterConfig, ConfigError> {
    build(&ConfigText::read(path)?, overrides, env)
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
    keys_of(TOP)
}

/// Every key of `schema`, named as [`known_keys`] names them, sorted.
pub(crate) fn keys_of(schema: &[Field]) -> Vec<String> {
    fn walk(fields: &[Field], prefix: &str, out: &mut Vec<String>) {
        for field in fields {
            let key = format!("{prefix}{}", field.name);
            match field.kind {
                Kind::Table(inner) => walk(inner, &format!("{key}."), out),
                Kind::TableArray(inner) => {
                    walk(inner, &format!("{key}[]."), out);
                    out.push(key);
                }
                Kind::Int | Kind::Float | Kind::Bool | Kind::Str | Kind::List => out.push(key),
            }
        }
    }
    let mut out = Vec::new();
    walk(schema, "", &mut out);
    out.sort();
    out
}
