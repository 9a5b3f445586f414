//! `scaleout chaos`: three replica processes and worker processes behind fault-injecting
//! proxies, a load generator that records every operation, faults injected one after another
//! from a seeded random sequence, then the checker ([`check`]) on the history and on what the
//! cluster holds once everything has healed.
//!
//! The seed picks the faults, their targets and lengths, and the job mix; timing on a real
//! machine still varies, so a seed replays the same plan, not the same interleaving.

pub mod check;
pub mod faults;
pub mod network;
pub mod powercut;
pub mod proxy;
pub mod ssisdb;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use self::check::{FinalState, ReadRecord, ReplicaView, Report, SubmitRecord};
use self::faults::{FaultKind, Injector};
use self::network::ProxiedNetwork;
use self::ssisdb::SsisdbTarget;
use crate::client::{Client, ClientError};
use crate::harness::{ClusterOptions, LocalCluster, WorkerOptions};
use crate::pb::v1;
use crate::transport::Security;

/// The lease interval of the chaos cluster: short, so a paused worker's lease runs out
/// within the run.
const LEASE: Duration = Duration::from_millis(6000);
const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(500);
/// How long a logical submit keeps retrying its key before its outcome counts as unknown.
const SUBMIT_PATIENCE: Duration = Duration::from_secs(30);
/// What a worker logs when a replica refuses a call that carries a stale lease token: a
/// renewal, a log append, a completion, a spooled completion.
const FENCED: [&str; 4] = [
    "lease not renewed",
    "logs refused: the lease is lost",
    "result refused: the lease is lost",
    "refused as stale",
];
/// How many jobs' log lines are compared across the replicas at the end.
const LOG_SAMPLE: usize = 200;
/// How long the healed cluster gets to finish every acknowledged job.
const DRAIN: Duration = Duration::from_secs(180);

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// The `scaleout` binary to start replicas and workers from.
    pub binary: PathBuf,
    pub seed: u64,
    /// How long faults are injected.
    pub duration: Duration,
    pub workers: usize,
    pub submitters: usize,
    /// The faults to draw from (all when empty).
    pub faults: Vec<FaultKind>,
    /// RUST_LOG of the processes.
    pub log_filter: String,
    /// Keep the cluster's directory (logs, data) instead of removing it.
    pub keep_dir: Option<PathBuf>,
    /// Ship to this SQL Server through a proxy (outages cut the proxy) and check that every
    /// event landed once.
    pub ssisdb: Option<SsisdbTarget>,
    /// Each submitter waits between this many ms (min, max) after each submit.
    pub pause_between_submits_ms: (u64, u64),
}

impl ChaosOptions {
    pub fn new(binary: PathBuf, seed: u64, duration: Duration) -> Self {
        ChaosOptions {
            binary,
            seed,
            duration,
            workers: 2,
            submitters: 3,
            faults: Vec::new(),
            log_filter: "warn,scaleout=info".into(),
            keep_dir: None,
            ssisdb: None,
            pause_between_submits_ms: (30, 200),
        }
    }
}

/// Everything the load generator saw.
#[derive(Default)]
struct History {
    submits: Vec<SubmitRecord>,
    reads: Vec<ReadRecord>,
}

/// Runs the chaos test and returns the checker's report (violations are in the report, not
/// an error; an error means the run itself could not be carried out).
pub async fn run(options: ChaosOptions) -> anyhow::Result<Report> {
    println!(
        "chaos: seed {} (replay with --seed {})",
        options.seed, options.seed
    );
    let (network, layout) = ProxiedNetwork::start(3).await?;
    let mut overrides = vec![
        format!("workers.lease_interval_ms={}", LEASE.as_millis()),
        "workers.offline_after_ms=10000".into(),
        // Snapshots in the run, so a wiped replica catches up through one. The log kept behind
        // a snapshot is the production default: with 100 kept, every follower that fell a
        // second or two behind (a power cut, a kill) caught up through a whole snapshot too, and
        // a follower installing one answers neither appends nor votes (3.3 s for 16 MB on a
        // 2-core machine): with the leader cut off at the same time, nothing could commit.
        "raft.snapshot_every_logs=500".into(),
        "raft.keep_logs_after_snapshot=1000".into(),
    ];
    let sql_proxy = match &options.ssisdb {
        Some(target) => {
            let proxy = target.proxy().await?;
            let settings = target.settings_at(proxy.addr());
            overrides.extend([
                format!(
                    "ssisdb.connection_string={}",
                    settings.connection_string.unwrap_or_default()
                ),
                format!("ssisdb.password_file={}", target.password_file.display()),
                "ssisdb.ship_interval_ms=100".into(),
                "ssisdb.connect_timeout_ms=3000".into(),
                "ssisdb.intake_interval_ms=500".into(),
            ]);
            Some(proxy)
        }
        None => None,
    };
    let cluster_options = ClusterOptions {
        log_filter: options.log_filter.clone(),
        overrides,
        // For clock-step faults.
        steppable_clocks: true,
        ..ClusterOptions::default()
    };
    let mut cluster = match &options.keep_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            anyhow::ensure!(
                std::fs::read_dir(dir)?.next().is_none(),
                "{} is not empty; --keep-dir needs an empty or new directory",
                dir.display()
            );
            LocalCluster::configure_with(&options.binary, dir, cluster_options, layout)?
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("scaleout-chaos-")
                .tempdir()?;
            let mut cluster = LocalCluster::configure_with(
                &options.binary,
                temp.path(),
                cluster_options,
                layout,
            )?;
            cluster.own_dir(temp);
            cluster
        }
    };
    // Power cuts need every replica's data dir on a file system that loses unsynced writes.
    // Asked for by name, they must be possible; in the default plan they are left out (and
    // said so) where FUSE is not available.
    let power = if options.faults.iter().any(|k| k.is_power_cut()) {
        cluster.mount_power_cuts()?
    } else if options.faults.is_empty() {
        match cluster.mount_power_cuts() {
            Ok(mounts) => mounts,
            Err(error) => {
                println!("chaos: power-cut faults left out: {error:#}");
                BTreeMap::new()
            }
        }
    } else {
        BTreeMap::new()
    };
    network.release_ports();
    cluster.start_all()?;
    cluster
        .wait_for_leader(Duration::from_secs(60))
        .await
        .context("the chaos cluster elected no leader")?;
    for n in 0..options.workers {
        cluster.start_worker(WorkerOptions {
            max_tasks: 8,
            extra_config: vec!["task_heartbeat_interval_ms = 1000".into()],
            ..WorkerOptions::named(&format!("chaos-{n}"))
        })?;
    }
    let security = cluster.client_security()?;
    let client = Arc::new(
        Client::new(&cluster.endpoints(), security.clone())?.with_deadline(Duration::from_secs(10)),
    );
    let admin =
        Client::new(&cluster.endpoints(), security.clone())?.with_deadline(Duration::from_secs(30));
    crate::harness::wait_for_workers(&client, options.workers, Duration::from_secs(60)).await?;

    let started = Instant::now();
    let started_unix_ms = crate::wall_time::now_ms();
    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let next_key = Arc::new(AtomicU64::new(0));
    let mut submitters = Vec::new();
    for index in 0..options.submitters.max(1) {
        submitters.push(tokio::spawn(submitter(
            client.clone(),
            MissProbe {
                endpoints: cluster.endpoints(),
                security: security.clone(),
            },
            options.seed.wrapping_add(1 + index as u64),
            options.pause_between_submits_ms,
            started,
            history.clone(),
            stop.clone(),
            next_key.clone(),
        )));
    }

    // Jobs also arrive from T-SQL, as SQL Agent steps submit them: each request must become
    // exactly one job whatever the faults.
    let sql_requests = Arc::new(Mutex::new(Vec::new()));
    let sql_submitter = options.ssisdb.clone().map(|target| {
        tokio::spawn(sql_submitter(
            target,
            options.seed.wrapping_add(1_000),
            stop.clone(),
            sql_requests.clone(),
        ))
    });

    let kinds: Vec<FaultKind> = if options.faults.is_empty() {
        FaultKind::ALL.to_vec()
    } else {
        options.faults.clone()
    }
    .into_iter()
    .filter(|kind| *kind != FaultKind::SsisdbOutage || sql_proxy.is_some())
    .filter(|kind| !kind.is_power_cut() || !power.is_empty())
    .collect();
    anyhow::ensure!(
        !kinds.is_empty(),
        "no fault to inject (ssisdb-outage needs an SSISDB)"
    );
    let mut rng = StdRng::seed_from_u64(options.seed);
    // Every kind once, in a seeded order, then random draws: even a short run covers them all.
    let mut plan: std::collections::VecDeque<FaultKind> = {
        let mut first = kinds.clone();
        first.shuffle(&mut rng);
        first.into()
    };
    let mut faults = Vec::new();
    let faults_until = started + options.duration;
    let mut crashes = Vec::new();
    let injected: anyhow::Result<()> = async {
        let mut injector = Injector {
            cluster: &mut cluster,
            network: &network,
            admin: &admin,
            sql: sql_proxy.as_ref(),
            rng: StdRng::seed_from_u64(options.seed ^ 0x5eed),
            lease: LEASE,
            election_timeout_max: ELECTION_TIMEOUT_MAX,
            crashes: Vec::new(),
            power: &power,
        };
        while Instant::now() < faults_until || !plan.is_empty() {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2000))).await;
            let kind = plan
                .pop_front()
                .unwrap_or_else(|| kinds[rng.gen_range(0..kinds.len())]);
            let Some(record) = injector.inject(kind).await? else {
                // No target at that moment: keep the kind in the plan.
                if plan.len() < kinds.len() {
                    plan.push_front(kind);
                }
                continue;
            };
            {
                println!(
                    "chaos: {:>5.1} s  {:<16} {}",
                    started.elapsed().as_secs_f64(),
                    record.kind,
                    record.detail
                );
                faults.push(record);
            }
        }
        crashes = std::mem::take(&mut injector.crashes);
        Ok(())
    }
    .await;
    // Whatever happened, heal everything before stopping the load.
    crashes.extend(cluster.reap_exited());
    network.heal();
    if let Some(proxy) = &sql_proxy {
        proxy.set(proxy::LinkMode::Pass);
    }
    heal_processes(&mut cluster);
    stop.store(true, Ordering::Relaxed);
    for submitter in submitters.into_iter().chain(sql_submitter) {
        if let Err(error) = submitter.await {
            warn!(%error, "a submitter task failed");
        }
    }
    if let Err(error) = injected {
        // What the replicas were doing says why a fault could not be carried out.
        let tails = cluster.log_tails(40);
        return Err(error.context(format!(
            "a fault could not be carried out; processes that exited: {crashes:?}{tails}"
        )));
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("chaos: {seconds:>5.1} s  healed; the load has stopped, waiting for every job to end");

    let sent = std::mem::take(&mut *sql_requests.lock().unwrap_or_else(PoisonError::into_inner));
    let mut end = final_state(&mut cluster, &client, options.ssisdb.as_ref(), sent).await?;
    end.started_unix_ms = started_unix_ms;
    crashes.extend(cluster.reap_exited());
    end.crashes = crashes;
    println!(
        "chaos: {:>5.1} s  every replica read back",
        started.elapsed().as_secs_f64()
    );
    let history = std::mem::take(&mut *history.lock().unwrap_or_else(PoisonError::into_inner));
    let report = check::check(
        options.seed,
        seconds,
        &history.submits,
        &history.reads,
        &faults,
        &end,
        LEASE.as_millis() as u64,
    );
    info!(ok = report.ok(), "chaos run checked");
    Ok(report)
}

/// Continues every paused process and starts every stopped one.
fn heal_processes(cluster: &mut LocalCluster) {
    let replicas: Vec<(u64, bool)> = cluster
        .replicas
        .iter()
        .map(|r| (r.id, r.is_running()))
        .collect();
    for (id, running) in replicas {
        let healed = if running {
            cluster.pause(id, false)
        } else {
            cluster.restart(id)
        };
        if let Err(error) = healed {
            warn!(%error, replica = id, "could not heal the replica");
        }
    }
    let workers: Vec<(String, bool)> = cluster
        .workers
        .iter()
        .map(|w| (w.name.clone(), w.pid().is_some()))
        .collect();
    for (name, running) in workers {
        let healed = if running {
            cluster.pause_worker(&name, false)
        } else {
            cluster.restart_worker(&name)
        };
        if let Err(error) = healed {
            warn!(%error, worker = %name, "could not heal the worker");
        }
    }
}

/// The job mix: mostly quick successes, some that run a while (so faults hit running work),
/// some that fail and are retried, and a few cancels.
fn job_spec(rng: &mut StdRng, key: &str) -> v1::JobSpec {
    let (script, max_attempts) = match rng.gen_range(0..100) {
        0..=59 => ("exit 0", rng.gen_range(1..=3)),
        60..=84 => ("sleep 0.3", 3),
        85..=94 => ("exit 3", 2),
        _ => ("sleep 2", 3),
    };
    v1::JobSpec {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        name: key.to_string(),
        max_attempts,
        ..Default::default()
    }
}

/// A job state's name as the API spells it.
fn state_name(state: i32) -> &'static str {
    v1::JobState::try_from(state).map_or("unknown", |state| state.as_str_name())
}

/// What the submitters need to look into a linearizable read that missed a job: every
/// replica, one at a time.
#[derive(Clone)]
struct MissProbe {
    endpoints: Vec<String>,
    security: Security,
}

impl MissProbe {
    /// What the cluster shows right after a linearizable read of `job_id` missed it: a second
    /// linearizable read, then each replica's own view (role, term, applied index) and its stale
    /// read of the job. For the report: a miss is a breach whose cause the run must show.
    async fn explain_miss(&self, client: &Client, job_id: u64) -> String {
        let again = match client.get_job(job_id, false).await {
            Ok(job) => format!("a linearizable read found it ({})", state_name(job.state)),
            Err(e) => format!("a linearizable read failed too ({e})"),
        };
        let mut views = Vec::new();
        for endpoint in &self.endpoints {
            let one = match Client::new(&[endpoint], self.security.clone()) {
                Ok(one) => one.with_deadline(Duration::from_secs(2)),
                Err(e) => {
                    views.push(format!("{endpoint}: {e}"));
                    continue;
                }
            };
            let role = match one.cluster_status().await {
                Ok(status) => status
                    .replicas
                    .iter()
                    .find(|r| r.id == status.answered_by)
                    .map_or_else(
                        || format!("replica {}", status.answered_by),
                        |r| {
                            format!(
                                "replica {} {} term {} applied {:?} commit {:?}",
                                r.id, r.role, r.term, r.applied_index, r.commit_index
                            )
                        },
                    ),
                Err(e) => format!("no status ({e})"),
            };
            let stale = match one.get_job(job_id, true).await {
                Ok(job) => format!("has it ({})", state_name(job.state)),
                Err(e) => format!("does not ({e})"),
            };
            views.push(format!("{role}: {stale}"));
        }
        format!("{again}; {}", views.join("; "))
    }
}

/// One load generator: submits keyed jobs, retrying each key until it is acknowledged (or its
/// patience runs out), sometimes resubmits an acknowledged key, reads acknowledged jobs back
/// linearizably, and cancels a few.
#[allow(clippy::too_many_arguments)]
async fn submitter(
    client: Arc<Client>,
    probe: MissProbe,
    seed: u64,
    (pause_min, pause_max): (u64, u64),
    started: Instant,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
    next_key: Arc<AtomicU64>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let ms = |at: Instant| at.duration_since(started).as_millis() as u64;
    let record = |f: &mut dyn FnMut(&mut History)| {
        f(&mut history.lock().unwrap_or_else(PoisonError::into_inner));
    };
    // Bounded: at most this many keys per submitter, whatever the run's length.
    for _ in 0..100_000 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let key = format!("chaos-{}", next_key.fetch_add(1, Ordering::Relaxed));
        let spec = job_spec(&mut rng, &key);
        let invoked = Instant::now();
        let mut job_id = None;
        while job_id.is_none() && invoked.elapsed() < SUBMIT_PATIENCE {
            match client.submit_job(spec.clone(), Some(key.clone())).await {
                Ok(reply) => job_id = Some(reply.job_id),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let completed = Instant::now();
        record(&mut |h| {
            h.submits.push(SubmitRecord {
                key: key.clone(),
                invoked_ms: ms(invoked),
                completed_ms: ms(completed),
                job_id,
                argv: spec.argv.clone(),
            })
        });
        if let Some(id) = job_id {
            if rng.gen_bool(0.1) {
                // The same key again: it must name the same job.
                let again = Instant::now();
                if let Ok(reply) = client.submit_job(spec.clone(), Some(key.clone())).await {
                    let done = Instant::now();
                    record(&mut |h| {
                        h.submits.push(SubmitRecord {
                            key: key.clone(),
                            invoked_ms: ms(again),
                            completed_ms: ms(done),
                            job_id: Some(reply.job_id),
                            argv: spec.argv.clone(),
                        })
                    });
                }
            }
            if rng.gen_bool(0.25) {
                let read_at = Instant::now();
                let missing = match client.get_job(id, false).await {
                    Ok(_) => Some((false, String::new())),
                    Err(ClientError::Rejected(status))
                        if status.code() == tonic::Code::NotFound =>
                    {
                        let seen = probe.explain_miss(&client, id).await;
                        Some((true, format!("{:?}; then {seen}", status.message())))
                    }
                    Err(_) => None,
                };
                if let Some((missing, detail)) = missing {
                    record(&mut |h| {
                        h.reads.push(ReadRecord {
                            job_id: id,
                            acked_ms: ms(completed),
                            invoked_ms: ms(read_at),
                            missing,
                            after_cancel: false,
                            saw_cancel: false,
                            detail: detail.clone(),
                        })
                    });
                }
            }
            if rng.gen_bool(0.03) && client.cancel_job(id).await.is_ok() {
                // A read that begins after the cancel was acknowledged must show it.
                let cancelled = Instant::now();
                let read = client.get_job(id, false).await;
                let seen = match &read {
                    Ok(job) => Some((
                        false,
                        job.cancel_requested || check::terminal(job.state),
                        format!("state {}", state_name(job.state)),
                    )),
                    Err(ClientError::Rejected(status))
                        if status.code() == tonic::Code::NotFound =>
                    {
                        let seen = probe.explain_miss(&client, id).await;
                        Some((true, false, format!("{:?}; then {seen}", status.message())))
                    }
                    Err(_) => None,
                };
                if let Some((missing, saw_cancel, detail)) = seen {
                    record(&mut |h| {
                        h.reads.push(ReadRecord {
                            job_id: id,
                            acked_ms: ms(cancelled),
                            invoked_ms: ms(cancelled),
                            missing,
                            after_cancel: true,
                            saw_cancel,
                            detail: detail.clone(),
                        })
                    });
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(
            rng.gen_range(pause_min..=pause_max.max(pause_min)),
        ))
        .await;
    }
}

/// Waits until every job is terminal (or [`DRAIN`] passes), then reads the jobs
/// from the leader and from every replica, and counts the stale completions the workers were
/// refused.
async fn final_state(
    cluster: &mut LocalCluster,
    client: &Client,
    ssisdb: Option<&SsisdbTarget>,
    sent_requests: Vec<String>,
) -> anyhow::Result<FinalState> {
    let (leader, _) = cluster
        .wait_for_leader(Duration::from_secs(60))
        .await
        .context("no leader after the faults healed")?;
    let deadline = Instant::now() + DRAIN;
    // Requests from T-SQL become jobs first, so the jobs read next are all there are.
    if let Some(target) = ssisdb {
        while ssisdb::pending_requests(target).await? > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let jobs = loop {
        let jobs = client
            .list_all_jobs(None, false)
            .await
            .context("list the jobs on the leader")?;
        // Every job, acknowledged or not (a submit whose answer was lost may still have made
        // one), so no state moves while the replicas are read.
        let pending = jobs
            .iter()
            .filter(|job| !check::terminal(job.state))
            .count();
        if pending == 0 || Instant::now() > deadline {
            if pending > 0 {
                warn!(pending, "jobs still not terminal after the drain");
            }
            break jobs;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Their work is done, and each heartbeat and long-poll of theirs is a log entry: with them
    // running, a slow machine rarely finds every replica at one applied index while it reads.
    let names: Vec<String> = cluster.workers.iter().map(|w| w.name.clone()).collect();
    for name in names {
        cluster.kill_worker(&name)?;
    }
    // Every replica's own view, once it has applied what the leader has.
    let leader_status = cluster.status_of(leader).await?;
    let commit = crate::harness::applied_index(&leader_status, leader).unwrap_or(0);
    for replica in &cluster.replicas {
        cluster
            .wait_for_applied(replica.id, commit, Duration::from_secs(60))
            .await?;
    }
    let stale_refused = cluster
        .workers
        .iter()
        .map(|w| {
            std::fs::read_to_string(&w.log_path)
                .unwrap_or_default()
                .lines()
                .filter(|line| FENCED.iter().any(|refusal| line.contains(refusal)))
                .count() as u64
        })
        .sum();
    let ssisdb = match ssisdb {
        Some(target) => Some(drained_ssisdb(client, target, sent_requests).await?),
        None => None,
    };
    // After the drain: shipping acks change the outbox until then.
    let (per_replica, outboxes, replicas_apart) = match replicas_at_one_index(cluster).await? {
        Ok((views, outboxes)) => (views, outboxes, None),
        Err(apart) => (BTreeMap::new(), BTreeMap::new(), Some(apart)),
    };
    Ok(FinalState {
        jobs,
        replicas_apart,
        per_replica,
        outboxes,
        stale_refused,
        ssisdb,
        started_unix_ms: 0,
        crashes: Vec::new(),
    })
}

/// Every replica's own state and (outbox events, shipped cursor), read while all of them
/// report one applied index before and after the reads (a replica still applying would
/// differ); if they never do within a minute, what the last try saw.
#[allow(clippy::type_complexity)]
async fn replicas_at_one_index(
    cluster: &LocalCluster,
) -> anyhow::Result<Result<(BTreeMap<u64, ReplicaView>, BTreeMap<u64, (u64, u64)>), String>> {
    let applied = |status: &v1::ClusterStatusResponse| {
        crate::harness::applied_index(status, status.answered_by)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_try = String::from("no try finished");
    let mut tries = 0;
    while Instant::now() < deadline {
        let began = Instant::now();
        tries += 1;
        let mut seen = Vec::new();
        let mut indexes = std::collections::BTreeSet::new();
        let mut views = BTreeMap::new();
        let mut outboxes = BTreeMap::new();
        for replica in &cluster.replicas {
            let before = cluster.status_of(replica.id).await?;
            let client = cluster.client_at(&replica.api_listen)?;
            let jobs = client
                .list_all_jobs(None, true)
                .await
                .with_context(|| format!("list the jobs on replica {}", replica.id))?;
            // The log lines of a sample of jobs (every job would be a call each).
            let step = (jobs.len() / LOG_SAMPLE).max(1);
            let mut logs = BTreeMap::new();
            for job in jobs.iter().step_by(step) {
                let lines = client
                    .get_job_logs(job.id, 0, true)
                    .await
                    .with_context(|| {
                        format!("read job {}'s logs on replica {}", job.id, replica.id)
                    })?
                    .lines
                    .into_iter()
                    .map(|l| {
                        (
                            l.sequence,
                            l.attempt,
                            l.line.map(|x| x.text).unwrap_or_default(),
                        )
                    })
                    .collect();
                logs.insert(job.id, lines);
            }
            let workers = client
                .list_workers(true)
                .await
                .with_context(|| format!("list the workers on replica {}", replica.id))?
                .into_iter()
                .map(|w| {
                    (
                        w.info.map(|i| i.worker_id).unwrap_or_default(),
                        format!(
                            "enabled {} draining {} last heartbeat {} running {:?}",
                            w.enabled, w.draining, w.last_heartbeat_ms, w.running_jobs
                        ),
                    )
                })
                .collect();
            let after = cluster.status_of(replica.id).await?;
            indexes.insert(applied(&before));
            indexes.insert(applied(&after));
            seen.push(format!(
                "replica {} at {} → {}",
                replica.id,
                applied(&before).map_or("?".into(), |i| i.to_string()),
                applied(&after).map_or("?".into(), |i| i.to_string()),
            ));
            outboxes.insert(
                replica.id,
                (after.outbox_events, after.outbox_shipped_up_to),
            );
            views.insert(
                replica.id,
                ReplicaView {
                    jobs: jobs.into_iter().map(|j| (j.id, j)).collect(),
                    logs,
                    workers,
                },
            );
        }
        if indexes.len() == 1 {
            println!(
                "chaos: every replica read at one applied index ({tries} tries, the last took {} ms)",
                began.elapsed().as_millis()
            );
            return Ok(Ok((views, outboxes)));
        }
        last_try = format!(
            "{tries} tries, the last took {} ms: {}",
            began.elapsed().as_millis(),
            seen.join(", ")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    warn!(last_try, "the replicas never reported one applied index");
    Ok(Err(last_try))
}

/// Waits until the leader has shipped its whole outbox (or [`DRAIN`] passes), then reads what
/// SSISDB holds.
async fn drained_ssisdb(
    client: &Client,
    target: &SsisdbTarget,
    sent_requests: Vec<String>,
) -> anyhow::Result<check::SsisdbEnd> {
    let deadline = Instant::now() + DRAIN;
    let status = loop {
        let status = client.cluster_status().await?;
        if status.outbox_events == 0 || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    Ok(check::SsisdbEnd {
        view: ssisdb::read(target).await?,
        outbox_left: status.outbox_events,
        shipped_up_to: status.outbox_shipped_up_to,
        sent_requests,
    })
}

/// Adds a job request row every 0.5–2 s until `stop`, straight to the SQL Server (as a SQL
/// Agent step would, whatever the replicas' link to it); records each key once its row is in.
async fn sql_submitter(
    target: SsisdbTarget,
    seed: u64,
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<String>>>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    // Bounded: at most this many requests, whatever the run's length.
    for n in 0..10_000u64 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let key = format!("chaos-sql-{n}");
        let spec = job_spec(&mut rng, &key);
        match ssisdb::request_job(&target, &key, &spec.argv).await {
            Ok(()) => sent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(key),
            // iridium's no-wait locks meet the shipper's now and then: the next one goes in.
            Err(error) => debug!(%error, key, "a job request row was not written"),
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2000))).await;
    }
}
