//! The worker agent, `scaleout worker --config FILE`: it pulls tasks from the cluster and runs
//! them, as an SSIS Scale Out Worker does.
//!
//! - [`config`]: the TOML config (keys after SSIS's WorkerSettings), validated, agent id kept.
//! - [`connection`]: WorkerService calls to whichever replica leads, redirects followed.
//! - [`runner`]: one task attempt as a process group: argv or package executor, env, folder,
//!   timeout, output lines, kill of the whole tree.
//! - [`spool`]: the on-disk queue of logs and results waiting for the cluster.
//! - [`host`]: CPU and free memory readings for heartbeats and task requests.
//! - `agent`: the loops tying them together (see [`run`]).
//! - [`observe`]: the metrics and readiness served on `metrics_listen`.
//!
//! ```no_run
//! # async fn example() -> Result<(), scaleout::worker::WorkerError> {
//! use scaleout::worker::{run, WorkerConfig};
//! let config = WorkerConfig::load("worker.toml".as_ref(), &[])?;
//! run(config, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```
//!
//! [`Worker::start`] and [`Worker::run`] split [`run`] in two, for a caller that wants to know
//! the start went well (or which port `metrics_listen = "…:0"` got) before the agent runs.

mod agent;
mod agent_id;
pub mod config;
pub mod connection;
pub mod host;
pub mod observe;
pub mod runner;
pub mod spool;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tracing::{info, Instrument, Span};

use crate::ops::{Observed, OpsServer, Registry};
use crate::transport::Security;

pub use config::{WorkerConfig, WorkerConfigError};
pub use spool::SpoolError;

/// Why the worker could not run. Network trouble is never an error: the agent waits it out.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Config(#[from] WorkerConfigError),
    #[error("invalid `endpoints`: {0}")]
    Endpoints(String),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(
        "cannot listen on {addr} (`metrics_listen`): {source}; is another process using it? \
         Choose a free port, or remove `metrics_listen` to serve no metrics"
    )]
    MetricsListen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// A setting the cluster's answer at registration makes unsafe (see `config::check_tolerance`).
    #[error("{0}")]
    Refused(String),
}

impl WorkerError {
    /// The process exit code for this error (DESIGN.md): 2 for a usage or config error, 1
    /// otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            WorkerError::Config(_)
            | WorkerError::Endpoints(_)
            | WorkerError::Tls(_)
            | WorkerError::Refused(_) => 2,
            WorkerError::Spool(_) | WorkerError::MetricsListen { .. } => 1,
        }
    }
}

/// Runs the worker agent until `shutdown` resolves: registers with the cluster, takes tasks
/// while enabled and not draining, runs them, and reports their logs and results (spooling them
/// while no replica answers). On shutdown it stops taking tasks, kills the running ones and
/// reports each as FAILED "worker shut down" (or spools that report), then returns.
///
/// Fails at start, when the spool cannot be opened, the endpoints are unusable or
/// `metrics_listen` cannot be bound; and at registration, when the cluster's lease interval
/// makes a setting unsafe ([`WorkerError::Refused`]: `heartbeat_error_tolerance_ms` longer than
/// the lease without `allow_overlapping_attempts`).
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), WorkerError> {
    Worker::start(config).await?.run(shutdown).await
}

/// A worker agent started but not running yet: its spool is open, its TLS material loaded and
/// its metrics endpoint serving (`/readyz` says "not registered yet" until [`Worker::run`]).
pub struct Worker {
    agent: Arc<agent::Agent>,
    ops: Option<OpsServer>,
    /// The certificate reloader, or the reminder that the worker runs without TLS.
    duty: Duty,
    span: Span,
}

/// A background task of the worker, stopped with it.
struct Duty(JoinHandle<()>);

impl Drop for Duty {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Worker {
    /// Binds `metrics_listen` (first, so a taken port stops the worker before anything else),
    /// runs the config's start-up step ([`WorkerConfig::prepare`]), opens the spool, loads the
    /// TLS material and starts serving the metrics.
    pub async fn start(config: WorkerConfig) -> Result<Worker, WorkerError> {
        let span = tracing::info_span!("worker", worker_id = %config.agent_id);
        async move {
            let metrics_listener = match &config.metrics_listen {
                Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(
                    |source| WorkerError::MetricsListen {
                        addr: addr.clone(),
                        source,
                    },
                )?),
                None => None,
            };
            // The start-up step: directories and the agent id file (loading wrote nothing).
            config.prepare()?;
            let spool = spool::Spool::open(&config.spool_dir())?;
            let (security, duty) = match &config.tls {
                Some(paths) => {
                    let material = crate::tls::TlsMaterial::load(paths.clone())?;
                    let reloader = material.spawn_reloader();
                    (Security::MutualTls(material), Duty(reloader))
                }
                None => (
                    Security::Insecure,
                    Duty(tokio::spawn(crate::transport::warn_insecure_every_minute(
                        "worker",
                    ))),
                ),
            };
            let connection = connection::Connection::new(
                &config.endpoints,
                security,
                connection::keepalive_for(config.task_heartbeat_interval()),
            )
            .map_err(WorkerError::Endpoints)?;
            info!(
                display_name = %config.display_name,
                endpoints = ?config.endpoints,
                tags = ?config.tags,
                max_task_count = config.max_task_count,
                tasks_root_folder = %config.tasks_root_folder.display(),
                metrics_listen = config.metrics_listen.as_deref().unwrap_or("off"),
                spooled = spool.len(),
                "worker agent starting"
            );
            let registry = Registry::new();
            let metrics = observe::WorkerMetrics::new(&registry);
            let agent = Arc::new(agent::Agent::new(config, connection, spool, metrics));
            let ops = match metrics_listener {
                Some(listener) => {
                    let viewed = Arc::clone(&agent);
                    let observer =
                        observe::WorkerObserver::new(registry.clone(), agent.config(), move || {
                            viewed.view()
                        });
                    let addr = agent.config().metrics_listen.clone().unwrap_or_default();
                    let observed = Arc::new(observer) as Arc<dyn Observed>;
                    // Stopped when the worker drops it, at the very end of `run`.
                    let ops =
                        crate::ops::serve(listener, observed, registry, std::future::pending())
                            .map_err(|source| WorkerError::MetricsListen { addr, source })?;
                    Some(ops)
                }
                None => None,
            };
            Ok(Worker {
                agent,
                ops,
                duty,
                span: Span::current(),
            })
        }
        .instrument(span)
        .await
    }

    /// The address the metrics endpoint is bound to (with the port chosen when
    /// `metrics_listen` asked for port 0), or `None` without `metrics_listen`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().map(OpsServer::local_addr)
    }

    /// Runs the agent until `shutdown` resolves, then shuts it down (see [`run`]).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), WorkerError> {
        let Worker {
            agent,
            ops,
            duty,
            span,
        } = self;
        async move {
            tokio::select! {
                () = agent.run_loops() => {}
                () = shutdown => {}
            }
            agent.shut_down().await;
            // Served until the end: during shutdown `/readyz` says so.
            drop(ops);
            drop(duty);
            match agent.fatal() {
                Some(refusal) => Err(WorkerError::Refused(refusal)),
                None => Ok(()),
            }
        }
        .instrument(span)
        .await
    }
}
