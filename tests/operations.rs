//! What an operator sees of a running cluster: `/metrics` on every replica with sane values,
//! `/readyz` and gRPC health following a replica's isolation and rejoin together, the gRPC
//! reflection service on the API port (what `grpcurl` uses), and logs that stay quiet while a
//! follower is down.
//!
//! Serialized like the other multi-process tests: clusters started in parallel on 2 cores
//! starve each other's elections.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use scaleout::chaos::proxy::LinkMode;
use scaleout::client::Client;
use scaleout::harness::{wait_for_workers, ClusterOptions, LocalCluster, WorkerOptions};
use scaleout::ops::probe::{self, samples};
use scaleout::pb::v1;
use scaleout::tls::Role;
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());
const SETTLE: Duration = Duration::from_secs(60);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_scaleout"))
}

/// One GET: (status code, body).
async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let answer = probe::get(addr, path, Duration::from_secs(5)).await?;
    Ok((answer.status, answer.body))
}

/// The value of `series` (name with its labels exactly as rendered), or a failure naming it.
fn value(page: &BTreeMap<String, f64>, series: &str) -> f64 {
    match page.get(series) {
        Some(v) => *v,
        None => panic!(
            "no sample {series}; the page has: {:?}",
            page.keys().collect::<Vec<_>>()
        ),
    }
}

async fn scrape(addr: &str) -> BTreeMap<String, f64> {
    let (status, body) = http_get(addr, "/metrics").await.expect("scrape /metrics");
    assert_eq!(status, 200, "{body}");
    samples(&body)
}

async fn submit(client: &Client, count: u64, tag: &str) -> Vec<u64> {
    let mut ids = Vec::new();
    for n in 0..count {
        let spec = v1::JobSpec {
            argv: vec!["/bin/echo".into(), format!("{tag} {n}")],
            name: format!("{tag}-{n}"),
            max_attempts: 1,
            ..Default::default()
        };
        let reply = client
            .submit_job(spec, Some(format!("{tag}-{n}")))
            .await
            .expect("submit");
        ids.push(reply.job_id);
    }
    ids
}

/// Waits until job `id` has succeeded.
async fn wait_succeeded(client: &Client, id: u64) {
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Ok(job) = client.get_job(id, false).await {
            if job.state == v1::JobState::Succeeded as i32 {
                return;
            }
            assert!(
                job.state != v1::JobState::Failed as i32
                    && job.state != v1::JobState::Cancelled as i32,
                "job {id} ended without success: {job:?}"
            );
        }
        assert!(
            Instant::now() < deadline,
            "job {id} did not succeed within {SETTLE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `check` holds on the page `addr` serves.
async fn wait_for_page(addr: &str, what: &str, check: impl Fn(&BTreeMap<String, f64>) -> bool) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let page = scrape(addr).await;
        if check(&page) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not seen within {SETTLE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn every_replica_serves_metrics_with_sane_values() {
    let _serial = SERIAL.lock().await;
    let mut cluster = LocalCluster::start(binary(), ClusterOptions::default()).expect("cluster");
    let (leader, term) = cluster.wait_for_leader(SETTLE).await.expect("leader");
    let client = cluster.client().expect("client");
    cluster
        .start_worker(WorkerOptions::named("metrics-worker"))
        .expect("worker");
    wait_for_workers(&client, 1, SETTLE)
        .await
        .expect("worker online");

    let addr_of = |id: u64| {
        cluster
            .replicas
            .iter()
            .find(|r| r.id == id)
            .expect("replica")
            .metrics_addr
            .clone()
    };
    let ids: Vec<u64> = cluster.replicas.iter().map(|r| r.id).collect();
    let mut leaders = 0;
    for &id in &ids {
        let page = scrape(&addr_of(id)).await;
        assert_eq!(
            value(&page, "scaleout_raft_term"),
            term as f64,
            "replica {id}"
        );
        assert_eq!(value(&page, "scaleout_raft_voter"), 1.0, "replica {id}");
        assert_eq!(
            value(&page, "scaleout_raft_leader_id"),
            leader as f64,
            "replica {id}"
        );
        assert_eq!(
            value(
                &page,
                &format!(
                    "scaleout_build_info{{version=\"{}\"}}",
                    env!("CARGO_PKG_VERSION")
                )
            ),
            1.0
        );
        let is_leader = value(&page, "scaleout_raft_is_leader");
        assert_eq!(is_leader, f64::from(u8::from(id == leader)), "replica {id}");
        leaders += is_leader as u32;
        assert_eq!(
            http_get(&addr_of(id), "/healthz").await.expect("healthz").0,
            200
        );
    }
    assert_eq!(leaders, 1, "exactly one replica says it leads");

    let leader_addr = addr_of(leader);
    let before = scrape(&leader_addr).await;
    let commit_before = value(&before, "scaleout_raft_commit_index");
    let jobs = submit(&client, 20, "metrics").await;
    for &job in &jobs {
        wait_succeeded(&client, job).await;
    }
    let after = scrape(&leader_addr).await;
    assert!(
        value(&after, "scaleout_raft_commit_index") > commit_before,
        "the commit index rises with submits"
    );
    assert!(value(&after, "scaleout_raft_applied_index") >= commit_before + 1.0);
    assert!(
        value(&after, "scaleout_raft_last_log_index")
            >= value(&after, "scaleout_raft_commit_index")
    );
    assert!(value(&after, "scaleout_jobs_submitted_total") >= 20.0);
    assert!(value(&after, "scaleout_leases_granted_total") >= 20.0);
    assert!(
        value(
            &after,
            "scaleout_attempts_ended_total{outcome=\"succeeded\"}"
        ) >= 20.0
    );
    assert_eq!(
        value(&after, "scaleout_attempts_ended_total{outcome=\"expired\"}"),
        0.0
    );
    assert_eq!(value(&after, "scaleout_leases_expired_total"), 0.0);
    assert!(value(&after, "scaleout_leases_renewed_total") >= 0.0);
    assert!(value(&after, "scaleout_jobs{state=\"succeeded\"}") >= 20.0);
    assert_eq!(value(&after, "scaleout_jobs{state=\"running\"}"), 0.0);
    assert_eq!(value(&after, "scaleout_workers{state=\"online\"}"), 1.0);
    assert_eq!(value(&after, "scaleout_workers{state=\"offline\"}"), 0.0);
    assert_eq!(value(&after, "scaleout_worker_tasks_running"), 0.0);
    assert!(value(&after, "scaleout_proposals_total") >= 1.0);
    assert!(
        value(&after, "scaleout_proposal_commands_total")
            >= value(&after, "scaleout_proposals_total")
    );
    assert!(value(&after, "scaleout_proposal_batch_commands_count") >= 1.0);
    assert!(value(&after, "scaleout_outbox_events") >= 0.0);
    assert!(value(&after, "scaleout_outbox_oldest_event_age_seconds") >= 0.0);
    assert_eq!(value(&after, "scaleout_ssisdb_ship_errors_total"), 0.0);
    // What malloc holds (glibc's mallinfo2): a replica has some heap in use.
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        assert!(value(&after, "scaleout_heap_in_use_bytes") > 0.0);
        assert!(value(&after, "scaleout_heap_free_bytes") >= 0.0);
    }
    assert_eq!(
        value(&after, "scaleout_ssisdb_events_shipped_total"),
        0.0,
        "no SSISDB here"
    );
    assert!(
        value(
            &after,
            "scaleout_rpc_duration_seconds_count{service=\"scaleout.v1.JobService\",method=\"SubmitJob\",code=\"Ok\"}"
        ) >= 20.0
    );
    assert!(
        after
            .keys()
            .any(|k| k.starts_with("scaleout_rpc_duration_seconds_bucket{service=\"scaleout.v1.WorkerService\",method=\"AcquireTasks\"")),
        "worker calls are timed"
    );
    assert!(value(&after, "scaleout_raft_quorum_ack_age_seconds") < 5.0);
    for &follower in ids.iter().filter(|&&id| id != leader) {
        let lag = value(
            &after,
            &format!("scaleout_raft_replication_lag_entries{{follower=\"{follower}\"}}"),
        );
        assert!(lag >= 0.0, "lag of {follower}");
        // Followers apply the same log: their counters catch up with the leader's.
        let follower_addr = addr_of(follower);
        wait_for_page(&follower_addr, "the follower's applied counters", |page| {
            page.get("scaleout_attempts_ended_total{outcome=\"succeeded\"}")
                .is_some_and(|v| *v >= 20.0)
        })
        .await;
        let page = scrape(&follower_addr).await;
        assert!(value(&page, "scaleout_raft_leader_contact_age_seconds") < 5.0);
        assert_eq!(value(&page, "scaleout_ready"), 1.0);
        let peer_calls: f64 = page
            .iter()
            .filter(|(k, _)| {
                k.starts_with(
                    "scaleout_rpc_duration_seconds_count{service=\"scaleout.raft.v1.RaftService\"",
                )
            })
            .map(|(_, v)| v)
            .sum();
        assert!(peer_calls >= 1.0, "the peer service is timed too");
    }
}

/// `/readyz` of a replica cut off from the others turns 503, and 200 again once it rejoins;
/// the same for a leader cut off from its majority.
#[tokio::test]
async fn readyz_follows_isolation_and_rejoin() {
    let _serial = SERIAL.lock().await;
    let (cluster, network) =
        LocalCluster::start_behind_proxies(binary(), ClusterOptions::default())
            .await
            .expect("a cluster behind proxies");
    let (leader, _) = cluster.wait_for_leader(SETTLE).await.expect("leader");
    let metrics_of = |id: u64| {
        cluster
            .replicas
            .iter()
            .find(|r| r.id == id)
            .expect("replica")
            .metrics_addr
            .clone()
    };
    for id in 1..=3 {
        wait_for_ready(&metrics_of(id), true).await;
    }

    // gRPC health answers what /readyz answers, at once: asked right after /readyz changed,
    // it has changed too.
    let health_of = async |id: u64| {
        use tonic_health::pb::health_check_response::ServingStatus;
        let api = cluster.replica(id).expect("replica").api_listen.clone();
        let channel = cluster
            .channel_as(&api, &Role::Operator("ops".into()))
            .expect("channel");
        let status = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .expect("health check")
            .into_inner()
            .status;
        ServingStatus::try_from(status).expect("a known status")
    };
    use tonic_health::pb::health_check_response::ServingStatus::{NotServing, Serving};
    for id in 1..=3 {
        assert_eq!(health_of(id).await, Serving);
    }

    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    network.isolate(follower, LinkMode::Blackhole);
    let reason = wait_for_ready(&metrics_of(follower), false).await;
    assert_eq!(health_of(follower).await, NotServing, "readyz: {reason}");
    assert!(
        reason.contains("no word from leader") || reason.contains("no leader known"),
        "{reason}"
    );
    // The others still have a majority.
    for id in (1..=3).filter(|&id| id != follower) {
        wait_for_ready(&metrics_of(id), true).await;
        assert_eq!(health_of(id).await, Serving);
    }
    network.heal();
    wait_for_ready(&metrics_of(follower), true).await;
    assert_eq!(health_of(follower).await, Serving);

    let (leader, _) = cluster
        .wait_for_leader(SETTLE)
        .await
        .expect("leader after heal");
    network.isolate(leader, LinkMode::Refuse);
    let reason = wait_for_ready(&metrics_of(leader), false).await;
    assert_eq!(health_of(leader).await, NotServing, "readyz: {reason}");
    assert!(!reason.is_empty(), "a reason is given");
    network.heal();
    for id in 1..=3 {
        wait_for_ready(&metrics_of(id), true).await;
    }
}

/// Polls `/readyz` until it answers `ready` (200) or not (503); returns the body.
async fn wait_for_ready(addr: &str, ready: bool) -> String {
    let deadline = Instant::now() + SETTLE;
    let mut last = String::new();
    loop {
        if let Ok((status, body)) = http_get(addr, "/readyz").await {
            if (status == 200) == ready {
                return body;
            }
            assert!(
                status == 200 || status == 503,
                "unexpected status {status}: {body}"
            );
            last = body;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} not {} within {SETTLE:?}; last answer: {last}",
            if ready { "ready" } else { "unready" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What `grpcurl -cert ... list` and `grpcurl ... grpc.health.v1.Health/Check` do.
#[tokio::test]
async fn reflection_lists_the_services_and_health_answers() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let _serial = SERIAL.lock().await;
    let cluster = LocalCluster::start(binary(), ClusterOptions::default()).expect("cluster");
    cluster.wait_for_leader(SETTLE).await.expect("leader");
    let api = cluster.replicas[0].api_listen.clone();
    let channel = cluster
        .channel_as(&api, &Role::Operator("ops".into()))
        .expect("channel");

    let mut reflection = ServerReflectionClient::new(channel.clone());
    // One request, one answer, as `grpcurl` asks.
    let mut ask = async |request: MessageRequest| {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
        reflection
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .expect("reflection call")
            .into_inner()
            .message()
            .await
            .expect("reflection answer")
            .expect("one answer")
    };
    let answer = ask(MessageRequest::ListServices(String::new())).await;
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "scaleout.v1.JobService",
        "scaleout.v1.AdminService",
        "scaleout.v1.WorkerService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    assert!(
        !names.iter().any(|n| n.contains("RaftService")),
        "the peer service is not on the API port: {names:?}"
    );

    // Describing a service works too (grpcurl describe).
    let answer = ask(MessageRequest::FileContainingSymbol(
        "scaleout.v1.JobService".into(),
    ))
    .await;
    assert!(
        matches!(
            answer.message_response,
            Some(MessageResponse::FileDescriptorResponse(ref files)) if !files.file_descriptor_proto.is_empty()
        ),
        "{answer:?}"
    );

    let mut health = HealthClient::new(channel);
    let deadline = Instant::now() + SETTLE;
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        if status == ServingStatus::Serving as i32 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not SERVING within {SETTLE:?}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let job_service = health
        .check(HealthCheckRequest {
            service: "scaleout.v1.JobService".into(),
        })
        .await
        .expect("per-service health")
        .into_inner();
    assert_eq!(job_service.status, ServingStatus::Serving as i32);
}

/// The lines `path` gained past byte `from`.
fn lines_since(path: &Path, from: u64) -> Vec<String> {
    let text = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(from).unwrap_or(usize::MAX).min(text.len());
    String::from_utf8_lossy(&text[start..])
        .lines()
        .map(String::from)
        .collect()
}

fn log_size(cluster: &LocalCluster, id: u64) -> u64 {
    let path = &cluster.replica(id).expect("replica").log_path;
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// A follower down for 10 s while jobs keep coming, with the log filter an operator gets by
/// default: the other replicas say so a handful of times at WARN (the peer lost once, back
/// once), not once per retry, and no line carries Rust's debug text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_down_for_ten_seconds_costs_a_handful_of_warnings() {
    let _serial = SERIAL.lock().await;
    let mut cluster = LocalCluster::start(
        binary(),
        ClusterOptions {
            log_filter: String::new(),
            ..ClusterOptions::default()
        },
    )
    .expect("cluster");
    let (leader, _) = cluster.wait_for_leader(SETTLE).await.expect("leader");
    let client = cluster.client().expect("client");
    submit(&client, 3, "before").await;
    // A first start is quiet: nothing to act on, so no WARN or ERROR anywhere.
    for id in 1..=3 {
        let path = cluster.replica(id).expect("replica").log_path.clone();
        let lines = lines_since(&path, 0);
        assert!(
            !lines
                .iter()
                .any(|line| line.contains(" WARN ") || line.contains(" ERROR ")),
            "replica {id}'s first start:\n{}",
            lines.join("\n")
        );
    }
    let down = cluster.follower_of(leader).expect("a follower");
    let other = (1..=3)
        .find(|id| ![leader, down].contains(id))
        .expect("a third");
    let from: Vec<(u64, u64)> = [leader, other]
        .into_iter()
        .map(|id| (id, log_size(&cluster, id)))
        .collect();

    cluster.kill(down).expect("kill -9");
    let until = Instant::now() + Duration::from_secs(10);
    let mut submitted = 0;
    while Instant::now() < until && submitted < 200 {
        submit(&client, 1, &format!("during-{submitted}")).await;
        submitted += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.restart(down).expect("restart");
    let commit = cluster
        .status_of(leader)
        .await
        .ok()
        .and_then(|status| {
            status
                .replicas
                .iter()
                .find(|r| r.id == leader)
                .and_then(|r| r.commit_index)
        })
        .expect("the leader's commit index");
    cluster
        .wait_for_applied(down, commit, SETTLE)
        .await
        .expect("the follower catches up");

    for (id, from) in from {
        let path = cluster.replica(id).expect("replica").log_path.clone();
        let lines = lines_since(&path, from);
        let loud: Vec<&String> = lines
            .iter()
            .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
            .collect();
        assert!(
            loud.len() <= 5,
            "replica {id} ({}) logged {} WARN/ERROR lines while replica {down} was down:\n{}",
            if id == leader { "leader" } else { "follower" },
            loud.len(),
            lines.join("\n")
        );
        if id == leader {
            // The leader says it lost the follower once, and once that it is back.
            let about = |message: &str| {
                lines
                    .iter()
                    .filter(|line| line.contains(message) && line.contains(&format!("peer={down}")))
                    .count()
            };
            assert_eq!(
                (about("peer unreachable"), about("peer reachable again")),
                (1, 1),
                "the leader's log:\n{}",
                lines.join("\n")
            );
        }
        let debug_text: Vec<&String> = lines
            .iter()
            .filter(|line| line.contains("Some(") || line.contains("None") || line.contains("{ "))
            .collect();
        assert!(
            debug_text.is_empty(),
            "replica {id} logged Rust debug text:\n{}",
            debug_text
                .iter()
                .map(|l| l.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
