//! The command line: each command's flags beside what it does, and how it prints (a table for
//! people, `--output json` for scripts). `main.rs` only parses and calls [`run`].
//!
//! Exit codes (DESIGN.md): 0 ok, 1 operation failed, 2 usage or config error, 3 cluster
//! unavailable.

mod certs;
mod client_args;
mod cluster;
mod console;
mod job;
#[cfg(unix)]
mod local;
pub mod screen;
#[cfg(unix)]
mod serve;
mod signal;
mod status;
pub mod table;
mod workers;

#[cfg(unix)]
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::client::ClientError;
use crate::telemetry::LogFormat;

pub use client_args::{ClientArgs, ClientTlsArgs};
pub use job::{state_name, JobSubmitArgs};
use signal::shutdown_signal;

#[derive(Parser)]
#[command(
    name = "scaleout",
    version,
    about = "A highly available SSIS Scale Out master"
)]
pub struct Cli {
    /// Log format on stderr; RUST_LOG filters (default: info for replicas, warn otherwise).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a master replica.
    #[cfg(unix)]
    Master {
        #[arg(long, env = "SCALEOUT_CONFIG")]
        config: PathBuf,
        /// Override a config key, e.g. --set raft.heartbeat_interval_ms=150 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Run a worker agent: it pulls tasks from the cluster and runs them.
    #[cfg(unix)]
    Worker {
        #[arg(long, env = "SCALEOUT_WORKER_CONFIG")]
        config: PathBuf,
        /// Override a config key, e.g. --set max_task_count=4 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// The worker registry: list, enable, disable, drain, remove.
    Workers {
        #[command(subcommand)]
        command: workers::WorkersCommand,
    },
    /// Cluster administration.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// One screen: replicas, leader and majority, workers, jobs by state, the outbox.
    /// --watch redraws it every few seconds.
    Status(status::StatusArgs),
    /// Submit, inspect and cancel jobs.
    Job {
        #[command(subcommand)]
        command: job::JobCommand,
    },
    /// Development certificates.
    Certs {
        #[command(subcommand)]
        command: certs::CertsCommand,
    },
    /// A replica's data dir: adopt a restored backup copy.
    #[cfg(unix)]
    DataDir {
        #[command(subcommand)]
        command: serve::DataDirCommand,
    },
    /// The SSISDB connection of a replica's config: check it, or install the schema.
    #[cfg(unix)]
    Ssisdb {
        #[command(subcommand)]
        command: serve::SsisdbCommand,
    },
    /// Start three local replicas, submit jobs, kill the leader, and show that nothing was lost.
    #[cfg(unix)]
    Demo {
        /// Jobs to submit in all.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(2..=10_000))]
        jobs: u32,
        /// Keep the cluster running afterwards, with the web consoles open and sign-in tokens
        /// printed, until Ctrl-C.
        #[arg(long)]
        keep: bool,
    },
    /// Chaos test: 3 replicas and workers behind fault-injecting proxies, faults from a seeded
    /// plan (kills, pauses, partitions, a lost disk, power cuts, clock steps, overlapping
    /// faults), then every invariant checked.
    /// Exits 1 if one broke.
    #[cfg(unix)]
    Chaos {
        /// How long to inject faults, in minutes (fractions allowed: 0.75 replays the test
        /// suite's 45-second run).
        #[arg(long, default_value_t = 5.0, value_parser = chaos_minutes)]
        minutes: f64,
        /// The plan's seed (printed at the start, so a failing run can be replayed).
        #[arg(long)]
        seed: Option<u64>,
        /// Faults to draw from, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        faults: Vec<String>,
        /// Keep the cluster's logs and data in this directory.
        #[arg(long)]
        keep_dir: Option<std::path::PathBuf>,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Benchmarks.
    #[cfg(unix)]
    Bench {
        #[command(subcommand)]
        command: local::BenchCommand,
    },
    /// The web console: sign-in tokens.
    Console {
        #[command(subcommand)]
        command: console::ConsoleCommand,
    },
    /// Print a completion script for a shell, e.g. `scaleout completions bash >
    /// /etc/bash_completion.d/scaleout`, or in PowerShell `scaleout completions powershell |
    /// Out-String | Invoke-Expression` (add it to $PROFILE to keep it).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

impl Command {
    /// A long-running replica or worker process (they log at info by default).
    pub fn is_process(&self) -> bool {
        #[cfg(unix)]
        return matches!(self, Command::Master { .. } | Command::Worker { .. });
        #[cfg(not(unix))]
        false
    }
}

/// Runs one command to its end.
pub async fn run(command: Command) -> Result<(), CliError> {
    match command {
        #[cfg(unix)]
        Command::Master { config, overrides } => serve::master(&config, &overrides).await,
        #[cfg(unix)]
        Command::Worker { config, overrides } => serve::worker(&config, &overrides).await,
        Command::Workers { command } => command.run().await,
        Command::Cluster { command } => command.run().await,
        Command::Status(args) => status::status(&args).await,
        Command::Job { command } => command.run().await,
        Command::Certs { command } => command.run(),
        #[cfg(unix)]
        Command::DataDir { command } => command.run(),
        #[cfg(unix)]
        Command::Ssisdb { command } => command.run().await,
        #[cfg(unix)]
        Command::Demo { jobs, keep } => {
            crate::demo::run(jobs, keep).await.map_err(CliError::failed)
        }
        #[cfg(unix)]
        Command::Chaos {
            minutes,
            seed,
            faults,
            keep_dir,
            output,
        } => local::chaos(minutes, seed, &faults, keep_dir, output).await,
        #[cfg(unix)]
        Command::Bench { command } => command.run().await,
        Command::Console { command } => command.run(),
        Command::Completions { shell } => completions(shell),
    }
}

/// Writes `shell`'s completion script for every command and option to standard output.
fn completions(shell: clap_complete::Shell) -> Result<(), CliError> {
    std::io::Write::write_all(&mut std::io::stdout().lock(), &completion_script(shell))
        .map_err(|e| CliError::failed(anyhow::anyhow!("cannot write to standard output: {e}")))
}

fn completion_script(shell: clap_complete::Shell) -> Vec<u8> {
    use clap::CommandFactory;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "scaleout", &mut script);
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_completes_nested_commands_and_their_options() {
        use clap_complete::Shell;
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish, Shell::PowerShell] {
            let script = String::from_utf8(completion_script(shell)).expect("UTF-8");
            for word in ["transfer-leader", "idempotency-key", "drain", "completions"] {
                assert!(script.contains(word), "{shell}: no {word}");
            }
        }
    }
}

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNAVAILABLE: u8 = 3;

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub error: anyhow::Error,
}

impl CliError {
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        CliError {
            code: EXIT_USAGE,
            error: error.into(),
        }
    }

    pub fn failed(error: impl Into<anyhow::Error>) -> Self {
        CliError {
            code: EXIT_FAILED,
            error: error.into(),
        }
    }
}

impl From<ClientError> for CliError {
    fn from(error: ClientError) -> Self {
        let code = match &error {
            ClientError::NoEndpoints | ClientError::BadEndpoint { .. } => EXIT_USAGE,
            ClientError::Unavailable { .. } | ClientError::Unreachable { .. } => EXIT_UNAVAILABLE,
            ClientError::Rejected(status) if status.code() == tonic::Code::InvalidArgument => {
                EXIT_USAGE
            }
            ClientError::Rejected(_) => EXIT_FAILED,
        };
        CliError {
            code,
            error: error.into(),
        }
    }
}

/// How a command prints: a table for people, JSON for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// `--minutes` of `scaleout chaos`: more than 0 (at least one second), at most a day.
#[cfg(unix)]
fn chaos_minutes(text: &str) -> Result<f64, String> {
    let minutes: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of minutes (e.g. 5 or 0.75)"))?;
    if !(minutes * 60.0 >= 1.0 && minutes <= 1440.0) {
        return Err(format!(
            "{text} minutes is out of range: from 1 second (0.017) to 1440 (a day)"
        ));
    }
    Ok(minutes)
}
