//! Task log lines: what workers stream while a task runs, stored per job in sequence order.
//!
//! Lines are replicated like everything else (so `job logs` works on any replica and SSISDB
//! shipping can resume anywhere), but the model does not hold them: apply numbers them and hands
//! them to the state machine (`Changes::log_lines`), which keeps them in the store, where reads
//! find them (`raft::LogReader`). Each job's share is capped: past [`MAX_LOG_LINES_PER_JOB`]
//! lines or [`MAX_LOG_BYTES_PER_JOB`] bytes of text, lines are dropped (that one and every later
//! one) and a single notice line, always at sequence `MAX_LOG_LINES_PER_JOB + 1`, counts how
//! many, rewritten in place as more are dropped. Lines that arrive under a lease that is no
//! longer current are still kept, flagged `late`: they describe what really ran, but nothing
//! they say changes the job.

use serde::{Deserialize, Serialize};

use super::attempt::truncate_utf8;
use super::{Job, JobId};

/// Lines kept per job; the truncation notice, when there is one, is one more (sequence
/// `MAX_LOG_LINES_PER_JOB + 1`).
pub const MAX_LOG_LINES_PER_JOB: u64 = 10_000;
/// Longest text one line keeps; longer lines are cut at a character boundary.
pub const MAX_LOG_LINE_BYTES: usize = 16 * 1024;
/// Text kept per job: without it, the line cap alone would let one job store 160 MiB (10,000
/// lines of 16 KiB) on every replica and in every snapshot.
pub const MAX_LOG_BYTES_PER_JOB: u64 = 16 * 1024 * 1024;

/// SSIS's TaskLogLevel flags for the levels a task's output maps onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LogLevel {
    Verbose,
    Info,
    Warning,
    Error,
}

impl LogLevel {
    pub const ALL: [LogLevel; 4] = [
        LogLevel::Verbose,
        LogLevel::Info,
        LogLevel::Warning,
        LogLevel::Error,
    ];

    /// The SSIS bit value: Verbose 1, Info 2, Warning 4, Error 8.
    pub fn bits(self) -> u32 {
        match self {
            LogLevel::Verbose => 1,
            LogLevel::Info => 2,
            LogLevel::Warning => 4,
            LogLevel::Error => 8,
        }
    }

    /// The level with exactly these bits; `None` for any other value.
    pub fn from_bits(bits: u32) -> Option<LogLevel> {
        LogLevel::ALL.into_iter().find(|level| level.bits() == bits)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Verbose => "verbose",
            LogLevel::Info => "info",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
        }
    }
}

/// One line as a worker sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// The worker's clock when the line was produced (display only; order is the sequence).
    pub at_ms: u64,
    pub level: LogLevel,
    pub text: String,
}

/// A stored line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLogLine {
    pub job_id: JobId,
    /// Per job, from 1, in the order lines were applied.
    pub sequence: u64,
    /// The attempt that produced it (1-based).
    pub attempt: u32,
    pub line: LogLine,
    /// Sent under a lease that was no longer current.
    pub late: bool,
}

/// The text of the notice that replaces dropped lines.
pub fn truncation_notice(dropped: u64) -> String {
    format!("log truncated: {dropped} more lines dropped")
}

/// A job's log counters (the fields of the same names of [`Job`] and
/// [`FinishedJob`](super::FinishedJob)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LogCounts {
    /// The highest sequence stored (see [`Job::log_lines`]).
    pub lines: u64,
    pub dropped: u64,
    pub bytes: u64,
}

impl Job {
    pub fn log_counts(&self) -> LogCounts {
        LogCounts {
            lines: self.log_lines,
            dropped: self.log_lines_dropped,
            bytes: self.log_bytes,
        }
    }

    pub fn set_log_counts(&mut self, counts: LogCounts) {
        self.log_lines = counts.lines;
        self.log_lines_dropped = counts.dropped;
        self.log_bytes = counts.bytes;
    }
}

/// Numbers `lines` for job `job_id` (updating its `counts`) and pushes the lines to store onto
/// `out`, in order; past the cap, the truncation notice (pushed again each time it is
/// rewritten).
pub(super) fn append(
    out: &mut Vec<JobLogLine>,
    job_id: JobId,
    counts: &mut LogCounts,
    attempt: u32,
    late: bool,
    lines: Vec<LogLine>,
) {
    let mut last_dropped = None;
    for mut line in lines {
        line.text = truncate_utf8(line.text, MAX_LOG_LINE_BYTES);
        let bytes = line.text.len() as u64;
        // Once a line was dropped, every later one is too: a log with a hole in the middle
        // would read as complete.
        let kept = counts.dropped == 0
            && counts.lines < MAX_LOG_LINES_PER_JOB
            && counts.bytes + bytes <= MAX_LOG_BYTES_PER_JOB;
        if kept {
            counts.lines += 1;
            counts.bytes += bytes;
            out.push(JobLogLine {
                job_id,
                sequence: counts.lines,
                attempt,
                line,
                late,
            });
        } else {
            counts.dropped += 1;
            last_dropped = Some(line.at_ms);
        }
    }
    if let Some(at_ms) = last_dropped {
        // One notice, rewritten with the running count, so a runaway task costs one row.
        let sequence = MAX_LOG_LINES_PER_JOB + 1;
        counts.lines = sequence;
        out.push(JobLogLine {
            job_id,
            sequence,
            attempt,
            line: LogLine {
                at_ms,
                level: LogLevel::Warning,
                text: truncation_notice(counts.dropped),
            },
            late,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_round_trip_through_their_bits() {
        for level in LogLevel::ALL {
            assert_eq!(LogLevel::from_bits(level.bits()), Some(level));
        }
        assert_eq!(LogLevel::from_bits(0), None);
        assert_eq!(LogLevel::from_bits(3), None);
        assert_eq!(LogLevel::from_bits(16), None);
    }
}
