//! The `scaleout` binary: parses the command line and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use scaleout::cli::{self, ClientArgs, JobSubmitArgs, Output};
use scaleout::pb::v1::WorkerAction;
use scaleout::telemetry::LogFormat;

#[derive(Parser)]
#[command(
    name = "scaleout",
    version,
    about = "A highly available SSIS Scale Out master"
)]
struct Cli {
    /// Log format on stderr; RUST_LOG filters (default: info for replicas, warn otherwise).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a master replica.
    Master {
        #[arg(long, env = "SCALEOUT_CONFIG")]
        config: PathBuf,
        /// Override a config key, e.g. --set raft.heartbeat_interval_ms=150 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Run a worker agent: it pulls tasks from the cluster and runs them.
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
        command: WorkersCommand,
    },
    /// Cluster administration.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// One screen: replicas, leader and majority, workers, jobs by state, the outbox.
    /// --watch redraws it every few seconds.
    Status(cli::StatusArgs),
    /// Submit, inspect and cancel jobs.
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// Development certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// A replica's data dir: adopt a restored backup copy.
    DataDir {
        #[command(subcommand)]
        command: DataDirCommand,
    },
    /// The SSISDB connection of a replica's config: check it, or install the schema.
    Ssisdb {
        #[command(subcommand)]
        command: SsisdbCommand,
    },
    /// Start three local replicas, submit jobs, kill the leader, and show that nothing was lost.
    Demo {
        /// Jobs to submit in all.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(2..=10_000))]
        jobs: u32,
    },
    /// Chaos test: 3 replicas and workers behind fault-injecting proxies, faults from a seeded
    /// plan (kills, pauses, partitions, a lost disk, power cuts, clock steps, overlapping
    /// faults), then every invariant checked.
    /// Exits 1 if one broke.
    Chaos {
        /// How long to inject faults.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1440))]
        minutes: u64,
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
        output: cli::Output,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum DataDirCommand {
    /// After restoring a backup copy into this replica's data_dir (whole-cluster restore): make
    /// the copy this replica's own, with the data dir identity its membership records.
    Adopt(ReplicaConfigArgs),
}

#[derive(Subcommand)]
enum SsisdbCommand {
    /// Connect as the replica would, check the schema version, every table and view, and that
    /// the login may write; say what is missing and how to fix it.
    Check(ReplicaConfigArgs),
    /// Create (or complete) schema `scaleout` in SSISDB; safe to run again.
    InstallSchema(ReplicaConfigArgs),
}

#[derive(Args)]
struct ReplicaConfigArgs {
    /// A replica's config file.
    #[arg(long, env = "SCALEOUT_CONFIG")]
    config: PathBuf,
    /// Override a config key, e.g. --set data_dir=/var/lib/scaleout (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Make a development CA and certificates for replicas, workers, an operator and an admin.
    Init(CertsInitArgs),
}

#[derive(Args)]
struct CertsInitArgs {
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

#[derive(Subcommand)]
enum WorkersCommand {
    /// Every registered worker: online or offline, last heartbeat, running tasks.
    List(ClientArgs),
    /// Let a worker take tasks (a new worker starts disabled when approval is manual).
    Enable {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop giving a worker tasks.
    Disable {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Let a worker finish what it runs and take nothing new.
    Drain {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove an idle worker from the registry.
    Remove {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Members, leader, term, and commit/applied index per replica.
    Status(ClientArgs),
    /// Add a running replica: it joins as a learner, catches up, then becomes a voter (joint
    /// consensus). Start it first with an empty data dir and a config that lists the members
    /// and itself.
    AddReplica {
        /// The new replica's id (its config's `id`).
        id: u64,
        /// The address clients and workers dial (its `api`).
        #[arg(long)]
        api: String,
        /// The address the other replicas dial (its `peer`).
        #[arg(long)]
        peer: String,
        /// How long to wait for it to catch up before it becomes a voter (at most 50; run the
        /// command again to wait longer: the replica keeps catching up as a learner).
        #[arg(long, default_value_t = 45, value_parser = clap::value_parser!(u64).range(1..=50))]
        catch_up_secs: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a replica from the membership (joint consensus); stop its process afterwards.
    RemoveReplica {
        id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum JobCommand {
    /// Submit a job: scaleout job submit [options] -- CMD [ARGS...]
    Submit(JobSubmitArgs),
    /// Show one job.
    Get {
        id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List jobs, optionally in one state.
    List {
        #[arg(long)]
        state: Option<String>,
        /// At most this many (all when not given).
        #[arg(long)]
        limit: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a job's log lines.
    Logs {
        id: u64,
        /// Keep printing new lines until the job ends.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Wait until a job ends; exit 0 if it succeeded, 1 otherwise.
    Wait {
        id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a job: a queued one at once, a running one on its worker's next heartbeat.
    Cancel {
        id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Submits per second and latency with many concurrent submitters.
    Submit(BenchSubmitArgs),
    /// Submit -> lease -> complete through real workers with a no-op executor.
    E2e(BenchE2eArgs),
    /// Kill the leader of a local cluster again and again under load: time from each kill to
    /// the next committed write.
    Failover(BenchFailoverArgs),
    /// What a replica costs with a long history: memory, disk, snapshots, restart (issue 15).
    Capacity(BenchCapacityArgs),
}

#[derive(Args)]
struct BenchCapacityArgs {
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
    #[arg(long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Args)]
struct BenchFailoverArgs {
    /// Leader kills (SIGKILL); the killed replica is restarted and caught up before the next.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    kills: u32,
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

#[derive(Args)]
struct BenchE2eArgs {
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    workers: u64,
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    slots: u32,
    /// Jobs in the throughput phase.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    jobs: u64,
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    submitters: u64,
    /// Length of the latency phase at half the measured rate.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    paced_seconds: u64,
    /// Run the cluster plaintext (`insecure = true`) instead of mutual TLS, to compare.
    #[arg(long)]
    insecure: bool,
    #[arg(long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Args)]
struct BenchSubmitArgs {
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
    #[arg(long, value_enum, default_value = "table")]
    output: Output,
    /// With --endpoints: the client certificate (or --insecure). Without: --insecure runs the
    /// local cluster plaintext instead of mutual TLS.
    #[command(flatten)]
    tls: cli::ClientTlsArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_replica = matches!(cli.command, Command::Master { .. } | Command::Worker { .. });
    // openraft narrates every vote and replication step at info; its warnings are what matter.
    let default_filter = if is_replica {
        "info,openraft=warn"
    } else {
        "warn"
    };
    scaleout::telemetry::init(cli.log_format, default_filter);
    scaleout::tls::install_crypto_provider();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Master { config, overrides } => cli::master(&config, &overrides).await,
            Command::Worker { config, overrides } => cli::worker(&config, &overrides).await,
            Command::DataDir {
                command: DataDirCommand::Adopt(args),
            } => cli::data_dir_adopt(&args.config, &args.overrides),
            Command::Ssisdb {
                command: SsisdbCommand::Check(args),
            } => cli::ssisdb_check(&args.config, &args.overrides).await,
            Command::Ssisdb {
                command: SsisdbCommand::InstallSchema(args),
            } => cli::ssisdb_install_schema(&args.config, &args.overrides).await,
            Command::Certs {
                command: CertsCommand::Init(args),
            } => {
                let options = scaleout::certs::CertsInit {
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
                cli::certs_init(&options)
            }
            Command::Workers { command } => match command {
                WorkersCommand::List(client) => cli::workers_list(&client).await,
                WorkersCommand::Enable { id, client } => {
                    cli::workers_set(&id, WorkerAction::Enable, &client).await
                }
                WorkersCommand::Disable { id, client } => {
                    cli::workers_set(&id, WorkerAction::Disable, &client).await
                }
                WorkersCommand::Drain { id, client } => {
                    cli::workers_set(&id, WorkerAction::Drain, &client).await
                }
                WorkersCommand::Remove { id, client } => cli::workers_remove(&id, &client).await,
            },
            Command::Cluster {
                command: ClusterCommand::Status(client),
            } => cli::cluster_status(&client).await,
            Command::Cluster {
                command:
                    ClusterCommand::AddReplica {
                        id,
                        api,
                        peer,
                        catch_up_secs,
                        client,
                    },
            } => {
                cli::cluster_add_replica(
                    id,
                    &api,
                    &peer,
                    std::time::Duration::from_secs(catch_up_secs),
                    &client,
                )
                .await
            }
            Command::Cluster {
                command: ClusterCommand::RemoveReplica { id, client },
            } => cli::cluster_remove_replica(id, &client).await,
            Command::Status(args) => cli::status(&args).await,
            Command::Job { command } => match command {
                JobCommand::Submit(args) => cli::job_submit(&args).await,
                JobCommand::Get { id, client } => cli::job_get(id, &client).await,
                JobCommand::List {
                    state,
                    limit,
                    client,
                } => cli::job_list(state.as_deref(), limit, &client).await,
                JobCommand::Cancel { id, client } => cli::job_cancel(id, &client).await,
                JobCommand::Logs { id, follow, client } => cli::job_logs(id, follow, &client).await,
                JobCommand::Wait { id, client } => cli::job_wait(id, &client).await,
            },
            Command::Chaos {
                minutes,
                seed,
                faults,
                keep_dir,
                output,
            } => cli::chaos(minutes, seed, &faults, keep_dir, output).await,
            Command::Demo { jobs } => scaleout::demo::run(jobs)
                .await
                .map_err(cli::CliError::failed),
            Command::Bench {
                command: BenchCommand::Submit(args),
            } => {
                let security = if args.endpoints.is_empty() {
                    Ok(scaleout::transport::Security::Insecure)
                } else {
                    args.tls.security()
                };
                let options = security.map(|security| scaleout::bench::SubmitBench {
                    insecure: args.tls.insecure,
                    security,
                    endpoints: args.endpoints,
                    submitters: args.submitters as usize,
                    count: args.count,
                    max_seconds: args.max_seconds,
                    measure_restart: args.measure_restart,
                    json: matches!(args.output, Output::Json),
                });
                match options {
                    Ok(options) => scaleout::bench::submit(options)
                        .await
                        .map_err(cli::CliError::failed),
                    Err(error) => Err(error),
                }
            }
            Command::Bench {
                command: BenchCommand::E2e(args),
            } => {
                let options = scaleout::bench::E2eBench {
                    workers: args.workers as usize,
                    slots: args.slots,
                    jobs: args.jobs,
                    submitters: args.submitters as usize,
                    paced_seconds: args.paced_seconds,
                    insecure: args.insecure,
                    json: matches!(args.output, Output::Json),
                };
                scaleout::bench::e2e(options)
                    .await
                    .map_err(cli::CliError::failed)
            }
            Command::Bench {
                command: BenchCommand::Failover(args),
            } => {
                let options = scaleout::bench::FailoverBench {
                    kills: args.kills,
                    submitters: args.submitters as usize,
                    settle: std::time::Duration::from_millis(args.settle_ms),
                    insecure: args.insecure,
                    json: matches!(args.output, Output::Json),
                };
                scaleout::bench::failover(options)
                    .await
                    .map_err(cli::CliError::failed)
            }
            Command::Bench {
                command: BenchCommand::Capacity(args),
            } => {
                let options = scaleout::bench::CapacityBench {
                    jobs: args.jobs,
                    queued: args.queued,
                    log_lines: args.log_lines,
                    line_bytes: args.line_bytes,
                    workers: args.workers as usize,
                    slots: args.slots,
                    submitters: args.submitters as usize,
                    keep_all: args.keep_all,
                    insecure: args.insecure,
                    json: matches!(args.output, Output::Json),
                };
                scaleout::bench::capacity(options)
                    .await
                    .map_err(cli::CliError::failed)
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {:#}", error.error);
            ExitCode::from(error.code)
        }
    }
}
