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

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tracing::{debug, info, warn};

mod files;
mod handler;

use files::{lock, Body, State};
use handler::Handler;

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
