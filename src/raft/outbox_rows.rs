//! Where the `sm` tree keeps the outbox, and reading it back for the SSISDB shipper, the
//! leader's retention cut and the metrics.
//!
//! Every pending event is a row `outbox/<event id, 8 bytes BE>` (so rows sort by id, which is
//! log order and time order), written by the apply that recorded it and removed by the apply
//! that released it; the queue holds counters only (`queue/outbox.rs`). The pending truncation
//! event of each live job is also a row `truncation/<job id BE>`, read at open: the queue
//! rewrites those in place.
//!
//! Readers see the rows of the applies written so far: a prefix of the events in id order (each
//! apply's rows land in one batch, after the rows of earlier entries), behind the queue by at
//! most the apply being written. A reader that takes the cursor from the queue and then reads
//! the rows after it therefore counts exactly the events it read, which is what a
//! `ReleaseOutbox` stamps.

use super::job_rows::id_key;
use super::storage::decode;
use crate::queue::{JobId, OutboxEvent};

pub(super) const OUTBOX_PREFIX: &[u8] = b"outbox/";
pub(super) const TRUNCATION_PREFIX: &[u8] = b"truncation/";

pub(super) fn outbox_key(id: u64) -> Vec<u8> {
    id_key(OUTBOX_PREFIX, id)
}

pub(super) fn truncation_key(job: JobId) -> Vec<u8> {
    id_key(TRUNCATION_PREFIX, job)
}

/// Why the outbox could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OutboxReadError {
    #[error("reading the outbox from the store failed: {0}")]
    Store(String),
    #[error("outbox event row {key} is damaged: {detail}")]
    Corrupt { key: String, detail: String },
}

/// Reads the stored outbox; cheap to clone.
#[derive(Clone)]
pub struct OutboxReader {
    tree: sled::Tree,
}

/// The prefix of the pending events older than a retention cut-off, as a release names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgedEvents {
    /// The last of them.
    pub up_to: u64,
    /// How many they are.
    pub events: u64,
}

impl OutboxReader {
    pub(super) fn new(tree: sled::Tree) -> OutboxReader {
        OutboxReader { tree }
    }

    /// Up to `limit` events after `after`, oldest first.
    pub fn after(&self, after: u64, limit: usize) -> Result<Vec<OutboxEvent>, OutboxReadError> {
        self.each_after(after).take(limit).collect()
    }

    /// Every stored event after `after`, oldest first, read as the iterator goes (one pass over
    /// the rows, for a snapshot).
    pub fn each_after(
        &self,
        after: u64,
    ) -> impl Iterator<Item = Result<OutboxEvent, OutboxReadError>> + '_ {
        self.rows_from(after.saturating_add(1))
    }

    /// The oldest stored event, if any.
    pub fn oldest(&self) -> Result<Option<OutboxEvent>, OutboxReadError> {
        self.all().next().transpose()
    }

    /// Every stored event, oldest first (a held outbox, loaded whole at open).
    pub(super) fn all(&self) -> impl Iterator<Item = Result<OutboxEvent, OutboxReadError>> + '_ {
        self.rows_from(0)
    }

    /// The events after `after` that are recorded before `before_ms` or among the `excess`
    /// oldest, at most `limit` of them: a prefix, since events are in time order (cluster time
    /// never goes backwards in log order).
    pub fn aged(
        &self,
        after: u64,
        before_ms: u64,
        excess: u64,
        limit: u64,
    ) -> Result<Option<AgedEvents>, OutboxReadError> {
        let mut aged: Option<AgedEvents> = None;
        for event in self.each_after(after) {
            let event = event?;
            let taken = aged.map_or(0, |a| a.events);
            if (event.at_ms >= before_ms && taken >= excess) || taken >= limit {
                break;
            }
            aged = Some(AgedEvents {
                up_to: event.id,
                events: aged.map_or(0, |a| a.events) + 1,
            });
        }
        Ok(aged)
    }

    /// The stored events from id `first` on, oldest first; a row whose event is not the one its
    /// key names is damage.
    fn rows_from(
        &self,
        first: u64,
    ) -> impl Iterator<Item = Result<OutboxEvent, OutboxReadError>> + '_ {
        let start = outbox_key(first);
        self.tree
            .range(start..)
            .take_while(|row| {
                row.as_ref()
                    .map_or(true, |(k, _)| k.starts_with(OUTBOX_PREFIX))
            })
            .map(|row| {
                let (key, value) = row.map_err(|e| OutboxReadError::Store(e.to_string()))?;
                let corrupt = |detail: String| OutboxReadError::Corrupt {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    detail,
                };
                let event = decode::<OutboxEvent>(&value).map_err(|e| corrupt(e.to_string()))?;
                if key[OUTBOX_PREFIX.len()..] != event.id.to_be_bytes() {
                    return Err(corrupt(format!("it holds event {}", event.id)));
                }
                Ok(event)
            })
    }
}
