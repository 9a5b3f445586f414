//! Opening a replica's data directory: one sled database that holds the Raft log and Raft
//! metadata ([`LogStore`]) and the replicated queue and its snapshot ([`StateMachine`]).
//!
//! Both halves share one `sled::Db` on purpose. sled recovers, after a crash, a prefix of the
//! writes made to a database (across all its trees), and one `flush` makes everything written
//! before it durable. So the log store's flush after an append also persists the state machine's
//! earlier writes, and the state machine never needs a flush of its own (see `state_machine.rs`).
//!
//! Everything stored is checked while opening: a damaged or foreign record is reported as a
//! [`StorageOpenError`] naming the directory and what to do, never as a panic or as a Raft
//! failure later on.

use std::io;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{LogStore, StateMachine};

/// The layout of the data directory this build writes and reads. Bump it when a tree, a key or an
/// encoded record changes shape, and teach [`open_storage`] to migrate or refuse the old one.
pub const DATA_FORMAT_VERSION: u32 = 3;

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
        "data directory {} is corrupt or was written by another program: {detail}; move it \
         aside and restart: the replica rejoins empty and catches up from its peers by snapshot \
         (only do this while the other replicas form a majority)",
        path.display()
    )]
    Corrupt { path: PathBuf, detail: String },

    #[error(
        "data directory {} holds scaleout data format {found}, but this build reads format \
         {expected}; run a scaleout version that reads format {found}, or move the directory \
         aside and let the replica catch up from its peers by snapshot",
        path.display()
    )]
    UnsupportedFormat {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
}

/// A failure while loading stored state, before the path is known to the message.
/// `open_storage` turns it into a [`StorageOpenError`].
#[derive(Debug)]
pub(super) enum LoadError {
    Sled(sled::Error),
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

impl LoadError {
    fn at(self, path: &Path) -> StorageOpenError {
        match self {
            LoadError::Sled(e) => sled_open_error(path, e),
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

/// The database, with every flush serialized: sled 0.34's `flush_async` can deadlock when
/// called concurrently (spacejam/sled#1308), and the log store, the snapshot builder and snapshot
/// install all flush from different tasks.
#[derive(Clone)]
pub(super) struct DurableDb {
    db: sled::Db,
    flush_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl DurableDb {
    /// Makes every write made so far durable.
    pub(super) async fn flush_async(&self) -> sled::Result<usize> {
        let _one_at_a_time = self.flush_lock.lock().await;
        self.db.flush_async().await
    }
}

impl std::ops::Deref for DurableDb {
    type Target = sled::Db;

    fn deref(&self) -> &sled::Db {
        &self.db
    }
}

/// How long opening waits for another holder of the data dir's lock to let go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens (creating it if needed) the sled database in `dir` and loads the log store and the state
/// machine from it.
///
/// `cache_capacity_bytes` bounds sled's page cache; sled's own default is 1 GiB, too much for a
/// replica that shares a machine.
pub fn open_storage(
    dir: &Path,
    cache_capacity_bytes: u64,
) -> Result<(LogStore, StateMachine), StorageOpenError> {
    // Durability comes from explicit `flush_async` calls (log appends, votes, snapshots); sled's
    // periodic background flush (`flush_every_ms`, default 500 ms) is left as it is but nothing
    // relies on it.
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
    let db = DurableDb {
        db,
        flush_lock: std::sync::Arc::default(),
    };
    let log_store = LogStore::open(&db).map_err(|e| e.at(dir))?;
    let state_machine = StateMachine::open(&db).map_err(|e| e.at(dir))?;
    Ok((log_store, state_machine))
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
            // Written before any other record: sled recovers a prefix of writes, so any data
            // found later implies the marker.
            db.insert(FORMAT_KEY, &DATA_FORMAT_VERSION.to_be_bytes())?;
            Ok(())
        }
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
