//! `scaleout bench`: throughput and latency measured against real replica processes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::time::Instant;

use crate::client::Client;
use crate::harness::{ClusterOptions, LocalCluster};
use crate::pb::v1;

pub struct SubmitBench {
    pub endpoints: Vec<String>,
    pub submitters: usize,
    pub count: u64,
    pub max_seconds: u64,
    pub measure_restart: bool,
    pub json: bool,
}

/// Runs `count` submits from `submitters` concurrent tasks and reports rate and latency.
pub async fn submit(options: SubmitBench) -> anyhow::Result<()> {
    let mut cluster = None;
    let endpoints = if options.endpoints.is_empty() {
        let binary = std::env::current_exe()?;
        let local = LocalCluster::start(
            &binary,
            ClusterOptions {
                log_filter: "warn".into(),
                ..ClusterOptions::default()
            },
        )?;
        local.wait_for_leader(Duration::from_secs(30)).await?;
        let endpoints = local.endpoints();
        cluster = Some(local);
        endpoints
    } else {
        options.endpoints.clone()
    };
    let client = Arc::new(Client::new(&endpoints)?.with_deadline(Duration::from_secs(30)));
    // Warm up: find the leader and open the connection.
    client.submit_job(bench_spec(0), None).await?;
    let term_before = client.cluster_status().await?.term;

    let issued = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(options.max_seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..options.submitters.max(1) {
        let client = client.clone();
        let issued = issued.clone();
        let count = options.count;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Histogram::<u64>::new(3)?;
            let mut errors = 0u64;
            while issued.fetch_add(1, Ordering::Relaxed) < count && Instant::now() < stop_at {
                let begin = Instant::now();
                match client.submit_job(bench_spec(1), None).await {
                    Ok(_) => latencies.record(begin.elapsed().as_micros() as u64)?,
                    Err(_) => errors += 1,
                }
            }
            anyhow::Ok((latencies, errors))
        }));
    }
    let mut latencies = Histogram::<u64>::new(3)?;
    let mut errors = 0;
    for task in tasks {
        let (task_latencies, task_errors) = task.await??;
        latencies.add(task_latencies)?;
        errors += task_errors;
    }
    let elapsed = started.elapsed();
    // A busy follower must not call an election: the term before and after the load must match.
    let term_after = client.cluster_status().await?.term;
    let done = latencies.len();
    let rate = done as f64 / elapsed.as_secs_f64();
    let ms = |us: u64| us as f64 / 1000.0;
    let mut report = json!({
        "benchmark": "submit",
        "submitters": options.submitters,
        "submits": done,
        "errors": errors,
        "seconds": elapsed.as_secs_f64(),
        "submits_per_sec": rate,
        "elections_during_load": term_after.saturating_sub(term_before),
        "latency_ms": {
            "p50": ms(latencies.value_at_quantile(0.50)),
            "p99": ms(latencies.value_at_quantile(0.99)),
            "max": ms(latencies.max()),
        },
    });
    if options.measure_restart {
        let local = cluster
            .as_mut()
            .context("--measure-restart needs the local cluster (no --endpoints)")?;
        report["replicas"] = measure_replicas(local, &client).await?;
    }
    if options.json {
        println!("{report}");
    } else {
        println!(
            "submit: {done} submits in {:.1} s from {} submitters = {rate:.0} submits/s \
             (errors {errors}, elections {}); latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            elapsed.as_secs_f64(),
            options.submitters,
            term_after.saturating_sub(term_before),
            ms(latencies.value_at_quantile(0.50)),
            ms(latencies.value_at_quantile(0.99)),
            ms(latencies.max())
        );
        if let Some(replicas) = report.get("replicas") {
            println!("replicas: {replicas}");
        }
    }
    Ok(())
}

fn bench_spec(n: u64) -> v1::JobSpec {
    v1::JobSpec {
        argv: vec!["/bin/true".into(), format!("{n}")],
        name: "bench".into(),
        max_attempts: 1,
        ..Default::default()
    }
}

/// Resident memory of every replica, then the time a follower takes from start to serving.
async fn measure_replicas(
    cluster: &mut LocalCluster,
    client: &Client,
) -> anyhow::Result<serde_json::Value> {
    let jobs = client.list_jobs(None, 0, 1, false).await?;
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let mut rss = serde_json::Map::new();
    for replica in &cluster.replicas {
        if let Some(pid) = replica.pid() {
            rss.insert(replica.id.to_string(), json!(resident_mib(pid)?));
        }
    }
    let follower = cluster
        .replicas
        .iter()
        .map(|r| r.id)
        .find(|id| *id != leader)
        .context("no follower")?;
    let status = cluster.status_of(leader).await?;
    let applied = status
        .replicas
        .iter()
        .find(|r| r.id == leader)
        .and_then(|r| r.applied_index)
        .unwrap_or(0);
    cluster
        .wait_for_applied(follower, applied, Duration::from_secs(60))
        .await?;
    cluster.stop(follower, Duration::from_secs(10)).await?;
    let started = Instant::now();
    cluster.restart(follower)?;
    let probe = Client::new(&[cluster.replica(follower)?.api_addr.clone()])?
        .with_deadline(Duration::from_secs(120));
    let first_job = jobs.jobs.first().map_or(1, |j| j.id);
    probe.get_job(first_job, true).await?;
    let serving = started.elapsed();
    let restarted_rss = cluster
        .replica(follower)?
        .pid()
        .map(resident_mib)
        .transpose()?;
    Ok(json!({
        "resident_mib_after_load": rss,
        "restart_to_serving_ms": serving.as_millis() as u64,
        "resident_mib_after_restart": restarted_rss,
        "restarted_replica": follower,
    }))
}

fn resident_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc status")?;
    Ok(kib / 1024.0)
}
