//! The leader-only loop: lease grace on taking office, then lease expiry by committed time, and
//! retention sweeps of finished jobs.
//!
//! Nothing here trusts `metrics().state` alone: a restarted old leader may believe it still leads
//! until it hears otherwise. On becoming leader of term T, this loop first commits an
//! `ExtendLeases` entry; that entry committing proves leadership in T (a majority accepted an
//! entry of T) and, because it pushes every live lease out by one lease interval, a failover
//! never expires work that kept running while no leader could take renewals. Only then does the
//! expiry check run, proposing `ExpireLeases` (stamped with this leader's clock) whenever a lease
//! is due, and every `retention.sweep_interval_ms` a `RemoveFinishedJobs` when finished jobs
//! are due for removal (`queue/state/retention.rs`). When the term or the role changes, the loop
//! starts over.
//!
//! The same commit is what puts this replica in [`Office`] for T (`office.rs`), which duties
//! outside Raft (the SSISDB shipper) wait for; the loop leaves office when it starts over.

use std::time::Duration;

use tracing::{info, warn};

use super::office::Office;
use super::proposer::Proposer;
use crate::config::{RetentionSettings, WorkerSettings};
use crate::queue::{Command, CommandOutput};
use crate::raft::{Raft, SharedQueue};

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

/// How far the wall clock may drift from a term's time before a warning says it stepped.
const WALL_STEP_REPORTED_MS: u64 = 2_000;

/// Runs until the Raft node shuts down.
pub async fn run(
    raft: Raft,
    proposer: Proposer,
    queue: SharedQueue,
    settings: WorkerSettings,
    retention: Retention,
    office: Office,
) {
    let mut metrics = raft.metrics();
    loop {
        office.leave();
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
            .propose(Command::ExtendLeases {
                lease_ms: settings.lease_interval_ms,
            })
            .await
        {
            Ok(Ok(CommandOutput::Extended { leases })) => {
                info!(
                    term,
                    leases, "leading: live leases extended by one lease interval"
                );
                office.take(term);
            }
            other => {
                // Lost the leadership meanwhile, or the entry did not commit: start over.
                warn!(term, outcome = ?other, "could not take office");
                tokio::time::sleep(Duration::from_millis(settings.expiry_check_interval_ms)).await;
                continue;
            }
        }
        expire_while_leading(&raft, &proposer, &queue, &settings, &retention, term).await;
    }
}

async fn expire_while_leading(
    raft: &Raft,
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
        let still_leading = {
            let m = raft.metrics().borrow().clone();
            m.state == openraft::ServerState::Leader && m.current_term == term
        };
        if !still_leading {
            info!(term, "no longer leading");
            return;
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
        match proposer.propose(Command::ExpireLeases).await {
            Ok(Ok(CommandOutput::Expired { jobs })) if !jobs.is_empty() => {
                for job_id in jobs {
                    warn!(job_id, term, "lease expired");
                }
            }
            Ok(_) => {}
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
            .propose(Command::RemoveFinishedJobs {
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
