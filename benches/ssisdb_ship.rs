//! `cargo bench --bench ssisdb_ship`: events shipped per second to SSISDB (iridium_server in
//! this process standing in for SQL Server) while jobs flow end to end, and the outbox lag
//! (events waiting on the replicas) during the load.
//!
//! Three replica processes, 4 workers × 16 slots with the no-op executor, `SCALEOUT_BENCH_JOBS`
//! jobs (default 2,000) from 32 submitters; then it waits until the outbox is empty.
//!
//! Then, as the yardstick, iridium's own ceiling: a fresh iridium and schema, and the same
//! number of event rows written with plain multi-row INSERTs (1,000 rows per statement and
//! transaction, no scaleout code at all). Shipping cannot beat that number on that server.

#[path = "../tests/support/iridium.rs"]
mod iridium;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use scaleout::config::SsisdbSettings;
use scaleout::harness::{ClusterOptions, LocalCluster, WorkerOptions};
use scaleout::pb::v1;
use tokio::time::Instant;

use iridium::{Iridium, USER};

const PASSWORD: &str = "Bench#Pass1";

fn main() -> anyhow::Result<()> {
    scaleout::tls::install_crypto_provider();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let jobs: u64 = std::env::var("SCALEOUT_BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let dir = tempfile::tempdir()?;
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, PASSWORD)?;
    let server = Iridium::start(0, &dir.path().join("iridium"), PASSWORD)
        .map_err(|e| anyhow::anyhow!("iridium: {e}"))?;
    let connection_string = format!(
        "Server=tcp:127.0.0.1,{};Database=SSISDB;User Id={USER};Encrypt=DANGER_PLAINTEXT",
        server.port
    );
    let settings = SsisdbSettings {
        connection_string: Some(connection_string.clone()),
        password_file: Some(password_file.clone()),
        ..SsisdbSettings::default()
    };
    scaleout::ssisdb::install_schema(&settings).await?;

    let binary = Path::new(env!("CARGO_BIN_EXE_scaleout"));
    let mut cluster = LocalCluster::start(
        binary,
        ClusterOptions {
            log_filter: "warn".into(),
            overrides: vec![
                format!("ssisdb.connection_string={connection_string}"),
                format!("ssisdb.password_file={}", password_file.display()),
                "ssisdb.ship_interval_ms=50".into(),
            ],
            ..ClusterOptions::default()
        },
    )?;
    cluster.wait_for_leader(Duration::from_secs(30)).await?;
    for n in 0..4 {
        cluster.start_worker(WorkerOptions {
            max_tasks: 16,
            extra_config: vec![
                "noop_executor = true".into(),
                "task_request_max_cpu = 100.0".into(),
                "task_request_min_memory_mb = 0".into(),
                "acquire_wait_ms = 1000".into(),
            ],
            ..WorkerOptions::named(&format!("bench-{n}"))
        })?;
    }
    let client = Arc::new(cluster.client()?.with_deadline(Duration::from_secs(60)));
    scaleout::harness::wait_for_workers(&client, 4, Duration::from_secs(60)).await?;
    // Let the registrations ship, so the measurement starts from an empty outbox.
    wait_drained(&client, Duration::from_secs(120)).await?;
    let shipped_before = shipped_events(&settings).await?;
    let trips_before = shipping_trips(&cluster).await?;

    let started = Instant::now();
    let issued = Arc::new(AtomicU64::new(0));
    let mut submitters = Vec::new();
    for _ in 0..32 {
        let client = client.clone();
        let issued = issued.clone();
        submitters.push(tokio::spawn(async move {
            while issued.fetch_add(1, Ordering::Relaxed) < jobs {
                client
                    .submit_job(
                        v1::JobSpec {
                            argv: vec!["/bin/true".into()],
                            max_attempts: 1,
                            ..Default::default()
                        },
                        None,
                    )
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    let mut peak_lag = 0;
    let mut lag_samples = Vec::new();
    let mut load_done = None;
    loop {
        let status = client.cluster_status().await?;
        peak_lag = peak_lag.max(status.outbox_events);
        lag_samples.push(status.outbox_events);
        if load_done.is_none() && submitters.iter().all(|s| s.is_finished()) {
            load_done = Some(started.elapsed());
        }
        if load_done.is_some() && status.outbox_events == 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "the outbox did not drain in 30 min ({} events left)",
            status.outbox_events
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for submitter in submitters {
        submitter.await??;
    }
    let drained = started.elapsed();
    let events = shipped_events(&settings).await? - shipped_before;
    let trips = shipping_trips(&cluster).await?;
    let per_thousand = |n: f64| 1000.0 * n / (trips.events - trips_before.events).max(1.0);
    let requests = per_thousand(trips.requests - trips_before.requests);
    let statements = per_thousand(trips.statements - trips_before.statements);
    let load = load_done.context("the load never finished")?;
    lag_samples.sort_unstable();
    let median_lag = lag_samples[lag_samples.len() / 2];
    println!(
        "ssisdb_ship: {jobs} jobs submitted and run in {:.1} s; {events} events shipped to \
         iridium in {:.1} s = {:.0} events/s; outbox lag during the run: median {median_lag}, \
         peak {peak_lag} events",
        load.as_secs_f64(),
        drained.as_secs_f64(),
        events as f64 / drained.as_secs_f64(),
    );
    drop(cluster);
    server.stop();

    let ceiling = iridium_ceiling(events, &dir.path().join("ceiling")).await?;
    let rate = events as f64 / drained.as_secs_f64();
    println!(
        "ssisdb_ship: iridium's own ceiling for {events} event rows (plain multi-row INSERT, \
         1,000 rows per transaction): {ceiling:.0} rows/s; shipping reached {:.0} % of it, \
         with {requests:.1} requests and {statements:.1} statements per 1,000 events",
        100.0 * rate / ceiling
    );
    Ok(())
}

/// Rows per second that iridium takes for `rows` event rows through plain multi-row INSERTs
/// into a fresh `scaleout.event_messages`, 1,000 rows per statement and transaction.
async fn iridium_ceiling(rows: u64, dir: &Path) -> anyhow::Result<f64> {
    std::fs::create_dir_all(dir)?;
    let password_file = dir.join("password");
    std::fs::write(&password_file, PASSWORD)?;
    let server = Iridium::start(0, &dir.join("iridium"), PASSWORD)
        .map_err(|e| anyhow::anyhow!("iridium: {e}"))?;
    let settings = SsisdbSettings {
        connection_string: Some(format!(
            "Server=tcp:127.0.0.1,{};Database=SSISDB;User Id={USER};Encrypt=DANGER_PLAINTEXT",
            server.port
        )),
        password_file: Some(password_file),
        ..SsisdbSettings::default()
    };
    scaleout::ssisdb::install_schema(&settings).await?;
    let mut sql = scaleout::ssisdb::connect(&settings).await?;
    let started = Instant::now();
    let mut next = 1u64;
    while next <= rows {
        let last = (next + 999).min(rows);
        let values: Vec<String> = (next..=last)
            .map(|id| {
                format!(
                    "({id}, CAST(N'2026-11-26T10:00:00' AS DATETIME2), 1764151200000, \
                     N'LogLine', 70, {}, 1, NULL, {id}, N'a log line of about the usual length \
                     for a package execution message')",
                    id / 5
                )
            })
            .collect();
        let statement = format!(
            "BEGIN TRANSACTION; INSERT INTO scaleout.event_messages (event_id, event_time, \
             event_ms, event_kind, message_type, job_id, attempt_number, worker_agent_id, \
             log_sequence, message) VALUES {}; COMMIT TRANSACTION",
            values.join(", ")
        );
        sql.simple_query(statement).await?.into_results().await?;
        next = last + 1;
    }
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    drop(sql);
    server.stop();
    Ok(rate)
}

async fn wait_drained(client: &scaleout::client::Client, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while client.cluster_status().await?.outbox_events > 0 {
        anyhow::ensure!(Instant::now() < deadline, "the outbox did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// What the replicas' shippers have sent so far, summed over the replicas (only a leader
/// ships), from their `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
struct Trips {
    events: f64,
    requests: f64,
    statements: f64,
}

async fn shipping_trips(cluster: &LocalCluster) -> anyhow::Result<Trips> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sum = Trips::default();
    for replica in &cluster.replicas {
        let mut stream = tokio::net::TcpStream::connect(&replica.metrics_addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
                continue;
            };
            let value: f64 = value.parse().unwrap_or(0.0);
            match name {
                "scaleout_ssisdb_events_shipped_total" => sum.events += value,
                "scaleout_ssisdb_requests_total" => sum.requests += value,
                "scaleout_ssisdb_statements_total" => sum.statements += value,
                _ => {}
            }
        }
    }
    Ok(sum)
}

async fn shipped_events(settings: &SsisdbSettings) -> anyhow::Result<u64> {
    let mut sql = scaleout::ssisdb::connect(settings).await?;
    let rows = sql
        .query("SELECT COUNT(*) FROM scaleout.event_messages", &[])
        .await?
        .into_first_result()
        .await?;
    let count = rows
        .first()
        .and_then(|row| {
            row.try_get::<i64, _>(0)
                .ok()
                .flatten()
                .or_else(|| row.try_get::<i32, _>(0).ok().flatten().map(i64::from))
        })
        .context("no count")?;
    Ok(u64::try_from(count).unwrap_or(0))
}
