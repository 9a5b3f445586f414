//! The commands that start their own local cluster: `chaos` and `bench …` (and `demo`, in
//! `crate::demo`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{shutdown_signal, CliError, ClientTlsArgs, Output};

/// `scaleout chaos`: exit 0 when every invariant held, 1 when one broke.
pub async fn chaos(
    minutes: f64,
    seed: Option<u64>,
    faults: &[String],
    keep_dir: Option<PathBuf>,
    output: Output,
) -> Result<(), CliError> {
    use crate::chaos::faults::FaultKind;
    let kinds = faults
        .iter()
        .map(|name| {
            FaultKind::ALL
                .into_iter()
                .find(|k| k.name() == name.as_str())
                .ok_or_else(|| {
                    let known: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                    CliError::usage(anyhow::anyhow!(
                        "unknown fault {name:?}; the faults are {}",
                        known.join(", ")
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let binary = std::env::current_exe().map_err(CliError::failed)?;
    let seed = seed.unwrap_or_else(rand::random);
    let mut options =
        crate::chaos::ChaosOptions::new(binary, seed, Duration::from_secs_f64(minutes * 60.0));
    options.faults = kinds;
    options.keep_dir = keep_dir;
    // Stopped by Ctrl-C or SIGTERM, the run is dropped: its processes are killed and its
    // power-cut file systems unmounted, rather than left behind.
    let report = tokio::select! {
        report = crate::chaos::run(options) => report.map_err(CliError::failed)?,
        () = shutdown_signal() => {
            return Err(CliError::failed(anyhow::anyhow!("the chaos run was stopped")));
        }
    };
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_value(&report).map_err(CliError::failed)?
        ),
        Output::Table => println!("{report}"),
    }
    if report.ok() {
        Ok(())
    } else {
        Err(CliError::failed(anyhow::anyhow!(
            "invariants broken (seed {seed}): {}",
            report.violations().join("; ")
        )))
    }
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Submits per second and latency with many concurrent submitters.
    Submit(BenchSubmitArgs),
    /// Submit -> lease -> complete through real workers with a no-op executor.
    E2e(BenchE2eArgs),
    /// Kill the leader of a local cluster again and again under load: time from each kill to
    /// the next committed write.
    Failover(BenchFailoverArgs),
    /// What a replica costs with a long history: memory, disk, snapshots, restart (issue 15).
    Capacity(BenchCapacityArgs),
    /// Many idle workers and a deep queue: the leader's CPU, and dispatch latency.
    Scale(BenchScaleArgs),
}

#[derive(Args)]
pub struct BenchCapacityArgs {
    /// Jobs run and completed by no-op workers.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    jobs: u64,
    /// Jobs left queued on top (a tag no worker has).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(0..=100_000_000))]
    queued: u64,
    /// Log lines each job sends.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    log_lines: u32,
    /// Bytes per log line.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=16_384))]
    line_bytes: u32,
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    workers: u64,
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    slots: u32,
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    submitters: u64,
    /// Keep every finished job for the whole retention (no `retention.max_finished_jobs` cap).
    #[arg(long)]
    keep_all: bool,
    /// Run the cluster plaintext (`insecure = true`) instead of mutual TLS, to compare.
    #[arg(long)]
    insecure: bool,
    /// Keep the replicas' data dirs when the benchmark ends (their path is printed on stderr),
    /// e.g. to profile a restart on them.
    #[arg(long)]
    keep_data: bool,
    #[arg(long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Args)]
pub struct BenchFailoverArgs {
    /// Faults injected into the leader, one after another; the old leader is brought back and
    /// caught up before the next.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    kills: u32,
    /// kill: SIGKILL; terminate: SIGTERM (a graceful stop hands leadership over); pause:
    /// SIGSTOP for 10 s; isolate: every peer link to and from the leader blackholed for 10 s
    /// (through chaos proxies).
    #[arg(long, value_enum, default_value = "kill")]
    fault: FailoverFault,
    /// Tasks submitting jobs back to back throughout.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    submitters: u64,
    /// Pause once the killed replica has caught up, before the next kill.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    settle_ms: u64,
    /// Run the cluster plaintext (`insecure = true`) instead of mutual TLS, to compare.
    #[arg(long)]
    insecure: bool,
    #[arg(long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum FailoverFault {
    Kill,
    Terminate,
    Pause,
    Isolate,
}

#[derive(Args)]
pub struct BenchScaleArgs {
    /// Simulated idle workers (each with its own certificate and connection).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    workers: u64,
    /// Their heartbeat interval (the agent's default).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    heartbeat_ms: u64,
    /// Their long-poll wait (the agent's default).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(0..=60_000))]
    acquire_wait_ms: u32,
    /// How long the leader's CPU is sampled, without and with the workers.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    sample_seconds: u64,
    /// Jobs queued for the deep-queue dispatch probe (a tenth pinned to an absent worker).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(0..=100_000_000))]
    queued: u64,
    /// Dispatches timed per queue depth.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    probes: u64,
    /// Run the cluster plaintext (`insecure = true`) instead of mutual TLS.
    #[arg(long)]
    insecure: bool,
    /// Run the replicas from this scaleout binary (another build, for an A/B) instead of
    /// this one.
    #[arg(long)]
    binary: Option<std::path::PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Calls {
    Combined,
    Separate,
}

#[derive(Args)]
pub struct BenchE2eArgs {
    /// Submitting tasks, each awaiting its acknowledgment before the next submit.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    publishers: u64,
    /// Simulated workers (in this process, no task processes).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1000))]
    consumers: u64,
    /// Tasks each consumer holds at most (its MaxTaskCount).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    outstanding: u32,
    /// Jobs in the throughput phase.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    jobs: u64,
    /// Length of the latency phase at half the measured rate.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    paced_seconds: u64,
    /// Run the cluster plaintext (`insecure = true`) instead of mutual TLS, to compare.
    #[arg(long)]
    insecure: bool,
    /// Run the replicas from this scaleout binary (another build, for an A/B) instead of
    /// this one.
    #[arg(long)]
    binary: Option<std::path::PathBuf>,
    /// How the simulated workers call: `combined` sends results with the next AcquireTasks,
    /// `separate` calls CompleteTask per task (what builds before the combined call take).
    #[arg(long, value_enum, default_value = "combined")]
    calls: Calls,
    #[arg(long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Args)]
pub struct BenchSubmitArgs {
    /// Replicas to load; when not given, a local 3-replica cluster is started in a temp dir.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    submitters: u64,
    /// Submits in all.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    count: u64,
    /// Stop after this many seconds even if `count` is not reached.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    max_seconds: u64,
    /// After the load, measure a replica's resident memory and its restart time.
    #[arg(long)]
    measure_restart: bool,
    /// Refuse the local leader's API for the whole run (behind proxies): every submit goes
    /// through a follower, which forwards it to the leader.
    #[arg(long, conflicts_with = "endpoints")]
    through_followers: bool,
    #[arg(long, value_enum, default_value = "table")]
    output: Output,
    /// With --endpoints: the client certificate (or --insecure). Without: --insecure runs the
    /// local cluster plaintext instead of mutual TLS.
    #[command(flatten)]
    tls: ClientTlsArgs,
}

impl BenchCommand {
    pub async fn run(self) -> Result<(), CliError> {
        match self {
            BenchCommand::Submit(args) => {
                let security = if args.endpoints.is_empty() {
                    crate::transport::Security::Insecure
                } else {
                    args.tls.security()?
                };
                crate::bench::submit(crate::bench::SubmitBench {
                    insecure: args.tls.insecure,
                    security,
                    endpoints: args.endpoints,
                    submitters: args.submitters as usize,
                    count: args.count,
                    max_seconds: args.max_seconds,
                    measure_restart: args.measure_restart,
                    through_followers: args.through_followers,
                    json: matches!(args.output, Output::Json),
                })
                .await
                .map_err(CliError::failed)
            }
            BenchCommand::E2e(args) => crate::bench::e2e(crate::bench::E2eBench {
                publishers: args.publishers as usize,
                consumers: args.consumers as usize,
                outstanding: args.outstanding,
                jobs: args.jobs,
                paced_seconds: args.paced_seconds,
                insecure: args.insecure,
                binary: args.binary,
                calls: match args.calls {
                    Calls::Combined => crate::bench::ConsumerCalls::Combined,
                    Calls::Separate => crate::bench::ConsumerCalls::Separate,
                },
                json: matches!(args.output, Output::Json),
            })
            .await
            .map_err(CliError::failed),
            BenchCommand::Scale(args) => crate::bench::scale(crate::bench::ScaleBench {
                workers: args.workers as usize,
                heartbeat_ms: args.heartbeat_ms,
                acquire_wait_ms: args.acquire_wait_ms,
                sample_seconds: args.sample_seconds,
                queued: args.queued,
                probes: args.probes,
                insecure: args.insecure,
                binary: args.binary,
                json: matches!(args.output, Output::Json),
            })
            .await
            .map_err(CliError::failed),
            BenchCommand::Failover(args) => crate::bench::failover(crate::bench::FailoverBench {
                kills: args.kills,
                fault: match args.fault {
                    FailoverFault::Kill => crate::bench::Fault::Kill,
                    FailoverFault::Terminate => crate::bench::Fault::Terminate,
                    FailoverFault::Pause => crate::bench::Fault::Pause,
                    FailoverFault::Isolate => crate::bench::Fault::Isolate,
                },
                submitters: args.submitters as usize,
                settle: Duration::from_millis(args.settle_ms),
                insecure: args.insecure,
                json: matches!(args.output, Output::Json),
            })
            .await
            .map_err(CliError::failed),
            BenchCommand::Capacity(args) => crate::bench::capacity(crate::bench::CapacityBench {
                jobs: args.jobs,
                queued: args.queued,
                log_lines: args.log_lines,
                line_bytes: args.line_bytes,
                workers: args.workers as usize,
                slots: args.slots,
                submitters: args.submitters as usize,
                keep_all: args.keep_all,
                insecure: args.insecure,
                keep_data: args.keep_data,
                json: matches!(args.output, Output::Json),
            })
            .await
            .map_err(CliError::failed),
        }
    }
}
