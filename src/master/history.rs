//! Keeps the replica's recent history for the console's charts (`console::history`): samples
//! the applied queue every few seconds and the Raft view whenever it changes, so a leader
//! change is marked when this replica saw it, not at the next tick.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::console::history::{History, Minute, Sample};
use crate::queue::JobState;
use crate::raft::Raft;
use crate::raft::SharedQueue;

/// How often the queue is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// The replica's recent history; cheap to clone.
#[derive(Clone, Default)]
pub struct RecentHistory {
    history: Arc<Mutex<History>>,
}

impl RecentHistory {
    /// The last hour, minute by minute, oldest first.
    pub fn last_hour(&self) -> Vec<Minute> {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        history.last_hour(crate::wall_time::now_ms())
    }

    fn record(&self, sample: Sample) {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        history.record(sample);
    }

    /// Samples `queue` and `raft` until the Raft node stops.
    pub fn spawn_sampler(&self, raft: Raft, queue: SharedQueue) -> tokio::task::JoinHandle<()> {
        let history = self.clone();
        tokio::spawn(async move {
            // The server metrics change with the vote, role, leader or membership only, not
            // with every apply.
            let mut server = raft.server_metrics();
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let view = |server: &mut tokio::sync::watch::Receiver<_>| {
                let m: &openraft::metrics::RaftServerMetrics<_, _> = &server.borrow_and_update();
                (m.vote.leader_id().term, m.current_leader)
            };
            let mut seen = view(&mut server);
            loop {
                history.record(sample(&queue, seen));
                loop {
                    tokio::select! {
                        _ = tick.tick() => break,
                        changed = server.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            // A new term or leader is sampled at once; a membership change
                            // waits for the tick.
                            let now = view(&mut server);
                            if now != seen {
                                seen = now;
                                break;
                            }
                        }
                    }
                }
            }
        })
    }
}

/// The queue's totals and depth now, with the Raft view `(term, leader)`.
fn sample(queue: &SharedQueue, (term, leader): (u64, Option<u64>)) -> Sample {
    let queue = queue.read().unwrap_or_else(|p| p.into_inner());
    let activity = queue.activity();
    Sample {
        at_ms: crate::wall_time::now_ms(),
        submitted_total: activity.jobs_submitted,
        succeeded_total: activity.jobs_succeeded,
        failed_total: activity.jobs_failed,
        queued: queue.jobs_in(JobState::Queued),
        term,
        leader,
    }
}
