//! Membership changes against real replica processes: `cluster add-replica` (learner, catch-up
//! by snapshot, voter) and `cluster remove-replica`, the lost-disk procedure (remove, wipe,
//! add back), and the refusals (unreachable, wrong id, unknown member, not an admin).
//!
//! Serialized like the other multi-process tests: clusters started in parallel on 2 cores
//! starve each other's elections.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use scaleout::client::Client;
use scaleout::harness::{ClusterOptions, LocalCluster, ReplicaAddresses};
use scaleout::pb::v1;
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());
const ELECTION: Duration = Duration::from_secs(60);
const CATCH_UP: Duration = Duration::from_secs(60);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_scaleout"))
}

/// Snapshots every 20 entries and no log kept behind them, so a new member can only catch up
/// by snapshot.
fn compacting_cluster() -> LocalCluster {
    LocalCluster::start(
        binary(),
        ClusterOptions {
            overrides: vec![
                "raft.snapshot_every_logs=20".into(),
                "raft.keep_logs_after_snapshot=0".into(),
            ],
            ..ClusterOptions::default()
        },
    )
    .expect("start cluster")
}

async fn submit(client: &Client, range: std::ops::Range<u64>) -> Vec<u64> {
    let mut ids = Vec::new();
    for n in range {
        let spec = v1::JobSpec {
            argv: vec!["/bin/echo".into(), format!("job {n}")],
            name: format!("job-{n}"),
            max_attempts: 1,
            ..Default::default()
        };
        let reply = client
            .submit_job(spec, Some(format!("key-{n}")))
            .await
            .expect("submit");
        ids.push(reply.job_id);
    }
    ids
}

/// `scaleout cluster <args> --endpoints … <admin certificate> --output json`.
fn cluster_cli(cluster: &LocalCluster, args: &[&str]) -> Output {
    std::process::Command::new(binary())
        .arg("cluster")
        .args(args)
        .arg("--endpoints")
        .arg(cluster.endpoints().join(","))
        .args(cluster.cli_security_args())
        .args(["--output", "json"])
        .output()
        .expect("run the CLI")
}

fn json_of(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "exit {:?}; stderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON output")
}

fn voters(value: &serde_json::Value) -> Vec<u64> {
    value["voters"]
        .as_array()
        .expect("voters")
        .iter()
        .filter_map(|v| v.as_u64())
        .collect()
}

/// Runs `cluster <args>`, which must fail with exit `code` (1 a refused change, 2 a malformed
/// request, 0 either); returns its stderr.
fn refused(cluster: &LocalCluster, args: &[&str], code: i32) -> String {
    let output = cluster_cli(cluster, args);
    let expected = if code == 0 { vec![1, 2] } else { vec![code] };
    assert!(
        output.status.code().is_some_and(|c| expected.contains(&c)),
        "{args:?}: exit {:?}, stdout {} stderr {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// Waits until the cluster reports exactly `expected` as its voters (any replica answers, and
/// a follower may be an entry behind the leader).
async fn wait_for_voters(client: &Client, expected: &[u64]) {
    let deadline = tokio::time::Instant::now() + ELECTION;
    loop {
        let voters: Vec<u64> = match client.cluster_status().await {
            Ok(status) => status
                .replicas
                .iter()
                .filter(|r| r.voter)
                .map(|r| r.id)
                .collect(),
            Err(_) => Vec::new(),
        };
        if voters == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "voters {voters:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `cluster add-replica`, retried while the freshly started replica is not yet listening.
fn add_replica(cluster: &LocalCluster, id: u64, api: &str, peer: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + ELECTION;
    loop {
        let output = cluster_cli(
            cluster,
            &["add-replica", &id.to_string(), "--api", api, "--peer", peer],
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success()
            || !stderr.contains("cannot reach")
            || std::time::Instant::now() > deadline
        {
            return json_of(&output);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until replica `id` answers a stale read of every job in `ids` from its own state.
async fn wait_holds_jobs(cluster: &LocalCluster, id: u64, ids: &[u64]) {
    let replica = cluster.replica(id).expect("replica");
    let client = cluster
        .client_at(&replica.api_listen)
        .expect("client")
        .with_deadline(Duration::from_secs(2));
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    loop {
        let mut missing = None;
        for job in ids {
            if client.get_job(*job, true).await.is_err() {
                missing = Some(*job);
                break;
            }
        }
        match missing {
            None => return,
            Some(job) if tokio::time::Instant::now() > deadline => panic!(
                "replica {id} still lacks job {job}; its log:\n{}",
                cluster.log_tail(id, 40)
            ),
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_joins_by_snapshot_then_a_dead_one_is_removed() {
    let _serial = SERIAL.lock().await;
    let mut cluster = compacting_cluster();
    cluster.wait_for_leader(ELECTION).await.expect("leader");
    let client = cluster.client().expect("client");
    let jobs = submit(&client, 0..80).await;

    // Replica 4: configured with the members and itself, started with an empty data dir. It
    // must not start a cluster of its own; it waits to be added.
    let id = cluster
        .configure_new_replica(ReplicaAddresses::local(4).expect("ports"))
        .expect("configure replica 4");
    cluster.restart(id).expect("start replica 4");
    let (api, peer) = {
        let r = cluster.replica(4).expect("replica 4");
        (r.api_addr.clone(), r.peer_addr.clone())
    };
    let added = add_replica(&cluster, 4, &api, &peer);
    assert_eq!(voters(&added), vec![1, 2, 3, 4]);
    assert!(added["log_index"].as_u64().unwrap_or(0) > 0);
    wait_for_voters(&client, &[1, 2, 3, 4]).await;
    wait_holds_jobs(&cluster, 4, &jobs).await;
    assert!(
        std::fs::read_to_string(&cluster.replica(4).expect("replica 4").log_path)
            .unwrap_or_default()
            .contains("installed snapshot"),
        "replica 4 caught up through a snapshot"
    );
    // Adding it again changes nothing.
    let again = add_replica(&cluster, 4, &api, &peer);
    assert_eq!(again["log_index"].as_u64(), Some(0));

    // Four voters: the leader dies, three of four elect a new one and take writes.
    let (leader, _) = cluster.wait_for_leader(ELECTION).await.expect("leader");
    cluster.kill(leader).expect("kill the leader");
    let (new_leader, _) = cluster.wait_for_leader(ELECTION).await.expect("new leader");
    assert_ne!(new_leader, leader);
    let more = submit(&client, 80..90).await;

    // The dead one is removed; three voters remain and keep taking writes.
    let removed = json_of(&cluster_cli(
        &cluster,
        &["remove-replica", &leader.to_string()],
    ));
    let expected: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|v| *v != leader).collect();
    assert_eq!(voters(&removed), expected);
    cluster.forget(leader).expect("forget");
    wait_for_voters(&client, &expected).await;
    submit(&client, 90..100).await;
    for id in expected {
        wait_holds_jobs(&cluster, id, &more).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_its_disk_is_removed_and_added_back() {
    let _serial = SERIAL.lock().await;
    let mut cluster = compacting_cluster();
    let (leader, _) = cluster.wait_for_leader(ELECTION).await.expect("leader");
    let client = cluster.client().expect("client");
    let jobs = submit(&client, 0..60).await;
    let lost = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");

    // The operator's procedure: remove the member, replace the disk, start it empty, add it.
    let removed = json_of(&cluster_cli(
        &cluster,
        &["remove-replica", &lost.to_string()],
    ));
    assert_eq!(voters(&removed).len(), 2);
    cluster
        .stop(lost, Duration::from_secs(10))
        .await
        .expect("stop");
    cluster.wipe(lost).expect("wipe");
    let after = submit(&client, 60..70).await;
    cluster.restart(lost).expect("start it empty");
    let (api, peer) = {
        let r = cluster.replica(lost).expect("replica");
        (r.api_addr.clone(), r.peer_addr.clone())
    };
    let added = add_replica(&cluster, lost, &api, &peer);
    assert_eq!(voters(&added), vec![1, 2, 3]);
    wait_holds_jobs(&cluster, lost, &jobs).await;
    wait_holds_jobs(&cluster, lost, &after).await;
    cluster.wait_for_leader(ELECTION).await.expect("one leader");
}

/// The disk-loss scenario of invariant 1: C is cut off; X is acknowledged by A and B; B's disk is
/// wiped and B restarted in place (what an operator might do); A dies; C heals. Were B to vote,
/// C (without X) could be elected with B's vote and X would be gone. B refuses to start instead
/// (exit 2, naming the safe procedure), C alone elects nobody, and once A is back X is there;
/// then the safe procedure brings B back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_voter_restarted_in_place_is_refused_and_no_acknowledged_job_is_lost() {
    use scaleout::chaos::proxy::LinkMode;

    let _serial = SERIAL.lock().await;
    let (mut cluster, network) =
        LocalCluster::start_behind_proxies(binary(), ClusterOptions::default())
            .await
            .expect("a cluster behind proxies");
    let (a, _) = cluster.wait_for_leader(ELECTION).await.expect("leader");
    let mut others = [1, 2, 3].into_iter().filter(|id| *id != a);
    let (b, c) = (others.next().expect("b"), others.next().expect("c"));
    let client = cluster.client().expect("client");
    let before = submit(&client, 0..3).await;

    network.isolate(c, LinkMode::Blackhole);
    let x = submit(&client, 3..4).await[0];

    cluster.kill(b).expect("kill b");
    cluster.wipe(b).expect("wipe b");
    cluster.restart(b).expect("restart b in place");
    let exit = cluster
        .wait_exit(b, ELECTION)
        .await
        .expect("wait for b")
        .unwrap_or_else(|| panic!("b kept running; its log:\n{}", cluster.log_tail(b, 30)));
    assert_eq!(exit.code(), Some(2), "{}", cluster.log_tail(b, 30));
    let log = cluster.log_tail(b, 30);
    assert!(log.contains("its state was lost"), "{log}");
    assert!(log.contains("remove-replica"), "{log}");

    cluster.kill(a).expect("kill a");
    network.heal();
    // B again, now that C answers too: still refused. C alone makes no leader.
    cluster.restart(b).expect("restart b again");
    let exit = cluster.wait_exit(b, ELECTION).await.expect("wait for b");
    assert_eq!(
        exit.and_then(|s| s.code()),
        Some(2),
        "{}",
        cluster.log_tail(b, 30)
    );
    // For several election timeouts, C never leads (it would need B's vote).
    let window = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < window {
        if let Ok(status) = cluster.status_of(c).await {
            assert!(
                status.replicas.iter().all(|r| r.role != "leader"),
                "no leader without a majority: {status:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A is back: A and C elect a leader, and X is there.
    cluster.restart(a).expect("restart a");
    cluster
        .wait_for_leader(ELECTION)
        .await
        .expect("a leader of a and c");
    let job = client.get_job(x, false).await.expect("x survived");
    assert_eq!(job.id, x);
    assert_eq!(
        job.spec.expect("spec").name,
        "job-3",
        "the right job survived"
    );
    wait_holds_jobs(&cluster, c, &before).await;

    // The safe procedure: remove b, start it empty, add it back; it votes again.
    json_of(&cluster_cli(&cluster, &["remove-replica", &b.to_string()]));
    cluster.restart(b).expect("start b empty");
    let (api, peer) = {
        let r = cluster.replica(b).expect("b");
        (r.api_addr.clone(), r.peer_addr.clone())
    };
    let added = add_replica(&cluster, b, &api, &peer);
    assert_eq!(voters(&added), vec![1, 2, 3]);
    wait_holds_jobs(&cluster, b, &[x]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_are_refused_with_reasons() {
    let _serial = SERIAL.lock().await;
    let mut cluster = LocalCluster::start(binary(), ClusterOptions::default()).expect("start");
    cluster.wait_for_leader(ELECTION).await.expect("leader");
    let client = cluster.client().expect("client");
    // Nobody listens there.
    let nobody = ReplicaAddresses::local(9).expect("ports");
    let error = refused(
        &cluster,
        &[
            "add-replica",
            "9",
            "--api",
            &nobody.api,
            "--peer",
            &nobody.peer,
        ],
        1,
    );
    assert!(error.contains("cannot reach replica 9"), "{error}");
    // Replica 2's peer address for a new member.
    let peer2 = cluster.replica(2).expect("replica 2").peer_addr.clone();
    let error = refused(
        &cluster,
        &["add-replica", "9", "--api", &nobody.api, "--peer", &peer2],
        2,
    );
    assert!(error.contains("replica 2 already uses"), "{error}");
    // A running replica 4, claimed as replica 9.
    cluster
        .configure_new_replica(ReplicaAddresses::local(4).expect("ports"))
        .expect("configure replica 4");
    cluster.restart(4).expect("start replica 4");
    let (api4, peer4) = {
        let r = cluster.replica(4).expect("replica 4");
        (r.api_addr.clone(), r.peer_addr.clone())
    };
    let deadline = tokio::time::Instant::now() + ELECTION;
    let error = loop {
        let error = refused(
            &cluster,
            &["add-replica", "9", "--api", &api4, "--peer", &peer4],
            0,
        );
        if !error.contains("cannot reach") || tokio::time::Instant::now() > deadline {
            break error;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(error.contains("is replica 4, not 9"), "{error}");
    // A member's addresses cannot be changed in place.
    let error = refused(
        &cluster,
        &[
            "add-replica",
            "2",
            "--api",
            &nobody.api,
            "--peer",
            &nobody.peer,
        ],
        1,
    );
    assert!(error.contains("already a member"), "{error}");
    let error = refused(
        &cluster,
        &[
            "add-replica",
            "9",
            "--api",
            "no-port",
            "--peer",
            &nobody.peer,
        ],
        2,
    );
    assert!(error.contains("not host:port"), "{error}");
    // Removing a non-member changes nothing (also what a retried removal sees).
    let unchanged = json_of(&cluster_cli(&cluster, &["remove-replica", "9"]));
    assert_eq!(unchanged["log_index"].as_u64(), Some(0));
    wait_for_voters(&client, &[1, 2, 3]).await;

    // An operator may look but not change the membership.
    let operator_dir = cluster.certs.as_ref().expect("TLS cluster").dir.clone();
    let output = std::process::Command::new(binary())
        .args(["cluster", "remove-replica", "3", "--endpoints"])
        .arg(cluster.endpoints().join(","))
        .arg("--tls-dir")
        .arg(&operator_dir)
        .args(["--identity", "operator"])
        .output()
        .expect("run the CLI");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("RemoveReplica"), "{stderr}");
    wait_for_voters(&client, &[1, 2, 3]).await;
}
