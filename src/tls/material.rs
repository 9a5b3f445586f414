//! A process's TLS material (CA, certificate, key) as it is now, and its reload: on SIGHUP and
//! when the files change, without a restart. Connections already open keep the certificate
//! they were made with; new connections, in and out, use the new one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::{ClientConfig, ServerConfig};
use tracing::{info, warn};

use super::{client_config, load_identity, server_config, Role, TlsError, TlsIdentity};

/// How often the files are checked for a change. Content, not modification time, decides, so a
/// Kubernetes-style symlink swap or a copy that keeps the mtime is noticed too.
pub const FILE_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// A certificate this close to its end is warned about (at most hourly) until it is replaced.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);
const EXPIRY_WARNING_EVERY: Duration = Duration::from_secs(3600);

/// Where a process's CA, certificate and key live (config keys `tls.ca`, `tls.cert`, `tls.key`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsPaths {
    /// The development layout of `scaleout certs init`: `ca.pem`, `NAME.pem`, `NAME-key.pem`.
    pub fn in_dir(dir: &Path, name: &str) -> TlsPaths {
        TlsPaths {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        }
    }

    fn read_all(&self) -> Option<Vec<u8>> {
        let mut bytes = Vec::new();
        for path in [&self.ca, &self.cert, &self.key] {
            bytes.extend(std::fs::read(path).ok()?);
            bytes.push(0);
        }
        Some(bytes)
    }
}

/// One loaded identity and the rustls configs built from it.
struct Loaded {
    identity: TlsIdentity,
    server: Arc<ServerConfig>,
    /// The web console's: the same certificate, no client certificate asked, HTTP/1.1.
    browser: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    /// The files' bytes when they were loaded, to notice a change.
    contents: Option<Vec<u8>>,
}

impl Loaded {
    fn from_files(paths: &TlsPaths) -> Result<Loaded, TlsError> {
        // Read before loading: if the files change in between, the next poll sees a difference
        // and loads again, rather than the change being missed.
        let contents = paths.read_all();
        let identity = load_identity(&paths.ca, &paths.cert, &paths.key)?;
        Ok(Loaded {
            server: Arc::new(server_config(&identity)?),
            browser: Arc::new(super::browser_server_config(&identity)?),
            client: Arc::new(client_config(&identity)?),
            identity,
            contents,
        })
    }
}

/// Why a reload was refused. The old material stays in use.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the new certificate {} is for {new}, but this process is {old}; fix: give it a certificate with the role URI {}", path.display(), old.uri())]
    RoleChanged { path: PathBuf, old: Role, new: Role },
}

/// The TLS material in use, swapped atomically on reload.
pub struct TlsMaterial {
    paths: TlsPaths,
    current: RwLock<Arc<Loaded>>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("paths", &self.paths)
            .field("role", &self.role())
            .finish()
    }
}

impl TlsMaterial {
    /// Loads and checks the files (see [`load_identity`] for what is checked).
    pub fn load(paths: TlsPaths) -> Result<Arc<TlsMaterial>, TlsError> {
        let loaded = Loaded::from_files(&paths)?;
        Ok(Arc::new(TlsMaterial {
            paths,
            current: RwLock::new(Arc::new(loaded)),
        }))
    }

    fn current(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn paths(&self) -> &TlsPaths {
        &self.paths
    }

    /// The role of this process's certificate. A reload never changes it.
    pub fn role(&self) -> Role {
        self.current().identity.role().clone()
    }

    /// When the certificate in use expires.
    pub fn not_after(&self) -> SystemTime {
        self.current().identity.not_after()
    }

    /// The config for accepting a connection now.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current().server.clone()
    }

    /// The config for the web console's connections now (`console_listen`).
    pub fn browser_server_config(&self) -> Arc<ServerConfig> {
        self.current().browser.clone()
    }

    /// The identity in use now (its certificate, key and CA).
    pub fn identity(&self) -> TlsIdentity {
        self.current().identity.clone()
    }

    /// The config for making a connection now.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.current().client.clone()
    }

    /// The DER of the certificate in use (tests compare it with what a peer was shown).
    pub fn certificate(&self) -> Vec<u8> {
        self.current()
            .identity
            .cert_chain()
            .first()
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default()
    }

    /// Loads the files again and swaps them in. `Ok(false)` when nothing changed. On error the
    /// material in use stays, so a half-copied file or a mistake cannot take the process down.
    pub fn reload(&self) -> Result<bool, ReloadError> {
        let before = self.current();
        if before.contents.is_some() && self.paths.read_all() == before.contents {
            return Ok(false);
        }
        let loaded = Loaded::from_files(&self.paths)?;
        let (old, new) = (before.identity.role(), loaded.identity.role());
        if old != new {
            return Err(ReloadError::RoleChanged {
                path: self.paths.cert.clone(),
                old: old.clone(),
                new: new.clone(),
            });
        }
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(loaded);
        Ok(true)
    }

    /// Reloads on SIGHUP and whenever the files' contents change, until the task is aborted.
    /// A failed reload is logged once per distinct error and retried on the next change.
    pub fn spawn_reloader(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let material = self.clone();
        tokio::spawn(async move { material.reload_loop().await })
    }

    fn warn_if_expiring(&self, last: &mut Option<tokio::time::Instant>) {
        let left = self
            .not_after()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let due = last.is_none_or(|at| at.elapsed() >= EXPIRY_WARNING_EVERY);
        if left < EXPIRY_WARNING && due {
            warn!(
                cert = %self.paths.cert.display(),
                days_left = left.as_secs() / 86_400,
                "the TLS certificate expires soon; replace the files (they are reloaded without a restart)"
            );
            *last = Some(tokio::time::Instant::now());
        }
    }

    async fn reload_loop(self: Arc<Self>) {
        let mut hangup = match crate::hangup::Hangup::listen() {
            Ok(signal) => Some(signal),
            Err(error) => {
                warn!(%error, "cannot listen for SIGHUP; certificates reload on file change only");
                None
            }
        };
        let mut poll = tokio::time::interval(FILE_POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error = String::new();
        let mut expiry_warned: Option<tokio::time::Instant> = None;
        loop {
            self.warn_if_expiring(&mut expiry_warned);
            let trigger = tokio::select! {
                _ = poll.tick() => "file change",
                () = async {
                    match hangup.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                } => "SIGHUP",
            };
            match self.reload() {
                Ok(true) => {
                    last_error.clear();
                    info!(
                        trigger,
                        cert = %self.paths.cert.display(),
                        role = %self.role(),
                        "TLS certificates reloaded; new connections use them"
                    );
                }
                Ok(false) => {
                    if trigger == "SIGHUP" {
                        info!(cert = %self.paths.cert.display(), "SIGHUP: TLS files unchanged");
                    }
                }
                Err(error) => {
                    let text = error.to_string();
                    if text != last_error || trigger == "SIGHUP" {
                        warn!(trigger, %error, "TLS reload refused; still using the previous certificates");
                        last_error = text;
                    }
                }
            }
        }
    }
}
