//! `scaleout demo`: the product in one command.
//!
//! Starts three replicas and two worker agents as real processes in a temp dir, every
//! connection mutual TLS with certificates from a development CA made there (and shows a worker
//! certificate and a certificate-less client being refused), submits sample
//! jobs (some fail and are retried, some fail for good, one is cancelled while it runs), kills
//! the leader with SIGKILL while work is flowing, keeps submitting through the new leader,
//! restarts the old leader, checks that it caught up, hands leadership back to it (as a leader
//! stopped with SIGTERM hands it over), and checks that every acknowledged job ran to its end
//! exactly as recorded. Prints the jobs with their attempts, the failover and a summary;
//! leaves nothing behind.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::time::Instant;

use crate::cli::state_name;
use crate::cli::table::print_table;
use crate::client::Client;
use crate::harness::{ClusterOptions, LocalCluster, WorkerOptions};
use crate::pb::v1;
use crate::tls::Role;
use crate::transport::Security;

const WAIT: Duration = Duration::from_secs(60);

/// Shows that certificates decide who may do what: a worker's certificate cannot manage
/// workers, and a client without a certificate is not let in.
async fn show_refusals(cluster: &LocalCluster) -> anyhow::Result<()> {
    let Some(certs) = &cluster.certs else {
        return Ok(());
    };
    let worker = cluster.workers.first().context("no worker")?;
    let as_worker = Client::new(
        &cluster.endpoints(),
        certs.security(&Role::Worker(worker.agent_id))?,
    )?
    .with_deadline(Duration::from_secs(5));
    match as_worker
        .set_worker_state(&worker.agent_id.to_string(), v1::WorkerAction::Disable)
        .await
    {
        Ok(_) => bail!("a worker certificate was allowed to disable a worker"),
        Err(error) => println!(
            "worker {}'s certificate asking AdminService to disable a worker: refused ({})",
            worker.name,
            error
                .status()
                .map_or_else(|| error.to_string(), |s| format!("{:?}", s.code()))
        ),
    }
    let plaintext = Client::new(&cluster.endpoints(), Security::Insecure)?
        .with_deadline(Duration::from_secs(2));
    match plaintext.cluster_status().await {
        Ok(_) => bail!("a plaintext client without a certificate was served"),
        Err(_) => println!("a client without a certificate: refused at the TLS handshake"),
    }
    Ok(())
}

fn shell(name: String, script: String, max_attempts: u32) -> v1::JobSpec {
    v1::JobSpec {
        argv: vec!["/bin/sh".into(), "-c".into(), script],
        name,
        max_attempts,
        ..Default::default()
    }
}

/// Sample job `n`: a mix of quick loads, flaky jobs that succeed on a retry, and broken ones.
fn sample_spec(n: u32, dir: &Path) -> v1::JobSpec {
    match n % 5 {
        1 => {
            let counter = dir.join(format!("flaky-{n}"));
            let script = format!(
                "c={}; n=$(cat $c 2>/dev/null || echo 0); echo $((n+1)) > $c; \
                 if [ $n -eq 0 ]; then echo 'source not ready' >&2; exit 1; fi; echo loaded",
                counter.display()
            );
            shell(format!("flaky-extract-{n}"), script, 3)
        }
        2 if n % 10 == 2 => shell(
            format!("broken-package-{n}"),
            "echo 'login failed for user' >&2; exit 2".into(),
            2,
        ),
        3 => shell(
            format!("nightly-etl-{n}"),
            format!("echo etl {n}; sleep 0.5"),
            1,
        ),
        _ => shell(
            format!("load-sales-{n}"),
            format!("echo sales batch {n}; sleep 0.2"),
            1,
        ),
    }
}

/// `keep`: once done, leave the cluster and its workers running, with the consoles open and
/// sign-in tokens printed, until Ctrl-C.
pub async fn run(jobs: u32, keep: bool) -> anyhow::Result<()> {
    let binary = std::env::current_exe().context("cannot find the scaleout binary")?;
    let options = ClusterOptions {
        log_filter: "warn".into(),
        overrides: vec!["workers.lease_interval_ms=10000".into()],
        ..ClusterOptions::default()
    };
    let mut cluster = LocalCluster::start(&binary, options)?;
    println!("started 3 replicas in {}", cluster.root().display());
    if let Some(certs) = &cluster.certs {
        println!(
            "every connection is mutual TLS; development CA and certificates in {}",
            certs.dir.display()
        );
    }
    let (leader, term) = cluster.wait_for_leader(WAIT).await?;
    println!("replica {leader} leads in term {term}");
    for name in ["worker-a", "worker-b"] {
        cluster.start_worker(WorkerOptions {
            extra_config: vec![
                "agent_heartbeat_interval_ms = 1000".into(),
                "task_heartbeat_interval_ms = 1000".into(),
                "acquire_wait_ms = 1000".into(),
                "task_request_max_cpu = 100.0".into(),
                "task_request_min_memory_mb = 0".into(),
            ],
            ..WorkerOptions::named(name)
        })?;
    }
    let client = cluster.client()?.with_deadline(WAIT);
    crate::harness::wait_for_workers(&client, 2, WAIT).await?;
    println!("2 workers online");
    show_refusals(&cluster).await?;

    let dir = cluster.root().to_path_buf();
    let mut acknowledged = Vec::new();
    let first_half = jobs / 2;
    for n in 0..first_half {
        acknowledged.push(submit(&client, sample_spec(n, &dir), n).await?);
    }
    // One of the jobs hangs; it is cancelled while it runs.
    let samples = jobs - 1;
    let long = submit(
        &client,
        shell("stuck-package".into(), "sleep 600".into(), 1),
        samples,
    )
    .await?;
    acknowledged.push(long);
    println!(
        "{} jobs acknowledged; killing the leader (replica {leader}) with SIGKILL",
        acknowledged.len()
    );

    let killed_at = Instant::now();
    cluster.kill(leader)?;
    // The first write after the kill measures the failover as a client sees it.
    acknowledged.push(submit(&client, sample_spec(first_half, &dir), first_half).await?);
    let gap = killed_at.elapsed();
    let (new_leader, new_term) = cluster.wait_for_leader(WAIT).await?;
    println!(
        "failover: new leader {new_leader} (term {new_term}), first write accepted {} ms after the kill",
        gap.as_millis()
    );
    for n in first_half + 1..samples {
        acknowledged.push(submit(&client, sample_spec(n, &dir), n).await?);
    }
    wait_for_state(&client, long, v1::JobState::Running).await?;
    client.cancel_job(long).await?;
    println!("cancel of running job {long} sent");

    let mut finished = Vec::new();
    for id in &acknowledged {
        finished.push(wait_for_end(&client, *id).await?);
    }

    cluster.restart(leader)?;
    let applied = crate::harness::applied_index(&cluster.status_of(new_leader).await?, new_leader)
        .context("the leader reports no applied index")?;
    cluster.wait_for_applied(leader, applied, WAIT).await?;
    println!("replica {leader} restarted from its data dir and caught up to index {applied}");
    // What SIGTERM on a leader does before it stops, here on demand (`cluster transfer-leader`).
    let current_leader = match client.transfer_leader(Some(leader)).await {
        Ok(handed) => {
            println!(
                "leadership handed back to replica {} (term {}) in {} ms, without an election \
                 timeout",
                handed.leader_id, handed.term, handed.elapsed_ms
            );
            handed.leader_id
        }
        Err(error) => {
            println!("leadership could not be handed back to replica {leader}: {error}");
            new_leader
        }
    };
    // Write forwarding: a client that reaches only a follower still gets its writes in.
    let follower = cluster.follower_of(current_leader)?;
    let through = cluster
        .client_at(&cluster.replica(follower)?.api_addr)?
        .with_deadline(WAIT);
    let sent = Instant::now();
    let forwarded = submit(
        &through,
        shell("through-a-follower".into(), "true".into(), 1),
        jobs,
    )
    .await?;
    println!(
        "a client that dials only replica {follower}, a follower: its submit was forwarded to \
         the leader and acknowledged in {} ms ({} writes forwarded by that replica so far)",
        sent.elapsed().as_millis(),
        forwarded_by(&cluster, follower)
            .await
            .map_or_else(|| "?".to_string(), |n| n.to_string())
    );
    finished.push(wait_for_end(&client, forwarded).await?);
    let rejoined = cluster.client_at(&cluster.replica(leader)?.api_addr)?;
    let mut lost = Vec::new();
    for job in &finished {
        match rejoined.get_job(job.id, true).await {
            Ok(copy) if copy == *job => {}
            _ => lost.push(job.id),
        }
    }

    let workers: Vec<(String, String)> = cluster
        .workers
        .iter()
        .map(|w| (w.agent_id.to_string(), w.name.clone()))
        .collect();
    let worker_name = |id: &str| {
        workers
            .iter()
            .find(|(agent, _)| agent == id)
            .map_or(id.to_string(), |(_, n)| n.clone())
    };
    let rows: Vec<Vec<String>> = finished
        .iter()
        .map(|job| {
            let spec = job.spec.clone().unwrap_or_default();
            let attempts: Vec<String> = job
                .attempts
                .iter()
                .map(|a| format!("{}@{}", outcome(a.outcome), worker_name(&a.worker_id)))
                .collect();
            vec![
                job.id.to_string(),
                spec.name,
                state_name(job.state).to_string(),
                attempts.join(" "),
            ]
        })
        .collect();
    println!();
    print_table(
        &["JOB", "NAME", "STATE", "ATTEMPTS (outcome@worker)"],
        &rows,
    );
    println!();
    let count = |state: v1::JobState| finished.iter().filter(|j| j.state == state as i32).count();
    let retried = finished
        .iter()
        .filter(|j| j.state == v1::JobState::Succeeded as i32 && j.attempts.len() > 1)
        .count();
    let twice = finished
        .iter()
        .filter(|j| {
            j.attempts
                .iter()
                .filter(|a| a.outcome == v1::AttemptOutcome::Succeeded as i32)
                .count()
                > 1
        })
        .count();
    println!(
        "failover: old leader {leader} -> new leader {new_leader}, gap {} ms",
        gap.as_millis()
    );
    println!(
        "summary: {} jobs acknowledged: {} succeeded ({} after a retry), {} failed, {} cancelled; \
         {} lost, {} completed twice",
        finished.len(),
        count(v1::JobState::Succeeded),
        retried,
        count(v1::JobState::Failed),
        count(v1::JobState::Cancelled),
        lost.len(),
        twice
    );
    let status = client.cluster_status().await?;
    println!(
        "outbox: {} events (job, attempt, worker and log line changes) recorded on every replica \
         for SSISDB; the demo configures no SSISDB, so they stay there until the retention \
         prunes them (`scaleout ssisdb install-schema` and an [ssisdb] section ship them)",
        status.outbox_events
    );
    show_operations(&cluster, current_leader).await?;
    if keep {
        keep_open(&cluster).await?;
    }
    drop(cluster);
    if !lost.is_empty() || twice > 0 {
        bail!("invariants broken: lost {lost:?}, completed twice {twice}");
    }
    Ok(())
}

/// Prints the consoles and a sign-in token per role, and waits for Ctrl-C.
async fn keep_open(cluster: &LocalCluster) -> anyhow::Result<()> {
    use crate::tls::Role;
    const TOKEN_LIFETIME: Duration = Duration::from_secs(8 * 3600);
    println!();
    for role in [
        Role::Operator("operator".into()),
        Role::Admin("admin".into()),
    ] {
        let token = cluster.console_token(&role, TOKEN_LIFETIME)?;
        println!("sign-in token for {role} (valid 8 hours):\n{token}\n");
    }
    for replica in &cluster.replicas {
        if let Some(addr) = &replica.console_addr {
            println!("replica {}'s console: https://{addr}/", replica.id);
        }
    }
    println!(
        "the browser will not know the demo's CA: accept its warning, or import {}; the cluster \
         and its workers run until Ctrl-C",
        cluster
            .certs
            .as_ref()
            .map(|certs| certs.dir.join("ca.pem").display().to_string())
            .unwrap_or_default()
    );
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for Ctrl-C")?;
    println!("stopping the demo cluster");
    Ok(())
}

/// How many writes replica `id` forwarded to a leader and got answered, from its `/metrics`.
async fn forwarded_by(cluster: &LocalCluster, id: u64) -> Option<u64> {
    let addr = &cluster.replica(id).ok()?.metrics_addr;
    let page = crate::ops::probe::get(addr, "/metrics", Duration::from_secs(5))
        .await
        .ok()?;
    crate::ops::probe::samples(&page.body)
        .get("scaleout_forwarded_commands_total{outcome=\"answered\"}")
        .map(|value| *value as u64)
}

/// What an operator would watch: each replica's readiness and metrics endpoint, and a few
/// figures from the leader's `/metrics`.
async fn show_operations(cluster: &LocalCluster, leader: u64) -> anyhow::Result<()> {
    use crate::ops::probe;
    const PROBE: Duration = Duration::from_secs(5);
    println!();
    for replica in &cluster.replicas {
        let ready = probe::get(&replica.metrics_addr, "/readyz", PROBE).await?;
        println!(
            "replica {}: http://{}/metrics, /readyz: {}",
            replica.id,
            replica.metrics_addr,
            ready.body.trim()
        );
    }
    let consoles: Vec<String> = cluster
        .replicas
        .iter()
        .filter_map(|replica| replica.console_addr.as_ref())
        .map(|addr| format!("https://{addr}/"))
        .collect();
    if let Some(certs) = cluster
        .identity_paths(&crate::tls::Role::Operator("operator".into()))
        .and_then(|paths| paths.ca.parent().map(|dir| dir.display().to_string()))
    {
        println!(
            "web console (any replica): {}; sign in with the token of `scaleout console token \
             --tls-dir {certs} --identity operator` (the CA is {certs}/ca.pem); `demo --keep` \
             keeps the cluster and its consoles running after the summary",
            consoles.join(", ")
        );
    }
    let page = probe::get(&cluster.replica(leader)?.metrics_addr, "/metrics", PROBE).await?;
    let samples = probe::samples(&page.body);
    let value = |series: &str| samples.get(series).copied().unwrap_or(0.0);
    let (entries, commands) = (
        value("scaleout_proposals_total"),
        value("scaleout_proposal_commands_total"),
    );
    let calls: f64 = samples
        .iter()
        .filter(|(series, _)| series.starts_with("scaleout_rpc_duration_seconds_count{"))
        .map(|(_, count)| count)
        .sum();
    println!(
        "leader {leader}'s /metrics: {commands} commands in {entries} Raft entries ({:.1} per \
         entry), {calls} gRPC calls served since it started, {} leases granted and {} expired \
         as applied since it started",
        if entries > 0.0 {
            commands / entries
        } else {
            0.0
        },
        value("scaleout_leases_granted_total"),
        value("scaleout_leases_expired_total"),
    );
    Ok(())
}

fn outcome(value: i32) -> &'static str {
    match v1::AttemptOutcome::try_from(value) {
        Ok(v1::AttemptOutcome::Succeeded) => "succeeded",
        Ok(v1::AttemptOutcome::Failed) => "failed",
        Ok(v1::AttemptOutcome::Expired) => "expired",
        Ok(v1::AttemptOutcome::Cancelled) => "cancelled",
        _ => "running",
    }
}

async fn submit(client: &Client, spec: v1::JobSpec, n: u32) -> anyhow::Result<u64> {
    let reply = client
        .submit_job(spec, Some(format!("demo-{n}")))
        .await
        .with_context(|| format!("submitting sample job {n}"))?;
    Ok(reply.job_id)
}

async fn wait_for_state(client: &Client, id: u64, state: v1::JobState) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if client.get_job(id, false).await?.state == state as i32 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("job {id} did not become {state:?} within {WAIT:?}")
}

async fn wait_for_end(client: &Client, id: u64) -> anyhow::Result<v1::Job> {
    let deadline = Instant::now() + WAIT;
    loop {
        let job = client.get_job(id, false).await?;
        let terminal = crate::pb::state_from_pb(job.state)
            .ok()
            .flatten()
            .is_some_and(crate::queue::JobState::is_terminal);
        if terminal {
            return Ok(job);
        }
        if Instant::now() > deadline {
            bail!("job {id} is still {} after {WAIT:?}", state_name(job.state));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
