//! The worker's on-disk spool: log batches and task results that could not be delivered while
//! no replica answered, kept in order until they are (SSIS's ExecutionLogCacheFolder).
//!
//! The spool is one JSON-lines file, `<state_dir>/spool/spool.jsonl`, of two kinds of record:
//! an entry (`{"type":"entry","seq":N,"entry":{...}}`) and an acknowledgment
//! (`{"type":"ack","seq":N}`: the entry N and every one before it are settled). Every append is
//! fsynced before it returns, so an entry the agent spooled survives a crash or a restart of
//! the worker. Delivering an entry and then crashing before its ack is written delivers it
//! twice: the master then refuses the second completion as stale, and a log batch may show
//! twice, which is the price of never losing one.
//!
//! Opening replays the file (a torn last line from a crash mid-append is skipped) and rewrites
//! it compactly; the file is emptied whenever every entry is settled.
//!
//! [`Spool::size`] shares the count and size of the unsettled entries without the spool's lock
//! (a metrics scrape must not wait for an fsync).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The spool file's name inside the spool directory.
pub const SPOOL_FILE: &str = "spool.jsonl";
/// Rewrite the file when it holds this many more records than live entries.
const COMPACT_SLACK: usize = 1024;

/// One log line as spooled (the wire's `LogLine`, with the level as its protobuf number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpooledLine {
    pub at_ms: u64,
    pub level: i32,
    pub text: String,
}

/// A reportable end of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpooledOutcome {
    Succeeded,
    Failed,
    Cancelled,
}

impl SpooledOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            SpooledOutcome::Succeeded => "succeeded",
            SpooledOutcome::Failed => "failed",
            SpooledOutcome::Cancelled => "cancelled",
        }
    }
}

/// Something the master has not received yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SpoolEntry {
    /// An AppendLogs call.
    Logs {
        job_id: u64,
        lease_token: u64,
        attempt: u32,
        /// The batch's number within its lease (`AppendLogsRequest.batch_sequence`); 0 in
        /// spools written before batches were numbered.
        #[serde(default)]
        batch: u64,
        lines: Vec<SpooledLine>,
    },
    /// A CompleteTask call.
    Complete {
        job_id: u64,
        lease_token: u64,
        attempt: u32,
        outcome: SpooledOutcome,
        exit_code: Option<i32>,
        error: String,
    },
}

impl SpoolEntry {
    pub fn job_id(&self) -> u64 {
        match self {
            SpoolEntry::Logs { job_id, .. } | SpoolEntry::Complete { job_id, .. } => *job_id,
        }
    }
    pub fn lease_token(&self) -> u64 {
        match self {
            SpoolEntry::Logs { lease_token, .. } | SpoolEntry::Complete { lease_token, .. } => {
                *lease_token
            }
        }
    }
    pub fn attempt(&self) -> u32 {
        match self {
            SpoolEntry::Logs { attempt, .. } | SpoolEntry::Complete { attempt, .. } => *attempt,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Record {
    Entry { seq: u64, entry: SpoolEntry },
    Ack { seq: u64 },
}

#[derive(Debug, thiserror::Error)]
#[error("spool {}: cannot {action}: {source}", path.display())]
pub struct SpoolError {
    pub path: PathBuf,
    pub action: &'static str,
    #[source]
    pub source: io::Error,
}

fn io_error(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> SpoolError {
    let path = path.to_path_buf();
    move |source| SpoolError {
        path,
        action,
        source,
    }
}

/// How much the spool holds: its unsettled entries and the bytes of their records. Updated by
/// the spool, readable by anyone holding it.
#[derive(Debug, Default)]
pub struct SpoolSize {
    entries: AtomicU64,
    bytes: AtomicU64,
}

impl SpoolSize {
    /// Entries not yet settled (delivered, or refused for good).
    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }

    /// The size of those entries' records in the file (what a compacted file would hold).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// An unsettled entry.
#[derive(Debug)]
struct Held {
    seq: u64,
    entry: SpoolEntry,
    /// The length of its record in the file, newline included.
    bytes: u64,
}

/// The spool. Not synchronized: the agent keeps it behind a mutex and calls it off the async
/// threads (every call may fsync).
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    entries: VecDeque<Held>,
    next_seq: u64,
    /// Records in the file, to know when compaction pays.
    records: usize,
    /// The sum of the held entries' `bytes`.
    bytes: u64,
    size: Arc<SpoolSize>,
}

impl Spool {
    /// Opens (creating) the spool in `dir` and replays what an earlier run left.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir, "create the directory"))?;
        let path = dir.join(SPOOL_FILE);
        let mut entries = VecDeque::new();
        let mut next_seq = 1;
        match File::open(&path) {
            Ok(file) => {
                let mut lines = BufReader::new(file).split(b'\n').peekable();
                while let Some(line) = lines.next() {
                    let line = line.map_err(io_error(&path, "read"))?;
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match serde_json::from_slice::<Record>(&line) {
                        Ok(Record::Entry { seq, entry }) => {
                            next_seq = next_seq.max(seq + 1);
                            let bytes = line.len() as u64 + 1;
                            entries.push_back(Held { seq, entry, bytes });
                        }
                        Ok(Record::Ack { seq }) => {
                            while entries.front().is_some_and(|held: &Held| held.seq <= seq) {
                                entries.pop_front();
                            }
                        }
                        // A crash in the middle of an append leaves a torn last line: that
                        // entry was never acknowledged to anyone, so dropping it is right.
                        Err(e) if lines.peek().is_none() => {
                            tracing::warn!(spool = %path.display(), error = %e, "skipping a torn last spool record");
                        }
                        Err(e) => {
                            tracing::error!(spool = %path.display(), error = %e, "skipping an unreadable spool record");
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&path, "open")(e)),
        }
        let file = rewrite(dir, &path, &entries)?;
        let spool = Spool {
            dir: dir.to_path_buf(),
            path,
            file,
            records: entries.len(),
            bytes: entries.iter().map(|held| held.bytes).sum(),
            entries,
            next_seq,
            size: Arc::default(),
        };
        spool.publish_size();
        Ok(spool)
    }

    /// The spool's size, kept current by every append and ack.
    pub fn size(&self) -> Arc<SpoolSize> {
        Arc::clone(&self.size)
    }

    fn publish_size(&self) {
        self.size
            .entries
            .store(self.entries.len() as u64, Ordering::Relaxed);
        self.size.bytes.store(self.bytes, Ordering::Relaxed);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The oldest unsettled entry and its sequence number.
    pub fn front(&self) -> Option<(u64, &SpoolEntry)> {
        self.entries.front().map(|held| (held.seq, &held.entry))
    }

    /// Every unsettled entry, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &SpoolEntry> + '_ {
        self.entries.iter().map(|held| &held.entry)
    }

    /// Appends `entry` durably (fsynced) and returns its sequence number.
    pub fn append(&mut self, entry: SpoolEntry) -> Result<u64, SpoolError> {
        let seq = self.next_seq;
        let bytes = self.write_record(&Record::Entry {
            seq,
            entry: entry.clone(),
        })?;
        self.next_seq += 1;
        self.entries.push_back(Held { seq, entry, bytes });
        self.bytes += bytes;
        self.publish_size();
        Ok(seq)
    }

    /// Settles the oldest entry, which must be `seq` (delivered, or refused for good).
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        if self.front().map(|(s, _)| s) != Some(seq) {
            return Ok(());
        }
        if let Some(held) = self.entries.pop_front() {
            self.bytes = self.bytes.saturating_sub(held.bytes);
        }
        self.publish_size();
        if self.entries.is_empty() {
            // Nothing left: start the file over instead of appending an ack.
            self.file
                .set_len(0)
                .map_err(io_error(&self.path, "truncate"))?;
            self.file
                .sync_all()
                .map_err(io_error(&self.path, "fsync"))?;
            self.records = 0;
        } else if self.records > self.entries.len() * 2 + COMPACT_SLACK {
            self.file = rewrite(&self.dir, &self.path, &self.entries)?;
            self.records = self.entries.len();
        } else {
            self.write_record(&Record::Ack { seq })?;
        }
        Ok(())
    }

    /// Appends `record` durably; returns its length in the file.
    fn write_record(&mut self, record: &Record) -> Result<u64, SpoolError> {
        let mut line = serde_json::to_vec(record).map_err(|e| SpoolError {
            path: self.path.clone(),
            action: "encode a record",
            source: io::Error::other(e),
        })?;
        line.push(b'\n');
        // A failed write (disk full) may leave part of the line; cut it off again, or the next
        // record would be glued onto it and lost on replay.
        let length = self
            .file
            .metadata()
            .map_err(io_error(&self.path, "stat"))?
            .len();
        if let Err(e) = self.file.write_all(&line) {
            let _ = self.file.set_len(length);
            return Err(io_error(&self.path, "append")(e));
        }
        self.file
            .sync_data()
            .map_err(io_error(&self.path, "fsync"))?;
        self.records += 1;
        Ok(line.len() as u64)
    }
}

/// Writes `entries` to a new file that atomically replaces `path`; returns it open for appends.
fn rewrite(dir: &Path, path: &Path, entries: &VecDeque<Held>) -> Result<File, SpoolError> {
    let tmp = dir.join(format!("{SPOOL_FILE}.tmp"));
    {
        let mut out = io::BufWriter::new(File::create(&tmp).map_err(io_error(&tmp, "create"))?);
        for held in entries {
            let record = Record::Entry {
                seq: held.seq,
                entry: held.entry.clone(),
            };
            serde_json::to_writer(&mut out, &record).map_err(|e| SpoolError {
                path: tmp.clone(),
                action: "write",
                source: io::Error::other(e),
            })?;
            out.write_all(b"\n").map_err(io_error(&tmp, "write"))?;
        }
        let file = out
            .into_inner()
            .map_err(|e| io_error(&tmp, "write")(e.into_error()))?;
        file.sync_all().map_err(io_error(&tmp, "fsync"))?;
    }
    std::fs::rename(&tmp, path).map_err(io_error(path, "replace"))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir, "fsync the directory"))?;
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_error(path, "open for appending"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs(job_id: u64, text: &str) -> SpoolEntry {
        SpoolEntry::Logs {
            job_id,
            lease_token: job_id * 10,
            attempt: 1,
            batch: 1,
            lines: vec![SpooledLine {
                at_ms: 5,
                level: 2,
                text: text.to_string(),
            }],
        }
    }

    fn complete(job_id: u64) -> SpoolEntry {
        SpoolEntry::Complete {
            job_id,
            lease_token: job_id * 10,
            attempt: 1,
            outcome: SpooledOutcome::Failed,
            exit_code: Some(3),
            error: "exit code 3".into(),
        }
    }

    #[test]
    fn entries_come_back_in_order_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path()).unwrap();
        assert!(spool.is_empty());
        let a = spool.append(logs(1, "first")).unwrap();
        let b = spool.append(logs(1, "second")).unwrap();
        let c = spool.append(complete(1)).unwrap();
        assert!(a < b && b < c);
        spool.ack(a).unwrap();
        drop(spool);

        let mut spool = Spool::open(dir.path()).unwrap();
        let got: Vec<SpoolEntry> = spool.entries().cloned().collect();
        assert_eq!(got, vec![logs(1, "second"), complete(1)]);
        assert_eq!(spool.front().map(|(s, _)| s), Some(b));
        // New entries continue the sequence.
        let d = spool.append(logs(2, "x")).unwrap();
        assert!(d > c);
        // Acking anything but the front is ignored.
        spool.ack(d).unwrap();
        assert_eq!(spool.len(), 3);
        spool.ack(b).unwrap();
        spool.ack(c).unwrap();
        spool.ack(d).unwrap();
        assert!(spool.is_empty());
        assert_eq!(std::fs::metadata(spool.path()).unwrap().len(), 0);
        drop(spool);
        assert!(Spool::open(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_torn_or_damaged_record_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path()).unwrap();
        spool.append(logs(1, "kept")).unwrap();
        spool.append(complete(1)).unwrap();
        let path = spool.path().to_path_buf();
        drop(spool);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.insert_str(0, "not json\n");
        text.push_str("{\"type\":\"entry\",\"seq\":9,\"ent");
        std::fs::write(&path, text).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let got: Vec<SpoolEntry> = spool.entries().cloned().collect();
        assert_eq!(got, vec![logs(1, "kept"), complete(1)]);
        // Opening rewrote the file cleanly.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn many_acks_compact_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path()).unwrap();
        let mut seqs = VecDeque::new();
        for i in 0..1200 {
            seqs.push_back(spool.append(logs(i, "line")).unwrap());
        }
        for _ in 0..1190 {
            let seq = seqs.pop_front().unwrap();
            spool.ack(seq).unwrap();
        }
        let lines = std::fs::read_to_string(spool.path())
            .unwrap()
            .lines()
            .count();
        assert!(lines < 1200 + 1190, "compacted: {lines} lines");
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.len(), 10);
        assert_eq!(spool.front().map(|(s, _)| s), seqs.front().copied());
    }

    #[test]
    fn the_size_follows_appends_acks_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path()).unwrap();
        let size = spool.size();
        assert_eq!((size.entries(), size.bytes()), (0, 0));
        let a = spool.append(logs(1, "first")).unwrap();
        spool.append(complete(1)).unwrap();
        let file_len = std::fs::metadata(spool.path()).unwrap().len();
        assert_eq!((size.entries(), size.bytes()), (2, file_len));
        spool.ack(a).unwrap();
        assert_eq!(size.entries(), 1);
        let one = size.bytes();
        assert!(0 < one && one < file_len, "{one} of {file_len}");
        drop(spool);

        let mut spool = Spool::open(dir.path()).unwrap();
        let size = spool.size();
        assert_eq!((size.entries(), size.bytes()), (1, one));
        let front = spool.front().map(|(seq, _)| seq).unwrap();
        spool.ack(front).unwrap();
        assert_eq!((size.entries(), size.bytes()), (0, 0));
    }

    #[test]
    fn the_format_is_stable_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path()).unwrap();
        spool.append(complete(4)).unwrap();
        let text = std::fs::read_to_string(spool.path()).unwrap();
        let value: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(value["type"], "entry");
        assert_eq!(value["entry"]["kind"], "complete");
        assert_eq!(value["entry"]["outcome"], "failed");
        assert_eq!(value["entry"]["exit_code"], 3);
    }
}
