//! Group commit, with a real replica running in-process: concurrent submits share Raft entries,
//! and each caller still gets its own result.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use scaleout::client::Client;
use scaleout::config::MasterConfig;
use scaleout::harness::free_ports;
use scaleout::pb::v1;
use scaleout::transport::Security;

const SUBMITS: u64 = 300;

fn spec(n: u64) -> v1::JobSpec {
    v1::JobSpec {
        argv: vec!["/bin/echo".into(), n.to_string()],
        max_attempts: 1,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_share_entries_and_each_gets_its_own_job() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = free_ports(2).expect("ports");
    let api = format!("127.0.0.1:{}", ports[0]);
    let text = format!(
        "id = 1\ndata_dir = \"{}\"\ninsecure = true\n[[members]]\nid = 1\napi = \"{api}\"\npeer = \"127.0.0.1:{}\"\n",
        dir.path().join("data").display(),
        ports[1]
    );
    let config = MasterConfig::from_toml_str(&text, dir.path(), &[]).expect("config");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let replica = tokio::spawn(scaleout::master::run(config, async {
        let _ = stopped.await;
    }));

    let client = Arc::new(
        Client::new(&[api], Security::Insecure)
            .expect("client")
            .with_deadline(Duration::from_secs(30)),
    );
    // A first write waits out the election; after it, the log index is where batching starts.
    client
        .submit_job(spec(u64::MAX), None)
        .await
        .expect("first submit");
    let before = client.cluster_status().await.expect("status");
    let first_index = before.replicas[0].last_log_index.expect("a log");

    let submits = (0..SUBMITS).map(|n| {
        let client = client.clone();
        tokio::spawn(async move {
            let reply = client
                .submit_job(spec(n), Some(format!("k{n}")))
                .await
                .expect("submit");
            (n, reply.job_id)
        })
    });
    let results = futures::future::join_all(submits).await;
    let mut ids = BTreeSet::new();
    for result in results {
        let (n, job_id) = result.expect("task");
        // Each caller got its own job: the one whose argv carries its number.
        let job = client.get_job(job_id, false).await.expect("get");
        assert_eq!(job.spec.expect("spec").argv[1], n.to_string());
        assert!(ids.insert(job_id), "job id {job_id} handed out twice");
    }
    assert_eq!(ids.len() as u64, SUBMITS);

    let after = client.cluster_status().await.expect("status");
    let entries = after.replicas[0].last_log_index.expect("a log") - first_index;
    assert!(
        entries < SUBMITS / 2,
        "{SUBMITS} concurrent submits took {entries} log entries: they were not batched"
    );

    let _ = stop.send(());
    replica
        .await
        .expect("join")
        .expect("replica ran and stopped cleanly");
}
