//! The layout of a snapshot's data, written and read as a stream so that neither side of a
//! snapshot ever holds it whole: only the queue's counters, workers and the few outbox events
//! the queue holds are one value; jobs, outbox events and log lines, the bulk of it, follow one
//! record at a time.
//!
//! Format 8:
//! - the format, u32 BE;
//! - the length of the state (u64 BE), then the state: bincode of [`Parts`] with no jobs and no
//!   log lines (rows and counters, no indexes: the receiver rebuilds those, so a snapshot cannot
//!   carry an index that disagrees with its rows);
//! - records, each its length (u32 BE, at least 1), a tag byte and the bincode of: a live [`Job`]
//!   (tag 1), a finished job as `(FinishedJob, Job)` (tag 4: what the queue keeps of it, and its
//!   full row with its current log counters), a [`FinishedJob`] alone (tag 2: a finished job
//!   whose full row was gone when the snapshot was built, see `state_machine.rs`), an
//!   [`OutboxEvent`] the state does not hold (tag 5), or a [`JobLogLine`] (tag 3); jobs first,
//!   lines last;
//! - a length of 0, then a CRC-32 (u32 LE) of every byte before it, and nothing after.
//!
//! Format 7 (the state with the outbox counters of its time, its outbox whole; finished jobs as
//! tag 1 or, with the record of its time, tag 2) is still read.
//! Formats 5 and 6 (the jobs inside the state value, then untagged lines; 5 with jobs from
//! before the per-job log byte cap: `legacy.rs`) are still read, and so are formats 3 and 4 (one
//! bincode value with the lines inside; 3 without the cluster time and the log batch marks),
//! whole: they come from builds that held snapshots in memory. Their jobs are handed out as
//! records like format 7's.

use std::io::{self, BufReader, BufWriter, Read, Write};

use serde::Deserialize;

use super::legacy::{FinishedJobV1, JobV1, OutboxMetaV1, PartsV5, PartsV6, PartsV7};
use super::storage::{decode, encode};
use crate::queue::{FinishedJob, Job, JobId, JobLogLine, OutboxEvent, Parts, Worker};

pub(super) const SNAPSHOT_FORMAT: u32 = 8;
/// The first tagged format; its finished jobs and outbox counters are of their time.
const FORMAT_7: u32 = 7;
/// No stored record comes near this (a job's spec and a line's text are capped far below); a
/// longer length is damage, refused before anything is allocated for it.
const MAX_RECORD_BYTES: u32 = 64 * 1024 * 1024;
const BUFFER_BYTES: usize = 1024 * 1024;

const TAG_JOB: u8 = 1;
const TAG_FINISHED: u8 = 2;
const TAG_LINE: u8 = 3;
const TAG_FINISHED_ROW: u8 = 4;
const TAG_EVENT: u8 = 5;

/// One record of snapshot data after its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Record {
    /// A live job; in snapshots of earlier builds, a finished one too.
    Job(Box<Job>),
    /// A finished job: what the queue keeps of it, and its full row.
    FinishedRow(FinishedJob, Box<Job>),
    /// A finished job whose full row was gone.
    Finished(FinishedJob),
    Event(OutboxEvent),
    Line(JobLogLine),
}

/// Writes snapshot data: the state first ([`DataWriter::start`]), then each job and each line.
pub(super) struct DataWriter<W: Write> {
    out: BufWriter<W>,
    crc: crc32fast::Hasher,
    lines: u64,
    bytes: u64,
}

impl<W: Write> DataWriter<W> {
    /// Writes the format and `state`, which must hold no jobs and no lines (they follow as
    /// records).
    pub(super) fn start(out: W, state: &Parts) -> io::Result<Self> {
        if !state.log_lines.is_empty() || !state.jobs.is_empty() || !state.finished.is_empty() {
            return Err(io::Error::other(
                "snapshot state with jobs or log lines inside (they are written one by one)",
            ));
        }
        let mut writer = DataWriter {
            out: BufWriter::with_capacity(BUFFER_BYTES, out),
            crc: crc32fast::Hasher::new(),
            lines: 0,
            bytes: 0,
        };
        let encoded = encode(state).map_err(io::Error::other)?;
        writer.put(&SNAPSHOT_FORMAT.to_be_bytes())?;
        writer.put(&(encoded.len() as u64).to_be_bytes())?;
        writer.put(&encoded)?;
        Ok(writer)
    }

    /// Writes one live job (all jobs go before the first line).
    pub(super) fn job(&mut self, job: &Job) -> io::Result<()> {
        self.record(TAG_JOB, job)
    }

    /// Writes one finished job: what the queue keeps of it and its full row.
    pub(super) fn finished_row(&mut self, kept: &FinishedJob, row: &Job) -> io::Result<()> {
        self.record(TAG_FINISHED_ROW, &(kept, row))
    }

    /// Writes one outbox event the state does not hold.
    pub(super) fn event(&mut self, event: &OutboxEvent) -> io::Result<()> {
        self.record(TAG_EVENT, event)
    }

    /// Writes what is kept of a finished job whose row is gone.
    pub(super) fn finished(&mut self, job: &FinishedJob) -> io::Result<()> {
        self.record(TAG_FINISHED, job)
    }

    /// Writes one line.
    pub(super) fn line(&mut self, line: &JobLogLine) -> io::Result<()> {
        self.record(TAG_LINE, line)?;
        self.lines += 1;
        Ok(())
    }

    fn record(&mut self, tag: u8, value: &impl serde::Serialize) -> io::Result<()> {
        let encoded = encode(value).map_err(io::Error::other)?;
        let len = u32::try_from(encoded.len() + 1)
            .ok()
            .filter(|len| *len <= MAX_RECORD_BYTES)
            .ok_or_else(|| io::Error::other(format!("a record of {} bytes", encoded.len())))?;
        self.put(&len.to_be_bytes())?;
        self.put(&[tag])?;
        self.put(&encoded)
    }

    /// Ends the data; returns the output, the lines written and the bytes written.
    pub(super) fn finish(mut self) -> io::Result<(W, u64, u64)> {
        self.put(&0u32.to_be_bytes())?;
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        let bytes = self.bytes + 4;
        let out = self.out.into_inner().map_err(|e| e.into_error())?;
        Ok((out, self.lines, bytes))
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.bytes += bytes.len() as u64;
        self.out.write_all(bytes)
    }
}

/// Reads snapshot data: [`DataReader::open`] returns the state (without jobs), then
/// [`DataReader::next_record`] each job and line. The checksum is checked when the last record
/// has been read: a caller applies nothing for good before `next_record` has returned `Ok(None)`.
pub(super) struct DataReader<R: Read> {
    /// Jobs of formats 3 to 6, taken out of their state value, handed out first.
    jobs: std::vec::IntoIter<Job>,
    source: Source<R>,
}

enum Source<R: Read> {
    Streamed {
        input: BufReader<R>,
        crc: crc32fast::Hasher,
        /// The format: from 7, records carry a tag (5 and 6: lines only, untagged).
        format: u32,
        done: bool,
    },
    /// Format 3 or 4: decoded whole.
    Whole(std::vec::IntoIter<JobLogLine>),
}

impl<R: Read> DataReader<R> {
    pub(super) fn open(input: R) -> Result<(Parts, Self), String> {
        let mut input = BufReader::with_capacity(BUFFER_BYTES, input);
        let mut crc = crc32fast::Hasher::new();
        let format = read_array::<_, 4>(&mut input, &mut crc)
            .map_err(|e| format!("snapshot data too short for its format: {e}"))?;
        let (mut state, source) = match u32::from_be_bytes(format) {
            version @ (5 | 6 | FORMAT_7 | SNAPSHOT_FORMAT) => {
                let len = u64::from_be_bytes(
                    read_array::<_, 8>(&mut input, &mut crc)
                        .map_err(|e| format!("snapshot data cut short: {e}"))?,
                );
                let encoded = read_exactly(&mut input, len, "its state")?;
                crc.update(&encoded);
                let state: Parts = match version {
                    SNAPSHOT_FORMAT => decode(&encoded),
                    FORMAT_7 => decode::<PartsV7>(&encoded).map(Parts::from),
                    6 => decode::<PartsV6>(&encoded).map(Parts::from),
                    _ => decode::<PartsV5>(&encoded).map(Parts::from),
                }
                .map_err(|e| format!("snapshot state does not decode: {e}"))?;
                if !state.log_lines.is_empty() {
                    return Err("snapshot state holds log lines it should not".into());
                }
                if version >= FORMAT_7 && (!state.jobs.is_empty() || !state.finished.is_empty()) {
                    return Err("snapshot state holds jobs it should not".into());
                }
                let source = Source::Streamed {
                    input,
                    crc,
                    format: version,
                    done: false,
                };
                (state, source)
            }
            version @ (3 | 4) => {
                let mut body = Vec::new();
                input
                    .read_to_end(&mut body)
                    .map_err(|e| format!("snapshot data cannot be read: {e}"))?;
                let mut state = if version == 4 {
                    Parts::from(
                        decode::<PayloadV4>(&body)
                            .map_err(|e| format!("snapshot data does not decode: {e}"))?
                            .queue,
                    )
                } else {
                    decode::<PayloadV3>(&body)
                        .map_err(|e| format!("snapshot data (format 3) does not decode: {e}"))?
                        .upgrade()
                };
                let lines = std::mem::take(&mut state.log_lines);
                (state, Source::Whole(lines.into_iter()))
            }
            version => {
                return Err(format!(
                    "snapshot format {version} is not one this build reads (3 to {SNAPSHOT_FORMAT})"
                ))
            }
        };
        let jobs = std::mem::take(&mut state.jobs).into_iter();
        Ok((state, DataReader { jobs, source }))
    }

    /// The next record; `Ok(None)` at the end, once the checksum matched.
    pub(super) fn next_record(&mut self) -> Result<Option<Record>, String> {
        if let Some(job) = self.jobs.next() {
            return Ok(Some(Record::Job(Box::new(job))));
        }
        let (input, crc, format, done) = match &mut self.source {
            Source::Whole(lines) => return Ok(lines.next().map(Record::Line)),
            Source::Streamed {
                input,
                crc,
                format,
                done,
            } => (input, crc, *format, done),
        };
        if *done {
            return Ok(None);
        }
        let len = u32::from_be_bytes(
            read_array::<_, 4>(input, crc).map_err(|e| format!("snapshot data cut short: {e}"))?,
        );
        if len == 0 {
            let expected = crc.clone().finalize();
            let mut stored = [0; 4];
            input
                .read_exact(&mut stored)
                .map_err(|e| format!("snapshot data cut short before its checksum: {e}"))?;
            if u32::from_le_bytes(stored) != expected {
                return Err("snapshot data is damaged: its checksum does not match".into());
            }
            let mut extra = [0; 1];
            if input
                .read(&mut extra)
                .map_err(|e| format!("snapshot data cannot be read: {e}"))?
                != 0
            {
                return Err("snapshot data runs on after its checksum".into());
            }
            *done = true;
            return Ok(None);
        }
        if len > MAX_RECORD_BYTES {
            return Err(format!("snapshot data is damaged: a record of {len} bytes"));
        }
        let encoded = read_exactly(input, u64::from(len), "a record")?;
        crc.update(&encoded);
        let (tag, body) = match format >= FORMAT_7 {
            true => encoded
                .split_first()
                .map(|(tag, body)| (*tag, body))
                .ok_or("snapshot data is damaged: an empty record")?,
            false => (TAG_LINE, encoded.as_slice()),
        };
        let record = match (tag, format) {
            (TAG_JOB, _) => decode(body).map(|job| Record::Job(Box::new(job))),
            (TAG_FINISHED, FORMAT_7) => {
                decode::<FinishedJobV1>(body).map(|kept| Record::Finished(kept.into()))
            }
            (TAG_FINISHED, _) => decode(body).map(Record::Finished),
            (TAG_LINE, _) => decode(body).map(Record::Line),
            (TAG_FINISHED_ROW, SNAPSHOT_FORMAT) => decode::<(FinishedJob, Job)>(body)
                .map(|(kept, row)| Record::FinishedRow(kept, Box::new(row))),
            (TAG_EVENT, SNAPSHOT_FORMAT) => decode(body).map(Record::Event),
            (tag, _) => return Err(format!("snapshot data is damaged: a record tagged {tag}")),
        };
        record
            .map(Some)
            .map_err(|e| format!("a record in the snapshot does not decode: {e}"))
    }
}

/// Reads `len` bytes as they arrive (not allocated from the length, so a damaged length cannot
/// ask for more memory than the data has).
fn read_exactly<R: Read>(input: &mut R, len: u64, what: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    input
        .take(len)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("snapshot data cannot be read: {e}"))?;
    if bytes.len() as u64 != len {
        return Err(format!(
            "snapshot data cut short: {what} has {} of {len} bytes",
            bytes.len()
        ));
    }
    Ok(bytes)
}

fn read_array<R: Read, const N: usize>(
    input: &mut R,
    crc: &mut crc32fast::Hasher,
) -> io::Result<[u8; N]> {
    let mut bytes = [0; N];
    input.read_exact(&mut bytes)?;
    crc.update(&bytes);
    Ok(bytes)
}

/// A format-4 snapshot's data after the format: the whole state with its lines.
#[derive(Deserialize)]
struct PayloadV4 {
    queue: PartsV5,
}

/// A format-3 snapshot's data: [`Parts`] as it was before the cluster time.
#[derive(Deserialize)]
struct PayloadV3 {
    queue: PartsV3,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct PartsV3 {
    jobs: Vec<JobV1>,
    workers: Vec<Worker>,
    log_lines: Vec<JobLogLine>,
    next_job_id: JobId,
    next_lease_token: u64,
    outbox: Vec<OutboxEvent>,
    outbox_meta: OutboxMetaV1,
}

impl PayloadV3 {
    fn upgrade(self) -> Parts {
        let q = self.queue;
        Parts {
            jobs: q.jobs.into_iter().map(Into::into).collect(),
            workers: q.workers,
            log_lines: q.log_lines,
            next_job_id: q.next_job_id,
            next_lease_token: q.next_lease_token,
            outbox_meta: q.outbox_meta.holding(&q.outbox),
            outbox: q.outbox,
            clock_ms: 0,
            log_batches: Vec::new(),
            finished: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{EventKind, JobState, LogLevel, LogLine, OutboxMeta, UNKNOWN_LAST_EVENT};
    use crate::raft::legacy::tests::old_job;

    fn line(job_id: JobId, sequence: u64) -> JobLogLine {
        JobLogLine {
            job_id,
            sequence,
            attempt: 1,
            line: LogLine {
                at_ms: 5,
                level: LogLevel::Info,
                text: format!("line {sequence} of job {job_id}"),
            },
            late: false,
        }
    }

    fn event(id: u64, job: JobId) -> OutboxEvent {
        OutboxEvent {
            id,
            at_ms: 10 + id,
            kind: EventKind::JobSubmitted { job },
        }
    }

    /// What a snapshot holds besides its state.
    #[derive(Debug, Default, PartialEq)]
    struct Streamed {
        lines: Vec<JobLogLine>,
        events: Vec<OutboxEvent>,
        finished_rows: Vec<(FinishedJob, Job)>,
    }

    /// `state` written as a snapshot: its jobs and finished jobs as records, `rows` as finished
    /// jobs with their rows, `events`, then `lines`.
    fn written(state: &Parts, streamed: &Streamed) -> Vec<u8> {
        let header = Parts {
            jobs: Vec::new(),
            finished: Vec::new(),
            ..state.clone()
        };
        let mut writer = DataWriter::start(Vec::new(), &header).expect("start");
        for job in &state.jobs {
            writer.job(job).expect("job");
        }
        for kept in &state.finished {
            writer.finished(kept).expect("finished job");
        }
        for (kept, row) in &streamed.finished_rows {
            writer.finished_row(kept, row).expect("finished row");
        }
        for event in &streamed.events {
            writer.event(event).expect("event");
        }
        for line in &streamed.lines {
            writer.line(line).expect("line");
        }
        let (data, count, bytes) = writer.finish().expect("finish");
        assert_eq!(count, streamed.lines.len() as u64);
        assert_eq!(bytes, data.len() as u64);
        data
    }

    /// The state read back with its jobs and finished jobs, and the other records.
    fn read_all(data: &[u8]) -> Result<(Parts, Streamed), String> {
        let (mut state, mut reader) = DataReader::open(data)?;
        let mut streamed = Streamed::default();
        while let Some(record) = reader.next_record()? {
            match record {
                Record::Job(job) => state.jobs.push(*job),
                Record::Finished(kept) => state.finished.push(kept),
                Record::FinishedRow(kept, row) => streamed.finished_rows.push((kept, *row)),
                Record::Event(event) => streamed.events.push(event),
                Record::Line(line) => streamed.lines.push(line),
            }
        }
        Ok((state, streamed))
    }

    fn lines_only(lines: Vec<JobLogLine>) -> Streamed {
        Streamed {
            lines,
            ..Streamed::default()
        }
    }

    /// Data of format 5 or 6 as those builds wrote it: `state`, then one untagged line.
    fn untagged_stream(format: u32, state: &impl serde::Serialize, line: &JobLogLine) -> Vec<u8> {
        let mut data = format.to_be_bytes().to_vec();
        let state_bytes = encode(state).expect("encode");
        data.extend((state_bytes.len() as u64).to_be_bytes());
        data.extend(state_bytes);
        let encoded_line = encode(line).expect("encode");
        data.extend((encoded_line.len() as u32).to_be_bytes());
        data.extend(encoded_line);
        data.extend(0u32.to_be_bytes());
        let crc = crc32fast::hash(&data);
        data.extend(crc.to_le_bytes());
        data
    }

    /// Data of format 7 as that build wrote it: `state`, then tagged records.
    fn format_7_stream(state: &PartsV7, records: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut data = 7u32.to_be_bytes().to_vec();
        let state_bytes = encode(state).expect("encode");
        data.extend((state_bytes.len() as u64).to_be_bytes());
        data.extend(state_bytes);
        for (tag, body) in records {
            data.extend((body.len() as u32 + 1).to_be_bytes());
            data.push(*tag);
            data.extend(body);
        }
        data.extend(0u32.to_be_bytes());
        let crc = crc32fast::hash(&data);
        data.extend(crc.to_le_bytes());
        data
    }

    fn job(id: JobId, state: JobState) -> Job {
        let mut job = Job::from(old_job(id));
        job.state = state;
        job.log_bytes = 99;
        job
    }

    fn old_meta() -> OutboxMetaV1 {
        OutboxMetaV1 {
            last_index: 3,
            next_sequence: 2,
            acked_up_to: 0,
            dropped_log_events: 1,
        }
    }

    #[test]
    fn data_reads_back_as_written() {
        let state = Parts {
            jobs: vec![job(1, JobState::Queued)],
            finished: vec![FinishedJob::of(&job(3, JobState::Failed), 17)],
            next_job_id: 9,
            next_lease_token: 4,
            outbox: vec![event(5, 1)],
            outbox_meta: OutboxMeta {
                pending: 3,
                ..OutboxMeta::default()
            },
            clock_ms: 77,
            log_batches: vec![(3, 2, 1)],
            ..Parts::default()
        };
        let finished = job(2, JobState::Succeeded);
        let streamed = Streamed {
            lines: (1..=300).map(|n| line(n % 7 + 1, n)).collect(),
            events: vec![event(6, 2), event(7, 3)],
            finished_rows: vec![(FinishedJob::of(&finished, 6), finished)],
        };
        let read = read_all(&written(&state, &streamed)).expect("reads");
        assert_eq!(read, (state.clone(), streamed));
        let empty = read_all(&written(&state, &Streamed::default())).expect("reads");
        assert_eq!(empty, (state, Streamed::default()));
    }

    #[test]
    fn damaged_or_cut_data_is_refused_before_the_end_is_accepted() {
        let state = Parts {
            next_job_id: 2,
            ..Parts::default()
        };
        let streamed = Streamed {
            events: vec![event(1, 1)],
            ..lines_only((1..=20).map(|n| line(1, n)).collect())
        };
        let data = written(&state, &streamed);
        // A flipped bit anywhere, a cut anywhere, or bytes after the end: never a clean end.
        for at in (0..data.len()).step_by(7) {
            let mut flipped = data.clone();
            flipped[at] ^= 0x10;
            assert!(read_all(&flipped).is_err(), "a flipped bit at {at} passed");
            assert!(read_all(&data[..at]).is_err(), "a cut at {at} passed");
        }
        let mut longer = data.clone();
        longer.push(0);
        assert!(read_all(&longer).is_err());
        // A length that asks for more than there is allocates nothing of that size.
        let mut huge = SNAPSHOT_FORMAT.to_be_bytes().to_vec();
        huge.extend(u64::MAX.to_be_bytes());
        assert!(read_all(&huge).unwrap_err().contains("cut short"));
    }

    #[test]
    fn formats_3_to_7_are_still_read_with_their_outbox_held() {
        let old = PartsV3 {
            jobs: Vec::new(),
            workers: Vec::new(),
            log_lines: vec![line(1, 1)],
            next_job_id: 42,
            next_lease_token: 7,
            outbox: vec![event(1, 1)],
            outbox_meta: old_meta(),
        };
        let mut data = 3u32.to_be_bytes().to_vec();
        data.extend(bincode::serialize(&(old,)).expect("encode"));
        let (state, streamed) = read_all(&data).expect("a format-3 snapshot");
        assert_eq!((state.next_job_id, state.clock_ms), (42, 0));
        assert_eq!(streamed, lines_only(vec![line(1, 1)]));
        assert_eq!(state.outbox, vec![event(1, 1)]);
        assert_eq!(state.outbox_meta, old_meta().holding(&[event(1, 1)]));
        assert_eq!(
            (state.outbox_meta.pending, state.outbox_meta.held),
            (1, true)
        );

        let v4 = PartsV5 {
            jobs: vec![old_job(3)],
            workers: Vec::new(),
            log_lines: vec![line(2, 1), line(2, 2)],
            next_job_id: 4,
            next_lease_token: 1,
            outbox: Vec::new(),
            outbox_meta: old_meta(),
            clock_ms: 1_700_000_000_000,
            log_batches: Vec::new(),
        };
        let mut data = 4u32.to_be_bytes().to_vec();
        data.extend(bincode::serialize(&(&v4,)).expect("encode"));
        let (state, streamed) = read_all(&data).expect("a format-4 snapshot");
        assert_eq!(state.clock_ms, 1_700_000_000_000);
        assert_eq!(streamed, lines_only(v4.log_lines.clone()));
        assert_eq!((state.jobs[0].id, state.jobs[0].log_bytes), (3, 0));
        assert!(state.outbox_meta.held);

        // Format 5: streamed like the current one, jobs without their byte count.
        let v5 = PartsV5 {
            log_lines: Vec::new(),
            ..v4
        };
        let data = untagged_stream(5, &v5, &line(3, 1));
        let (state, streamed) = read_all(&data).expect("a format-5 snapshot");
        assert_eq!((state.jobs[0].id, state.jobs[0].log_lines), (3, 12));
        assert_eq!(streamed, lines_only(vec![line(3, 1)]));

        // Format 6: every job inside the state value, lines untagged.
        let v6 = PartsV6 {
            jobs: vec![job(4, JobState::Cancelled)],
            workers: Vec::new(),
            log_lines: Vec::new(),
            next_job_id: 5,
            next_lease_token: 1,
            outbox: vec![event(2, 4), event(3, 4)],
            outbox_meta: old_meta(),
            clock_ms: 5,
            log_batches: Vec::new(),
        };
        let data = untagged_stream(6, &v6, &line(4, 1));
        let (state, streamed) = read_all(&data).expect("a format-6 snapshot");
        assert_eq!(state.jobs, v6.jobs);
        assert_eq!(streamed, lines_only(vec![line(4, 1)]));
        assert_eq!(
            (state.outbox_meta.pending, state.outbox_meta.held),
            (2, true)
        );

        // Format 7: tagged records, finished jobs as rows (tag 1) or records of their time.
        let v7 = PartsV7 {
            jobs: Vec::new(),
            finished: Vec::new(),
            workers: Vec::new(),
            log_lines: Vec::new(),
            next_job_id: 9,
            next_lease_token: 1,
            outbox: vec![event(4, 5)],
            outbox_meta: old_meta(),
            clock_ms: 5,
            log_batches: Vec::new(),
        };
        let finished = job(6, JobState::Succeeded);
        let kept = FinishedJob::of(&finished, UNKNOWN_LAST_EVENT);
        let old_kept = FinishedJobV1::of(&kept);
        let records = [
            (TAG_JOB, encode(&job(5, JobState::Queued)).expect("encode")),
            (TAG_JOB, encode(&finished).expect("encode")),
            (TAG_FINISHED, encode(&old_kept).expect("encode")),
            (TAG_LINE, encode(&line(5, 1)).expect("encode")),
        ];
        let (state, streamed) =
            read_all(&format_7_stream(&v7, &records)).expect("a format-7 snapshot");
        assert_eq!(state.jobs, vec![job(5, JobState::Queued), finished]);
        assert_eq!(state.finished, vec![kept]);
        assert_eq!(streamed, lines_only(vec![line(5, 1)]));
        assert_eq!(state.outbox, vec![event(4, 5)]);
        assert_eq!(
            (state.outbox_meta.pending, state.outbox_meta.held),
            (1, true)
        );
        // Tags 4 and 5 are not format 7's.
        let refused = read_all(&format_7_stream(
            &v7,
            &[(TAG_EVENT, encode(&event(9, 1)).expect("encode"))],
        ));
        assert!(refused.is_err());

        let mut unknown = 9u32.to_be_bytes().to_vec();
        unknown.extend([0u8; 8]);
        let refused = read_all(&unknown).expect_err("format 9 is refused");
        assert!(refused.contains("format 9"), "{refused}");
    }
}
