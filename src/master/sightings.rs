//! Worker sightings: what the leader in office learns from heartbeats and idle long-polls
//! without a log entry each, committed for every replica as one `WorkersSeen` per interval.
//!
//! A heartbeat, and a long-poll that has nothing to grant, change only when the worker was last
//! heard from and the load it reported: display, since dispatch judges the load each acquire
//! brings with it. Made log entries, they were the leader's whole cost of an idle fleet (1,000
//! idle workers are 300 entries a second, each replicated and fsynced). So the leader answers
//! them from its state (`worker_service.rs` says when it may), keeps the newest sighting of each
//! worker here, and commits them together once per interval. A failover loses at most one
//! interval of sightings, and the workers' next calls bring them back; a follower shows a
//! worker's last heartbeat up to one interval late, the leader's linearizable list at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{debug, warn};

use super::proposer::{ProposeError, Proposer};
use crate::config::WorkerSettings;
use crate::queue::{Command, CommandOutput, Worker, WorkerId, WorkerSeen};

/// The newest sighting of each worker since the last `WorkersSeen`; cheap to clone.
#[derive(Clone, Default)]
pub struct Sightings {
    newest: Arc<Mutex<HashMap<WorkerId, WorkerSeen>>>,
}

impl Sightings {
    /// How often the leader commits its sightings: often enough that a follower never shows a
    /// worker heard from within `workers.offline_after_ms` as offline (a sixth of it), and at
    /// most every 10 s.
    pub fn interval(settings: &WorkerSettings) -> Duration {
        Duration::from_millis(settings.offline_after_ms / 6)
            .clamp(Duration::from_millis(200), Duration::from_secs(10))
    }

    pub fn record(&self, sighting: WorkerSeen) {
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        let keep = newest
            .get(&sighting.worker)
            .is_some_and(|known| known.at_ms > sighting.at_ms);
        if !keep {
            newest.insert(sighting.worker, sighting);
        }
    }

    fn take(&self) -> Vec<WorkerSeen> {
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        newest.drain().map(|(_, sighting)| sighting).collect()
    }

    /// `worker` as the leader knows it now: with its newest sighting not yet committed.
    pub fn overlay(&self, worker: &Worker) -> Worker {
        let newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        let mut worker = worker.clone();
        if let Some(sighting) = newest
            .get(&worker.info.id)
            .filter(|s| s.at_ms >= worker.last_heartbeat_ms)
        {
            worker.last_heartbeat_ms = sighting.at_ms;
            worker.cpu_percent_x10 = sighting.cpu_percent_x10;
            worker.free_memory_mb = sighting.free_memory_mb;
        }
        worker
    }

    /// A duty of the term of office (`leader.rs`): every `interval`, the sightings gathered so
    /// far as one `WorkersSeen`. Never returns by itself; the leader loop drops it when the term
    /// ends. Sightings left over from an earlier term are committed with the first batch: they
    /// are as true now, and a later sighting of the same worker replaces them.
    pub async fn commit_while_leading(self, proposer: Proposer, interval: Duration, term: u64) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let seen = self.take();
            if seen.is_empty() {
                continue;
            }
            let workers = seen.len();
            match proposer.propose_here(Command::WorkersSeen { seen }).await {
                Ok(Ok(CommandOutput::WorkersSeen { recorded })) => {
                    debug!(term, workers, recorded, "worker sightings committed")
                }
                Ok(other) => warn!(term, outcome = ?other, "worker sightings refused"),
                // Cut off or deposed: the next leader hears from the workers itself.
                Err(error @ (ProposeError::CutOff { .. } | ProposeError::NotLeader { .. })) => {
                    debug!(%error, term, workers, "worker sightings not committed")
                }
                Err(error) => warn!(%error, term, workers, "could not commit worker sightings"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::WorkerInfo;

    fn sighting(worker: u128, at_ms: u64, cpu: u32) -> WorkerSeen {
        WorkerSeen {
            worker: WorkerId::from_u128(worker),
            at_ms,
            cpu_percent_x10: cpu,
            free_memory_mb: 1024,
        }
    }

    #[test]
    fn the_newest_sighting_of_each_worker_is_kept_until_taken() {
        let sightings = Sightings::default();
        sightings.record(sighting(1, 100, 10));
        sightings.record(sighting(1, 300, 30));
        // Two calls answered out of order: the older does not replace the newer.
        sightings.record(sighting(1, 200, 20));
        sightings.record(sighting(2, 150, 15));
        let mut taken = sightings.take();
        taken.sort_by_key(|s| s.worker);
        assert_eq!(taken, vec![sighting(1, 300, 30), sighting(2, 150, 15)]);
        assert!(sightings.take().is_empty(), "taken once");
    }

    #[test]
    fn the_overlay_shows_a_sighting_newer_than_the_committed_one() {
        let sightings = Sightings::default();
        let worker = Worker {
            info: WorkerInfo {
                id: WorkerId::from_u128(1),
                display_name: "w".into(),
                description: String::new(),
                machine_name: "m".into(),
                tags: Vec::new(),
                max_tasks: 1,
                version: String::new(),
            },
            enabled: true,
            draining: false,
            registered_at_ms: 0,
            last_heartbeat_ms: 250,
            cpu_percent_x10: 5,
            free_memory_mb: 512,
            running: Default::default(),
            last_grant: None,
        };
        assert_eq!(sightings.overlay(&worker), worker, "nothing seen");
        sightings.record(sighting(1, 200, 20));
        assert_eq!(sightings.overlay(&worker), worker, "older than the log's");
        sightings.record(sighting(1, 400, 40));
        let shown = sightings.overlay(&worker);
        assert_eq!((shown.last_heartbeat_ms, shown.cpu_percent_x10), (400, 40));
    }

    #[test]
    fn the_interval_follows_the_offline_threshold_within_bounds() {
        let settings = |offline_after_ms| WorkerSettings {
            offline_after_ms,
            ..WorkerSettings::default()
        };
        assert_eq!(
            Sightings::interval(&settings(60_000)),
            Duration::from_secs(10)
        );
        assert_eq!(
            Sightings::interval(&settings(12_000)),
            Duration::from_secs(2)
        );
        assert_eq!(
            Sightings::interval(&settings(600)),
            Duration::from_millis(200)
        );
    }
}
