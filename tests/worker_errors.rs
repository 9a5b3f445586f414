//! Bad worker calls get clear errors and lose nothing: unknown worker, malformed ids, stale
//! tokens, a command that does not exist.

use std::path::Path;
use std::time::Duration;

use scaleout::client::Client;
use scaleout::harness::{ClusterOptions, LocalCluster, WorkerOptions};
use scaleout::pb::v1::worker_service_client::WorkerServiceClient;
use scaleout::pb::v1::{self, JobState};
use scaleout::rpc::Reason;
use tokio::time::Instant;
use tonic::Code;
use tonic_types::StatusExt;

const WAIT: Duration = Duration::from_secs(60);
/// One cluster at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_scaleout"))
}

fn reason(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

fn info(id: &str) -> v1::WorkerInfo {
    v1::WorkerInfo {
        worker_id: id.into(),
        display_name: "raw".into(),
        max_tasks: 2,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_worker_calls_get_clear_errors_and_change_nothing() {
    let _serial = SERIAL.lock().await;
    // Plaintext: these calls claim ids no certificate could carry; with TLS they are refused
    // before validation (tests/tls.rs), and what is tested here is the validation itself.
    let options = ClusterOptions {
        replicas: 1,
        tls: false,
        ..ClusterOptions::default()
    };
    let cluster = LocalCluster::start(binary(), options).expect("start");
    cluster.wait_for_leader(WAIT).await.expect("leader");
    let addr = format!("http://{}", cluster.replica(1).expect("replica").api_addr);
    let mut raw = WorkerServiceClient::connect(addr).await.expect("dial");
    let client = cluster.client().expect("client");

    // Malformed id.
    let status = raw
        .heartbeat(v1::HeartbeatRequest {
            worker_id: "worker-7".into(),
            ..Default::default()
        })
        .await
        .expect_err("malformed id");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("worker-7"), "{status:?}");

    // Unknown worker.
    let stranger = uuid::Uuid::new_v4().to_string();
    let status = raw
        .heartbeat(v1::HeartbeatRequest {
            worker_id: stranger.clone(),
            ..Default::default()
        })
        .await
        .expect_err("unknown worker");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(reason(&status), "WORKER_NOT_FOUND");

    // A registered worker takes a job.
    let me = uuid::Uuid::new_v4().to_string();
    let registered = raw
        .register_worker(v1::RegisterWorkerRequest {
            info: Some(info(&me)),
        })
        .await
        .expect("register")
        .into_inner();
    assert!(
        registered.enabled,
        "the harness cluster admits workers automatically"
    );
    let spec = v1::JobSpec {
        argv: vec!["true".into()],
        max_attempts: 1,
        ..Default::default()
    };
    let job_id = client.submit_job(spec, None).await.expect("submit").job_id;
    let acquired = raw
        .acquire_tasks(v1::AcquireTasksRequest {
            worker_id: me.clone(),
            free_slots: 1,
            wait_ms: 5_000,
            task_request_max_cpu: 100.0,
            ..Default::default()
        })
        .await
        .expect("acquire")
        .into_inner();
    assert_eq!(acquired.tasks.len(), 1);
    let token = acquired.tasks[0].lease_token;
    let lease = |token| {
        Some(v1::LeaseRef {
            job_id,
            lease_token: token,
        })
    };

    // Stale token: refused with LEASE_LOST on complete and logs, renewed = false on renew.
    let complete = |token| v1::CompleteTaskRequest {
        worker_id: me.clone(),
        lease: lease(token),
        outcome: v1::AttemptOutcome::Succeeded as i32,
        exit_code: Some(0),
        error: String::new(),
    };
    let status = raw
        .complete_task(complete(token + 1000))
        .await
        .expect_err("stale token");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason(&status), Reason::LeaseLost.as_str());
    let renew = raw
        .renew_leases(v1::RenewLeasesRequest {
            worker_id: me.clone(),
            leases: vec![lease(token + 1).expect("lease")],
        })
        .await
        .expect("renew answers per lease")
        .into_inner();
    assert!(!renew.leases[0].renewed);
    let status = raw
        .append_logs(v1::AppendLogsRequest {
            worker_id: me.clone(),
            lease: lease(token + 7),
            lines: vec![v1::LogLine {
                at_ms: 1,
                level: v1::LogLevel::Info as i32,
                text: "x".into(),
            }],
            ..Default::default()
        })
        .await
        .expect_err("logs under a token that never existed");
    assert_eq!(status.code(), Code::FailedPrecondition);

    // Nothing was lost or changed: the current lease still completes, exactly once.
    let job = client.get_job(job_id, false).await.expect("get");
    assert_eq!(job.state, JobState::PickedUp as i32);
    let done = raw
        .complete_task(complete(token))
        .await
        .expect("complete")
        .into_inner();
    assert_eq!(done.job_state, JobState::Succeeded as i32);
    // The same report again (as after a lost answer) is acknowledged and changes nothing; a
    // different report under the spent lease is refused.
    let again = raw
        .complete_task(complete(token))
        .await
        .expect("a repeated report")
        .into_inner();
    assert_eq!(again.job_state, JobState::Succeeded as i32);
    let mut failed = complete(token);
    failed.outcome = v1::AttemptOutcome::Failed as i32;
    let status = raw
        .complete_task(failed)
        .await
        .expect_err("a task completes once");
    assert_eq!(reason(&status), Reason::LeaseLost.as_str());
    let job = client.get_job(job_id, false).await.expect("get");
    assert_eq!(job.state, JobState::Succeeded as i32);
    assert_eq!(job.attempts.len(), 1);

    // Admin calls on unknown or busy workers.
    let status = client
        .set_worker_state(&stranger, v1::WorkerAction::Enable)
        .await
        .expect_err("unknown worker");
    assert_eq!(status.status().map(|s| s.code()), Some(Code::NotFound));
    let status = client
        .remove_worker("not-a-uuid")
        .await
        .expect_err("malformed id");
    assert_eq!(
        status.status().map(|s| s.code()),
        Some(Code::InvalidArgument)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_does_not_exist_fails_its_attempt_with_the_reason() {
    let _serial = SERIAL.lock().await;
    let options = ClusterOptions {
        replicas: 1,
        ..ClusterOptions::default()
    };
    let mut cluster = LocalCluster::start(binary(), options).expect("start");
    cluster.wait_for_leader(WAIT).await.expect("leader");
    cluster
        .start_worker(WorkerOptions {
            extra_config: vec![
                "agent_heartbeat_interval_ms = 300".into(),
                "task_request_max_cpu = 100.0".into(),
                "task_request_min_memory_mb = 0".into(),
                "acquire_wait_ms = 1000".into(),
            ],
            ..WorkerOptions::named("a")
        })
        .expect("worker");
    let client: Client = cluster.client().expect("client").with_deadline(WAIT);
    let spec = v1::JobSpec {
        argv: vec!["/nonexistent/dtexec".into(), "/F".into(), "x.dtsx".into()],
        max_attempts: 1,
        ..Default::default()
    };
    let job_id = client.submit_job(spec, None).await.expect("submit").job_id;
    let deadline = Instant::now() + WAIT;
    let job = loop {
        let job = client.get_job(job_id, false).await.expect("get");
        if job.state == JobState::Failed as i32 {
            break job;
        }
        assert!(
            Instant::now() < deadline,
            "still {:?}\n{}",
            job.state,
            cluster.worker_log_tail("a", 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let error = &job.attempts[0].error;
    assert!(
        error.contains("/nonexistent/dtexec"),
        "the error names the program: {error:?}"
    );
}
