//! A replica's own recent history, minute by minute, for the console's charts: jobs submitted,
//! completed and failed per minute, the deepest queue seen in each minute, and when the leader
//! changed. Built from samples of the replica's applied state and Raft view (`master::history`
//! takes them), so any replica can draw the last hour without Prometheus; kept in memory for
//! [`MINUTES`] minutes, so it starts empty with the process.

use std::collections::VecDeque;

/// How many minutes are kept and drawn.
pub const MINUTES: usize = 60;

const MINUTE_MS: u64 = 60_000;

/// What the replica showed at one moment: running totals since it started, the queue's depth,
/// and who led.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample {
    pub at_ms: u64,
    pub submitted_total: u64,
    pub succeeded_total: u64,
    pub failed_total: u64,
    pub queued: u64,
    pub term: u64,
    pub leader: Option<u64>,
}

/// A leader change seen: when, the term, and the new leader (none during an election).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderChange {
    pub at_ms: u64,
    pub term: u64,
    pub leader: Option<u64>,
}

/// One minute of history.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Minute {
    /// The minute's first millisecond (a multiple of 60,000).
    pub start_ms: u64,
    pub submitted: u64,
    pub completed: u64,
    pub failed: u64,
    /// The deepest queue sampled in the minute (none sampled: 0).
    pub queue_depth: u64,
    pub leader_changes: Vec<LeaderChange>,
}

/// The last [`MINUTES`] minutes.
#[derive(Debug, Default)]
pub struct History {
    minutes: VecDeque<Minute>,
    last: Option<Sample>,
}

impl History {
    /// Adds what `sample` shows since the previous one to its minute. Totals that went down (the
    /// state was replaced by a snapshot) count from the new value on; a sample older than the
    /// previous (the wall clock stepped back) goes into the newest minute.
    pub fn record(&mut self, sample: Sample) {
        let growth = |now: u64, before: u64| now.saturating_sub(before);
        let (submitted, completed, failed, changed) = match self.last {
            Some(last) => (
                growth(sample.submitted_total, last.submitted_total),
                growth(sample.succeeded_total, last.succeeded_total),
                growth(sample.failed_total, last.failed_total),
                last.leader != sample.leader || last.term != sample.term,
            ),
            None => (0, 0, 0, false),
        };
        let minute = self.minute_for(sample.at_ms);
        minute.submitted += submitted;
        minute.completed += completed;
        minute.failed += failed;
        minute.queue_depth = minute.queue_depth.max(sample.queued);
        if changed {
            minute.leader_changes.push(LeaderChange {
                at_ms: sample.at_ms,
                term: sample.term,
                leader: sample.leader,
            });
        }
        self.last = Some(sample);
    }

    /// The minute `at_ms` falls in, created (and the oldest dropped) when it is new; the newest
    /// for a sample from before it.
    fn minute_for(&mut self, at_ms: u64) -> &mut Minute {
        let start_ms = at_ms - at_ms % MINUTE_MS;
        let newest = self.minutes.back().map(|m| m.start_ms);
        if newest.is_none_or(|newest| start_ms > newest) {
            self.minutes.push_back(Minute {
                start_ms,
                ..Minute::default()
            });
            while self.minutes.len() > MINUTES {
                self.minutes.pop_front();
            }
        }
        let newest = self.minutes.len() - 1;
        &mut self.minutes[newest]
    }

    /// The [`MINUTES`] minutes up to the one holding `now_ms`, oldest first, the ones nothing
    /// was recorded in empty (their queue depth carried from the minute before: the queue did
    /// not change unseen).
    pub fn last_hour(&self, now_ms: u64) -> Vec<Minute> {
        let newest = now_ms - now_ms % MINUTE_MS;
        let oldest = newest.saturating_sub((MINUTES as u64 - 1) * MINUTE_MS);
        let mut recorded = self.minutes.iter().peekable();
        let mut depth = 0;
        let mut hour = Vec::with_capacity(MINUTES);
        let mut start_ms = oldest;
        while start_ms <= newest {
            while recorded.next_if(|m| m.start_ms < start_ms).is_some() {}
            match recorded.next_if(|m| m.start_ms == start_ms) {
                Some(minute) => {
                    depth = minute.queue_depth;
                    hour.push(minute.clone());
                }
                None => hour.push(Minute {
                    start_ms,
                    queue_depth: depth,
                    ..Minute::default()
                }),
            }
            start_ms += MINUTE_MS;
        }
        hour
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000 - 1_800_000_000_000 % MINUTE_MS;

    fn sample(at_ms: u64, submitted: u64, succeeded: u64, failed: u64, queued: u64) -> Sample {
        Sample {
            at_ms,
            submitted_total: submitted,
            succeeded_total: succeeded,
            failed_total: failed,
            queued,
            term: 1,
            leader: Some(1),
        }
    }

    #[test]
    fn counts_go_to_the_minute_they_grew_in() {
        let mut history = History::default();
        history.record(sample(T0 + 1_000, 10, 0, 0, 10));
        history.record(sample(T0 + 30_000, 25, 5, 1, 19));
        history.record(sample(T0 + 61_000, 30, 20, 2, 8));
        let hour = history.last_hour(T0 + 61_000);
        assert_eq!(hour.len(), MINUTES);
        let (before, now) = (&hour[MINUTES - 2], &hour[MINUTES - 1]);
        // The first sample is the baseline: what was there before the replica looked is not
        // counted in any minute.
        assert_eq!(
            (before.submitted, before.completed, before.failed),
            (15, 5, 1)
        );
        assert_eq!(before.queue_depth, 19);
        assert_eq!((now.submitted, now.completed, now.failed), (5, 15, 1));
        assert_eq!(now.queue_depth, 8);
        assert_eq!(now.start_ms, T0 + MINUTE_MS);
    }

    #[test]
    fn empty_minutes_are_drawn_and_old_ones_forgotten() {
        let mut history = History::default();
        history.record(sample(T0, 0, 0, 0, 4));
        history.record(sample(T0 + 1_000, 3, 0, 0, 7));
        let later = T0 + 10 * MINUTE_MS;
        let hour = history.last_hour(later);
        assert_eq!(hour.len(), MINUTES);
        assert_eq!(hour.last().map(|m| m.start_ms), Some(later));
        let first = hour
            .iter()
            .position(|m| m.start_ms == T0)
            .expect("T0's minute");
        assert_eq!(hour[first].submitted, 3);
        // Nothing sampled since: the queue is as last seen.
        assert!(hour[first + 1..]
            .iter()
            .all(|m| m.queue_depth == 7 && m.submitted == 0));
        // Two hours on, the samples have left the window.
        for minute in 0..2 * MINUTES as u64 {
            history.record(sample(T0 + minute * MINUTE_MS + 500, 3, 0, 0, 1));
        }
        assert!(history.minutes.len() <= MINUTES);
        let hour = history.last_hour(T0 + 2 * MINUTES as u64 * MINUTE_MS);
        assert!(hour.iter().all(|m| m.submitted == 0));
    }

    #[test]
    fn leader_changes_are_marked_when_they_are_seen() {
        let mut history = History::default();
        history.record(sample(T0, 0, 0, 0, 0));
        let mut electing = sample(T0 + 5_000, 0, 0, 0, 0);
        (electing.term, electing.leader) = (2, None);
        history.record(electing);
        let mut elected = sample(T0 + 5_400, 0, 0, 0, 0);
        (elected.term, elected.leader) = (2, Some(3));
        history.record(elected);
        history.record(elected);
        let hour = history.last_hour(T0);
        let changes = &hour[MINUTES - 1].leader_changes;
        assert_eq!(
            changes,
            &vec![
                LeaderChange {
                    at_ms: T0 + 5_000,
                    term: 2,
                    leader: None
                },
                LeaderChange {
                    at_ms: T0 + 5_400,
                    term: 2,
                    leader: Some(3)
                },
            ]
        );
    }

    #[test]
    fn a_state_replaced_by_a_snapshot_or_a_clock_step_back_loses_nothing_and_counts_nothing_twice()
    {
        let mut history = History::default();
        history.record(sample(T0 + 1_000, 100, 50, 0, 0));
        // Totals restart lower (a snapshot replaced the state): no negative or huge count.
        history.record(sample(T0 + 2_000, 4, 1, 0, 0));
        history.record(sample(T0 + 3_000, 6, 1, 0, 0));
        // The clock stepped back a minute: the growth goes to the newest minute.
        history.record(sample(T0 - MINUTE_MS, 9, 1, 0, 0));
        let hour = history.last_hour(T0);
        assert_eq!(hour[MINUTES - 1].submitted, 5);
        assert_eq!(hour.iter().map(|m| m.submitted).sum::<u64>(), 5);
    }
}
