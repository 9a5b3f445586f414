//! `scaleout bench failover`: how long writes stop when the leader fails.
//!
//! A local 3-replica cluster (mutual TLS unless `--insecure`, default Raft settings) is loaded
//! by a few tasks that submit jobs back to back through one [`Client`]. Then, `kills` times:
//! wait for an agreed leader and a write committed on the whole cluster, inject the fault into
//! the leader, and measure the time from the fault to the first acknowledged submit that was
//! *invoked after* it. A submit acknowledged after the fault may still have been committed by
//! the old leader just before it (the answer was in flight), so only fresh invocations count;
//! this makes each figure conservative by at most one submit's latency. The old leader is then
//! brought back and waited for until it has applied what the new leader had, so every fault
//! hits a full cluster.
//!
//! The faults ([`Fault`]): `kill` (SIGKILL; its sockets close and its port refuses, which the
//! followers notice at once), `terminate` (SIGTERM: a graceful stop hands leadership over),
//! `pause` (SIGSTOP for [`HOLD`]: nothing closes, only silence tells) and `isolate` (every peer
//! link to and from the leader blackholed for [`HOLD`] through chaos proxies; its API stays
//! reachable and answers NOT_LEADER once it knows it is cut off).
//!
//! The gap is what a client sees: failure detection, the election, and the client's own
//! backoff and redirect hops, all together. To tell the election from the rest, the survivors
//! are also asked for their view every few milliseconds, and the time until one of them names a
//! new leader is reported beside the gap.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressFinish, ProgressStyle};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::bench_spec;
use crate::chaos::proxy::LinkMode;
use crate::client::Client;
use crate::harness::LocalCluster;
use crate::pb::raft::raft_service_client::RaftServiceClient;
use crate::pb::raft::NodeStatusRequest;
use crate::tls::Role;
use tonic::transport::Channel;

/// How long the cluster may take to agree on a leader (at start, after a kill, after a restart).
const LEADER_WAIT: Duration = Duration::from_secs(30);
/// How long after a kill a write must be committed before the run fails.
const COMMIT_WAIT: Duration = Duration::from_secs(30);
/// How long a restarted replica may take to catch up with the leader.
const CATCH_UP_WAIT: Duration = Duration::from_secs(60);
/// One submit's deadline: long enough to ride over an election and its retries.
const SUBMIT_DEADLINE: Duration = Duration::from_secs(10);
/// The submitters stop after this long per kill, or this many submits per kill, in any case.
const RUN_LIMIT_PER_KILL: Duration = Duration::from_secs(180);
const SUBMITS_LIMIT_PER_KILL: u64 = 1_000_000;
/// Pause of a submitter after a failed submit, so a refusal cannot become a busy loop.
const ERROR_PAUSE: Duration = Duration::from_millis(50);
/// How long a paused or isolated leader stays so.
const HOLD: Duration = Duration::from_secs(10);
/// How long a terminated leader may take to exit.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// What happens to the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Kill,
    Terminate,
    Pause,
    Isolate,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Terminate => "terminate",
            Fault::Pause => "pause",
            Fault::Isolate => "isolate",
        }
    }
}

/// How often the survivors are asked whom they follow after a kill, and how long one may take.
const OBSERVE_EVERY: Duration = Duration::from_millis(10);
const OBSERVE_DEADLINE: Duration = Duration::from_millis(200);

pub struct FailoverBench {
    /// Faults in all.
    pub kills: u32,
    pub fault: Fault,
    /// Tasks submitting back to back.
    pub submitters: usize,
    /// Pause once the killed replica has caught up, before the next kill.
    pub settle: Duration,
    /// Run the cluster plaintext (`insecure = true`) instead of mutual TLS.
    pub insecure: bool,
    pub json: bool,
}

/// One kill and what followed it.
struct Kill {
    old_leader: u64,
    old_term: u64,
    new_leader: u64,
    new_term: u64,
    /// From the kill to the first time a survivor named a new leader.
    leader_named: Duration,
    /// From the kill to the first acknowledged submit invoked after it.
    gap: Duration,
    /// The longest time without any acknowledged submit, from the fault until a submit invoked
    /// after the new leader was named is acknowledged.
    window: Duration,
}

/// The next commit the kill loop waits for, filled in by the submitters.
struct NextCommit {
    /// Only submits invoked at or after this instant count.
    since: Instant,
    /// When the earliest such submit was acknowledged.
    acknowledged: Option<Instant>,
}

/// The load: submitters and what they have done so far.
struct Load {
    next: Arc<watch::Sender<NextCommit>>,
    /// When each submit was acknowledged (recent ones; cleared before each fault).
    acks: Arc<std::sync::Mutex<Vec<Instant>>>,
    submits: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// Dropping the set aborts the submitters, so an early error return leaves none behind.
    tasks: JoinSet<()>,
}

impl Load {
    /// Starts `submitters` tasks submitting through `client` until stopped, `run_limit` has
    /// passed, or `max_submits` submits were issued.
    fn start(
        client: Arc<Client>,
        submitters: usize,
        run_limit: Duration,
        max_submits: u64,
    ) -> Load {
        let (next, _) = watch::channel(NextCommit {
            since: Instant::now(),
            acknowledged: None,
        });
        let mut load = Load {
            next: Arc::new(next),
            acks: Arc::default(),
            submits: Arc::default(),
            errors: Arc::default(),
            stop: Arc::default(),
            tasks: JoinSet::new(),
        };
        let stop_at = Instant::now() + run_limit;
        let issued = Arc::new(AtomicU64::new(0));
        for _ in 0..submitters.max(1) {
            let client = client.clone();
            let next = load.next.clone();
            let acks = load.acks.clone();
            let (submits, errors, stop) =
                (load.submits.clone(), load.errors.clone(), load.stop.clone());
            let issued = issued.clone();
            load.tasks.spawn(async move {
                while !stop.load(Ordering::Relaxed)
                    && Instant::now() < stop_at
                    && issued.fetch_add(1, Ordering::Relaxed) < max_submits
                {
                    let invoked = Instant::now();
                    match client.submit_job(bench_spec(1), None).await {
                        Ok(_) => {
                            let acknowledged = Instant::now();
                            submits.fetch_add(1, Ordering::Relaxed);
                            acks.lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .push(acknowledged);
                            // Submitters finish out of order: keep the earliest acknowledgement.
                            next.send_if_modified(|next| {
                                let first = invoked >= next.since
                                    && next.acknowledged.is_none_or(|seen| acknowledged < seen);
                                if first {
                                    next.acknowledged = Some(acknowledged);
                                }
                                first
                            });
                        }
                        Err(error) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%error, "bench submit failed");
                            tokio::time::sleep(ERROR_PAUSE).await;
                        }
                    }
                }
            });
        }
        load
    }

    /// When the first submit invoked at or after `since` is acknowledged (within `timeout`).
    async fn commit_after(&self, since: Instant, timeout: Duration) -> anyhow::Result<Instant> {
        self.next.send_modify(|next| {
            next.since = since;
            next.acknowledged = None;
        });
        let mut receiver = self.next.subscribe();
        let committed = tokio::time::timeout(
            timeout,
            receiver.wait_for(|next| next.acknowledged.is_some()),
        )
        .await
        .with_context(|| {
            format!(
                "no submit was acknowledged within {timeout:?} ({} submit errors so far)",
                self.errors.load(Ordering::Relaxed)
            )
        })?
        .context("the submitters are gone")?
        .acknowledged;
        committed.context("the next commit was not recorded")
    }

    /// Forgets the acknowledgements recorded so far.
    fn forget_acks(&self) {
        self.acks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// The longest time between `from`, the acknowledgements after it, and `to`, with nothing
    /// acknowledged.
    fn longest_window(&self, from: Instant, to: Instant) -> Duration {
        let mut acks: Vec<Instant> = self
            .acks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .filter(|ack| *ack >= from && *ack <= to)
            .collect();
        acks.sort_unstable();
        acks.push(to);
        let mut last = from;
        let mut longest = Duration::ZERO;
        for ack in acks {
            longest = longest.max(ack.saturating_duration_since(last));
            last = ack;
        }
        longest
    }

    /// Stops the submitters and waits for them: (submits acknowledged, submits failed).
    async fn finish(mut self) -> anyhow::Result<(u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(joined) = self.tasks.join_next().await {
            joined.context("a submitter panicked")?;
        }
        Ok((
            self.submits.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        ))
    }
}

/// Kills the leader of a loaded local cluster `kills` times and reports the time from each kill
/// to the next committed write.
pub async fn failover(options: FailoverBench) -> anyhow::Result<()> {
    let progress = if options.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(u64::from(options.kills))
    }
    .with_finish(ProgressFinish::AndClear);
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} failover [{bar:30}] {pos}/{len} kills  {elapsed}  {msg}",
        )
        .context("bad progress bar template")?
        .progress_chars("=> "),
    );
    progress.enable_steady_tick(Duration::from_millis(100));
    progress.set_message("starting a local 3-replica cluster");

    let (mut cluster, network) = if options.fault == Fault::Isolate {
        let (cluster, network) = super::local_cluster_behind_proxies(options.insecure).await?;
        (cluster, Some(network))
    } else {
        (super::local_cluster(options.insecure).await?, None)
    };
    let fault = options.fault;
    let client = Arc::new(
        Client::new(&cluster.endpoints(), cluster.client_security()?)?
            .with_deadline(SUBMIT_DEADLINE),
    );
    // Each replica's own view, through its peer port (as a replica would ask): `ClusterStatus`
    // asks every member in turn and waits for a frozen one.
    let observers = cluster
        .replicas
        .iter()
        .map(|replica| {
            let channel = cluster.channel_as(&replica.peer_addr, &Role::Replica(replica.id))?;
            Ok((replica.id, RaftServiceClient::new(channel)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    client
        .submit_job(bench_spec(0), None)
        .await
        .context("the first submit failed")?;

    let kills = options.kills.max(1);
    let load = Load::start(
        client,
        options.submitters,
        RUN_LIMIT_PER_KILL * kills,
        SUBMITS_LIMIT_PER_KILL * u64::from(kills),
    );
    let started = Instant::now();
    let mut gaps = Histogram::<u64>::new(3)?;
    let mut windows = Histogram::<u64>::new(3)?;
    let mut elections = Histogram::<u64>::new(3)?;
    let mut done = Vec::new();
    for n in 1..=kills {
        progress.set_message(format!("kill {n}: waiting for a leader and a commit"));
        let (old_leader, old_term) = cluster
            .wait_for_leader(LEADER_WAIT)
            .await
            .with_context(|| format!("kill {n}: no agreed leader before the kill"))?;
        load.commit_after(Instant::now(), COMMIT_WAIT)
            .await
            .with_context(|| format!("kill {n}: the load is not flowing before the kill"))?;

        progress.set_message(format!(
            "{} {n}: leader {old_leader}, waiting for the next commit",
            fault.name()
        ));
        load.forget_acks();
        let injected_at = Instant::now();
        let (committed, named, stopped) = match fault {
            Fault::Terminate => {
                tokio::join!(
                    load.commit_after(injected_at, COMMIT_WAIT),
                    leader_named(&observers, old_leader, old_term, COMMIT_WAIT),
                    cluster.stop(old_leader, STOP_GRACE)
                )
            }
            _ => {
                match fault {
                    Fault::Kill => cluster.kill(old_leader),
                    Fault::Pause => cluster.pause(old_leader, true),
                    Fault::Isolate => {
                        if let Some(network) = &network {
                            network.isolate(old_leader, LinkMode::Blackhole);
                        }
                        Ok(())
                    }
                    Fault::Terminate => Ok(()),
                }
                .with_context(|| {
                    format!("{} {n}: cannot reach leader {old_leader}", fault.name())
                })?;
                let since = Instant::now();
                let (committed, named) = tokio::join!(
                    load.commit_after(since, COMMIT_WAIT),
                    leader_named(&observers, old_leader, old_term, COMMIT_WAIT)
                );
                (committed, named, Ok(()))
            }
        };
        stopped
            .with_context(|| format!("{} {n}: leader {old_leader} did not stop", fault.name()))?;
        let killed_at = injected_at;
        let committed = committed.with_context(|| {
            format!("kill {n}: no write committed after killing leader {old_leader}")
        })?;
        let (named, new_leader, new_term) = named.with_context(|| {
            format!("kill {n}: no survivor named a new leader after killing {old_leader}")
        })?;
        let gap = committed.saturating_duration_since(killed_at);
        let leader_named = named.saturating_duration_since(killed_at);
        let settled = load
            .commit_after(named, COMMIT_WAIT)
            .await
            .with_context(|| {
                format!("{} {n}: no write committed by the new leader", fault.name())
            })?;
        let window = load.longest_window(injected_at, settled);
        windows.record(window.as_micros() as u64)?;
        gaps.record(gap.as_micros() as u64)?;
        elections.record(leader_named.as_micros() as u64)?;

        tracing::info!(
            kill = n,
            old_leader,
            new_leader,
            new_term,
            gap_ms = gap.as_millis() as u64,
            "leader killed, next write committed"
        );
        done.push(Kill {
            old_leader,
            old_term,
            new_leader,
            new_term,
            leader_named,
            gap,
            window,
        });

        progress.set_message(format!(
            "last gap {} ms; bringing replica {old_leader} back",
            gap.as_millis()
        ));
        match fault {
            Fault::Kill | Fault::Terminate => cluster.restart(old_leader)?,
            Fault::Pause | Fault::Isolate => {
                tokio::time::sleep_until(injected_at + HOLD).await;
                if fault == Fault::Pause {
                    cluster.pause(old_leader, false)?;
                } else if let Some(network) = &network {
                    network.heal();
                }
            }
        }
        catch_up(&cluster, old_leader, new_leader)
            .await
            .with_context(|| {
                format!("{} {n}: replica {old_leader} did not rejoin", fault.name())
            })?;
        progress.inc(1);
        progress.set_message(format!("last gap {} ms", gap.as_millis()));
        tokio::time::sleep(options.settle).await;
    }
    let elapsed = started.elapsed();
    let (submits, errors) = load.finish().await?;
    progress.finish_and_clear();
    drop(cluster);

    // A clean failover takes one term; more means split votes. Terms that pass between a
    // restart and the next kill are elections nobody caused on purpose.
    let failed_rounds: u64 = done
        .iter()
        .map(|kill| kill.new_term.saturating_sub(kill.old_term + 1))
        .sum();
    let unprovoked: u64 = done
        .windows(2)
        .map(|pair| pair[1].old_term.saturating_sub(pair[0].new_term))
        .sum();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let us_to_ms = |us: u64| us as f64 / 1000.0;
    let summary = |histogram: &Histogram<u64>| {
        json!({
            "count": histogram.len(),
            "min": us_to_ms(histogram.min()),
            "p50": us_to_ms(histogram.value_at_quantile(0.50)),
            "p99": us_to_ms(histogram.value_at_quantile(0.99)),
            "max": us_to_ms(histogram.max()),
        })
    };
    let transport = if options.insecure {
        "plaintext"
    } else {
        "mutual TLS"
    };
    let report = json!({
        "benchmark": "failover",
        "fault": fault.name(),
        "transport": transport,
        "submitters": options.submitters,
        "submits": submits,
        "errors": errors,
        "seconds": elapsed.as_secs_f64(),
        "fault_to_commit_ms": summary(&gaps),
        "longest_window_without_ack_ms": summary(&windows),
        "fault_to_leader_named_ms": summary(&elections),
        "failed_election_rounds": failed_rounds,
        "elections_between_kills": unprovoked,
        "kills": done.iter().map(|kill| json!({
            "old_leader": kill.old_leader,
            "old_term": kill.old_term,
            "new_leader": kill.new_leader,
            "new_term": kill.new_term,
            "leader_named_ms": ms(kill.leader_named),
            "gap_ms": ms(kill.gap),
            "window_ms": ms(kill.window),
        })).collect::<Vec<_>>(),
    });
    if options.json {
        println!("{report}");
    } else {
        println!(
            "failover ({transport}): {} leader faults ({}) under {} submitters in {:.1} s \
             ({submits} submits, {errors} errors); fault to next commit p50 {:.0} ms, \
             p99 {:.0} ms, max {:.0} ms, min {:.0} ms; longest window without an acknowledged \
             submit p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (new leader named p50 {:.0} ms, \
             p99 {:.0} ms; {failed_rounds} failed election rounds, {unprovoked} elections between \
             faults)",
            gaps.len(),
            fault.name(),
            options.submitters,
            elapsed.as_secs_f64(),
            us_to_ms(gaps.value_at_quantile(0.50)),
            us_to_ms(gaps.value_at_quantile(0.99)),
            us_to_ms(gaps.max()),
            us_to_ms(gaps.min()),
            us_to_ms(windows.value_at_quantile(0.50)),
            us_to_ms(windows.value_at_quantile(0.99)),
            us_to_ms(windows.max()),
            us_to_ms(elections.value_at_quantile(0.50)),
            us_to_ms(elections.value_at_quantile(0.99)),
        );
        for (n, kill) in done.iter().enumerate() {
            println!(
                "  {} {:>3}: leader {} (term {}) -> {} (term {}) named after {:.0} ms, \
                 next commit after {:.0} ms, longest window without an ack {:.0} ms",
                fault.name(),
                n + 1,
                kill.old_leader,
                kill.old_term,
                kill.new_leader,
                kill.new_term,
                ms(kill.leader_named),
                ms(kill.gap),
                ms(kill.window)
            );
        }
    }
    Ok(())
}

/// When a replica other than `old_leader` first names another leader in a later term, and
/// which leader in which term, asking each survivor every [`OBSERVE_EVERY`] until `timeout`.
async fn leader_named(
    observers: &[(u64, RaftServiceClient<Channel>)],
    old_leader: u64,
    old_term: u64,
    timeout: Duration,
) -> anyhow::Result<(Instant, u64, u64)> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        for (id, observer) in observers.iter().filter(|(id, _)| *id != old_leader) {
            let mut call = tonic::Request::new(NodeStatusRequest {});
            call.set_timeout(OBSERVE_DEADLINE);
            let mut observer = observer.clone();
            match tokio::time::timeout(OBSERVE_DEADLINE, observer.node_status(call)).await {
                Ok(Ok(status)) => {
                    let status = status.into_inner();
                    match status.leader_id {
                        Some(leader) if leader != old_leader && status.term > old_term => {
                            return Ok((Instant::now(), leader, status.term));
                        }
                        leader => {
                            last = format!("replica {id}: leader {leader:?}, term {}", status.term)
                        }
                    }
                }
                Ok(Err(status)) => last = format!("replica {id}: {}", status.message()),
                Err(_) => last = format!("replica {id}: no answer within {OBSERVE_DEADLINE:?}"),
            }
        }
        tokio::time::sleep(OBSERVE_EVERY).await;
    }
    anyhow::bail!("within {timeout:?}: {last}")
}

/// Waits until `id` (restarted, resumed or reconnected) has applied what `leader` had applied
/// and every replica agrees on the leader again.
async fn catch_up(cluster: &LocalCluster, id: u64, leader: u64) -> anyhow::Result<()> {
    let applied = cluster
        .status_of(leader)
        .await
        .with_context(|| format!("leader {leader} did not report its status"))?
        .replicas
        .iter()
        .find(|replica| replica.id == leader)
        .and_then(|replica| replica.applied_index)
        .with_context(|| format!("leader {leader} reports no applied index"))?;
    cluster.wait_for_applied(id, applied, CATCH_UP_WAIT).await?;
    cluster.wait_for_leader(LEADER_WAIT).await?;
    Ok(())
}
