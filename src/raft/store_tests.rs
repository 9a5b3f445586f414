//! Tests of the sled log store and state machine: openraft's storage conformance suite, plus
//! what the suite cannot check for us: persistence across reopen, snapshot install replacing
//! old state, and damaged data reported as an error rather than a panic.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    CommittedLeaderId, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder, StorageIOError,
};
use tempfile::TempDir;

use super::storage::DATA_FORMAT_VERSION;
use super::*;
use crate::queue::{
    AttemptOutcome, Command, CommandOutput, JobSpec, JobState, LeaseRef, LogLevel, LogLine,
    QueueState, WorkerId, WorkerInfo,
};

const CACHE_BYTES: u64 = 8 << 20;

/// Opens storage in a fresh temporary directory, which lives as long as the guard.
struct TempStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for TempStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = TempDir::new().map_err(|e| StorageIOError::write(&e))?;
        let storage =
            open_storage(dir.path(), 1, CACHE_BYTES).map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, storage.log_store, storage.state_machine))
    }
}

#[test]
fn openraft_storage_suite() {
    // The suite runs each case in its own tokio runtime, so this is a plain test.
    Suite::test_all(TempStoreBuilder).expect("openraft storage suite");
}

fn open(dir: &Path) -> (LogStore, StateMachine) {
    let storage = open_storage(dir, 1, CACHE_BYTES).expect("open storage");
    (storage.log_store, storage.state_machine)
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn spec(program: &str) -> JobSpec {
    JobSpec {
        argv: vec![program.into()],
        max_attempts: 1,
        ..JobSpec::default()
    }
}

fn submit(program: &str, key: Option<&str>) -> Command {
    Command::SubmitJob {
        spec: spec(program),
        idempotency_key: key.map(String::from),
    }
}

fn normal(term: u64, index: u64, commands: Vec<Command>) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Proposal {
            now_ms: 1_700_000_000_000 + index,
            outbox_limit: u64::MAX,
            commands,
        }),
    }
}

fn membership_entry(term: u64, index: u64) -> Entry {
    let nodes: BTreeMap<NodeId, ReplicaNode> = (1..=3)
        .map(|id| {
            let node = ReplicaNode {
                api_addr: format!("127.0.0.1:{}", 7000 + id),
                peer_addr: format!("127.0.0.1:{}", 8000 + id),
                storage_id: Some(uuid::Uuid::from_u128(u128::from(id))),
            };
            (id, node)
        })
        .collect();
    let voters: BTreeSet<NodeId> = nodes.keys().copied().collect();
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
    }
}

fn queue_of(sm: &StateMachine) -> QueueState {
    sm.queue().read().expect("queue lock").clone()
}

fn submitted_ids(outcome: &ProposalOutcome) -> Vec<u64> {
    outcome
        .results
        .iter()
        .map(|r| match r {
            Ok(CommandOutput::Submitted { job_id, .. }) => *job_id,
            other => panic!("expected a submit, got {other:?}"),
        })
        .collect()
}

/// Membership at 1, three submits at 2, a cancel and a duplicate submit at 3.
async fn apply_sample(sm: &mut StateMachine) -> Vec<ProposalOutcome> {
    sm.apply([
        membership_entry(1, 1),
        normal(
            1,
            2,
            vec![
                submit("a", Some("k-a")),
                submit("b", None),
                submit("c", None),
            ],
        ),
        normal(
            1,
            3,
            vec![Command::CancelJob { job_id: 2 }, submit("a", Some("k-a"))],
        ),
    ])
    .await
    .expect("apply")
}

#[tokio::test]
async fn applied_state_survives_reopen() {
    let dir = TempDir::new().unwrap();
    let (queue, applied) = {
        let (_log, mut sm) = open(dir.path());
        let outcomes = apply_sample(&mut sm).await;
        assert_eq!(outcomes.len(), 3);
        assert!(
            outcomes[0].results.is_empty(),
            "membership entries have no results"
        );
        assert_eq!(submitted_ids(&outcomes[1]), vec![1, 2, 3]);
        assert!(matches!(
            outcomes[2].results[1],
            Ok(CommandOutput::Submitted {
                job_id: 1,
                deduplicated: true
            })
        ));
        (queue_of(&sm), sm.applied_state().await.unwrap())
    };
    assert_eq!(queue.job_state(2), Some(JobState::Cancelled));
    assert_eq!(applied.0, Some(log_id(1, 3)));
    assert_eq!(applied.1.log_id(), &Some(log_id(1, 1)));

    let (_log, mut sm) = open(dir.path());
    assert_eq!(
        queue_of(&sm),
        queue,
        "same jobs, indexes and id sequence after reopen"
    );
    assert_eq!(sm.applied_state().await.unwrap(), applied);

    // The id sequence continues where it stopped, and the idempotency index was rebuilt.
    let outcomes = sm
        .apply([normal(
            1,
            4,
            vec![submit("d", None), submit("a", Some("k-a"))],
        )])
        .await
        .unwrap();
    assert!(matches!(
        outcomes[0].results[0],
        Ok(CommandOutput::Submitted {
            job_id: 4,
            deduplicated: false
        })
    ));
    assert!(matches!(
        outcomes[0].results[1],
        Ok(CommandOutput::Submitted {
            job_id: 1,
            deduplicated: true
        })
    ));
}

fn worker(n: u128) -> WorkerId {
    WorkerId::from_u128(0xabc0_0000 + n)
}

fn register(n: u128) -> Command {
    Command::RegisterWorker {
        info: WorkerInfo {
            id: worker(n),
            display_name: format!("worker {n}"),
            description: String::new(),
            machine_name: "host".into(),
            tags: vec!["sql".into()],
            max_tasks: 4,
            version: "test".into(),
        },
        auto_enable: true,
    }
}

fn acquire(n: u128, free_slots: u32) -> Command {
    Command::AcquireTasks {
        worker: worker(n),
        free_slots,
        lease_ms: 30_000,
        cpu_percent_x10: 0,
        free_memory_mb: 4096,
        max_cpu_percent_x10: 700,
        min_free_memory_mb: 100,
        request_id: None,
    }
}

fn log_lines(n: u128, job_id: u64, token: u64, count: usize) -> Command {
    Command::AppendLogs {
        worker: worker(n),
        lease: LeaseRef { job_id, token },
        lines: (0..count)
            .map(|i| LogLine {
                at_ms: 1,
                level: LogLevel::Info,
                text: format!("line {i}"),
            })
            .collect(),
    }
}

/// After [`apply_sample`] (jobs 1 and 3 queued): worker 1 leases both (tokens 1, 2), logs on
/// job 1, completes job 3; worker 2 registers and is removed again.
async fn apply_worker_sample(sm: &mut StateMachine) -> Vec<ProposalOutcome> {
    sm.apply([
        normal(1, 4, vec![register(1), register(2), acquire(1, 2)]),
        normal(
            1,
            5,
            vec![
                log_lines(1, 1, 1, 3),
                Command::CompleteTask {
                    worker: worker(1),
                    lease: LeaseRef {
                        job_id: 3,
                        token: 2,
                    },
                    outcome: AttemptOutcome::Succeeded,
                    exit_code: Some(0),
                    error: String::new(),
                },
                Command::RemoveWorker { worker: worker(2) },
            ],
        ),
    ])
    .await
    .expect("apply")
}

#[tokio::test]
async fn workers_leases_tokens_and_logs_survive_reopen() {
    let dir = TempDir::new().unwrap();
    let queue = {
        let (_log, mut sm) = open(dir.path());
        apply_sample(&mut sm).await;
        let outcomes = apply_worker_sample(&mut sm).await;
        assert!(
            outcomes.iter().flat_map(|o| &o.results).all(|r| r.is_ok()),
            "{outcomes:?}"
        );
        queue_of(&sm)
    };
    let job = queue.job(1).unwrap();
    assert_eq!(job.state, JobState::PickedUp);
    assert_eq!(job.lease.as_ref().map(|l| l.token), Some(1));
    assert_eq!(queue.job_state(3), Some(JobState::Succeeded));
    assert!(queue.worker(worker(2)).is_none());

    let (_log, mut sm) = open(dir.path());
    assert_eq!(sm.log_reader().job_logs(1, 0, 0).unwrap().len(), 3);
    assert_eq!(
        queue_of(&sm),
        queue,
        "same jobs, workers, leases, logs, counters and indexes after reopen"
    );
    assert_eq!(queue_of(&sm).worker(worker(1)).unwrap().running.len(), 1);
    assert_eq!(
        queue_of(&sm).next_lease_expiry(),
        Some(1_700_000_000_004 + 30_000)
    );

    // The token sequence continues where it stopped: never a reused token.
    let outcomes = sm
        .apply([normal(1, 6, vec![submit("d", None), acquire(1, 1)])])
        .await
        .unwrap();
    match &outcomes[0].results[1] {
        Ok(CommandOutput::Acquired { tasks }) => {
            assert_eq!(
                tasks
                    .iter()
                    .map(|t| (t.job_id, t.token))
                    .collect::<Vec<_>>(),
                vec![(4, 3)]
            )
        }
        other => panic!("{other:?}"),
    }
    // The old lease is still fenced after the restart, and its log sequence continues.
    let outcomes = sm
        .apply([normal(
            1,
            7,
            vec![
                Command::ReportResult {
                    worker: worker(1),
                    lease: LeaseRef {
                        job_id: 3,
                        token: 2,
                    },
                    outcome: AttemptOutcome::Failed,
                    exit_code: Some(1),
                    error: String::new(),
                },
                log_lines(1, 1, 1, 1),
                Command::ReportResult {
                    worker: worker(1),
                    lease: LeaseRef {
                        job_id: 3,
                        token: 2,
                    },
                    outcome: AttemptOutcome::Succeeded,
                    exit_code: Some(0),
                    error: String::new(),
                },
            ],
        )])
        .await
        .unwrap();
    // Fenced: another verdict is recorded as a late result, not applied; the one it ended
    // with, sent again, is known for what it is (from the record kept across the reopen).
    assert!(matches!(
        outcomes[0].results[0],
        Ok(CommandOutput::CompletedLate)
    ));
    assert!(matches!(
        outcomes[0].results[2],
        Ok(CommandOutput::CompletedBefore {
            state: JobState::Succeeded
        })
    ));
    let lines = sm.log_reader().job_logs(1, 0, 0).unwrap();
    assert_eq!(
        lines.iter().map(|l| l.sequence).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
}

#[tokio::test]
async fn installed_snapshot_replaces_old_state() {
    let source_dir = TempDir::new().unwrap();
    let target_dir = TempDir::new().unwrap();
    let (_source_log, mut source) = open(source_dir.path());
    apply_sample(&mut source).await;
    apply_worker_sample(&mut source).await;

    // The target has jobs the source does not, with ids the snapshot also uses, and a worker,
    // leases and log lines the source does not have.
    let (_target_log, mut target) = open(target_dir.path());
    let mut commands: Vec<Command> = (0..10)
        .map(|i| submit(&format!("old-{i}"), Some(&format!("old-{i}"))))
        .collect();
    commands.extend([register(7), acquire(7, 4)]);
    target.apply([normal(1, 1, commands)]).await.unwrap();
    target
        .apply([normal(1, 2, vec![log_lines(7, 4, 4, 5)])])
        .await
        .unwrap();
    assert_eq!(queue_of(&target).job_count(), 10);
    assert_eq!(target.log_reader().job_logs(4, 0, 0).unwrap().len(), 5);
    let source_lines = |sm: &StateMachine| {
        (1..=10)
            .flat_map(|job| sm.log_reader().job_logs(job, 0, 0).unwrap())
            .collect::<Vec<_>>()
    };

    let snapshot = build_snapshot(&mut source).await;
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 5)));
    // Moved as openraft moves it: read from the source's file and written into the target's
    // part file a chunk at a time.
    let received = transfer(snapshot.snapshot, &mut target, None).await;
    target
        .install_snapshot(&snapshot.meta, received)
        .await
        .unwrap();

    let expected = queue_of(&source);
    assert_eq!(queue_of(&target), expected);
    // The lines came with the snapshot, and the target's own lines went.
    assert!(!source_lines(&source).is_empty());
    assert_eq!(source_lines(&target), source_lines(&source));
    assert_eq!(
        target.applied_state().await.unwrap(),
        source.applied_state().await.unwrap()
    );
    assert_eq!(stored_snapshot(&mut target).await.meta, snapshot.meta);

    assert!(expected.worker(worker(7)).is_none());
    assert_eq!(expected.live_leases(), 1);

    // And on disk: no row of the old jobs, worker or log lines comes back.
    drop((_target_log, target));
    let (_target_log, mut target) = open(target_dir.path());
    assert_eq!(queue_of(&target), expected);
    assert_eq!(source_lines(&target), source_lines(&source));
    assert_eq!(
        target.applied_state().await.unwrap(),
        source.applied_state().await.unwrap()
    );
    assert_eq!(stored_snapshot(&mut target).await.meta, snapshot.meta);
}

#[tokio::test]
async fn snapshot_is_a_view_at_builder_creation() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(dir.path());
    apply_sample(&mut sm).await;
    let mut older_builder = sm.get_snapshot_builder().await;
    let at_builder = queue_of(&sm);
    sm.apply([normal(1, 4, vec![submit("later", None)])])
        .await
        .unwrap();

    // A snapshot built after the later apply; then the older builder finishes.
    let newer = build_snapshot(&mut sm).await;
    assert_eq!(newer.meta.last_log_id, Some(log_id(1, 4)));
    let older = older_builder.build_snapshot().await.unwrap();
    assert_eq!(older.meta.last_log_id, Some(log_id(1, 3)));
    assert_ne!(older.meta.snapshot_id, newer.meta.snapshot_id);
    assert_eq!(
        stored_snapshot(&mut sm).await.meta,
        newer.meta,
        "the current snapshot never goes back to an older one"
    );

    // The older snapshot holds the state as of its builder's creation, not the later apply.
    let other_dir = TempDir::new().unwrap();
    let (_other_log, mut other) = open(other_dir.path());
    other
        .install_snapshot(&older.meta, older.snapshot)
        .await
        .unwrap();
    assert_eq!(queue_of(&other), at_builder);
}

#[tokio::test]
async fn bad_snapshot_data_is_an_error() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(dir.path());
    apply_sample(&mut sm).await;
    let before = queue_of(&sm);
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(2, 10)),
        last_membership: StoredMembership::default(),
        snapshot_id: "2-10-1".into(),
    };
    for data in [
        vec![],
        vec![0, 0, 0, 1, 0xff, 0xff],
        vec![0, 0, 0, 9, 1, 2, 3],
        vec![0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0],
    ] {
        let mut received = sm.begin_receiving_snapshot().await.unwrap();
        std::io::Write::write_all(&mut *received, &data).unwrap();
        let result = sm.install_snapshot(&meta, received).await;
        assert!(result.is_err());
    }
    assert_eq!(part_files(dir.path()), Vec::<String>::new());
    assert_eq!(queue_of(&sm), before, "a rejected snapshot changes nothing");
}

/// Writes a record into the sled database behind the store's back; `tree` "" is sled's default
/// tree.
fn raw_tree(dir: &Path, tree: &str, key: &[u8], value: &[u8]) {
    let db = raw_db(dir);
    if tree.is_empty() {
        db.insert(key, value).unwrap();
    } else {
        db.open_tree(tree).unwrap().insert(key, value).unwrap();
    }
    db.flush().unwrap();
}

/// The replica's sled database, opened behind the store's back (the store closed).
fn raw_db(dir: &Path) -> sled::Db {
    // sled lets go of its file lock only when the background flusher of a store just dropped
    // does, a moment later (as `open_sled` waits too).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::open(dir.join("sled")) {
            Ok(db) => return db,
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => panic!("cannot open sled behind the store's back: {e}"),
        }
    }
}

/// A rewrite from a snapshot empties the tree in key order and writes `last_applied` last: cut
/// off midway (here: `last_applied`, a job row and a block of lines already gone), the tree is
/// older than the stored snapshot, and opening rewrites it whole from it.
#[tokio::test]
async fn a_rewrite_cut_off_midway_is_redone_at_open() {
    let dir = TempDir::new().unwrap();
    let (expected, snapshot_at) = {
        let (_log, mut sm) = open(dir.path());
        apply_sample(&mut sm).await;
        apply_worker_sample(&mut sm).await;
        let snapshot = build_snapshot(&mut sm).await;
        (queue_of(&sm), snapshot.meta.last_log_id)
    };
    {
        let db = raw_db(dir.path());
        let tree = db.open_tree("sm").unwrap();
        for prefix in [&b"finished/"[..], b"archive/"] {
            let mut job_3 = prefix.to_vec();
            job_3.extend_from_slice(&3u64.to_be_bytes());
            tree.remove(job_3)
                .unwrap()
                .expect("job 3 (finished) was stored");
        }
        tree.remove(b"meta/last_applied").unwrap().expect("stored");
        tree.remove(super::log_blocks::block_key(1, 1))
            .unwrap()
            .expect("job 1's lines were stored");
        db.flush().unwrap();
    }
    let (_log, mut sm) = open(dir.path());
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, snapshot_at);
    assert_eq!(queue_of(&sm), expected);
    assert_eq!(sm.log_reader().job_logs(1, 0, 0).unwrap().len(), 3);
    assert_eq!(sm.job_reader().job(3).unwrap().state, JobState::Succeeded);
}

fn open_error(dir: &Path) -> StorageOpenError {
    match open_storage(dir, 1, CACHE_BYTES) {
        Err(e) => e,
        Ok(_) => panic!("expected an error, got an open store"),
    }
}

fn expect_corrupt(dir: &Path) -> String {
    match open_error(dir) {
        e @ StorageOpenError::Corrupt { .. } => e.to_string(),
        other => panic!("expected Corrupt, got {other}"),
    }
}

/// A replica with a log, an applied state and a snapshot of it; returns the queue.
async fn replica_with_snapshot(dir: &Path) -> QueueState {
    let (mut log, mut sm) = open(dir);
    let entries = vec![
        membership_entry(1, 1),
        normal(1, 2, vec![submit("a", None)]),
        normal(1, 3, vec![submit("b", None)]),
    ];
    log.blocking_append(entries.clone()).await.unwrap();
    log.save_committed(Some(log_id(1, 3))).await.unwrap();
    sm.apply(entries).await.unwrap();
    build_snapshot(&mut sm).await;
    queue_of(&sm)
}

/// A state machine store that does not read back holds only derived state: it is set aside
/// (`sled.damaged`) and rebuilt from the snapshot, not refused.
#[tokio::test]
async fn a_damaged_state_machine_is_set_aside_and_rebuilt() {
    let mut job_key = b"job/".to_vec();
    job_key.extend_from_slice(&2u64.to_be_bytes());
    for (key, value) in [
        (job_key, vec![0xffu8; 5]),
        (b"meta/last_applied".to_vec(), vec![1u8, 2]),
        (b"unknown".to_vec(), vec![1u8]),
    ] {
        let dir = TempDir::new().unwrap();
        let expected = replica_with_snapshot(dir.path()).await;
        raw_tree(dir.path(), "sm", &key, &value);
        let (_log, mut sm) = open(dir.path());
        assert!(dir.path().join("sled.damaged").exists());
        assert_eq!(queue_of(&sm), expected);
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 3)));
    }
}

/// What a power cut can do to sled 0.34 (its `conf` file is never synced): sled itself does
/// not open. The store is set aside and rebuilt too.
#[tokio::test]
async fn a_sled_that_does_not_open_is_set_aside_and_rebuilt() {
    let dir = TempDir::new().unwrap();
    let expected = replica_with_snapshot(dir.path()).await;
    std::fs::write(dir.path().join("sled/conf"), [0u8; 16]).unwrap();
    let (_log, sm) = open(dir.path());
    assert!(dir.path().join("sled.damaged").exists());
    assert_eq!(queue_of(&sm), expected);
}

/// A damaged state machine store is rebuilt from the replica's own snapshot and log once the
/// operator moves it aside, as the error says.
#[tokio::test]
async fn a_state_machine_moved_aside_is_rebuilt_from_snapshot_and_log() {
    let dir = TempDir::new().unwrap();
    let expected = {
        let (mut log, mut sm) = open(dir.path());
        let entries = vec![
            membership_entry(1, 1),
            normal(1, 2, vec![submit("a", None)]),
            normal(1, 3, vec![submit("b", None)]),
        ];
        log.blocking_append(entries.clone()).await.unwrap();
        log.save_committed(Some(log_id(1, 3))).await.unwrap();
        sm.apply(entries[..2].to_vec()).await.unwrap();
        build_snapshot(&mut sm).await;
        log.purge(log_id(1, 2)).await.unwrap();
        sm.apply(entries[2..].to_vec()).await.unwrap();
        queue_of(&sm)
    };
    std::fs::rename(dir.path().join("sled"), dir.path().join("sled.damaged")).unwrap();
    let (mut log, mut sm) = open(dir.path());
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 2)), "rewritten from the snapshot");
    // What openraft does at start: re-apply the log from there to the committed index.
    let committed = log.read_committed().await.unwrap().unwrap();
    let tail = log.try_get_log_entries(3..=committed.index).await.unwrap();
    sm.apply(tail).await.unwrap();
    assert_eq!(queue_of(&sm), expected);
}

fn raft_file(dir: &Path, sub: &str) -> std::path::PathBuf {
    let sub_dir = dir.join("raft").join(sub);
    let name = std::fs::read_dir(&sub_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| !p.to_string_lossy().ends_with(".tmp"))
        .unwrap();
    sub_dir.join(name)
}

#[tokio::test]
async fn damaged_log_snapshot_and_identity_files_are_open_errors() {
    // A sealed log segment that does not read back.
    let dir = TempDir::new().unwrap();
    {
        let storage = super::storage::open_storage_with(dir.path(), 1, CACHE_BYTES, 512).unwrap();
        let mut log = storage.log_store;
        for index in 1..=20 {
            log.blocking_append(vec![normal(1, index, vec![submit("x", None)])])
                .await
                .unwrap();
        }
    }
    let first = dir.path().join("raft/wal/00000000000000000001.wal");
    let mut bytes = std::fs::read(&first).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&first, bytes).unwrap();
    let message = expect_corrupt(dir.path());
    assert!(message.contains("00000000000000000001.wal"), "{message}");
    assert!(message.contains("remove-replica"), "{message}");

    // A snapshot file that does not check out.
    let dir = TempDir::new().unwrap();
    {
        let (_log, mut sm) = open(dir.path());
        apply_sample(&mut sm).await;
        build_snapshot(&mut sm).await;
    }
    // Its meta (at the end) is checked at open; its data by whoever reads it whole (see
    // `a_damaged_transfer_changes_nothing`).
    let snapshot = raft_file(dir.path(), "snapshot");
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let in_meta = bytes.len() - 12;
    bytes[in_meta] ^= 0x01;
    std::fs::write(&snapshot, bytes).unwrap();
    assert!(expect_corrupt(dir.path()).contains("checksum"));

    // An identity that does not parse.
    let dir = TempDir::new().unwrap();
    drop(open(dir.path()));
    std::fs::write(dir.path().join("raft/identity"), b"{").unwrap();
    assert!(expect_corrupt(dir.path()).contains("identity"));

    // Raft state without an identity.
    let dir = TempDir::new().unwrap();
    drop(open(dir.path()));
    std::fs::remove_file(dir.path().join("raft/identity")).unwrap();
    assert!(expect_corrupt(dir.path()).contains("identity is missing"));
}

#[test]
fn foreign_older_newer_and_other_replicas_directories_are_refused() {
    let dir = TempDir::new().unwrap();
    raw_tree(dir.path(), "someone-else", b"k", b"v");
    assert!(expect_corrupt(dir.path()).contains("format marker"));

    // Format 3 kept the log in sled.
    let dir = TempDir::new().unwrap();
    raw_tree(dir.path(), "", b"scaleout/format", &3u32.to_be_bytes());
    match open_error(dir.path()) {
        e @ StorageOpenError::UnsupportedFormat { found: 3, .. } => {
            assert!(e.to_string().contains("remove-replica"), "{e}")
        }
        other => panic!("expected UnsupportedFormat, got {other}"),
    }

    let dir = TempDir::new().unwrap();
    drop(open(dir.path()));
    let path = dir.path().join("raft/identity");
    let identity = std::fs::read_to_string(&path).unwrap();
    let newer = identity.replace(
        &format!("\"format\": {DATA_FORMAT_VERSION}"),
        &format!("\"format\": {}", DATA_FORMAT_VERSION + 1),
    );
    assert_ne!(identity, newer);
    std::fs::write(&path, newer).unwrap();
    match open_error(dir.path()) {
        StorageOpenError::UnsupportedFormat { found, .. } => {
            assert_eq!(found, DATA_FORMAT_VERSION + 1)
        }
        other => panic!("expected UnsupportedFormat, got {other}"),
    }

    let dir = TempDir::new().unwrap();
    drop(open(dir.path()));
    match open_storage(dir.path(), 2, CACHE_BYTES) {
        Err(
            e @ StorageOpenError::OtherReplica {
                found: 1,
                expected: 2,
                ..
            },
        ) => {
            assert!(e.to_string().contains("replica 1"), "{e}")
        }
        Err(other) => panic!("expected OtherReplica, got {other}"),
        Ok(_) => panic!("expected OtherReplica, got an open store"),
    }
}

#[test]
fn the_identity_is_kept_and_a_new_directory_is_pristine() {
    let dir = TempDir::new().unwrap();
    let first = open_storage(dir.path(), 1, CACHE_BYTES).unwrap();
    assert!(first.pristine);
    let identity = first.identity;
    drop(first);
    let again = open_storage(dir.path(), 1, CACHE_BYTES).unwrap();
    assert_eq!(again.identity, identity);
    drop(again);
    let other = TempDir::new().unwrap();
    let fresh = open_storage(other.path(), 1, CACHE_BYTES).unwrap();
    assert_ne!(fresh.identity.storage_id, identity.storage_id);
}

#[test]
fn a_directory_in_use_is_refused() {
    let dir = TempDir::new().unwrap();
    let _first = open(dir.path());
    match open_storage(dir.path(), 1, CACHE_BYTES) {
        Err(e @ StorageOpenError::Locked { .. }) => {
            assert!(e.to_string().contains("in use"), "{e}")
        }
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("expected Locked, got a second open store"),
    }
}

#[tokio::test]
async fn log_and_vote_survive_reopen() {
    let dir = TempDir::new().unwrap();
    let entries = vec![
        membership_entry(1, 1),
        Entry {
            log_id: log_id(1, 2),
            payload: EntryPayload::Blank,
        },
        normal(2, 3, vec![submit("a", None)]),
        normal(2, 4, vec![submit("b", None), submit("c", None)]),
    ];
    let vote = Vote::new_committed(2, 1);
    {
        let (mut log, _sm) = open(dir.path());
        log.blocking_append(entries.clone()).await.unwrap();
        log.save_vote(&vote).await.unwrap();
        assert_eq!(log.committed_index(), None);
        log.save_committed(Some(log_id(2, 3))).await.unwrap();
        assert_eq!(log.clone().committed_index(), Some(3), "clones share it");
    }
    let (mut log, _sm) = open(dir.path());
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 3)));
    assert_eq!(
        log.committed_index(),
        Some(3),
        "the status read is loaded at open"
    );
    assert_eq!(log.try_get_log_entries(1..=4).await.unwrap(), entries);
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(2, 4)));
    assert_eq!(state.last_purged_log_id, None);

    // Purge and truncate, then reopen again: no hole, the purge point is remembered.
    log.purge(log_id(1, 2)).await.unwrap();
    log.truncate(log_id(2, 4)).await.unwrap();
    drop((log, _sm));
    let (mut log, _sm) = open(dir.path());
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(2, 3)));
    assert_eq!(
        log.try_get_log_entries(..).await.unwrap(),
        entries[2..3].to_vec()
    );
    assert_eq!(
        log.try_get_log_entries(3..3).await.unwrap(),
        Vec::<Entry>::new()
    );
}

/// The whole-cluster restore: a copy of replica 1's data dir becomes replica 2's own, with the
/// storage id its membership records for replica 2.
#[tokio::test]
async fn a_restored_copy_is_adopted_with_the_storage_id_its_membership_names() {
    let dir = TempDir::new().unwrap();
    {
        let (mut log, _sm) = open(dir.path());
        log.blocking_append(vec![membership_entry(1, 1)])
            .await
            .unwrap();
    }
    assert!(matches!(
        open_storage(dir.path(), 2, CACHE_BYTES),
        Err(StorageOpenError::OtherReplica {
            found: 1,
            expected: 2,
            ..
        })
    ));
    let adopted = adopt_restored_copy(dir.path(), 2).unwrap();
    assert_eq!(adopted.node_id, 2);
    assert_eq!(adopted.storage_id, uuid::Uuid::from_u128(2));
    let opened = open_storage(dir.path(), 2, CACHE_BYTES).unwrap();
    assert_eq!(opened.identity, adopted);
    drop(opened);
    // A replica the copy's membership does not name cannot adopt it.
    assert!(adopt_restored_copy(dir.path(), 9).is_err());
}

/// Lines written to a finished job (a late append) and that job removed by retention in the
/// same entry leave no row behind, in the tree or after a reopen.
#[tokio::test]
async fn a_job_removed_in_the_entry_that_logged_to_it_leaves_no_line() {
    let dir = TempDir::new().unwrap();
    {
        let (_log, mut sm) = open(dir.path());
        apply_sample(&mut sm).await;
        apply_worker_sample(&mut sm).await;
        sm.apply([normal(1, 6, vec![log_lines(1, 3, 2, 2)])])
            .await
            .unwrap();
        assert_eq!(sm.log_reader().job_logs(3, 0, 0).unwrap().len(), 2);
        let outcomes = sm
            .apply([normal(
                1,
                7,
                vec![
                    log_lines(1, 3, 2, 3),
                    Command::RemoveFinishedJobs {
                        retention_ms: 0,
                        max_finished: 0,
                        until_shipped: false,
                        limit: 10,
                    },
                ],
            )])
            .await
            .unwrap();
        assert!(
            matches!(
                outcomes[0].results[1],
                // Job 3 (completed) and job 2 (cancelled); job 1 is leased.
                Ok(CommandOutput::JobsRemoved { removed: 2, .. })
            ),
            "{outcomes:?}"
        );
        assert!(sm.log_reader().job_logs(3, 0, 0).unwrap().is_empty());
        assert_eq!(sm.log_reader().job_logs(1, 0, 0).unwrap().len(), 3);
    }
    let (_log, sm) = open(dir.path());
    assert!(!queue_of(&sm).has_job(3));
    assert!(matches!(
        sm.job_reader().job(3),
        Err(JobReadError::Missing(crate::queue::QueueError::JobRemoved(
            3
        )))
    ));
    assert!(stored_keys(&sm, b"archive/").is_empty());
    assert!(stored_keys(&sm, b"finished/").is_empty());
    assert!(sm.log_reader().job_logs(3, 0, 0).unwrap().is_empty());
}

/// Copies snapshot data into a new part file of `target` the way openraft's chunked transfer
/// does (reads of at most a chunk, written in order), flipping the bits of the byte at `damage`.
async fn transfer(
    mut data: Box<SnapshotFile>,
    target: &mut StateMachine,
    damage: Option<usize>,
) -> Box<SnapshotFile> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut received = target.begin_receiving_snapshot().await.unwrap();
    let mut chunk = vec![0; 1000];
    let mut offset = 0;
    loop {
        let n = data.read(&mut chunk).await.unwrap();
        if n == 0 {
            break;
        }
        if let Some(at) = damage.filter(|at| (offset..offset + n).contains(at)) {
            chunk[at - offset] ^= 0xff;
        }
        received.write_all(&chunk[..n]).await.unwrap();
        offset += n;
    }
    received.shutdown().await.unwrap();
    received
}

/// The names of unfinished snapshot files in a replica's data dir.
fn part_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("raft/snapshot"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".part"))
        .collect()
}

/// A snapshot with thousands of lines, moved in chunks: every line arrives; damaged on the way,
/// it is refused whole and the target keeps its state and its stored snapshot.
#[tokio::test]
async fn a_damaged_transfer_changes_nothing() {
    let source_dir = TempDir::new().unwrap();
    let (_source_log, mut source) = open(source_dir.path());
    apply_sample(&mut source).await;
    apply_worker_sample(&mut source).await;
    source
        .apply([normal(1, 6, vec![log_lines(1, 1, 1, 3000)])])
        .await
        .unwrap();
    let snapshot = build_snapshot(&mut source).await;
    let data_len = snapshot.snapshot.data_len().unwrap() as usize;
    assert!(data_len > 30_000, "{data_len} bytes");

    let target_dir = TempDir::new().unwrap();
    let (_target_log, mut target) = open(target_dir.path());
    replica_state_with_own_snapshot(&mut target).await;
    let before = queue_of(&target);
    let stored_before = stored_snapshot(&mut target).await.meta;
    for damage in [5, data_len / 2, data_len - 1] {
        let data = stored_snapshot(&mut source).await.snapshot;
        let received = transfer(data, &mut target, Some(damage)).await;
        let refused = target
            .install_snapshot(&snapshot.meta, received)
            .await
            .expect_err("damaged data is refused");
        assert!(
            refused.to_string().contains("snapshot"),
            "damage at {damage}: {refused}"
        );
        assert_eq!(queue_of(&target), before);
        assert_eq!(stored_snapshot(&mut target).await.meta, stored_before);
        assert_eq!(part_files(target_dir.path()), Vec::<String>::new());
    }

    let data = stored_snapshot(&mut source).await.snapshot;
    let received = transfer(data, &mut target, None).await;
    target
        .install_snapshot(&snapshot.meta, received)
        .await
        .unwrap();
    assert_eq!(queue_of(&target), queue_of(&source));
    let lines = target.log_reader().job_logs(1, 0, 10_000).unwrap();
    assert_eq!(lines.len(), 3003);
    assert_eq!(lines, source.log_reader().job_logs(1, 0, 10_000).unwrap());
    assert_eq!(part_files(target_dir.path()), Vec::<String>::new());
}

/// Gives a fresh state machine a state and a stored snapshot of its own.
async fn replica_state_with_own_snapshot(sm: &mut StateMachine) {
    sm.apply([normal(1, 1, vec![submit("own", None)])])
        .await
        .unwrap();
    build_snapshot(sm).await;
}

/// Lines are stored in blocks (one per job per apply call, the truncation notice alone): reads
/// page across block boundaries, find single lines, see the notice as last rewritten, and a
/// reopen or a snapshot transfer gives back the same lines.
#[tokio::test]
async fn log_lines_stored_in_blocks_read_back_line_by_line() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(dir.path());
    apply_sample(&mut sm).await;
    apply_worker_sample(&mut sm).await; // job 1: lines 1-3
    let cap = crate::queue::MAX_LOG_LINES_PER_JOB as usize;
    // Separate apply calls: each writes its own rows.
    for entry in [
        normal(1, 6, vec![log_lines(1, 1, 1, 2)]),
        normal(1, 7, vec![log_lines(1, 1, 1, cap)]),
        normal(1, 8, vec![log_lines(1, 1, 1, 4), log_lines(1, 1, 1, 1)]),
    ] {
        sm.apply([entry]).await.unwrap();
    }
    let notice = cap as u64 + 1;
    // 3 + 2 + (cap - 5 kept, 5 dropped) + 5 dropped: 10 dropped in all.
    let check = |sm: &StateMachine| {
        let logs = sm.log_reader();
        // Pages of at most MAX_LOG_PAGE_SIZE (the cap) lines.
        let mut all = logs.job_logs(1, 0, cap).unwrap();
        all.extend(logs.job_logs(1, cap as u64, cap).unwrap());
        let sequences: Vec<u64> = all.iter().map(|l| l.sequence).collect();
        assert!(
            sequences == (1..=notice).collect::<Vec<_>>(),
            "{} lines, from {:?} to {:?}",
            sequences.len(),
            sequences.first(),
            sequences.last()
        );
        assert_eq!(
            all.last().unwrap().line.text,
            crate::queue::truncation_notice(10)
        );
        let page: Vec<u64> = logs
            .job_logs(1, 2, 3)
            .unwrap()
            .iter()
            .map(|l| l.sequence)
            .collect();
        assert_eq!(page, vec![3, 4, 5], "a page across blocks");
        let tail = logs.job_logs(1, cap as u64 - 3, 10).unwrap();
        let tail_sequences: Vec<u64> = tail.iter().map(|l| l.sequence).collect();
        assert_eq!(
            tail_sequences,
            (cap as u64 - 2..=notice).collect::<Vec<_>>()
        );
        assert_eq!(
            tail.last().unwrap().line.text,
            crate::queue::truncation_notice(10),
            "the notice as last rewritten, once"
        );
        assert_eq!(logs.line(1, 4).unwrap().unwrap().line.text, "line 0");
        assert_eq!(logs.line(1, 6).unwrap().unwrap().line.text, "line 0");
        assert_eq!(
            logs.line(1, notice).unwrap().unwrap().line.text,
            crate::queue::truncation_notice(10)
        );
        assert_eq!(logs.line(1, notice + 1).unwrap(), None);
        assert_eq!(logs.line(3, 1).unwrap(), None);
        let wanted = [(1, notice), (3, 1), (1, 2), (1, 4), (1, 3), (1, 9_000)];
        let found = logs.lines(&wanted).unwrap();
        assert_eq!(
            found.keys().copied().collect::<Vec<_>>(),
            vec![(1, 2), (1, 3), (1, 4), (1, 9_000), (1, notice)]
        );
        for (&(job, sequence), line) in &found {
            assert_eq!(Some(line), logs.line(job, sequence).unwrap().as_ref());
        }
        assert_eq!(logs.job_logs(1, notice, 0).unwrap(), vec![]);
    };
    check(&sm);
    // 3 calls' blocks, cap lines of ~6 bytes in blocks of BLOCK_BYTES, the notice.
    let rows = sm.log_line_rows();
    assert!((4..=100).contains(&rows), "{rows} rows for {notice} lines");

    build_snapshot(&mut sm).await;
    drop((_log, sm));
    let (_log, sm) = open(dir.path());
    check(&sm);

    let target_dir = TempDir::new().unwrap();
    let (_target_log, mut target) = open(target_dir.path());
    replica_state_with_own_snapshot(&mut target).await;
    let (meta, data) = {
        let mut sm = sm;
        let snapshot = stored_snapshot(&mut sm).await;
        (snapshot.meta, snapshot.snapshot)
    };
    let received = transfer(data, &mut target, None).await;
    target.install_snapshot(&meta, received).await.unwrap();
    check(&target);
    assert!(target.log_line_rows() <= rows);
}

/// Builds a snapshot of `sm` now, as openraft does.
async fn build_snapshot(sm: &mut StateMachine) -> Snapshot {
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build a snapshot")
}

/// The snapshot `sm` stores.
async fn stored_snapshot(sm: &mut StateMachine) -> Snapshot {
    sm.get_current_snapshot()
        .await
        .expect("read the stored snapshot")
        .expect("a stored snapshot")
}

/// The job ids of the `sm` rows under `prefix` (`job/`, `finished/`, `archive/`).
fn stored_keys(sm: &StateMachine, prefix: &[u8]) -> Vec<u64> {
    sm.tree()
        .scan_prefix(prefix)
        .keys()
        .map(|key| {
            let key = key.unwrap();
            u64::from_be_bytes(key[prefix.len()..].try_into().unwrap())
        })
        .collect()
}

fn remove_finished() -> Command {
    Command::RemoveFinishedJobs {
        retention_ms: 0,
        max_finished: 0,
        until_shipped: false,
        limit: 100,
    }
}

/// A finished job leaves memory: the queue keeps a small record, the store its full row, which
/// reads back whole (late log lines still counted), across a reopen and a snapshot transfer; a
/// resubmit of a finished job's key is still recognised, and a different spec refused.
#[tokio::test]
async fn finished_jobs_leave_memory_and_read_back_from_the_store() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(dir.path());
    apply_sample(&mut sm).await;
    apply_worker_sample(&mut sm).await;
    let outcomes = sm
        .apply([
            normal(1, 6, vec![log_lines(1, 3, 2, 2), submit("e", Some("k-e"))]),
            normal(1, 7, vec![Command::CancelJob { job_id: 4 }]),
            normal(
                1,
                8,
                vec![submit("e", Some("k-e")), submit("other", Some("k-e"))],
            ),
        ])
        .await
        .unwrap();
    assert!(matches!(
        outcomes[0].results[0],
        Ok(CommandOutput::LogsAppended { late: true })
    ));
    assert!(matches!(
        outcomes[2].results[0],
        Ok(CommandOutput::Submitted {
            job_id: 4,
            deduplicated: true
        })
    ));
    assert!(matches!(
        outcomes[2].results[1],
        Err(crate::queue::QueueError::IdempotencyKeyConflict { job_id: 4, .. })
    ));

    let check = |sm: &StateMachine| {
        let queue = queue_of(sm);
        assert!(queue.job(1).is_some(), "live jobs stay in memory");
        for id in [2, 3, 4] {
            assert!(
                queue.job(id).is_none(),
                "finished job {id} is held in memory"
            );
            assert!(queue.finished_job(id).is_some());
        }
        assert_eq!(stored_keys(sm, b"job/"), vec![1]);
        assert_eq!(stored_keys(sm, b"finished/"), vec![2, 3, 4]);
        assert_eq!(stored_keys(sm, b"archive/"), vec![2, 3, 4]);
        let reader = sm.job_reader();
        let job = reader.job(3).unwrap();
        assert_eq!(job.state, JobState::Succeeded);
        assert_eq!(job.spec.argv, vec!["c".to_string()]);
        assert_eq!(job.attempts.len(), 1);
        assert_eq!(job.attempts[0].outcome, Some(AttemptOutcome::Succeeded));
        assert_eq!(job.log_lines, 2, "the late lines are counted");
        assert_eq!(sm.log_reader().job_logs(3, 0, 0).unwrap().len(), 2);
        let ids: Vec<u64> = reader
            .jobs(&[1, 2, 3, 4, 99])
            .unwrap()
            .iter()
            .map(|job| job.id)
            .collect();
        assert_eq!(ids, vec![1, 2, 3, 4]);
        assert!(matches!(
            reader.job(99),
            Err(JobReadError::Missing(
                crate::queue::QueueError::JobNotFound(99)
            ))
        ));
        job
    };
    let before = check(&sm);
    let expected = queue_of(&sm);
    drop(sm);

    let (_log, mut sm) = open(dir.path());
    assert_eq!(queue_of(&sm), expected);
    assert_eq!(check(&sm), before);

    let target_dir = TempDir::new().unwrap();
    let (_target_log, mut target) = open(target_dir.path());
    let snapshot = build_snapshot(&mut sm).await;
    let received = transfer(snapshot.snapshot, &mut target, None).await;
    target
        .install_snapshot(&snapshot.meta, received)
        .await
        .unwrap();
    assert_eq!(queue_of(&target), expected);
    assert_eq!(check(&target), before);
}

/// Earlier builds stored a finished job as a live row: opening moves it out of memory.
#[tokio::test]
async fn an_earlier_builds_finished_job_row_is_moved_at_open() {
    let dir = TempDir::new().unwrap();
    let (expected, job_3) = {
        let (_log, mut sm) = open(dir.path());
        apply_sample(&mut sm).await;
        apply_worker_sample(&mut sm).await;
        (queue_of(&sm), sm.job_reader().job(3).unwrap())
    };
    {
        let db = raw_db(dir.path());
        let tree = db.open_tree("sm").unwrap();
        let key = |prefix: &[u8]| [prefix, &3u64.to_be_bytes()[..]].concat();
        tree.remove(key(b"finished/")).unwrap().expect("stored");
        tree.remove(key(b"archive/")).unwrap().expect("stored");
        tree.insert(key(b"job/"), super::storage::encode(&job_3).unwrap())
            .unwrap();
        // Such rows come with the outbox counters of their time.
        let meta = expected.outbox_meta();
        let old_meta = super::legacy::OutboxMetaV1 {
            last_index: meta.last_index,
            next_sequence: meta.next_sequence,
            acked_up_to: meta.acked_up_to,
            dropped_log_events: meta.dropped_log_events,
        };
        tree.insert(b"meta/outbox", super::storage::encode(&old_meta).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let (_log, sm) = open(dir.path());
    // The outbox is held, as that build held it, and the moved job's last event is unknown
    // until it is let go.
    let mut parts = expected.to_parts();
    parts.outbox = sm.outbox_reader().after(0, usize::MAX).unwrap();
    parts.outbox_meta.held = true;
    for kept in parts.finished.iter_mut().filter(|kept| kept.id == 3) {
        kept.last_event = crate::queue::UNKNOWN_LAST_EVENT;
    }
    assert_eq!(queue_of(&sm), QueueState::from_parts(parts));
    assert_eq!(stored_keys(&sm, b"job/"), vec![1]);
    assert_eq!(stored_keys(&sm, b"finished/"), vec![2, 3]);
    assert_eq!(stored_keys(&sm, b"archive/"), vec![2, 3]);
    assert_eq!(sm.job_reader().job(3).unwrap(), job_3);
}

/// Retention may remove a finished job's row while a snapshot is built from a view that still
/// has the job: the snapshot carries what the queue kept of it, so a replica installing it holds
/// the view's state, and the removal entry after the snapshot brings it level with the source.
#[tokio::test]
async fn a_snapshot_built_while_retention_removes_rows_installs_the_views_state() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(dir.path());
    apply_sample(&mut sm).await;
    apply_worker_sample(&mut sm).await;
    let view = queue_of(&sm);
    let mut builder = sm.get_snapshot_builder().await;
    let removal = normal(1, 6, vec![remove_finished()]);
    let outcomes = sm.apply([removal.clone()]).await.unwrap();
    assert!(matches!(
        outcomes[0].results[0],
        Ok(CommandOutput::JobsRemoved { removed: 2, .. })
    ));
    assert!(stored_keys(&sm, b"archive/").is_empty());
    let snapshot = builder.build_snapshot().await.unwrap();

    let target_dir = TempDir::new().unwrap();
    let (_target_log, mut target) = open(target_dir.path());
    let received = transfer(snapshot.snapshot, &mut target, None).await;
    target
        .install_snapshot(&snapshot.meta, received)
        .await
        .unwrap();
    assert_eq!(queue_of(&target), view);
    assert_eq!(stored_keys(&target, b"finished/"), vec![2, 3]);
    assert!(stored_keys(&target, b"archive/").is_empty());
    assert!(matches!(
        target.job_reader().job(3),
        Err(JobReadError::Missing(crate::queue::QueueError::JobRemoved(
            3
        )))
    ));
    target.apply([removal]).await.unwrap();
    assert_eq!(queue_of(&target), queue_of(&sm));
    assert!(stored_keys(&target, b"finished/").is_empty());
}

/// A release as a leader proposes it: the events `sm` stores after its cursor, up to `up_to`.
fn release_through(sm: &StateMachine, up_to: u64) -> Command {
    let after = queue_of(sm).outbox_meta().acked_up_to;
    let events = sm.outbox_reader().after(after, usize::MAX).unwrap();
    Command::ReleaseOutbox {
        after,
        up_to,
        events: events.iter().filter(|e| e.id <= up_to).count() as u64,
    }
}

/// The outbox lives in the store: the queue counts its events, a release removes their rows, and
/// a restart reads none of them (a damaged event row is found by a reader, not at open).
#[tokio::test]
async fn the_outbox_is_stored_not_held_and_a_restart_does_not_read_it() {
    let dir = TempDir::new().unwrap();
    let (queue, events) = {
        let (_log, mut sm) = open(dir.path());
        apply_sample(&mut sm).await;
        apply_worker_sample(&mut sm).await;
        let events = sm.outbox_reader().after(0, usize::MAX).unwrap();
        let queue = queue_of(&sm);
        assert!(
            queue.to_parts().outbox.is_empty(),
            "the queue holds no event"
        );
        assert_eq!(events.len(), queue.outbox_len());
        assert!(events.len() > 10, "{} events", events.len());
        assert!(events
            .windows(2)
            .all(|w| w[0].id < w[1].id && w[0].at_ms <= w[1].at_ms));

        let up_to = events[4].id;
        let outcomes = sm
            .apply([normal(1, 6, vec![release_through(&sm, up_to)])])
            .await
            .unwrap();
        assert_eq!(
            outcomes[0].results[0],
            Ok(CommandOutput::OutboxAcked {
                acked_up_to: up_to,
                removed: 5
            })
        );
        let left = sm.outbox_reader().after(0, usize::MAX).unwrap();
        assert_eq!(left, events[5..].to_vec());
        assert_eq!(queue_of(&sm).outbox_len(), left.len());
        assert_eq!(sm.outbox_reader().oldest().unwrap(), left.first().cloned());
        (queue_of(&sm), left)
    };
    // A damaged event row: opening does not read it.
    let damaged = events[0].id;
    raw_tree(
        dir.path(),
        "sm",
        &[&b"outbox/"[..], &damaged.to_be_bytes()].concat(),
        b"not an event",
    );
    let (_log, sm) = open(dir.path());
    assert_eq!(queue_of(&sm), queue);
    let read = sm.outbox_reader().after(0, 10);
    assert!(
        matches!(read, Err(OutboxReadError::Corrupt { .. })),
        "{read:?}"
    );
}

/// Each apply stores its events as one block row; a reader finds an id inside a block, a release
/// that cuts through a block keeps the block's later events (and only those), and a restart
/// reads the same.
#[tokio::test]
async fn one_apply_stores_its_events_as_one_row_and_a_release_cuts_blocks() {
    let dir = TempDir::new().unwrap();
    let events = {
        let (_log, mut sm) = open(dir.path());
        apply_sample(&mut sm).await;
        let events = sm.outbox_reader().after(0, usize::MAX).unwrap();
        let rows = sm.tree().scan_prefix(b"outbox/").count();
        assert!(
            rows < events.len() / 2,
            "{rows} rows for {} events",
            events.len()
        );
        // From any id, the events after it, inside a block or at its start.
        for (n, event) in events.iter().enumerate() {
            assert_eq!(
                sm.outbox_reader().after(event.id, usize::MAX).unwrap(),
                events[n + 1..].to_vec()
            );
            assert_eq!(
                sm.outbox_reader().after(event.id - 1, 2).unwrap(),
                events[n..(n + 2).min(events.len())].to_vec()
            );
        }
        // Cut through the middle of the largest block.
        let cut = events[events.len() / 2].id;
        sm.apply([normal(1, 20, vec![release_through(&sm, cut)])])
            .await
            .unwrap();
        let left: Vec<_> = events.iter().filter(|e| e.id > cut).cloned().collect();
        assert_eq!(sm.outbox_reader().after(0, usize::MAX).unwrap(), left);
        assert_eq!(sm.outbox_reader().oldest().unwrap(), left.first().cloned());
        for row in sm.tree().scan_prefix(b"outbox/") {
            let (key, _) = row.unwrap();
            let first = u64::from_be_bytes(key[7..15].try_into().unwrap());
            assert!(
                first > cut,
                "a row starting at {first} outlived the cut at {cut}"
            );
        }
        left
    };
    let (_log, sm) = open(dir.path());
    assert_eq!(sm.outbox_reader().after(0, usize::MAX).unwrap(), events);
}

/// Past the outbox limit a running job's dropped log lines are counted in one truncation event,
/// rewritten in place by later applies: those applies' events stay single rows, so the stored
/// events are still each stored once, in id order, and readable from any id.
#[tokio::test]
async fn rewritten_truncation_events_leave_the_blocks_in_order() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(dir.path());
    apply_sample(&mut sm).await;
    apply_worker_sample(&mut sm).await;
    let limit = queue_of(&sm).outbox_len() as u64;
    let limited = |index: u64, commands: Vec<Command>| Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(Proposal {
            now_ms: 1_700_000_000_000 + index,
            outbox_limit: limit,
            commands,
        }),
    };
    // Job 1 (worker 1, token 1) logs past the limit beside other changes, apply after apply.
    for index in 6..12 {
        sm.apply([limited(
            index,
            vec![
                submit("more", None),
                log_lines(1, 1, 1, 2),
                submit("again", None),
            ],
        )])
        .await
        .unwrap();
    }
    let events = sm.outbox_reader().after(0, usize::MAX).unwrap();
    assert!(
        events.windows(2).all(|pair| pair[0].id < pair[1].id),
        "{:?}",
        events.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    assert_eq!(events.len(), queue_of(&sm).outbox_len());
    let truncated: Vec<_> = events
        .iter()
        .filter_map(|e| match e.kind {
            crate::queue::EventKind::LogTruncated { dropped, .. } => Some(dropped),
            _ => None,
        })
        .collect();
    assert_eq!(
        truncated,
        vec![12],
        "one truncation event, as last rewritten"
    );
    for (n, event) in events.iter().enumerate() {
        assert_eq!(
            sm.outbox_reader().after(event.id, usize::MAX).unwrap(),
            events[n + 1..].to_vec()
        );
    }
}

/// An apply wakes every waiting poll when it queues a job, and only a worker's own poll when it
/// changes that worker's row.
#[tokio::test]
async fn an_apply_wakes_the_polls_it_made_work_for() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(dir.path());
    apply_sample(&mut sm).await;
    sm.apply([normal(1, 4, vec![register(1), register(2)])])
        .await
        .unwrap();
    let signal = sm.dispatch_signal();
    let woken = |watch: &mut crate::raft::DispatchWatch| {
        futures::FutureExt::now_or_never(watch.changed()).is_some()
    };
    let (mut one, mut two) = (signal.watch(worker(1)), signal.watch(worker(2)));
    sm.apply([normal(1, 5, vec![acquire(1, 1)])]).await.unwrap();
    assert!(woken(&mut one), "worker 1's row changed");
    assert!(!woken(&mut two), "nothing for worker 2");
    sm.apply([normal(1, 6, vec![submit("new", None)])])
        .await
        .unwrap();
    assert!(
        woken(&mut one) && woken(&mut two),
        "a queued job is work for both"
    );
}

/// The rows of an earlier build's outbox (its counters without `pending` and `held`): the queue
/// holds them, as that build did, applies its acks as it did, and lets go of them at the first
/// release; the stored rows follow, and a restart finds the same state.
#[tokio::test]
async fn an_earlier_builds_outbox_is_held_until_the_first_release() {
    let dir = TempDir::new().unwrap();
    let events = {
        let (_log, mut sm) = open(dir.path());
        apply_sample(&mut sm).await;
        apply_worker_sample(&mut sm).await;
        let meta = queue_of(&sm).outbox_meta().clone();
        let old_meta = super::legacy::OutboxMetaV1 {
            last_index: meta.last_index,
            next_sequence: meta.next_sequence,
            acked_up_to: meta.acked_up_to,
            dropped_log_events: meta.dropped_log_events,
        };
        sm.tree()
            .insert(b"meta/outbox", super::storage::encode(&old_meta).unwrap())
            .unwrap();
        sm.outbox_reader().after(0, usize::MAX).unwrap()
    };
    let (_log, mut sm) = open(dir.path());
    let held = queue_of(&sm);
    assert!(held.outbox_meta().held);
    assert_eq!(held.to_parts().outbox, events, "held whole");
    assert_eq!(held.outbox_len(), events.len());

    sm.apply([normal(
        1,
        6,
        vec![Command::AckOutbox {
            up_to: events[1].id,
        }],
    )])
    .await
    .unwrap();
    assert_eq!(
        sm.outbox_reader().after(0, usize::MAX).unwrap(),
        events[2..].to_vec()
    );
    let up_to = events[3].id;
    let outcomes = sm
        .apply([normal(1, 7, vec![release_through(&sm, up_to)])])
        .await
        .unwrap();
    assert_eq!(
        outcomes[0].results[0],
        Ok(CommandOutput::OutboxAcked {
            acked_up_to: up_to,
            removed: 2
        })
    );
    let queue = queue_of(&sm);
    assert!(!queue.outbox_meta().held);
    assert!(queue.to_parts().outbox.is_empty());
    assert_eq!(
        sm.outbox_reader().after(0, usize::MAX).unwrap(),
        events[4..].to_vec()
    );
    assert_eq!(queue.outbox_len(), events.len() - 4);
    drop(sm);
    let (_log, sm) = open(dir.path());
    assert_eq!(queue_of(&sm), queue);
}

/// A snapshot carries the view's pending events, streamed from the store. Events released after
/// the view are gone from the store when it is built: the installing replica counts them as the
/// view did, and the release that follows in the log brings both replicas level, rows included.
#[tokio::test]
async fn a_snapshot_carries_the_views_outbox_and_the_release_after_it_levels_the_rows() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(dir.path());
    apply_sample(&mut sm).await;
    apply_worker_sample(&mut sm).await;
    let view = queue_of(&sm);
    let events = sm.outbox_reader().after(0, usize::MAX).unwrap();
    let mut builder = sm.get_snapshot_builder().await;
    let release = normal(1, 6, vec![release_through(&sm, events[2].id)]);
    let more = normal(1, 7, vec![submit("late", None)]);
    sm.apply([release.clone(), more.clone()]).await.unwrap();
    let snapshot = builder.build_snapshot().await.unwrap();

    let target_dir = TempDir::new().unwrap();
    let (_target_log, mut target) = open(target_dir.path());
    let received = transfer(snapshot.snapshot, &mut target, None).await;
    target
        .install_snapshot(&snapshot.meta, received)
        .await
        .unwrap();
    assert_eq!(queue_of(&target), view);
    assert!(
        !queue_of(&target).is_placeholder(),
        "the new state replaced the stand-in"
    );
    // Neither the released events nor the later ones.
    assert_eq!(
        target.outbox_reader().after(0, usize::MAX).unwrap(),
        events[3..].to_vec()
    );
    target.apply([release, more]).await.unwrap();
    assert_eq!(queue_of(&target), queue_of(&sm));
    assert_eq!(
        target.outbox_reader().after(0, usize::MAX).unwrap(),
        sm.outbox_reader().after(0, usize::MAX).unwrap()
    );
}

/// The leader's prune reads the prefix of the stored events older than the cut-off or beyond
/// the most kept, at most as many as asked: the `PRUNE_BATCH` bound of one release.
#[tokio::test]
async fn the_aged_events_are_a_prefix_bounded_by_the_limit() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(dir.path());
    apply_sample(&mut sm).await;
    apply_worker_sample(&mut sm).await;
    let events = sm.outbox_reader().after(0, usize::MAX).unwrap();
    let reader = sm.outbox_reader();
    // Entries are stamped 1_700_000_000_000 + index: before index 4's time, only entries 2 and 3.
    let cut = 1_700_000_000_004;
    let older: Vec<&crate::queue::OutboxEvent> = events.iter().filter(|e| e.at_ms < cut).collect();
    assert!(!older.is_empty() && older.len() + 2 <= events.len());
    let aged = |after, limit| reader.aged(after, cut, 0, limit).unwrap();
    let all = aged(0, 10_000).expect("aged events");
    assert_eq!(
        (all.up_to, all.events),
        (older.last().unwrap().id, older.len() as u64)
    );
    let two = aged(0, 2).expect("aged events");
    assert_eq!((two.up_to, two.events), (older[1].id, 2));
    assert_eq!(aged(older.last().unwrap().id, 10_000), None);

    // Beyond the most kept, the oldest go however recent: the excess, or the aged ones if more.
    let excess = older.len() + 2;
    let over = reader
        .aged(0, cut, excess as u64, 10_000)
        .unwrap()
        .expect("excess");
    assert_eq!(
        (over.up_to, over.events),
        (events[excess - 1].id, excess as u64)
    );
    let fewer = reader
        .aged(0, cut, 1, 10_000)
        .unwrap()
        .expect("aged events");
    assert_eq!(fewer.events, older.len() as u64);
    let recent = reader.aged(0, 0, 2, 10_000).unwrap().expect("excess");
    assert_eq!((recent.up_to, recent.events), (events[1].id, 2));
    assert_eq!(reader.aged(0, 0, 0, 10_000).unwrap(), None);
}

/// Events recorded and released within one apply call (a follower applying a backlog) are never
/// written: the released rows are exactly the earlier ones.
#[tokio::test]
async fn events_recorded_and_released_in_one_apply_call_leave_no_row() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(dir.path());
    apply_sample(&mut sm).await;
    let stored = sm.outbox_reader().after(0, usize::MAX).unwrap().len() as u64;
    // The submit at index 4 makes one event, released at index 5 with the stored ones.
    let release = Command::ReleaseOutbox {
        after: 0,
        up_to: crate::queue::event_id(4, 0),
        events: stored + 1,
    };
    let outcomes = sm
        .apply([
            normal(1, 4, vec![submit("d", None)]),
            normal(1, 5, vec![release]),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes[1].results[0],
        Ok(CommandOutput::OutboxAcked {
            acked_up_to: crate::queue::event_id(4, 0),
            removed: stored + 1
        })
    );
    assert_eq!(sm.outbox_reader().after(0, usize::MAX).unwrap(), Vec::new());
    assert_eq!(queue_of(&sm).outbox_len(), 0);
}

/// While a replica installs a snapshot, what its readers see goes from its old state to a
/// placeholder (which stale reads refuse: `JobService::read_barrier`) to the snapshot's state,
/// never a state half rewritten.
#[tokio::test]
async fn readers_see_the_old_state_then_a_placeholder_then_the_new_one() {
    use std::sync::atomic::{AtomicBool, Ordering};

    let source_dir = TempDir::new().unwrap();
    let (_source_log, mut source) = open(source_dir.path());
    // Enough jobs that the rewrite takes a while.
    for index in 1..=200 {
        let commands: Vec<Command> = (0..100).map(|_| submit("job", None)).collect();
        source.apply([normal(1, index, commands)]).await.unwrap();
    }
    let source_jobs = queue_of(&source).job_count();
    assert_eq!(source_jobs, 20_000);
    let snapshot = build_snapshot(&mut source).await;

    let target_dir = TempDir::new().unwrap();
    let (_target_log, mut target) = open(target_dir.path());
    let old: Vec<Command> = (0..10).map(|_| submit("old", None)).collect();
    target.apply([normal(1, 1, old)]).await.unwrap();
    let received = transfer(snapshot.snapshot, &mut target, None).await;

    let shared = target.queue();
    let installing = std::sync::Arc::new(AtomicBool::new(true));
    let watcher = {
        let installing = installing.clone();
        std::thread::spawn(move || {
            // Distinct (placeholder, jobs) views in the order they were seen.
            let mut seen: Vec<(bool, usize)> = Vec::new();
            let mut look = || {
                let queue = shared.read().unwrap();
                let view = (queue.is_placeholder(), queue.job_count());
                drop(queue);
                if seen.last() != Some(&view) {
                    seen.push(view);
                }
            };
            while installing.load(Ordering::Relaxed) {
                look();
                std::thread::yield_now();
            }
            // Once more after the install returned: its last view.
            look();
            seen
        })
    };
    target
        .install_snapshot(&snapshot.meta, received)
        .await
        .unwrap();
    installing.store(false, Ordering::Relaxed);
    let seen = watcher.join().unwrap();

    assert_eq!(queue_of(&target), queue_of(&source));
    let expected = [(false, 10), (true, 0), (false, source_jobs)];
    // Every view seen is one of the three, in that order, ending with the new state; the
    // placeholder must be seen (the rewrite of 20,000 jobs takes far longer than a reader's
    // turn).
    assert!(
        seen.contains(&(true, 0)),
        "the placeholder was never seen: {seen:?}"
    );
    assert_eq!(seen.last(), Some(&(false, source_jobs)), "{seen:?}");
    let positions: Vec<usize> = seen
        .iter()
        .map(|view| {
            expected
                .iter()
                .position(|e| e == view)
                .unwrap_or_else(|| panic!("a half-installed view {view:?} in {seen:?}"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
}
