//! The leader-only loop and the one answer to "am I the leader?": lease grace on taking office,
//! then the duties of the term (lease expiry by committed time, retention sweeps of finished
//! jobs, shipping the outbox to SSISDB), all ended together when the term or the role changes.
//!
//! `metrics().state == Leader` is not proof of leading: a replica cut off from its peers, or an
//! old leader just restarted, believes it leads until it hears otherwise. On becoming leader of
//! term T, this loop first commits an `ExtendLeases` entry; that entry committing proves
//! leadership in T (a majority accepted an entry of T, and every entry before it, of this term
//! or earlier ones, is applied here: linearizable reads wait for it, `reads.rs`) and, because it pushes every live lease out by one lease interval, a failover
//! never expires work that kept running while no leader could take renewals. Only then does the
//! replica hold office for T, and only then do the term's duties start: the expiry check,
//! proposing `ExpireLeases` (stamped with this leader's clock) whenever a lease is due; every
//! `retention.sweep_interval_ms` a `RemoveFinishedJobs` when finished jobs are due for removal
//! (`queue/state/retention.rs`); the SSISDB shipper (`ssisdb::Shipping`), which carries T
//! into the database's fencing row so SSISDB refuses a writer older than one it has seen; and
//! the commit of worker sightings (`sightings.rs`) every sixth of `workers.offline_after_ms`. When
//! the term or the role changes, the duties are dropped at once (a batch caught mid-way loses
//! its connection and is rolled back) and the loop starts over.

use std::time::Duration;

use tracing::{debug, info, warn};

use super::proposer::{ProposeError, Proposer};
use super::reads::Office;
use super::sightings::Sightings;
use crate::config::{RetentionSettings, WorkerSettings};
use crate::queue::{Command, CommandOutput, CommandResult};
use crate::raft::{DispatchSignal, Raft, SharedQueue};
use crate::ssisdb::{Committer, Shipping};

/// Most finished jobs one `RemoveFinishedJobs` removes: bounds the entry and its apply.
const REMOVALS_PER_COMMAND: u32 = 1000;
/// Most commands one sweep proposes before it yields to the next tick.
const COMMANDS_PER_SWEEP: usize = 100;

/// What the leader's retention sweeps need.
#[derive(Debug, Clone)]
pub struct Retention {
    pub settings: RetentionSettings,
    /// SSISDB is configured: a job waits until its events are shipped.
    pub until_shipped: bool,
}

/// What a term of office does besides lease expiry, each ended with the term.
pub struct TermDuties {
    pub retention: Retention,
    /// Ships the outbox to SSISDB (or prunes it when none is configured).
    pub shipping: Shipping,
    /// Commits the workers' sightings (`sightings.rs`).
    pub sightings: Sightings,
    /// Woken when the term of office ends: the long-polls waiting here must go elsewhere.
    pub dispatch: DispatchSignal,
}

/// How far the wall clock may drift from a term's time before a warning says it stepped.
const WALL_STEP_REPORTED_MS: u64 = 2_000;

/// Runs until the Raft node shuts down.
pub async fn run(
    raft: Raft,
    office: Office,
    proposer: Proposer,
    queue: SharedQueue,
    settings: WorkerSettings,
    duties: TermDuties,
) {
    let TermDuties {
        retention,
        shipping,
        sightings,
        dispatch,
    } = duties;
    let sighting_interval = Sightings::interval(&settings);
    let mut metrics = raft.metrics();
    loop {
        // Wait to lead.
        let term = loop {
            let (state, term) = {
                let m = metrics.borrow_and_update();
                (m.state, m.current_term)
            };
            if state == openraft::ServerState::Leader {
                break term;
            }
            if metrics.changed().await.is_err() {
                return;
            }
        };
        // This term's time starts from a fresh wall clock reading, kept at or after the cluster
        // time applied so far (`clock.rs`); the extension below is stamped with it.
        let applied_ms = queue.read().unwrap_or_else(|p| p.into_inner()).clock_ms();
        proposer.clock().begin_term(term, applied_ms);
        match proposer
            .propose_here(Command::ExtendLeases {
                lease_ms: settings.lease_interval_ms,
            })
            .await
        {
            Ok(Ok(CommandOutput::Extended { leases })) => {
                info!(
                    term,
                    leases, "leading: live leases extended by one lease interval"
                );
            }
            other => {
                // Lost the leadership meanwhile, or the entry did not commit: start over.
                warn!(term, outcome = ?other, "could not take office");
                tokio::time::sleep(Duration::from_millis(settings.expiry_check_interval_ms)).await;
                continue;
            }
        }
        // In office for `term`: linearizable reads may be served (`reads.rs`), and the term's
        // duties run until it ends.
        office.take(term);
        let _shipping = AbortOnDrop(tokio::spawn(
            shipping.clone().serve_term(term, proposer.clone()),
        ));
        let _sightings = AbortOnDrop(tokio::spawn(sightings.clone().commit_while_leading(
            proposer.clone(),
            sighting_interval,
            term,
        )));
        tokio::select! {
            () = expire_while_leading(&proposer, &queue, &settings, &retention, term) => {}
            () = office_lost(&raft, term) => info!(term, "no longer leading"),
        }
        dispatch.wake_all();
    }
}

/// Returns once this replica no longer leads in `term` (the role or the term changed, or the
/// node shut down).
async fn office_lost(raft: &Raft, term: u64) {
    let mut metrics = raft.metrics();
    loop {
        {
            let m = metrics.borrow_and_update();
            if m.state != openraft::ServerState::Leader || m.current_term != term {
                return;
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Aborts a term's duty when the term of office ends (the guard is dropped).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The shipper commits through the leader's proposer, in the leader's time.
impl Committer for Proposer {
    async fn commit(&self, command: Command) -> Result<CommandResult, String> {
        self.propose_here(command).await.map_err(|e| e.to_string())
    }

    fn now_ms(&self) -> u64 {
        Proposer::now_ms(self)
    }
}

/// Never returns by itself: the caller drops it when the term of office ends.
async fn expire_while_leading(
    proposer: &Proposer,
    queue: &SharedQueue,
    settings: &WorkerSettings,
    retention: &Retention,
    term: u64,
) {
    let mut interval =
        tokio::time::interval(Duration::from_millis(settings.expiry_check_interval_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut step_reported = false;
    let mut next_sweep = tokio::time::Instant::now() + retention.settings.sweep_interval();
    loop {
        interval.tick().await;
        let drift_ms = proposer.clock().wall_drift_ms();
        if !step_reported && drift_ms.unsigned_abs() > WALL_STEP_REPORTED_MS {
            step_reported = true;
            warn!(
                term,
                drift_ms,
                "the wall clock stepped while leading; lease time follows the monotonic clock \
                 and takes the wall clock again at the next term"
            );
        }
        if tokio::time::Instant::now() >= next_sweep {
            sweep_finished_jobs(proposer, queue, retention, term).await;
            next_sweep = tokio::time::Instant::now() + retention.settings.sweep_interval();
        }
        let due = {
            let queue = queue.read().unwrap_or_else(|p| p.into_inner());
            queue
                .next_lease_expiry()
                .is_some_and(|at| at <= proposer.now_ms())
        };
        if !due {
            continue;
        }
        match proposer.propose_here(Command::ExpireLeases).await {
            Ok(Ok(CommandOutput::Expired { jobs })) if !jobs.is_empty() => {
                for job_id in jobs {
                    warn!(job_id, term, "lease expired");
                }
            }
            Ok(_) => {}
            // Cut off from the majority (CheckQuorum): every check would say so again, every
            // tick, for as long as the cut lasts; the refused calls already tell the callers.
            Err(error @ ProposeError::CutOff { .. }) => {
                debug!(%error, term, "lease expiry waits for a majority")
            }
            Err(error) => warn!(%error, term, "could not propose lease expiry"),
        }
    }
}

/// Proposes `RemoveFinishedJobs` while finished jobs are due (and at most
/// [`COMMANDS_PER_SWEEP`] times), so a backlog (a lowered cap, SSISDB back after an outage)
/// drains in steps of [`REMOVALS_PER_COMMAND`] without stopping lease expiry for long.
async fn sweep_finished_jobs(
    proposer: &Proposer,
    queue: &SharedQueue,
    retention: &Retention,
    term: u64,
) {
    let retention_ms = retention.settings.retention_ms();
    let max_finished = retention.settings.max_finished_jobs;
    for _ in 0..COMMANDS_PER_SWEEP {
        let due = {
            let queue = queue.read().unwrap_or_else(|p| p.into_inner());
            queue.due_for_removal(
                retention_ms,
                max_finished,
                retention.until_shipped,
                1,
                proposer.now_ms(),
            )
        };
        if due.jobs.is_empty() {
            return;
        }
        match proposer
            .propose_here(Command::RemoveFinishedJobs {
                retention_ms,
                max_finished,
                until_shipped: retention.until_shipped,
                limit: REMOVALS_PER_COMMAND,
            })
            .await
        {
            Ok(Ok(CommandOutput::JobsRemoved { removed, more })) => {
                info!(term, removed, more, "finished jobs removed by retention");
                if !more {
                    return;
                }
            }
            Ok(other) => {
                warn!(term, outcome = ?other, "retention sweep refused");
                return;
            }
            Err(error) => {
                warn!(%error, term, "could not propose a retention sweep");
                return;
            }
        }
    }
}
