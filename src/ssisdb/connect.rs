//! Connecting to SSISDB through the availability group listener named in
//! `ssisdb.connection_string`, and the errors that say what failed and what to do.
//!
//! tiberius 0.12 parses the ADO.NET string but has neither a connect timeout nor
//! MultiSubnetFailover (it silently ignores the key): a listener spanning subnets resolves to one
//! address per subnet and only the primary's answers, so connecting to the first address alone
//! hangs on an AG failover. [`connect`] resolves every address of the host, races the TCP
//! connects, keeps the first that succeeds, and bounds the whole (resolve, TCP, TLS, login) by
//! `ssisdb.connect_timeout_ms`.
//!
//! TLS: when the connection string has no `Encrypt` key the connection is encrypted
//! (`Required`, as Microsoft.Data.SqlClient does by default), not tiberius's login-only `Off`.
//! The server certificate is checked against `ssisdb.ca` when set, else the system roots;
//! `TrustServerCertificate=true` in the string turns the check off and cannot be combined with
//! `ssisdb.ca` (tiberius would panic on both).

use std::net::SocketAddr;
use std::time::Duration;

use tiberius::{AuthMethod, Client, Config, EncryptionLevel};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use crate::config::{parse_connection_string, SsisdbSettings, LOGIN_KEYS, PASSWORD_KEYS};

/// A connection to SSISDB.
pub type SqlClient = Client<Compat<TcpStream>>;

/// What went wrong talking to SSISDB. Every message names what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SsisdbError {
    #[error("SSISDB is not configured: set ssisdb.connection_string (and ssisdb.password_file)")]
    NotConfigured,
    #[error("ssisdb.connection_string is not valid: {0}")]
    BadConnectionString(String),
    #[error("cannot read the SSISDB password: {0}")]
    Password(String),
    #[error(
        "cannot resolve the SSISDB listener {addr}: {detail}; check the server name in \
         ssisdb.connection_string and this host's DNS"
    )]
    Resolve { addr: String, detail: String },
    #[error(
        "the SSISDB listener {addr} is unreachable (tried {tried}): {detail}; check that SQL \
         Server or the availability group listener is up, that the port in \
         ssisdb.connection_string is right, and that no firewall blocks it"
    )]
    Unreachable {
        addr: String,
        tried: String,
        detail: String,
    },
    #[error(
        "connecting to the SSISDB listener {addr} timed out after {timeout:?} while {stage} \
         (addresses: {tried}); check that SQL Server answers on that port, or raise \
         ssisdb.connect_timeout_ms"
    )]
    Timeout {
        addr: String,
        tried: String,
        stage: &'static str,
        timeout: Duration,
    },
    #[error(
        "SSISDB login failed for user {user:?} at {addr}: {detail}; check the login in \
         ssisdb.connection_string and its password (ssisdb.password_file / \
         ssisdb.password_env), and that the login is enabled and mapped to SSISDB"
    )]
    LoginFailed {
        user: String,
        addr: String,
        detail: String,
    },
    #[error(
        "TLS to SSISDB at {addr} failed: {detail}; set ssisdb.ca to the CA that signed the \
         server's certificate (and use the name the certificate is issued to in \
         ssisdb.connection_string), or check Encrypt= in the connection string"
    )]
    Tls { addr: String, detail: String },
    #[error(
        "the scaleout schema in SSISDB is missing or out of date: {missing}; run `scaleout \
         ssisdb install-schema --config FILE` (or deploy/sql/scaleout-schema.sql) as a login \
         that may create it"
    )]
    MissingSchema { missing: String },
    #[error(
        "the SSISDB login may not write schema scaleout: {detail}; grant it the role in \
         deploy/sql/scaleout-login.sql"
    )]
    PermissionDenied { detail: String },
    #[error("SSISDB connection to {addr} lost: {detail}; reconnecting")]
    ConnectionLost { addr: String, detail: String },
    #[error(
        "replica {replica} (leader of term {term}) no longer ships to SSISDB: the leader of term \
         {newer_term} has claimed scaleout.shipper; this replica's batch is rolled back"
    )]
    Superseded {
        replica: u64,
        term: u64,
        newer_term: u64,
    },
    #[error("SSISDB statement failed: {0}")]
    Sql(String),
}

impl SsisdbError {
    /// Classifies an error from a statement (after the login): a missing object means the schema
    /// is not installed, an I/O error a lost connection.
    pub fn from_sql(addr: &str, error: tiberius::error::Error) -> SsisdbError {
        use tiberius::error::Error;
        match &error {
            Error::Io { message, .. } => SsisdbError::ConnectionLost {
                addr: addr.to_string(),
                detail: message.clone(),
            },
            Error::Server(token) => {
                let message = token.message();
                // 208: invalid object name (SQL Server and iridium); 207: invalid column.
                if token.code() == 208
                    || token.code() == 207
                    || message.contains("Invalid object name")
                    || message.contains("Invalid column name")
                {
                    SsisdbError::MissingSchema {
                        missing: message.to_string(),
                    }
                } else if token.code() == 229 || token.code() == 230 || token.code() == 262 {
                    // permission denied on object / column / in database
                    SsisdbError::PermissionDenied {
                        detail: message.to_string(),
                    }
                } else {
                    SsisdbError::Sql(format!("{message} (code {})", token.code()))
                }
            }
            _ => SsisdbError::Sql(error.to_string()),
        }
    }

    /// iridium's table locks are no-wait: another writer's open transaction fails a write at
    /// once with "lock conflict (no-wait)"; such a statement is retried, not reported.
    pub fn is_lock_conflict(&self) -> bool {
        matches!(self, SsisdbError::Sql(m) if m.contains("lock conflict"))
    }
}

/// The connection string, parsed and checked; the password is read when connecting.
pub(crate) struct Target {
    pub config: Config,
    pub user: String,
    /// host:port as written, for messages.
    pub addr: String,
}

fn bad(msg: impl Into<String>) -> SsisdbError {
    SsisdbError::BadConnectionString(msg.into())
}

/// Builds the tiberius configuration from the ADO.NET string, the password and the CA.
pub(crate) fn target(settings: &SsisdbSettings) -> Result<Target, SsisdbError> {
    let text = settings
        .connection_string
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .ok_or(SsisdbError::NotConfigured)?;
    // The parser (and the key lists) the config's checks use, which is the one tiberius uses.
    let pairs = parse_connection_string(text).map_err(bad)?;
    let get = |keys: &[&str]| {
        pairs
            .iter()
            .find(|(k, _)| keys.contains(&k.as_str()))
            .map(|(_, v)| v.clone())
    };
    if get(PASSWORD_KEYS).is_some() {
        return Err(bad(
            "it holds a password; remove it and put the password in ssisdb.password_file",
        ));
    }
    if get(&[
        "integratedsecurity",
        "integrated security",
        "trusted_connection",
    ])
    .is_some_and(|v| !matches!(v.to_ascii_lowercase().as_str(), "false" | "no"))
    {
        return Err(bad(
            "integrated security is not supported; use a SQL login (User Id=...)",
        ));
    }
    let user = get(LOGIN_KEYS)
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| bad("it names no login; add `User Id=<login>`"))?;
    let trust_all = get(&["trustservercertificate"])
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "yes"));
    let ca_in_string = get(&["trustservercertificateca"]).is_some();
    if trust_all && (settings.ca.is_some() || ca_in_string) {
        return Err(bad(
            "TrustServerCertificate=true turns certificate checks off, and a CA \
             (ssisdb.ca or TrustServerCertificateCA) turns them on; keep only one",
        ));
    }
    let mut config = Config::from_ado_string(text).map_err(|e| bad(e.to_string()))?;
    if get(&["encrypt"]).is_none() {
        config.encryption(EncryptionLevel::Required);
    }
    if let Some(ca) = &settings.ca {
        config.trust_cert_ca(ca.display());
    }
    let password = settings.password().map_err(SsisdbError::Password)?;
    config.authentication(AuthMethod::sql_server(&user, password));
    let addr = config.get_addr();
    Ok(Target { config, user, addr })
}

/// Connects and logs in, within `ssisdb.connect_timeout_ms`.
pub async fn connect(settings: &SsisdbSettings) -> Result<SqlClient, SsisdbError> {
    let target = target(settings)?;
    connect_target(target, settings.connect_timeout())
        .await
        .map(|(client, _)| client)
}

/// Connects to `target`; returns the client and the host:port it reached.
pub(crate) async fn connect_target(
    target: Target,
    timeout: Duration,
) -> Result<(SqlClient, String), SsisdbError> {
    let deadline = Instant::now() + timeout;
    let Target {
        mut config,
        user,
        addr,
    } = target;
    // An AG read-only routing answer names another server: follow it once.
    for _ in 0..2 {
        let current = config.get_addr();
        let timed_out = |stage, tried: &str| SsisdbError::Timeout {
            addr: current.clone(),
            tried: tried.to_string(),
            stage,
            timeout,
        };
        let addrs: Vec<SocketAddr> =
            match tokio::time::timeout_at(deadline, tokio::net::lookup_host(current.clone())).await
            {
                Err(_) => return Err(timed_out("resolving the name", "none yet")),
                Ok(Err(e)) => {
                    return Err(SsisdbError::Resolve {
                        addr: current,
                        detail: e.to_string(),
                    })
                }
                Ok(Ok(found)) => found.collect(),
            };
        let tried = addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let tcp = match tokio::time::timeout_at(deadline, race(&addrs)).await {
            Err(_) => return Err(timed_out("connecting over TCP", &tried)),
            Ok(Err(detail)) => {
                return Err(SsisdbError::Unreachable {
                    addr: current,
                    tried,
                    detail,
                })
            }
            Ok(Ok(tcp)) => tcp,
        };
        // Small statements and their answers must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let login = Client::connect(config.clone(), tcp.compat_write());
        match tokio::time::timeout_at(deadline, login).await {
            Err(_) => return Err(timed_out("logging in (TLS and login)", &tried)),
            Ok(Ok(client)) => return Ok((client, current)),
            Ok(Err(tiberius::error::Error::Routing { host, port })) => {
                tracing::info!(from = %current, to = %format!("{host}:{port}"), "SSISDB listener routed the connection");
                config.host(host);
                config.port(port);
            }
            Ok(Err(e)) => return Err(login_error(&user, &current, e)),
        }
    }
    Err(SsisdbError::Unreachable {
        addr,
        tried: "routing targets".into(),
        detail: "routed more than once".into(),
    })
}

/// Races TCP connects to every address; the first to connect wins and the others are dropped.
async fn race(addrs: &[SocketAddr]) -> Result<TcpStream, String> {
    if addrs.is_empty() {
        return Err("the name resolved to no address".into());
    }
    let mut set = JoinSet::new();
    for addr in addrs {
        let addr = *addr;
        set.spawn(async move { (addr, TcpStream::connect(addr).await) });
    }
    let mut errors = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((_, Ok(tcp))) => return Ok(tcp),
            Ok((addr, Err(e))) => errors.push(format!("{addr}: {e}")),
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(errors.join("; "))
}

fn login_error(user: &str, addr: &str, error: tiberius::error::Error) -> SsisdbError {
    use tiberius::error::Error;
    let text = error.to_string();
    match &error {
        // 18456 on SQL Server; iridium answers 50000 "Login failed for user."
        Error::Server(token)
            if token.code() == 18456 || token.message().contains("Login failed") =>
        {
            SsisdbError::LoginFailed {
                user: user.to_string(),
                addr: addr.to_string(),
                detail: token.message().to_string(),
            }
        }
        Error::Server(token) if token.code() == 4060 => SsisdbError::LoginFailed {
            user: user.to_string(),
            addr: addr.to_string(),
            detail: format!(
                "{} (the database does not exist or the login has no user in it)",
                token.message()
            ),
        },
        Error::Tls(detail) => SsisdbError::Tls {
            addr: addr.to_string(),
            detail: detail.clone(),
        },
        Error::Io { message, .. }
            if message.contains("certificate")
                || message.contains("tls")
                || message.contains("TLS")
                || message.contains("handshake") =>
        {
            SsisdbError::Tls {
                addr: addr.to_string(),
                detail: message.clone(),
            }
        }
        Error::Io { message, .. } => SsisdbError::ConnectionLost {
            addr: addr.to_string(),
            detail: message.clone(),
        },
        _ => SsisdbError::Sql(text),
    }
}
