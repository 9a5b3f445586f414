//! `scaleout bench scale`: what many workers and a deep queue cost the leader.
//!
//! First `--workers` simulated idle workers (each its own certificate and connection, in this
//! process) heartbeat and long-poll as the agent does; the leader's CPU is sampled with and
//! without them. Then they stop, and a probe worker measures how long an AcquireTasks takes to
//! hand it a task (plus the completion that frees its slot) with an almost empty queue, and
//! again once `--queued` jobs wait, a tenth of them pinned to a worker that never comes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::time::Instant;

use super::round_trip::process_cpu_seconds;
use super::sim_worker::{succeeded, SimWorker};
use crate::pb::v1;

pub struct ScaleBench {
    pub workers: usize,
    pub heartbeat_ms: u64,
    pub acquire_wait_ms: u32,
    /// How long the leader's CPU is sampled, idle and with the workers.
    pub sample_seconds: u64,
    pub queued: u64,
    pub probes: u64,
    pub insecure: bool,
    /// Another scaleout build to run the replicas from (for an A/B).
    pub binary: Option<std::path::PathBuf>,
    pub json: bool,
}

pub async fn scale(options: ScaleBench) -> anyhow::Result<()> {
    let cluster = match &options.binary {
        Some(binary) => super::local_cluster_from(binary, options.insecure).await?,
        None => super::local_cluster(options.insecure).await?,
    };
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let leader_pid = cluster
        .replica(leader)?
        .pid()
        .context("the leader is not running")?;
    let client = Arc::new(cluster.client()?.with_deadline(Duration::from_secs(60)));
    let sample = Duration::from_secs(options.sample_seconds.max(1));

    // Phase 1: the leader idle, then with the idle workers.
    let idle_cluster = leader_cpu_percent(leader_pid, sample).await?;
    let mut workers = tokio::task::JoinSet::new();
    let calls = Arc::new(AtomicU64::new(0));
    let registered_at = Instant::now();
    for n in 0..options.workers {
        let worker = Arc::new(SimWorker::register(&cluster, &format!("idle-{n}"), 4).await?);
        workers.spawn(heartbeat_loop(
            worker.clone(),
            Duration::from_millis(options.heartbeat_ms),
            calls.clone(),
        ));
        workers.spawn(poll_loop(worker, options.acquire_wait_ms, calls.clone()));
    }
    let registration = registered_at.elapsed();
    // Let every worker's first heartbeat and poll go by.
    tokio::time::sleep(Duration::from_millis(
        options.heartbeat_ms.max(u64::from(options.acquire_wait_ms)),
    ))
    .await;
    let calls_before = calls.load(Ordering::Relaxed);
    let with_workers = leader_cpu_percent(leader_pid, sample).await?;
    let calls_per_sec =
        (calls.load(Ordering::Relaxed) - calls_before) as f64 / sample.as_secs_f64();
    workers.abort_all();
    while workers.join_next().await.is_some() {}

    // Phase 2: dispatch with an (almost) empty queue, then with a deep one.
    let probe = SimWorker::register(&cluster, "probe", 1).await?;
    let empty = probe_dispatch(&client, &probe, options.probes).await?;
    let absent = uuid::Uuid::new_v4();
    let filled_at = Instant::now();
    fill(&client, options.queued, absent).await?;
    let fill_seconds = filled_at.elapsed().as_secs_f64();
    let deep = probe_dispatch(&client, &probe, options.probes).await?;

    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let report = json!({
        "benchmark": "scale",
        "transport": if options.insecure { "plaintext" } else { "mutual TLS" },
        "idle_workers": options.workers,
        "heartbeat_ms": options.heartbeat_ms,
        "acquire_wait_ms": options.acquire_wait_ms,
        "registration_seconds": registration.as_secs_f64(),
        "leader_cpu_percent_of_one_core": {
            "idle_cluster": idle_cluster,
            "with_idle_workers": with_workers,
            "added_by_workers": with_workers - idle_cluster,
        },
        "worker_calls_per_sec": calls_per_sec,
        "queued": options.queued,
        "queued_unrunnable": options.queued / 10,
        "fill_seconds": fill_seconds,
        "dispatch_ms": {
            "empty_queue": { "p50": ms(&empty, 0.5), "p99": ms(&empty, 0.99) },
            "deep_queue": { "p50": ms(&deep, 0.5), "p99": ms(&deep, 0.99) },
            "p50_ratio": ms(&deep, 0.5) / ms(&empty, 0.5).max(0.001),
        },
    });
    if options.json {
        println!("{report}");
    } else {
        println!(
            "scale ({}): leader CPU {idle_cluster:.1} % of a core idle, {with_workers:.1} % with \
             {} idle workers ({calls_per_sec:.0} calls/s); dispatch p50 {:.2} ms (p99 {:.2}) with \
             an empty queue, {:.2} ms (p99 {:.2}) with {} queued ({} unrunnable; filled in \
             {fill_seconds:.0} s)",
            report["transport"].as_str().unwrap_or("?"),
            options.workers,
            ms(&empty, 0.5),
            ms(&empty, 0.99),
            ms(&deep, 0.5),
            ms(&deep, 0.99),
            options.queued,
            options.queued / 10,
        );
    }
    Ok(())
}

/// The leader's CPU over `window`, in percent of one core.
async fn leader_cpu_percent(pid: u32, window: Duration) -> anyhow::Result<f64> {
    let before = process_cpu_seconds(pid).context("cannot read the leader's CPU time")?;
    tokio::time::sleep(window).await;
    let after = process_cpu_seconds(pid).context("cannot read the leader's CPU time")?;
    Ok((after - before) * 100.0 / window.as_secs_f64())
}

/// The agent heartbeat of an idle worker, every `every`.
async fn heartbeat_loop(worker: Arc<SimWorker>, every: Duration, calls: Arc<AtomicU64>) {
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        // A failed heartbeat is retried on the next tick, as the agent does.
        let _ = worker.heartbeat().await;
        calls.fetch_add(1, Ordering::Relaxed);
    }
}

/// An idle worker's long-poll for tasks, one after another; it never gets any.
async fn poll_loop(worker: Arc<SimWorker>, wait_ms: u32, calls: Arc<AtomicU64>) {
    loop {
        let answer = worker
            .acquire(worker.acquire_request(4, wait_ms, Vec::new()))
            .await;
        calls.fetch_add(1, Ordering::Relaxed);
        if answer.is_err() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// `probes` times: submits a job at the top priority, then times the AcquireTasks that hands it
/// to the probe and the result that frees the slot.
async fn probe_dispatch(
    client: &crate::client::Client,
    probe: &SimWorker,
    probes: u64,
) -> anyhow::Result<Histogram<u64>> {
    let mut latency = Histogram::<u64>::new(3)?;
    for _ in 0..probes.max(1) {
        let job = client
            .submit_job(
                v1::JobSpec {
                    argv: vec!["/bin/true".into()],
                    name: "probe".into(),
                    max_attempts: 1,
                    priority: 1000,
                    ..Default::default()
                },
                None,
            )
            .await?
            .job_id;
        let started = Instant::now();
        let granted = probe
            .acquire(probe.acquire_request(1, 5000, Vec::new()))
            .await
            .context("the probe's AcquireTasks failed")?;
        let task = granted
            .tasks
            .first()
            .context("the probe was granted nothing")?;
        anyhow::ensure!(
            task.job_id == job,
            "the probe got job {} instead of {job}",
            task.job_id
        );
        probe
            .acquire(probe.acquire_request(0, 0, vec![succeeded(task)]))
            .await
            .context("the probe's result failed")?;
        latency.record(started.elapsed().as_micros() as u64)?;
    }
    Ok(latency)
}

/// Submits `count` jobs from 64 submitters, every tenth pinned to `absent`, a worker that never
/// comes. The others could run anywhere, but only the probe polls now, and its own job outranks
/// them (priority), so they all stay queued.
async fn fill(
    client: &Arc<crate::client::Client>,
    count: u64,
    absent: uuid::Uuid,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut submitters = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (client, next) = (client.clone(), next.clone());
        submitters.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return anyhow::Ok(());
                }
                let spec = v1::JobSpec {
                    argv: vec!["/bin/true".into(), n.to_string()],
                    name: "queued".into(),
                    max_attempts: 1,
                    allowed_workers: if n % 10 == 0 {
                        vec![absent.to_string()]
                    } else {
                        Vec::new()
                    },
                    ..Default::default()
                };
                client.submit_job(spec, None).await?;
            }
        });
    }
    while let Some(done) = submitters.join_next().await {
        done??;
    }
    Ok(())
}
