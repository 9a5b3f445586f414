//! Wakes the leader's waiting AcquireTasks long-polls when an apply may have made work for them:
//! every poll when a job became queued (a submit, a retry, an expired lease), one worker's when
//! its own row changed (a slot freed, enabled, undrained, its load reported).
//!
//! Polls used to wake on every change of openraft's metrics, which move with every apply and
//! every replication ack, and each woken poll rechecked the queue: 1,000 idle workers cost the
//! leader 1.4 cores (`scaleout bench scale`). The leader loop wakes every poll when its term of
//! office ends, so each learns at once that it must go elsewhere; a poll still rechecks on its
//! own every second, for jobs whose retry delay runs out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::{watch, Notify};

use crate::queue::WorkerId;

/// Shared by the state machine, which publishes, and the worker service, which waits.
#[derive(Clone)]
pub struct DispatchSignal {
    inner: Arc<Inner>,
}

struct Inner {
    /// Counts the applies that made a job queued.
    new_work: watch::Sender<u64>,
    /// The waiting polls' own wake-ups, by worker (dropped when no poll holds them).
    workers: Mutex<Workers>,
}

#[derive(Default)]
struct Workers {
    by_id: HashMap<WorkerId, Weak<Notify>>,
    /// Forgotten entries are swept when the map reaches this size.
    sweep_at: usize,
}

impl Default for DispatchSignal {
    fn default() -> Self {
        DispatchSignal {
            inner: Arc::new(Inner {
                new_work: watch::Sender::new(0),
                workers: Mutex::default(),
            }),
        }
    }
}

impl DispatchSignal {
    /// What `worker`'s poll waits on; subscribe before checking the queue, so a change between
    /// the check and the wait is not missed.
    pub fn watch(&self, worker: WorkerId) -> DispatchWatch {
        let mut workers = self
            .inner
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let own = match workers.by_id.get(&worker).and_then(Weak::upgrade) {
            Some(own) => own,
            None => {
                let own = Arc::new(Notify::new());
                workers.by_id.insert(worker, Arc::downgrade(&own));
                own
            }
        };
        if workers.by_id.len() >= workers.sweep_at {
            workers.by_id.retain(|_, own| own.strong_count() > 0);
            workers.sweep_at = (workers.by_id.len() * 2).max(64);
        }
        DispatchWatch {
            new_work: self.inner.new_work.subscribe(),
            own,
        }
    }

    /// Wakes every waiting poll (this replica stopped leading: they must answer so).
    pub fn wake_all(&self) {
        self.publish(true, []);
    }

    /// After an apply: whether it made a job queued, and the workers whose rows it changed.
    pub(super) fn publish(&self, new_work: bool, workers: impl IntoIterator<Item = WorkerId>) {
        if new_work {
            self.inner.new_work.send_modify(|count| *count += 1);
        }
        let waiting = self
            .inner
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for worker in workers {
            if let Some(own) = waiting.by_id.get(&worker).and_then(Weak::upgrade) {
                // Kept as a permit when the poll is between its check and its wait.
                own.notify_one();
            }
        }
    }
}

/// One poll's view of the signal.
pub struct DispatchWatch {
    new_work: watch::Receiver<u64>,
    own: Arc<Notify>,
}

impl DispatchWatch {
    /// Returns when a job became queued or this worker's row changed since the last return (or
    /// since [`DispatchSignal::watch`]).
    pub async fn changed(&mut self) {
        tokio::select! {
            _ = self.new_work.changed() => {}
            _ = self.own.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn worker(n: u128) -> WorkerId {
        uuid::Uuid::from_u128(n)
    }

    async fn woken(watch: &mut DispatchWatch) -> bool {
        tokio::time::timeout(Duration::from_millis(50), watch.changed())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn new_work_wakes_every_poll_and_a_worker_change_only_its_own() {
        let signal = DispatchSignal::default();
        let (mut a, mut b) = (signal.watch(worker(1)), signal.watch(worker(2)));
        signal.publish(false, [worker(1)]);
        assert!(woken(&mut a).await);
        assert!(!woken(&mut b).await, "another worker's change is not b's");
        signal.publish(false, []);
        assert!(
            !woken(&mut a).await,
            "an apply that changes nothing for anyone wakes nobody"
        );
        signal.publish(true, []);
        assert!(woken(&mut a).await);
        assert!(woken(&mut b).await);
    }

    #[tokio::test]
    async fn a_change_before_the_wait_is_not_lost_and_dropped_polls_are_forgotten() {
        let signal = DispatchSignal::default();
        let mut a = signal.watch(worker(1));
        // Published between the poll's check and its wait.
        signal.publish(false, [worker(1)]);
        signal.publish(true, []);
        assert!(woken(&mut a).await);
        drop(a);
        for n in 0..200 {
            drop(signal.watch(worker(n)));
        }
        let left = signal.inner.workers.lock().unwrap().by_id.len();
        assert!(left < 200, "{left} entries for polls that ended");
    }
}
