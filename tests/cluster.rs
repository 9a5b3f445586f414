//! Multi-replica tests against real `scaleout master` processes.
//!
//! They run one at a time (a lock): on a 2-core machine, clusters started in parallel starve
//! each other's elections. Every wait is a condition with a deadline that tolerates a loaded
//! machine; every process is killed when its cluster is dropped.

use std::path::Path;
use std::time::Duration;

use scaleout::client::Client;
use scaleout::harness::{ClusterOptions, LocalCluster};
use scaleout::pb::v1::job_service_client::JobServiceClient;
use scaleout::pb::v1::{self, GetJobRequest, SubmitJobRequest};
use scaleout::rpc::contract::{leader_request, LEADER_HEADER, REASON_NOT_LEADER};
use scaleout::tls::Role;
use tokio::sync::Mutex;
use tonic_types::StatusExt;

static SERIAL: Mutex<()> = Mutex::const_new(());
const ELECTION: Duration = Duration::from_secs(60);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_scaleout"))
}

fn spec(n: u64) -> v1::JobSpec {
    v1::JobSpec {
        argv: vec!["/bin/echo".into(), format!("job {n}")],
        name: format!("job-{n}"),
        max_attempts: 1,
        ..Default::default()
    }
}

async fn submit_many(client: &Client, range: std::ops::Range<u64>) -> Vec<u64> {
    let mut ids = Vec::new();
    for n in range {
        let reply = client
            .submit_job(spec(n), Some(format!("key-{n}")))
            .await
            .expect("submit");
        ids.push(reply.job_id);
    }
    ids
}

fn followers(cluster: &LocalCluster, leader: u64) -> Vec<u64> {
    cluster
        .replicas
        .iter()
        .map(|r| r.id)
        .filter(|id| *id != leader)
        .collect()
}

async fn applied_on_leader(cluster: &LocalCluster, leader: u64) -> u64 {
    let status = cluster.status_of(leader).await.expect("leader status");
    scaleout::harness::applied_index(&status, leader).expect("leader applied index")
}

/// Restarts replica `id` from its data dir and waits until it has applied all the leader has.
async fn restart_and_catch_up(cluster: &mut LocalCluster, id: u64, leader: u64) {
    cluster.restart(id).expect("restart");
    let applied = applied_on_leader(cluster, leader).await;
    if let Err(e) = cluster.wait_for_applied(id, applied, ELECTION).await {
        panic!("{e}\n{}", cluster.log_tail(id, 30));
    }
}

/// The jobs as one replica's local state has them: (id, name, state, created index).
async fn local_jobs(cluster: &LocalCluster, id: u64) -> Vec<(u64, String, i32, u64)> {
    let client = cluster
        .client_at(&cluster.replica(id).expect("replica").api_addr)
        .expect("client");
    let jobs = client.list_all_jobs(None, true).await.expect("stale list");
    jobs.into_iter()
        .map(|job| {
            (
                job.id,
                job.spec.unwrap_or_default().name,
                job.state,
                job.created_index,
            )
        })
        .collect()
}

/// Every acknowledged job is on replica `id`, and its state equals the leader's row for row:
/// a replayed or re-ordered entry would show as a different id, state or created index.
async fn assert_same_jobs(cluster: &LocalCluster, id: u64, leader: u64, acknowledged: &[u64]) {
    let on_replica = local_jobs(cluster, id).await;
    let on_leader = local_jobs(cluster, leader).await;
    assert_eq!(
        on_replica, on_leader,
        "replica {id} differs from leader {leader}"
    );
    for job in acknowledged {
        assert!(
            on_replica.iter().any(|row| row.0 == *job),
            "acknowledged job {job} missing on replica {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_configs_elect_exactly_one_leader_seen_by_all() {
    let _serial = SERIAL.lock().await;
    let mut cluster = LocalCluster::configure_in_temp_dir(binary(), ClusterOptions::default())
        .expect("configure");
    // Use the shipped sample configs, moved onto free ports and a temp data dir.
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config/local");
    let certs_dir = cluster.certs.as_ref().expect("a TLS cluster").dir.clone();
    for replica in &cluster.replicas {
        let mut text = std::fs::read_to_string(samples.join(format!("master-{}.toml", replica.id)))
            .expect("sample config");
        for (index, other) in cluster.replicas.iter().enumerate() {
            text = text
                .replace(&format!("127.0.0.1:710{}", index + 1), &other.api_addr)
                .replace(&format!("127.0.0.1:720{}", index + 1), &other.peer_addr);
        }
        let text: String = text
            .lines()
            .map(|line| {
                if line.trim_start().starts_with("data_dir") {
                    format!("data_dir = \"{}\"", replica.data_dir.display())
                } else {
                    // The sample's certs/ layout is the one the harness wrote for this cluster.
                    line.replace("\"certs/", &format!("\"{}/", certs_dir.display()))
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&replica.config_path, text).expect("write config");
    }
    cluster.start_all().expect("start");
    let (leader, term) = cluster.wait_for_leader(ELECTION).await.expect("a leader");

    // Ask each replica through the CLI, as a user would.
    let mut leaders = 0;
    for replica in &cluster.replicas {
        let output = std::process::Command::new(binary())
            .args([
                "cluster",
                "status",
                "--output",
                "json",
                "--endpoints",
                &replica.api_addr,
            ])
            .args(cluster.cli_security_args())
            .output()
            .expect("run cluster status");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let status: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
        assert_eq!(
            status["leader_id"], leader,
            "replica {} sees another leader",
            replica.id
        );
        assert_eq!(
            status["term"], term,
            "replica {} sees another term",
            replica.id
        );
        assert_eq!(status["answered_by"], replica.id);
        let replicas = status["replicas"].as_array().expect("replicas");
        assert_eq!(replicas.len(), 3);
        let own = replicas
            .iter()
            .find(|r| r["id"] == replica.id)
            .expect("own row");
        assert_eq!(own["api_addr"], replica.api_addr.as_str());
        assert_eq!(own["peer_addr"], replica.peer_addr.as_str());
        assert!(own["applied_index"].as_u64().is_some());
        if own["role"] == "leader" {
            leaders += 1;
        }
    }
    assert_eq!(leaders, 1, "exactly one replica calls itself leader");
}

/// A follower answers a write or a linearizable read with a redirect to the leader (DESIGN.md's
/// contract); a write whose caller asks for forwarding (`x-scaleout-forward`, which the client
/// library sends) it carries to the leader, naming the leader in its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_redirects_to_the_leader_or_forwards_when_asked() {
    let _serial = SERIAL.lock().await;
    let cluster = LocalCluster::start(binary(), ClusterOptions::default()).expect("start");
    let (leader, _) = cluster.wait_for_leader(ELECTION).await.expect("a leader");
    let follower = followers(&cluster, leader)[0];
    let follower_addr = cluster
        .replica(follower)
        .expect("follower")
        .api_addr
        .clone();
    let leader_addr = cluster.replica(leader).expect("leader").api_addr.clone();

    // The raw answers of a follower.
    let mut raw = JobServiceClient::new(
        cluster
            .channel_as(&follower_addr, &Role::Admin("admin".into()))
            .expect("dial"),
    );
    let assert_redirect = |status: tonic::Status| {
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, REASON_NOT_LEADER);
        assert_eq!(info.metadata.get("leader_addr"), Some(&leader_addr));
        assert_eq!(info.metadata.get("leader_id"), Some(&leader.to_string()));
        let header = status
            .metadata()
            .get(LEADER_HEADER)
            .and_then(|v| v.to_str().ok());
        assert_eq!(header, Some(leader_addr.as_str()));
    };
    let submit = SubmitJobRequest {
        spec: Some(spec(1)),
        idempotency_key: "through a follower".into(),
    };
    assert_redirect(
        raw.submit_job(submit.clone())
            .await
            .expect_err("a follower redirects a write whose caller did not ask for forwarding"),
    );
    let forwarded = raw
        .submit_job(leader_request(submit, Duration::from_secs(10)))
        .await
        .expect("a follower forwards a write when asked");
    let header = forwarded
        .metadata()
        .get(LEADER_HEADER)
        .and_then(|v| v.to_str().ok());
    assert_eq!(header, Some(leader_addr.as_str()));
    let forwarded_id = forwarded.into_inner().job_id;
    // Even asked, a linearizable read is not forwarded: only the leader serves it.
    assert_redirect(
        raw.get_job(leader_request(
            GetJobRequest {
                job_id: forwarded_id,
                stale: false,
            },
            Duration::from_secs(10),
        ))
        .await
        .expect_err("a follower does not serve linearizable reads"),
    );
    // The follower answered once it had applied the write itself.
    let here = raw
        .get_job(GetJobRequest {
            job_id: forwarded_id,
            stale: true,
        })
        .await
        .expect("the forwarded job, read on the follower");
    assert_eq!(here.into_inner().job.map(|job| job.id), Some(forwarded_id));
    let on_leader = cluster
        .client_at(&leader_addr)
        .expect("client")
        .get_job(forwarded_id, false)
        .await
        .expect("the forwarded job, read on the leader");
    assert_eq!(on_leader.id, forwarded_id);

    // The client, given only the follower, writes through it and follows the read's redirect.
    let client = cluster.client_at(&follower_addr).expect("client");
    let reply = client
        .submit_job(spec(2), None)
        .await
        .expect("submit through a follower");
    let job = client
        .get_job(reply.job_id, false)
        .await
        .expect("linearizable read");
    assert_eq!(job.id, reply.job_id);

    // Resubmitting with the same key returns the same job.
    let first = client
        .submit_job(spec(3), Some("same-key".into()))
        .await
        .expect("submit");
    let again = client
        .submit_job(spec(3), Some("same-key".into()))
        .await
        .expect("resubmit");
    assert_eq!(first.job_id, again.job_id);
    assert!(!first.deduplicated);
    assert!(again.deduplicated);
    let other = client.submit_job(spec(4), Some("same-key".into())).await;
    let rejected = other
        .expect_err("same key, other spec")
        .status()
        .map(|s| s.code());
    assert_eq!(rejected, Some(tonic::Code::AlreadyExists));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_nothing_and_it_rejoins() {
    let _serial = SERIAL.lock().await;
    let mut cluster = LocalCluster::start(binary(), ClusterOptions::default()).expect("start");
    let (old_leader, old_term) = cluster.wait_for_leader(ELECTION).await.expect("a leader");
    let client = cluster.client().expect("client").with_deadline(ELECTION);
    let before = submit_many(&client, 0..40).await;

    cluster.kill(old_leader).expect("kill -9");
    let after = submit_many(&client, 40..60).await;
    let (new_leader, new_term) = cluster
        .wait_for_leader(ELECTION)
        .await
        .expect("a new leader");
    assert_ne!(new_leader, old_leader);
    assert!(new_term > old_term);
    for job in &before {
        client
            .get_job(*job, false)
            .await
            .expect("acknowledged before the kill");
    }

    restart_and_catch_up(&mut cluster, old_leader, new_leader).await;
    let (leader_now, _) = cluster.wait_for_leader(ELECTION).await.expect("leader");
    assert_ne!(
        leader_now, old_leader,
        "the restarted replica rejoins as a follower"
    );
    assert_same_jobs(&cluster, old_leader, leader_now, &[before, after].concat()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_restart_keeps_every_job_without_reinitializing() {
    let _serial = SERIAL.lock().await;
    let mut cluster = LocalCluster::start(binary(), ClusterOptions::default()).expect("start");
    cluster.wait_for_leader(ELECTION).await.expect("a leader");
    let client = cluster.client().expect("client").with_deadline(ELECTION);
    let jobs = submit_many(&client, 0..30).await;
    client.cancel_job(jobs[3]).await.expect("cancel");

    for id in 1..=3 {
        cluster.kill(id).expect("kill -9");
    }
    cluster.start_all().expect("restart all");
    cluster
        .wait_for_leader(ELECTION)
        .await
        .expect("a leader after restart");
    let client = cluster.client().expect("client").with_deadline(ELECTION);
    let listed = client.list_all_jobs(None, false).await.expect("list");
    let ids: Vec<u64> = listed.iter().map(|j| j.id).collect();
    assert_eq!(ids, jobs, "every acknowledged job, in order, nothing else");
    let cancelled = listed
        .iter()
        .find(|j| j.id == jobs[3])
        .expect("cancelled job");
    assert_eq!(cancelled.state, v1::JobState::Cancelled as i32);
    // Ids continue after the restart: the sequence was persisted, not re-initialized.
    let next = client.submit_job(spec(99), None).await.expect("submit");
    assert!(next.job_id > *jobs.iter().max().expect("jobs"));
    for replica in &cluster.replicas {
        let log = std::fs::read_to_string(&replica.log_path).expect("log");
        assert!(log.matches("initialized a new cluster").count() <= 1);
        assert!(
            log.contains("rejoining the cluster without initializing"),
            "replica {} should have found its state on restart",
            replica.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_catches_up_by_snapshot() {
    let _serial = SERIAL.lock().await;
    let options = ClusterOptions {
        overrides: vec![
            "raft.snapshot_every_logs=20".into(),
            "raft.keep_logs_after_snapshot=0".into(),
        ],
        ..ClusterOptions::default()
    };
    let mut cluster = LocalCluster::start(binary(), options).expect("start");
    let (leader, _) = cluster.wait_for_leader(ELECTION).await.expect("a leader");
    let lagging = followers(&cluster, leader)[1];
    cluster.kill(lagging).expect("kill");
    let client = cluster.client().expect("client").with_deadline(ELECTION);
    // One submit per entry: enough entries for several snapshots and purges.
    let jobs = submit_many(&client, 0..120).await;

    restart_and_catch_up(&mut cluster, lagging, leader).await;
    assert_same_jobs(&cluster, lagging, leader, &jobs).await;
    let log =
        std::fs::read_to_string(&cluster.replica(lagging).expect("replica").log_path).expect("log");
    assert!(
        log.contains("installed snapshot"),
        "the catch-up went through a snapshot install"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_catches_up_a_backlog_larger_than_one_message() {
    let _serial = SERIAL.lock().await;
    let mut cluster = LocalCluster::start(binary(), ClusterOptions::default()).expect("start");
    let (leader, _) = cluster.wait_for_leader(ELECTION).await.expect("a leader");
    let lagging = followers(&cluster, leader)[0];
    cluster.kill(lagging).expect("kill");
    let client = cluster.client().expect("client").with_deadline(ELECTION);
    // About 6 MiB of backlog, more than the 4 MiB API limit and any one append.
    let payload = "x".repeat(20_000);
    let mut jobs = Vec::new();
    for n in 0..300u64 {
        let mut job = spec(n);
        job.argv.push(payload.clone());
        jobs.push(
            client
                .submit_job(job, Some(format!("big-{n}")))
                .await
                .expect("submit")
                .job_id,
        );
    }
    restart_and_catch_up(&mut cluster, lagging, leader).await;
    assert_same_jobs(&cluster, lagging, leader, &jobs).await;
    let (leader_now, _) = cluster.wait_for_leader(ELECTION).await.expect("leader");
    assert_eq!(leader_now, leader, "the catch-up caused no election");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_load_triggers_no_election() {
    let _serial = SERIAL.lock().await;
    let cluster = LocalCluster::start(binary(), ClusterOptions::default()).expect("start");
    let (leader, term) = cluster.wait_for_leader(ELECTION).await.expect("a leader");
    let client = std::sync::Arc::new(cluster.client().expect("client").with_deadline(ELECTION));
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let load = (0..32u64).map(|worker| {
        let client = client.clone();
        tokio::spawn(async move {
            let mut done = 0u64;
            // Bounded by time and count.
            while tokio::time::Instant::now() < until && done < 5_000 {
                client
                    .submit_job(spec(worker * 10_000 + done), None)
                    .await
                    .expect("submit");
                done += 1;
            }
            done
        })
    });
    let submitted: u64 = futures::future::join_all(load)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .sum();
    assert!(submitted > 0);
    let (leader_after, term_after) = cluster.wait_for_leader(ELECTION).await.expect("leader");
    assert_eq!(
        (leader_after, term_after),
        (leader, term),
        "{submitted} submits in 3 s caused an election"
    );
}

/// Sends raw bytes as a gRPC request body, to test what a replica does with garbage.
mod raw {
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::Status;

    #[derive(Default)]
    pub struct BytesCodec;

    pub struct BytesCoder;

    impl Encoder for BytesCoder {
        type Item = Vec<u8>;
        type Error = Status;

        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            use bytes::BufMut;
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for BytesCoder {
        type Item = Vec<u8>;
        type Error = Status;

        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
            use bytes::Buf;
            let mut out = vec![0; src.remaining()];
            src.copy_to_slice(&mut out);
            Ok(Some(out))
        }
    }

    impl Codec for BytesCodec {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = BytesCoder;
        type Decoder = BytesCoder;

        fn encoder(&mut self) -> BytesCoder {
            BytesCoder
        }

        fn decoder(&mut self) -> BytesCoder {
            BytesCoder
        }
    }

    pub async fn call(
        channel: tonic::transport::Channel,
        path: &'static str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, Status> {
        let mut grpc = tonic::client::Grpc::new(channel)
            .max_encoding_message_size(usize::MAX)
            .max_decoding_message_size(usize::MAX);
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
        grpc.unary(tonic::Request::new(body), path, BytesCodec)
            .await
            .map(|r| r.into_inner())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversize_messages_get_an_error_and_the_replica_keeps_serving() {
    let _serial = SERIAL.lock().await;
    let options = ClusterOptions {
        replicas: 1,
        ..ClusterOptions::default()
    };
    let cluster = LocalCluster::start(binary(), options).expect("start");
    cluster.wait_for_leader(ELECTION).await.expect("a leader");
    let addr = cluster.replica(1).expect("replica").api_addr.clone();
    let peer = cluster.replica(1).expect("replica").peer_addr.clone();
    let api = || {
        cluster
            .channel_as(&addr, &Role::Admin("admin".into()))
            .expect("channel")
    };

    let garbage = raw::call(api(), "/scaleout.v1.JobService/SubmitJob", vec![0xff; 64]).await;
    let status = garbage.expect_err("garbage is refused");
    assert!(
        matches!(
            status.code(),
            tonic::Code::Internal | tonic::Code::InvalidArgument
        ),
        "{status:?}"
    );

    let oversize = raw::call(api(), "/scaleout.v1.JobService/SubmitJob", vec![0; 5 << 20]).await;
    let status = oversize.expect_err("an oversize message is refused");
    assert!(
        matches!(
            status.code(),
            tonic::Code::ResourceExhausted | tonic::Code::OutOfRange
        ),
        "{status:?}"
    );

    let raft_garbage = raw::call(
        cluster
            .channel_as(&peer, &Role::Replica(1))
            .expect("channel"),
        "/scaleout.raft.v1.RaftService/AppendEntries",
        vec![0x0a, 0x03, 1, 2, 3],
    )
    .await;
    let status = raft_garbage.expect_err("an undecodable raft message is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    let client = cluster.client().expect("client");
    let reply = client
        .submit_job(spec(1), None)
        .await
        .expect("still serving");
    client
        .get_job(reply.job_id, false)
        .await
        .expect("still reading");
}

/// A leader restarted after a power cut of the whole cluster comes back as leader of the same
/// term (openraft restores a leader from its own committed vote), but with the commit index it
/// had last synced: entries it committed and acknowledged just before the cut are in its log
/// and not yet known committed. A linearizable read there must still see every acknowledged
/// job: the first one to get its quorum (a follower back, the leader's replication to it still
/// backing off) must not answer from the older commit index. Three cuts: each one catches the
/// breach about two times in three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_back_from_a_power_cut_reads_every_acknowledged_job() {
    let _serial = SERIAL.lock().await;
    let options = ClusterOptions {
        tls: false,
        // Long enough that no follower stands for election while the leader restarts.
        overrides: vec![
            "raft.election_timeout_min_ms=4000".into(),
            "raft.election_timeout_max_ms=5000".into(),
        ],
        ..ClusterOptions::default()
    };
    let mut cluster = LocalCluster::configure_in_temp_dir(binary(), options).expect("configure");
    let power = cluster
        .mount_power_cuts()
        .expect("power-cut file systems (needs /dev/fuse)");
    cluster.start_all().expect("start");
    let (leader, term) = cluster.wait_for_leader(ELECTION).await.expect("a leader");
    let leader_api = cluster.replica(leader).expect("leader").api_addr.clone();
    for round in 0..3 {
        let client = cluster
            .client_at(&leader_api)
            .expect("client")
            .with_deadline(ELECTION);
        let acknowledged = submit_many(&client, round * 100..round * 100 + 20).await;
        let newest = *acknowledged.last().expect("jobs");

        // The cut right after the acknowledgment: the leader's newest commit index was written
        // and not synced (only the log entries are synced before an acknowledgment).
        for id in 1..=3 {
            cluster.kill(id).expect("kill -9");
        }
        for mount in power.values() {
            mount.cut(None);
        }
        cluster.restart(leader).expect("restart the leader");
        for id in followers(&cluster, leader) {
            cluster.restart(id).expect("restart a follower");
        }

        // Linearizable reads of the newest job at the leader, as soon as it answers them.
        let reader = cluster
            .client_at(&leader_api)
            .expect("client")
            .with_deadline(Duration::from_millis(500));
        let deadline = tokio::time::Instant::now() + ELECTION;
        let read = loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the restarted leader served no read for {ELECTION:?}:\n{}",
                cluster.log_tails(20)
            );
            match reader.get_job(newest, false).await {
                Ok(job) => break Ok(job),
                Err(scaleout::client::ClientError::Rejected(status))
                    if status.code() == tonic::Code::NotFound =>
                {
                    break Err(status)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        let (leader_now, term_now) = cluster.wait_for_leader(ELECTION).await.expect("a leader");
        let job = read.unwrap_or_else(|status| {
            panic!(
                "cut {round}: a linearizable read missed acknowledged job {newest} ({}); the \
                 leader is {leader_now} in term {term_now} (was {leader} in term {term})",
                status.message()
            )
        });
        assert_eq!(job.id, newest);
        assert_eq!(
            (leader_now, term_now),
            (leader, term),
            "the leader came back as leader of its term (else this test shows nothing)"
        );
    }
}
