//! The worker agent against an in-process fake WorkerService (no replicas: the end-to-end
//! tests with real replicas live in tests/workers.rs): tasks run and report, cancel and lost
//! leases kill the process tree, leader redirects are followed, results wait in the spool while
//! the cluster is down (even across a worker restart), shutdown reports running tasks as
//! failed, config mistakes map to exit code 2, and `metrics_listen` serves the worker's metrics,
//! health and readiness.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scaleout::pb::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use scaleout::pb::v1::*;
use scaleout::raft::ReplicaNode;
use scaleout::rpc::contract::{not_leader, with_reason};
use scaleout::rpc::Reason;
use scaleout::worker::{run, Worker, WorkerConfig, WorkerError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::{Code, Request, Response, Status};

/// What the fake master saw and what it will answer.
#[derive(Default)]
struct Seen {
    /// Tasks handed out by the next AcquireTasks calls.
    queue: VecDeque<TaskAssignment>,
    registrations: u32,
    calls: u32,
    /// (job id, level, text) of every delivered line.
    lines: Vec<(u64, i32, String)>,
    completions: Vec<CompleteTaskRequest>,
    /// Leases renewed at least once.
    renewed: BTreeSet<u64>,
    /// Tokens to refuse (renew: not renewed; logs and complete: LEASE_LOST).
    lost: BTreeSet<u64>,
    /// Leases to cancel on the next heartbeat.
    cancel: Vec<LeaseRef>,
    /// Tokens whose renewal answers that the job was cancelled.
    cancelled: BTreeSet<u64>,
    /// The lease tokens each heartbeat reported running, in arrival order.
    heartbeats: Vec<Vec<u64>>,
}

#[derive(Clone, Default)]
struct Fake {
    seen: Arc<Mutex<Seen>>,
    /// Answer NOT_LEADER naming this address instead of serving.
    redirect_to: Option<String>,
}

impl Fake {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }

    fn gate(&self) -> Result<(), Status> {
        self.seen().calls += 1;
        match &self.redirect_to {
            Some(addr) => Err(not_leader(
                Some(2),
                Some(&ReplicaNode {
                    api_addr: addr.clone(),
                    peer_addr: "127.0.0.1:1".into(),
                    storage_id: None,
                }),
            )),
            None => Ok(()),
        }
    }

    fn check_lease(&self, lease: &Option<LeaseRef>) -> Result<(), Status> {
        let token = lease.as_ref().map(|l| l.lease_token).unwrap_or_default();
        if self.seen().lost.contains(&token) {
            return Err(with_reason(
                Code::FailedPrecondition,
                Reason::LeaseLost,
                "stale",
                Default::default(),
            ));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl WorkerService for Fake {
    async fn register_worker(
        &self,
        _: Request<RegisterWorkerRequest>,
    ) -> Result<Response<RegisterWorkerResponse>, Status> {
        self.gate()?;
        self.seen().registrations += 1;
        Ok(Response::new(RegisterWorkerResponse {
            enabled: true,
            lease_interval_ms: 30_000,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.gate()?;
        let running = request
            .into_inner()
            .running
            .iter()
            .map(|l| l.lease_token)
            .collect();
        self.seen().heartbeats.push(running);
        let cancel = std::mem::take(&mut self.seen().cancel);
        Ok(Response::new(HeartbeatResponse {
            enabled: true,
            draining: false,
            cancel,
            lost: Vec::new(),
        }))
    }

    async fn acquire_tasks(
        &self,
        request: Request<AcquireTasksRequest>,
    ) -> Result<Response<AcquireTasksResponse>, Status> {
        self.gate()?;
        let free = request.get_ref().free_slots as usize;
        let tasks: Vec<TaskAssignment> = {
            let mut seen = self.seen();
            let n = free.min(seen.queue.len());
            seen.queue.drain(..n).collect()
        };
        if tasks.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Response::new(AcquireTasksResponse {
            tasks,
            results: Vec::new(),
        }))
    }

    async fn renew_leases(
        &self,
        request: Request<RenewLeasesRequest>,
    ) -> Result<Response<RenewLeasesResponse>, Status> {
        self.gate()?;
        let mut seen = self.seen();
        let leases = request
            .into_inner()
            .leases
            .into_iter()
            .map(|lease| {
                let renewed = !seen.lost.contains(&lease.lease_token);
                if renewed {
                    seen.renewed.insert(lease.lease_token);
                }
                LeaseStatus {
                    cancel_requested: seen.cancelled.contains(&lease.lease_token),
                    lease: Some(lease),
                    renewed,
                    expires_at_ms: 0,
                }
            })
            .collect();
        Ok(Response::new(RenewLeasesResponse { leases }))
    }

    async fn append_logs(
        &self,
        request: Request<AppendLogsRequest>,
    ) -> Result<Response<AppendLogsResponse>, Status> {
        self.gate()?;
        let request = request.into_inner();
        self.check_lease(&request.lease)?;
        let job_id = request.lease.map(|l| l.job_id).unwrap_or_default();
        let mut seen = self.seen();
        for line in request.lines {
            seen.lines.push((job_id, line.level, line.text));
        }
        Ok(Response::new(AppendLogsResponse {}))
    }

    async fn complete_task(
        &self,
        request: Request<CompleteTaskRequest>,
    ) -> Result<Response<CompleteTaskResponse>, Status> {
        self.gate()?;
        let request = request.into_inner();
        self.check_lease(&request.lease)?;
        self.seen().completions.push(request);
        Ok(Response::new(CompleteTaskResponse {
            job_state: JobState::Succeeded as i32,
        }))
    }
}

/// A fake master serving on `addr` (port 0: any) until the sender is dropped or fired.
async fn serve(fake: Fake, addr: SocketAddr) -> (SocketAddr, oneshot::Sender<()>, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(WorkerServiceServer::new(fake))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
    });
    (addr, stop, server)
}

fn config(dir: &Path, endpoints: &[SocketAddr], extra: &str) -> WorkerConfig {
    let endpoints: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    let text = format!(
        "endpoints = [{}]\nstate_dir = \"state\"\ninsecure = true\nmax_task_count = 4\n\
         agent_heartbeat_interval_ms = 200\ntask_heartbeat_interval_ms = 200\n\
         acquire_wait_ms = 200\n{extra}",
        endpoints.join(", ")
    );
    WorkerConfig::from_toml_str(&text, dir, &[]).unwrap()
}

fn task(job_id: u64, token: u64, argv: &[&str]) -> TaskAssignment {
    TaskAssignment {
        job_id,
        lease_token: token,
        attempt: 1,
        spec: Some(JobSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        lease_expires_at_ms: 0,
    }
}

/// Runs an agent until the returned sender fires.
fn start_agent(config: WorkerConfig) -> (oneshot::Sender<()>, JoinHandle<Result<(), WorkerError>>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(run(config, async {
        let _ = stopped.await;
    }));
    (stop, handle)
}

async fn stop_agent(stop: oneshot::Sender<()>, handle: JoinHandle<Result<(), WorkerError>>) {
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .expect("the agent stops")
        .expect("the agent task")
        .expect("the agent ran");
}

/// Polls `check` until it is true or `limit` passes.
async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

#[tokio::test]
async fn tasks_run_through_a_redirect_and_report_logs_and_results() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Fake::default();
    let (leader_addr, _stop_leader, _) =
        serve(leader.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let follower = Fake {
        redirect_to: Some(leader_addr.to_string()),
        ..Fake::default()
    };
    let (follower_addr, _stop_follower, _) =
        serve(follower.clone(), "127.0.0.1:0".parse().unwrap()).await;
    {
        let mut seen = leader.seen();
        seen.queue.push_back(task(
            1,
            11,
            &["sh", "-c", "echo hello; echo oops >&2; exit 3"],
        ));
        seen.queue.push_back(task(2, 12, &["true"]));
        let mut package = task(3, 13, &[]);
        if let Some(spec) = package.spec.as_mut() {
            spec.package = "/pkgs/load.dtsx".into();
            spec.params.insert("a".into(), "1".into());
        }
        seen.queue.push_back(package);
        seen.queue.push_back(task(4, 14, &["/nonexistent/program"]));
        let mut slow = task(5, 15, &["sleep", "600"]);
        if let Some(spec) = slow.spec.as_mut() {
            spec.timeout_secs = 1;
        }
        seen.queue.push_back(slow);
    }
    // The follower comes first: every call must be redirected to the leader.
    let config = config(
        dir.path(),
        &[follower_addr, leader_addr],
        "executor = [\"/bin/echo\", \"pkg={package}\"]\n",
    );
    let (stop, agent) = start_agent(config);
    eventually(Duration::from_secs(20), "five results", || {
        leader.seen().completions.len() == 5
    })
    .await;
    stop_agent(stop, agent).await;

    let seen = leader.seen();
    assert!(follower.seen().calls >= 1);
    assert_eq!(seen.registrations, 1);
    let result = |job: u64| {
        seen.completions
            .iter()
            .find(|c| c.lease.as_ref().map(|l| l.job_id) == Some(job))
            .unwrap_or_else(|| panic!("no result for job {job}"))
    };
    assert_eq!(result(1).outcome, AttemptOutcome::Failed as i32);
    assert_eq!(result(1).exit_code, Some(3));
    assert_eq!(result(2).outcome, AttemptOutcome::Succeeded as i32);
    assert_eq!(result(2).exit_code, Some(0));
    assert_eq!(result(3).outcome, AttemptOutcome::Succeeded as i32);
    assert_eq!(result(4).outcome, AttemptOutcome::Failed as i32);
    assert!(
        result(4).error.contains("/nonexistent/program"),
        "{}",
        result(4).error
    );
    assert_eq!(result(5).outcome, AttemptOutcome::Failed as i32);
    assert_eq!(result(5).error, "timed out after 1 s");
    let lines = |job: u64| -> Vec<(i32, String)> {
        seen.lines
            .iter()
            .filter(|(j, _, _)| *j == job)
            .map(|(_, level, text)| (*level, text.clone()))
            .collect()
    };
    let job1 = lines(1);
    assert!(
        job1.contains(&(LogLevel::Info as i32, "hello".into())),
        "{job1:?}"
    );
    assert!(
        job1.contains(&(LogLevel::Error as i32, "oops".into())),
        "{job1:?}"
    );
    assert_eq!(
        lines(3),
        vec![(LogLevel::Info as i32, "pkg=/pkgs/load.dtsx /Par a;1".into())]
    );
    assert!(lines(5)
        .iter()
        .any(|(_, text)| text == "[worker] timed out after 1 s"));
    // Logs are delivered before the result: the attempt's log is complete when it ends.
    assert!(
        dir.path()
            .join("state/spool/spool.jsonl")
            .metadata()
            .unwrap()
            .len()
            == 0
    );
}

#[tokio::test]
async fn cancel_and_lost_leases_kill_the_process_tree() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let (addr, _stop_server, _) = serve(fake.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let script = "sleep 600 & echo $!; echo $$; wait";
    fake.seen().queue.extend([
        task(1, 21, &["sh", "-c", script]),
        task(2, 22, &["sh", "-c", script]),
    ]);
    let (stop, agent) = start_agent(config(dir.path(), &[addr], ""));
    eventually(Duration::from_secs(10), "both tasks to run", || {
        let seen = fake.seen();
        seen.renewed.contains(&21) && seen.renewed.contains(&22) && seen.lines.len() == 4
    })
    .await;
    let pids: Vec<i32> = fake
        .seen()
        .lines
        .iter()
        .map(|(_, _, text)| text.parse().unwrap())
        .collect();

    // Job 1 is cancelled (heartbeat), job 2's lease is lost (renewal refused).
    fake.seen().cancel.push(LeaseRef {
        job_id: 1,
        lease_token: 21,
    });
    fake.seen().lost.insert(22);
    eventually(Duration::from_secs(10), "the processes to die", || {
        pids.iter().all(|&p| process_gone(p))
    })
    .await;
    eventually(Duration::from_secs(10), "the cancel result", || {
        !fake.seen().completions.is_empty()
    })
    .await;
    // A report on job 2 would go out before its slot is freed: once a heartbeat says the agent
    // runs neither lease any more, whatever it was going to report has arrived.
    eventually(
        Duration::from_secs(10),
        "a heartbeat without either lease",
        || {
            fake.seen()
                .heartbeats
                .last()
                .is_some_and(|running| !running.contains(&21) && !running.contains(&22))
        },
    )
    .await;
    stop_agent(stop, agent).await;
    let seen = fake.seen();
    assert_eq!(seen.completions.len(), 1, "a lost lease reports nothing");
    assert_eq!(
        seen.completions[0].lease.as_ref().map(|l| l.lease_token),
        Some(21)
    );
    assert_eq!(
        seen.completions[0].outcome,
        AttemptOutcome::Cancelled as i32
    );
}

#[tokio::test]
async fn results_wait_in_the_spool_across_an_outage_and_a_worker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let (addr, stop_server, server) = serve(fake.clone(), "127.0.0.1:0".parse().unwrap()).await;
    fake.seen().queue.push_back(task(
        1,
        31,
        &["sh", "-c", "echo started; sleep 2; echo finished; exit 4"],
    ));
    fake.seen().queue.push_back(task(2, 32, &["sleep", "600"]));
    let (stop, agent) = start_agent(config(dir.path(), &[addr], ""));
    eventually(Duration::from_secs(10), "the first line", || {
        fake.seen().lines.len() == 1
    })
    .await;

    // The whole cluster goes away while the tasks run.
    let _ = stop_server.send(());
    server.await.unwrap();
    let spool = dir.path().join("state/spool/spool.jsonl");
    eventually(Duration::from_secs(20), "the result to be spooled", || {
        std::fs::read_to_string(&spool).is_ok_and(|text| text.contains("\"complete\""))
    })
    .await;
    // The worker stops too: job 2 is killed and its result spooled with job 1's.
    stop_agent(stop, agent).await;
    let text = std::fs::read_to_string(&spool).unwrap();
    assert!(text.contains("worker shut down"), "{text}");
    assert!(fake.seen().completions.is_empty());

    // Cluster and worker come back: everything arrives, in order.
    let (_, _stop_server, _) = serve(fake.clone(), addr).await;
    let (stop, agent) = start_agent(config(dir.path(), &[addr], ""));
    eventually(Duration::from_secs(20), "both results", || {
        fake.seen().completions.len() == 2
    })
    .await;
    eventually(Duration::from_secs(5), "the spool to empty", || {
        std::fs::metadata(&spool).is_ok_and(|m| m.len() == 0)
    })
    .await;
    stop_agent(stop, agent).await;
    let seen = fake.seen();
    let texts: Vec<&str> = seen
        .lines
        .iter()
        .filter(|(job, _, _)| *job == 1)
        .map(|(_, _, t)| t.as_str())
        .collect();
    assert_eq!(texts, vec!["started", "finished"]);
    let job1 = seen
        .completions
        .iter()
        .find(|c| c.lease.as_ref().map(|l| l.job_id) == Some(1))
        .unwrap();
    assert_eq!(
        (job1.outcome, job1.exit_code),
        (AttemptOutcome::Failed as i32, Some(4))
    );
    let job2 = seen
        .completions
        .iter()
        .find(|c| c.lease.as_ref().map(|l| l.job_id) == Some(2))
        .unwrap();
    assert_eq!(
        (job2.outcome, job2.error.as_str()),
        (AttemptOutcome::Failed as i32, "worker shut down")
    );
}

#[tokio::test]
async fn a_stale_spooled_result_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let (addr, stop_server, server) = serve(fake.clone(), "127.0.0.1:0".parse().unwrap()).await;
    fake.seen().queue.push_back(task(1, 41, &["sleep", "600"]));
    let (stop, agent) = start_agent(config(dir.path(), &[addr], ""));
    eventually(Duration::from_secs(10), "the task to run", || {
        fake.seen().renewed.contains(&41)
    })
    .await;
    let _ = stop_server.send(());
    server.await.unwrap();
    stop_agent(stop, agent).await;

    // Meanwhile the master expired the lease: the spooled result is refused and dropped.
    fake.seen().lost.insert(41);
    let (_, _stop_server, _) = serve(fake.clone(), addr).await;
    let (stop, agent) = start_agent(config(dir.path(), &[addr], ""));
    let spool = dir.path().join("state/spool/spool.jsonl");
    eventually(Duration::from_secs(20), "the spool to empty", || {
        std::fs::metadata(&spool).is_ok_and(|m| m.len() == 0)
    })
    .await;
    stop_agent(stop, agent).await;
    assert!(fake.seen().completions.is_empty());
}

#[tokio::test]
async fn a_task_without_renewal_for_the_tolerance_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let (addr, stop_server, server) = serve(fake.clone(), "127.0.0.1:0".parse().unwrap()).await;
    fake.seen()
        .queue
        .push_back(task(1, 51, &["sh", "-c", "echo $$; exec sleep 600"]));
    let config = config(dir.path(), &[addr], "");
    let config = WorkerConfig {
        heartbeat_error_tolerance_ms: Some(1_000),
        ..config
    };
    let (stop, agent) = start_agent(config.clone());
    eventually(Duration::from_secs(10), "the task to run", || {
        let seen = fake.seen();
        seen.renewed.contains(&51) && seen.lines.len() == 1
    })
    .await;
    let pid: i32 = fake.seen().lines[0].2.parse().unwrap();
    let _ = stop_server.send(());
    server.await.unwrap();
    let lost_at = Instant::now();
    eventually(Duration::from_secs(10), "the kill", || process_gone(pid)).await;
    assert!(lost_at.elapsed() < Duration::from_secs(5));
    let (_, _stop_server, _) = serve(fake.clone(), addr).await;
    eventually(Duration::from_secs(20), "the result", || {
        !fake.seen().completions.is_empty()
    })
    .await;
    stop_agent(stop, agent).await;
    let seen = fake.seen();
    assert_eq!(seen.completions[0].outcome, AttemptOutcome::Failed as i32);
    assert_eq!(
        seen.completions[0].error,
        "killed: no lease renewal succeeded for 1.0 s (its lease may already be given to \
         another worker)"
    );
}

#[test]
fn config_mistakes_are_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("worker.toml");
    std::fs::write(
        &path,
        "endpoints = [\"127.0.0.1:7101\"]\nstate_dir = \"s\"\n",
    )
    .unwrap();
    let error = WorkerError::from(WorkerConfig::load(&path, &[]).unwrap_err());
    assert_eq!(error.exit_code(), 2);
    assert!(error.to_string().contains("`tls`"), "{error}");
    let error = WorkerError::from(
        WorkerConfig::load(&path, &["insecure=true".into(), "max_task_count=0".into()])
            .unwrap_err(),
    );
    assert_eq!(error.exit_code(), 2);
    assert!(error.to_string().contains("`max_task_count`"), "{error}");
    assert!(WorkerConfig::load(&path, &["insecure=true".into()]).is_ok());
}

/// A plain HTTP GET: the status code and the whole response (headers and body).
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("the metrics endpoint accepts");
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the response");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    (status, response)
}

/// The value of the sample `series` (name and labels exactly as rendered) in a scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes `/metrics` until `check` accepts the text or `limit` passes; returns the text.
async fn scrape_until(
    addr: SocketAddr,
    limit: Duration,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> String {
    let until = Instant::now() + limit;
    loop {
        let (status, text) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200, "{text}");
        if check(&text) {
            return text;
        }
        assert!(
            Instant::now() < until,
            "timed out waiting for {what}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asks `/readyz` until it answers `status` or `limit` passes; returns the response.
async fn readyz_until(addr: SocketAddr, limit: Duration, status: u16) -> String {
    let until = Instant::now() + limit;
    loop {
        let (got, response) = http_get(addr, "/readyz").await;
        if got == status {
            return response;
        }
        assert!(
            Instant::now() < until,
            "timed out waiting for /readyz {status}:\n{response}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_metrics_endpoint_reports_tasks_health_and_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let (addr, stop_server, server) = serve(fake.clone(), "127.0.0.1:0".parse().unwrap()).await;
    fake.seen().queue.push_back(task(1, 61, &["true"]));
    let config = config(dir.path(), &[addr], "metrics_listen = \"127.0.0.1:0\"\n");
    let worker = match Worker::start(config).await {
        Ok(worker) => worker,
        Err(error) => panic!("the worker does not start: {error}"),
    };
    let metrics = worker.metrics_addr().expect("metrics_listen is set");
    assert_ne!(metrics.port(), 0, "the port the system chose");

    // Serving before the agent runs: alive, not ready.
    assert_eq!(http_get(metrics, "/healthz").await.0, 200);
    let (status, response) = http_get(metrics, "/readyz").await;
    assert_eq!(status, 503, "{response}");
    assert!(
        response.contains("not ready: not registered yet"),
        "{response}"
    );

    let (stop, stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    readyz_until(metrics, Duration::from_secs(10), 200).await;
    eventually(Duration::from_secs(10), "the result", || {
        fake.seen().completions.len() == 1
    })
    .await;
    let succeeded = "scaleout_worker_tasks_finished_total{outcome=\"succeeded\"}";
    let text = scrape_until(
        metrics,
        Duration::from_secs(10),
        "the task to leave its slot",
        |text| {
            sample(text, "scaleout_worker_running_tasks") == Some(0.0)
                && sample(text, succeeded).is_some_and(|n| n >= 1.0)
        },
    )
    .await;
    let version = env!("CARGO_PKG_VERSION");
    let build_info = format!("scaleout_build_info{{version=\"{version}\"}}");
    for (series, expected) in [
        (build_info.as_str(), 1.0),
        ("scaleout_worker_connected", 1.0),
        ("scaleout_worker_max_tasks", 4.0),
        ("scaleout_worker_renew_failures_total", 0.0),
        (
            "scaleout_worker_tasks_finished_total{outcome=\"failed\"}",
            0.0,
        ),
        (
            "scaleout_worker_tasks_finished_total{outcome=\"cancelled\"}",
            0.0,
        ),
        (
            "scaleout_worker_tasks_finished_total{outcome=\"lost\"}",
            0.0,
        ),
        ("scaleout_worker_spool_entries", 0.0),
        ("scaleout_worker_spool_bytes", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(expected), "{series} in\n{text}");
    }
    assert_eq!(sample(&text, succeeded), Some(1.0), "{text}");

    // A long task holds a lease; then the cluster goes away.
    fake.seen().queue.push_back(task(2, 62, &["sleep", "600"]));
    eventually(Duration::from_secs(10), "the lease to be renewed", || {
        fake.seen().renewed.contains(&62)
    })
    .await;
    scrape_until(
        metrics,
        Duration::from_secs(5),
        "one running task",
        |text| sample(text, "scaleout_worker_running_tasks") == Some(1.0),
    )
    .await;
    let _ = stop_server.send(());
    server.await.unwrap();
    let response = readyz_until(metrics, Duration::from_secs(20), 503).await;
    assert!(
        response.contains("not ready: no replica answered for"),
        "{response}"
    );
    let text = scrape_until(
        metrics,
        Duration::from_secs(10),
        "failed renewals",
        |text| sample(text, "scaleout_worker_renew_failures_total").is_some_and(|n| n >= 1.0),
    )
    .await;
    assert_eq!(
        sample(&text, "scaleout_worker_connected"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "scaleout_worker_running_tasks"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(http_get(metrics, "/healthz").await.0, 200);
    stop_agent(stop, agent).await;
    let until = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(metrics).await.is_ok() {
        assert!(Instant::now() < until, "the endpoint stops with the worker");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_taken_metrics_port_fails_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let config = config(
        dir.path(),
        &["127.0.0.1:1".parse().unwrap()],
        &format!("metrics_listen = \"{taken_addr}\"\n"),
    );
    let error = match Worker::start(config).await {
        Ok(_) => panic!("the worker started on a taken port"),
        Err(error) => error,
    };
    let message = error.to_string();
    assert!(message.contains("`metrics_listen`"), "{message}");
    assert!(message.contains(&taken_addr.to_string()), "{message}");
    assert_eq!(error.exit_code(), 1);
    drop(taken);
}

#[tokio::test]
async fn a_task_starts_only_once_a_renewal_confirms_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let (addr, _stop_server, _server) = serve(fake.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let marker = |token: u64| dir.path().join(format!("ran-{token}"));
    let touch = |token: u64| format!("touch {}", marker(token).display());
    {
        let mut seen = fake.seen();
        // Cancelled after the grant, before the worker heard of it (a deposed leader's late
        // answer): the first renewal says so.
        seen.cancelled.insert(61);
        // Expired or moved meanwhile: not renewed.
        seen.lost.insert(62);
        seen.queue.push_back(task(1, 61, &["sh", "-c", &touch(61)]));
        seen.queue.push_back(task(2, 62, &["sh", "-c", &touch(62)]));
        seen.queue.push_back(task(3, 63, &["sh", "-c", &touch(63)]));
    }
    let (stop, agent) = start_agent(config(dir.path(), &[addr], ""));
    eventually(
        Duration::from_secs(20),
        "the cancel and the success",
        || fake.seen().completions.len() >= 2,
    )
    .await;
    // Renewals go on: nothing more arrives for the lost lease.
    eventually(Duration::from_secs(10), "a few more renewals", || {
        fake.seen().calls > 30
    })
    .await;
    stop_agent(stop, agent).await;
    let seen = fake.seen();
    let by_token: BTreeMap<u64, &CompleteTaskRequest> = seen
        .completions
        .iter()
        .map(|c| {
            (
                c.lease.as_ref().map(|l| l.lease_token).unwrap_or_default(),
                c,
            )
        })
        .collect();
    assert_eq!(by_token.len(), 2, "{:?}", seen.completions);
    assert_eq!(by_token[&61].outcome, AttemptOutcome::Cancelled as i32);
    assert_eq!(by_token[&61].error, "cancelled before it started");
    assert_eq!(by_token[&63].outcome, AttemptOutcome::Succeeded as i32);
    assert!(!marker(61).exists(), "the cancelled task ran");
    assert!(!marker(62).exists(), "the task with a lost lease ran");
    assert!(marker(63).exists(), "the confirmed task did not run");
}

/// Loading a config writes nothing; starting the worker is what makes its directories and keeps
/// a generated agent id, so a restart is the same worker (the masters know it by that id).
#[tokio::test]
async fn starting_a_worker_keeps_its_generated_id_and_makes_its_directories() {
    let dir = tempfile::tempdir().unwrap();
    let unused: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let config = config(dir.path(), &[unused], "");
    let stored = config
        .state_dir
        .join(scaleout::worker::config::AGENT_ID_FILE);
    assert!(!config.state_dir.exists(), "loading made the state dir");

    let worker = Worker::start(config.clone())
        .await
        .expect("the worker starts");
    drop(worker);
    assert!(config.tasks_root_folder.is_dir());
    let kept = std::fs::read_to_string(&stored).expect("the agent id is kept");
    assert_eq!(kept.trim(), config.agent_id.to_string());
    let again = WorkerConfig::from_toml_str(
        &format!("endpoints = [\"{unused}\"]\nstate_dir = \"state\"\ninsecure = true\n"),
        dir.path(),
        &[],
    )
    .unwrap();
    assert_eq!(
        again.agent_id, config.agent_id,
        "a restart is the same worker"
    );
}
