//! Recording outbox events as the queue changes, and removing them once shipped or aged out.
//! See `queue/outbox.rs` for what the outbox is.

use super::QueueState;
use crate::queue::outbox::{event_id, EventKind, OutboxEvent};
use crate::queue::{CommandOutput, CommandResult, JobId};

impl QueueState {
    /// Records an event made by the command being applied. Called by the primitives and
    /// handlers only, inside `apply`.
    pub(super) fn record(&mut self, kind: EventKind) {
        let Some(ctx) = self.applying else {
            debug_assert!(false, "an event recorded outside apply: {kind:?}");
            return;
        };
        let full = self.outbox.len() as u64 >= ctx.outbox_limit;
        if full && kind.is_droppable() {
            self.count_dropped_log_event(kind.job().unwrap_or_default(), ctx.now_ms);
            return;
        }
        self.push_event(ctx.log_index, ctx.now_ms, kind);
    }

    /// Adds an event with the next id of the entry at `log_index`; returns its id.
    fn push_event(&mut self, log_index: u64, at_ms: u64, kind: EventKind) -> u64 {
        let id = self.next_event_id(log_index);
        self.outbox.insert(id, OutboxEvent { id, at_ms, kind });
        self.changes.outbox.insert(id);
        id
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
    fn count_dropped_log_event(&mut self, job: JobId, now_ms: u64) {
        self.outbox_meta.dropped_log_events += 1;
        self.changes.outbox_meta = true;
        if let Some(&id) = self.truncated_events.get(&job) {
            if let Some(event) = self.outbox.get_mut(&id) {
                if let EventKind::LogTruncated { dropped, .. } = &mut event.kind {
                    *dropped += 1;
                    event.at_ms = now_ms;
                    self.changes.outbox.insert(id);
                    return;
                }
            }
        }
        let Some(ctx) = self.applying else {
            return;
        };
        let id = self.push_event(
            ctx.log_index,
            now_ms,
            EventKind::LogTruncated { job, dropped: 1 },
        );
        self.truncated_events.insert(job, id);
    }

    /// Removes every event up to `up_to`: they are in SSISDB. An ack at or below the cursor
    /// (a retry, or a slower leader's) changes nothing.
    pub(super) fn ack_outbox(&mut self, up_to: u64) -> CommandResult {
        let mut removed = 0;
        if up_to > self.outbox_meta.acked_up_to {
            self.outbox_meta.acked_up_to = up_to;
            self.changes.outbox_meta = true;
            let ids: Vec<u64> = self.outbox.range(..=up_to).map(|(id, _)| *id).collect();
            removed = ids.len() as u64;
            self.remove_ids(ids);
        }
        Ok(CommandOutput::OutboxAcked {
            acked_up_to: self.outbox_meta.acked_up_to,
            removed,
        })
    }

    /// Removes the events older than `before_ms` (retention when no SSISDB takes them). The
    /// cursor moves past them, so a SSISDB configured later starts after what was pruned.
    pub(super) fn prune_outbox(&mut self, before_ms: u64) -> CommandResult {
        let removed: Vec<u64> = self
            .outbox
            .values()
            .filter(|event| event.at_ms < before_ms)
            .map(|event| event.id)
            .collect();
        self.remove_ids(removed.clone());
        if let Some(&last) = removed.iter().max() {
            if last > self.outbox_meta.acked_up_to {
                self.outbox_meta.acked_up_to = last;
                self.changes.outbox_meta = true;
            }
        }
        Ok(CommandOutput::OutboxAcked {
            acked_up_to: self.outbox_meta.acked_up_to,
            removed: removed.len() as u64,
        })
    }

    fn remove_ids(&mut self, ids: Vec<u64>) {
        for id in ids {
            if let Some(event) = self.outbox.remove(&id) {
                if let EventKind::LogTruncated { job, .. } = event.kind {
                    self.truncated_events.remove(&job);
                }
            }
            self.changes.outbox.insert(id);
        }
    }

    // ---- Queries ----

    /// Up to `limit` events after `after_id`, oldest first.
    pub fn outbox_after(&self, after_id: u64, limit: usize) -> Vec<OutboxEvent> {
        self.outbox
            .range(after_id.saturating_add(1)..)
            .take(limit)
            .map(|(_, event)| event.clone())
            .collect()
    }

    pub fn outbox_event(&self, id: u64) -> Option<&OutboxEvent> {
        self.outbox.get(&id)
    }

    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    pub fn outbox_meta(&self) -> &crate::queue::OutboxMeta {
        &self.outbox_meta
    }

    /// Every event in the outbox, oldest first (persistence and snapshots).
    pub fn outbox_events(&self) -> impl Iterator<Item = &OutboxEvent> + '_ {
        self.outbox.values()
    }
}
