//! `scaleout bench`: throughput and latency measured against real replica processes.
//!
//! `submit` loads the cluster with submits, [`e2e`] runs the job round trip through simulated
//! workers (in `bench/round_trip.rs`),
//! [`failover`] kills the leader again and again under load (in `bench/failover.rs`), and
//! [`capacity`] measures what a replica costs with a long history (`bench/capacity.rs`), and
//! [`scale`] what many idle workers and a deep queue cost the leader (`bench/scale.rs`).

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
use crate::transport::Security;

mod capacity;
mod failover;
mod round_trip;
mod scale;
mod sim_worker;

pub use capacity::{capacity, CapacityBench};
pub use failover::{failover, FailoverBench, Fault};
pub use round_trip::{e2e, ConsumerCalls, E2eBench};
pub use scale::{scale, ScaleBench};

pub struct SubmitBench {
    /// Replicas to load; empty starts a local cluster.
    pub endpoints: Vec<String>,
    /// How to connect to `endpoints` (unused for the local cluster).
    pub security: Security,
    /// Run the local cluster plaintext (`insecure = true`) instead of mutual TLS.
    pub insecure: bool,
    pub submitters: usize,
    pub count: u64,
    pub max_seconds: u64,
    pub measure_restart: bool,
    /// Local cluster only: refuse every connection to the leader's API for the whole run, so
    /// every submit goes through a follower (write forwarding).
    pub through_followers: bool,
    pub json: bool,
}

/// A local 3-replica cluster of this binary with the default settings (mutual TLS unless
/// `insecure`), once it has a leader.
pub(crate) async fn local_cluster(insecure: bool) -> anyhow::Result<LocalCluster> {
    let binary = std::env::current_exe().context("cannot find the scaleout binary")?;
    local_cluster_from(&binary, insecure).await
}

/// [`local_cluster`] of another scaleout binary (an earlier build, for an A/B).
pub(crate) async fn local_cluster_from(
    binary: &std::path::Path,
    insecure: bool,
) -> anyhow::Result<LocalCluster> {
    let cluster = LocalCluster::start(
        binary,
        ClusterOptions {
            log_filter: "warn".into(),
            tls: !insecure,
            ..ClusterOptions::default()
        },
    )
    .context("cannot start the local cluster")?;
    cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .context("the new cluster elected no leader")?;
    Ok(cluster)
}

/// [`local_cluster`] with its peer links behind chaos proxies, so a replica can be cut off.
pub(crate) async fn local_cluster_behind_proxies(
    insecure: bool,
) -> anyhow::Result<(LocalCluster, crate::chaos::network::ProxiedNetwork)> {
    let binary = std::env::current_exe().context("cannot find the scaleout binary")?;
    let (cluster, network) = LocalCluster::start_behind_proxies(
        &binary,
        ClusterOptions {
            log_filter: "warn".into(),
            tls: !insecure,
            ..ClusterOptions::default()
        },
    )
    .await
    .context("cannot start the local cluster behind proxies")?;
    cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .context("the new cluster elected no leader")?;
    Ok((cluster, network))
}

/// Runs `count` submits from `submitters` concurrent tasks and reports rate and latency.
pub async fn submit(options: SubmitBench) -> anyhow::Result<()> {
    let mut cluster = None;
    // Held for the run: the proxies in front of the replicas.
    let mut _network = None;
    let (endpoints, security) = if options.through_followers {
        anyhow::ensure!(
            options.endpoints.is_empty(),
            "--through-followers needs the local cluster (no --endpoints)"
        );
        let (local, network) = local_cluster_behind_proxies(options.insecure).await?;
        let (leader, _) = local.wait_for_leader(Duration::from_secs(30)).await?;
        network.cut_api(leader, crate::chaos::proxy::LinkMode::Refuse);
        let endpoints = local.endpoints();
        let security = local.client_security()?;
        cluster = Some(local);
        _network = Some(network);
        (endpoints, security)
    } else if options.endpoints.is_empty() {
        let local = local_cluster(options.insecure).await?;
        let endpoints = local.endpoints();
        let security = local.client_security()?;
        cluster = Some(local);
        (endpoints, security)
    } else {
        (options.endpoints.clone(), options.security.clone())
    };
    let security_is_tls = security.is_tls();
    let client =
        Arc::new(Client::new(&endpoints, security)?.with_deadline(Duration::from_secs(30)));
    // Warm up: find the leader and open the connection.
    client.submit_job(bench_spec(0), None).await?;
    let term_before = client.cluster_status().await?.term;
    let disk_before = match &cluster {
        Some(local) => disk_counters(local).await,
        None => None,
    };

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
        "transport": if security_is_tls { "mutual TLS" } else { "plaintext" },
        "route": if options.through_followers {
            "through followers (the leader's API refused)"
        } else {
            "any replica"
        },
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
    let disk_after = match &cluster {
        Some(local) => disk_counters(local).await,
        None => None,
    };
    if let (Some(before), Some(after)) = (disk_before, disk_after) {
        report["leader_disk"] = disk_report(&before, &after, done);
    }
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
            "submit ({}, {}): {done} submits in {:.1} s from {} submitters = {rate:.0} \
             submits/s (errors {errors}, elections {}); latency p50 {:.2} ms, p99 {:.2} ms, max \
             {:.2} ms",
            report["transport"].as_str().unwrap_or("?"),
            report["route"].as_str().unwrap_or("?"),
            elapsed.as_secs_f64(),
            options.submitters,
            term_after.saturating_sub(term_before),
            ms(latencies.value_at_quantile(0.50)),
            ms(latencies.value_at_quantile(0.99)),
            ms(latencies.max())
        );
        if let Some(disk) = report.get("leader_disk") {
            println!("leader's raft log: {disk}");
        }
        if let Some(replicas) = report.get("replicas") {
            println!("replicas: {replicas}");
        }
    }
    Ok(())
}

/// The leader's counters of Raft log work (syncs, appends, entries) and proposals, read from
/// its `/metrics`; `None` when it serves none (a build without them).
async fn disk_counters(cluster: &LocalCluster) -> Option<[f64; 5]> {
    let (leader, _) = cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .ok()?;
    let addr = &cluster.replica(leader).ok()?.metrics_addr;
    let page = crate::ops::probe::get(addr, "/metrics", Duration::from_secs(5))
        .await
        .ok()?;
    let samples = crate::ops::probe::samples(&page.body);
    let read = |name: &str| samples.get(name).copied();
    Some([
        read("scaleout_wal_syncs_total")?,
        read("scaleout_wal_appends_total")?,
        read("scaleout_wal_entries_total")?,
        read("scaleout_proposals_total")?,
        read("scaleout_proposal_commands_total")?,
    ])
}

/// What the leader's log did per acknowledged batch during the load.
fn disk_report(before: &[f64; 5], after: &[f64; 5], submits: u64) -> serde_json::Value {
    let [syncs, appends, entries, proposals, commands] =
        std::array::from_fn(|i| after[i] - before[i]);
    let per = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    json!({
        "fdatasync_calls": syncs,
        "appends": appends,
        "entries": entries,
        "fdatasync_per_append": per(syncs, appends),
        "entries_per_append": per(entries, appends),
        "commands_per_entry": per(commands, proposals),
        "fdatasync_per_1000_submits": per(syncs * 1000.0, submits as f64),
    })
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
pub(crate) async fn measure_replicas(
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
    let follower = cluster.follower_of(leader)?;
    let status = cluster.status_of(leader).await?;
    let applied = crate::harness::applied_index(&status, leader).unwrap_or(0);
    cluster
        .wait_for_applied(follower, applied, Duration::from_secs(60))
        .await?;
    cluster.stop(follower, Duration::from_secs(10)).await?;
    let started = Instant::now();
    cluster.restart(follower)?;
    let probe = cluster
        .client_at(&cluster.replica(follower)?.api_addr)?
        .with_deadline(Duration::from_secs(120));
    let first_job = jobs.jobs.first().map_or(1, |j| j.id);
    probe.get_job(first_job, true).await?;
    let serving = started.elapsed();
    let restarted_rss = cluster
        .replica(follower)?
        .pid()
        .map(resident_mib)
        .transpose()?;
    let restarted_heap = heap_mib(&cluster.replica(follower)?.metrics_addr).await;
    Ok(json!({
        "resident_mib_after_load": rss,
        "restart_to_serving_ms": serving.as_millis() as u64,
        "resident_mib_after_restart": restarted_rss,
        "heap_mib_after_restart": restarted_heap
            .map(|(in_use, free)| json!({ "in_use": in_use, "free": free })),
        "restarted_replica": follower,
    }))
}

/// What malloc holds in a replica, in use and free (MiB), from its `/metrics`; `None` when it
/// serves no such figure (another allocator, or a build without it).
pub(crate) async fn heap_mib(metrics_addr: &str) -> Option<(f64, f64)> {
    let page = crate::ops::probe::get(metrics_addr, "/metrics", Duration::from_secs(5))
        .await
        .ok()?;
    let samples = crate::ops::probe::samples(&page.body);
    let mib = |name: &str| samples.get(name).map(|bytes| bytes / (1 << 20) as f64);
    Some((
        mib("scaleout_heap_in_use_bytes")?,
        mib("scaleout_heap_free_bytes")?,
    ))
}

pub(crate) fn resident_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc status")?;
    Ok(kib / 1024.0)
}
