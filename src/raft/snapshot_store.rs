//! The current snapshot, as one file written through the [`Disk`] interface, and the files a
//! snapshot is built or received into before it becomes the current one.
//!
//! `<dir>/current.snap` (file format 2): 12 bytes of magic, the file format (u32 BE), the
//! snapshot data, the encoded [`SnapshotMeta`], the meta's length (u32 BE) and a CRC-32 (u32 LE)
//! of the meta. The data carries its own checksum (`snapshot_data.rs`), checked by whoever reads
//! it whole: a replica installing it, or a replica rebuilding its state from it. The meta goes
//! last so that the data can be streamed into the file before the meta is known (a received
//! snapshot) without copying it again.
//!
//! A snapshot is written into `<dir>/<random>.part` (header first, then the data as it comes),
//! then [`SnapshotStore::commit`] appends the meta, syncs the file, renames it over
//! `current.snap` and syncs the directory: after a power cut the replica finds either the old
//! snapshot or the new one, and a snapshot is durable before openraft purges the log it replaces.
//! Part files left by a crash are removed at open.
//!
//! File format 1 (meta first, data, CRC-32 of the whole file) is still read, whole, at open.
//!
//! The snapshot is the durable base of the state machine: the sled `sm` tree is rewritten from it
//! when it is behind (see `state_machine.rs`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::snapshot_file::SnapshotFile;
use super::storage::{decode, encode, LoadError};
use super::SnapshotMeta;
use crate::disk::{self, Disk, DiskFile, OpenMode};

const MAGIC: &[u8; 12] = b"SCALEOUT-SNP";
const FILE_FORMAT: u32 = 2;
/// Magic and file format.
const HEADER_LEN: u64 = 16;
/// The meta's length and CRC.
const TRAILER_LEN: u64 = 8;
const FILE_NAME: &str = "current.snap";
const PART_SUFFIX: &str = ".part";

/// The snapshot file of one replica. Clones share the file and what is known of it.
#[derive(Clone)]
pub(super) struct SnapshotStore {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    /// The meta of the stored snapshot; also serializes commits.
    current: Arc<Mutex<Option<SnapshotMeta>>>,
}

impl SnapshotStore {
    /// Opens the store in `dir` (creating the directory), checks the stored snapshot's header
    /// and meta, and removes unfinished part files.
    pub(super) fn open(disk: Arc<dyn Disk>, dir: &Path) -> Result<Self, LoadError> {
        disk.create_dir_all(dir).map_err(LoadError::Io)?;
        for name in disk.list_files(dir).map_err(LoadError::Io)? {
            if name.ends_with(PART_SUFFIX) {
                disk.remove_file(&dir.join(&name)).map_err(LoadError::Io)?;
            }
        }
        let store = SnapshotStore {
            disk,
            dir: dir.to_path_buf(),
            current: Arc::default(),
        };
        if let Some((meta, _)) = store.reader()? {
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

    /// The stored snapshot: its meta and its data, to be read in place.
    pub(super) fn reader(&self) -> Result<Option<(SnapshotMeta, SnapshotFile)>, LoadError> {
        let path = self.path();
        if !self.disk.exists(&path) {
            return Ok(None);
        }
        let file = self
            .disk
            .open(&path, OpenMode::Existing)
            .map_err(LoadError::Io)?;
        locate(file)
            .map(Some)
            .map_err(|e| LoadError::Corrupt(format!("the snapshot {}: {e}", path.display())))
    }

    /// A new part file to write a snapshot's data into; removed unless committed.
    pub(super) fn create_part(&self) -> Result<SnapshotFile, String> {
        let nonce: u64 = rand::random();
        let path = self.dir.join(format!("{nonce:016x}{PART_SUFFIX}"));
        let file = self
            .disk
            .open(&path, OpenMode::CreateTruncate)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&FILE_FORMAT.to_be_bytes());
        file.write_all_at(&header, 0)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(SnapshotFile::part(
            self.disk.clone(),
            path,
            file,
            HEADER_LEN,
        ))
    }

    /// Makes the part `data` (written through [`SnapshotStore::create_part`]) the current
    /// snapshot, durably. With `only_if_newer`, one older than the stored snapshot is not stored
    /// (a build that finished after a newer install): the current snapshot never goes backwards.
    /// Returns whether it was stored; either way `data` is then the finished data, read from its
    /// start. Blocking disk work.
    pub(super) fn commit(
        &self,
        data: &mut SnapshotFile,
        meta: &SnapshotMeta,
        only_if_newer: bool,
    ) -> Result<bool, String> {
        let part = data
            .part_path()
            .cloned()
            .ok_or("the snapshot data is not a part file of this store")?;
        let len = data
            .data_len()
            .map_err(|e| format!("cannot read the length of {}: {e}", part.display()))?;
        let mut current = self.lock();
        if only_if_newer
            && current
                .as_ref()
                .is_some_and(|stored| stored.last_log_id > meta.last_log_id)
        {
            if let Err(error) = self.disk.remove_file(&part) {
                tracing::warn!(path = %part.display(), %error, "cannot remove a snapshot file older than the current one");
            }
            data.seal(len);
            return Ok(false);
        }
        let meta_bytes =
            encode(meta).map_err(|e| format!("cannot encode the snapshot meta: {e}"))?;
        let mut trailer = meta_bytes.clone();
        trailer.extend_from_slice(&(meta_bytes.len() as u32).to_be_bytes());
        trailer.extend_from_slice(&crc32fast::hash(&meta_bytes).to_le_bytes());
        let (file, base) = data.file();
        let stored = file.write_all_at(&trailer, base + len).and_then(|()| {
            disk::replace_with(self.disk.as_ref(), file.as_ref(), &part, &self.path())
        });
        stored.map_err(|e| {
            format!(
                "cannot store the snapshot in {}: {e}",
                self.path().display()
            )
        })?;
        data.seal(len);
        *current = Some(meta.clone());
        Ok(true)
    }

    /// Stores `data` as the snapshot `meta` (see [`SnapshotStore::commit`]).
    #[cfg(test)]
    pub(super) fn save(
        &self,
        meta: &SnapshotMeta,
        data: &[u8],
        only_if_newer: bool,
    ) -> Result<bool, String> {
        use std::io::Write;
        let mut part = self.create_part()?;
        part.write_all(data).map_err(|e| e.to_string())?;
        self.commit(&mut part, meta, only_if_newer)
    }
}

/// Reads a snapshot file's meta and finds its data.
fn locate(file: Arc<dyn DiskFile>) -> Result<(SnapshotMeta, SnapshotFile), String> {
    let len = file.len().map_err(|e| e.to_string())?;
    let mut header = [0; HEADER_LEN as usize];
    if len < HEADER_LEN {
        return Err("the file is too short".into());
    }
    file.read_exact_at(&mut header, 0)
        .map_err(|e| e.to_string())?;
    let (magic, format) = header.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err("it is not a scaleout snapshot file".into());
    }
    let format = u32::from_be_bytes(format.try_into().map_err(|_| "a short header")?);
    match format {
        FILE_FORMAT => {
            if len < HEADER_LEN + TRAILER_LEN {
                return Err("the file is too short".into());
            }
            let mut trailer = [0; TRAILER_LEN as usize];
            file.read_exact_at(&mut trailer, len - TRAILER_LEN)
                .map_err(|e| e.to_string())?;
            let (meta_len, crc) = trailer.split_at(4);
            let meta_len = u64::from(u32::from_be_bytes(
                meta_len.try_into().map_err(|_| "a short trailer")?,
            ));
            let crc = u32::from_le_bytes(crc.try_into().map_err(|_| "a short trailer")?);
            if meta_len > len - HEADER_LEN - TRAILER_LEN {
                return Err("its meta runs past the start of the file".into());
            }
            let meta_at = len - TRAILER_LEN - meta_len;
            let mut meta = vec![0; meta_len as usize];
            file.read_exact_at(&mut meta, meta_at)
                .map_err(|e| e.to_string())?;
            if crc32fast::hash(&meta) != crc {
                return Err("its meta's checksum does not match (a damaged file)".into());
            }
            let meta = decode(&meta).map_err(|e| format!("its meta does not decode: {e}"))?;
            Ok((
                meta,
                SnapshotFile::finished(file, HEADER_LEN, meta_at - HEADER_LEN),
            ))
        }
        1 => locate_format_1(file, len),
        other => Err(format!(
            "it is in snapshot file format {other}, this build reads 1 and {FILE_FORMAT}"
        )),
    }
}

/// File format 1: magic, format, meta length (u32 BE), meta, data, CRC-32 of all before it.
/// Checked whole: such files are small (they come from builds that held snapshots in memory).
fn locate_format_1(
    file: Arc<dyn DiskFile>,
    len: u64,
) -> Result<(SnapshotMeta, SnapshotFile), String> {
    let mut bytes = vec![0; usize::try_from(len).map_err(|_| "the file is too large")?];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| e.to_string())?;
    let (body, crc) = bytes
        .split_last_chunk::<4>()
        .ok_or("the file is too short")?;
    if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
        return Err("its checksum does not match (a damaged file)".into());
    }
    let rest = &body[HEADER_LEN as usize..];
    let (meta_len, rest) = rest
        .split_first_chunk::<4>()
        .ok_or("the file is too short")?;
    let meta_len = u32::from_be_bytes(*meta_len) as usize;
    if meta_len > rest.len() {
        return Err("its meta runs past the end of the file".into());
    }
    let meta = decode(&rest[..meta_len]).map_err(|e| format!("its meta does not decode: {e}"))?;
    let data_at = HEADER_LEN + 4 + meta_len as u64;
    Ok((
        meta,
        SnapshotFile::finished(file, data_at, len - 4 - data_at),
    ))
}

/// Writes a snapshot file in format 1, as builds before file format 2 did.
#[cfg(test)]
pub(super) fn write_format_1(
    disk: &dyn Disk,
    dir: &Path,
    meta: &SnapshotMeta,
    data: &[u8],
) -> std::io::Result<()> {
    let meta_bytes = encode(meta).map_err(std::io::Error::other)?;
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&1u32.to_be_bytes());
    bytes.extend_from_slice(&(meta_bytes.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&meta_bytes);
    bytes.extend_from_slice(data);
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    disk.create_dir_all(dir)?;
    crate::disk::write_atomically(disk, &dir.join(FILE_NAME), &bytes)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::raft::sim_disk::SimDisk;
    use crate::raft::LogId;
    use openraft::CommittedLeaderId;

    const DIR: &str = "/data/raft/snapshot";

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
            last_membership: Default::default(),
            snapshot_id: format!("s{index}"),
        }
    }

    fn data_of(store: &SnapshotStore) -> Vec<u8> {
        let (_, mut data) = store.reader().unwrap().unwrap();
        let mut bytes = Vec::new();
        data.read_to_end(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn a_committed_snapshot_reads_back_and_never_goes_back() {
        let disk: Arc<dyn Disk> = Arc::new(SimDisk::default());
        let store = SnapshotStore::open(disk.clone(), Path::new(DIR)).unwrap();
        assert!(store.reader().unwrap().is_none());
        assert!(store.save(&meta(5), b"five", true).unwrap());
        assert!(!store.save(&meta(3), b"three", true).unwrap());
        assert_eq!(store.meta(), Some(meta(5)));
        assert_eq!(data_of(&store), b"five");
        // An install may go back (openraft decides); a build may not.
        assert!(store.save(&meta(4), b"four", false).unwrap());
        let reopened = SnapshotStore::open(disk.clone(), Path::new(DIR)).unwrap();
        assert_eq!(reopened.meta(), Some(meta(4)));
        assert_eq!(data_of(&reopened), b"four");
        assert_eq!(disk.list_files(Path::new(DIR)).unwrap(), vec![FILE_NAME]);
    }

    #[test]
    fn unfinished_parts_go_at_open_or_when_dropped() {
        let disk: Arc<dyn Disk> = Arc::new(SimDisk::default());
        let store = SnapshotStore::open(disk.clone(), Path::new(DIR)).unwrap();
        let dropped = store.create_part().unwrap();
        let left = store.create_part().unwrap();
        assert_eq!(disk.list_files(Path::new(DIR)).unwrap().len(), 2);
        drop(dropped);
        assert_eq!(disk.list_files(Path::new(DIR)).unwrap().len(), 1);
        // A crash leaves it: the next open removes it.
        std::mem::forget(left);
        SnapshotStore::open(disk.clone(), Path::new(DIR)).unwrap();
        assert!(disk.list_files(Path::new(DIR)).unwrap().is_empty());
    }

    /// A snapshot being written is synced as it goes, not only at the end: one `fdatasync` of
    /// hundreds of MiB would hold up the log's syncs on the same disk.
    #[test]
    fn a_part_file_is_synced_every_sync_every_bytes() {
        use crate::raft::snapshot_file::SYNC_EVERY;
        use std::io::Write;
        let sim = Arc::new(SimDisk::default());
        let store = SnapshotStore::open(sim.clone(), Path::new(DIR)).unwrap();
        let mut part = store.create_part().unwrap();
        let chunk = vec![7u8; 1 << 20];
        let before = sim.data_syncs();
        let mut written = 0;
        while written <= 2 * SYNC_EVERY {
            part.write_all(&chunk).unwrap();
            written += chunk.len() as u64;
        }
        assert_eq!(sim.data_syncs() - before, 2, "{written} bytes written");
        assert!(store.commit(&mut part, &meta(1), true).unwrap());
        assert_eq!(sim.data_syncs() - before, 3, "and once more at commit");
    }

    #[test]
    fn a_file_in_format_1_is_still_read() {
        let disk: Arc<dyn Disk> = Arc::new(SimDisk::default());
        write_format_1(disk.as_ref(), Path::new(DIR), &meta(9), b"old data").unwrap();
        let store = SnapshotStore::open(disk.clone(), Path::new(DIR)).unwrap();
        assert_eq!(store.meta(), Some(meta(9)));
        assert_eq!(data_of(&store), b"old data");

        // Damage anywhere in it is found at open.
        let path = Path::new(DIR).join(FILE_NAME);
        let file = disk.open(&path, OpenMode::Existing).unwrap();
        file.write_all_at(b"X", file.len().unwrap() - 6).unwrap();
        let refused = SnapshotStore::open(disk.clone(), Path::new(DIR))
            .err()
            .expect("a damaged file is refused");
        assert!(refused.to_string().contains("checksum"), "{refused}");
    }
}
