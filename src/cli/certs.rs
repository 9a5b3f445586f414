//! `scaleout certs init`: a development CA and certificates for every role.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::table::print_table;
use super::CliError;

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Make a development CA and certificates for replicas, workers, an operator and an admin.
    Init(CertsInitArgs),
}

#[derive(Args)]
pub struct CertsInitArgs {
    /// Where to write the PEM files (created if missing).
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=99))]
    replicas: u32,
    /// Worker certificates, each for a new agent id.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=1000))]
    workers: u32,
    /// A worker certificate for this agent id (repeatable), in addition to --workers.
    #[arg(long = "worker-id", value_name = "UUID")]
    worker_ids: Vec<uuid::Uuid>,
    /// A host name or IP address for the replica certificates (repeatable).
    #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
    hosts: Vec<String>,
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    validity_days: u32,
    #[arg(long, default_value = "operator")]
    operator: String,
    #[arg(long, default_value = "admin")]
    admin: String,
    /// Replace an existing CA in the directory.
    #[arg(long)]
    force: bool,
}

impl CertsCommand {
    pub fn run(self) -> Result<(), CliError> {
        let CertsCommand::Init(args) = self;
        let options = crate::certs::CertsInit {
            dir: args.dir,
            replicas: args.replicas,
            workers: args.worker_ids,
            hosts: args.hosts,
            validity_days: args.validity_days,
            operator: args.operator,
            admin: args.admin,
            force: args.force,
        }
        .with_worker_count(args.workers);
        certs_init(&options)
    }
}

/// `certs init`: writes the files and lists them with their roles.
pub fn certs_init(options: &crate::certs::CertsInit) -> Result<(), CliError> {
    let report = crate::certs::init(options).map_err(CliError::usage)?;
    println!(
        "CA: {} (key {})",
        report.ca_cert.display(),
        report.ca_key.display()
    );
    let rows: Vec<Vec<String>> = report
        .issued
        .iter()
        .map(|issued| {
            vec![
                issued.role.to_string(),
                issued.cert.display().to_string(),
                issued.key.display().to_string(),
            ]
        })
        .collect();
    print_table(&["ROLE", "CERTIFICATE", "KEY (0600)"], &rows);
    println!("valid until {}", report.not_after);
    Ok(())
}
