//! Retention against real replica and worker processes: finished jobs beyond the cap leave
//! every replica, running and queued jobs never do, and the key of a removed job submits a new
//! job (the deduplication window is the job's retention).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use scaleout::client::Client;
use scaleout::harness::{ClusterOptions, LocalCluster, WorkerOptions};
use scaleout::pb::v1::{self, JobState};
use tokio::time::Instant;
use tonic_types::StatusExt;

const WAIT: Duration = Duration::from_secs(90);
const CAP: u64 = 100;
const JOBS: u64 = 130;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_scaleout"))
}

fn shell(script: &str, tags: &[&str]) -> v1::JobSpec {
    v1::JobSpec {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        name: "retention".into(),
        max_attempts: 1,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    }
}

fn is_terminal(state: i32) -> bool {
    matches!(
        JobState::try_from(state),
        Ok(JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    )
}

/// The reason a rejected call gives (`JOB_REMOVED`, `JOB_NOT_FOUND`, ...).
fn reason(error: &scaleout::client::ClientError) -> Option<String> {
    error
        .status()
        .and_then(|s| s.get_details_error_info())
        .map(|i| i.reason)
}

/// Finished: terminal, or already removed (it finished before the sweep took it).
async fn wait_finished(client: &Client, job_id: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        match client.get_job(job_id, false).await {
            Ok(job) if is_terminal(job.state) => return,
            Err(e) if reason(&e).as_deref() == Some("JOB_REMOVED") => return,
            Ok(_) => {}
            Err(e) => panic!("job {job_id}: {e}"),
        }
        assert!(Instant::now() < deadline, "job {job_id} never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_beyond_the_cap_leave_every_replica_and_their_keys_start_new_jobs() {
    let options = ClusterOptions {
        overrides: vec![
            format!("retention.max_finished_jobs={CAP}"),
            "retention.sweep_interval_ms=200".into(),
        ],
        ..ClusterOptions::default()
    };
    let mut cluster = LocalCluster::start(binary(), options).expect("start replicas");
    cluster.wait_for_leader(WAIT).await.expect("leader");
    cluster
        .start_worker(WorkerOptions {
            max_tasks: 8,
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

    // One job runs through the whole test, one waits for a tag no worker has.
    let running = client
        .submit_job(shell("sleep 120", &[]), None)
        .await
        .expect("submit")
        .job_id;
    let queued = client
        .submit_job(shell("true", &["nobody-has-this-tag"]), None)
        .await
        .expect("submit")
        .job_id;
    let mut keyed = Vec::new();
    for i in 0..JOBS {
        let id = client
            .submit_job(
                shell(&format!("echo job {i}"), &[]),
                Some(format!("retention-{i}")),
            )
            .await
            .expect("submit")
            .job_id;
        keyed.push(id);
    }
    for id in &keyed {
        wait_finished(&client, *id).await;
    }

    // Every replica ends up holding the same CAP newest finished jobs and the two live ones.
    let deadline = Instant::now() + WAIT;
    let held = loop {
        let mut views = Vec::new();
        for replica in &cluster.replicas {
            let at = cluster.client_at(&replica.api_addr).expect("client");
            let ids: BTreeSet<u64> = at
                .list_all_jobs(None, true)
                .await
                .expect("list")
                .iter()
                .map(|j| j.id)
                .collect();
            views.push(ids);
        }
        let finished_held = views[0].iter().filter(|id| keyed.contains(id)).count() as u64;
        if finished_held == CAP && views.iter().all(|v| *v == views[0]) {
            break views.swap_remove(0);
        }
        assert!(
            Instant::now() < deadline,
            "replicas never converged on {CAP} finished jobs: {:?}",
            views.iter().map(BTreeSet::len).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        held.contains(&running) && held.contains(&queued),
        "{held:?}"
    );
    let live = client.get_job(running, false).await.expect("running job");
    assert!(!is_terminal(live.state), "{live:?}");
    let waiting = client.get_job(queued, false).await.expect("queued job");
    assert_eq!(waiting.state, JobState::Queued as i32);

    // The removed ones say so, on every replica.
    let removed: Vec<u64> = keyed
        .iter()
        .copied()
        .filter(|id| !held.contains(id))
        .collect();
    assert_eq!(removed.len() as u64, JOBS - CAP);
    for replica in &cluster.replicas {
        let at = cluster.client_at(&replica.api_addr).expect("client");
        let error = at
            .get_job(removed[0], true)
            .await
            .expect_err("a removed job is gone");
        assert_eq!(reason(&error).as_deref(), Some("JOB_REMOVED"), "{error}");
        assert!(error.to_string().contains("retention"), "{error}");
    }
    let logs = client
        .get_job_logs(removed[0], 0, false)
        .await
        .expect_err("its logs went with it");
    assert_eq!(reason(&logs).as_deref(), Some("JOB_REMOVED"), "{logs}");
    let never = client
        .get_job(1_000_000, false)
        .await
        .expect_err("never submitted");
    assert_eq!(reason(&never).as_deref(), Some("JOB_NOT_FOUND"), "{never}");

    // A removed job's key makes a new job; a kept job's key is still deduplicated.
    let position = |id: u64| keyed.iter().position(|k| *k == id).expect("ours");
    let gone_key = format!("retention-{}", position(removed[0]));
    let again = client
        .submit_job(shell("true", &[]), Some(gone_key))
        .await
        .expect("resubmit");
    assert!(!again.deduplicated);
    assert!(again.job_id > *keyed.last().expect("jobs"));
    let kept = *keyed.last().expect("jobs");
    let kept_key = format!("retention-{}", position(kept));
    let same = client
        .submit_job(
            shell(&format!("echo job {}", JOBS - 1), &[]),
            Some(kept_key),
        )
        .await
        .expect("resubmit");
    assert!(same.deduplicated);
    assert_eq!(same.job_id, kept);
}
