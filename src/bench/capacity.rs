//! `scaleout bench capacity`: what a replica costs once it holds a long history.
//!
//! `jobs` jobs are submitted, run and completed by no-op workers, each sending `log_lines`
//! lines of `line_bytes`; then `queued` more are submitted with a tag no worker has, so they
//! stay queued. Reported per replica: resident memory, data dir size, the snapshot's size and
//! how long building it took (and how long taking its view held up apply), the time from a
//! restart to serving, and the submit latency p99 in the seconds around each snapshot against
//! the rest. Retention runs with its defaults unless `keep_all` turns the cap off.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::time::Instant;

use crate::client::Client;
use crate::harness::{ClusterOptions, LocalCluster, WorkerOptions};
use crate::pb::v1;

pub struct CapacityBench {
    pub jobs: u64,
    pub queued: u64,
    pub log_lines: u32,
    pub line_bytes: u32,
    pub workers: usize,
    pub slots: u32,
    pub submitters: usize,
    /// `retention.max_finished_jobs = 0`: every finished job stays (within a day).
    pub keep_all: bool,
    pub insecure: bool,
    pub json: bool,
}

/// The tag of the jobs left queued: no worker has it.
const NEVER_RUNS: &str = "capacity-never-runs";

/// A submit's completion time (ms since the Unix epoch) and its latency (µs).
type Sample = (u64, u64);

pub async fn capacity(options: CapacityBench) -> anyhow::Result<()> {
    let binary = std::env::current_exe().context("cannot find the scaleout binary")?;
    let mut overrides = Vec::new();
    if options.keep_all {
        overrides.push("retention.max_finished_jobs=0".to_string());
    }
    let mut cluster = LocalCluster::start(
        &binary,
        ClusterOptions {
            // The snapshot lines are INFO; everything else quiet.
            log_filter: "warn,scaleout::raft::state_machine=info".into(),
            tls: !options.insecure,
            overrides,
            ..ClusterOptions::default()
        },
    )
    .context("cannot start the local cluster")?;
    cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .context("the new cluster elected no leader")?;
    for n in 0..options.workers {
        cluster.start_worker(WorkerOptions {
            max_tasks: options.slots,
            extra_config: vec![
                "noop_executor = true".into(),
                format!("noop_log_lines = {}", options.log_lines),
                format!("noop_log_line_bytes = {}", options.line_bytes),
                "task_request_max_cpu = 100.0".into(),
                "task_request_min_memory_mb = 0".into(),
                "acquire_wait_ms = 1000".into(),
            ],
            ..WorkerOptions::named(&format!("capacity-{n}"))
        })?;
    }
    let client = Arc::new(cluster.client()?.with_deadline(Duration::from_secs(60)));
    crate::harness::wait_for_workers(&client, options.workers, Duration::from_secs(60)).await?;

    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let started = Instant::now();
    client.submit_job(spec(&[]), None).await?;
    // A probe submits a job that stays queued every 20 ms for the whole run, so submit latency
    // is sampled while snapshots are built, not only while the load is being submitted.
    let probing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let probed = Arc::new(AtomicU64::new(0));
    let probe = {
        let client = client.clone();
        let samples = samples.clone();
        let probing = probing.clone();
        let probed = probed.clone();
        let most = options.queued;
        tokio::spawn(async move {
            while probing.load(Ordering::Relaxed) && probed.load(Ordering::Relaxed) < most {
                let begin = Instant::now();
                client.submit_job(spec(&[NEVER_RUNS]), None).await?;
                samples
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((crate::master::now_ms(), begin.elapsed().as_micros() as u64));
                probed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(())
        })
    };
    submit_all(&client, options.jobs, options.submitters, &[], &samples).await?;
    wait_run_done(&client, &probed).await?;
    let ran_in = started.elapsed();
    probing.store(false, Ordering::Relaxed);
    probe.await??;
    let probed = probed.load(Ordering::Relaxed);
    submit_all(
        &client,
        options.queued.saturating_sub(probed),
        options.submitters,
        &[NEVER_RUNS],
        &samples,
    )
    .await?;
    // Let retention catch up with the last completions before measuring.
    tokio::time::sleep(Duration::from_secs(15)).await;

    let mut replicas = serde_json::Map::new();
    for replica in &cluster.replicas {
        let snapshot = replica.data_dir.join("raft/snapshot/current.snap");
        replicas.insert(
            replica.id.to_string(),
            json!({
                "resident_mib": replica.pid().map(super::resident_mib).transpose()?,
                "data_dir_mib": dir_bytes(&replica.data_dir) as f64 / (1 << 20) as f64,
                "snapshot_mib": std::fs::metadata(&snapshot).map(|m| m.len() as f64 / (1 << 20) as f64).ok(),
                "snapshots": snapshot_builds(&replica.log_path),
            }),
        );
    }
    let builds: Vec<u64> = cluster
        .replicas
        .iter()
        .flat_map(|r| snapshot_builds(&r.log_path))
        .filter_map(|b| b["at_unix_ms"].as_u64())
        .collect();
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(PoisonError::into_inner));
    let latency = latency_around(&samples, &builds, 5_000)?;
    let restart = super::measure_replicas(&mut cluster, &client).await?;

    let report = json!({
        "benchmark": "capacity",
        "transport": if options.insecure { "plaintext" } else { "mutual TLS" },
        "jobs_run": options.jobs,
        "queued": options.queued,
        "log_lines_per_job": options.log_lines,
        "line_bytes": options.line_bytes,
        "retention": if options.keep_all { "no cap (a day)" } else { "defaults (a day, 100000 finished)" },
        "run_seconds": ran_in.as_secs_f64(),
        "replicas": replicas,
        "submit_latency_ms": latency,
        "restart": restart,
    });
    if options.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// Waits until nothing is leased and only the probe's jobs are queued: every job of the run
/// has ended (finished ones may already be removed by retention, so they are not counted).
async fn wait_run_done(client: &Client, probed: &AtomicU64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(24 * 3600);
    loop {
        let counts = client
            .cluster_status()
            .await?
            .job_counts
            .unwrap_or_default();
        // Read after the status: a probe job it counts was sent before this.
        let sent = probed.load(Ordering::Relaxed);
        if counts.picked_up == 0 && counts.running == 0 && counts.queued <= sent {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the run never ended: {counts:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn submit_all(
    client: &Arc<Client>,
    count: u64,
    submitters: usize,
    tags: &[&str],
    samples: &Arc<Mutex<Vec<Sample>>>,
) -> anyhow::Result<()> {
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..submitters.max(1) {
        let client = client.clone();
        let issued = issued.clone();
        let samples = samples.clone();
        let spec = spec(tags);
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while issued.fetch_add(1, Ordering::Relaxed) < count {
                let begin = Instant::now();
                client.submit_job(spec.clone(), None).await?;
                mine.push((crate::master::now_ms(), begin.elapsed().as_micros() as u64));
            }
            samples
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(mine);
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

fn spec(tags: &[&str]) -> v1::JobSpec {
    v1::JobSpec {
        argv: vec!["/bin/true".into()],
        name: "capacity".into(),
        max_attempts: 1,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    }
}

/// p50/p99 of submits that completed within `window_ms` of a snapshot build, and of the rest.
fn latency_around(
    samples: &[Sample],
    builds: &[u64],
    window_ms: u64,
) -> anyhow::Result<serde_json::Value> {
    let mut near = Histogram::<u64>::new(3)?;
    let mut away = Histogram::<u64>::new(3)?;
    // Within the window of a build on any replica (each build is reported by all three).
    for &(at, us) in samples {
        let close = builds.iter().any(|b| at.abs_diff(*b) <= window_ms);
        if close {
            near.record(us)?;
        } else {
            away.record(us)?;
        }
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(json!({
        "within_5s_of_a_snapshot": {"submits": near.len(), "p50": ms(&near, 0.5), "p99": ms(&near, 0.99)},
        "elsewhere": {"submits": away.len(), "p50": ms(&away, 0.5), "p99": ms(&away, 0.99)},
    }))
}

/// The "built snapshot" lines of a replica's log: when, size, view and build times.
fn snapshot_builds(log: &Path) -> Vec<serde_json::Value> {
    let Ok(text) = std::fs::read_to_string(log) else {
        return Vec::new();
    };
    text.lines()
        .filter(|line| line.contains("built snapshot"))
        .filter_map(|line| {
            let at = line.split_whitespace().next()?;
            let at =
                time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                    .ok()?;
            let field = |name: &str| -> Option<u64> {
                let rest = line.split(&format!("{name}=")).nth(1)?;
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            };
            Some(json!({
                "at_unix_ms": (at.unix_timestamp_nanos() / 1_000_000) as u64,
                "bytes": field("bytes"),
                "jobs": field("jobs"),
                "log_lines": field("log_lines"),
                "view_ms": field("view_ms"),
                "build_ms": field("build_ms"),
            }))
        })
        .collect()
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}
