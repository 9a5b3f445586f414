//! A simulated [`Disk`] for tests, which can lose power.
//!
//! Every file keeps two images: what a reader sees now, and what is durable (as of the last
//! `sync_data` of that file). Names work the same way: a file created, renamed or removed is
//! durable only once its directory is synced. [`SimDisk::power_cut`] then keeps the durable
//! state and, for each write or length change made since the file's last sync, independently
//! drops it, keeps it, or keeps a torn prefix of it, as a disk cache may. Directories themselves
//! are always durable (the stores create theirs once, at start).
//!
//! Handles opened before a power cut fail afterwards, as the process that held them is gone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::disk::{Disk, DiskFile, OpenMode};

#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<SimState>>,
}

#[derive(Debug, Default)]
struct SimState {
    next_inode: u64,
    inodes: HashMap<u64, Inode>,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    /// Bumped by every power cut; handles of an older generation are dead.
    generation: u64,
    data_syncs: u64,
    /// While set, `sync_data` returns without making anything durable (a test proving that
    /// the syncs are what keep data).
    ignore_syncs: bool,
    /// While set, `sync_data` fails (a disk that refuses a flush).
    fail_syncs: bool,
}

#[derive(Debug, Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Change>,
}

#[derive(Debug)]
enum Change {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

fn apply(data: &mut Vec<u8>, change: &Change) {
    match change {
        Change::Write { offset, bytes } => {
            let start = *offset as usize;
            let end = start + bytes.len();
            if data.len() < end {
                data.resize(end, 0);
            }
            data[start..end].copy_from_slice(bytes);
        }
        Change::SetLen(len) => data.resize(*len as usize, 0),
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} does not exist", path.display()),
    )
}

impl SimDisk {
    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cuts the power: every file and name goes back to its durable state, plus a random part of
    /// what was written since (whole writes, torn writes, or nothing), chosen by `seed`.
    pub fn power_cut(&self, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut state = self.lock();
        state.generation += 1;
        state.names = state.durable_names.clone();
        let live: BTreeSet<u64> = state.names.values().copied().collect();
        state.inodes.retain(|inode, _| live.contains(inode));
        for inode in state.inodes.values_mut() {
            let mut data = std::mem::take(&mut inode.durable);
            for change in inode.pending.drain(..) {
                match rng.gen_range(0..3) {
                    0 => {}
                    1 => apply(&mut data, &change),
                    _ => match change {
                        Change::Write { offset, bytes } => {
                            let kept = rng.gen_range(0..=bytes.len());
                            let torn = Change::Write {
                                offset,
                                bytes: bytes[..kept].to_vec(),
                            };
                            apply(&mut data, &torn);
                        }
                        other => apply(&mut data, &other),
                    },
                }
            }
            inode.durable = data.clone();
            inode.data = data;
        }
    }

    /// How many `sync_data` calls were made.
    pub fn data_syncs(&self) -> u64 {
        self.lock().data_syncs
    }

    /// Makes `sync_data` fail (`true`) or work again.
    pub fn fail_syncs(&self, fail: bool) {
        self.lock().fail_syncs = fail;
    }

    /// Makes `sync_data` a no-op (`true`) or real again.
    pub fn ignore_syncs(&self, ignore: bool) {
        self.lock().ignore_syncs = ignore;
    }
}

struct SimFile {
    disk: SimDisk,
    inode: u64,
    generation: u64,
}

impl SimFile {
    fn with<T>(&self, f: impl FnOnce(&mut SimState, u64) -> io::Result<T>) -> io::Result<T> {
        let mut state = self.disk.lock();
        if state.generation != self.generation || !state.inodes.contains_key(&self.inode) {
            return Err(io::Error::other("the simulated machine lost power"));
        }
        f(&mut state, self.inode)
    }
}

fn inode(state: &mut SimState, inode: u64) -> &mut Inode {
    state.inodes.entry(inode).or_default()
}

impl DiskFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        self.with(|state, i| Ok(inode(state, i).data.len() as u64))
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(|state, i| {
            let data = &inode(state, i).data;
            let start = offset as usize;
            let end = start + buf.len();
            if end > data.len() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past the end of the file",
                ));
            }
            buf.copy_from_slice(&data[start..end]);
            Ok(())
        })
    }

    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.with(|state, i| {
            let change = Change::Write {
                offset,
                bytes: data.to_vec(),
            };
            let inode = inode(state, i);
            apply(&mut inode.data, &change);
            inode.pending.push(change);
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|state, i| {
            let inode = inode(state, i);
            apply(&mut inode.data, &Change::SetLen(len));
            inode.pending.push(Change::SetLen(len));
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|state, i| {
            state.data_syncs += 1;
            if state.fail_syncs {
                return Err(io::Error::other("the simulated disk failed a flush"));
            }
            if state.ignore_syncs {
                return Ok(());
            }
            let inode = inode(state, i);
            inode.durable = inode.data.clone();
            inode.pending.clear();
            Ok(())
        })
    }
}

impl Disk for SimDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        for ancestor in dir.ancestors() {
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let state = self.lock();
        state.dirs.contains(path) || state.names.contains_key(path)
    }

    fn list_files(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(state
            .names
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name())
            .map(|name| name.to_string_lossy().into_owned())
            .collect())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn DiskFile>> {
        let mut state = self.lock();
        let dir = path.parent().unwrap_or(Path::new("/"));
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let inode = match (state.names.get(path).copied(), mode) {
            (Some(inode), OpenMode::Existing) => inode,
            (None, OpenMode::Existing) => return Err(not_found(path)),
            (Some(inode), OpenMode::CreateTruncate) => {
                let node = state.inodes.entry(inode).or_default();
                apply(&mut node.data, &Change::SetLen(0));
                node.pending.push(Change::SetLen(0));
                inode
            }
            (None, OpenMode::CreateTruncate) => {
                state.next_inode += 1;
                let inode = state.next_inode;
                state.inodes.insert(inode, Inode::default());
                state.names.insert(path.to_path_buf(), inode);
                inode
            }
        };
        Ok(Arc::new(SimFile {
            disk: self.clone(),
            inode,
            generation: state.generation,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let inode = state.names.remove(from).ok_or_else(|| not_found(from))?;
        state.names.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.names.remove(path).ok_or_else(|| not_found(path))?;
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let in_dir = |path: &PathBuf| path.parent() == Some(dir);
        state.durable_names.retain(|path, _| !in_dir(path));
        let current: Vec<(PathBuf, u64)> = state
            .names
            .iter()
            .filter(|(path, _)| in_dir(path))
            .map(|(path, inode)| (path.clone(), *inode))
            .collect();
        state.durable_names.extend(current);
        Ok(())
    }
}
