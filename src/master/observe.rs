//! What a replica tells its operator: the Prometheus metrics sampled at each scrape, and
//! whether it is ready (`/readyz`, and the gRPC health service on the API port).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Histogram};
use openraft::ServerState;

use crate::config::MasterConfig;
use crate::ops::{Observed, Registry};
use crate::queue::{AttemptOutcome, JobState};
use crate::raft::election::LeaderContact;
use crate::raft::{Raft, StateReaders, WalStats};
use crate::ssisdb::ShipperStatus;
use crate::wall_time::now_ms;

/// A follower applying more than this many entries behind what it knows committed is still
/// catching up, not ready (a few hundred behind is normal under load).
const CATCH_UP_SLACK: u64 = 1000;

/// The counters the proposer feeds.
#[derive(Clone)]
pub struct ProposalMetrics {
    pub entries: Counter,
    pub commands: Counter,
    pub batch_commands: Histogram,
    pub errors: Counter,
}

impl ProposalMetrics {
    pub fn new(registry: &Registry) -> Self {
        ProposalMetrics {
            entries: registry.counter(
                "scaleout_proposals_total",
                "Raft entries this replica proposed (each a batch of commands).",
                &[],
            ),
            commands: registry.counter(
                "scaleout_proposal_commands_total",
                "Commands this replica proposed.",
                &[],
            ),
            batch_commands: registry.histogram(
                "scaleout_proposal_batch_commands",
                "Commands per proposed Raft entry (group commit).",
                &[],
            ),
            errors: registry.counter(
                "scaleout_proposal_errors_total",
                "Proposals that were not committed (lost leadership, timeout, shutdown).",
                &[],
            ),
        }
    }
}

/// Everything a scrape or a readiness check reads.
pub struct ReplicaObserver {
    registry: Registry,
    raft: Raft,
    /// The queue, and the stored outbox (for its oldest event).
    readers: StateReaders,
    contact: Arc<LeaderContact>,
    committed: Arc<dyn Fn() -> Option<u64> + Send + Sync>,
    /// The Raft log's disk work (syncs, appends, entries).
    wal: Arc<WalStats>,
    /// How long without a leader's word (or, leading, without a majority's) is not ready.
    contact_limit: Duration,
    offline_after_ms: u64,
}

impl ReplicaObserver {
    pub fn new(
        registry: Registry,
        config: &MasterConfig,
        raft: Raft,
        readers: StateReaders,
        contact: Arc<LeaderContact>,
        committed: Arc<dyn Fn() -> Option<u64> + Send + Sync>,
        wal: Arc<WalStats>,
    ) -> Self {
        registry
            .gauge(
                "scaleout_build_info",
                "The running version (always 1).",
                &[("version", env!("CARGO_PKG_VERSION"))],
            )
            .set(1.0);
        ReplicaObserver {
            registry,
            raft,
            readers,
            contact,
            committed,
            wal,
            contact_limit: contact_limit(config),
            offline_after_ms: config.workers.offline_after_ms,
        }
    }

    fn view(&self) -> RaftView {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        RaftView {
            id: m.id,
            term: m.current_term,
            state: m.state,
            leader: m.current_leader,
            voter: membership.voter_ids().any(|id| id == m.id),
            voters: membership.voter_ids().count(),
            last_log_index: m.last_log_index,
            applied: m.last_applied.map(|id| id.index),
            committed: (self.committed)(),
            snapshot: m.snapshot.map(|id| id.index),
            quorum_ack_age: m.millis_since_quorum_ack.map(Duration::from_millis),
            contact_age: self.contact.since_leader(),
            // Every other member, with its matched index where this replica leads and knows it.
            matched: membership
                .nodes()
                .map(|(id, _)| *id)
                .filter(|id| *id != m.id)
                .map(|id| {
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|replication| replication.get(&id).copied().flatten());
                    (id, matched.map(|log_id| log_id.index))
                })
                .collect(),
        }
    }

    fn sample(&self, view: &RaftView) {
        let r = &self.registry;
        let gauge = |name: &'static str, help: &'static str, value: f64| {
            r.gauge(name, help, &[]).set(value)
        };
        let index = |value: Option<u64>| value.map_or(0.0, |v| v as f64);
        gauge(
            "scaleout_raft_term",
            "The current Raft term.",
            view.term as f64,
        );
        gauge(
            "scaleout_raft_is_leader",
            "1 on the leader, 0 elsewhere.",
            f64::from(u8::from(view.state == ServerState::Leader)),
        );
        gauge(
            "scaleout_raft_leader_id",
            "The leader this replica knows, or -1 when it knows none.",
            view.leader.map_or(-1.0, |id| id as f64),
        );
        gauge(
            "scaleout_raft_voter",
            "1 while this replica is a voting member.",
            f64::from(u8::from(view.voter)),
        );
        gauge(
            "scaleout_raft_last_log_index",
            "The index of the last entry in this replica's log.",
            index(view.last_log_index),
        );
        gauge(
            "scaleout_raft_commit_index",
            "The highest index this replica knows committed.",
            index(view.committed),
        );
        gauge(
            "scaleout_raft_applied_index",
            "The highest index applied to this replica's queue.",
            index(view.applied),
        );
        gauge(
            "scaleout_raft_snapshot_index",
            "The last index in this replica's current snapshot.",
            index(view.snapshot),
        );
        // Leader-only gauges read 0 elsewhere (and the follower-only one 0 on the leader), so a
        // replica that changed role does not keep showing its last value from the other role.
        let leading = view.state == ServerState::Leader;
        let last = view.last_log_index.unwrap_or(0);
        for (member, matched) in &view.matched {
            let lag = if leading {
                last.saturating_sub(matched.unwrap_or(0))
            } else {
                0
            };
            r.gauge(
                "scaleout_raft_replication_lag_entries",
                "On the leader: entries a member still lacks (0 on followers).",
                &[("follower", &member.to_string())],
            )
            .set(lag as f64);
        }
        gauge(
            "scaleout_raft_quorum_ack_age_seconds",
            "On the leader: time since a majority last acknowledged it (0 on followers).",
            match view.quorum_ack_age {
                Some(age) if leading => age.as_secs_f64(),
                _ => 0.0,
            },
        );
        gauge(
            "scaleout_raft_leader_contact_age_seconds",
            "Time since this replica last heard from a leader (0 on the leader).",
            if leading {
                0.0
            } else {
                view.contact_age.as_secs_f64()
            },
        );
        gauge(
            "scaleout_ready",
            "1 when /readyz answers ready.",
            f64::from(u8::from(readiness(view, self.contact_limit).is_ok())),
        );
        let total = |name: &'static str, help: &'static str, value: &AtomicU64| {
            r.counter(name, help, &[])
                .absolute(value.load(Ordering::Relaxed))
        };
        total(
            "scaleout_wal_syncs_total",
            "fdatasync calls on the Raft log (one covers every append waiting for it).",
            &self.wal.syncs,
        );
        total(
            "scaleout_wal_appends_total",
            "Appends (batches of entries) made durable in the Raft log.",
            &self.wal.appends,
        );
        total(
            "scaleout_wal_entries_total",
            "Entries written to the Raft log.",
            &self.wal.entries,
        );
        self.sample_queue();
        self.sample_shipper();
        self.sample_heap();
    }

    fn sample_queue(&self) {
        let r = &self.registry;
        let now = now_ms();
        let queue = self.readers.queue.read().unwrap_or_else(|p| p.into_inner());
        for state in JobState::ALL {
            r.gauge(
                "scaleout_jobs",
                "Jobs by state, in this replica's copy of the queue.",
                &[("state", state.as_str())],
            )
            .set(queue.jobs_in(state) as f64);
        }
        let activity = queue.activity();
        let counter = |name: &'static str, help: &'static str, value: u64| {
            r.counter(name, help, &[]).absolute(value)
        };
        counter(
            "scaleout_jobs_submitted_total",
            "Jobs submitted, as applied on this replica since it started.",
            activity.jobs_submitted,
        );
        counter(
            "scaleout_jobs_removed_total",
            "Finished jobs removed by retention, as applied on this replica since it started.",
            activity.jobs_removed,
        );
        counter(
            "scaleout_leases_granted_total",
            "Leases granted to workers, as applied on this replica since it started.",
            activity.leases_granted,
        );
        counter(
            "scaleout_leases_renewed_total",
            "Lease renewals, as applied on this replica since it started.",
            activity.leases_renewed,
        );
        counter(
            "scaleout_leases_expired_total",
            "Leases that ran out before their worker completed, as applied on this replica \
             since it started.",
            activity.attempts(AttemptOutcome::Expired),
        );
        for outcome in [
            AttemptOutcome::Succeeded,
            AttemptOutcome::Failed,
            AttemptOutcome::Expired,
            AttemptOutcome::Cancelled,
        ] {
            r.counter(
                "scaleout_attempts_ended_total",
                "Attempts ended, by outcome, as applied on this replica since it started.",
                &[("outcome", outcome.as_str())],
            )
            .absolute(activity.attempts(outcome));
        }
        for (state, count) in [
            ("succeeded", activity.jobs_succeeded),
            ("failed", activity.jobs_failed),
            ("cancelled", activity.jobs_cancelled),
        ] {
            r.counter(
                "scaleout_jobs_ended_total",
                "Jobs that reached a final state, by state, as applied on this replica since it \
                 started.",
                &[("state", state)],
            )
            .absolute(count);
        }
        let (mut online, mut offline, mut running) = (0u64, 0u64, 0u64);
        for worker in queue.workers() {
            if worker.is_online(now, self.offline_after_ms) {
                online += 1;
            } else {
                offline += 1;
            }
            running += worker.running.len() as u64;
        }
        for (state, count) in [("online", online), ("offline", offline)] {
            r.gauge(
                "scaleout_workers",
                "Registered workers, online (heard from within workers.offline_after_ms) or not.",
                &[("state", state)],
            )
            .set(count as f64);
        }
        r.gauge(
            "scaleout_worker_tasks_running",
            "Tasks leased to workers.",
            &[],
        )
        .set(running as f64);
        r.gauge(
            "scaleout_outbox_events",
            "Events not yet shipped to SSISDB (or pruned, without SSISDB).",
            &[],
        )
        .set(queue.outbox_len() as f64);
        drop(queue);
        // A store read, outside the queue lock; an unreadable outbox shows as no age.
        let oldest_age_ms = match self.readers.outbox.oldest() {
            Ok(oldest) => oldest.map_or(0, |event| now.saturating_sub(event.at_ms)),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the outbox's oldest event");
                0
            }
        };
        r.gauge(
            "scaleout_outbox_oldest_event_age_seconds",
            "Age of the oldest event not yet shipped (0 when none).",
            &[],
        )
        .set(oldest_age_ms as f64 / 1000.0);
    }

    fn sample_heap(&self) {
        let Some(heap) = crate::memory::heap_use() else {
            return;
        };
        self.registry
            .gauge(
                "scaleout_heap_in_use_bytes",
                "Bytes malloc holds in use by this replica (glibc's mallinfo2).",
                &[],
            )
            .set(heap.in_use as f64);
        self.registry
            .gauge(
                "scaleout_heap_free_bytes",
                "Bytes malloc holds free, not yet handed back to the system (trimmed every 30 s).",
                &[],
            )
            .set(heap.free as f64);
    }

    fn sample_shipper(&self) {
        let status = ShipperStatus::global();
        self.registry
            .counter(
                "scaleout_ssisdb_events_shipped_total",
                "Events this replica wrote to SSISDB while leading.",
                &[],
            )
            .absolute(status.events_shipped.load(Ordering::Relaxed));
        self.registry
            .counter(
                "scaleout_ssisdb_ship_errors_total",
                "Failed attempts to ship to SSISDB (each is retried with backoff).",
                &[],
            )
            .absolute(status.ship_errors.load(Ordering::Relaxed));
        self.registry
            .counter(
                "scaleout_ssisdb_requests_total",
                "Requests (round trips) of shipped batches, committed ones only.",
                &[],
            )
            .absolute(status.requests.load(Ordering::Relaxed));
        self.registry
            .counter(
                "scaleout_ssisdb_statements_total",
                "SQL statements in those requests.",
                &[],
            )
            .absolute(status.statements.load(Ordering::Relaxed));
    }
}

impl Observed for ReplicaObserver {
    fn metrics_text(&self) -> String {
        self.sample(&self.view());
        self.registry.render()
    }

    fn readiness(&self) -> Result<(), String> {
        readiness(&self.view(), self.contact_limit)
    }
}

/// Readiness tolerates a short failover: three election timeouts without a leader's word.
fn contact_limit(config: &MasterConfig) -> Duration {
    Duration::from_millis(
        (3 * config.raft.election_timeout_max_ms).max(3 * config.raft.heartbeat_interval_ms),
    )
}

/// What readiness and the Raft gauges are computed from.
#[derive(Debug, Clone)]
struct RaftView {
    id: u64,
    term: u64,
    state: ServerState,
    leader: Option<u64>,
    voter: bool,
    voters: usize,
    last_log_index: Option<u64>,
    applied: Option<u64>,
    committed: Option<u64>,
    snapshot: Option<u64>,
    quorum_ack_age: Option<Duration>,
    contact_age: Duration,
    /// Every other member and, on the leader, its matched index.
    matched: Vec<(u64, Option<u64>)>,
}

/// Ready: a voter that leads with a majority's recent acknowledgment, or follows a leader it
/// heard from recently, and has applied what it knows committed (give or take a busy moment).
fn readiness(view: &RaftView, contact_limit: Duration) -> Result<(), String> {
    if !view.voter {
        return Err(format!(
            "replica {} is not a voting member (a learner still catching up, or removed)",
            view.id
        ));
    }
    if view.state == ServerState::Leader {
        if view.voters > 1 {
            match view.quorum_ack_age {
                Some(age) if age <= contact_limit => {}
                Some(age) => {
                    return Err(format!(
                        "leads term {} but no majority has acknowledged it for {} ms",
                        view.term,
                        age.as_millis()
                    ))
                }
                None => {
                    return Err(format!(
                        "leads term {} but no majority has acknowledged it yet",
                        view.term
                    ))
                }
            }
        }
    } else {
        let Some(leader) = view.leader.filter(|&leader| leader != view.id) else {
            return Err(format!("no leader known in term {}", view.term));
        };
        if view.contact_age > contact_limit {
            return Err(format!(
                "no word from leader {leader} for {} ms",
                view.contact_age.as_millis()
            ));
        }
    }
    let (applied, committed) = (view.applied.unwrap_or(0), view.committed.unwrap_or(0));
    if committed.saturating_sub(applied) > CATCH_UP_SLACK {
        return Err(format!(
            "catching up: applied {applied} of {committed} committed entries"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_millis(1500);

    fn follower() -> RaftView {
        RaftView {
            id: 2,
            term: 4,
            state: ServerState::Follower,
            leader: Some(1),
            voter: true,
            voters: 3,
            last_log_index: Some(100),
            applied: Some(100),
            committed: Some(100),
            snapshot: None,
            quorum_ack_age: None,
            contact_age: Duration::from_millis(80),
            matched: Vec::new(),
        }
    }

    fn leader() -> RaftView {
        RaftView {
            id: 1,
            state: ServerState::Leader,
            leader: Some(1),
            quorum_ack_age: Some(Duration::from_millis(90)),
            contact_age: Duration::from_secs(60),
            ..follower()
        }
    }

    #[test]
    fn a_follower_in_touch_and_applied_is_ready() {
        assert_eq!(readiness(&follower(), LIMIT), Ok(()));
        let busy = RaftView {
            applied: Some(100),
            committed: Some(100 + CATCH_UP_SLACK),
            ..follower()
        };
        assert_eq!(
            readiness(&busy, LIMIT),
            Ok(()),
            "a busy moment is not catching up"
        );
    }

    #[test]
    fn a_follower_cut_off_from_its_leader_is_not_ready() {
        let cut_off = RaftView {
            contact_age: Duration::from_secs(3),
            ..follower()
        };
        let reason = readiness(&cut_off, LIMIT).unwrap_err();
        assert!(
            reason.contains("no word from leader 1 for 3000 ms"),
            "{reason}"
        );
        let candidate = RaftView {
            state: ServerState::Candidate,
            leader: None,
            ..follower()
        };
        let reason = readiness(&candidate, LIMIT).unwrap_err();
        assert!(reason.contains("no leader known in term 4"), "{reason}");
    }

    #[test]
    fn a_learner_or_a_replica_far_behind_is_not_ready() {
        let learner = RaftView {
            voter: false,
            state: ServerState::Learner,
            ..follower()
        };
        assert!(readiness(&learner, LIMIT)
            .unwrap_err()
            .contains("not a voting member"));
        let behind = RaftView {
            applied: Some(10),
            committed: Some(5000),
            ..follower()
        };
        let reason = readiness(&behind, LIMIT).unwrap_err();
        assert!(reason.contains("applied 10 of 5000"), "{reason}");
    }

    #[test]
    fn a_leader_needs_a_recent_majority() {
        assert_eq!(readiness(&leader(), LIMIT), Ok(()));
        let isolated = RaftView {
            quorum_ack_age: Some(Duration::from_secs(5)),
            ..leader()
        };
        let reason = readiness(&isolated, LIMIT).unwrap_err();
        assert!(
            reason.contains("no majority has acknowledged it for 5000 ms"),
            "{reason}"
        );
        let alone = RaftView {
            voters: 1,
            quorum_ack_age: None,
            ..leader()
        };
        assert_eq!(
            readiness(&alone, LIMIT),
            Ok(()),
            "a single voter is its own majority"
        );
    }
}
