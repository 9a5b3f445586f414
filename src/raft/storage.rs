//! Opening a replica's data directory.
//!
//! Layout (format 4):
//! - `raft/identity`: the format, the replica id and a storage id, a UUID drawn when the
//!   directory is first created. A wiped disk gets a new one, which is how the cluster tells a
//!   replica that lost its state from the one it admitted (see `master/bootstrap.rs`).
//! - `raft/wal/`: the Raft log and the vote ([`LogStore`], `wal.rs`), synced before every
//!   acknowledgment.
//! - `raft/snapshot/`: the current snapshot (`snapshot_store.rs`), synced before the log behind
//!   it is purged.
//! - `sled/`: the replicated queue as of some applied index ([`StateMachine`]). Never synced: it
//!   holds nothing that the snapshot and the log cannot rebuild.
//!
//! Everything under `raft/` is written through the [`Disk`] interface, the one place durability
//! depends on. Everything stored is checked while opening: a damaged or foreign record is reported
//! as a [`StorageOpenError`] naming the directory and a safe way out, never as a panic or as a
//! Raft failure later on.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::snapshot_store::SnapshotStore;
use super::wal::DEFAULT_SEGMENT_BYTES;
use super::{LogStore, NodeId, StateMachine};
use crate::disk::{self, Disk, OsDisk};

/// The layout of the data directory this build writes and reads. Bump it when a tree, a key or an
/// encoded record changes shape, and teach [`open_storage`] to migrate or refuse the old one.
/// Format 4: the log, the vote and the snapshot left sled for files that are really synced.
pub const DATA_FORMAT_VERSION: u32 = 4;

/// The safe way back for a replica whose data dir cannot be used, named in every message that
/// asks for it (docs/membership.md, "A replica that lost its disk").
const REJOIN_PROCEDURE: &str = "do not just empty it and restart: a replica that forgot its \
     votes and acknowledged entries can help elect a leader that lacks acknowledged writes. \
     Instead, with the other replicas forming a majority: remove this replica from the cluster \
     (scaleout cluster remove-replica ID), move the data dir aside, start the replica on an empty \
     one, and add it back (scaleout cluster add-replica ID --api ... --peer ...); it catches up \
     by snapshot (docs/membership.md)";

/// Key of the format marker, in sled's default tree (the one no other part of scaleout uses).
const FORMAT_KEY: &[u8] = b"scaleout/format";

/// Why a replica could not open its data directory. Each message names the directory and the
/// way out, because the operator reads it in a service log at startup.
#[derive(Debug, thiserror::Error)]
pub enum StorageOpenError {
    #[error(
        "cannot open data directory {}: permission denied ({source}); give the user that runs \
         scaleout read and write access to it, or set data_dir to a directory it owns",
        path.display()
    )]
    PermissionDenied { path: PathBuf, source: io::Error },

    #[error(
        "data directory {} is in use by another process ({detail}); stop the other scaleout \
         process using it, or give each replica its own data_dir",
        path.display()
    )]
    Locked { path: PathBuf, detail: String },

    #[error(
        "cannot open data directory {}: {source}; check that the path is a directory on a \
         writable, mounted file system with free space",
        path.display()
    )]
    Io { path: PathBuf, source: io::Error },

    #[error(
        "data directory {} is corrupt or was written by another program: {detail}; \
         {REJOIN_PROCEDURE}",
        path.display()
    )]
    Corrupt { path: PathBuf, detail: String },

    #[error(
        "the state machine store {} is damaged: {detail}; it holds only what this replica's \
         snapshot and log rebuild, so stop the replica, move that directory (only it) aside and \
         start again: the replica rebuilds it from its own snapshot and log",
        path.display()
    )]
    StateMachineCorrupt { path: PathBuf, detail: String },

    #[error(
        "data directory {} holds scaleout data format {found}, but this build reads format \
         {expected}; run a scaleout version that reads format {found}, or bring this replica \
         to the new format as after a lost disk: {REJOIN_PROCEDURE}",
        path.display()
    )]
    UnsupportedFormat {
        path: PathBuf,
        found: u32,
        expected: u32,
    },

    #[error(
        "data directory {} belongs to replica {found}, but this replica's config says id = \
         {expected}; point data_dir at replica {expected}'s own directory",
        path.display()
    )]
    OtherReplica {
        path: PathBuf,
        found: NodeId,
        expected: NodeId,
    },
}

/// A failure while loading stored state, before the path is known to the message.
/// `open_storage` turns it into a [`StorageOpenError`].
#[derive(Debug)]
pub(super) enum LoadError {
    Sled(sled::Error),
    Io(io::Error),
    /// A record that does not decode, or a key that should not be there.
    Corrupt(String),
    /// The directory's format marker names another layout.
    Unsupported(u32),
}

impl From<sled::Error> for LoadError {
    fn from(e: sled::Error) -> Self {
        LoadError::Sled(e)
    }
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Sled(e) => write!(f, "{e}"),
            LoadError::Io(e) => write!(f, "{e}"),
            LoadError::Corrupt(detail) => f.write_str(detail),
            LoadError::Unsupported(found) => write!(f, "data format {found}"),
        }
    }
}

impl LoadError {
    fn at(self, path: &Path) -> StorageOpenError {
        match self {
            LoadError::Sled(e) => sled_open_error(path, e),
            LoadError::Io(e) => io_open_error(path, e),
            LoadError::Corrupt(detail) => StorageOpenError::Corrupt {
                path: path.into(),
                detail,
            },
            LoadError::Unsupported(found) => StorageOpenError::UnsupportedFormat {
                path: path.into(),
                found,
                expected: DATA_FORMAT_VERSION,
            },
        }
    }
}

/// How long opening waits for another holder of the data dir's lock to let go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Who a data directory belongs to: written once, when the directory is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageIdentity {
    pub format: u32,
    pub node_id: NodeId,
    /// Drawn when the directory was created; a wiped directory gets a new one.
    pub storage_id: uuid::Uuid,
}

/// A replica's opened data directory.
pub struct OpenedStorage {
    pub log_store: LogStore,
    pub state_machine: StateMachine,
    pub identity: StorageIdentity,
    /// Nothing was ever stored: no log entry, vote, snapshot or applied state.
    pub pristine: bool,
}

/// Opens (creating it if needed) replica `node_id`'s data directory.
///
/// `cache_capacity_bytes` bounds sled's page cache; sled's own default is 1 GiB, too much for a
/// replica that shares a machine.
pub fn open_storage(
    data_dir: &Path,
    node_id: NodeId,
    cache_capacity_bytes: u64,
) -> Result<OpenedStorage, StorageOpenError> {
    open_storage_with(
        data_dir,
        node_id,
        cache_capacity_bytes,
        DEFAULT_SEGMENT_BYTES,
    )
}

pub(super) fn open_storage_with(
    data_dir: &Path,
    node_id: NodeId,
    cache_capacity_bytes: u64,
    segment_bytes: u64,
) -> Result<OpenedStorage, StorageOpenError> {
    let disk: Arc<dyn Disk> = Arc::new(OsDisk);
    disk.create_dir_all(data_dir)
        .map_err(|e| io_open_error(data_dir, e))?;
    // sled first: its file lock keeps a second process off the whole directory.
    let sled_dir = data_dir.join("sled");
    let raft_dir = data_dir.join("raft");
    // With Raft state present, sled holds only what the snapshot and the log rebuild: a sled
    // that does not open (sled 0.34 never syncs its `conf` file, so a power cut can leave it
    // unreadable) is set aside and rebuilt rather than refused.
    let ours = disk.exists(&raft_dir.join(IDENTITY_FILE));
    let mut db = match open_sled(&sled_dir, cache_capacity_bytes) {
        Err(StorageOpenError::Corrupt { detail, .. }) if ours => {
            set_aside_state_machine(&sled_dir, &detail)?;
            open_sled(&sled_dir, cache_capacity_bytes)?
        }
        other => other?,
    };
    let identity = open_identity(disk.as_ref(), data_dir, &raft_dir, node_id, &db)?;
    let (log_store, recovery) = LogStore::open(disk.clone(), &raft_dir.join("wal"), segment_bytes)
        .map_err(|e| e.at(data_dir))?;
    if recovery.torn_bytes > 0 {
        tracing::warn!(
            torn_bytes = recovery.torn_bytes,
            "the raft log ended in a torn write (a power cut or crash during a write); cut it off: \
             none of it had been acknowledged"
        );
    }
    let snapshots =
        SnapshotStore::open(disk, &raft_dir.join("snapshot")).map_err(|e| e.at(data_dir))?;
    let has_snapshot = snapshots.meta().is_some();
    let state_machine = match StateMachine::open(&db, snapshots.clone(), log_store.clone()) {
        Ok(state_machine) => state_machine,
        Err(LoadError::Corrupt(detail)) => {
            drop(db);
            set_aside_state_machine(&sled_dir, &detail)?;
            db = open_sled(&sled_dir, cache_capacity_bytes)?;
            StateMachine::open(&db, snapshots, log_store.clone()).map_err(|e| match e {
                LoadError::Corrupt(detail) => StorageOpenError::StateMachineCorrupt {
                    path: sled_dir.clone(),
                    detail,
                },
                other => other.at(data_dir),
            })?
        }
        Err(other) => return Err(other.at(data_dir)),
    };
    let pristine = log_store.is_pristine() && !has_snapshot && !state_machine.has_applied();
    Ok(OpenedStorage {
        log_store,
        state_machine,
        identity,
        pristine,
    })
}

/// Makes a restored copy of some replica's data dir this replica's own: for a whole-cluster
/// restore (docs/operations.md), where every host gets the same backup. The identity is
/// rewritten to `node_id` with the storage id that the copy's membership (the last membership
/// entry of its log, else its snapshot's) records for `node_id`, so the restored replicas find
/// each other admitted as before. Returns the new identity.
pub fn adopt_restored_copy(
    data_dir: &Path,
    node_id: NodeId,
) -> Result<StorageIdentity, StorageOpenError> {
    let disk: Arc<dyn Disk> = Arc::new(OsDisk);
    let raft_dir = data_dir.join("raft");
    let corrupt = |detail: String| StorageOpenError::Corrupt {
        path: data_dir.to_path_buf(),
        detail,
    };
    let path = raft_dir.join(IDENTITY_FILE);
    read_identity(disk.as_ref(), data_dir, &path)?;
    let (wal, _) =
        super::wal::Wal::open(disk.clone(), &raft_dir.join("wal"), DEFAULT_SEGMENT_BYTES)
            .map_err(|e| corrupt(e.to_string()))?;
    let mut membership = None;
    for entry in wal.entry_refs(..).iter().rev() {
        let entry = entry.read().map_err(|e| corrupt(e.to_string()))?;
        if let openraft::EntryPayload::Membership(m) = entry.payload {
            membership = Some(m);
            break;
        }
    }
    if membership.is_none() {
        let snapshots = SnapshotStore::open(disk.clone(), &raft_dir.join("snapshot"))
            .map_err(|e| e.at(data_dir))?;
        membership = snapshots
            .meta()
            .map(|meta| meta.last_membership.membership().clone());
    }
    let membership = membership.ok_or_else(|| {
        corrupt("the copy holds no membership (it was never part of a cluster)".into())
    })?;
    let storage_id = membership
        .get_node(&node_id)
        .and_then(|node| node.storage_id)
        .ok_or_else(|| {
            corrupt(format!(
                "the copy's membership does not list replica {node_id}; restore a copy of this \
                 cluster, taken while replica {node_id} was a member"
            ))
        })?;
    let identity = StorageIdentity {
        format: DATA_FORMAT_VERSION,
        node_id,
        storage_id,
    };
    let bytes = serde_json::to_vec_pretty(&identity)
        .map_err(|e| corrupt(format!("cannot encode the identity: {e}")))?;
    disk::write_atomically(disk.as_ref(), &path, &bytes).map_err(|e| io_open_error(data_dir, e))?;
    Ok(identity)
}

/// Reads the identity at `path` and checks its format.
fn read_identity(
    disk: &dyn Disk,
    data_dir: &Path,
    path: &Path,
) -> Result<StorageIdentity, StorageOpenError> {
    let bytes = disk::read_all(disk, path).map_err(|e| io_open_error(data_dir, e))?;
    let identity: StorageIdentity =
        serde_json::from_slice(&bytes).map_err(|e| StorageOpenError::Corrupt {
            path: data_dir.to_path_buf(),
            detail: format!("{} does not parse: {e}", path.display()),
        })?;
    if identity.format != DATA_FORMAT_VERSION {
        return Err(StorageOpenError::UnsupportedFormat {
            path: data_dir.to_path_buf(),
            found: identity.format,
            expected: DATA_FORMAT_VERSION,
        });
    }
    Ok(identity)
}

/// Moves a damaged state machine store to `sled.damaged` (replacing an older one), so the
/// replica starts a new one and rebuilds it from its snapshot and log. The damaged copy stays
/// for a look at what happened.
fn set_aside_state_machine(sled_dir: &Path, detail: &str) -> Result<(), StorageOpenError> {
    let aside = sled_dir.with_file_name("sled.damaged");
    tracing::warn!(
        path = %sled_dir.display(),
        aside = %aside.display(),
        %detail,
        "the state machine store does not open (a power cut can leave sled so); it holds only \
         what the snapshot and the log rebuild: setting it aside and rebuilding it"
    );
    let moved = (|| {
        if aside.exists() {
            std::fs::remove_dir_all(&aside)?;
        }
        std::fs::rename(sled_dir, &aside)
    })();
    moved.map_err(|source| StorageOpenError::Io {
        path: sled_dir.to_path_buf(),
        source,
    })
}

fn open_sled(dir: &Path, cache_capacity_bytes: u64) -> Result<sled::Db, StorageOpenError> {
    // Nothing relies on sled's flushes (see the module docs); its periodic background flush is
    // left as it is.
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(cache_capacity_bytes)
        .mode(sled::Mode::HighThroughput);
    // sled releases its file lock only when its background flusher lets go of the dropped
    // database, a moment after the last handle is gone; a replica restarted in the same process
    // (or a previous process still exiting) would otherwise be refused. Wait for that, briefly.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let db = loop {
        match config.open().map_err(|e| sled_open_error(dir, e)) {
            Err(StorageOpenError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other?,
        }
    };
    check_format(&db).map_err(|e| e.at(dir))?;
    Ok(db)
}

const IDENTITY_FILE: &str = "identity";

/// Reads the directory's identity, or writes a new one (durably, before anything else is written
/// under `raft/`) when the directory holds no Raft state.
fn open_identity(
    disk: &dyn Disk,
    data_dir: &Path,
    raft_dir: &Path,
    node_id: NodeId,
    db: &sled::Db,
) -> Result<StorageIdentity, StorageOpenError> {
    let corrupt = |detail: String| StorageOpenError::Corrupt {
        path: data_dir.to_path_buf(),
        detail,
    };
    let path = raft_dir.join(IDENTITY_FILE);
    if disk.exists(&path) {
        let identity = read_identity(disk, data_dir, &path)?;
        if identity.node_id != node_id {
            return Err(StorageOpenError::OtherReplica {
                path: data_dir.to_path_buf(),
                found: identity.node_id,
                expected: node_id,
            });
        }
        return Ok(identity);
    }
    for sub in ["wal", "snapshot"] {
        let dir = raft_dir.join(sub);
        if disk.exists(&dir)
            && !disk
                .list_files(&dir)
                .map_err(|e| io_open_error(data_dir, e))?
                .is_empty()
        {
            return Err(corrupt(format!(
                "{} holds Raft state but {} is missing",
                dir.display(),
                path.display()
            )));
        }
    }
    let state_machine_rows = db
        .open_tree("sm")
        .map(|tree| tree.len())
        .map_err(|e| sled_open_error(data_dir, e))?;
    if state_machine_rows > 0 {
        return Err(corrupt(format!(
            "the state machine holds data but {} is missing",
            path.display()
        )));
    }
    let identity = StorageIdentity {
        format: DATA_FORMAT_VERSION,
        node_id,
        storage_id: uuid::Uuid::new_v4(),
    };
    let bytes = serde_json::to_vec_pretty(&identity)
        .map_err(|e| corrupt(format!("cannot encode the identity: {e}")))?;
    let write = || -> io::Result<()> {
        disk.create_dir_all(raft_dir)?;
        disk::write_atomically(disk, &path, &bytes)?;
        // The `raft` directory's own name, so the identity cannot vanish with it.
        disk.sync_dir(data_dir)
    };
    write().map_err(|e| io_open_error(data_dir, e))?;
    Ok(identity)
}

/// Checks (or, in a new database, writes) the format marker.
fn check_format(db: &sled::Db) -> Result<(), LoadError> {
    match db.get(FORMAT_KEY)? {
        Some(bytes) => {
            let found = <[u8; 4]>::try_from(bytes.as_ref())
                .map(u32::from_be_bytes)
                .map_err(|_| LoadError::Corrupt("the format marker is not 4 bytes".into()))?;
            if found != DATA_FORMAT_VERSION {
                return Err(LoadError::Unsupported(found));
            }
            Ok(())
        }
        None => {
            // No marker: either a new directory, or a sled database some other program wrote.
            // The latter would otherwise be read as garbage records (or, worse, as an empty
            // replica that then votes), so refuse anything that already holds data.
            let foreign = db.tree_names().iter().any(|name| {
                db.open_tree(name)
                    .map(|tree| !tree.is_empty())
                    .unwrap_or(true)
            });
            if foreign {
                return Err(LoadError::Corrupt(
                    "it holds a sled database without scaleout's format marker".into(),
                ));
            }
            db.insert(FORMAT_KEY, &DATA_FORMAT_VERSION.to_be_bytes())?;
            Ok(())
        }
    }
}

fn io_open_error(path: &Path, source: io::Error) -> StorageOpenError {
    let path = path.to_path_buf();
    if source.kind() == io::ErrorKind::PermissionDenied {
        StorageOpenError::PermissionDenied { path, source }
    } else {
        StorageOpenError::Io { path, source }
    }
}

fn sled_open_error(path: &Path, e: sled::Error) -> StorageOpenError {
    let path = path.to_path_buf();
    match e {
        sled::Error::Io(source) if source.kind() == io::ErrorKind::PermissionDenied => {
            StorageOpenError::PermissionDenied { path, source }
        }
        // sled reports a held file lock as a generic IO error whose message says so.
        sled::Error::Io(source) if source.to_string().contains("could not acquire lock") => {
            StorageOpenError::Locked {
                path,
                detail: source.to_string(),
            }
        }
        sled::Error::Io(source) => StorageOpenError::Io { path, source },
        sled::Error::Corruption { at, .. } => StorageOpenError::Corrupt {
            path,
            detail: match at {
                Some(at) => format!("sled found a damaged record at {at:?}"),
                None => "sled found a damaged record".into(),
            },
        },
        // Unsupported (e.g. a sled config that differs from the one the files were written
        // with), ReportableBug, CollectionNotFound: the files are not what this build expects.
        other => StorageOpenError::Corrupt {
            path,
            detail: other.to_string(),
        },
    }
}

/// Encodes a stored record. One encoding (bincode 1, its default fixed-int options) everywhere,
/// so a record written by one part is read the same way by any other.
pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    bincode::serialize(value)
}

/// Decodes a stored record. Decoding from a slice never allocates more than the slice holds, so
/// a damaged length prefix is an error, not an out-of-memory abort.
pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    bincode::deserialize(bytes)
}

/// Decodes a record while loading, describing a failure as corruption of `what`.
pub(super) fn decode_loaded<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, LoadError> {
    decode(bytes).map_err(|e| LoadError::Corrupt(format!("{what} does not decode: {e}")))
}
