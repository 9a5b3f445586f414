//! The current snapshot, as one file written through the [`Disk`] interface.
//!
//! `<dir>/current.snap`: 12 bytes of magic, the format (u32 BE), the length of the encoded
//! [`SnapshotMeta`] (u32 BE), the meta, the snapshot data, and a CRC-32 (u32 LE) of everything
//! before it. It is replaced atomically (temporary file, `fdatasync`, rename, `fsync` of the
//! directory), so after a power cut the replica finds either the old snapshot or the new one, and
//! a snapshot is durable before openraft purges the log it replaces.
//!
//! The snapshot is the durable base of the state machine: the sled `sm` tree is rewritten from it
//! when it is behind (see `state_machine.rs`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::disk::{self, Disk};
use super::storage::{decode, encode, LoadError};
use super::SnapshotMeta;

const MAGIC: &[u8; 12] = b"SCALEOUT-SNP";
const FILE_FORMAT: u32 = 1;
const FILE_NAME: &str = "current.snap";

/// The snapshot file of one replica. Clones share the file and what is known of it.
#[derive(Clone)]
pub(super) struct SnapshotStore {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    /// The meta of the stored snapshot; also serializes saves.
    current: Arc<Mutex<Option<SnapshotMeta>>>,
}

impl SnapshotStore {
    /// Opens the store in `dir` (creating the directory) and checks the stored snapshot whole.
    pub(super) fn open(disk: Arc<dyn Disk>, dir: &Path) -> Result<Self, LoadError> {
        disk.create_dir_all(dir).map_err(LoadError::Io)?;
        let store = SnapshotStore {
            disk,
            dir: dir.to_path_buf(),
            current: Arc::default(),
        };
        if let Some((meta, _)) = store.read()? {
            *store.lock() = Some(meta);
        }
        Ok(store)
    }

    fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<SnapshotMeta>> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The meta of the stored snapshot, if any.
    pub(super) fn meta(&self) -> Option<SnapshotMeta> {
        self.lock().clone()
    }

    /// Reads and checks the stored snapshot.
    pub(super) fn read(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, LoadError> {
        let path = self.path();
        if !self.disk.exists(&path) {
            return Ok(None);
        }
        let bytes = disk::read_all(self.disk.as_ref(), &path).map_err(LoadError::Io)?;
        parse(&bytes)
            .map(Some)
            .map_err(|e| LoadError::Corrupt(format!("the snapshot {}: {e}", path.display())))
    }

    /// Stores a snapshot durably as the current one. With `only_if_newer`, one older than the
    /// stored snapshot is not stored (a build that finished after a newer install): the current
    /// snapshot never goes backwards. Returns whether it was stored. Blocking disk work.
    pub(super) fn save(
        &self,
        meta: &SnapshotMeta,
        data: &[u8],
        only_if_newer: bool,
    ) -> Result<bool, String> {
        let mut current = self.lock();
        if only_if_newer
            && current
                .as_ref()
                .is_some_and(|stored| stored.last_log_id > meta.last_log_id)
        {
            return Ok(false);
        }
        let meta_bytes =
            encode(meta).map_err(|e| format!("cannot encode the snapshot meta: {e}"))?;
        let mut bytes = Vec::with_capacity(24 + meta_bytes.len() + data.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&FILE_FORMAT.to_be_bytes());
        bytes.extend_from_slice(&(meta_bytes.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&meta_bytes);
        bytes.extend_from_slice(data);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        disk::write_atomically(self.disk.as_ref(), &self.path(), &bytes).map_err(|e| {
            format!(
                "cannot store the snapshot in {}: {e}",
                self.path().display()
            )
        })?;
        *current = Some(meta.clone());
        Ok(true)
    }
}

fn parse(bytes: &[u8]) -> Result<(SnapshotMeta, Vec<u8>), String> {
    let (body, crc) = bytes
        .split_last_chunk::<4>()
        .ok_or("the file is too short")?;
    if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
        return Err("its checksum does not match (a damaged file)".into());
    }
    let rest = body
        .strip_prefix(MAGIC.as_slice())
        .ok_or("it is not a scaleout snapshot file")?;
    let (format, rest) = rest
        .split_first_chunk::<4>()
        .ok_or("the file is too short")?;
    let format = u32::from_be_bytes(*format);
    if format != FILE_FORMAT {
        return Err(format!(
            "it is in snapshot file format {format}, this build reads {FILE_FORMAT}"
        ));
    }
    let (meta_len, rest) = rest
        .split_first_chunk::<4>()
        .ok_or("the file is too short")?;
    let meta_len = u32::from_be_bytes(*meta_len) as usize;
    if meta_len > rest.len() {
        return Err("its meta runs past the end of the file".into());
    }
    let (meta, data) = rest.split_at(meta_len);
    let meta = decode(meta).map_err(|e| format!("its meta does not decode: {e}"))?;
    Ok((meta, data.to_vec()))
}
