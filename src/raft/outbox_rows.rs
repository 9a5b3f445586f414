//! Where the `sm` tree keeps the outbox, and reading it back for the SSISDB shipper, the
//! leader's retention cut and the metrics.
//!
//! The events one apply recorded are one row, a block: `outbox/<first event id, 8 bytes BE>+`,
//! holding them in id order (a job's life makes about five events; one row per event was two
//! thirds of the sled writes per job, `docs/profiling.md`). The events of an apply that writes a
//! job's log truncation event (rewritten in place later) and every event of a held outbox
//! (whose prune removes events one by one) are single rows `outbox/<event id BE>`, as every
//! event was before blocks. So no row lies inside another's span: read in key order, the rows
//! give the events in id order, and the row holding an id, if any, is the last one starting at
//! or before it. A release removes the rows whose events are all released and rewrites the one
//! block it cuts through under its first remaining id, so no stored event is at or before the
//! shipped cursor. The queue holds counters only (`queue/outbox.rs`). The pending truncation
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

/// Marks a block's key: right after the single row of its first id.
const BLOCK_MARK: u8 = b'+';

/// The key of a block whose first event is `first`.
pub(super) fn block_key(first: u64) -> Vec<u8> {
    let mut key = outbox_key(first);
    key.push(BLOCK_MARK);
    key
}

/// Whether `key` is a block's (else a single event's, if an outbox key at all).
pub(super) fn is_block_key(key: &[u8]) -> bool {
    parse_key(key).is_some_and(|(_, block)| block)
}

/// The first event id a row's key names, and whether the row is a block.
fn parse_key(key: &[u8]) -> Option<(u64, bool)> {
    let rest = key.strip_prefix(OUTBOX_PREFIX)?;
    let (id, mark) = rest.split_first_chunk::<8>()?;
    let block = match mark {
        [] => false,
        [BLOCK_MARK] => true,
        _ => return None,
    };
    Some((u64::from_be_bytes(*id), block))
}

/// The events of one stored row: a block's, or a single event.
pub(super) fn decode_row(key: &[u8], value: &[u8]) -> Result<Vec<OutboxEvent>, OutboxReadError> {
    let corrupt = |detail: String| OutboxReadError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        detail,
    };
    let (first, block) = parse_key(key).ok_or_else(|| corrupt("not an outbox key".into()))?;
    let events = if block {
        decode::<Vec<OutboxEvent>>(value).map_err(|e| corrupt(e.to_string()))?
    } else {
        vec![decode::<OutboxEvent>(value).map_err(|e| corrupt(e.to_string()))?]
    };
    if events.first().map(|event| event.id) != Some(first) {
        return Err(corrupt(format!(
            "its first event is {:?}",
            events.first().map(|event| event.id)
        )));
    }
    if events.windows(2).any(|pair| pair[0].id >= pair[1].id) {
        return Err(corrupt("its events are not in id order".into()));
    }
    Ok(events)
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

    /// The stored events from id `first` on, oldest first; a row whose events are not the ones
    /// its key names is damage.
    fn rows_from(
        &self,
        first: u64,
    ) -> Box<dyn Iterator<Item = Result<OutboxEvent, OutboxReadError>> + '_> {
        // The block holding `first` may start before it: begin at the last row that starts at
        // or before it.
        let start = match self
            .tree
            .range(outbox_key(0)..=block_key(first))
            .keys()
            .next_back()
            .transpose()
        {
            Ok(Some(key)) => key.to_vec(),
            Ok(None) => outbox_key(first),
            Err(e) => return Box::new(std::iter::once(Err(OutboxReadError::Store(e.to_string())))),
        };
        let rows = self
            .tree
            .range(start..)
            .take_while(|row| {
                row.as_ref()
                    .map_or(true, |(k, _)| k.starts_with(OUTBOX_PREFIX))
            })
            .flat_map(|row| {
                let events = row
                    .map_err(|e| OutboxReadError::Store(e.to_string()))
                    .and_then(|(key, value)| decode_row(&key, &value));
                // Rows do not overlap (see the module docs): in key order, events are in id
                // order.
                match events {
                    Ok(events) => events.into_iter().map(Ok).collect::<Vec<_>>(),
                    Err(error) => vec![Err(error)],
                }
            })
            .filter(move |event| event.as_ref().map_or(true, |event| event.id >= first));
        Box::new(rows)
    }
}
