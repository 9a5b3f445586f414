//! `[ssisdb]`: where the leader ships job events, and the checks of its connection string and
//! password source.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
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

/// An ADO.NET connection string as (key, value) pairs: keys lower-cased with runs of spaces
/// made one, values trimmed and unquoted. A value quoted with `"` or `'` may hold `;` and the
/// quote doubled. Errors never repeat the string, which could hold a password.
pub(super) fn parse_connection_string(text: &str) -> Result<Vec<(String, String)>, String> {
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
