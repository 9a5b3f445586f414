//! The FUSE side: fuser's calls, answered from the shared [`State`].

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use fuser::{
    AccessFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use tracing::debug;

use super::files::{check_size, lock, time, Body, Dir, FileData, Inode, State};
use super::{BLOCK_SIZE, O_EXCL, O_TRUNC, TOTAL_BLOCKS, TOTAL_INODES, TTL};

/// What fuser calls, on its threads.
pub(super) struct Handler {
    pub(super) state: Arc<Mutex<State>>,
}

impl Handler {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> Result<T, Errno>) -> Result<T, Errno> {
        f(&mut lock(&self.state))
    }
}

impl Filesystem for Handler {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        debug!(kernel_abi = %config.kernel_abi(), "FUSE connection initialized");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.with(|state| state.attr(state.child(parent.0, name)?)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(errno) => reply.error(errno),
        }
    }

    fn forget(&self, _req: &Request, _ino: INodeNo, _nlookup: u64) {
        // Inode lifetimes follow links and open handles, not the kernel's lookups; inode
        // numbers are never reused, so a forgotten number cannot come back as another file.
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.with(|state| state.attr(ino.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(errno) => reply.error(errno),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = self.with(|state| {
            if let Some(size) = size {
                check_size(size)?;
                state.file_mut(ino.0)?.set_len(size);
            }
            let inode = state.inode_mut(ino.0)?;
            let now = SystemTime::now();
            if size.is_some() {
                inode.mtime = now;
            }
            if let Some(mode) = mode {
                inode.perm = (mode & 0o7777) as u16;
            }
            if let Some(uid) = uid {
                inode.uid = uid;
            }
            if let Some(gid) = gid {
                inode.gid = gid;
            }
            if let Some(atime) = atime {
                inode.atime = time(atime);
            }
            if let Some(mtime) = mtime {
                inode.mtime = time(mtime);
            }
            inode.ctime = now;
            Ok(inode.attr(ino.0))
        });
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(errno) => reply.error(errno),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let result = self.with(|state| {
            let dir = Body::Dir(Dir {
                parent: parent.0,
                entries: BTreeMap::new(),
            });
            let perm = (mode & !umask & 0o7777) as u16;
            let ino = state.insert(parent.0, name, Inode::new(dir, perm, req))?;
            state.subdirs_changed(parent.0, true);
            state.attr(ino)
        });
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(errno) => reply.error(errno),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.with(|state| state.unlink(parent.0, name)) {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.with(|state| state.rmdir(parent.0, name)) {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            // RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT: not implemented.
            debug!(%flags, "rename with flags refused");
            reply.error(Errno::EINVAL);
            return;
        }
        match self.with(|state| state.rename(parent.0, name, newparent.0, newname)) {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let result = self.with(|state| {
            state.file_mut(ino.0)?;
            state.inode_mut(ino.0)?.open += 1;
            Ok(state.handle())
        });
        match result {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(errno) => reply.error(errno),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = self.with(|state| {
            let ino = match state.child(parent.0, name) {
                // Another process created it since the kernel's lookup: without O_EXCL this
                // is an open of that file, as on any file system.
                Ok(ino) if flags & O_EXCL == 0 => {
                    let file = state.file_mut(ino)?;
                    if flags & O_TRUNC != 0 {
                        file.set_len(0);
                    }
                    state.inode_mut(ino)?.open += 1;
                    ino
                }
                Ok(_) => return Err(Errno::EEXIST),
                Err(_) => {
                    let perm = (mode & !umask & 0o7777) as u16;
                    let mut inode = Inode::new(Body::File(FileData::default()), perm, req);
                    inode.open = 1;
                    state.insert(parent.0, name, inode)?
                }
            };
            Ok((state.attr(ino)?, state.handle()))
        });
        match result {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(errno) => reply.error(errno),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut state = lock(&self.state);
        match state.file_mut(ino.0) {
            Ok(file) => {
                let data = &file.current;
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                reply.data(&data[start..end]);
            }
            Err(errno) => reply.error(errno),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let result = self.with(|state| {
            check_size(offset.saturating_add(data.len() as u64))?;
            state.file_mut(ino.0)?.write(offset, data);
            let inode = state.inode_mut(ino.0)?;
            let now = SystemTime::now();
            inode.mtime = now;
            inode.ctime = now;
            Ok(())
        });
        match result {
            // At most the kernel's max_write (far below 4 GiB), so the length fits.
            Ok(()) => reply.written(data.len() as u32),
            Err(errno) => reply.error(errno),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) is not a sync.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        {
            let mut state = lock(&self.state);
            if let Ok(inode) = state.inode_mut(ino.0) {
                inode.open = inode.open.saturating_sub(1);
            }
            state.free_if_orphan(ino.0);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // fsync and fdatasync alike: names are durable at once, so only data differs.
        let result = self.with(|state| {
            state.syncs += 1;
            state.file_mut(ino.0)?.sync();
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let result = self.with(|state| {
            state.dir(ino.0)?;
            let fh = state.handle();
            state.listings.insert(fh, Vec::new());
            Ok(fh)
        });
        match result {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(errno) => reply.error(errno),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut state = lock(&self.state);
        if offset == 0 || !state.listings.contains_key(&fh.0) {
            // A new pass (or a rewinddir): see the directory as it is now.
            let listing = state.listing(ino.0);
            state.listings.insert(fh.0, listing);
        }
        let Some(listing) = state.listings.get(&fh.0) else {
            reply.error(Errno::EBADF);
            return;
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (index, (child, kind, name)) in listing.iter().enumerate().skip(start) {
            // The offset given with an entry is where the next call resumes.
            if reply.add(INodeNo(*child), index as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.state).listings.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Names are durable as soon as they change.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (used_blocks, inodes) = {
            let state = lock(&self.state);
            (state.used_blocks(), state.inodes.len() as u64)
        };
        let free = TOTAL_BLOCKS.saturating_sub(used_blocks);
        reply.statfs(
            TOTAL_BLOCKS,
            free,
            free,
            TOTAL_INODES,
            TOTAL_INODES.saturating_sub(inodes),
            BLOCK_SIZE,
            255,
            BLOCK_SIZE,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Everything runs as root.
        reply.ok();
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        // No extended attributes; ENOSYS tells the kernel not to ask again (it asks for
        // `security.capability` before the first write), without fuser's warning.
        reply.error(Errno::ENOSYS);
    }
}
