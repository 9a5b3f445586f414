//! The commands that run a process or act on a replica's files: `master`, `worker`,
//! `data-dir`, `ssisdb` (Linux and other Unix systems only).

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use clap::{Args, Subcommand};

use super::signal::shutdown_signal;
use super::CliError;
use crate::config::MasterConfig;

#[derive(Subcommand)]
pub enum DataDirCommand {
    /// After restoring a backup copy into this replica's data_dir (whole-cluster restore): make
    /// the copy this replica's own, with the data dir identity its membership records.
    Adopt(ReplicaConfigArgs),
}

#[derive(Subcommand)]
pub enum SsisdbCommand {
    /// Connect as the replica would, check the schema version, every table and view, and that
    /// the login may write; say what is missing and how to fix it.
    Check(ReplicaConfigArgs),
    /// Create (or complete) schema `scaleout` in SSISDB; safe to run again.
    InstallSchema(ReplicaConfigArgs),
}

#[derive(Args)]
pub struct ReplicaConfigArgs {
    /// A replica's config file.
    #[arg(long, env = "SCALEOUT_CONFIG")]
    config: PathBuf,
    /// Override a config key, e.g. --set data_dir=/var/lib/scaleout (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

pub async fn master(config_path: &Path, overrides: &[String]) -> Result<(), CliError> {
    let config = MasterConfig::load(config_path, overrides).map_err(CliError::usage)?;
    config
        .prepare_data_dir(config_path)
        .map_err(CliError::usage)?;
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

/// `scaleout ssisdb check`: exit 0 when everything is in place, 1 (with what to fix) otherwise.
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

impl DataDirCommand {
    pub fn run(self) -> Result<(), CliError> {
        let DataDirCommand::Adopt(args) = self;
        data_dir_adopt(&args.config, &args.overrides)
    }
}

impl SsisdbCommand {
    pub async fn run(self) -> Result<(), CliError> {
        match self {
            SsisdbCommand::Check(args) => ssisdb_check(&args.config, &args.overrides).await,
            SsisdbCommand::InstallSchema(args) => {
                ssisdb_install_schema(&args.config, &args.overrides).await
            }
        }
    }
}
