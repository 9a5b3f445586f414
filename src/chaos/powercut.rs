//! An in-memory FUSE file system that can lose power, for chaos tests.
//!
//! SIGKILL of a process is not a power cut: the kernel's page cache outlives the process, so
//! everything it wrote is still there, synced or not. [`PowerCutFs`] mounts a file system whose
//! [`PowerCutFs::cut`] loses exactly what was not synced, so a test can kill the processes
//! using it, cut, restart them and see what a crash of the machine would have left.
//!
//! # The model
//!
//! - Everything lives in memory: a table of inodes (regular files and directories) behind one
//!   `std::sync::Mutex`.
//! - A regular file keeps `current` (what readers see), `durable` (its bytes as of its last
//!   fsync or fdatasync) and the changes made since then (`Write { offset, bytes }` and
//!   `SetLen(len)`, from write and truncate). A write applies to `current` and is recorded; a
//!   sync (fsync and fdatasync alike) applies the recorded changes to `durable` one by one and
//!   clears them, so a sync costs what was written since the last one, never a copy of the file.
//!   (If the changes recorded since the last sync add up to more than the file's length, the
//!   record is dropped and the next sync copies `current` instead: that copy costs no more than
//!   recording did, and it bounds the memory of a file rewritten over and over without a sync.)
//! - [`PowerCutFs::cut`] sets every file's `current` back to its `durable`; a never-synced file
//!   becomes empty. With a seed, the first change made since a file's last sync, if it is a
//!   write, may also survive whole or as a prefix (a torn write), chosen from the seed and the
//!   inode number; nothing after it survives.
//! - Names (create, mkdir, unlink, rmdir, rename) take effect at once and a cut does not undo
//!   them: the metadata journaling of ext4 with `data=ordered`, where a committed name can
//!   point at data that never reached the disk. So a file created and never synced survives
//!   a cut as an empty file, and `fsyncdir` has nothing to do.
//! - The kernel never serves file data from its page cache (a cut changes contents under it):
//!   every open replies `FOPEN_DIRECT_IO`, and every entry and attribute reply has a TTL of
//!   zero.
//! - An unlinked file that is still open keeps its data until its last release.
//!
//! What it deliberately does not do: hard links, symlinks, device nodes, extended
//! attributes, fallocate, shared mmap (direct I/O has no page cache to map), permission checks
//! (everything runs as root; `access` says yes), or file locks: without getlk/setlk the kernel
//! keeps `flock` and POSIX locks itself, which is what sled needs. Directories cannot lose
//! entries. `sync_file_range(2)` is not a sync here, as FUSE never sees it; sled 0.34's
//! `flush()` uses only that, so what it flushed is durable only after its flusher thread's
//! `sync_all` (every 500 ms by default) or its drop.
//!
//! A cut is safe once the killed processes are reaped: a process killed while the file system
//! holds one of its requests waits for the answer before it exits, and requests not yet read
//! are dropped, so no write lands after the cut.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::{debug, info, warn};

/// Zero: the kernel must ask again for every name and attribute, as a cut changes them.
const TTL: Duration = Duration::ZERO;
const ROOT: u64 = 1;
const FUSE_DEVICE: &str = "/dev/fuse";
const FS_NAME: &str = "scaleout-powercut";
const BLOCK_SIZE: u32 = 4096;
/// Writes or truncates past this fail with EFBIG rather than allocate without bound.
const MAX_FILE_SIZE: u64 = 1 << 30;
/// Below this many recorded bytes a file's record is always kept (see the module doc).
const RECORD_AT_LEAST: u64 = 1 << 20;
/// Threads serving the kernel: several processes can wait on the file system at once (the
/// state itself is behind one lock, so more would not help).
const SERVING_THREADS: usize = 4;
/// open(2) flags (Linux values; fuser passes create's flags as a plain integer).
const O_EXCL: i32 = 0o200;
const O_TRUNC: i32 = 0o1000;
/// What statfs reports: 1 TiB of 4 KiB blocks and 16 Mi inodes.
const TOTAL_BLOCKS: u64 = 1 << 28;
const TOTAL_INODES: u64 = 1 << 24;

/// Why the file system could not be mounted.
#[derive(Debug, thiserror::Error)]
pub enum PowerCutError {
    #[error(
        "cannot mount the power-cut file system at {}: {FUSE_DEVICE} does not exist; it needs \
         /dev/fuse and root (CAP_SYS_ADMIN): load the fuse module (modprobe fuse), or run the \
         container with --device /dev/fuse --cap-add SYS_ADMIN",
        mountpoint.display()
    )]
    NoFuseDevice { mountpoint: PathBuf },
    #[error(
        "cannot mount the power-cut file system at {}: {source}; it needs /dev/fuse and root \
         (CAP_SYS_ADMIN, as it calls mount(2) itself: there is no fusermount fallback), and the \
         mountpoint must be an existing empty directory",
        mountpoint.display()
    )]
    Mount {
        mountpoint: PathBuf,
        source: io::Error,
    },
}

/// What a power cut dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files that had changes since their last sync (their contents went back).
    pub files: usize,
    /// Bytes of unsynced writes dropped (a torn write's surviving prefix not counted).
    pub lost_bytes: u64,
}

/// The mounted file system; dropping it unmounts.
pub struct PowerCutFs {
    session: Option<BackgroundSession>,
    state: Arc<Mutex<State>>,
    mountpoint: PathBuf,
}

impl PowerCutFs {
    /// Mounts an empty in-memory file system at `mountpoint` (an existing empty directory).
    pub fn mount(mountpoint: &Path) -> Result<PowerCutFs, PowerCutError> {
        // fuser's own message for a missing device is a bare "No such file or directory".
        if !Path::new(FUSE_DEVICE).exists() {
            return Err(PowerCutError::NoFuseDevice {
                mountpoint: mountpoint.to_path_buf(),
            });
        }
        let state = Arc::new(Mutex::new(State::new()));
        let mut config = Config::default();
        // No AutoUnmount: fuser implements it with fusermount, which is not installed; Drop
        // unmounts instead.
        config.mount_options = vec![
            MountOption::FSName(FS_NAME.into()),
            MountOption::RW,
            MountOption::NoAtime,
        ];
        // The kernel lets the mounting uid (and gid) in without allow_other: this process's
        // threads and its children, all root. allow_other would let other users in too, which
        // nothing needs.
        config.acl = SessionACL::Owner;
        config.n_threads = Some(SERVING_THREADS);
        let handler = Handler {
            state: state.clone(),
        };
        let session = fuser::spawn_mount(handler, mountpoint, &config).map_err(|source| {
            PowerCutError::Mount {
                mountpoint: mountpoint.to_path_buf(),
                source,
            }
        })?;
        info!(mountpoint = %mountpoint.display(), "power-cut file system mounted");
        Ok(PowerCutFs {
            session: Some(session),
            state,
            mountpoint: mountpoint.to_path_buf(),
        })
    }

    /// The power cut: every file's data and length go back to what they were at that file's last
    /// fsync/fdatasync (never-synced files become empty). With `tear: Some(seed)`, for each file
    /// the first write made since its last sync may survive as a random prefix (a torn write),
    /// chosen deterministically from the seed. Call it only while no process uses the mount
    /// (the test kills them first).
    pub fn cut(&self, tear: Option<u64>) -> CutReport {
        let mut state = lock(&self.state);
        let mut report = CutReport::default();
        for (ino, inode) in state.inodes.iter_mut() {
            let Body::File(file) = &mut inode.body else {
                continue;
            };
            // Per file, so the outcome does not depend on the table's iteration order.
            let mut rng = tear
                .map(|seed| StdRng::seed_from_u64(seed ^ ino.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
            if let Some(lost) = file.cut(rng.as_mut()) {
                report.files += 1;
                report.lost_bytes += lost;
            }
        }
        info!(
            mountpoint = %self.mountpoint.display(),
            files = report.files,
            lost_bytes = report.lost_bytes,
            tear = ?tear,
            "power cut"
        );
        report
    }

    /// How many fsync/fdatasync calls were made on files.
    pub fn syncs(&self) -> u64 {
        lock(&self.state).syncs
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }
}

impl Drop for PowerCutFs {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let mountpoint = self.mountpoint.display().to_string();
        match session.umount_and_join() {
            Ok(()) => info!(%mountpoint, "power-cut file system unmounted"),
            Err(error) => {
                // Most likely EBUSY: a file or directory in it is still open. Detach it lazily
                // (fuser has no call for that), so the mountpoint is free now and the kernel
                // ends the connection once the last user is gone.
                warn!(%mountpoint, %error, "could not unmount; detaching lazily");
                let detached = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&self.mountpoint)
                    .output();
                match detached {
                    Ok(output) if output.status.success() => {}
                    Ok(output) => debug!(
                        %mountpoint,
                        stderr = %String::from_utf8_lossy(&output.stderr).trim(),
                        "umount -l failed (it may be unmounted already)"
                    ),
                    Err(error) => warn!(%mountpoint, %error, "cannot run umount -l"),
                }
            }
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug)]
enum Change {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

impl Change {
    /// What keeping it costs, for the bound on a file's record.
    fn cost(&self) -> u64 {
        let bytes = match self {
            Change::Write { bytes, .. } => bytes.len(),
            Change::SetLen(_) => 0,
        };
        (bytes + std::mem::size_of::<Change>()) as u64
    }
}

/// Callers check `offset + bytes.len() <= MAX_FILE_SIZE` first, so the casts cannot truncate.
fn apply_write(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let start = offset as usize;
    let end = start + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[start..end].copy_from_slice(bytes);
}

fn apply(data: &mut Vec<u8>, change: &Change) {
    match change {
        Change::Write { offset, bytes } => apply_write(data, *offset, bytes),
        Change::SetLen(len) => data.resize(*len as usize, 0),
    }
}

/// A regular file's two images and the changes between them.
#[derive(Debug, Default)]
struct FileData {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// The changes since the last sync, oldest first; while `collapsed`, only the first.
    pending: Vec<Change>,
    /// Bytes written since the last sync: what a cut loses.
    unsynced_bytes: u64,
    /// What `pending` costs (see [`Change::cost`]).
    recorded: u64,
    /// The record grew past the file's length and was dropped: the next sync copies `current`.
    collapsed: bool,
}

impl FileData {
    fn write(&mut self, offset: u64, bytes: &[u8]) {
        apply_write(&mut self.current, offset, bytes);
        self.unsynced_bytes += bytes.len() as u64;
        if !self.collapsed {
            self.record(Change::Write {
                offset,
                bytes: bytes.to_vec(),
            });
        }
    }

    fn set_len(&mut self, len: u64) {
        if len == self.current.len() as u64 {
            return;
        }
        self.current.resize(len as usize, 0);
        if !self.collapsed {
            self.record(Change::SetLen(len));
        }
    }

    fn record(&mut self, change: Change) {
        self.recorded += change.cost();
        self.pending.push(change);
        if self.recorded > RECORD_AT_LEAST.max(self.current.len() as u64) {
            // The first change stays: a torn write may keep part of it.
            self.pending.truncate(1);
            self.collapsed = true;
        }
    }

    fn sync(&mut self) {
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
    fn cut(&mut self, rng: Option<&mut StdRng>) -> Option<u64> {
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

    fn clear_record(&mut self) {
        self.pending.clear();
        self.unsynced_bytes = 0;
        self.recorded = 0;
        self.collapsed = false;
    }
}

#[derive(Debug)]
struct Dir {
    /// `..` (the root is its own parent).
    parent: u64,
    entries: BTreeMap<OsString, u64>,
}

#[derive(Debug)]
enum Body {
    File(FileData),
    Dir(Dir),
}

#[derive(Debug)]
struct Inode {
    body: Body,
    perm: u16,
    uid: u32,
    gid: u32,
    nlink: u32,
    /// Open handles (files only): an unlinked file lives until the last is released.
    open: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    crtime: SystemTime,
}

impl Inode {
    fn new(body: Body, perm: u16, req: &Request) -> Inode {
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

    fn kind(&self) -> FileType {
        match self.body {
            Body::File(_) => FileType::RegularFile,
            Body::Dir(_) => FileType::Directory,
        }
    }

    fn attr(&self, ino: u64) -> FileAttr {
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
type Listing = Vec<(u64, FileType, OsString)>;

#[derive(Debug)]
struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    next_handle: u64,
    listings: HashMap<u64, Listing>,
    syncs: u64,
}

impl State {
    fn new() -> State {
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

    fn inode(&self, ino: u64) -> Result<&Inode, Errno> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn inode_mut(&mut self, ino: u64) -> Result<&mut Inode, Errno> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        Ok(self.inode(ino)?.attr(ino))
    }

    fn dir(&self, ino: u64) -> Result<&Dir, Errno> {
        match &self.inode(ino)?.body {
            Body::Dir(dir) => Ok(dir),
            Body::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut Dir, Errno> {
        match &mut self.inode_mut(ino)?.body {
            Body::Dir(dir) => Ok(dir),
            Body::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut FileData, Errno> {
        match &mut self.inode_mut(ino)?.body {
            Body::File(file) => Ok(file),
            Body::Dir(_) => Err(Errno::EISDIR),
        }
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.dir(parent)?
            .entries
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    fn handle(&mut self) -> u64 {
        self.next_handle += 1;
        self.next_handle
    }

    /// Links a new inode under `parent` as `name`.
    fn insert(&mut self, parent: u64, name: &OsStr, inode: Inode) -> Result<u64, Errno> {
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
    fn touch_dir(&mut self, parent: u64) {
        if let Some(inode) = self.inodes.get_mut(&parent) {
            let now = SystemTime::now();
            inode.mtime = now;
            inode.ctime = now;
        }
    }

    /// Adjusts a directory's link count for a subdirectory coming (`+1`) or going (`-1`).
    fn subdirs_changed(&mut self, dir: u64, added: bool) {
        if let Some(inode) = self.inodes.get_mut(&dir) {
            inode.nlink = if added {
                inode.nlink.saturating_add(1)
            } else {
                inode.nlink.saturating_sub(1).max(2)
            };
        }
    }

    /// `ino` lost its name in `parent` (the entry is already gone).
    fn unlinked(&mut self, ino: u64, parent: u64) {
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

    fn free_if_orphan(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get(&ino) {
            if matches!(inode.body, Body::File(_)) && inode.nlink == 0 && inode.open == 0 {
                self.inodes.remove(&ino);
            }
        }
    }

    fn unlink(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let ino = self.child(parent, name)?;
        if let Body::Dir(_) = self.inode(ino)?.body {
            return Err(Errno::EISDIR);
        }
        self.dir_mut(parent)?.entries.remove(name);
        self.unlinked(ino, parent);
        Ok(())
    }

    fn rmdir(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let ino = self.child(parent, name)?;
        if !self.dir(ino)?.entries.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        self.dir_mut(parent)?.entries.remove(name);
        self.unlinked(ino, parent);
        Ok(())
    }

    fn rename(
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

    fn listing(&self, ino: u64) -> Listing {
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

    fn used_blocks(&self) -> u64 {
        self.inodes
            .values()
            .map(|inode| match &inode.body {
                Body::File(file) => (file.current.len() as u64).div_ceil(u64::from(BLOCK_SIZE)),
                Body::Dir(_) => 1,
            })
            .sum()
    }
}

fn time(time: TimeOrNow) -> SystemTime {
    match time {
        TimeOrNow::SpecificTime(time) => time,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn check_size(end: u64) -> Result<(), Errno> {
    if end > MAX_FILE_SIZE {
        Err(Errno::EFBIG)
    } else {
        Ok(())
    }
}

/// What fuser calls, on its threads.
struct Handler {
    state: Arc<Mutex<State>>,
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
