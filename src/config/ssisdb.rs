//! `[ssisdb]`: where the leader ships job events, and the checks of its connection string and
//! password source.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{check_bounds, Bound};

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
    /// Most rows one shipped statement writes or reads (a `VALUES` list, an `IN` list).
    pub rows_per_statement: u32,
    /// How often the leader reads `scaleout.job_requests` for jobs submitted from T-SQL; 0: never.
    pub intake_interval_ms: u64,
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
            rows_per_statement: 1_000,
            intake_interval_ms: 2_000,
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
    /// How often the leader reads job requests; `None`: intake is off.
    pub fn intake_interval(&self) -> Option<Duration> {
        (self.intake_interval_ms > 0).then(|| Duration::from_millis(self.intake_interval_ms))
    }
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_secs)
    }

    /// The rules of `[ssisdb]`, as (key, message) of the first violation.
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        check_bounds([
            Bound::new(
                "ssisdb.max_outbox_events",
                self.max_outbox_events,
                1_000..=100_000_000,
                "the default is 100000",
            ),
            Bound::new(
                "ssisdb.retention_secs",
                self.retention_secs,
                60..=31_536_000,
                "a minute to a year; the default is 604800, a week",
            ),
            Bound::new(
                "ssisdb.batch_events",
                self.batch_events,
                1..=10_000,
                "the default is 1000",
            ),
            Bound::new(
                "ssisdb.connect_timeout_ms",
                self.connect_timeout_ms,
                100..=300_000,
                "the default is 15000",
            ),
            Bound::new(
                "ssisdb.ship_interval_ms",
                self.ship_interval_ms,
                10..=60_000,
                "the default is 200",
            ),
            Bound::new(
                "ssisdb.rows_per_statement",
                self.rows_per_statement,
                1..=1_000,
                "SQL Server takes at most 1000 rows in one VALUES list; the default is 1000",
            ),
            Bound::new(
                "ssisdb.intake_interval_ms",
                self.intake_interval_ms,
                100..=600_000,
                "the default is 2000",
            )
            .or_zero("no intake from T-SQL"),
        ])?;
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
        if let Some((name, _)) = has(PASSWORD_KEYS) {
            return Err((
                key,
                format!(
                    "contains a password (the `{name}` key); the password must not be in the \
                     config file; put it in ssisdb.password_file or the variable named by \
                     ssisdb.password_env, and remove `{name}=` from the connection string"
                ),
            ));
        }
        match has(SERVER_KEYS) {
            Some((_, v)) if !v.is_empty() => {}
            _ => {
                return Err((
                    key,
                    "names no server; add Server=<host> (e.g. Server=tcp:ag-listener.corp,1433)"
                        .into(),
                ))
            }
        }
        match has(LOGIN_KEYS) {
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
pub(super) fn check_readable_file(file: &Path, what: &str) -> Result<(), String> {
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
pub(super) fn read_password_file(file: &Path) -> Result<String, String> {
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

/// Keys of the connection string that name the server, the SQL login and its password (the
/// ADO.NET synonyms tiberius reads), shared by the load-time checks and the connection.
pub(crate) const SERVER_KEYS: &[&str] = &[
    "server",
    "data source",
    "address",
    "addr",
    "network address",
];
pub(crate) const LOGIN_KEYS: &[&str] = &["user id", "uid", "user", "username"];
pub(crate) const PASSWORD_KEYS: &[&str] = &["password", "pwd"];

/// An ADO.NET connection string as (key, value) pairs, sorted, read by the parser tiberius
/// connects with (the `connection_string` crate), so what loads is what connects: keys
/// lower-cased, values unquoted. Errors never repeat the string, or any character of it,
/// since it could hold a password.
pub(crate) fn parse_connection_string(text: &str) -> Result<Vec<(String, String)>, String> {
    let parsed: connection_string::AdoNetString =
        text.parse().map_err(|e: connection_string::Error| {
            let detail = e.to_string();
            let what = if detail.contains("unclosed") {
                "a quote (or `{`) that is never closed"
            } else if detail.contains("joined by a `=`") {
                "a part with no `=`"
            } else if detail.contains("Key must not be empty") {
                "a part with no key before its `=`"
            } else if detail.contains("separated by a `;`") {
                "two parts not separated by `;`"
            } else {
                // "Invalid character found: <c>" and the like: the character is not repeated.
                "a character the syntax does not allow there (outside quotes, only ASCII)"
            };
            format!(
                "holds {what}; write `;`-separated key=value pairs like \
                 Server=tcp:host,1433;Database=SSISDB;User Id=login"
            )
        })?;
    let mut pairs: Vec<(String, String)> = parsed
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    pairs.sort();
    Ok(pairs)
}
