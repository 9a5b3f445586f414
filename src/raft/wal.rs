//! The Raft log and the vote as an append-only, checksummed, segmented write-ahead log.
//!
//! Layout: a directory of segment files `<sequence, 20 digits>.wal`. A segment starts with a
//! 16-byte header (magic and format version) and a [`Record::Checkpoint`] of the vote, the
//! committed log id and the purge point, then holds records, each framed as
//! `[payload length: u32 LE][CRC-32 of the payload: u32 LE][payload: bincode of Record]`.
//! Opening replays every segment in order: entries by index, truncations, purges, votes.
//!
//! Durability: this type only writes; [`Wal::files_to_sync`] names what a caller must
//! `fdatasync` before it may report the writes durable (the log store does that on its syncer
//! thread, one sync for every append waiting). Sealing a full segment syncs it before the next one
//! is created, and a new segment (header and checkpoint) is synced, and its name made durable,
//! before anything is written to it. So only the active segment ever holds unsynced records, and
//! a damaged record there is a torn tail: everything from it on was never reported durable,
//! and is cut off when the log is opened. Damage anywhere else is corruption and refuses the open.
//!
//! Purging writes a durable `Purge` record first and only then removes the sealed segments that
//! hold nothing after the purge point, so a power cut never leaves a hole in the log. Removed
//! segments that come back (their removal was not yet durable) are harmless: the purge record
//! hides their entries.
//!
//! Entries are not kept in memory: an index maps each live entry to its place in a segment, and
//! reads decode it from the file (the page cache, in practice).

use std::collections::BTreeMap;
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Entry, LogId, Vote};
use crate::disk::{Disk, DiskFile, OpenMode};

const MAGIC: &[u8; 12] = b"SCALEOUT-WAL";
const WAL_FORMAT: u32 = 1;
const HEADER_LEN: u64 = 16;
const FRAME_LEN: u64 = 8;
/// No record is larger (an entry is bounded by the peer message limit, well under this); a
/// larger length in a frame is damage, not a record.
const MAX_RECORD: u64 = 1 << 30;
/// A segment is sealed and a new one started once it passes this size.
pub(super) const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// One record of the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Record {
    /// The first record of every segment: the state that records in earlier segments built up,
    /// so those segments can be removed.
    Checkpoint {
        vote: Option<Vote>,
        committed: Option<LogId>,
        last_purged: Option<LogId>,
    },
    Entry(Entry),
    /// Entries from this index on are gone.
    Truncate {
        from: u64,
    },
    /// Entries up to this log id are gone, and it stands for the last of them.
    Purge(LogId),
    Vote(Vote),
    Committed(Option<LogId>),
}

/// Why a log could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub(super) enum WalError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Corrupt(String),
    #[error("cannot encode a log record: {0}")]
    Encode(#[from] bincode::Error),
}

/// Where a live entry is.
#[derive(Debug, Clone, Copy)]
struct Slot {
    log_id: LogId,
    segment: u64,
    offset: u64,
    len: u32,
}

struct Segment {
    file: Arc<dyn DiskFile>,
}

/// What a read needs to fetch one entry without holding the log.
pub(super) struct EntryRef {
    index: u64,
    file: Arc<dyn DiskFile>,
    offset: u64,
    len: u32,
}

impl EntryRef {
    /// Reads and checks the entry.
    pub(super) fn read(&self) -> Result<Entry, WalError> {
        let mut frame = vec![0; self.len as usize];
        self.file.read_exact_at(&mut frame, self.offset)?;
        match parse_frame(&frame) {
            Some((Record::Entry(entry), _)) if entry.log_id.index == self.index => Ok(entry),
            _ => Err(WalError::Corrupt(format!(
                "log entry {} no longer reads back as written",
                self.index
            ))),
        }
    }
}

/// What opening found, for the log line that reports it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Recovery {
    pub segments: usize,
    /// Bytes of a torn tail cut off the active segment.
    pub torn_bytes: u64,
}

/// The write-ahead log. Not thread safe by itself: the log store keeps it behind a mutex and
/// never holds that across disk syncs.
pub(super) struct Wal {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    segments: BTreeMap<u64, Segment>,
    active: u64,
    write_offset: u64,
    segment_bytes: u64,
    entries: BTreeMap<u64, Slot>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
}

fn segment_name(sequence: u64) -> String {
    format!("{sequence:020}.wal")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn frame(record: &Record) -> Result<Vec<u8>, WalError> {
    let payload = bincode::serialize(record)?;
    let mut bytes = Vec::with_capacity(FRAME_LEN as usize + payload.len());
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

/// The record at the start of `bytes` and the length of its frame; `None` for zeros (the end of
/// what was written), a torn frame, or a checksum or decoding failure.
fn parse_frame(bytes: &[u8]) -> Option<(Record, u64)> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    let (crc, rest) = rest.split_first_chunk::<4>()?;
    let len = u64::from(u32::from_le_bytes(*len));
    if len == 0 || len > MAX_RECORD || len > rest.len() as u64 {
        return None;
    }
    let payload = &rest[..len as usize];
    if crc32fast::hash(payload) != u32::from_le_bytes(*crc) {
        return None;
    }
    let record = bincode::deserialize(payload).ok()?;
    Some((record, FRAME_LEN + len))
}

fn header() -> [u8; HEADER_LEN as usize] {
    let mut header = [0; HEADER_LEN as usize];
    header[..12].copy_from_slice(MAGIC);
    header[12..].copy_from_slice(&WAL_FORMAT.to_be_bytes());
    header
}

impl Wal {
    /// Opens the log in `dir` (creating it), replaying every segment.
    pub(super) fn open(
        disk: Arc<dyn Disk>,
        dir: &Path,
        segment_bytes: u64,
    ) -> Result<(Self, Recovery), WalError> {
        disk.create_dir_all(dir)?;
        let mut wal = Wal {
            disk,
            dir: dir.to_path_buf(),
            segments: BTreeMap::new(),
            active: 0,
            write_offset: 0,
            segment_bytes,
            entries: BTreeMap::new(),
            vote: None,
            committed: None,
            last_purged: None,
        };
        let mut sequences = Vec::new();
        for name in wal.disk.list_files(dir)? {
            match parse_segment_name(&name) {
                Some(sequence) => sequences.push(sequence),
                None if name.ends_with(".tmp") => {}
                None => {
                    return Err(WalError::Corrupt(format!(
                        "unexpected file {name} in the log directory {}",
                        dir.display()
                    )))
                }
            }
        }
        let mut recovery = Recovery::default();
        let last = sequences.last().copied();
        for sequence in sequences {
            let is_last = Some(sequence) == last;
            recovery.torn_bytes += wal.replay_segment(sequence, is_last)?;
        }
        recovery.segments = wal.segments.len();
        if wal.segments.is_empty() {
            wal.start_segment(1)?;
        }
        Ok((wal, recovery))
    }

    /// Replays one segment; for the last one, cuts a torn tail and returns its length.
    fn replay_segment(&mut self, sequence: u64, is_last: bool) -> Result<u64, WalError> {
        let path = self.dir.join(segment_name(sequence));
        let file = self.disk.open(&path, OpenMode::Existing)?;
        let len = file.len()?;
        let mut bytes = vec![0; len as usize];
        file.read_exact_at(&mut bytes, 0)?;
        let damaged = |what: String| {
            WalError::Corrupt(format!("log segment {} is damaged: {what}", path.display()))
        };
        if bytes.len() < HEADER_LEN as usize || bytes[..HEADER_LEN as usize] != header() {
            if is_last && bytes.len() <= HEADER_LEN as usize + FRAME_LEN as usize {
                // Created but never synced whole: nothing in it was ever reported durable.
                self.disk.remove_file(&path)?;
                self.disk.sync_dir(&self.dir)?;
                return Ok(len);
            }
            return Err(damaged("its header is not a scaleout log header".into()));
        }
        let mut offset = HEADER_LEN;
        let mut first = true;
        while offset < len {
            let Some((record, frame_len)) = parse_frame(&bytes[offset as usize..]) else {
                break;
            };
            if first && !matches!(record, Record::Checkpoint { .. }) {
                return Err(damaged("it does not start with a checkpoint".into()));
            }
            first = false;
            self.replay(record, sequence, offset, frame_len);
            offset += frame_len;
        }
        if first {
            if is_last {
                self.disk.remove_file(&path)?;
                self.disk.sync_dir(&self.dir)?;
                return Ok(len);
            }
            return Err(damaged("it holds no checkpoint".into()));
        }
        let garbage = bytes[offset as usize..].iter().any(|&b| b != 0);
        if garbage && !is_last {
            return Err(damaged(format!(
                "the record at byte {offset} does not read back (a sealed segment is never torn)"
            )));
        }
        if offset < len {
            // Records after the tear were never synced, so never acknowledged: cut them off, so
            // that a later, shorter record cannot be followed by stale bytes.
            file.set_len(offset)?;
            file.sync_data()?;
        }
        self.segments.insert(sequence, Segment { file });
        self.active = sequence;
        self.write_offset = offset;
        Ok(if garbage { len - offset } else { 0 })
    }

    fn replay(&mut self, record: Record, segment: u64, offset: u64, frame_len: u64) {
        match record {
            Record::Checkpoint {
                vote,
                committed,
                last_purged,
            } => {
                self.vote = vote.or(self.vote);
                self.committed = committed.max(self.committed);
                self.purge_in_memory(last_purged);
            }
            Record::Entry(entry) => {
                let index = entry.log_id.index;
                if self.last_purged.is_some_and(|p| index <= p.index) {
                    return;
                }
                self.entries.split_off(&index);
                self.entries.insert(
                    index,
                    Slot {
                        log_id: entry.log_id,
                        segment,
                        offset,
                        len: frame_len as u32,
                    },
                );
            }
            Record::Truncate { from } => {
                self.entries.split_off(&from);
            }
            Record::Purge(log_id) => self.purge_in_memory(Some(log_id)),
            Record::Vote(vote) => self.vote = Some(vote),
            Record::Committed(committed) => self.committed = committed,
        }
    }

    fn purge_in_memory(&mut self, upto: Option<LogId>) {
        let Some(upto) = upto else { return };
        if self.last_purged.is_some_and(|p| p >= upto) {
            return;
        }
        self.last_purged = Some(upto);
        self.entries = self.entries.split_off(&(upto.index + 1));
    }

    /// Creates segment `sequence` with its header and checkpoint, durable (data and name) before
    /// it becomes the active one.
    fn start_segment(&mut self, sequence: u64) -> Result<(), WalError> {
        let path = self.dir.join(segment_name(sequence));
        let file = self.disk.open(&path, OpenMode::CreateTruncate)?;
        let mut bytes = header().to_vec();
        bytes.extend(frame(&Record::Checkpoint {
            vote: self.vote,
            committed: self.committed,
            last_purged: self.last_purged,
        })?);
        file.write_all_at(&bytes, 0)?;
        file.sync_data()?;
        self.disk.sync_dir(&self.dir)?;
        self.segments.insert(sequence, Segment { file });
        self.active = sequence;
        self.write_offset = bytes.len() as u64;
        Ok(())
    }

    fn active_file(&self) -> Result<&Arc<dyn DiskFile>, WalError> {
        self.segments
            .get(&self.active)
            .map(|segment| &segment.file)
            .ok_or_else(|| WalError::Corrupt("the active log segment is missing".into()))
    }

    /// Writes framed records at the end of the active segment, first sealing it (synced) and
    /// starting the next one if it is full. Returns the offset they were written at.
    fn write(&mut self, bytes: &[u8]) -> Result<u64, WalError> {
        if self.write_offset + bytes.len() as u64 > self.segment_bytes
            && self.write_offset > HEADER_LEN + FRAME_LEN
        {
            self.active_file()?.sync_data()?;
            self.start_segment(self.active + 1)?;
        }
        let offset = self.write_offset;
        self.active_file()?.write_all_at(bytes, offset)?;
        self.write_offset += bytes.len() as u64;
        Ok(offset)
    }

    /// Where the next write goes: (segment, offset). Positions only grow, truncations included,
    /// so "synced up to position P" covers every write made before P was read.
    pub(super) fn position(&self) -> (u64, u64) {
        (self.active, self.write_offset)
    }

    /// The position just past entry `index`, if it is in the log.
    pub(super) fn entry_end(&self, index: u64) -> Option<(u64, u64)> {
        self.entries
            .get(&index)
            .map(|slot| (slot.segment, slot.offset + u64::from(slot.len)))
    }

    /// The files a caller must sync before the writes made so far are durable: the active
    /// segment (sealed ones were synced when sealed).
    pub(super) fn files_to_sync(&self) -> Vec<Arc<dyn DiskFile>> {
        self.active_file()
            .map(|f| vec![f.clone()])
            .unwrap_or_default()
    }

    /// Appends entries (not yet durable). Each must follow the last one; openraft truncates a
    /// conflicting suffix before appending over it.
    pub(super) fn append(
        &mut self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<(), WalError> {
        let mut bytes = Vec::new();
        let mut framed = Vec::new();
        for entry in entries {
            let start = bytes.len() as u64;
            let log_id = entry.log_id;
            bytes.extend(frame(&Record::Entry(entry))?);
            framed.push((log_id, start, bytes.len() as u64 - start));
        }
        if framed.is_empty() {
            return Ok(());
        }
        let offset = self.write(&bytes)?;
        for (log_id, start, len) in framed {
            self.entries.split_off(&log_id.index);
            self.entries.insert(
                log_id.index,
                Slot {
                    log_id,
                    segment: self.active,
                    offset: offset + start,
                    len: len as u32,
                },
            );
        }
        Ok(())
    }

    /// Removes entries from `from` on (not yet durable: a power cut may bring them back, and
    /// the leader then truncates them again).
    pub(super) fn truncate(&mut self, from: u64) -> Result<(), WalError> {
        self.write(&frame(&Record::Truncate { from })?)?;
        self.entries.split_off(&from);
        Ok(())
    }

    /// Writes the purge record. The caller syncs it, then calls [`Wal::remove_purged_segments`].
    pub(super) fn purge(&mut self, upto: LogId) -> Result<(), WalError> {
        self.write(&frame(&Record::Purge(upto))?)?;
        self.purge_in_memory(Some(upto));
        Ok(())
    }

    /// Removes sealed segments that hold no live entry and come before any that does. Call only
    /// once the purge record that emptied them is durable.
    pub(super) fn remove_purged_segments(&mut self) -> Result<usize, WalError> {
        let first_needed = self
            .entries
            .values()
            .map(|slot| slot.segment)
            .min()
            .unwrap_or(self.active)
            .min(self.active);
        let removable: Vec<u64> = self
            .segments
            .range(..first_needed)
            .map(|(s, _)| *s)
            .collect();
        for sequence in &removable {
            self.disk
                .remove_file(&self.dir.join(segment_name(*sequence)))?;
            self.segments.remove(sequence);
        }
        Ok(removable.len())
    }

    /// Writes the vote (not yet durable: the caller syncs before acting on it).
    pub(super) fn save_vote(&mut self, vote: Vote) -> Result<(), WalError> {
        self.write(&frame(&Record::Vote(vote))?)?;
        self.vote = Some(vote);
        Ok(())
    }

    /// Writes the committed log id, a hint that is never synced for its own sake.
    pub(super) fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), WalError> {
        if committed == self.committed {
            return Ok(());
        }
        self.write(&frame(&Record::Committed(committed))?)?;
        self.committed = committed;
        Ok(())
    }

    pub(super) fn vote(&self) -> Option<Vote> {
        self.vote
    }

    pub(super) fn committed(&self) -> Option<LogId> {
        self.committed
    }

    pub(super) fn last_purged(&self) -> Option<LogId> {
        self.last_purged
    }

    /// The last entry's log id, or the purge point when no entry is left.
    pub(super) fn last_log_id(&self) -> Option<LogId> {
        self.entries
            .last_key_value()
            .map(|(_, slot)| slot.log_id)
            .or(self.last_purged)
    }

    /// Nothing was ever written: no entry, no vote, no purge point.
    pub(super) fn is_pristine(&self) -> bool {
        self.entries.is_empty() && self.vote.is_none() && self.last_purged.is_none()
    }

    /// Where the live entries in `range` are, in index order.
    pub(super) fn entry_refs<RB: RangeBounds<u64>>(&self, range: RB) -> Vec<EntryRef> {
        self.entries
            .range(range)
            .filter_map(|(index, slot)| {
                let segment = self.segments.get(&slot.segment)?;
                Some(EntryRef {
                    index: *index,
                    file: segment.file.clone(),
                    offset: slot.offset,
                    len: slot.len,
                })
            })
            .collect()
    }
}
