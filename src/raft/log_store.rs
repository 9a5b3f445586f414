//! The Raft log and Raft metadata in sled: openraft's [`RaftLogStorage`] (storage-v2) and
//! [`RaftLogReader`].
//!
//! Two trees of the replica's one sled database:
//! - `raft_log`: key = log index as 8 big-endian bytes (so sled's byte order is index order),
//!   value = the bincode-encoded [`Entry`];
//! - `raft_meta`: the vote, the committed log id and the last purged log id.
//!
//! Durability (invariant 1, "no acknowledged write is lost"): an append is reported to openraft
//! as persisted, and a vote is returned as saved, only after `flush_async` has fsynced sled. The
//! committed log id is a hint that speeds up restart and is not flushed.

// Helpers here return openraft's `StorageError`, the type every storage trait method must return;
// boxing it in between would only move the allocation.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::StorageIOError;
use openraft::{AnyError, ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader};
use serde::de::DeserializeOwned;

use super::storage::{decode, decode_loaded, encode, DurableDb, LoadError};
use super::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};

const LOG_TREE: &str = "raft_log";
const META_TREE: &str = "raft_meta";
const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const LAST_PURGED_KEY: &[u8] = b"last_purged";

/// The replica's Raft log. Cheap to clone (sled handles are reference counted): openraft's log
/// readers, used by the replication tasks, are clones of it.
#[derive(Clone)]
pub struct LogStore {
    /// For `flush_async`, which covers every tree of the database.
    db: DurableDb,
    log: sled::Tree,
    meta: sled::Tree,
    /// The last saved committed index plus one (0: none), shared by all clones, so status
    /// reports read it without touching sled.
    committed_index: Arc<AtomicU64>,
}

impl LogStore {
    /// Opens the trees and decodes what openraft reads first at startup (vote, committed, last
    /// purged, first and last entry), so damage there fails the open with a clear message
    /// instead of stopping Raft later.
    pub(super) fn open(db: &DurableDb) -> Result<Self, LoadError> {
        let store = LogStore {
            db: db.clone(),
            log: db.open_tree(LOG_TREE)?,
            meta: db.open_tree(META_TREE)?,
            committed_index: Arc::default(),
        };
        if let Some(bytes) = store.meta.get(VOTE_KEY)? {
            decode_loaded::<Vote>(&bytes, "the saved vote")?;
        }
        if let Some(bytes) = store.meta.get(LAST_PURGED_KEY)? {
            decode_loaded::<LogId>(&bytes, "the last purged log id")?;
        }
        if let Some(bytes) = store.meta.get(COMMITTED_KEY)? {
            let committed = decode_loaded::<LogId>(&bytes, "the committed log id")?;
            store.set_committed_index(Some(committed.index));
        }
        for (key, value) in [store.log.first()?, store.log.last()?]
            .into_iter()
            .flatten()
        {
            decode_entry(&key, &value).map_err(LoadError::Corrupt)?;
        }
        Ok(store)
    }

    /// The last committed log index this replica has learned and saved, for status reports
    /// (openraft 0.9's metrics do not carry it). May trail the leader's by a heartbeat; `None`
    /// before anything is committed.
    pub fn committed_index(&self) -> Option<u64> {
        self.committed_index.load(Ordering::Relaxed).checked_sub(1)
    }

    fn set_committed_index(&self, index: Option<u64>) {
        let stored = index.map_or(0, |i| i.saturating_add(1));
        self.committed_index.store(stored, Ordering::Relaxed);
    }

    fn read_meta<T: DeserializeOwned>(
        &self,
        key: &[u8],
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, StorageError> {
        let io_err = |e: AnyError| StorageIOError::new(subject.clone(), ErrorVerb::Read, e);
        match self.meta.get(key).map_err(|e| io_err(AnyError::new(&e)))? {
            None => Ok(None),
            Some(bytes) => Ok(Some(decode(&bytes).map_err(|e| io_err(AnyError::new(&e)))?)),
        }
    }

    fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        self.read_meta(LAST_PURGED_KEY, ErrorSubject::Logs)
    }

    /// Writes the batch, then makes it durable. Used by append.
    async fn write_durably(&self, batch: sled::Batch) -> Result<(), sled::Error> {
        self.log.apply_batch(batch)?;
        self.db.flush_async().await?;
        Ok(())
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Decodes one stored entry and checks it sits under its own index.
fn decode_entry(key: &[u8], value: &[u8]) -> Result<Entry, String> {
    let index = <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| format!("a raft log key of {} bytes is not a log index", key.len()))?;
    let entry: Entry =
        decode(value).map_err(|e| format!("raft log entry {index} does not decode: {e}"))?;
    if entry.log_id.index != index {
        return Err(format!(
            "raft log entry {} is stored under index {index}",
            entry.log_id
        ));
    }
    Ok(entry)
}

/// The half-open index range `[start, end)` of `range`, `end == None` meaning unbounded; `None`
/// when the range is empty. sled is given only well-formed ranges.
fn index_bounds<RB: RangeBounds<u64>>(range: &RB) -> Option<(u64, Option<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&i) => i.checked_add(1),
        Bound::Excluded(&i) => Some(i),
        Bound::Unbounded => None,
    };
    match end {
        Some(end) if end <= start => None,
        _ => Some((start, end)),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let Some((start, end)) = index_bounds(&range) else {
            return Ok(Vec::new());
        };
        let iter = match end {
            Some(end) => self.log.range(index_key(start)..index_key(end)),
            None => self.log.range(index_key(start)..),
        };
        let mut entries = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let entry = decode_entry(&key, &value)
                .map_err(|e| StorageIOError::read_logs(AnyError::error(e)))?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged()?;
        // The last entry still present; when every entry has been purged, the last purged id
        // stands for it (openraft's contract).
        let last_log_id = match self.log.last().map_err(|e| StorageIOError::read_logs(&e))? {
            Some((key, value)) => Some(
                decode_entry(&key, &value)
                    .map_err(|e| StorageIOError::read_logs(AnyError::error(e)))?
                    .log_id,
            ),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        // A vote must be on disk before it is acted on, or a restarted replica could vote twice
        // in one term.
        let bytes = encode(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        self.meta
            .insert(VOTE_KEY, bytes)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(VOTE_KEY, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed: losing it only means a restarted replica re-learns the commit index from
        // the leader before applying the tail of its log. sled keeps writes in order, so when
        // it is recovered the entries it points at are too.
        let write_err = |e: AnyError| StorageIOError::new(ErrorSubject::Store, ErrorVerb::Write, e);
        match committed {
            Some(log_id) => {
                let bytes = encode(&log_id).map_err(|e| write_err(AnyError::new(&e)))?;
                self.meta
                    .insert(COMMITTED_KEY, bytes)
                    .map_err(|e| write_err(AnyError::new(&e)))?;
            }
            None => {
                self.meta
                    .remove(COMMITTED_KEY)
                    .map_err(|e| write_err(AnyError::new(&e)))?;
            }
        }
        self.set_committed_index(committed.map(|log_id| log_id.index));
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.read_meta(COMMITTED_KEY, ErrorSubject::Store)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // One batch, so a crash leaves either all of these entries or a prefix of the log
        // without them: never a hole.
        let mut batch = sled::Batch::default();
        for entry in entries {
            match encode(&entry) {
                Ok(bytes) => batch.insert(&index_key(entry.log_id.index), bytes),
                Err(e) => {
                    let err = StorageIOError::write_log_entry(entry.log_id, &e);
                    callback.log_io_completed(Err(io::Error::other(err.to_string())));
                    return Err(err.into());
                }
            }
        }
        // Only after the fsync may openraft count these entries toward a majority.
        match self.write_durably(batch).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let err = StorageIOError::write_logs(&e);
                callback.log_io_completed(Err(io::Error::other(err.to_string())));
                Err(err.into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Removes the conflicting suffix [log_id.index, ..). Not flushed: if a crash undoes it,
        // the stale entries come back and are truncated again when the leader's append
        // conflicts with them; they were never acknowledged to the current leader. The next
        // append's flush persists this removal before the entries replacing them (sled order).
        let mut batch = sled::Batch::default();
        for key in self.log.range(index_key(log_id.index)..).keys() {
            batch.remove(key.map_err(|e| StorageIOError::write_logs(&e))?);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: sled recovers a prefix of writes, so if any removal below
        // survives a crash, so does this, and `get_log_state` never reports a hole.
        let bytes = encode(&log_id).map_err(|e| StorageIOError::write_logs(&e))?;
        self.meta
            .insert(LAST_PURGED_KEY, bytes)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let mut batch = sled::Batch::default();
        for key in self.log.range(..=index_key(log_id.index)).keys() {
            batch.remove(key.map_err(|e| StorageIOError::write_logs(&e))?);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}
