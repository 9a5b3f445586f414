//! The file system's contents: inodes, each regular file's current and durable bytes and the
//! changes between them, and the operations fuser's calls come down to.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use fuser::{Errno, FileAttr, FileType, INodeNo, Request, TimeOrNow};
use rand::rngs::StdRng;
use rand::Rng;

use super::{BLOCK_SIZE, MAX_FILE_SIZE, RECORD_AT_LEAST, ROOT};

pub(super) fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug)]
pub(super) enum Change {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

impl Change {
    /// What keeping it costs, for the bound on a file's record.
    pub(super) fn cost(&self) -> u64 {
        let bytes = match self {
            Change::Write { bytes, .. } => bytes.len(),
            Change::SetLen(_) => 0,
        };
        (bytes + std::mem::size_of::<Change>()) as u64
    }
}

/// Callers check `offset + bytes.len() <= MAX_FILE_SIZE` first, so the casts cannot truncate.
pub(super) fn apply_write(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let start = offset as usize;
    let end = start + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[start..end].copy_from_slice(bytes);
}

pub(super) fn apply(data: &mut Vec<u8>, change: &Change) {
    match change {
        Change::Write { offset, bytes } => apply_write(data, *offset, bytes),
        Change::SetLen(len) => data.resize(*len as usize, 0),
    }
}

/// A regular file's two images and the changes between them.
#[derive(Debug, Default)]
pub(super) struct FileData {
    pub(super) current: Vec<u8>,
    pub(super) durable: Vec<u8>,
    /// The changes since the last sync, oldest first; while `collapsed`, only the first.
    pub(super) pending: Vec<Change>,
    /// Bytes written since the last sync: what a cut loses.
    pub(super) unsynced_bytes: u64,
    /// What `pending` costs (see [`Change::cost`]).
    pub(super) recorded: u64,
    /// The record grew past the file's length and was dropped: the next sync copies `current`.
    pub(super) collapsed: bool,
}

impl FileData {
    pub(super) fn write(&mut self, offset: u64, bytes: &[u8]) {
        apply_write(&mut self.current, offset, bytes);
        self.unsynced_bytes += bytes.len() as u64;
        if !self.collapsed {
            self.record(Change::Write {
                offset,
                bytes: bytes.to_vec(),
            });
        }
    }

    pub(super) fn set_len(&mut self, len: u64) {
        if len == self.current.len() as u64 {
            return;
        }
        self.current.resize(len as usize, 0);
        if !self.collapsed {
            self.record(Change::SetLen(len));
        }
    }

    pub(super) fn record(&mut self, change: Change) {
        self.recorded += change.cost();
        self.pending.push(change);
        if self.recorded > RECORD_AT_LEAST.max(self.current.len() as u64) {
            // The first change stays: a torn write may keep part of it.
            self.pending.truncate(1);
            self.collapsed = true;
        }
    }

    pub(super) fn sync(&mut self) {
        if self.collapsed {
            self.durable.clone_from(&self.current);
        } else {
            for change in &self.pending {
                apply(&mut self.durable, change);
            }
        }
        self.clear_record();
    }

    /// Goes back to the durable image (plus, with `rng`, maybe part of the first unsynced
    /// write); returns the bytes lost, or `None` when nothing was unsynced.
    pub(super) fn cut(&mut self, rng: Option<&mut StdRng>) -> Option<u64> {
        if self.pending.is_empty() {
            return None;
        }
        let mut kept = 0;
        if let (Some(rng), Some(Change::Write { offset, bytes })) = (rng, self.pending.first()) {
            // Nothing, all of it, or a prefix, each a third of the time: the whole first write
            // surviving is as interesting as a torn one.
            kept = match rng.gen_range(0..3) {
                0 => 0,
                1 => bytes.len(),
                _ => rng.gen_range(0..=bytes.len()),
            };
            if kept > 0 {
                apply_write(&mut self.durable, *offset, &bytes[..kept]);
            }
        }
        self.current.clone_from(&self.durable);
        let lost = self.unsynced_bytes.saturating_sub(kept as u64);
        self.clear_record();
        Some(lost)
    }

    pub(super) fn clear_record(&mut self) {
        self.pending.clear();
        self.unsynced_bytes = 0;
        self.recorded = 0;
        self.collapsed = false;
    }
}

#[derive(Debug)]
pub(super) struct Dir {
    /// `..` (the root is its own parent).
    pub(super) parent: u64,
    pub(super) entries: BTreeMap<OsString, u64>,
}

#[derive(Debug)]
pub(super) enum Body {
    File(FileData),
    Dir(Dir),
}

#[derive(Debug)]
pub(super) struct Inode {
    pub(super) body: Body,
    pub(super) perm: u16,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) nlink: u32,
    /// Open handles (files only): an unlinked file lives until the last is released.
    pub(super) open: u32,
    pub(super) atime: SystemTime,
    pub(super) mtime: SystemTime,
    pub(super) ctime: SystemTime,
    pub(super) crtime: SystemTime,
}

impl Inode {
    pub(super) fn new(body: Body, perm: u16, req: &Request) -> Inode {
        let now = SystemTime::now();
        let nlink = match body {
            Body::File(_) => 1,
            Body::Dir(_) => 2,
        };
        Inode {
            body,
            perm,
            uid: req.uid(),
            gid: req.gid(),
            nlink,
            open: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
        }
    }

    pub(super) fn kind(&self) -> FileType {
        match self.body {
            Body::File(_) => FileType::RegularFile,
            Body::Dir(_) => FileType::Directory,
        }
    }

    pub(super) fn attr(&self, ino: u64) -> FileAttr {
        let size = match &self.body {
            Body::File(file) => file.current.len() as u64,
            Body::Dir(_) => u64::from(BLOCK_SIZE),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: self.crtime,
            kind: self.kind(),
            perm: self.perm,
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLOCK_SIZE,
            flags: 0,
        }
    }
}

/// One directory listing, taken when a reader starts (offset 0) so that entries added or
/// removed while it reads do not shift the offsets it resumes from.
pub(super) type Listing = Vec<(u64, FileType, OsString)>;

#[derive(Debug)]
pub(super) struct State {
    pub(super) inodes: HashMap<u64, Inode>,
    pub(super) next_ino: u64,
    pub(super) next_handle: u64,
    pub(super) listings: HashMap<u64, Listing>,
    pub(super) syncs: u64,
}

impl State {
    pub(super) fn new() -> State {
        let now = SystemTime::now();
        let root = Inode {
            body: Body::Dir(Dir {
                parent: ROOT,
                entries: BTreeMap::new(),
            }),
            perm: 0o755,
            uid: 0,
            gid: 0,
            nlink: 2,
            open: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
        };
        State {
            inodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            next_handle: 1,
            listings: HashMap::new(),
            syncs: 0,
        }
    }

    pub(super) fn inode(&self, ino: u64) -> Result<&Inode, Errno> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    pub(super) fn inode_mut(&mut self, ino: u64) -> Result<&mut Inode, Errno> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    pub(super) fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        Ok(self.inode(ino)?.attr(ino))
    }

    pub(super) fn dir(&self, ino: u64) -> Result<&Dir, Errno> {
        match &self.inode(ino)?.body {
            Body::Dir(dir) => Ok(dir),
            Body::File(_) => Err(Errno::ENOTDIR),
        }
    }

    pub(super) fn dir_mut(&mut self, ino: u64) -> Result<&mut Dir, Errno> {
        match &mut self.inode_mut(ino)?.body {
            Body::Dir(dir) => Ok(dir),
            Body::File(_) => Err(Errno::ENOTDIR),
        }
    }

    pub(super) fn file_mut(&mut self, ino: u64) -> Result<&mut FileData, Errno> {
        match &mut self.inode_mut(ino)?.body {
            Body::File(file) => Ok(file),
            Body::Dir(_) => Err(Errno::EISDIR),
        }
    }

    pub(super) fn child(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.dir(parent)?
            .entries
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    pub(super) fn handle(&mut self) -> u64 {
        self.next_handle += 1;
        self.next_handle
    }

    /// Links a new inode under `parent` as `name`.
    pub(super) fn insert(&mut self, parent: u64, name: &OsStr, inode: Inode) -> Result<u64, Errno> {
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let dir = self.dir(parent)?;
        if dir.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(ino, inode);
        self.dir_mut(parent)?.entries.insert(name.to_owned(), ino);
        self.touch_dir(parent);
        Ok(ino)
    }

    /// A name in `parent` was added or removed.
    pub(super) fn touch_dir(&mut self, parent: u64) {
        if let Some(inode) = self.inodes.get_mut(&parent) {
            let now = SystemTime::now();
            inode.mtime = now;
            inode.ctime = now;
        }
    }

    /// Adjusts a directory's link count for a subdirectory coming (`+1`) or going (`-1`).
    pub(super) fn subdirs_changed(&mut self, dir: u64, added: bool) {
        if let Some(inode) = self.inodes.get_mut(&dir) {
            inode.nlink = if added {
                inode.nlink.saturating_add(1)
            } else {
                inode.nlink.saturating_sub(1).max(2)
            };
        }
    }

    /// `ino` lost its name in `parent` (the entry is already gone).
    pub(super) fn unlinked(&mut self, ino: u64, parent: u64) {
        let Some(inode) = self.inodes.get_mut(&ino) else {
            return;
        };
        inode.ctime = SystemTime::now();
        match inode.body {
            Body::Dir(_) => {
                self.inodes.remove(&ino);
                self.subdirs_changed(parent, false);
            }
            Body::File(_) => {
                inode.nlink = inode.nlink.saturating_sub(1);
                self.free_if_orphan(ino);
            }
        }
        self.touch_dir(parent);
    }

    pub(super) fn free_if_orphan(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get(&ino) {
            if matches!(inode.body, Body::File(_)) && inode.nlink == 0 && inode.open == 0 {
                self.inodes.remove(&ino);
            }
        }
    }

    pub(super) fn unlink(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let ino = self.child(parent, name)?;
        if let Body::Dir(_) = self.inode(ino)?.body {
            return Err(Errno::EISDIR);
        }
        self.dir_mut(parent)?.entries.remove(name);
        self.unlinked(ino, parent);
        Ok(())
    }

    pub(super) fn rmdir(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let ino = self.child(parent, name)?;
        if !self.dir(ino)?.entries.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        self.dir_mut(parent)?.entries.remove(name);
        self.unlinked(ino, parent);
        Ok(())
    }

    pub(super) fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
    ) -> Result<(), Errno> {
        if new_name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let ino = self.child(parent, name)?;
        let moving_dir = matches!(self.inode(ino)?.body, Body::Dir(_));
        if moving_dir {
            // A directory cannot move into itself or below itself.
            let mut at = new_parent;
            loop {
                if at == ino {
                    return Err(Errno::EINVAL);
                }
                if at == ROOT {
                    break;
                }
                at = self.dir(at)?.parent;
            }
        }
        if let Some(target) = self.dir(new_parent)?.entries.get(new_name).copied() {
            if target == ino {
                return Ok(());
            }
            match (&self.inode(target)?.body, moving_dir) {
                (Body::Dir(dir), true) if !dir.entries.is_empty() => return Err(Errno::ENOTEMPTY),
                (Body::Dir(_), true) | (Body::File(_), false) => {}
                (Body::File(_), true) => return Err(Errno::ENOTDIR),
                (Body::Dir(_), false) => return Err(Errno::EISDIR),
            }
            self.dir_mut(new_parent)?.entries.remove(new_name);
            self.unlinked(target, new_parent);
        }
        self.dir_mut(parent)?.entries.remove(name);
        self.dir_mut(new_parent)?
            .entries
            .insert(new_name.to_owned(), ino);
        if moving_dir && parent != new_parent {
            self.dir_mut(ino)?.parent = new_parent;
            self.subdirs_changed(parent, false);
            self.subdirs_changed(new_parent, true);
        }
        self.touch_dir(parent);
        self.touch_dir(new_parent);
        self.inode_mut(ino)?.ctime = SystemTime::now();
        Ok(())
    }

    pub(super) fn listing(&self, ino: u64) -> Listing {
        let Ok(dir) = self.dir(ino) else {
            // Removed while open: Linux lists nothing, not even `.`.
            return Vec::new();
        };
        let mut listing = vec![
            (ino, FileType::Directory, OsString::from(".")),
            (dir.parent, FileType::Directory, OsString::from("..")),
        ];
        for (name, child) in &dir.entries {
            if let Ok(inode) = self.inode(*child) {
                listing.push((*child, inode.kind(), name.clone()));
            }
        }
        listing
    }

    pub(super) fn used_blocks(&self) -> u64 {
        self.inodes
            .values()
            .map(|inode| match &inode.body {
                Body::File(file) => (file.current.len() as u64).div_ceil(u64::from(BLOCK_SIZE)),
                Body::Dir(_) => 1,
            })
            .sum()
    }
}

pub(super) fn time(time: TimeOrNow) -> SystemTime {
    match time {
        TimeOrNow::SpecificTime(time) => time,
        TimeOrNow::Now => SystemTime::now(),
    }
}

pub(super) fn check_size(end: u64) -> Result<(), Errno> {
    if end > MAX_FILE_SIZE {
        Err(Errno::EFBIG)
    } else {
        Ok(())
    }
}
