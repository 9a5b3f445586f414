//! `scaleout status` run as a person would, against real replica and worker processes: the
//! screen names every replica, the leader and the worker, counts the jobs right, keeps
//! rendering when a replica dies, and says so (exit 3) when none answers.
//!
//! One test at a time (a lock): each starts three replicas, and on a 2-core machine clusters
//! started in parallel starve each other's elections. Every wait is a condition with a deadline.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use scaleout::client::Client;
use scaleout::harness::{wait_for_workers, ClusterOptions, LocalCluster, WorkerOptions};
use scaleout::pb::v1::{self, JobState};
use tokio::sync::Mutex;
use tokio::time::Instant;

static SERIAL: Mutex<()> = Mutex::const_new(());
const WAIT: Duration = Duration::from_secs(90);
const WORKER: &str = "status-worker";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_scaleout"))
}

fn shell(name: &str, script: &str) -> v1::JobSpec {
    v1::JobSpec {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        name: name.into(),
        max_attempts: 1,
        ..Default::default()
    }
}

/// A job no worker can take: it needs a tag nobody has.
fn stuck(name: &str) -> v1::JobSpec {
    v1::JobSpec {
        tags: vec!["no-worker-has-this-tag".into()],
        ..shell(name, "true")
    }
}

async fn submit(client: &Client, spec: v1::JobSpec) -> u64 {
    client.submit_job(spec, None).await.expect("submit").job_id
}

async fn wait_for_state(cluster: &LocalCluster, client: &Client, job_id: u64, state: JobState) {
    let deadline = Instant::now() + WAIT;
    loop {
        let job = client.get_job(job_id, false).await.expect("get job");
        if job.state == state as i32 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "job {job_id} is {:?}, not {state:?}, after {WAIT:?}\n{}",
            JobState::try_from(job.state),
            cluster.worker_log_tail(WORKER, 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `scaleout status ARGS...` against every replica, as the cluster's admin.
async fn run_status(cluster: &LocalCluster, args: &[&str]) -> Output {
    tokio::process::Command::new(binary())
        .arg("status")
        .arg("--endpoints")
        .arg(cluster.endpoints().join(","))
        .args(cluster.cli_security_args())
        .args(args)
        .output()
        .await
        .expect("run scaleout status")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The screen, after checking the command succeeded.
async fn screen(cluster: &LocalCluster, args: &[&str]) -> String {
    let output = run_status(cluster, args).await;
    assert!(
        output.status.success(),
        "status failed ({}): {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        stdout(&output)
    );
    stdout(&output)
}

/// The line starting with `start`, split into cells.
fn row<'a>(screen: &'a str, start: &str) -> Vec<&'a str> {
    screen
        .lines()
        .find(|line| line.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{screen}"))
        .split_whitespace()
        .collect()
}

/// The cells of replica `id`'s row in the replica table, after checking its address.
fn replica_row<'a>(screen: &'a str, cluster: &LocalCluster, id: u64) -> Vec<&'a str> {
    let api = &cluster.replica(id).expect("replica").api_addr;
    let cells = row(screen, &format!("{id} "));
    assert_eq!(cells[1], api.as_str(), "replica {id}'s row:\n{screen}");
    cells
}

const EXPECTED_JOBS: &str =
    "jobs: 2 queued, 0 picked up, 1 running, 2 succeeded, 1 failed, 1 cancelled";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_replicas_workers_and_jobs_and_survives_a_dead_replica() {
    let _serial = SERIAL.lock().await;
    let mut cluster = LocalCluster::start(binary(), ClusterOptions::default()).expect("start");
    let (leader, term) = cluster.wait_for_leader(WAIT).await.expect("a leader");
    let agent_id = cluster
        .start_worker(WorkerOptions::fast(WORKER))
        .expect("start worker");
    let client = cluster.client().expect("client");
    wait_for_workers(&client, 1, WAIT)
        .await
        .expect("worker online");

    // Two that succeed, one that fails, one that keeps running, two nobody can take and a
    // third of those cancelled.
    for name in ["ok-1", "ok-2"] {
        let id = submit(&client, shell(name, "true")).await;
        wait_for_state(&cluster, &client, id, JobState::Succeeded).await;
    }
    let failing = submit(&client, shell("fails", "exit 3")).await;
    wait_for_state(&cluster, &client, failing, JobState::Failed).await;
    let sleeper = submit(&client, shell("sleeps", "sleep 300")).await;
    wait_for_state(&cluster, &client, sleeper, JobState::Running).await;
    submit(&client, stuck("stuck-1")).await;
    submit(&client, stuck("stuck-2")).await;
    let cancelled = submit(&client, stuck("stuck-3")).await;
    client.cancel_job(cancelled).await.expect("cancel");

    // One frame: every replica, the leader (which answered), the worker, the counts.
    let text = screen(&cluster, &["--frames", "1"]).await;
    let leader_addr = &cluster.replica(leader).expect("leader").api_addr;
    let header = text.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("scaleout status at ")
            && header.ends_with(&format!(" UTC from replica {leader} ({leader_addr})")),
        "the header says when, and that the leader answered:\n{text}"
    );
    assert!(
        text.contains(&format!(
            "leader: replica {leader} ({leader_addr}), term {term}\n\
             majority: up, 3 of 3 voters reachable; version {}\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    for replica in &cluster.replicas {
        let cells = replica_row(&text, &cluster, replica.id);
        let role = if replica.id == leader {
            "leader"
        } else {
            "follower"
        };
        assert_eq!(&cells[2..5], [role, "yes", &term.to_string()], "{text}");
    }
    assert!(
        text.contains("workers: 1 online, 0 offline, 0 disabled, 0 draining"),
        "{text}"
    );
    let worker = row(&text, WORKER);
    let short_id = &agent_id.to_string()[..8];
    assert_eq!(&worker[1..4], [short_id, "online", "1/4"], "{text}");
    assert!(text.contains(EXPECTED_JOBS), "{text}");
    assert!(
        text.contains("outbox: ") && text.contains("events not yet in SSISDB"),
        "{text}"
    );

    // --watch piped: frames one after the other, each followed by a blank line.
    let text = screen(&cluster, &["--watch", "1", "--frames", "2"]).await;
    let headers = text
        .lines()
        .filter(|line| line.starts_with("scaleout status at "))
        .count();
    assert_eq!(headers, 2, "{text}");
    assert_eq!(
        text.matches("every 1 s; Ctrl-C to stop").count(),
        2,
        "{text}"
    );
    assert_eq!(text.matches(EXPECTED_JOBS).count(), 2, "{text}");
    assert!(text.ends_with("\n\n"), "{text:?}");
    assert!(!text.contains('\x1b'), "no terminal escapes when piped");

    // JSON: one object per frame, with everything the screen shows.
    let text = screen(
        &cluster,
        &["--output", "json", "--watch", "1", "--frames", "2"],
    )
    .await;
    let frames: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert_eq!(frames.len(), 2, "{text}");
    let frame = &frames[0];
    assert_eq!(frame["available"], true);
    assert_eq!(frame["cluster"]["leader_id"], leader);
    assert_eq!(frame["cluster"]["answered_by"], leader);
    assert_eq!(
        frame["cluster"]["replicas"].as_array().map(Vec::len),
        Some(3)
    );
    let jobs = &frame["cluster"]["jobs"];
    for (state, count) in [
        ("queued", 2),
        ("picked_up", 0),
        ("running", 1),
        ("succeeded", 2),
        ("failed", 1),
        ("cancelled", 1),
    ] {
        assert_eq!(jobs[state], count, "{state} in {jobs}");
    }
    assert_eq!(frame["quorum"]["majority_up"], true);
    assert_eq!(frame["workers"]["online"], 1);
    assert_eq!(
        frame["workers"]["list"][0]["id"],
        agent_id.to_string().as_str()
    );

    // A follower dies: it shows as unreachable and the rest of the screen is still there.
    let dead = cluster.follower_of(leader).expect("a follower");
    cluster.kill(dead).expect("kill a follower");
    let deadline = Instant::now() + WAIT;
    let text = loop {
        let text = screen(&cluster, &["--frames", "1"]).await;
        if replica_row(&text, &cluster, dead)[3] == "NO" {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "replica {dead} still shows as reachable:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        &replica_row(&text, &cluster, dead)[2..8],
        ["-", "NO", "-", "-", "-", "-"],
        "{text}"
    );
    assert!(
        text.contains(&format!("replica {dead} unreachable: ")),
        "the screen says why:\n{text}"
    );
    assert!(
        text.contains("majority: up, 2 of 3 voters reachable; version"),
        "{text}"
    );
    assert!(text.contains(EXPECTED_JOBS), "{text}");
    assert_eq!(row(&text, WORKER)[2], "online", "{text}");
    let output = run_status(&cluster, &["--output", "json", "--frames", "1"]).await;
    let frame: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let dead_row = frame["cluster"]["replicas"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["id"] == dead))
        .expect("the dead replica's row");
    assert_eq!(dead_row["reachable"], false);
    assert_eq!(frame["quorum"]["reachable_voters"], 2);

    // The leader dies too: one replica is left, without a majority. The frame comes at once
    // (every replica is asked in parallel, briefly), says so first, and exits 3; so does
    // `cluster status`. Neither shows Rust's debug text.
    cluster.kill(leader).expect("kill the leader");
    let started = Instant::now();
    let output = run_status(&cluster, &[]).await;
    let took = started.elapsed();
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(3), "{text}\n{output:?}");
    assert!(took < Duration::from_secs(6), "took {took:?}:\n{text}");
    assert!(
        text.contains(
            "NO MAJORITY: 1 of 3 voters reachable; nothing is submitted, granted or \
             finished until 1 more is back"
        ),
        "{text}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("NO MAJORITY"), "{stderr}");
    for text in [&text, &stderr.to_string()] {
        assert!(
            !text.contains("Some(") && !text.contains("ReplicaNode"),
            "no debug text: {text}"
        );
    }
    let started = Instant::now();
    let output = tokio::process::Command::new(binary())
        .args(["cluster", "status", "--endpoints"])
        .arg(cluster.endpoints().join(","))
        .args(cluster.cli_security_args())
        .output()
        .await
        .expect("run scaleout cluster status");
    let took = started.elapsed();
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(3), "{text}\n{output:?}");
    assert!(took < Duration::from_secs(6), "took {took:?}:\n{text}");
    assert!(
        text.starts_with("NO MAJORITY: 1 of 3 voters reachable")
            && !text.contains("Some(")
            && !text.contains("ReplicaNode"),
        "{text}"
    );

    // No replica answers: the screen says so, and without --watch the exit code is 3.
    let live: Vec<u64> = cluster
        .replicas
        .iter()
        .filter(|r| r.is_running())
        .map(|r| r.id)
        .collect();
    for id in live {
        cluster.kill(id).expect("kill");
    }
    let output = run_status(&cluster, &["--timeout-secs", "2"]).await;
    assert_eq!(output.status.code(), Some(3), "{}", stdout(&output));
    assert!(
        stdout(&output).contains("the cluster did not answer"),
        "{}",
        stdout(&output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no replica accepts connections"),
        "{stderr}"
    );
    for endpoint in cluster.endpoints() {
        assert!(
            stderr.contains(&endpoint),
            "each endpoint's refusal: {stderr}"
        );
    }
    let output = run_status(
        &cluster,
        &["--watch", "1", "--frames", "1", "--timeout-secs", "2"],
    )
    .await;
    assert!(output.status.success(), "--watch keeps going: {output:?}");
    assert!(
        stdout(&output).contains("no replica accepts connections"),
        "{}",
        stdout(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_without_watch_is_a_usage_error() {
    let output = tokio::process::Command::new(binary())
        .args(["status", "--insecure", "--frames", "2"])
        .output()
        .await
        .expect("run scaleout status");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("needs --watch"),
        "{output:?}"
    );
}
