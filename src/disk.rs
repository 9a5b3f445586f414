//! The narrow interface through which every write that must survive a power cut reaches the
//! disk: Raft's write-ahead log (entries, votes), the snapshot files and the replica's identity,
//! and the small state files of replicas and workers ([`write_atomically`]).
//!
//! Durability here means an fsync-family call has returned: [`DiskFile::sync_data`] is
//! `fdatasync(2)` on the file, and [`Disk::sync_dir`] is `fsync(2)` on a directory, which is what
//! makes a created, renamed or removed name durable. Nothing is assumed about writes that were
//! not followed by one of those: after a power cut they may be gone, partly written, or there.
//!
//! Going through one trait lets the tests swap in a simulated disk (`raft/sim_disk.rs`) that loses
//! exactly what a power cut may lose, at any point of any sequence of operations, and check that
//! everything acknowledged is still there. Not here: the state machine's sled database, which
//! holds only what can be rebuilt from the snapshot and the log (see `storage.rs`).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A file opened through a [`Disk`]. Positioned reads and writes only, so clones of the handle
/// can be used from several threads without a shared cursor.
#[allow(clippy::len_without_is_empty)] // a file's length is read for offsets, never as a test
pub trait DiskFile: Send + Sync {
    /// The current length, including writes not yet synced.
    fn len(&self) -> io::Result<u64>;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `data` at `offset`. Not durable until [`DiskFile::sync_data`] returns.
    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Cuts or extends (with zeros) the file. Not durable until [`DiskFile::sync_data`].
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes every earlier write and length change of this file durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
}

/// How [`Disk::open`] treats an existing or missing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// The file must exist.
    Existing,
    /// Create it, or empty it if it exists.
    CreateTruncate,
}

/// A file system as far as the durable storage needs one.
pub trait Disk: Send + Sync + fmt::Debug {
    /// Creates `dir` and its missing parents. The new names are durable once the parent of each
    /// is synced ([`Disk::sync_dir`]); callers that rely on them do that.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Whether `path` names a file or directory.
    fn exists(&self, path: &Path) -> bool;
    /// The names of the regular files directly in `dir`, sorted.
    fn list_files(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn DiskFile>>;
    /// Renames atomically, replacing `to`. Durable after [`Disk::sync_dir`] of the directory.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file. Durable after [`Disk::sync_dir`] of its directory.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the names in `dir` (created, renamed, removed) durable (`fsync` on the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// Reads a whole file.
pub fn read_all(disk: &dyn Disk, path: &Path) -> io::Result<Vec<u8>> {
    let file = disk.open(path, OpenMode::Existing)?;
    let len = usize::try_from(file.len()?)
        .map_err(|_| io::Error::other(format!("{} is too large to read", path.display())))?;
    let mut bytes = vec![0; len];
    file.read_exact_at(&mut bytes, 0)?;
    Ok(bytes)
}

/// Replaces the file at `path` with `bytes` so that a power cut leaves either the old content or
/// the new one, never a mix: write a temporary file, sync it, rename it over, sync the directory.
pub fn write_atomically(disk: &dyn Disk, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let file = disk.open(&tmp, OpenMode::CreateTruncate)?;
    file.write_all_at(bytes, 0)?;
    replace_with(disk, file.as_ref(), &tmp, path)
}

/// Makes `file`, written in full at `written`, durably the file at `path`: syncs its data,
/// renames it over `path` and syncs the directory, so a power cut leaves either the old file or
/// this one, complete.
pub fn replace_with(
    disk: &dyn Disk,
    file: &dyn DiskFile,
    written: &Path,
    path: &Path,
) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no directory", path.display())))?;
    file.sync_data()?;
    disk.rename(written, path)?;
    disk.sync_dir(dir)
}

/// The real file system: `pread`/`pwrite`, `fdatasync` on files and `fsync` on directories.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsDisk;

struct OsFile(File);

impl DiskFile for OsFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl Disk for OsDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn list_files(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for item in std::fs::read_dir(dir)? {
            let item = item?;
            if item.file_type()?.is_file() {
                names.push(item.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn DiskFile>> {
        let file = match mode {
            OpenMode::Existing => OpenOptions::new().read(true).write(true).open(path)?,
            OpenMode::CreateTruncate => OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)?,
        };
        Ok(Arc::new(OsFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}
