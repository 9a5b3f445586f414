//! Resident memory of real replica processes: a job's log lines live in the store, not on the
//! heap, so a job writing 10,000 lines leaves every replica's resident memory about where it
//! was (what grows is bounded by the store's cache, `storage.cache_capacity_mb`).

use std::path::Path;
use std::time::Duration;

use scaleout::harness::{ClusterOptions, LocalCluster, WorkerOptions};
use scaleout::pb::v1::{self, JobState};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(180);
const LINES: u64 = 10_000;
/// Bytes per line: 10,000 of them are 16 MB, just under a job's log byte cap
/// (`MAX_LOG_BYTES_PER_JOB`), which would show on the heap of every replica.
const LINE_BYTES: usize = 1_600;
/// Jobs run after the warm-up, while resident memory is watched.
const MEASURED_JOBS: u64 = 4;
const CACHE_MB: u64 = 8;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_scaleout"))
}

/// VmRSS of a process, in bytes.
fn resident(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_writing_ten_thousand_lines_leaves_replica_memory_flat() {
    let options = ClusterOptions {
        overrides: vec![format!("storage.cache_capacity_mb={CACHE_MB}")],
        ..ClusterOptions::default()
    };
    let mut cluster = LocalCluster::start(binary(), options).expect("start replicas");
    cluster.wait_for_leader(WAIT).await.expect("leader");
    cluster
        .start_worker(WorkerOptions {
            extra_config: vec![
                "task_request_max_cpu = 100.0".into(),
                "task_request_min_memory_mb = 0".into(),
            ],
            ..WorkerOptions::named("w1")
        })
        .expect("worker");
    let client = cluster.client().expect("client");
    scaleout::harness::wait_for_workers(&client, 1, WAIT)
        .await
        .expect("worker registered");

    // Two such jobs first: the allocator, the store's cache and the Raft buffers reach their
    // working size on them (with lines stored in blocks, one job was not always enough). Then
    // the next ones must not add what their lines weigh.
    run_logging_job(&client).await;
    run_logging_job(&client).await;
    let pids: Vec<u32> = cluster
        .replicas
        .iter()
        .map(|r| r.pid().expect("running"))
        .collect();
    let before: Vec<u64> = pids.iter().map(|p| resident(*p)).collect();
    for _ in 0..MEASURED_JOBS {
        run_logging_job(&client).await;
    }

    let stored_mb = MEASURED_JOBS * LINES * LINE_BYTES as u64 / (1 << 20);
    for (pid, was) in pids.iter().zip(&before) {
        let now = resident(*pid);
        let grew_mb = now.saturating_sub(*was) / (1 << 20);
        println!("replica pid {pid}: {} MiB -> {} MiB", was >> 20, now >> 20);
        // On the heap the measured jobs' lines alone would add ~61 MiB.
        assert!(
            grew_mb < stored_mb / 2,
            "replica {pid} grew by {grew_mb} MiB while {stored_mb} MiB of lines were written"
        );
    }
}

/// Runs a job printing [`LINES`] lines of [`LINE_BYTES`] and reads every line back in order.
async fn run_logging_job(client: &scaleout::client::Client) {
    let script = format!(
        "line=$(head -c {LINE_BYTES} /dev/zero | tr '\\0' x); i=0; \
         while [ $i -lt {LINES} ]; do echo \"$i $line\"; i=$((i+1)); done"
    );
    let id = client
        .submit_job(shell(&script), None)
        .await
        .expect("submit")
        .job_id;
    wait_succeeded(client, id).await;
    let deadline = Instant::now() + WAIT;
    let mut count = 0u64;
    let mut after = 0;
    while count < LINES {
        let page = client.get_job_logs(id, after, false).await.expect("logs");
        for line in &page.lines {
            assert_eq!(line.sequence, after + 1, "lines in order, none missing");
            after = line.sequence;
            count += 1;
        }
        if page.lines.is_empty() {
            assert!(Instant::now() < deadline, "only {count} lines stored");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(count, LINES);
}

fn shell(script: &str) -> v1::JobSpec {
    v1::JobSpec {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        name: "memory".into(),
        max_attempts: 1,
        ..Default::default()
    }
}

async fn wait_succeeded(client: &scaleout::client::Client, id: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let job = client.get_job(id, false).await.expect("get job");
        if job.state == JobState::Succeeded as i32 {
            return;
        }
        assert!(
            !matches!(
                JobState::try_from(job.state),
                Ok(JobState::Failed | JobState::Cancelled)
            ),
            "{job:?}"
        );
        assert!(Instant::now() < deadline, "job {id} did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
