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

mod agent;
pub mod config;
pub mod connection;
pub mod host;
pub mod runner;
pub mod spool;

use std::future::Future;
use std::sync::Arc;

use tracing::{info, Instrument};

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
}

impl WorkerError {
    /// The process exit code for this error (DESIGN.md): 2 for a usage or config error, 1
    /// otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            WorkerError::Config(_) | WorkerError::Endpoints(_) | WorkerError::Tls(_) => 2,
            WorkerError::Spool(_) => 1,
        }
    }
}

/// Runs the worker agent until `shutdown` resolves: registers with the cluster, takes tasks
/// while enabled and not draining, runs them, and reports their logs and results (spooling them
/// while no replica answers). On shutdown it stops taking tasks, kills the running ones and
/// reports each as FAILED "worker shut down" (or spools that report), then returns.
///
/// Fails only at start, when the spool cannot be opened or the endpoints are unusable.
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), WorkerError> {
    let spool = spool::Spool::open(&config.spool_dir())?;
    let (security, tls_duty) = match &config.tls {
        Some(paths) => {
            let material = crate::tls::TlsMaterial::load(paths.clone())?;
            let reloader = material.spawn_reloader();
            (Security::MutualTls(material), Some(reloader))
        }
        None => (
            Security::Insecure,
            Some(tokio::spawn(crate::transport::warn_insecure_every_minute(
                "worker",
            ))),
        ),
    };
    let connection =
        connection::Connection::new(&config.endpoints, security).map_err(WorkerError::Endpoints)?;
    let span = tracing::info_span!("worker", worker_id = %config.agent_id);
    async move {
        info!(
            display_name = %config.display_name,
            endpoints = ?config.endpoints,
            tags = ?config.tags,
            max_task_count = config.max_task_count,
            tasks_root_folder = %config.tasks_root_folder.display(),
            spooled = spool.len(),
            "worker agent starting"
        );
        let agent = Arc::new(agent::Agent::new(config, connection, spool));
        tokio::select! {
            () = agent.run_loops() => {}
            () = shutdown => {}
        }
        agent.shut_down().await;
        if let Some(duty) = tls_duty {
            duty.abort();
        }
        Ok(())
    }
    .instrument(span)
    .await
}
