//! A snapshot's data as openraft moves it: a window of a file on the [`Disk`], read and written
//! in place at a cursor. A snapshot is built into a file, sent chunk by chunk from it, received
//! chunk by chunk into a file and installed from there: no side holds it whole in memory.
//!
//! The file operations are positioned reads and writes run inline (the chunks are a few MiB
//! and land in the page cache); the async traits openraft needs are thin wrappers around the
//! blocking ones. A file being written is synced every [`SYNC_EVERY`] bytes, so a snapshot of
//! hundreds of MiB never piles up that much dirty data for one `fdatasync` to push out while the
//! log waits behind it on the same disk.

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use crate::disk::{Disk, DiskFile};

/// A file being written is synced after this many bytes.
pub const SYNC_EVERY: u64 = 16 * 1024 * 1024;

/// A snapshot's data: bytes `base..` of a file (the store's header comes before them).
pub struct SnapshotFile {
    file: Arc<dyn DiskFile>,
    base: u64,
    /// The data's length, for a finished snapshot; while one is written, the file's.
    len: Option<u64>,
    pos: u64,
    /// A temporary file not yet made the current snapshot: removed if dropped as such (a build
    /// that failed, a transfer that was abandoned).
    part: Option<(Arc<dyn Disk>, PathBuf)>,
    unsynced: u64,
}

impl fmt::Debug for SnapshotFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotFile")
            .field("base", &self.base)
            .field("len", &self.len)
            .field("pos", &self.pos)
            .field("part", &self.part.as_ref().map(|(_, path)| path))
            .finish()
    }
}

impl SnapshotFile {
    /// The data of a finished snapshot: `len` bytes from `base`.
    pub(super) fn finished(file: Arc<dyn DiskFile>, base: u64, len: u64) -> Self {
        SnapshotFile {
            file,
            base,
            len: Some(len),
            pos: 0,
            part: None,
            unsynced: 0,
        }
    }

    /// A temporary file at `path` to write data into from `base` on.
    pub(super) fn part(
        disk: Arc<dyn Disk>,
        path: PathBuf,
        file: Arc<dyn DiskFile>,
        base: u64,
    ) -> Self {
        SnapshotFile {
            file,
            base,
            len: None,
            pos: 0,
            part: Some((disk, path)),
            unsynced: 0,
        }
    }

    /// How many bytes of data there are.
    pub fn data_len(&self) -> io::Result<u64> {
        match self.len {
            Some(len) => Ok(len),
            None => Ok(self.file.len()?.saturating_sub(self.base)),
        }
    }

    /// The underlying file and where the data starts in it.
    pub(super) fn file(&self) -> (&Arc<dyn DiskFile>, u64) {
        (&self.file, self.base)
    }

    /// The temporary file's path, while this is one.
    pub(super) fn part_path(&self) -> Option<&PathBuf> {
        self.part.as_ref().map(|(_, path)| path)
    }

    /// Marks the data finished at its current length (the part file was made the current
    /// snapshot, or removed): reads see exactly the data, and dropping removes nothing.
    pub(super) fn seal(&mut self, len: u64) {
        self.len = Some(len);
        self.part = None;
        self.pos = 0;
    }
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        if let Some((disk, path)) = self.part.take() {
            if let Err(error) = disk.remove_file(&path) {
                tracing::warn!(path = %path.display(), %error, "cannot remove an unfinished snapshot file");
            }
        }
    }
}

impl Read for SnapshotFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.data_len()?.saturating_sub(self.pos);
        let n = usize::try_from(left).map_or(buf.len(), |left| left.min(buf.len()));
        if n == 0 {
            return Ok(0);
        }
        self.file
            .read_exact_at(&mut buf[..n], self.base + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for SnapshotFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.len.is_some() {
            return Err(io::Error::other("a finished snapshot is not written to"));
        }
        self.file.write_all_at(buf, self.base + self.pos)?;
        self.pos += buf.len() as u64;
        self.unsynced += buf.len() as u64;
        if self.unsynced >= SYNC_EVERY {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for SnapshotFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.data_len()?.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.pos.checked_add_signed(delta),
        };
        self.pos = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "a seek before the start of the snapshot data",
            )
        })?;
        Ok(self.pos)
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = this.read(buf.initialize_unfilled())?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(self.get_mut().write(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(self: Pin<&mut Self>, to: SeekFrom) -> io::Result<()> {
        self.get_mut().seek(to).map(|_| ())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}
