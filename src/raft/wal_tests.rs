//! Power cuts on a simulated disk: what was acknowledged survives, what was not may vanish or
//! be torn, and the log always reopens.
//!
//! Two levels. The log store as openraft uses it (append acknowledged through its callback, vote
//! saved): after a cut, every acknowledged entry and the last vote are there; these tests fail if
//! the syncer's `fdatasync` is taken out. And a property test of the write-ahead log with the
//! snapshot file beside it: random sequences of appends, syncs, truncations, purges, votes,
//! committed hints and snapshot saves, cut at any point (writes since the last sync dropped,
//! kept or torn at random), reopened, and checked against a model of what was durable.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};
use proptest::prelude::*;

use super::sim_disk::SimDisk;
use super::snapshot_store::SnapshotStore;
use super::wal::Wal;
use super::{Entry, LogId, LogStore, Proposal, SnapshotMeta, Vote};
use crate::disk::Disk;

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// An entry whose payload says which write it came from, so a stale copy is told apart.
fn entry(term: u64, index: u64, generation: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Proposal {
            now_ms: generation,
            outbox_limit: 0,
            commands: Vec::new(),
        }),
    }
}

const WAL_DIR: &str = "/data/raft/wal";
const SNAPSHOT_DIR: &str = "/data/raft/snapshot";

fn open_store(disk: &SimDisk, segment_bytes: u64) -> LogStore {
    let disk: Arc<dyn Disk> = Arc::new(disk.clone());
    LogStore::open(disk, Path::new(WAL_DIR), segment_bytes)
        .expect("the log reopens after a power cut")
        .0
}

#[tokio::test]
async fn acknowledged_appends_and_votes_survive_power_cuts() {
    for seed in 0..40u64 {
        let disk = SimDisk::default();
        let mut store = open_store(&disk, 4096);
        let mut acknowledged = Vec::new();
        for index in 1..=30u64 {
            let batch = vec![entry(1 + index / 10, index, 0)];
            store.blocking_append(batch.clone()).await.unwrap();
            acknowledged.extend(batch);
            if index % 7 == 0 {
                store
                    .save_vote(&Vote::new(2 + index, 1 + index % 3))
                    .await
                    .unwrap();
            }
        }
        // A vote as the last thing saved: nothing after it syncs the file for it.
        let vote = Vote::new(40, 2);
        store.save_vote(&vote).await.unwrap();
        // Written but not acknowledged: a committed hint.
        store.save_committed(Some(log_id(3, 25))).await.unwrap();
        disk.power_cut(seed);

        let mut store = open_store(&disk, 4096);
        assert_eq!(
            store.try_get_log_entries(..).await.unwrap(),
            acknowledged,
            "seed {seed}: every acknowledged entry, unchanged"
        );
        assert_eq!(store.read_vote().await.unwrap(), Some(vote), "seed {seed}");
        // And the log takes new writes after the cut.
        store.blocking_append(vec![entry(9, 31, 1)]).await.unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(9, 31)));
    }
}

#[tokio::test]
async fn every_acknowledgment_waits_for_a_sync() {
    let disk = SimDisk::default();
    let mut store = open_store(&disk, 1 << 20);
    let before = disk.data_syncs();
    store.blocking_append(vec![entry(1, 1, 0)]).await.unwrap();
    assert!(
        disk.data_syncs() > before,
        "an append is acknowledged after a sync"
    );
    let before = disk.data_syncs();
    store.save_vote(&Vote::new(2, 1)).await.unwrap();
    assert!(disk.data_syncs() > before, "a vote is saved after a sync");

    // With syncs that do nothing, a power cut loses acknowledged writes: the syncs are what
    // keep them (this is the failure the tests above would show without them).
    disk.ignore_syncs(true);
    store.blocking_append(vec![entry(2, 2, 0)]).await.unwrap();
    store.save_vote(&Vote::new(3, 2)).await.unwrap();
    disk.power_cut(0);
    disk.ignore_syncs(false);
    let mut store = open_store(&disk, 1 << 20);
    assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
    assert_eq!(
        store.try_get_log_entries(..).await.unwrap(),
        vec![entry(1, 1, 0)]
    );
}

/// After a failed fdatasync nothing written since can be trusted: the append is not
/// acknowledged, and the store refuses every later call, even once the disk works again.
#[tokio::test]
async fn a_failed_sync_poisons_the_log() {
    let disk = SimDisk::default();
    let mut store = open_store(&disk, 1 << 20);
    store.blocking_append(vec![entry(1, 1, 0)]).await.unwrap();
    disk.fail_syncs(true);
    assert!(store.blocking_append(vec![entry(1, 2, 0)]).await.is_err());
    disk.fail_syncs(false);
    assert!(store.blocking_append(vec![entry(1, 3, 0)]).await.is_err());
    assert!(store.save_vote(&Vote::new(2, 1)).await.is_err());
    assert!(store.try_get_log_entries(..).await.is_err());
}

#[tokio::test]
async fn a_purge_is_durable_before_segments_go_and_leaves_no_hole() {
    for seed in 0..20u64 {
        let disk = SimDisk::default();
        let mut store = open_store(&disk, 300);
        let entries: Vec<Entry> = (1..=40).map(|i| entry(1, i, 0)).collect();
        for e in &entries {
            store.blocking_append(vec![e.clone()]).await.unwrap();
        }
        store.purge(log_id(1, 30)).await.unwrap();
        disk.power_cut(seed);
        let mut store = open_store(&disk, 300);
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 30)), "seed {seed}");
        assert_eq!(
            store.try_get_log_entries(..).await.unwrap(),
            entries[30..].to_vec(),
            "seed {seed}"
        );
    }
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum Op {
    /// Write entries after the last one (not yet durable).
    Append { count: usize, new_term: bool },
    /// Sync the log: everything written so far is acknowledged.
    Sync,
    /// Cut `back` entries off the end (not yet durable).
    Truncate { back: u64 },
    /// Purge all but the last `keep` entries (made durable, then segments removed).
    Purge { keep: u64 },
    /// Save a newer vote (made durable).
    Vote,
    /// Write the committed hint (never synced for its own sake).
    Committed,
    /// Store a snapshot up to the last entry (made durable, atomically).
    Snapshot,
    /// Cut the power and reopen.
    PowerCut { seed: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..5, any::<bool>()).prop_map(|(count, new_term)| Op::Append { count, new_term }),
        3 => Just(Op::Sync),
        1 => (1u64..6).prop_map(|back| Op::Truncate { back }),
        1 => (0u64..8).prop_map(|keep| Op::Purge { keep }),
        1 => Just(Op::Vote),
        1 => Just(Op::Committed),
        1 => Just(Op::Snapshot),
        2 => any::<u64>().prop_map(|seed| Op::PowerCut { seed }),
    ]
}

/// What the test knows the log holds.
#[derive(Debug, Clone, Default)]
struct Model {
    /// As written, durable or not.
    written: BTreeMap<u64, Entry>,
    /// As of the last sync.
    durable: BTreeMap<u64, Entry>,
    /// Entries written since the last sync, by index (any of them may survive a cut).
    unsynced: BTreeMap<u64, Vec<Entry>>,
    /// The lowest index a truncation since the last sync started from.
    truncated_from: Option<u64>,
    purged: Option<LogId>,
    vote: Option<Vote>,
    committed_durable: Option<LogId>,
    committed_unsynced: Vec<Option<LogId>>,
    snapshot: Option<SnapshotMeta>,
    term: u64,
    generation: u64,
}

impl Model {
    fn last_index(&self) -> Option<u64> {
        self.written
            .keys()
            .next_back()
            .copied()
            .or(self.purged.map(|p| p.index))
    }

    fn synced(&mut self) {
        self.durable = self.written.clone();
        self.unsynced.clear();
        self.truncated_from = None;
        self.committed_durable = self
            .committed_unsynced
            .last()
            .copied()
            .unwrap_or(self.committed_durable);
        self.committed_unsynced.clear();
    }
}

fn sim_snapshot_meta(last: Option<LogId>, n: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: last,
        last_membership: Default::default(),
        snapshot_id: format!("s{n}"),
    }
}

/// Checks a reopened log against the model, then makes the model what was found (the new
/// durable state).
fn check_reopened(
    wal: &Wal,
    snapshots: &SnapshotStore,
    model: &mut Model,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        wal.vote(),
        model.vote,
        "the last saved vote, never an older one"
    );
    prop_assert_eq!(wal.last_purged(), model.purged, "the purge point");
    prop_assert_eq!(
        snapshots.meta(),
        model.snapshot.clone(),
        "the last stored snapshot"
    );
    let committed = wal.committed();
    prop_assert!(
        committed == model.committed_durable || model.committed_unsynced.contains(&committed),
        "committed {:?} was never written",
        committed
    );

    let found: BTreeMap<u64, Entry> = wal
        .entry_refs(..)
        .iter()
        .map(|r| r.read().map(|e| (e.log_id.index, e)))
        .collect::<Result<_, _>>()
        .map_err(|e| TestCaseError::fail(format!("an entry does not read back: {e}")))?;
    // No hole: the live entries run from the purge point on, one after another.
    let first = model
        .purged
        .map_or(found.keys().next().copied().unwrap_or(0), |p| p.index + 1);
    for (expected, index) in (first..).zip(found.keys()) {
        prop_assert_eq!(*index, expected, "a hole in the log");
    }
    let truncated_from = model.truncated_from.unwrap_or(u64::MAX);
    for (index, durable) in &model.durable {
        if *index >= truncated_from {
            continue;
        }
        prop_assert_eq!(
            found.get(index),
            Some(durable),
            "acknowledged entry {} lost or changed",
            index
        );
    }
    for (index, entry) in &found {
        let acknowledged = model.durable.get(index) == Some(entry);
        let written_since = model
            .unsynced
            .get(index)
            .is_some_and(|all| all.contains(entry));
        prop_assert!(
            acknowledged || written_since,
            "entry {} was never written",
            index
        );
    }
    model.written = found;
    model.synced();
    model.committed_durable = committed;
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    const SEGMENT_BYTES: u64 = 600;
    let disk = SimDisk::default();
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let reopen = || -> Result<(Wal, SnapshotStore), TestCaseError> {
        let wal = Wal::open(shared.clone(), Path::new(WAL_DIR), SEGMENT_BYTES)
            .map_err(|e| TestCaseError::fail(format!("the log does not reopen: {e}")))?
            .0;
        let snapshots = SnapshotStore::open(shared.clone(), Path::new(SNAPSHOT_DIR))
            .map_err(|e| TestCaseError::fail(format!("the snapshot does not reopen: {e}")))?;
        Ok((wal, snapshots))
    };
    let sync = |wal: &Wal| {
        for file in wal.files_to_sync() {
            file.sync_data().expect("sync");
        }
    };
    let (mut wal, mut snapshots) = reopen()?;
    let mut model = Model {
        term: 1,
        ..Model::default()
    };
    for op in ops {
        match op {
            Op::Append { count, new_term } => {
                if new_term {
                    model.term += 1;
                }
                model.generation += 1;
                let first = model.last_index().map_or(1, |i| i + 1);
                let batch: Vec<Entry> = (first..first + count as u64)
                    .map(|i| entry(model.term, i, model.generation))
                    .collect();
                wal.append(batch.clone()).expect("append");
                for e in batch {
                    model
                        .unsynced
                        .entry(e.log_id.index)
                        .or_default()
                        .push(e.clone());
                    model.written.insert(e.log_id.index, e);
                }
            }
            Op::Sync => {
                sync(&wal);
                model.synced();
            }
            Op::Truncate { back } => {
                let Some(last) = model.written.keys().next_back().copied() else {
                    continue;
                };
                let first_live = model.written.keys().next().copied().unwrap_or(last);
                let from = last.saturating_sub(back - 1).max(first_live);
                wal.truncate(from).expect("truncate");
                model.written.split_off(&from);
                model.truncated_from = Some(model.truncated_from.map_or(from, |t| t.min(from)));
            }
            Op::Purge { keep } => {
                let Some(last) = model.written.keys().next_back().copied() else {
                    continue;
                };
                let upto = last.saturating_sub(keep);
                let Some(purged) = model.written.get(&upto).map(|e| e.log_id) else {
                    continue;
                };
                if model.purged.is_some_and(|p| p >= purged) {
                    continue;
                }
                wal.purge(purged).expect("purge");
                sync(&wal);
                model.written = model.written.split_off(&(upto + 1));
                model.purged = Some(purged);
                model.synced();
                wal.remove_purged_segments().expect("remove segments");
            }
            Op::Vote => {
                model.term += 1;
                let vote = Vote::new(model.term, 1 + model.term % 3);
                wal.save_vote(vote).expect("vote");
                sync(&wal);
                model.vote = Some(vote);
                model.synced();
            }
            Op::Committed => {
                let Some((_, e)) = model.written.last_key_value() else {
                    continue;
                };
                let committed = Some(e.log_id);
                wal.save_committed(committed).expect("committed");
                model.committed_unsynced.push(committed);
            }
            Op::Snapshot => {
                model.generation += 1;
                let last = model.written.last_key_value().map(|(_, e)| e.log_id);
                let meta = sim_snapshot_meta(last, model.generation);
                snapshots
                    .save(&meta, &model.generation.to_be_bytes(), false)
                    .map_err(TestCaseError::fail)?;
                model.snapshot = Some(meta);
            }
            Op::PowerCut { seed } => {
                drop((wal, snapshots));
                disk.power_cut(seed);
                (wal, snapshots) = reopen()?;
                check_reopened(&wal, &snapshots, &mut model)?;
            }
        }
    }
    drop((wal, snapshots));
    disk.power_cut(7);
    let (wal, snapshots) = reopen()?;
    check_reopened(&wal, &snapshots, &mut model)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn a_power_cut_at_any_point_keeps_what_was_synced(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}
