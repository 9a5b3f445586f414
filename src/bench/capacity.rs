//! `scaleout bench capacity`: what a replica costs once it holds a long history.
//!
//! `jobs` jobs are submitted, run and completed by no-op workers, each sending `log_lines`
//! lines of `line_bytes`; then `queued` more are submitted with a tag no worker has, so they
//! stay queued. Reported per replica: resident memory, data dir size, the snapshot's size and
//! how long building it took (and how long taking its view held up apply), the time from a
//! restart to serving, and the submit latency p99 while snapshots are built against the rest.
//! Then a follower is stopped until the leader has built two snapshots past it, and restarted:
//! how long it takes to catch up (by a streamed snapshot) and how far the leader's and its
//! resident memory rise above their steady level meanwhile. Resident memory is also sampled
//! through the whole run, for its peak. Retention runs with its defaults unless `keep_all` turns
//! the cap off.

use std::collections::BTreeMap;
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
    /// Leave the replicas' data dirs in place when done.
    pub keep_data: bool,
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
    if options.keep_data {
        let root = cluster.keep_dir();
        eprintln!("the replicas' data dirs stay in {}", root.display());
    }
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

    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let peaks = sample_peaks(
        cluster
            .replicas
            .iter()
            .filter_map(|r| Some((r.id, r.pid()?)))
            .collect(),
        sampling.clone(),
    );
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
                    .push((
                        crate::wall_time::now_ms(),
                        begin.elapsed().as_micros() as u64,
                    ));
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
    sampling.store(false, Ordering::Relaxed);
    let peaks = peaks.await?;

    let mut replicas = serde_json::Map::new();
    for replica in &cluster.replicas {
        // The events it holds for SSISDB (kept `ssisdb.retention_secs` without one): in memory.
        let outbox_events = cluster.status_of(replica.id).await?.outbox_events;
        let snapshot = replica.data_dir.join("raft/snapshot/current.snap");
        let heap = super::heap_mib(&replica.metrics_addr).await;
        replicas.insert(
            replica.id.to_string(),
            json!({
                "resident_mib": replica.pid().map(super::resident_mib).transpose()?,
                "heap_in_use_mib": heap.map(|(in_use, _)| in_use),
                "heap_free_mib": heap.map(|(_, free)| free),
                "outbox_events": outbox_events,
                "peak_resident_mib": peaks.get(&replica.id),
                "data_dir_mib": dir_bytes(&replica.data_dir) as f64 / (1 << 20) as f64,
                "snapshot_mib": std::fs::metadata(&snapshot).map(|m| m.len() as f64 / (1 << 20) as f64).ok(),
                "snapshots": snapshot_builds(&replica.log_path),
            }),
        );
    }
    // Once more after each replica's periodic trim has run: what resident memory settles to
    // once malloc has handed back the memory it holds free.
    tokio::time::sleep(crate::memory::TRIM_EVERY + Duration::from_secs(5)).await;
    for replica in &cluster.replicas {
        let heap = super::heap_mib(&replica.metrics_addr).await;
        let resident = replica.pid().map(super::resident_mib).transpose()?;
        if let Some(entry) = replicas
            .get_mut(&replica.id.to_string())
            .and_then(|entry| entry.as_object_mut())
        {
            entry.insert(
                "after_a_trim".into(),
                json!({
                    "resident_mib": resident,
                    "heap_in_use_mib": heap.map(|(in_use, _)| in_use),
                    "heap_free_mib": heap.map(|(_, free)| free),
                }),
            );
        }
    }
    let builds: Vec<(u64, u64)> = cluster
        .replicas
        .iter()
        .flat_map(|r| snapshot_builds(&r.log_path))
        .filter_map(|b| Some((b["started_unix_ms"].as_u64()?, b["at_unix_ms"].as_u64()?)))
        .collect();
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(PoisonError::into_inner));
    let latency = latency_during(&samples, &builds)?;
    let catch_up = catch_up(&mut cluster, &client).await?;
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
        "follower_catch_up": catch_up,
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
                mine.push((
                    crate::wall_time::now_ms(),
                    begin.elapsed().as_micros() as u64,
                ));
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

/// p50/p99 of submits that completed while a snapshot was being built on any replica (from
/// taking its view to storing it, padded by a second on each side), of those in the equally long
/// windows just before each build, and of all the rest.
fn latency_during(samples: &[Sample], builds: &[(u64, u64)]) -> anyhow::Result<serde_json::Value> {
    const PAD_MS: u64 = 1_000;
    let mut during = Histogram::<u64>::new(3)?;
    let mut before = Histogram::<u64>::new(3)?;
    let mut elsewhere = Histogram::<u64>::new(3)?;
    let windows: Vec<(u64, u64)> = builds
        .iter()
        .map(|&(start, end)| (start.saturating_sub(PAD_MS), end + PAD_MS))
        .collect();
    for &(at, us) in samples {
        if windows.iter().any(|&(from, to)| (from..=to).contains(&at)) {
            during.record(us)?;
        } else {
            if windows
                .iter()
                .any(|&(from, to)| (from.saturating_sub(to - from)..from).contains(&at))
            {
                before.record(us)?;
            }
            elsewhere.record(us)?;
        }
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let summary =
        |h: &Histogram<u64>| json!({"submits": h.len(), "p50": ms(h, 0.5), "p99": ms(h, 0.99)});
    Ok(json!({
        "during_a_snapshot_build": summary(&during),
        "just_before_a_build": summary(&before),
        "elsewhere": summary(&elsewhere),
    }))
}

/// Samples the resident memory of each (replica id, pid) every 250 ms until `sampling` is
/// cleared; returns each replica's peak in MiB.
fn sample_peaks(
    pids: Vec<(u64, u32)>,
    sampling: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<BTreeMap<u64, f64>> {
    tokio::spawn(async move {
        let mut peaks = BTreeMap::new();
        while sampling.load(Ordering::Relaxed) {
            for &(id, pid) in &pids {
                if let Ok(mib) = super::resident_mib(pid) {
                    let peak = peaks.entry(id).or_insert(0.0_f64);
                    *peak = peak.max(mib);
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        peaks
    })
}

/// Samples of resident memory taken, half a second apart, once a follower has caught up.
const SETTLE_SAMPLES: usize = 10;

/// Stops a follower, submits (jobs that stay queued) until the leader has built two snapshots
/// past the follower's last applied entry, restarts it and waits until it has applied what the
/// leader had: the follower must catch up by a snapshot. Reports how long that took, how far
/// each side's resident memory rose above its level before the follower was stopped, and the
/// level each settled at once caught up, and how far each side's peak is above the third
/// replica's level then (it holds the same state and installed nothing: the jobs submitted while
/// the follower was down raise every replica, and are not the install's cost).
async fn catch_up(
    cluster: &mut LocalCluster,
    client: &Arc<Client>,
) -> anyhow::Result<serde_json::Value> {
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let follower = cluster.follower_of(leader)?;
    let applied_of = |status: &v1::ClusterStatusResponse, id: u64| {
        crate::harness::applied_index(status, id).unwrap_or(0)
    };
    let pid_of = |cluster: &LocalCluster, id: u64| -> anyhow::Result<u32> {
        cluster
            .replica(id)?
            .pid()
            .context("the replica is not running")
    };
    // The third replica holds the same state throughout and installs nothing: the level a
    // replica with that state sits at, to tell an install's cost from the state's growth.
    let control = cluster
        .replicas
        .iter()
        .map(|r| r.id)
        .find(|id| *id != leader && *id != follower);
    let control_pid = control.map(|id| pid_of(cluster, id)).transpose()?;
    let leader_pid = pid_of(cluster, leader)?;
    let steady_leader = super::resident_mib(leader_pid)?;
    let steady_follower = super::resident_mib(pid_of(cluster, follower)?)?;
    let stopped_at = applied_of(&cluster.status_of(follower).await?, follower);
    cluster.stop(follower, Duration::from_secs(10)).await?;

    let leader_log = cluster.replica(leader)?.log_path.clone();
    let builds_past = |log: &Path| {
        snapshot_builds(log)
            .iter()
            .filter(|b| b["last_log_index"].as_u64().is_some_and(|i| i > stopped_at))
            .count()
    };
    let scratch = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(3600);
    let mut submitted = 0;
    while builds_past(&leader_log) < 2 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the leader built no two snapshots within an hour"
        );
        // Few submitters, so that entries (what snapshots count) are many.
        submit_all(client, 2_000, 4, &[NEVER_RUNS], &scratch).await?;
        submitted += 2_000;
    }
    let target = applied_of(&cluster.status_of(leader).await?, leader);

    let started = Instant::now();
    cluster.restart(follower)?;
    let follower_pid = pid_of(cluster, follower)?;
    let (mut peak_leader, mut peak_follower) = (steady_leader, 0.0_f64);
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        peak_leader = peak_leader.max(super::resident_mib(leader_pid)?);
        peak_follower = peak_follower.max(super::resident_mib(follower_pid)?);
        let caught_up = match cluster.status_of(follower).await {
            Ok(status) => applied_of(&status, follower) >= target,
            Err(_) => false,
        };
        if caught_up {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the follower never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let caught_up_ms = started.elapsed().as_millis() as u64;
    // The state both hold now is larger than before the stop (the jobs submitted meanwhile), so
    // the rise over the steady level before it counts that growth too; the level once caught up
    // (the last of a few seconds of samples, both settled) separates it from the install's own
    // cost.
    let (mut settled_leader, mut settled_follower, mut settled_control) = (0.0, 0.0, None);
    for _ in 0..SETTLE_SAMPLES {
        tokio::time::sleep(Duration::from_millis(500)).await;
        settled_leader = super::resident_mib(leader_pid)?;
        settled_follower = super::resident_mib(follower_pid)?;
        settled_control = control_pid.map(super::resident_mib).transpose()?;
        peak_leader = peak_leader.max(settled_leader);
        peak_follower = peak_follower.max(settled_follower);
    }
    let log = std::fs::read_to_string(&cluster.replica(follower)?.log_path).unwrap_or_default();
    let installed = log
        .lines()
        .rfind(|line| line.contains("installed snapshot"))
        .map(str::to_string);
    Ok(json!({
        "follower": follower,
        "submitted_while_down": submitted,
        "entries_behind": target.saturating_sub(stopped_at),
        "catch_up_ms": caught_up_ms,
        "by_snapshot": installed.is_some(),
        "install_log_line": installed,
        "leader_resident_mib": {
            "steady": steady_leader,
            "peak": peak_leader,
            "rise": peak_leader - steady_leader,
            "settled": settled_leader,
            "peak_over_settled": peak_leader - settled_leader,
            "peak_over_control": settled_control.map(|control| peak_leader - control),
        },
        "follower_resident_mib": {
            "steady": steady_follower,
            "peak": peak_follower,
            "rise": peak_follower - steady_follower,
            "settled": settled_follower,
            "peak_over_settled": peak_follower - settled_follower,
            "peak_over_control": settled_control.map(|control| peak_follower - control),
        },
        "control_resident_mib": {
            "replica": control,
            "settled": settled_control,
        },
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
            let at_unix_ms = (at.unix_timestamp_nanos() / 1_000_000) as u64;
            let took = field("build_ms").unwrap_or(0) + field("view_ms").unwrap_or(0);
            Some(json!({
                "at_unix_ms": at_unix_ms,
                "started_unix_ms": at_unix_ms.saturating_sub(took),
                "last_log_index": field("last_log_index"),
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
