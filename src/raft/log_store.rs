//! The Raft log and the vote as openraft's [`RaftLogStorage`] (storage-v2) and
//! [`RaftLogReader`], over the write-ahead log of `wal.rs`.
//!
//! Durability (invariant 1, "no acknowledged write is lost"): an append is reported to openraft
//! as persisted, and a vote returned as saved, only after `fdatasync` of the segment that holds
//! it has returned. The syncs run on one syncer thread: an append writes its records (a `pwrite`
//! into the page cache), hands its callback to the syncer and returns, so openraft's core goes
//! on working while the disk syncs. The syncer takes every request waiting, syncs once, and
//! completes them all in order: appends that arrive during a sync share the next one (group
//! commit across appends, on top of the proposer's commands per entry).
//!
//! A failed sync poisons the store: the kernel may have dropped the dirty pages it could not
//! write, so nothing written since the last good sync can be trusted (the "fsyncgate" lesson).
//! Every later call fails, openraft stops the node, and a restart replays what is really there.
//!
//! The committed log id is a hint that speeds up restart; it is written but never synced for
//! its own sake.

// Helpers here return openraft's `StorageError`, the type every storage trait method must return;
// boxing it in between would only move the allocation.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::StorageIOError;
use openraft::{AnyError, ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader};

use super::storage::LoadError;
use super::wal::{Recovery, Wal, WalError};
use super::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};
use crate::disk::{Disk, DiskFile};

/// Counters of the log's disk work, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct WalStats {
    /// `fdatasync` calls made by the syncer.
    pub syncs: AtomicU64,
    /// Appends (openraft calls, each one or more entries) made durable.
    pub appends: AtomicU64,
    /// Entries appended.
    pub entries: AtomicU64,
}

/// Who waits for a sync.
enum Waiter {
    /// An append: openraft's callback.
    Append(LogFlushed<TypeConfig>),
    /// A vote or a purge record: the caller awaits it.
    Call(tokio::sync::oneshot::Sender<Result<(), String>>),
}

struct SyncRequest {
    files: Vec<Arc<dyn DiskFile>>,
    /// The log's write position when the request was made: once synced, everything before it
    /// is durable.
    upto: (u64, u64),
    waiter: Waiter,
}

/// The first sync failure, kept for good.
type Poison = Arc<Mutex<Option<String>>>;

/// How far the log is known durable: a write position (see `Wal::position`), and whether
/// syncing failed for good (then it never moves again).
type Synced = tokio::sync::watch::Sender<((u64, u64), bool)>;

/// The replica's Raft log. Cheap to clone: openraft's log readers, used by the replication
/// tasks, are clones of it.
#[derive(Clone)]
pub struct LogStore {
    wal: Arc<Mutex<Wal>>,
    syncer: mpsc::Sender<SyncRequest>,
    poison: Poison,
    synced: Arc<Synced>,
    stats: Arc<WalStats>,
    /// The last saved committed index plus one (0: none), shared by all clones, so status
    /// reports read it without taking the log's lock.
    committed_index: Arc<AtomicU64>,
}

impl LogStore {
    /// Opens (creating) the log in `dir` and starts its syncer thread.
    pub(super) fn open(
        disk: Arc<dyn Disk>,
        dir: &Path,
        segment_bytes: u64,
    ) -> Result<(Self, Recovery), LoadError> {
        let (wal, recovery) = Wal::open(disk, dir, segment_bytes).map_err(|e| match e {
            WalError::Io(e) => LoadError::Io(e),
            WalError::Corrupt(detail) => LoadError::Corrupt(detail),
            WalError::Encode(e) => LoadError::Corrupt(e.to_string()),
        })?;
        // What replay found may be in the page cache only (a process crash, not a power cut,
        // keeps unsynced writes): sync it once, so everything in the log counts as durable.
        for file in wal.files_to_sync() {
            file.sync_data().map_err(LoadError::Io)?;
        }
        let (syncer, requests) = mpsc::channel();
        let poison = Poison::default();
        let synced = Arc::new(Synced::new((wal.position(), false)));
        let stats = Arc::new(WalStats::default());
        std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn({
                let poison = poison.clone();
                let synced = synced.clone();
                let stats = stats.clone();
                move || run_syncer(requests, poison, synced, stats)
            })
            .map_err(LoadError::Io)?;
        let store = LogStore {
            committed_index: Arc::default(),
            wal: Arc::new(Mutex::new(wal)),
            syncer,
            poison,
            synced,
            stats,
        };
        let committed = store.lock_unchecked().committed();
        store.set_committed_index(committed.map(|c| c.index));
        Ok((store, recovery))
    }

    /// The last committed log index this replica has learned and saved, for status reports
    /// (openraft 0.9's metrics do not carry it). May trail the leader's by a heartbeat; `None`
    /// before anything is committed.
    pub fn committed_index(&self) -> Option<u64> {
        self.committed_index.load(Ordering::Relaxed).checked_sub(1)
    }

    /// Counters of syncs and appends since the store was opened.
    pub fn stats(&self) -> Arc<WalStats> {
        self.stats.clone()
    }

    /// Nothing was ever written to this log: no entry, no vote, no purge.
    pub fn is_pristine(&self) -> bool {
        self.lock_unchecked().is_pristine()
    }

    fn set_committed_index(&self, index: Option<u64>) {
        let stored = index.map_or(0, |i| i.saturating_add(1));
        self.committed_index.store(stored, Ordering::Relaxed);
    }

    fn lock_unchecked(&self) -> MutexGuard<'_, Wal> {
        self.wal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The log, unless an earlier sync failed (then nothing written since can be trusted).
    fn lock(
        &self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
    ) -> Result<MutexGuard<'_, Wal>, StorageError> {
        if let Some(failure) = self.poison_message() {
            return Err(StorageIOError::new(subject, verb, AnyError::error(failure)).into());
        }
        Ok(self.lock_unchecked())
    }

    fn poison_message(&self) -> Option<String> {
        self.poison
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Hands `files` to the syncer; `waiter` is completed once they (everything written before
    /// position `upto`) are durable.
    fn request_sync(&self, files: Vec<Arc<dyn DiskFile>>, upto: (u64, u64), waiter: Waiter) {
        let request = SyncRequest {
            files,
            upto,
            waiter,
        };
        if let Err(mpsc::SendError(request)) = self.syncer.send(request) {
            complete(
                request.waiter,
                Err("the log's syncer thread is gone".into()),
            );
        }
    }

    /// Waits until log entry `index` is durable here (at once if it is not in this log: purged,
    /// or never appended because it came in a snapshot). The state machine calls this before it
    /// writes an applied entry's effects: a leader may apply an entry that its followers made
    /// durable before its own sync returned, and sled's background flush must never persist
    /// state beyond what this replica's log can replay after a power cut.
    pub(super) async fn wait_durable(&self, index: u64) -> Result<(), String> {
        let Some(end) = self.lock_unchecked().entry_end(index) else {
            return Ok(());
        };
        let mut synced = self.synced.subscribe();
        let failed = synced
            .wait_for(|(position, failed)| *failed || *position >= end)
            .await
            .map_err(|_| "the log's syncer thread is gone".to_string())?
            .1;
        if failed {
            return Err(self
                .poison_message()
                .unwrap_or_else(|| "fdatasync of the raft log failed".into()));
        }
        Ok(())
    }

    /// Syncs what was written so far (up to position `upto`) and waits for it.
    async fn sync_now(
        &self,
        files: Vec<Arc<dyn DiskFile>>,
        upto: (u64, u64),
    ) -> Result<(), String> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.request_sync(files, upto, Waiter::Call(done));
        wait.await
            .unwrap_or_else(|_| Err("the log's syncer thread is gone".into()))
    }
}

/// The syncer thread: takes every request waiting, syncs each file named once, then completes
/// the requests in arrival order with the result.
fn run_syncer(
    requests: mpsc::Receiver<SyncRequest>,
    poison: Poison,
    synced: Arc<Synced>,
    stats: Arc<WalStats>,
) {
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        batch.extend(requests.try_iter());
        let mut files: Vec<&Arc<dyn DiskFile>> = Vec::new();
        for file in batch.iter().flat_map(|request| &request.files) {
            if !files.iter().any(|seen| Arc::ptr_eq(seen, file)) {
                files.push(file);
            }
        }
        let upto = batch.iter().map(|request| request.upto).max();
        // Not held during the syncs: every log call looks at it.
        let earlier_failure = poison
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let result = match earlier_failure {
            Some(failure) => Err(failure),
            None => files
                .iter()
                .try_for_each(|file| {
                    stats.syncs.fetch_add(1, Ordering::Relaxed);
                    file.sync_data()
                })
                .map_err(|e| {
                    let failure = format!(
                        "fdatasync of the raft log failed ({e}); the replica stops: restart it to \
                         replay what is on disk, and check the disk and file system"
                    );
                    tracing::error!(error = %e, "fdatasync of the raft log failed; the log is unusable until restart");
                    *poison
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(failure.clone());
                    failure
                }),
        };
        synced.send_modify(|(position, failed)| match (&result, upto) {
            (Ok(()), Some(upto)) => *position = (*position).max(upto),
            (Ok(()), None) => {}
            (Err(_), _) => *failed = true,
        });
        for request in batch {
            if matches!(request.waiter, Waiter::Append(_)) && result.is_ok() {
                stats.appends.fetch_add(1, Ordering::Relaxed);
            }
            complete(request.waiter, result.clone());
        }
    }
}

fn complete(waiter: Waiter, result: Result<(), String>) {
    match waiter {
        Waiter::Append(callback) => callback.log_io_completed(result.map_err(io::Error::other)),
        Waiter::Call(done) => {
            // The caller may have given up (its task was dropped); nothing to tell then.
            let _ = done.send(result);
        }
    }
}

fn wal_error(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: WalError) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::error(e.to_string())).into()
}

/// The half-open index range `[start, end)` of `range`, `end == None` meaning unbounded; `None`
/// when the range is empty.
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
        // Where the entries are, under the lock; the reads after releasing it.
        let refs = {
            let wal = self.lock(ErrorSubject::Logs, ErrorVerb::Read)?;
            match end {
                Some(end) => wal.entry_refs(start..end),
                None => wal.entry_refs(start..),
            }
        };
        refs.iter()
            .map(|entry| {
                entry
                    .read()
                    .map_err(|e| wal_error(ErrorSubject::Logs, ErrorVerb::Read, e))
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let wal = self.lock(ErrorSubject::Logs, ErrorVerb::Read)?;
        Ok(LogState {
            last_purged_log_id: wal.last_purged(),
            last_log_id: wal.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        // Durable before it is acted on (before the vote reply leaves), or a replica restarted
        // after a power cut could vote twice in one term.
        let files = {
            let mut wal = self.lock(ErrorSubject::Vote, ErrorVerb::Write)?;
            wal.save_vote(*vote)
                .map_err(|e| wal_error(ErrorSubject::Vote, ErrorVerb::Write, e))?;
            (wal.files_to_sync(), wal.position())
        };
        self.sync_now(files.0, files.1)
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::error(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.lock(ErrorSubject::Vote, ErrorVerb::Read)?.vote())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: losing it only means a restarted replica re-learns the commit index from
        // the leader before applying the tail of its log.
        self.lock(ErrorSubject::Store, ErrorVerb::Write)?
            .save_committed(committed)
            .map_err(|e| wal_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.set_committed_index(committed.map(|log_id| log_id.index));
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.lock(ErrorSubject::Store, ErrorVerb::Read)?.committed())
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
        let written = self
            .lock(ErrorSubject::Logs, ErrorVerb::Write)
            .and_then(|mut wal| {
                let entries: Vec<Entry> = entries.into_iter().collect();
                let count = entries.len() as u64;
                wal.append(entries)
                    .map_err(|e| wal_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
                self.stats.entries.fetch_add(count, Ordering::Relaxed);
                Ok((wal.files_to_sync(), wal.position()))
            });
        match written {
            // Only once the syncer has synced them may openraft count these entries toward a
            // majority; it reads them back (to replicate) meanwhile, from the page cache.
            Ok((files, upto)) => {
                self.request_sync(files, upto, Waiter::Append(callback));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Not synced: if a power cut undoes it, the stale entries come back and are truncated
        // again when the leader's append conflicts with them; they were never acknowledged to
        // the current leader. The next append's sync covers it (same file, written before).
        self.lock(ErrorSubject::Logs, ErrorVerb::Write)?
            .truncate(log_id.index)
            .map_err(|e| wal_error(ErrorSubject::Logs, ErrorVerb::Write, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The purge record is made durable before any segment goes, so a power cut never leaves
        // the log with a hole and no purge point covering it.
        let files = {
            let mut wal = self.lock(ErrorSubject::Logs, ErrorVerb::Write)?;
            wal.purge(log_id)
                .map_err(|e| wal_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            (wal.files_to_sync(), wal.position())
        };
        self.sync_now(files.0, files.1)
            .await
            .map_err(|e| StorageIOError::write_logs(AnyError::error(e)))?;
        let removed = self
            .lock(ErrorSubject::Logs, ErrorVerb::Write)?
            .remove_purged_segments()
            .map_err(|e| wal_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        if removed > 0 {
            tracing::debug!(
                upto = log_id.index,
                segments = removed,
                "removed purged log segments"
            );
        }
        Ok(())
    }
}
