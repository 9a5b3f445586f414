//! How task log lines are laid out in the `sm` tree: each job's lines in blocks of consecutive
//! sequences, one row per block, `lines/<job id BE><first sequence BE>` → bincode of a
//! `Vec<JobLogLine>`.
//!
//! Why blocks and not a row per line: sled 0.34 keeps bookkeeping in memory for every page and
//! replays them all when it opens. With a row per line, a replica holding 5.1 M lines (100,000
//! finished jobs of 50 lines) used 162 MiB resident just to open its database and 5.7 s to read
//! it through; the same bytes as 100,000 rows of 5 KB opened in 10 MiB (measured with sled
//! 0.34.7 alone). A snapshot install also writes far fewer, larger rows.
//!
//! The rules every writer follows: an apply call writes each job's new lines as one block (split
//! past [`BLOCK_BYTES`]); the truncation notice is always a block of its own, so rewriting it in
//! place rewrites one row; lines are never written twice otherwise. Any split of a job's lines
//! into blocks is then valid, and a reader finds the block holding a sequence as the last block
//! of that job starting at or before it.
//!
//! Builds before blocks wrote a row per line under `log/`; [`convert_single_line_rows`] turns
//! those into blocks when a replica opens.

use crate::queue::{JobId, JobLogLine, MAX_LOG_LINES_PER_JOB};

use super::storage::{decode, encode};

pub(super) const LINES_PREFIX: &[u8] = b"lines/";
/// One row per line, written by builds before blocks (`log/<job id BE><sequence BE>`).
pub(super) const SINGLE_LINE_PREFIX: &[u8] = b"log/";
/// A block is closed once its lines reach this; one line may exceed it on its own. Small, because
/// sled 0.34 keeps large values in memory: 80 MB written as values of 4, 8, 16 and 64 KB (8 MiB
/// cache, sled alone) left 52, 49, 63 and 85 MiB resident.
pub(super) const BLOCK_BYTES: usize = 8 * 1024;
/// What a stored line costs besides its text (ids, numbers, lengths), for [`BLOCK_BYTES`].
const LINE_OVERHEAD_BYTES: usize = 48;
/// The truncation notice's sequence: the only line ever rewritten.
const NOTICE_SEQUENCE: u64 = MAX_LOG_LINES_PER_JOB + 1;

pub(super) fn block_key(job: JobId, first_sequence: u64) -> Vec<u8> {
    prefixed_key(LINES_PREFIX, job, first_sequence)
}

fn single_line_key(job: JobId, sequence: u64) -> Vec<u8> {
    prefixed_key(SINGLE_LINE_PREFIX, job, sequence)
}

fn prefixed_key(prefix: &[u8], job: JobId, sequence: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 16);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&job.to_be_bytes());
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

/// The first key after every key that starts with `prefix` (whose last byte is below 0xff).
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// (job, first sequence) of a block key, or (job, sequence) of a single-line key.
pub(super) fn parse_line_key(key: &[u8]) -> Option<(JobId, u64)> {
    let rest = key
        .strip_prefix(LINES_PREFIX)
        .or_else(|| key.strip_prefix(SINGLE_LINE_PREFIX))?;
    let (job, sequence) = rest.split_first_chunk::<8>()?;
    let sequence: [u8; 8] = sequence.try_into().ok()?;
    Some((u64::from_be_bytes(*job), u64::from_be_bytes(sequence)))
}

/// Every block key of `job`, as a range.
pub(super) fn job_blocks(job: JobId) -> std::ops::RangeInclusive<Vec<u8>> {
    block_key(job, 0)..=block_key(job, u64::MAX)
}

pub(super) fn encode_block(lines: &[JobLogLine]) -> Result<Vec<u8>, bincode::Error> {
    encode(&lines)
}

/// Decodes a block; the error names the job and the block's first sequence.
pub(super) fn decode_block(key: &[u8], value: &[u8]) -> Result<Vec<JobLogLine>, String> {
    let (job, first) = parse_line_key(key).unwrap_or((0, 0));
    decode::<Vec<JobLogLine>>(value).map_err(|e| {
        format!("the block of job {job}'s log lines from sequence {first} does not decode: {e}")
    })
}

/// Groups lines given in (job, sequence) order into blocks: a new block starts at another job, a
/// gap in the sequence, the truncation notice, or once the current block is full.
#[derive(Default)]
pub(super) struct BlockPacker {
    lines: Vec<JobLogLine>,
    bytes: usize,
}

impl BlockPacker {
    /// Adds `line`; returns the block it closed, if any, as (key, lines).
    pub(super) fn push(&mut self, line: JobLogLine) -> Option<(Vec<u8>, Vec<JobLogLine>)> {
        let continues = self.lines.last().is_some_and(|last| {
            last.job_id == line.job_id
                && last.sequence + 1 == line.sequence
                && line.sequence != NOTICE_SEQUENCE
                && self.bytes < BLOCK_BYTES
        });
        let closed = if continues { None } else { self.take() };
        self.bytes += line.line.text.len() + LINE_OVERHEAD_BYTES;
        self.lines.push(line);
        closed
    }

    /// The block still open, if any.
    pub(super) fn take(&mut self) -> Option<(Vec<u8>, Vec<JobLogLine>)> {
        let first = self.lines.first()?;
        let key = block_key(first.job_id, first.sequence);
        self.bytes = 0;
        Some((key, std::mem::take(&mut self.lines)))
    }
}

/// Rewrites the single-line rows of builds before blocks as blocks, a job at a time (each job's
/// blocks and the removal of its old rows in one batch, so a crash midway leaves every job either
/// converted or not). Returns how many lines were converted.
pub(super) fn convert_single_line_rows(tree: &sled::Tree) -> Result<u64, String> {
    let read_err = |e: sled::Error| format!("cannot read the old log line rows: {e}");
    let mut converted = 0;
    loop {
        let Some(first) = tree.scan_prefix(SINGLE_LINE_PREFIX).keys().next() else {
            return Ok(converted);
        };
        let first = first.map_err(read_err)?;
        let (job, _) = parse_line_key(&first)
            .ok_or_else(|| format!("unexpected key {:?} among the log lines", first.as_ref()))?;
        let mut batch = sled::Batch::default();
        let mut packer = BlockPacker::default();
        let put = |batch: &mut sled::Batch, (key, lines): (Vec<u8>, Vec<JobLogLine>)| {
            encode_block(&lines)
                .map(|value| batch.insert(key, value))
                .map_err(|e| format!("cannot encode a block of log lines: {e}"))
        };
        for row in tree.range(single_line_key(job, 0)..=single_line_key(job, u64::MAX)) {
            let (key, value) = row.map_err(read_err)?;
            let line: JobLogLine = decode(&value).map_err(|e| {
                format!("an old log line row of job {job} does not decode ({e}): {key:?}")
            })?;
            batch.remove(key);
            converted += 1;
            if let Some(block) = packer.push(line) {
                put(&mut batch, block)?;
            }
        }
        if let Some(block) = packer.take() {
            put(&mut batch, block)?;
        }
        tree.apply_batch(batch)
            .map_err(|e| format!("cannot write the converted log lines: {e}"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{LogLevel, LogLine};

    fn line(job: JobId, sequence: u64, text_bytes: usize) -> JobLogLine {
        JobLogLine {
            job_id: job,
            sequence,
            attempt: 1,
            line: LogLine {
                at_ms: 0,
                level: LogLevel::Info,
                text: "x".repeat(text_bytes),
            },
            late: false,
        }
    }

    fn pack(lines: Vec<JobLogLine>) -> Vec<(JobId, Vec<u64>)> {
        let mut packer = BlockPacker::default();
        let mut blocks: Vec<_> = lines.into_iter().filter_map(|l| packer.push(l)).collect();
        blocks.extend(packer.take());
        blocks
            .into_iter()
            .map(|(key, lines)| {
                let (job, first) = parse_line_key(&key).expect("a block key");
                assert_eq!(first, lines[0].sequence, "keyed by its first line");
                (job, lines.iter().map(|l| l.sequence).collect())
            })
            .collect()
    }

    #[test]
    fn a_block_holds_one_jobs_consecutive_lines() {
        let blocks = pack(vec![
            line(1, 1, 10),
            line(1, 2, 10),
            line(2, 1, 10),
            line(2, 3, 10),
        ]);
        assert_eq!(blocks, vec![(1, vec![1, 2]), (2, vec![1]), (2, vec![3])]);
    }

    #[test]
    fn the_truncation_notice_is_a_block_of_its_own() {
        let last = MAX_LOG_LINES_PER_JOB;
        let blocks = pack(vec![
            line(1, last - 1, 10),
            line(1, last, 10),
            line(1, NOTICE_SEQUENCE, 10),
        ]);
        assert_eq!(
            blocks,
            vec![(1, vec![last - 1, last]), (1, vec![NOTICE_SEQUENCE])]
        );
    }

    #[test]
    fn a_full_block_is_closed() {
        let per_line = 1000;
        let count = (BLOCK_BYTES / (per_line + LINE_OVERHEAD_BYTES) + 1) as u64;
        let blocks = pack((1..=count + 5).map(|s| line(7, s, per_line)).collect());
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].1.len() as u64, count);
        assert_eq!(blocks[1].1, (count + 1..=count + 5).collect::<Vec<_>>());
    }

    #[test]
    fn old_single_line_rows_become_blocks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::Config::new()
            .path(dir.path())
            .open()
            .expect("open sled");
        let tree = db.open_tree("sm").expect("tree");
        for job in 1..=3 {
            for sequence in 1..=4 {
                let value = encode(&line(job, sequence, 5)).expect("encode");
                tree.insert(single_line_key(job, sequence), value)
                    .expect("insert");
            }
        }
        tree.insert(b"meta/other", b"kept".as_slice())
            .expect("insert");
        assert_eq!(convert_single_line_rows(&tree), Ok(12));
        assert_eq!(tree.scan_prefix(SINGLE_LINE_PREFIX).count(), 0);
        let blocks: Vec<(Vec<u8>, Vec<u64>)> = tree
            .scan_prefix(LINES_PREFIX)
            .map(|row| {
                let (key, value) = row.expect("row");
                let lines = decode_block(&key, &value).expect("decodes");
                (key.to_vec(), lines.iter().map(|l| l.sequence).collect())
            })
            .collect();
        assert_eq!(
            blocks,
            (1..=3)
                .map(|job| (block_key(job, 1), vec![1, 2, 3, 4]))
                .collect::<Vec<_>>()
        );
        assert!(tree.get(b"meta/other").expect("get").is_some());
        assert_eq!(convert_single_line_rows(&tree), Ok(0), "nothing left");
    }
}
