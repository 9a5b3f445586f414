//! `scaleout bench e2e`: the job round trip shaped like a broker comparison.
//!
//! Publishers each await a replicated, durable acknowledgment before their next submit;
//! consumers are simulated workers in this process that speak WorkerService as the agent does
//! (register, acquire with a long poll, complete), each holding up to `outstanding` tasks, and
//! run nothing: the figure is the master's, not a process spawner's. The run reports jobs/s,
//! the CPU every replica spent per job (from `/proc/<pid>/stat`), how long a job waited between
//! its submit and a consumer receiving it, then the same wait at half the measured rate.
//!
//! `--binary` runs the replicas from another build of scaleout (the build before a change), so
//! one driver measures both sides of an A/B.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::sim_worker::{succeeded, SimWorker};
use crate::harness::LocalCluster;
use crate::pb::v1;

pub struct E2eBench {
    pub publishers: usize,
    pub consumers: usize,
    /// Tasks a consumer holds at most (acquired, not yet completed).
    pub outstanding: u32,
    pub jobs: u64,
    /// Length of the latency phase at half the measured rate.
    pub paced_seconds: u64,
    /// Run the cluster plaintext (`insecure = true`) instead of mutual TLS, to compare.
    pub insecure: bool,
    /// Replicas run from this binary instead of this one.
    pub binary: Option<PathBuf>,
    pub calls: ConsumerCalls,
    pub json: bool,
}

/// How the simulated workers speak to the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerCalls {
    /// One AcquireTasks loop and one CompleteTask call per task (builds before the combined
    /// call; the A/B's before side).
    Separate,
    /// Results ride on the next AcquireTasks: one call and one command per task, two calls in
    /// flight per worker so the next tasks are asked for while results are recorded.
    Combined,
}

/// Times of one job, in µs since the bench started (0: not yet).
#[derive(Default)]
struct JobTimes {
    submit_sent: AtomicU64,
    submit_acked: AtomicU64,
    received: AtomicU64,
}

/// What publishers and consumers share during one phase.
struct Phase {
    origin: Instant,
    /// Indexed by the job's number (its argv[1]).
    jobs: Vec<JobTimes>,
    received: AtomicU64,
    completed: AtomicU64,
    duplicates: AtomicU64,
}

impl Phase {
    fn new(jobs: u64) -> Phase {
        Phase {
            origin: Instant::now(),
            jobs: (0..jobs).map(|_| JobTimes::default()).collect(),
            received: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        }
    }

    fn now_us(&self) -> u64 {
        (self.origin.elapsed().as_micros() as u64).max(1)
    }

    fn total(&self) -> u64 {
        self.jobs.len() as u64
    }
}

pub async fn e2e(options: E2eBench) -> anyhow::Result<()> {
    let binary = match &options.binary {
        Some(binary) => binary.clone(),
        None => std::env::current_exe().context("cannot find the scaleout binary")?,
    };
    let cluster = super::local_cluster_from(&binary, options.insecure).await?;
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let client = Arc::new(cluster.client()?.with_deadline(Duration::from_secs(60)));
    let mut workers = Vec::new();
    for n in 0..options.consumers {
        let name = format!("bench-consumer-{n}");
        workers.push(Arc::new(
            SimWorker::register(&cluster, &name, options.outstanding).await?,
        ));
    }
    // Warm up: every connection open, the leader known.
    client.submit_job(spec(u64::MAX), None).await?;

    // Phase 1: as fast as it goes.
    let cpu_before = replica_cpu(&cluster);
    let phase = Arc::new(Phase::new(options.jobs));
    let started = Instant::now();
    let consumers = start_consumers(&workers, &phase, &options);
    publish_all(&client, &phase, options.publishers, None).await?;
    let submitted_in = started.elapsed();
    finish(consumers, &phase).await?;
    let elapsed = started.elapsed();
    let cpu_after = replica_cpu(&cluster);
    let rate = options.jobs as f64 / elapsed.as_secs_f64();
    let (wait_sent, wait_acked) = waits(&phase)?;

    // Phase 2: paced at half that rate.
    let paced_rate = (rate / 2.0).max(1.0);
    let paced_jobs = ((paced_rate * options.paced_seconds as f64) as u64).max(1);
    let paced = Arc::new(Phase::new(paced_jobs));
    let consumers = start_consumers(&workers, &paced, &options);
    publish_all(
        &client,
        &paced,
        options.publishers,
        Some(Duration::from_secs_f64(1.0 / paced_rate)),
    )
    .await?;
    finish(consumers, &paced).await?;
    let (paced_sent, paced_acked) = waits(&paced)?;

    let mut cpu = serde_json::Map::new();
    let mut pids = serde_json::Map::new();
    for (id, before) in &cpu_before {
        let Some(after) = cpu_after.iter().find(|(other, _)| other == id) else {
            continue;
        };
        let role = if *id == leader { "leader" } else { "follower" };
        let name = format!("replica_{id}_{role}");
        cpu.insert(
            name.clone(),
            json!((after.1 - before) * 1e6 / options.jobs as f64),
        );
        pids.insert(name, json!(cluster.replica(*id)?.pid()));
    }
    let latency = |h: &Histogram<u64>| {
        json!({
            "p50_ms": h.value_at_quantile(0.50) as f64 / 1000.0,
            "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
            "max_ms": h.max() as f64 / 1000.0,
        })
    };
    let report = json!({
        "benchmark": "e2e",
        "binary": binary.display().to_string(),
        "transport": if options.insecure { "plaintext" } else { "mutual TLS" },
        "durability": "fdatasync before every acknowledgment (the Raft log)",
        "publishers": options.publishers,
        "consumers": options.consumers,
        "outstanding_per_consumer": options.outstanding,
        "consumer_calls": format!("{:?}", options.calls).to_lowercase(),
        "jobs": options.jobs,
        "submit_seconds": submitted_in.as_secs_f64(),
        "seconds": elapsed.as_secs_f64(),
        "jobs_per_sec": rate,
        "cpu_us_per_job": cpu,
        "replica_pids": pids,
        "duplicate_deliveries": phase.duplicates.load(Ordering::Relaxed),
        "submit_to_receive": latency(&wait_sent),
        "ack_to_receive": latency(&wait_acked),
        "paced": {
            "jobs_per_sec": paced_rate,
            "jobs": paced_jobs,
            "submit_to_receive": latency(&paced_sent),
            "ack_to_receive": latency(&paced_acked),
        },
    });
    if options.json {
        println!("{report}");
    } else {
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "e2e ({}): {} jobs, {} publishers awaiting each ack, {} consumers x {} outstanding: \
             {:.1} s = {rate:.0} jobs/s (submitted in {:.1} s); submit-to-receive p50 {:.1} ms, \
             p99 {:.1} ms",
            report["transport"].as_str().unwrap_or("?"),
            options.jobs,
            options.publishers,
            options.consumers,
            options.outstanding,
            elapsed.as_secs_f64(),
            submitted_in.as_secs_f64(),
            ms(&wait_sent, 0.5),
            ms(&wait_sent, 0.99),
        );
        println!(
            "at {paced_rate:.0} jobs/s: submit-to-receive p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(&paced_sent, 0.5),
            ms(&paced_sent, 0.99),
            paced_sent.max() as f64 / 1000.0
        );
        println!("CPU µs per job: {}", serde_json::Value::Object(cpu));
    }
    Ok(())
}

fn spec(n: u64) -> v1::JobSpec {
    v1::JobSpec {
        argv: vec!["/bin/true".into(), n.to_string()],
        name: "bench".into(),
        max_attempts: 1,
        ..Default::default()
    }
}

type Consumers = Vec<tokio::task::JoinHandle<anyhow::Result<()>>>;

fn start_consumers(
    workers: &[Arc<SimWorker>],
    phase: &Arc<Phase>,
    options: &E2eBench,
) -> Consumers {
    workers
        .iter()
        .map(|worker| {
            let (worker, phase) = (worker.clone(), phase.clone());
            match options.calls {
                ConsumerCalls::Separate => {
                    tokio::spawn(consume(worker, phase, options.outstanding))
                }
                ConsumerCalls::Combined => {
                    tokio::spawn(consume_combined(worker, phase, options.outstanding))
                }
            }
        })
        .collect()
}

/// Calls in flight per simulated worker with combined calls.
const PIPELINE: usize = 2;
/// A consumer's long-poll: short, so it notices soon that every job was received.
const POLL_MS: u32 = 200;

/// One simulated worker with combined calls: each call carries the results of the tasks that
/// ended since the last one and asks for as many tasks as the slots not yet asked for.
async fn consume_combined(
    worker: Arc<SimWorker>,
    phase: Arc<Phase>,
    outstanding: u32,
) -> anyhow::Result<()> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let mut in_flight = FuturesUnordered::new();
    let mut ended: Vec<v1::TaskResult> = Vec::new();
    // Tasks whose results are in calls in flight, and slots those calls ask for.
    let (mut reporting, mut asking) = (0u32, 0u32);
    loop {
        let all_received = phase.received.load(Ordering::Relaxed) >= phase.total();
        if all_received && ended.is_empty() && in_flight.is_empty() {
            return Ok(());
        }
        let free = if all_received {
            0
        } else {
            outstanding.saturating_sub(reporting + asking)
        };
        let worth_a_call = !ended.is_empty() || (free > 0 && in_flight.is_empty());
        if worth_a_call && in_flight.len() < PIPELINE {
            let results = std::mem::take(&mut ended);
            let (reports, asks) = (results.len() as u32, free);
            reporting += reports;
            asking += asks;
            let request = worker.acquire_request(asks, POLL_MS, results);
            let worker = worker.clone();
            in_flight.push(async move { (reports, asks, worker.acquire(request).await) });
            continue;
        }
        let Some((reports, asks, reply)) = in_flight.next().await else {
            // Nothing in flight and nothing worth a call: every job was received.
            continue;
        };
        reporting -= reports;
        asking -= asks;
        let reply = reply.context("AcquireTasks with results failed")?;
        for status in &reply.results {
            anyhow::ensure!(
                status.recorded,
                "a result was not recorded: {}",
                status.refusal
            );
        }
        phase
            .completed
            .fetch_add(reply.results.len() as u64, Ordering::Relaxed);
        anyhow::ensure!(
            reply.tasks.len() as u32 <= asks,
            "the master granted more tasks than asked for"
        );
        for task in &reply.tasks {
            phase.note_received(task);
            // A no-op task: it ends as it arrives.
            ended.push(succeeded(task));
        }
    }
}

/// One simulated worker, as the agent works: one acquire loop long-polling for as many tasks as
/// it has free slots, and a completion call per task as soon as it arrives (a no-op task).
async fn consume(
    worker: Arc<SimWorker>,
    phase: Arc<Phase>,
    outstanding: u32,
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(outstanding as usize));
    let mut completions = tokio::task::JoinSet::new();
    while phase.received.load(Ordering::Relaxed) < phase.total() {
        let first = slots.clone().acquire_owned().await?;
        let mut held = vec![first];
        while let Ok(permit) = slots.clone().try_acquire_owned() {
            held.push(permit);
        }
        let request = worker.acquire_request(held.len() as u32, POLL_MS, Vec::new());
        let tasks = worker
            .acquire(request)
            .await
            .context("AcquireTasks failed")?
            .tasks;
        for task in tasks {
            let Some(permit) = held.pop() else {
                anyhow::bail!("the master granted more tasks than free slots");
            };
            phase.note_received(&task);
            let (worker, phase) = (worker.clone(), phase.clone());
            completions.spawn(async move {
                worker
                    .complete(succeeded(&task))
                    .await
                    .context("CompleteTask failed")?;
                phase.completed.fetch_add(1, Ordering::Relaxed);
                drop(permit);
                anyhow::Ok(())
            });
        }
        while let Some(done) = completions.try_join_next() {
            done??;
        }
    }
    while let Some(done) = completions.join_next().await {
        done??;
    }
    Ok(())
}

impl Phase {
    fn note_received(&self, task: &v1::TaskAssignment) {
        let number = task
            .spec
            .as_ref()
            .and_then(|spec| spec.argv.get(1))
            .and_then(|n| n.parse::<u64>().ok());
        // The warm-up job (u64::MAX) and earlier phases' jobs are not this phase's.
        let Some(times) = number.and_then(|n| self.jobs.get(n as usize)) else {
            return;
        };
        if times
            .received
            .compare_exchange(0, self.now_us(), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.received.fetch_add(1, Ordering::Relaxed);
        } else {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Submits every job of `phase` from `publishers` tasks, each awaiting its acknowledgment
/// before the next; with `pace`, one submit per `pace` across all publishers.
async fn publish_all(
    client: &Arc<crate::client::Client>,
    phase: &Arc<Phase>,
    publishers: usize,
    pace: Option<Duration>,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let ticker = pace.map(|pace| {
        let mut ticker = tokio::time::interval(pace);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        Arc::new(tokio::sync::Mutex::new(ticker))
    });
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..publishers.max(1) {
        let (client, phase, next, ticker) =
            (client.clone(), phase.clone(), next.clone(), ticker.clone());
        tasks.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= phase.total() {
                    return anyhow::Ok(());
                }
                if let Some(ticker) = &ticker {
                    ticker.lock().await.tick().await;
                }
                let times = &phase.jobs[n as usize];
                times.submit_sent.store(phase.now_us(), Ordering::Relaxed);
                client
                    .submit_job(spec(n), None)
                    .await
                    .with_context(|| format!("submit of job {n} failed"))?;
                times.submit_acked.store(phase.now_us(), Ordering::Relaxed);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Waits until the consumers received and completed every job of `phase` (10 minutes at most).
async fn finish(consumers: Consumers, phase: &Phase) -> anyhow::Result<()> {
    let all = futures::future::try_join_all(consumers);
    match tokio::time::timeout(Duration::from_secs(600), all).await {
        Ok(results) => results?.into_iter().collect::<anyhow::Result<Vec<()>>>()?,
        Err(_) => anyhow::bail!(
            "consumers received {} of {} jobs in 10 minutes",
            phase.received.load(Ordering::Relaxed),
            phase.total()
        ),
    };
    anyhow::ensure!(
        phase.completed.load(Ordering::Relaxed) >= phase.total(),
        "{} of {} jobs completed",
        phase.completed.load(Ordering::Relaxed),
        phase.total()
    );
    Ok(())
}

/// Submit-sent-to-received and acknowledged-to-received, in µs.
fn waits(phase: &Phase) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    let mut from_sent = Histogram::<u64>::new(3)?;
    let mut from_acked = Histogram::<u64>::new(3)?;
    for times in &phase.jobs {
        let received = times.received.load(Ordering::Relaxed);
        from_sent.record(received.saturating_sub(times.submit_sent.load(Ordering::Relaxed)))?;
        // A job can be received before its publisher saw the acknowledgment: 0.
        from_acked.record(received.saturating_sub(times.submit_acked.load(Ordering::Relaxed)))?;
    }
    Ok((from_sent, from_acked))
}

/// CPU seconds (user + system) each running replica has used so far.
fn replica_cpu(cluster: &LocalCluster) -> Vec<(u64, f64)> {
    cluster
        .replicas
        .iter()
        .filter_map(|replica| Some((replica.id, process_cpu_seconds(replica.pid()?)?)))
        .collect()
}

/// utime + stime of `pid` from `/proc/<pid>/stat`, in seconds.
pub(crate) fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the line are the 12th and 13th after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some((utime + stime) / ticks)
}
