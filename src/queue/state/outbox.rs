//! Recording outbox events as the queue changes, and releasing them once shipped or aged out.
//! See `queue/outbox.rs` for what the outbox is, and for the held outbox of earlier builds.

use std::collections::{BTreeMap, BTreeSet};

use super::QueueState;
use crate::queue::outbox::{event_id, EventKind, OutboxEvent};
use crate::queue::{CommandOutput, CommandResult, JobId, QueueError, UNKNOWN_LAST_EVENT};

impl QueueState {
    /// Records an event made by the command being applied. Called by the primitives and
    /// handlers only, inside `apply`.
    pub(super) fn record(&mut self, kind: EventKind) {
        let Some(ctx) = self.applying else {
            debug_assert!(false, "an event recorded outside apply: {kind:?}");
            return;
        };
        let full = self.outbox_meta.pending >= ctx.outbox_limit;
        if full && kind.is_droppable() {
            self.count_dropped_log_event(kind.job().unwrap_or_default(), ctx.now_ms);
            return;
        }
        self.push_event(ctx.log_index, ctx.now_ms, kind);
    }

    /// Adds an event with the next id of the entry at `log_index`.
    fn push_event(&mut self, log_index: u64, at_ms: u64, kind: EventKind) -> OutboxEvent {
        let id = self.next_event_id(log_index);
        let event = OutboxEvent { id, at_ms, kind };
        self.outbox_meta.pending += 1;
        if let Some(job) = event.kind.job() {
            self.note_event_about(job, id);
        }
        if let Some(held) = &mut self.held_outbox {
            held.insert(id, event.clone());
        }
        self.changes.outbox_written.push(event.clone());
        event
    }

    /// A finished job named by a new event (a late log line) waits for it before retention
    /// may remove it.
    fn note_event_about(&mut self, job: JobId, id: u64) {
        if let Some(kept) = self.finished_jobs.get_mut(&job) {
            if kept.last_event != UNKNOWN_LAST_EVENT {
                kept.last_event = id;
                self.changes.jobs.insert(job);
            }
        }
    }

    fn next_event_id(&mut self, log_index: u64) -> u64 {
        let meta = &mut self.outbox_meta;
        if meta.last_index != log_index {
            meta.last_index = log_index;
            meta.next_sequence = 0;
        }
        let id = event_id(log_index, meta.next_sequence);
        meta.next_sequence += 1;
        self.changes.outbox_meta = true;
        id
    }

    /// One more log line event of `job` left out: counted in the job's pending
    /// `LogTruncated` event, made on the first drop (state events may exceed the limit).
    ///
    /// The event keeps the time of its first drop: events stay in time order, so the events past
    /// retention remain a prefix. (A held outbox stamps each rewrite, as earlier builds did.) A
    /// job that is not running keeps its event for the command that made it only, so the
    /// queue holds these events for live jobs alone.
    fn count_dropped_log_event(&mut self, job: JobId, now_ms: u64) {
        self.outbox_meta.dropped_log_events += 1;
        self.changes.outbox_meta = true;
        if let Some(event) = self.truncations.get_mut(&job) {
            if let EventKind::LogTruncated { dropped, .. } = &mut event.kind {
                *dropped += 1;
            }
            if let Some(held) = &mut self.held_outbox {
                event.at_ms = now_ms;
                held.insert(event.id, event.clone());
            }
            self.changes.outbox_written.push(event.clone());
            self.changes.truncations.insert(job);
            return;
        }
        let Some(ctx) = self.applying else {
            return;
        };
        let event = self.push_event(
            ctx.log_index,
            now_ms,
            EventKind::LogTruncated { job, dropped: 1 },
        );
        if self.held_outbox.is_none() && !self.jobs.contains_key(&job) {
            self.passing_truncations.push(job);
        }
        self.truncations.insert(job, event);
        self.changes.truncations.insert(job);
    }

    /// Forgets the truncation events of jobs that were not live (see
    /// `count_dropped_log_event`); at the end of each apply.
    pub(super) fn drop_passing_truncations(&mut self) {
        for job in std::mem::take(&mut self.passing_truncations) {
            if !self.jobs.contains_key(&job) && self.truncations.remove(&job).is_some() {
                self.changes.truncations.insert(job);
            }
        }
    }

    /// `ReleaseOutbox`: the `events` events after the cursor `after` up to `up_to` go.
    pub(super) fn release_outbox(&mut self, after: u64, up_to: u64, events: u64) -> CommandResult {
        let acked = self.outbox_meta.acked_up_to;
        if after != acked || up_to <= acked {
            // Counted from another cursor: a retry, or a slower leader's. Nothing to do.
            return Ok(CommandOutput::OutboxAcked {
                acked_up_to: acked,
                removed: 0,
            });
        }
        let newest = self.outbox_meta.newest_event_id();
        if up_to > newest {
            return Err(QueueError::InvalidRequest(format!(
                "outbox release up to event {up_to}, after the newest event {newest}"
            )));
        }
        if self.held_outbox.is_some() {
            return Ok(self.let_go_of_held_outbox(up_to));
        }
        if events > self.outbox_meta.pending {
            return Err(QueueError::InvalidRequest(format!(
                "outbox release of {events} events, {} pending",
                self.outbox_meta.pending
            )));
        }
        self.outbox_meta.pending -= events;
        self.release_through(up_to);
        Ok(CommandOutput::OutboxAcked {
            acked_up_to: up_to,
            removed: events,
        })
    }

    /// Moves the cursor to `up_to` and lets every event up to it go.
    fn release_through(&mut self, up_to: u64) {
        self.outbox_meta.acked_up_to = up_to;
        self.changes.outbox_meta = true;
        self.changes.outbox_released = Some(up_to);
        let gone: Vec<JobId> = self
            .truncations
            .iter()
            .filter(|(_, event)| event.id <= up_to)
            .map(|(&job, _)| job)
            .collect();
        for job in gone {
            self.truncations.remove(&job);
            self.changes.truncations.insert(job);
        }
    }

    /// The first release under this build: the held events up to `up_to` go (counted here, the
    /// held map being exact), and the queue stops holding the rest. Finished jobs of earlier
    /// builds learn their last event from it; truncation events stay held for live jobs only.
    fn let_go_of_held_outbox(&mut self, up_to: u64) -> CommandOutput {
        let Some(mut held) = self.held_outbox.take() else {
            return CommandOutput::OutboxAcked {
                acked_up_to: self.outbox_meta.acked_up_to,
                removed: 0,
            };
        };
        let before = held.len() as u64;
        // Below the cursor too: an earlier build's prune by age could leave a rewritten
        // truncation event behind it.
        held = held.split_off(&up_to.saturating_add(1));
        let removed = before - held.len() as u64;
        self.outbox_meta.pending = held.len() as u64;
        self.outbox_meta.held = false;
        let mut last_events: BTreeMap<JobId, u64> = BTreeMap::new();
        for event in held.values() {
            if let Some(job) = event.kind.job() {
                last_events.insert(job, event.id);
            }
        }
        for (&job, kept) in self.finished_jobs.iter_mut() {
            if kept.last_event == UNKNOWN_LAST_EVENT {
                kept.last_event = last_events.get(&job).copied().unwrap_or(0);
                self.changes.jobs.insert(job);
            }
        }
        self.changes
            .truncations
            .extend(self.truncations.keys().copied());
        let live = &self.jobs;
        self.truncations.retain(|job, _| live.contains_key(job));
        self.release_through(up_to);
        CommandOutput::OutboxAcked {
            acked_up_to: up_to,
            removed,
        }
    }

    /// An earlier build's `AckOutbox`: removes every held event up to `up_to`, as it did. A
    /// no-op once the outbox is no longer held (see `outbox.rs`).
    pub(super) fn ack_held_outbox(&mut self, up_to: u64) -> CommandResult {
        let mut removed = 0;
        if let Some(held) = &mut self.held_outbox {
            if up_to > self.outbox_meta.acked_up_to {
                let kept = held.split_off(&up_to.saturating_add(1));
                let gone = std::mem::replace(held, kept);
                removed = gone.len() as u64;
                self.outbox_meta.pending -= removed;
                self.forget_truncations_of(gone.values());
                self.outbox_meta.acked_up_to = up_to;
                self.changes.outbox_meta = true;
                self.changes.outbox_released = Some(up_to);
            }
        }
        Ok(CommandOutput::OutboxAcked {
            acked_up_to: self.outbox_meta.acked_up_to,
            removed,
        })
    }

    /// An earlier build's `PruneOutbox`: removes the held events older than `before_ms`, one by
    /// one, and moves the cursor past them, as it did. A no-op once the outbox is not held.
    pub(super) fn prune_held_outbox(&mut self, before_ms: u64) -> CommandResult {
        let mut gone = Vec::new();
        if let Some(held) = &mut self.held_outbox {
            let ids: Vec<u64> = held
                .values()
                .filter(|event| event.at_ms < before_ms)
                .map(|event| event.id)
                .collect();
            gone = ids.iter().filter_map(|id| held.remove(id)).collect();
        }
        let removed = gone.len() as u64;
        self.outbox_meta.pending -= removed;
        self.forget_truncations_of(gone.iter());
        self.changes
            .outbox_removed
            .extend(gone.iter().map(|e| e.id));
        if let Some(last) = gone.iter().map(|event| event.id).max() {
            if last > self.outbox_meta.acked_up_to {
                self.outbox_meta.acked_up_to = last;
            }
        }
        if removed > 0 {
            self.changes.outbox_meta = true;
        }
        Ok(CommandOutput::OutboxAcked {
            acked_up_to: self.outbox_meta.acked_up_to,
            removed,
        })
    }

    fn forget_truncations_of<'a>(&mut self, gone: impl Iterator<Item = &'a OutboxEvent>) {
        for event in gone {
            if let EventKind::LogTruncated { job, .. } = event.kind {
                if self.truncations.remove(&job).is_some() {
                    self.changes.truncations.insert(job);
                }
            }
        }
    }

    /// Checks the outbox's counters against what the state holds (tests).
    #[cfg(test)]
    pub(super) fn check_outbox(&self) -> Result<(), String> {
        let meta = &self.outbox_meta;
        if meta.held != self.held_outbox.is_some() {
            return Err("the outbox's held flag disagrees with the held events".into());
        }
        for event in self.truncations.values() {
            if event.id <= meta.acked_up_to && self.held_outbox.is_none() {
                return Err(format!(
                    "truncation event {} is at or below the shipped cursor {}",
                    event.id, meta.acked_up_to
                ));
            }
            if let EventKind::LogTruncated { job, .. } = event.kind {
                if self.held_outbox.is_none() && !self.jobs.contains_key(&job) {
                    return Err(format!("job {job} is not live but its truncation is held"));
                }
            }
        }
        if let Some(held) = &self.held_outbox {
            if held.len() as u64 != meta.pending {
                return Err(format!(
                    "{} events held, {} counted pending",
                    held.len(),
                    meta.pending
                ));
            }
            if let Some(&first) = held.keys().next() {
                if first <= meta.acked_up_to {
                    return Err(format!(
                        "outbox event {first} is at or below the shipped cursor {}",
                        meta.acked_up_to
                    ));
                }
            }
        } else if meta.pending > 0 && meta.newest_event_id() <= meta.acked_up_to {
            return Err(format!(
                "{} events pending, none after the cursor {}",
                meta.pending, meta.acked_up_to
            ));
        }
        Ok(())
    }

    // ---- Queries ----

    /// Events recorded and not yet shipped (or pruned).
    pub fn outbox_len(&self) -> usize {
        usize::try_from(self.outbox_meta.pending).unwrap_or(usize::MAX)
    }

    pub fn outbox_meta(&self) -> &crate::queue::OutboxMeta {
        &self.outbox_meta
    }

    /// The pending truncation event of `job`, when the queue holds one.
    pub fn truncation(&self, job: JobId) -> Option<&OutboxEvent> {
        self.truncations.get(&job)
    }

    /// The pending truncation events the queue holds (see `truncation`).
    pub fn truncation_events(&self) -> impl Iterator<Item = &OutboxEvent> + '_ {
        self.truncations.values()
    }

    /// The jobs named by pending events, while the outbox is held (`None` otherwise: then a
    /// finished job's `last_event` says it).
    pub(super) fn jobs_named_by_held_events(&self) -> Option<BTreeSet<JobId>> {
        self.held_outbox
            .as_ref()
            .map(|held| held.values().filter_map(|e| e.kind.job()).collect())
    }
}
