//! Shipping the outbox to SSISDB, against real replica and worker processes, with
//! iridium_server in this process as the SQL Server (ephemeral port, own runtime and thread so
//! it can be stopped and restarted on the same port and data dir, like an AG failover seen
//! through the listener).
//!
//! The connection strings say `Encrypt=DANGER_PLAINTEXT`: iridium_server 0.1.13's TLS does not
//! work with tiberius (it negotiates TLS 1.3 and then sends session tickets in TDS framing), so
//! these tests run in plain text. Real deployments use Encrypt=true and ssisdb.ca.
//!
//! One test at a time (a lock): each starts three replicas.

#[path = "support/iridium.rs"]
mod iridium;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use scaleout::chaos::network::ProxiedNetwork;
use scaleout::chaos::proxy::LinkMode;
use scaleout::chaos::ssisdb::SsisdbTarget;
use scaleout::config::SsisdbSettings;
use scaleout::harness::{ClusterOptions, LocalCluster, WorkerOptions};
use scaleout::pb::v1::{self, JobState};
use scaleout::ssisdb;

use iridium::{Iridium, USER};
use tokio::sync::Mutex;
use tokio::time::Instant;

static SERIAL: Mutex<()> = Mutex::const_new(());
const WAIT: Duration = Duration::from_secs(120);
const PASSWORD: &str = "Right#Pass1";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_scaleout"))
}

struct Env {
    dir: tempfile::TempDir,
    password_file: PathBuf,
}

impl Env {
    fn new(password: &str) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let password_file = dir.path().join("ssisdb-password");
        std::fs::write(&password_file, format!("{password}\n")).expect("password file");
        Env { dir, password_file }
    }
    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("iridium")
    }
}

fn connection_string(port: u16) -> String {
    format!("Server=tcp:127.0.0.1,{port};Database=SSISDB;User Id={USER};Encrypt=DANGER_PLAINTEXT")
}

fn settings(port: u16, password_file: &Path) -> SsisdbSettings {
    SsisdbSettings {
        connection_string: Some(connection_string(port)),
        password_file: Some(password_file.to_path_buf()),
        connect_timeout_ms: 3_000,
        ..SsisdbSettings::default()
    }
}

fn start_cluster(port: u16, password_file: &Path, extra: &[&str]) -> LocalCluster {
    let mut overrides = vec![
        format!("ssisdb.connection_string={}", connection_string(port)),
        format!("ssisdb.password_file={}", password_file.display()),
        "ssisdb.connect_timeout_ms=3000".into(),
        "ssisdb.ship_interval_ms=100".into(),
        "workers.lease_interval_ms=3000".into(),
        "workers.expiry_check_interval_ms=100".into(),
    ];
    overrides.extend(extra.iter().map(|s| s.to_string()));
    let options = ClusterOptions {
        overrides,
        ..ClusterOptions::default()
    };
    LocalCluster::start(binary(), options).expect("start replicas")
}

fn shell(script: &str, max_attempts: u32) -> v1::JobSpec {
    v1::JobSpec {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        name: "test".into(),
        max_attempts,
        ..Default::default()
    }
}

/// The server at `port` as the chaos module's proxies take it.
fn target_at(port: u16, password_file: &Path) -> SsisdbTarget {
    SsisdbTarget {
        server: format!("127.0.0.1:{port}").parse().expect("address"),
        options: format!("Database=SSISDB;User Id={USER};Encrypt=DANGER_PLAINTEXT"),
        password_file: password_file.to_path_buf(),
    }
}

async fn sql(port: u16, password_file: &Path) -> ssisdb::SqlClient {
    ssisdb::connect(&settings(port, password_file))
        .await
        .expect("connect to iridium")
}

async fn rows(client: &mut ssisdb::SqlClient, query: &str) -> Vec<tiberius::Row> {
    client
        .query(query, &[])
        .await
        .expect(query)
        .into_first_result()
        .await
        .expect(query)
}

fn int(row: &tiberius::Row, i: usize) -> Option<i64> {
    row.try_get::<i64, _>(i)
        .ok()
        .flatten()
        .or_else(|| row.try_get::<i32, _>(i).ok().flatten().map(i64::from))
        .or_else(|| row.try_get::<u8, _>(i).ok().flatten().map(i64::from))
        .or_else(|| row.try_get::<bool, _>(i).ok().flatten().map(i64::from))
}

fn text(row: &tiberius::Row, i: usize) -> Option<String> {
    row.try_get::<&str, _>(i).ok().flatten().map(str::to_string)
}

async fn wait_terminal(client: &scaleout::client::Client, job_id: u64) -> v1::Job {
    let deadline = Instant::now() + WAIT;
    loop {
        let job = client.get_job(job_id, false).await.expect("get job");
        if matches!(
            JobState::try_from(job.state),
            Ok(JobState::Succeeded | JobState::Failed | JobState::Cancelled)
        ) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {job_id} did not finish: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn status_code(state: i32) -> i64 {
    match JobState::try_from(state) {
        Ok(JobState::Queued) => 1,
        Ok(JobState::PickedUp) => 2,
        Ok(JobState::Running) => 3,
        Ok(JobState::Failed) => 4,
        Ok(JobState::Succeeded) => 5,
        Ok(JobState::Cancelled) => 6,
        _ => 0,
    }
}

/// Waits until SSISDB shows every job in its final state with every attempt ended, and the
/// final state-change event of each job; returns the event ids.
async fn wait_shipped(client: &mut ssisdb::SqlClient, jobs: &[v1::Job]) -> Vec<i64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut done = true;
        for job in jobs {
            let q = format!("SELECT status FROM scaleout.jobs WHERE job_id = {}", job.id);
            let r = rows(client, &q).await;
            let status = r.first().and_then(|r| int(r, 0));
            let q = format!(
                "SELECT COUNT(*) FROM scaleout.event_messages WHERE job_id = {} AND event_kind = N'AttemptEnded'",
                job.id
            );
            let ended = rows(client, &q).await.first().and_then(|r| int(r, 0));
            if status != Some(status_code(job.state)) || ended != Some(job.attempts.len() as i64) {
                done = false;
            }
        }
        if done {
            let ids = rows(
                client,
                "SELECT event_id FROM scaleout.event_messages ORDER BY event_id",
            )
            .await;
            return ids.iter().filter_map(|r| int(r, 0)).collect();
        }
        assert!(Instant::now() < deadline, "SSISDB did not catch up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Compares jobs, tasks and task_attempts row by row with what the cluster reports.
async fn compare_rows(client: &mut ssisdb::SqlClient, jobs: &[v1::Job]) {
    for job in jobs {
        let r = rows(
            client,
            &format!(
                "SELECT job_id, state, status, attempt_count, max_attempts, command_line, created_ms \
                 FROM scaleout.jobs WHERE job_id = {}",
                job.id
            ),
        )
        .await;
        assert_eq!(r.len(), 1, "one jobs row for job {}", job.id);
        let row = &r[0];
        let state = JobState::try_from(job.state).expect("state");
        assert_eq!(
            int(row, 2),
            Some(status_code(job.state)),
            "job {} status",
            job.id
        );
        assert_eq!(
            text(row, 1).as_deref(),
            Some(match state {
                JobState::Succeeded => "succeeded",
                JobState::Failed => "failed",
                JobState::Cancelled => "cancelled",
                _ => "other",
            })
        );
        assert_eq!(int(row, 3), Some(job.attempts.len() as i64));
        assert_eq!(int(row, 6), Some(job.created_at_ms as i64));
        let spec = job.spec.as_ref().expect("spec");
        assert_eq!(int(row, 4), Some(i64::from(spec.max_attempts)));
        assert_eq!(text(row, 5), Some(spec.argv.join(" ")));

        let r = rows(
            client,
            &format!(
                "SELECT TaskId, JobId, Status, ExecutedCount, MaxExecutedCount, IsCancelled, \
                 CONVERT(NVARCHAR(30), CreatedTime, 126) FROM scaleout.internal_tasks WHERE TaskId = {}",
                job.id
            ),
        )
        .await;
        assert_eq!(r.len(), 1, "one task row for job {}", job.id);
        assert_eq!(int(&r[0], 1), Some(job.id as i64));
        assert_eq!(int(&r[0], 2), Some(status_code(job.state)));
        assert_eq!(int(&r[0], 3), Some(job.attempts.len() as i64));
        assert_eq!(int(&r[0], 5), Some(i64::from(state == JobState::Cancelled)));
        let created = text(&r[0], 6).expect("CreatedTime");
        assert_eq!(
            &created[..19],
            scaleout_time(job.created_at_ms).as_str(),
            "CreatedTime of job {}",
            job.id
        );

        let r = rows(
            client,
            &format!(
                "SELECT attempt_number, worker_agent_id, lease_token, started_ms, ended_ms, outcome, exit_code \
                 FROM scaleout.task_attempts WHERE task_id = {} ORDER BY attempt_number",
                job.id
            ),
        )
        .await;
        assert_eq!(
            r.len(),
            job.attempts.len(),
            "attempt rows of job {}",
            job.id
        );
        for (row, a) in r.iter().zip(&job.attempts) {
            assert_eq!(int(row, 0), Some(i64::from(a.number)));
            assert_eq!(text(row, 1), Some(a.worker_id.clone()));
            assert_eq!(int(row, 2), Some(a.lease_token as i64));
            assert_eq!(int(row, 3), Some(a.started_at_ms as i64));
            assert_eq!(int(row, 4), Some(a.ended_at_ms as i64));
            let outcome = v1::AttemptOutcome::try_from(a.outcome).expect("outcome");
            let expected = match outcome {
                v1::AttemptOutcome::Succeeded => "succeeded",
                v1::AttemptOutcome::Failed => "failed",
                v1::AttemptOutcome::Expired => "expired",
                v1::AttemptOutcome::Cancelled => "cancelled",
                _ => "none",
            };
            assert_eq!(
                text(row, 5).as_deref(),
                Some(expected),
                "attempt {} of job {}",
                a.number,
                job.id
            );
            assert_eq!(int(row, 6), a.exit_code.map(i64::from));
        }
        // Every job's events: one submit, and its final state change.
        let r = rows(
            client,
            &format!(
                "SELECT event_kind, message FROM scaleout.event_messages WHERE job_id = {} ORDER BY event_id",
                job.id
            ),
        )
        .await;
        let kinds: Vec<String> = r.iter().filter_map(|r| text(r, 0)).collect();
        assert_eq!(
            kinds.first().map(String::as_str),
            Some("JobSubmitted"),
            "job {}: {kinds:?}",
            job.id
        );
        assert_eq!(kinds.iter().filter(|k| *k == "JobSubmitted").count(), 1);
        assert_eq!(
            kinds.iter().filter(|k| *k == "AttemptStarted").count(),
            job.attempts.len()
        );
    }
}

fn scaleout_time(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64).expect("time");
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn assert_unique(ids: &[i64]) {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "duplicate event ids in SSISDB");
}

/// Waits until the outbox (on the replica that answers; it is replicated) is empty (everything shipped and acknowledged), then checks
/// that nothing is missing: the shipped cursor is the newest event in SSISDB, and every job has
/// exactly one LogLine event per stored log line.
async fn assert_drained(cluster: &LocalCluster, sql: &mut ssisdb::SqlClient, jobs: &[v1::Job]) {
    let client = cluster.client().expect("client");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        let status = client.cluster_status().await.expect("status");
        if status.outbox_events == 0 {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the outbox never drained: {} events left",
            status.outbox_events
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let newest = rows(sql, "SELECT MAX(event_id) FROM scaleout.event_messages")
        .await
        .first()
        .and_then(|r| int(r, 0));
    assert_eq!(
        newest,
        Some(status.outbox_shipped_up_to as i64),
        "the cursor is the newest shipped event"
    );
    for job in jobs {
        let lines = client
            .get_job_logs(job.id, 0, false)
            .await
            .expect("logs")
            .lines
            .len();
        let q = format!(
            "SELECT COUNT(*) FROM scaleout.event_messages WHERE job_id = {} AND event_kind = N'LogLine'",
            job.id
        );
        let shipped = rows(sql, &q).await.first().and_then(|r| int(r, 0));
        assert_eq!(
            shipped,
            Some(lines as i64),
            "log line events of job {}",
            job.id
        );
    }
}

/// Runs the standard mix: two successes, one failing once then retried, one cancelled while
/// running. Returns the finished jobs.
async fn run_mix(cluster: &LocalCluster, marker: &Path) -> Vec<v1::Job> {
    let client = cluster.client().expect("client");
    let mut ids = Vec::new();
    for script in ["echo hello; exit 0", "echo second >&2; exit 0"] {
        ids.push(
            client
                .submit_job(shell(script, 1), None)
                .await
                .expect("submit")
                .job_id,
        );
    }
    let retry = format!(
        "if [ -f {m} ]; then echo retried; exit 0; else touch {m}; echo failing; exit 3; fi",
        m = marker.display()
    );
    ids.push(
        client
            .submit_job(shell(&retry, 2), None)
            .await
            .expect("submit")
            .job_id,
    );
    let long = client
        .submit_job(shell("echo started; sleep 60", 1), None)
        .await
        .expect("submit")
        .job_id;
    let deadline = Instant::now() + WAIT;
    loop {
        let job = client.get_job(long, false).await.expect("get");
        if JobState::try_from(job.state) == Ok(JobState::Running) {
            break;
        }
        assert!(Instant::now() < deadline, "long job never ran: {job:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.cancel_job(long).await.expect("cancel");
    ids.push(long);
    let mut jobs = Vec::new();
    for id in ids {
        jobs.push(wait_terminal(&client, id).await);
    }
    jobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn install_schema_and_check_against_iridium() {
    let _serial = SERIAL.lock().await;
    let env = Env::new(PASSWORD);
    let server = Iridium::start(0, &env.data_dir(), PASSWORD).expect("iridium");
    let s = settings(server.port, &env.password_file);
    let report = ssisdb::check(&s).await;
    assert!(!report.is_ok());
    let text = report.to_string();
    assert!(
        text.contains("missing") && text.contains("install-schema"),
        "{text}"
    );
    ssisdb::install_schema(&s).await.expect("install");
    ssisdb::install_schema(&s)
        .await
        .expect("install twice (re-runnable)");
    let report = ssisdb::check(&s).await;
    assert!(report.is_ok(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_of_jobs_lands_row_by_row() {
    let _serial = SERIAL.lock().await;
    let env = Env::new(PASSWORD);
    let server = Iridium::start(0, &env.data_dir(), PASSWORD).expect("iridium");
    ssisdb::install_schema(&settings(server.port, &env.password_file))
        .await
        .expect("install");
    let mut cluster = start_cluster(server.port, &env.password_file, &[]);
    cluster.wait_for_leader(WAIT).await.expect("leader");
    let agent = cluster
        .start_worker(WorkerOptions::fast("w1"))
        .expect("worker");
    let jobs = run_mix(&cluster, &env.dir.path().join("marker")).await;
    let states: Vec<i32> = jobs.iter().map(|j| j.state).collect();
    assert_eq!(
        states,
        vec![
            JobState::Succeeded as i32,
            JobState::Succeeded as i32,
            JobState::Succeeded as i32,
            JobState::Cancelled as i32
        ]
    );
    assert_eq!(jobs[2].attempts.len(), 2, "the failing job is retried once");

    let mut sql = sql(server.port, &env.password_file).await;
    let ids = wait_shipped(&mut sql, &jobs).await;
    assert_unique(&ids);
    compare_rows(&mut sql, &jobs).await;
    assert_drained(&cluster, &mut sql, &jobs).await;

    let w = rows(
        &mut sql,
        "SELECT WorkerAgentId, IsEnabled, DisplayName, MachineName FROM scaleout.catalog_worker_agents",
    )
    .await;
    assert_eq!(w.len(), 1);
    assert_eq!(text(&w[0], 0), Some(agent.to_string()));
    // Every replica's heartbeat row.
    let deadline = Instant::now() + WAIT;
    loop {
        let r = rows(
            &mut sql,
            "SELECT replica_id, role FROM scaleout.replicas ORDER BY replica_id",
        )
        .await;
        let leaders = r
            .iter()
            .filter(|r| text(r, 1).as_deref() == Some("leader"))
            .count();
        if r.len() == 3 && leaders == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "replica rows: {}", r.len());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(cluster);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sql_server_down_for_20s_loses_and_duplicates_nothing() {
    let _serial = SERIAL.lock().await;
    let env = Env::new(PASSWORD);
    let server = Iridium::start(0, &env.data_dir(), PASSWORD).expect("iridium");
    let port = server.port;
    ssisdb::install_schema(&settings(port, &env.password_file))
        .await
        .expect("install");
    let mut cluster = start_cluster(port, &env.password_file, &[]);
    cluster.wait_for_leader(WAIT).await.expect("leader");
    cluster
        .start_worker(WorkerOptions::fast("w1"))
        .expect("worker");
    let client = cluster.client().expect("client");
    let first = client
        .submit_job(shell("echo before", 1), None)
        .await
        .expect("submit")
        .job_id;
    let first = wait_terminal(&client, first).await;
    // Stop between shipped batches: iridium rewrites its whole checkpoint file in place on
    // every statement, so stopping it in the middle of a write can lose its data dir, which
    // is iridium's fault, not what this test is about. Replica heartbeat rows still come
    // every ~10 s; nothing else is written once the outbox is empty.
    {
        let mut sql = sql(port, &env.password_file).await;
        assert_drained(&cluster, &mut sql, std::slice::from_ref(&first)).await;
    }
    server.stop();
    let outage = Instant::now();
    // Dispatch goes on while SSISDB is down.
    let mut during = Vec::new();
    for i in 0..5 {
        let id = client
            .submit_job(shell(&format!("echo during {i}"), 1), None)
            .await
            .expect("submit during outage")
            .job_id;
        during.push(wait_terminal(&client, id).await);
    }
    assert!(during.iter().all(|j| j.state == JobState::Succeeded as i32));
    let left = Duration::from_secs(20).saturating_sub(outage.elapsed());
    tokio::time::sleep(left).await; // the required 20 s outage
    let server =
        Iridium::start(port, &env.data_dir(), PASSWORD).expect("iridium again, same port and dir");

    let mut jobs = vec![first];
    jobs.extend(during);
    let mut sql = sql(server.port, &env.password_file).await;
    let ids = wait_shipped(&mut sql, &jobs).await;
    assert_unique(&ids);
    compare_rows(&mut sql, &jobs).await;
    assert_drained(&cluster, &mut sql, &jobs).await;
    drop(cluster);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_leader_mid_shipping() {
    let _serial = SERIAL.lock().await;
    let env = Env::new(PASSWORD);
    let server = Iridium::start(0, &env.data_dir(), PASSWORD).expect("iridium");
    ssisdb::install_schema(&settings(server.port, &env.password_file))
        .await
        .expect("install");
    // Small batches, so a kill lands between batches and inside one.
    let mut cluster = start_cluster(server.port, &env.password_file, &["ssisdb.batch_events=5"]);
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("leader");
    cluster
        .start_worker(WorkerOptions::fast("w1"))
        .expect("worker");
    let client = cluster.client().expect("client");
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            client
                .submit_job(
                    shell(&format!("for n in 1 2 3; do echo line $n of {i}; done"), 1),
                    None,
                )
                .await
                .expect("submit")
                .job_id,
        );
    }
    cluster.kill(leader).expect("kill -9 the leader");
    cluster.wait_for_leader(WAIT).await.expect("a new leader");
    let client = cluster.client().expect("client");
    for i in 0..5 {
        ids.push(
            client
                .submit_job(shell(&format!("echo after {i}"), 1), None)
                .await
                .expect("submit")
                .job_id,
        );
    }
    let mut jobs = Vec::new();
    for id in ids {
        jobs.push(wait_terminal(&client, id).await);
    }
    let mut sql = sql(server.port, &env.password_file).await;
    let event_ids = wait_shipped(&mut sql, &jobs).await;
    assert_unique(&event_ids);
    compare_rows(&mut sql, &jobs).await;
    assert_drained(&cluster, &mut sql, &jobs).await;
    // Each job's log lines are there exactly once.
    for job in &jobs {
        let r = rows(
            &mut sql,
            &format!(
                "SELECT log_sequence FROM scaleout.event_messages WHERE job_id = {} AND event_kind = N'LogLine'",
                job.id
            ),
        )
        .await;
        let mut seqs: Vec<i64> = r.iter().filter_map(|r| int(r, 0)).collect();
        let n = seqs.len();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(
            seqs.len(),
            n,
            "log line events of job {} duplicated",
            job.id
        );
    }
    drop(cluster);
    server.stop();
}

/// A leader cut off from its peers, but not from SQL, for 25 s keeps believing it leads and
/// keeps shipping the state it had (its ack never commits, so it writes the same batch again
/// after every commit timeout), while the new leader ships the same jobs ending. Once healed
/// and drained, every row shows the final state and every event is there once: the fencing row
/// refuses the old leader once the new one has shipped, and no row goes back to an older state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_peers_never_turns_rows_back() {
    let _serial = SERIAL.lock().await;
    let env = Env::new(PASSWORD);
    let server = Iridium::start(0, &env.data_dir(), PASSWORD).expect("iridium");
    ssisdb::install_schema(&settings(server.port, &env.password_file))
        .await
        .expect("install");
    let target = target_at(server.port, &env.password_file);
    let sql_link = target.proxy().await.expect("SQL proxy");
    let (network, layout) = ProxiedNetwork::start(3).await.expect("peer proxies");
    let overrides = vec![
        format!(
            "ssisdb.connection_string={}",
            connection_string(sql_link.addr().port())
        ),
        format!("ssisdb.password_file={}", env.password_file.display()),
        "ssisdb.connect_timeout_ms=3000".into(),
        "ssisdb.ship_interval_ms=100".into(),
        "workers.lease_interval_ms=3000".into(),
        "workers.expiry_check_interval_ms=100".into(),
    ];
    let options = ClusterOptions {
        overrides,
        ..ClusterOptions::default()
    };
    let mut cluster =
        LocalCluster::configure_with(binary(), &env.dir.path().join("cluster"), options, layout)
            .expect("configure");
    network.release_ports();
    cluster.start_all().expect("start replicas");
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("leader");
    cluster
        .start_worker(WorkerOptions::fast("w1"))
        .expect("worker");
    let client = cluster.client().expect("client");
    scaleout::harness::wait_for_workers(&client, 1, WAIT)
        .await
        .expect("worker registered");

    // Events pile up unshipped on the leader while its jobs start.
    sql_link.set(LinkMode::Blackhole);
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            client
                .submit_job(
                    shell(&format!("echo start {i}; sleep 4; echo end {i}"), 3),
                    None,
                )
                .await
                .expect("submit")
                .job_id,
        );
    }
    let deadline = Instant::now() + WAIT;
    for id in &ids {
        while client.get_job(*id, false).await.expect("get job").state != JobState::Running as i32 {
            assert!(Instant::now() < deadline, "job {id} never ran");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The leader loses its peers, not SQL: it still ships what it has.
    network.isolate(leader, LinkMode::Refuse);
    sql_link.set(LinkMode::Pass);
    let cut = Instant::now();
    let others: Vec<String> = cluster
        .replicas
        .iter()
        .filter(|r| r.id != leader)
        .map(|r| r.api_addr.clone())
        .collect();
    let majority = scaleout::client::Client::new(&others, cluster.client_security().expect("tls"))
        .expect("client of the majority");
    let mut jobs = Vec::new();
    for id in &ids {
        jobs.push(wait_terminal(&majority, *id).await);
    }
    // Long enough for the old leader's ack to time out and its batch to be written again.
    tokio::time::sleep(Duration::from_secs(25).saturating_sub(cut.elapsed())).await;
    network.heal();

    // Once the outbox is drained, the last batch naming each job carried its final state; the
    // old leader may still have written after it, which the rows must not show.
    let mut sql = sql(server.port, &env.password_file).await;
    assert_drained(&cluster, &mut sql, &jobs).await;
    compare_rows(&mut sql, &jobs).await;
    let event_ids: Vec<i64> = rows(&mut sql, "SELECT event_id FROM scaleout.event_messages")
        .await
        .iter()
        .filter_map(|r| int(r, 0))
        .collect();
    assert_unique(&event_ids);
    let fence = rows(&mut sql, "SELECT term, replica_id FROM scaleout.shipper").await;
    assert_eq!(fence.len(), 1, "one fencing row");
    assert_ne!(
        int(&fence[0], 1),
        Some(leader as i64),
        "the fence names the new leader"
    );
    drop(cluster);
    server.stop();
}

/// Retention with SSISDB: SSISDB is the long-term history, so a finished job leaves the
/// replicas only once every event naming it is shipped. While the listener is dark, nothing
/// is removed; once it is back, the oldest finished jobs beyond the cap go, and SSISDB still
/// shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_waits_for_ssisdb_to_hold_a_jobs_events() {
    let _serial = SERIAL.lock().await;
    let env = Env::new(PASSWORD);
    let server = Iridium::start(0, &env.data_dir(), PASSWORD).expect("iridium");
    ssisdb::install_schema(&settings(server.port, &env.password_file))
        .await
        .expect("install");
    let target = target_at(server.port, &env.password_file);
    let sql_link = target.proxy().await.expect("SQL proxy");
    let cap = 100u64;
    let mut cluster = start_cluster(
        sql_link.addr().port(),
        &env.password_file,
        &[
            &format!("retention.max_finished_jobs={cap}"),
            "retention.sweep_interval_ms=200",
        ],
    );
    cluster.wait_for_leader(WAIT).await.expect("leader");
    cluster
        .start_worker(WorkerOptions::fast("w1"))
        .expect("worker");
    let client = cluster.client().expect("client");
    sql_link.set(LinkMode::Refuse);
    let mut ids = Vec::new();
    for i in 0..cap + 10 {
        ids.push(
            client
                .submit_job(shell(&format!("echo {i}"), 1), None)
                .await
                .expect("submit")
                .job_id,
        );
    }
    for id in &ids {
        wait_terminal(&client, *id).await;
    }
    // Many sweeps pass while SSISDB is dark: every job is still held.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = client.list_all_jobs(None, false).await.expect("list").len() as u64;
    assert_eq!(
        held,
        cap + 10,
        "no job leaves before its events are in SSISDB"
    );

    sql_link.set(LinkMode::Pass);
    let deadline = Instant::now() + WAIT;
    loop {
        let held = client.list_all_jobs(None, false).await.expect("list").len() as u64;
        if held == cap {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "retention never removed: {held} held"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let error = client
        .get_job(ids[0], false)
        .await
        .expect_err("the oldest finished job was removed");
    assert!(
        error.to_string().contains("removed by retention"),
        "{error}"
    );
    // SSISDB keeps what the replicas forgot.
    let mut sql = sql(server.port, &env.password_file).await;
    let r = rows(
        &mut sql,
        &format!("SELECT status FROM scaleout.jobs WHERE job_id = {}", ids[0]),
    )
    .await;
    assert_eq!(r.first().and_then(|row| int(row, 0)), Some(5));
    drop(cluster);
    server.stop();
}

async fn wait_log(cluster: &LocalCluster, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        for r in &cluster.replicas {
            let log = std::fs::read_to_string(&r.log_path).unwrap_or_default();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
        }
        assert!(Instant::now() < deadline, "no replica logged {needle:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn dispatch_still_works(cluster: &LocalCluster) {
    let client = cluster.client().expect("client");
    let id = client
        .submit_job(shell("echo still dispatching", 1), None)
        .await
        .expect("submit")
        .job_id;
    let job = wait_terminal(&client, id).await;
    assert_eq!(job.state, JobState::Succeeded as i32);
}

/// A cluster with a worker, shown to dispatch whatever its SSISDB does.
async fn dispatching_cluster(port: u16, password_file: &Path) -> LocalCluster {
    let mut cluster = start_cluster(port, password_file, &[]);
    cluster.wait_for_leader(WAIT).await.expect("leader");
    cluster
        .start_worker(WorkerOptions::fast("w1"))
        .expect("worker");
    dispatch_still_works(&cluster).await;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_password_missing_schema_and_unreachable_are_clear() {
    let _serial = SERIAL.lock().await;
    // Wrong password.
    let env = Env::new("not-the-password");
    let server = Iridium::start(0, &env.data_dir(), PASSWORD).expect("iridium");
    let report = ssisdb::check(&settings(server.port, &env.password_file)).await;
    assert!(!report.is_ok());
    let text = report.to_string();
    assert!(
        text.contains("login failed") && text.contains("ssisdb.password_file"),
        "{text}"
    );
    let cluster = dispatching_cluster(server.port, &env.password_file).await;
    let line = wait_log(&cluster, "SSISDB login failed").await;
    assert!(line.contains("ssisdb.password_file"), "{line}");
    drop(cluster);
    server.stop();

    // Missing schema (right password, nothing installed).
    let env = Env::new(PASSWORD);
    let server = Iridium::start(0, &env.data_dir(), PASSWORD).expect("iridium");
    let text = ssisdb::check(&settings(server.port, &env.password_file))
        .await
        .to_string();
    assert!(
        text.contains("scaleout.event_messages") && text.contains("install-schema"),
        "{text}"
    );
    let cluster = dispatching_cluster(server.port, &env.password_file).await;
    let line = wait_log(&cluster, "install-schema").await;
    assert!(line.contains("missing"), "{line}");
    drop(cluster);

    // Unreachable listener: a port nobody listens on.
    let port = scaleout::harness::free_ports(1).expect("port")[0];
    let text = ssisdb::check(&settings(port, &env.password_file))
        .await
        .to_string();
    assert!(
        text.contains("unreachable") && text.contains(&format!("127.0.0.1:{port}")),
        "{text}"
    );
    let cluster = dispatching_cluster(port, &env.password_file).await;
    let line = wait_log(&cluster, "is unreachable").await;
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    drop(cluster);
    server.stop();
}

/// A queue with a worker, three jobs (one ran, logged and succeeded) and their events.
/// A queue and the outbox events it recorded (which the store, not the queue, keeps).
type QueueWithEvents = (
    scaleout::queue::QueueState,
    Vec<scaleout::queue::OutboxEvent>,
);

fn queue_with_events() -> QueueWithEvents {
    queue_before_and_after_completion().1
}

/// The same queue just before its task completes (job running) and after.
fn queue_before_and_after_completion() -> (QueueWithEvents, QueueWithEvents) {
    use scaleout::queue::{
        ApplyContext, AttemptOutcome, Command, CommandOutput, JobSpec, LeaseRef, LogLevel, LogLine,
        QueueState, WorkerInfo,
    };
    /// The queue, the events its change sets handed to the store, and the last log index.
    #[derive(Clone)]
    struct Recorded(QueueState, Vec<scaleout::queue::OutboxEvent>, u64);
    impl Recorded {
        fn apply(&mut self, command: Command) -> CommandOutput {
            self.2 += 1;
            let ctx = ApplyContext::unbounded(self.2, 1_700_000_000_000 + self.2);
            let output = self.0.apply(&ctx, command).expect("apply");
            self.1.extend(self.0.take_changes().outbox_written);
            output
        }
    }
    let mut q = Recorded(QueueState::new(), Vec::new(), 0);
    let worker = uuid::Uuid::new_v4();
    q.apply(Command::RegisterWorker {
        info: WorkerInfo {
            id: worker,
            display_name: "w".into(),
            description: String::new(),
            machine_name: "host".into(),
            tags: vec![],
            max_tasks: 4,
            version: "test".into(),
        },
        auto_enable: true,
    });
    for _ in 0..3 {
        q.apply(Command::SubmitJob {
            spec: JobSpec {
                argv: vec!["/bin/true".into()],
                max_attempts: 1,
                ..JobSpec::default()
            },
            idempotency_key: None,
        });
    }
    let CommandOutput::Acquired { tasks } = q.apply(Command::AcquireTasks {
        worker,
        free_slots: 1,
        lease_ms: 30_000,
        cpu_percent_x10: 0,
        free_memory_mb: 4096,
        max_cpu_percent_x10: 1000,
        min_free_memory_mb: 0,
        request_id: None,
    }) else {
        panic!("acquire");
    };
    let lease = LeaseRef {
        job_id: tasks[0].job_id,
        token: tasks[0].token,
    };
    q.apply(Command::AppendLogs {
        worker,
        lease,
        lines: vec![LogLine {
            at_ms: 1_700_000_000_000,
            level: LogLevel::Info,
            text: "hello".into(),
        }],
    });
    let running = q.clone();
    q.apply(Command::CompleteTask {
        worker,
        lease,
        outcome: AttemptOutcome::Succeeded,
        exit_code: Some(0),
        error: String::new(),
    });
    ((running.0, running.1), (q.0, q.1))
}

/// (status, outcome) of the one row `query` reads.
async fn job_and_attempt(
    client: &mut ssisdb::SqlClient,
    query: &str,
) -> Option<(Option<i64>, Option<String>)> {
    let r = rows(client, query).await;
    r.first().map(|row| (int(row, 0), text(row, 1)))
}

/// The fence, one writer at a time: a leader of an older term is refused once a newer term has
/// shipped (its batch never opens), and a batch read from an older state, even in the current
/// term, leaves newer rows as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_term_or_an_older_state_never_overwrites_rows() {
    let _serial = SERIAL.lock().await;
    let env = Env::new(PASSWORD);
    let server = Iridium::start(0, &env.data_dir(), PASSWORD).expect("iridium");
    let settings = settings(server.port, &env.password_file);
    ssisdb::install_schema(&settings).await.expect("install");
    let (running, ended) = queue_before_and_after_completion();
    let job = ended.1[1]
        .kind
        .job()
        .expect("the first submit names its job");
    let fence = |term| ssisdb::Fence {
        term,
        replica: term,
    };
    let mut client = sql(server.port, &env.password_file).await;
    let status_query = format!(
        "SELECT j.status, a.outcome FROM scaleout.jobs j, scaleout.task_attempts a \
         WHERE j.job_id = {job} AND a.task_id = {job}"
    );
    let status_query = status_query.as_str();

    ssisdb::write_events(&mut client, &running.0, running.1.clone(), fence(1), 1000)
        .await
        .expect("the leader of term 1 ships the running job");
    // Picked up (2), its attempt not ended.
    assert_eq!(
        job_and_attempt(&mut client, status_query).await,
        Some((Some(2), None))
    );
    ssisdb::write_events(&mut client, &ended.0, ended.1.clone(), fence(2), 1000)
        .await
        .expect("the leader of term 2 ships it ended");
    let done = Some((Some(5), Some("succeeded".to_string())));
    assert_eq!(job_and_attempt(&mut client, status_query).await, done);

    // The deposed leader of term 1 writes its batch again, as after an ack that timed out.
    let refused =
        ssisdb::write_events(&mut client, &running.0, running.1.clone(), fence(1), 1000).await;
    assert!(
        matches!(
            refused,
            Err(ssisdb::SsisdbError::Superseded {
                term: 1,
                newer_term: 2,
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(job_and_attempt(&mut client, status_query).await, done);

    // An older state under the current term (it cannot happen; the rows are guarded anyway).
    ssisdb::write_events(&mut client, &running.0, running.1.clone(), fence(2), 1000)
        .await
        .expect("the same term passes the fence");
    assert_eq!(
        job_and_attempt(&mut client, status_query).await,
        done,
        "row_version kept the newer row"
    );
    let events = rows(&mut client, "SELECT COUNT(*) FROM scaleout.event_messages")
        .await
        .first()
        .and_then(|r| int(r, 0));
    assert_eq!(events, Some(ended.1.len() as i64), "each event once");
    drop(client);
    server.stop();
}

/// A leader that wrote a batch and died before its ack committed leaves the cursor behind; the
/// next leader writes the same events again. SSISDB must end with each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_written_twice_lands_once() {
    let _serial = SERIAL.lock().await;
    let env = Env::new(PASSWORD);
    let server = Iridium::start(0, &env.data_dir(), PASSWORD).expect("iridium");
    let settings = settings(server.port, &env.password_file);
    ssisdb::install_schema(&settings).await.expect("install");
    let (queue, queue_events) = queue_with_events();
    let made = queue_events.len();
    assert_eq!(made, queue.outbox_len());
    assert_eq!(
        made, 9,
        "register, 3 submits, lease (2), a log line, completion (2)"
    );
    let mut client = sql(server.port, &env.password_file).await;
    let fence = ssisdb::Fence {
        term: 1,
        replica: 1,
    };
    let first = ssisdb::write_events(&mut client, &queue, queue_events.clone(), fence, 1000)
        .await
        .expect("first write");
    let again = ssisdb::write_events(&mut client, &queue, queue_events.clone(), fence, 1000)
        .await
        .expect("the same events again");
    assert_eq!((first, again), (made, made));
    for (table, expected) in [
        ("event_messages", made as i64),
        ("jobs", 3),
        ("task_attempts", 1),
        ("worker_agents", 1),
    ] {
        let q = format!("SELECT COUNT(*) FROM scaleout.{table}");
        let n = rows(&mut client, &q).await.first().and_then(|r| int(r, 0));
        assert_eq!(n, Some(expected), "{table}");
    }
    let ids: Vec<i64> = rows(&mut client, "SELECT event_id FROM scaleout.event_messages")
        .await
        .iter()
        .filter_map(|r| int(r, 0))
        .collect();
    let expected: Vec<i64> = queue_events.iter().map(|e| e.id as i64).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, expected, "exactly the outbox's events");
    drop(client);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_lines_sent_while_no_quorum_are_stored_and_shipped_once() {
    let _serial = SERIAL.lock().await;
    let env = Env::new(PASSWORD);
    let server = Iridium::start(0, &env.data_dir(), PASSWORD).expect("iridium");
    ssisdb::install_schema(&settings(server.port, &env.password_file))
        .await
        .expect("install");
    let mut cluster = start_cluster(server.port, &env.password_file, &[]);
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("leader");
    cluster
        .start_worker(WorkerOptions::fast("w1"))
        .expect("worker");
    let client = cluster.client().expect("client").with_deadline(WAIT);
    let go = env.dir.path().join("go");
    // Prints its three lines once the test says so (both followers paused by then).
    let script = format!(
        "while [ ! -e {go} ]; do sleep 0.1; done; \
         echo \"line-1 $SCALEOUT_ATTEMPT\"; echo \"line-2 $SCALEOUT_ATTEMPT\"; \
         echo \"line-3 $SCALEOUT_ATTEMPT\"; sleep 1",
        go = go.display()
    );
    let job = client
        .submit_job(shell(&script, 3), None)
        .await
        .expect("submit")
        .job_id;
    let deadline = Instant::now() + WAIT;
    while client.get_job(job, false).await.expect("get").state != JobState::Running as i32 {
        assert!(Instant::now() < deadline, "job {job} never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    for id in &followers {
        cluster.pause(*id, true).expect("SIGSTOP");
    }
    std::fs::write(&go, "").expect("go");
    // The leader takes the lines but cannot commit them: the worker's calls time out, it
    // retries, then spools and re-sends. One follower resumes first: its log is shorter than
    // the leader's, so whoever leads next holds the leader's copies and commits them, beside
    // the re-sends.
    tokio::time::sleep(Duration::from_secs(12)).await;
    cluster.pause(followers[0], false).expect("SIGCONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.pause(followers[1], false).expect("SIGCONT");
    let done = wait_terminal(&client, job).await;
    let logs = client
        .get_job_logs(job, 0, false)
        .await
        .expect("logs")
        .lines;
    let mut seen: BTreeMap<(u32, String), usize> = BTreeMap::new();
    for line in &logs {
        let text = line
            .line
            .as_ref()
            .map(|l| l.text.clone())
            .unwrap_or_default();
        if text.starts_with("line-") {
            *seen.entry((line.attempt, text)).or_default() += 1;
        }
    }
    assert!(!seen.is_empty(), "no line stored: {logs:?}");
    for ((attempt, text), count) in &seen {
        assert_eq!(
            *count, 1,
            "attempt {attempt}'s {text:?} stored {count} times: {logs:?}"
        );
    }
    // Every line an attempt printed is there (the attempt that succeeded printed all three).
    assert_eq!(done.state, JobState::Succeeded as i32, "{done:?}");
    let last = done.attempts.len() as u32;
    for n in 1..=3 {
        assert!(
            seen.contains_key(&(last, format!("line-{n} {last}"))),
            "line-{n} of attempt {last} missing: {logs:?}"
        );
    }
    // SSISDB holds each stored line once.
    let mut sql = sql(server.port, &env.password_file).await;
    assert_drained(&cluster, &mut sql, &[done]).await;
    let r = rows(
        &mut sql,
        &format!(
            "SELECT log_sequence FROM scaleout.event_messages WHERE job_id = {job} AND event_kind = N'LogLine'"
        ),
    )
    .await;
    let mut seqs: Vec<i64> = r.iter().filter_map(|r| int(r, 0)).collect();
    let n = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "log line events duplicated in SSISDB");
    drop(cluster);
    server.stop();
}

/// A replica that loses office and later leads again takes up its duties again, in its new
/// term: the old term's shipper is gone (SSISDB's fence has seen a newer term since, and would
/// refuse it), and a new one ships under the new term. No other test has a replica lead twice:
/// a leader loop that kept the old term's duties after losing office passed them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_leads_again_ships_again_in_its_new_term() {
    let _serial = SERIAL.lock().await;
    let env = Env::new(PASSWORD);
    let server = Iridium::start(0, &env.data_dir(), PASSWORD).expect("iridium");
    ssisdb::install_schema(&settings(server.port, &env.password_file))
        .await
        .expect("install");
    let mut cluster = start_cluster(server.port, &env.password_file, &[]);
    let (first, first_term) = cluster.wait_for_leader(WAIT).await.expect("leader");
    cluster
        .start_worker(WorkerOptions::fast("w1"))
        .expect("worker");
    let mut sql = sql(server.port, &env.password_file).await;
    let mut jobs = vec![run_one(&cluster, "in the first term").await];
    wait_shipped(&mut sql, &jobs).await;
    assert_eq!(fence(&mut sql).await, (first_term, first));

    // Another replica leads, and ships a job of its own term.
    let (second, second_term) = depose(&cluster, first).await;
    jobs.push(run_one(&cluster, "in the second term").await);
    wait_shipped(&mut sql, &jobs).await;
    assert_eq!(fence(&mut sql).await, (second_term, second));

    // Leaders other than the first are deposed until the first leads again.
    let deadline = Instant::now() + WAIT;
    let mut leader = second;
    let term = loop {
        let (next, term) = depose(&cluster, leader).await;
        if next == first {
            break term;
        }
        assert!(Instant::now() < deadline, "replica {first} never led again");
        leader = next;
    };
    jobs.push(run_one(&cluster, "when the first leads again").await);
    wait_shipped(&mut sql, &jobs).await;
    assert_eq!(
        fence(&mut sql).await,
        (term, first),
        "replica {first} ships under its new term"
    );
    drop(cluster);
    server.stop();
}

/// Submits a job that echoes `text` and waits for it to end.
async fn run_one(cluster: &LocalCluster, text: &str) -> v1::Job {
    let client = cluster.client().expect("client");
    let id = client
        .submit_job(shell(&format!("echo {text}"), 1), None)
        .await
        .expect("submit")
        .job_id;
    wait_terminal(&client, id).await
}

/// SSISDB's fencing row: (term, replica) of the newest shipper it has seen.
async fn fence(sql: &mut ssisdb::SqlClient) -> (u64, u64) {
    let fence = rows(sql, "SELECT term, replica_id FROM scaleout.shipper").await;
    assert_eq!(fence.len(), 1, "one fencing row");
    let at = |i| int(&fence[0], i).and_then(|n| u64::try_from(n).ok());
    (at(0).expect("term"), at(1).expect("replica"))
}

/// Pauses `leader` until the other replicas agree on another leader, resumes it, and waits
/// until every replica agrees; returns (leader, term).
async fn depose(cluster: &LocalCluster, leader: u64) -> (u64, u64) {
    cluster.pause(leader, true).expect("pause the leader");
    let deadline = Instant::now() + WAIT;
    loop {
        let mut seen = Vec::new();
        for replica in cluster.replicas.iter().filter(|r| r.id != leader) {
            if let Ok(status) = cluster.status_of(replica.id).await {
                seen.push(status.leader_id);
            }
        }
        let agreed = seen.len() == cluster.replicas.len() - 1
            && seen.windows(2).all(|pair| pair[0] == pair[1]);
        if agreed && seen[0].is_some_and(|id| id != leader) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new leader while {leader} was paused"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.pause(leader, false).expect("resume");
    cluster
        .wait_for_leader(WAIT)
        .await
        .expect("an agreed leader")
}

/// The arguments of `scaleout.submit_job`, in its order.
#[derive(Default)]
struct SubmitArgs<'a> {
    name: &'a str,
    argv: Option<&'a str>,
    package: Option<&'a str>,
    parameters: Option<&'a str>,
    max_attempts: Option<i32>,
    request_key: Option<&'a str>,
}

/// `EXEC scaleout.submit_job …` as a SQL Agent step would run it; returns the request id.
/// Arguments go by position: iridium binds EXEC arguments by position even when named (SQL
/// Server by name; positional calls work on both).
async fn submit_from_sql(sql: &mut ssisdb::SqlClient, args: SubmitArgs<'_>) -> i64 {
    let quoted = |v: Option<&str>| {
        v.map_or("NULL".to_string(), |v| {
            format!("N'{}'", v.replace('\'', "''"))
        })
    };
    let query = format!(
        "EXEC scaleout.submit_job {}, {}, {}, {}, {}, NULL, NULL, {}",
        quoted(Some(args.name)),
        quoted(args.argv),
        quoted(args.package),
        quoted(args.parameters),
        args.max_attempts
            .map_or("NULL".to_string(), |n| n.to_string()),
        quoted(args.request_key),
    );
    let rows = rows(sql, &query).await;
    rows.first()
        .and_then(|row| int(row, 0))
        .unwrap_or_else(|| panic!("{query} returned no request id"))
}

/// (request state, job id, error message) of a request row.
async fn request_row(
    sql: &mut ssisdb::SqlClient,
    request_id: i64,
) -> (String, Option<i64>, Option<String>) {
    let found = rows(
        sql,
        &format!(
            "SELECT state, job_id, error_message FROM scaleout.job_requests \
             WHERE request_id = {request_id}"
        ),
    )
    .await;
    let row = found.first().expect("the request row");
    (text(row, 0).expect("state"), int(row, 1), text(row, 2))
}

/// Waits until the request is no longer pending.
async fn wait_processed(
    sql: &mut ssisdb::SqlClient,
    request_id: i64,
) -> (String, Option<i64>, Option<String>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let row = request_row(sql, request_id).await;
        if row.0 != "pending" {
            return row;
        }
        assert!(
            Instant::now() < deadline,
            "request {request_id} still pending"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Job intake from T-SQL: a request row becomes a job that runs, the row shows the job id and,
/// through scaleout.job_request_status and the catalog-shaped views, its final state and log;
/// a malformed request gets an error on its own row and nothing else is affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_submitted_from_t_sql_runs_and_its_row_follows_it() {
    let _serial = SERIAL.lock().await;
    let env = Env::new(PASSWORD);
    let server = Iridium::start(0, &env.data_dir(), PASSWORD).expect("iridium");
    ssisdb::install_schema(&settings(server.port, &env.password_file))
        .await
        .expect("install");
    let mut cluster = start_cluster(
        server.port,
        &env.password_file,
        &["ssisdb.intake_interval_ms=200"],
    );
    cluster.wait_for_leader(WAIT).await.expect("leader");
    let mut sql = sql(server.port, &env.password_file).await;
    let bad = SubmitArgs {
        name: "bad",
        argv: Some("echo not json"),
        request_key: Some("bad-1"),
        ..SubmitArgs::default()
    };
    let bad = submit_from_sql(&mut sql, bad).await;
    let good = SubmitArgs {
        name: "from sql",
        argv: Some(r#"["/bin/sh","-c","echo hello from t-sql"]"#),
        parameters: Some(r#"{"Date":"2026-12-06"}"#),
        max_attempts: Some(2),
        ..SubmitArgs::default()
    };
    let good = submit_from_sql(&mut sql, good).await;
    let zero = SubmitArgs {
        name: "zero",
        package: Some(r"\\share\load.dtsx"),
        max_attempts: Some(0),
        ..SubmitArgs::default()
    };
    let zero = submit_from_sql(&mut sql, zero).await;

    let (state, job, error) = wait_processed(&mut sql, bad).await;
    assert_eq!((state.as_str(), job), ("rejected", None));
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("@argv is not a JSON array")),
        "{error:?}"
    );
    let (state, _, error) = wait_processed(&mut sql, zero).await;
    assert_eq!(state, "rejected");
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("@max_attempts is 0")),
        "{error:?}"
    );
    let (state, job, error) = wait_processed(&mut sql, good).await;
    assert_eq!((state.as_str(), error), ("submitted", None));
    let job_id = job.expect("the job id on the row");

    cluster
        .start_worker(WorkerOptions::fast("w1"))
        .expect("worker");
    let client = cluster.client().expect("client");
    let job = wait_terminal(&client, u64::try_from(job_id).expect("id")).await;
    assert_eq!(job.state, JobState::Succeeded as i32);
    let spec = job.spec.as_ref().expect("spec");
    assert_eq!((spec.name.as_str(), spec.max_attempts), ("from sql", 2));
    assert_eq!(
        spec.params.get("Date").map(String::as_str),
        Some("2026-12-06")
    );
    let all = client.list_jobs(None, 0, 100, false).await.expect("list");
    assert_eq!(all.jobs.len(), 1, "only the valid request became a job");

    // The request's view and the catalog shapes follow the job to its end.
    wait_shipped(&mut sql, std::slice::from_ref(&job)).await;
    let status = rows(
        &mut sql,
        &format!(
            "SELECT request_state, job_state, job_status FROM scaleout.job_request_status \
             WHERE request_id = {good}"
        ),
    )
    .await;
    assert_eq!(
        (text(&status[0], 0), text(&status[0], 1), int(&status[0], 2)),
        (Some("submitted".into()), Some("succeeded".into()), Some(5))
    );
    // Nullable DATETIME2 values do not travel from iridium to tiberius ("invalid token type"),
    // so the times are checked for presence.
    let execution = rows(
        &mut sql,
        &format!(
            "SELECT status, package_name, CASE WHEN start_time IS NULL THEN 0 ELSE 1 END, \
             CASE WHEN end_time IS NULL THEN 0 ELSE 1 END FROM scaleout.catalog_executions \
             WHERE execution_id = {job_id}"
        ),
    )
    .await;
    assert_eq!(execution.len(), 1);
    assert_eq!(int(&execution[0], 0), Some(7), "succeeded is status 7");
    assert_eq!(text(&execution[0], 1).as_deref(), Some("from sql"));
    assert_eq!(
        (int(&execution[0], 2), int(&execution[0], 3)),
        (Some(1), Some(1)),
        "start and end times are there"
    );
    let messages = rows(
        &mut sql,
        &format!(
            "SELECT message FROM scaleout.catalog_operation_messages WHERE operation_id = \
             {job_id} AND message_source_type = 30"
        ),
    )
    .await;
    assert!(
        messages
            .iter()
            .any(|m| text(m, 0).as_deref() == Some("hello from t-sql")),
        "the job's log line is an operation message"
    );
    drop(cluster);
    server.stop();
}

/// The leader killed while it takes requests: every request becomes exactly one job. The
/// request key is the idempotency key, so a request whose job was submitted by a leader that
/// died before marking the row is submitted again by the next leader as the same job: the
/// test makes that case certain (the job of request 0 is submitted, under the key the leader
/// uses, while the replicas cannot reach SQL), then kills the leader while it takes the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_while_taking_requests_makes_one_job_per_request() {
    let _serial = SERIAL.lock().await;
    let env = Env::new(PASSWORD);
    let server = Iridium::start(0, &env.data_dir(), PASSWORD).expect("iridium");
    ssisdb::install_schema(&settings(server.port, &env.password_file))
        .await
        .expect("install");
    let target = target_at(server.port, &env.password_file);
    let sql_link = target.proxy().await.expect("SQL proxy");
    sql_link.set(LinkMode::Refuse);
    let mut cluster = start_cluster(
        sql_link.addr().port(),
        &env.password_file,
        &["ssisdb.intake_interval_ms=100"],
    );
    let (leader, _) = cluster.wait_for_leader(WAIT).await.expect("leader");
    let mut sql = sql(server.port, &env.password_file).await;
    let mut requests = Vec::new();
    for i in 0..12 {
        requests.push(
            submit_from_sql(
                &mut sql,
                SubmitArgs {
                    name: &format!("req {i}"),
                    argv: Some(r#"["/bin/true"]"#),
                    ..SubmitArgs::default()
                },
            )
            .await,
        );
    }
    // Request 0's job as a leader submits it before it marks the row.
    let client = cluster.client().expect("client");
    let submitted = client
        .submit_job(
            v1::JobSpec {
                argv: vec!["/bin/true".into()],
                name: "req 0".into(),
                max_attempts: 1,
                ..Default::default()
            },
            Some(format!("ssisdb-request-{}", requests[0])),
        )
        .await
        .expect("submit")
        .job_id;
    sql_link.set(LinkMode::Pass);
    // Killed as soon as it has taken the first request: the others are in flight or pending.
    let (_, job, _) = wait_processed(&mut sql, requests[0]).await;
    assert_eq!(
        job,
        Some(submitted as i64),
        "the request's job is the one already submitted"
    );
    cluster.kill(leader).expect("kill -9 the leader");
    cluster.wait_for_leader(WAIT).await.expect("a new leader");
    let mut job_ids = Vec::new();
    for request in &requests {
        let (state, job, error) = wait_processed(&mut sql, *request).await;
        assert_eq!(state, "submitted", "{error:?}");
        job_ids.push(job.expect("job id"));
    }
    let mut distinct = job_ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        requests.len(),
        "one job per request: {job_ids:?}"
    );
    let client = cluster.client().expect("client");
    let jobs = client.list_jobs(None, 0, 100, false).await.expect("list");
    assert_eq!(
        jobs.jobs.len(),
        requests.len(),
        "no request made a second job"
    );
    drop(cluster);
    server.stop();
}
