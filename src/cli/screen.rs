//! `scaleout status`: the cluster, its workers and its queue on one screen for a person.
//!
//! Everything here is pure: a [`Frame`] holds what ClusterStatus and ListWorkers answered and
//! when, and the functions turn it into lines, one JSON object, or the bytes written for a
//! terminal or a pipe. Fetching the frames and the `--watch` loop are `cli::status`.

use serde_json::json;

use super::table::truncate;
use super::Output;
use crate::pb::v1::{ClusterStatusResponse, JobCounts, ReplicaStatus, Worker};
use crate::queue::JobState;

/// The screen size assumed when fitting the worker table when the terminal does not say
/// (output to a pipe or a file): a classic terminal.
pub const SCREEN_LINES: usize = 24;
/// Worker rows shown however many lines the rest of the screen takes.
const MIN_WORKER_ROWS: usize = 3;
/// Widest line of a replica's error, so a long transport error does not wrap on an 80-column
/// terminal and push the redrawn screen out of place.
const MAX_ERROR_LINE_CHARS: usize = 79;
const MAX_NAME_CHARS: usize = 24;
/// Characters of a worker's UUID shown: enough to tell workers apart and to type.
const SHORT_ID_CHARS: usize = 8;

/// What one screen shows.
#[derive(Debug, Clone)]
pub struct Frame {
    /// When the frame was taken, ms since the Unix epoch (this machine's clock).
    pub taken_at_ms: u64,
    /// ClusterStatus from the leader (or from any replica when there is none), or why no
    /// replica answered.
    pub cluster: Result<ClusterStatusResponse, String>,
    /// ListWorkers, or why it failed: the rest of the screen renders without it.
    pub workers: Result<Vec<Worker>, String>,
    /// The endpoints asked, named when none answered.
    pub endpoints: Vec<String>,
}

/// How the screen is laid out.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// The lines the screen may take; the worker table is cut to fit.
    pub max_lines: usize,
    /// The `--watch` interval, named in the footer.
    pub every_secs: Option<u64>,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            max_lines: SCREEN_LINES,
            every_secs: None,
        }
    }
}

/// The voters, and how many of them answered their member status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quorum {
    pub voters: usize,
    pub reachable_voters: usize,
}

impl Quorum {
    pub fn of(status: &ClusterStatusResponse) -> Quorum {
        let voters = status.replicas.iter().filter(|r| r.voter);
        Quorum {
            voters: voters.clone().count(),
            reachable_voters: voters.filter(|r| r.reachable).count(),
        }
    }

    /// Whether the cluster can commit: more than half of the voters are up.
    pub fn majority_up(&self) -> bool {
        self.voters > 0 && self.reachable_voters * 2 > self.voters
    }

    /// What a person must read first when the majority is down, or `None` when it is up.
    pub fn warning(&self) -> Option<String> {
        if self.majority_up() {
            return None;
        }
        let missing = (self.voters / 2 + 1).saturating_sub(self.reachable_voters);
        Some(format!(
            "NO MAJORITY: {} of {} voters reachable; nothing is submitted, granted or finished \
             until {missing} more {} back",
            self.reachable_voters,
            self.voters,
            if missing == 1 { "is" } else { "are" }
        ))
    }
}

/// Workers by status; `online` and `offline` split all of them, `disabled` and `draining` are
/// the workers taking no new tasks for those reasons.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerCounts {
    pub online: usize,
    pub offline: usize,
    pub disabled: usize,
    pub draining: usize,
}

impl WorkerCounts {
    pub fn of(workers: &[Worker]) -> WorkerCounts {
        let mut counts = WorkerCounts::default();
        for worker in workers {
            if worker.online {
                counts.online += 1;
            } else {
                counts.offline += 1;
            }
            match (worker.enabled, worker.draining) {
                (false, _) => counts.disabled += 1,
                (true, true) => counts.draining += 1,
                (true, false) => {}
            }
        }
        counts
    }
}

/// Every job state with its count, in `JobState::ALL` order.
pub fn job_counts_by_state(counts: &JobCounts) -> Vec<(JobState, u64)> {
    JobState::ALL
        .into_iter()
        .map(|state| {
            let count = match state {
                JobState::Queued => counts.queued,
                JobState::PickedUp => counts.picked_up,
                JobState::Running => counts.running,
                JobState::Succeeded => counts.succeeded,
                JobState::Failed => counts.failed,
                JobState::Cancelled => counts.cancelled,
            };
            (state, count)
        })
        .collect()
}

/// `{"queued": n, "picked_up": n, ...}`, or null when the replica did not report counts.
pub fn job_counts_json(counts: Option<&JobCounts>) -> serde_json::Value {
    match counts {
        Some(counts) => serde_json::Value::Object(
            job_counts_by_state(counts)
                .into_iter()
                .map(|(state, count)| (state.as_str().to_string(), json!(count)))
                .collect(),
        ),
        None => serde_json::Value::Null,
    }
}

/// How many committed entries `replica` has yet to apply: the leader's commit index minus the
/// replica's applied index (0 for a replica that is ahead because it was asked a moment
/// later). `None` when there is no leader, or either index is unknown.
pub fn lag(status: &ClusterStatusResponse, replica: &ReplicaStatus) -> Option<u64> {
    let leader = status
        .replicas
        .iter()
        .find(|r| Some(r.id) == status.leader_id && r.reachable)?;
    Some(leader.commit_index?.saturating_sub(replica.applied_index?))
}

/// The version a replica runs: `-` when it did not answer, `?` when it is too old to say.
fn version(replica: &ReplicaStatus) -> String {
    match (replica.reachable, replica.version.as_str()) {
        (false, _) => "-".into(),
        (true, "") => "?".into(),
        (true, version) => version.into(),
    }
}

/// The versions the reachable replicas run, for a line of the screen: one version, or each
/// replica's while they differ (during a rolling upgrade).
pub fn versions(status: &ClusterStatusResponse) -> String {
    let reachable: Vec<&ReplicaStatus> = status.replicas.iter().filter(|r| r.reachable).collect();
    let first = reachable.first().map(|r| version(r));
    if reachable.iter().all(|r| Some(version(r)) == first) {
        return format!("version {}", first.unwrap_or_else(|| "-".into()));
    }
    let each: Vec<String> = reachable
        .iter()
        .map(|r| format!("{} on {}", r.id, version(r)))
        .collect();
    format!("versions differ: {}", each.join(", "))
}

/// The role a person should read: a non-voter that follows is a learner.
fn role(replica: &ReplicaStatus) -> String {
    if !replica.reachable {
        "-".into()
    } else if !replica.voter && replica.role == "follower" {
        "learner".into()
    } else {
        replica.role.clone()
    }
}

/// The screen's lines, without line ends.
pub fn render(frame: &Frame, layout: Layout) -> Vec<String> {
    let taken_at = format_utc(frame.taken_at_ms);
    // At the bottom rather than in the header, which then fits 80 columns.
    let footer: Vec<String> = layout
        .every_secs
        .map(|secs| vec![String::new(), format!("every {secs} s; Ctrl-C to stop")])
        .unwrap_or_default();
    let status = match &frame.cluster {
        Ok(status) => status,
        Err(error) => {
            let mut lines = vec![
                format!("scaleout status at {taken_at}: the cluster did not answer"),
                String::new(),
                error.clone(),
                format!("asked: {}", frame.endpoints.join(", ")),
            ];
            lines.extend(footer);
            return lines;
        }
    };
    let answered_by = status
        .replicas
        .iter()
        .find(|r| r.id == status.answered_by)
        .map_or(String::new(), |r| format!(" ({})", r.api_addr));
    let mut lines = vec![format!(
        "scaleout status at {taken_at} from replica {}{answered_by}",
        status.answered_by
    )];
    lines.push(String::new());
    lines.extend(cluster_lines(status));
    lines.push(String::new());
    let queue = queue_lines(status);
    // The worker table gets whatever the other sections leave: its summary and header, the
    // blank line after it, the queue and the footer are fixed.
    let fixed = lines.len() + 2 + 1 + queue.len() + footer.len();
    let worker_rows = layout.max_lines.saturating_sub(fixed).max(MIN_WORKER_ROWS);
    lines.extend(worker_lines(&frame.workers, frame.taken_at_ms, worker_rows));
    lines.push(String::new());
    lines.extend(queue);
    lines.extend(footer);
    lines
}

fn cluster_lines(status: &ClusterStatusResponse) -> Vec<String> {
    let quorum = Quorum::of(status);
    let leader = match status.leader_id {
        Some(id) if status.leader_api_addr.is_empty() => format!("replica {id}"),
        Some(id) => format!("replica {id} ({})", status.leader_api_addr),
        None => "none (an election is under way)".to_string(),
    };
    let leader = format!("leader: {leader}, term {}", status.term);
    let mut lines = match quorum.warning() {
        // First, above the leader a replica may still believe in.
        Some(warning) => vec![warning, leader],
        None => vec![
            leader,
            format!(
                "majority: up, {} of {} voters reachable; {}",
                quorum.reachable_voters,
                quorum.voters,
                versions(status)
            ),
        ],
    };
    lines.extend(replica_table(status, false));
    lines
}

/// The replicas as a table, then one line per unreachable replica saying why (errors are long
/// and rare: under the table rather than in a column): `status` and `cluster status` both show
/// this; `cluster status` (`full`) with each replica's peer address too and its errors whole,
/// since it is where a person diagnoses an unreachable replica.
pub fn replica_table(status: &ClusterStatusResponse, full: bool) -> Vec<String> {
    let known = |value: Option<u64>| value.map_or("-".to_string(), |v| v.to_string());
    let rows: Vec<Vec<String>> = status
        .replicas
        .iter()
        .map(|r| {
            let mut row = vec![r.id.to_string(), r.api_addr.clone()];
            if full {
                row.push(r.peer_addr.clone());
            }
            row.extend([
                role(r),
                if r.reachable { "yes" } else { "NO" }.to_string(),
                if r.reachable {
                    r.term.to_string()
                } else {
                    "-".into()
                },
                known(r.commit_index),
                known(r.applied_index),
                known(lag(status, r)),
            ]);
            if full {
                row.push(version(r));
            }
            row
        })
        .collect();
    let mut header = vec!["REPLICA", "API"];
    if full {
        header.push("PEER");
    }
    header.extend(["ROLE", "REACHABLE", "TERM", "COMMIT", "APPLIED", "LAG"]);
    if full {
        header.push("VERSION");
    }
    let mut lines = super::table::table_lines(&header, &rows);
    lines.extend(status.replicas.iter().filter(|r| !r.reachable).map(|r| {
        let why = if r.error.is_empty() {
            "no answer"
        } else {
            &r.error
        };
        let line = format!("replica {} unreachable: {why}", r.id);
        if full {
            line
        } else {
            truncate(&line, MAX_ERROR_LINE_CHARS)
        }
    }));
    lines
}

/// The workers' summary and table, the table at most `max_rows` rows (the "… and N more"
/// line included).
fn worker_lines(
    workers: &Result<Vec<Worker>, String>,
    now_ms: u64,
    max_rows: usize,
) -> Vec<String> {
    let workers = match workers {
        Ok(workers) => workers,
        Err(error) => return vec![format!("workers: cannot list them: {error}")],
    };
    if workers.is_empty() {
        return vec!["workers: none registered".to_string()];
    }
    let counts = WorkerCounts::of(workers);
    let mut lines = vec![format!(
        "workers: {} online, {} offline, {} disabled, {} draining",
        counts.online, counts.offline, counts.disabled, counts.draining
    )];
    // By name, so rows stay put from one frame to the next.
    let mut sorted: Vec<&Worker> = workers.iter().collect();
    sorted.sort_by_cached_key(|w| {
        let info = w.info.clone().unwrap_or_default();
        (info.display_name, info.worker_id)
    });
    let shown = if sorted.len() <= max_rows {
        sorted.len()
    } else {
        max_rows.saturating_sub(1).max(1)
    };
    let rows: Vec<Vec<String>> = sorted[..shown]
        .iter()
        .map(|w| {
            let info = w.info.clone().unwrap_or_default();
            vec![
                truncate(&info.display_name, MAX_NAME_CHARS),
                info.worker_id.chars().take(SHORT_ID_CHARS).collect(),
                worker_state(w),
                format!("{}/{}", w.running_jobs.len(), info.max_tasks),
                format_age(now_ms, w.last_heartbeat_ms),
            ]
        })
        .collect();
    lines.extend(super::table::table_lines(
        &["NAME", "ID", "STATE", "RUNNING", "HEARTBEAT"],
        &rows,
    ));
    if shown < sorted.len() {
        lines.push(format!("… and {} more", sorted.len() - shown));
    }
    lines
}

fn worker_state(worker: &Worker) -> String {
    let reachable = if worker.online { "online" } else { "offline" };
    match (worker.enabled, worker.draining) {
        (false, _) => format!("{reachable}, disabled"),
        (true, true) => format!("{reachable}, draining"),
        (true, false) => reachable.to_string(),
    }
}

fn queue_lines(status: &ClusterStatusResponse) -> Vec<String> {
    let jobs = match &status.job_counts {
        Some(counts) => {
            let parts: Vec<String> = job_counts_by_state(counts)
                .into_iter()
                .map(|(state, count)| format!("{count} {}", state.as_str().replace('_', " ")))
                .collect();
            format!("jobs: {}", parts.join(", "))
        }
        None => format!(
            "jobs: not reported by replica {} (an older version?)",
            status.answered_by
        ),
    };
    vec![
        jobs,
        format!(
            "outbox: {} events not yet in SSISDB (shipped up to {}), {} log events dropped",
            status.outbox_events, status.outbox_shipped_up_to, status.outbox_dropped_log_events
        ),
    ]
}

/// The frame as one JSON object: everything the screen shows, workers not truncated.
pub fn frame_json(frame: &Frame) -> serde_json::Value {
    let mut value = json!({
        "taken_at_ms": frame.taken_at_ms,
        "available": frame.cluster.is_ok(),
    });
    match &frame.cluster {
        Ok(status) => {
            let mut cluster = super::cluster::cluster_json(status);
            if let Some(rows) = cluster["replicas"].as_array_mut() {
                for (row, replica) in rows.iter_mut().zip(&status.replicas) {
                    row["lag"] = json!(lag(status, replica));
                }
            }
            let quorum = Quorum::of(status);
            value["cluster"] = cluster;
            value["quorum"] = json!({
                "voters": quorum.voters,
                "reachable_voters": quorum.reachable_voters,
                "majority_up": quorum.majority_up(),
            });
        }
        Err(error) => {
            value["error"] = json!(error);
            value["endpoints"] = json!(frame.endpoints);
        }
    }
    value["workers"] = match &frame.workers {
        Ok(workers) => {
            let counts = WorkerCounts::of(workers);
            json!({
                "online": counts.online,
                "offline": counts.offline,
                "disabled": counts.disabled,
                "draining": counts.draining,
                "list": workers.iter().map(super::workers::worker_json).collect::<Vec<_>>(),
            })
        }
        Err(error) => json!({ "error": error }),
    };
    value
}

/// Writes one frame: JSON on one line, or the screen's lines; with `--watch`, drawn over the
/// last frame on a terminal, or followed by a blank line when piped.
pub fn write_frame(
    out: &mut impl std::io::Write,
    frame: &Frame,
    output: Output,
    layout: Layout,
    terminal: bool,
) -> std::io::Result<()> {
    match output {
        Output::Json => writeln!(out, "{}", frame_json(frame))?,
        Output::Table => {
            let lines = render(frame, layout);
            let watching = layout.every_secs.is_some();
            if watching && terminal {
                write!(out, "{}", redraw_in_place(&lines))?;
            } else {
                for line in &lines {
                    writeln!(out, "{line}")?;
                }
                if watching {
                    writeln!(out)?;
                }
            }
        }
    }
    out.flush()
}

/// A frame for a terminal, drawn over the last one: the cursor goes home, each line replaces
/// the old one and clears what is left of it, and what the last frame had below is cleared.
/// No full clear between frames, so the screen does not flicker.
pub fn redraw_in_place(lines: &[String]) -> String {
    const HOME: &str = "\x1b[H";
    const CLEAR_TO_LINE_END: &str = "\x1b[K";
    const CLEAR_BELOW: &str = "\x1b[J";
    let mut text = String::from(HOME);
    for line in lines {
        text.push_str(line);
        text.push_str(CLEAR_TO_LINE_END);
        text.push('\n');
    }
    text.push_str(CLEAR_BELOW);
    text
}

/// How long ago `at_ms` was, for a person: "0.4 s ago", "3 min ago", "2 h ago"; "-" for never.
pub fn format_age(now_ms: u64, at_ms: u64) -> String {
    if at_ms == 0 {
        return "-".into();
    }
    let age_ms = now_ms.saturating_sub(at_ms);
    match age_ms / 1000 {
        0..60 => format!("{:.1} s ago", age_ms as f64 / 1000.0),
        secs @ 60..3600 => format!("{} min ago", secs / 60),
        secs @ 3600..172_800 => format!("{} h ago", secs / 3600),
        secs => format!("{} days ago", secs / 86_400),
    }
}

/// `2025-06-01 12:00:03 UTC`: UTC, because that is what every replica's log shows.
pub fn format_utc(ms: u64) -> String {
    format_utc_with(ms, " UTC")
}

/// `ms` as `YYYY-MM-DD HH:MM:SS` followed by `suffix`.
pub fn format_utc_with(ms: u64, suffix: &str) -> String {
    match crate::wall_time::utc(ms) {
        Some(at) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}{suffix}",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        ),
        None => format!("{ms} ms after the Unix epoch"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::v1::WorkerInfo;

    /// 2025-06-01 12:00:00 UTC.
    const NOW_MS: u64 = 1_748_779_200_000;

    fn replica(id: u64, role: &str, applied: u64) -> ReplicaStatus {
        ReplicaStatus {
            id,
            api_addr: format!("127.0.0.1:710{id}"),
            peer_addr: format!("127.0.0.1:720{id}"),
            reachable: true,
            role: role.into(),
            term: 7,
            leader_id: Some(2),
            commit_index: Some(120),
            applied_index: Some(applied),
            last_log_index: Some(120),
            voter: true,
            version: "0.1.0".into(),
            ..ReplicaStatus::default()
        }
    }

    fn unreachable(id: u64) -> ReplicaStatus {
        ReplicaStatus {
            id,
            api_addr: format!("127.0.0.1:710{id}"),
            peer_addr: format!("127.0.0.1:720{id}"),
            reachable: false,
            role: "unreachable".into(),
            error: "Unavailable: tcp connect error: Connection refused (os error 111)".into(),
            voter: true,
            ..ReplicaStatus::default()
        }
    }

    fn cluster(replicas: Vec<ReplicaStatus>) -> ClusterStatusResponse {
        ClusterStatusResponse {
            leader_id: Some(2),
            leader_api_addr: "127.0.0.1:7102".into(),
            term: 7,
            replicas,
            answered_by: 2,
            outbox_events: 12,
            outbox_shipped_up_to: 345,
            outbox_dropped_log_events: 1,
            job_counts: Some(JobCounts {
                queued: 4,
                picked_up: 1,
                running: 2,
                succeeded: 10,
                failed: 3,
                cancelled: 0,
            }),
        }
    }

    fn worker(name: &str, online: bool, enabled: bool, draining: bool) -> Worker {
        Worker {
            info: Some(WorkerInfo {
                worker_id: format!("{name:0<8}-2f5e-4c7a-9d5e-3a1f7c2b9e10"),
                display_name: name.into(),
                max_tasks: 4,
                ..WorkerInfo::default()
            }),
            enabled,
            draining,
            online,
            last_heartbeat_ms: NOW_MS - 1_500,
            running_jobs: vec![1, 2],
            ..Worker::default()
        }
    }

    fn frame(cluster: ClusterStatusResponse, workers: Vec<Worker>) -> Frame {
        Frame {
            taken_at_ms: NOW_MS,
            cluster: Ok(cluster),
            workers: Ok(workers),
            endpoints: vec!["127.0.0.1:7101".into()],
        }
    }

    fn healthy() -> ClusterStatusResponse {
        cluster(vec![
            replica(1, "follower", 119),
            replica(2, "leader", 120),
            replica(3, "follower", 120),
        ])
    }

    /// The test workers are named w0, w1, ...
    fn is_worker_row(line: &str) -> bool {
        line.strip_prefix('w')
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
    }

    fn line_with<'a>(lines: &'a [String], start: &str) -> &'a str {
        lines
            .iter()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{}", lines.join("\n")))
    }

    #[test]
    fn a_healthy_cluster_shows_every_section() {
        let lines = render(
            &frame(healthy(), vec![worker("etl-1", true, true, false)]),
            Layout::default(),
        );
        assert_eq!(
            lines[0],
            "scaleout status at 2025-06-01 12:00:00 UTC from replica 2 (127.0.0.1:7102)"
        );
        assert_eq!(
            line_with(&lines, "leader:"),
            "leader: replica 2 (127.0.0.1:7102), term 7"
        );
        assert_eq!(
            line_with(&lines, "majority:"),
            "majority: up, 3 of 3 voters reachable; version 0.1.0"
        );
        let follower = line_with(&lines, "1 ");
        let cells: Vec<&str> = follower.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "1",
                "127.0.0.1:7101",
                "follower",
                "yes",
                "7",
                "120",
                "119",
                "1"
            ]
        );
        assert_eq!(
            line_with(&lines, "workers:"),
            "workers: 1 online, 0 offline, 0 disabled, 0 draining"
        );
        let row: Vec<&str> = line_with(&lines, "etl-1").split_whitespace().collect();
        assert_eq!(
            row,
            ["etl-1", "etl-1000", "online", "2/4", "1.5", "s", "ago"]
        );
        assert_eq!(
            line_with(&lines, "jobs:"),
            "jobs: 4 queued, 1 picked up, 2 running, 10 succeeded, 3 failed, 0 cancelled"
        );
        assert_eq!(
            line_with(&lines, "outbox:"),
            "outbox: 12 events not yet in SSISDB (shipped up to 345), 1 log events dropped"
        );
        assert!(lines.len() <= SCREEN_LINES, "{}", lines.join("\n"));
        // Narrow enough for an 80-column terminal, where a wrapped line would push the
        // redrawn screen out of place.
        for line in &lines {
            assert!(line.chars().count() < 80, "too wide: {line:?}");
        }
    }

    #[test]
    fn an_unreachable_replica_is_marked_and_the_rest_still_renders() {
        let status = cluster(vec![
            replica(1, "follower", 120),
            replica(2, "leader", 120),
            unreachable(3),
        ]);
        let lines = render(&frame(status, Vec::new()), Layout::default());
        let row: Vec<&str> = line_with(&lines, "3 ").split_whitespace().collect();
        assert_eq!(
            &row[..8],
            ["3", "127.0.0.1:7103", "-", "NO", "-", "-", "-", "-"]
        );
        assert_eq!(row.len(), 8, "{row:?}");
        let error = line_with(&lines, "replica 3 unreachable: ");
        assert!(error.contains("Connection refused"), "{error}");
        assert!(error.chars().count() <= MAX_ERROR_LINE_CHARS, "{error}");
        assert_eq!(
            line_with(&lines, "majority:"),
            "majority: up, 2 of 3 voters reachable; version 0.1.0"
        );
        assert_eq!(line_with(&lines, "workers:"), "workers: none registered");
        line_with(&lines, "jobs:");
    }

    #[test]
    fn without_a_majority_the_screen_says_writes_wait() {
        let mut status = cluster(vec![
            replica(1, "candidate", 120),
            unreachable(2),
            unreachable(3),
        ]);
        status.leader_id = None;
        status.leader_api_addr.clear();
        status.answered_by = 1;
        let lines = render(&frame(status.clone(), Vec::new()), Layout::default());
        assert_eq!(
            lines[0],
            "scaleout status at 2025-06-01 12:00:00 UTC from replica 1 (127.0.0.1:7101)"
        );
        assert_eq!(
            line_with(&lines, "leader:"),
            "leader: none (an election is under way), term 7"
        );
        assert_eq!(
            lines[2],
            "NO MAJORITY: 1 of 3 voters reachable; nothing is submitted, granted or finished \
             until 1 more is back"
        );
        // No leader, no commit index to measure lag against.
        assert_eq!(lag(&status, &status.replicas[0]), None);
    }

    #[test]
    fn when_no_replica_answers_the_screen_says_so() {
        let frame = Frame {
            taken_at_ms: NOW_MS,
            cluster: Err("the cluster is unavailable: no replica served the request".into()),
            workers: Err("not asked".into()),
            endpoints: vec!["127.0.0.1:7101".into(), "127.0.0.1:7102".into()],
        };
        let lines = render(
            &frame,
            Layout {
                every_secs: Some(2),
                ..Layout::default()
            },
        );
        assert_eq!(
            lines,
            [
                "scaleout status at 2025-06-01 12:00:00 UTC: the cluster did not answer",
                "",
                "the cluster is unavailable: no replica served the request",
                "asked: 127.0.0.1:7101, 127.0.0.1:7102",
                "",
                "every 2 s; Ctrl-C to stop",
            ]
        );
        let value = frame_json(&frame);
        assert_eq!(value["available"], false);
        assert_eq!(
            value["error"],
            "the cluster is unavailable: no replica served the request"
        );
        assert!(value.get("cluster").is_none());
    }

    #[test]
    fn many_workers_are_cut_to_fit_with_a_count_of_the_rest() {
        let workers: Vec<Worker> = (0..40)
            .map(|n| worker(&format!("w{n:02}"), n % 2 == 0, n % 5 != 0, n == 7))
            .collect();
        let watching = Layout {
            every_secs: Some(2),
            ..Layout::default()
        };
        let lines = render(&frame(healthy(), workers), watching);
        assert_eq!(lines.len(), SCREEN_LINES, "{}", lines.join("\n"));
        assert_eq!(
            lines.last().map(String::as_str),
            Some("every 2 s; Ctrl-C to stop")
        );
        let shown = lines.iter().filter(|l| is_worker_row(l)).count();
        let more = line_with(&lines, "… and");
        assert_eq!(more, format!("… and {} more", 40 - shown));
        // Sorted by name: the first ones are shown.
        assert!(line_with(&lines, "w00").contains("online, disabled"));
        assert!(line_with(&lines, "w01").contains("offline"));
        assert_eq!(
            line_with(&lines, "workers:"),
            "workers: 20 online, 20 offline, 8 disabled, 1 draining"
        );
    }

    #[test]
    fn a_small_screen_still_shows_a_few_workers() {
        let workers: Vec<Worker> = (0..10)
            .map(|n| worker(&format!("w{n}"), true, true, false))
            .collect();
        let lines = render(
            &frame(healthy(), workers),
            Layout {
                max_lines: 5,
                every_secs: None,
            },
        );
        let shown = lines.iter().filter(|l| is_worker_row(l)).count();
        assert_eq!(shown, MIN_WORKER_ROWS - 1);
        assert_eq!(line_with(&lines, "… and"), "… and 8 more");
    }

    #[test]
    fn workers_that_fit_are_all_shown_without_a_more_line() {
        let workers: Vec<Worker> = (0..3)
            .map(|n| worker(&format!("w{n}"), true, true, false))
            .collect();
        let lines = render(&frame(healthy(), workers), Layout::default());
        assert_eq!(lines.iter().filter(|l| is_worker_row(l)).count(), 3);
        assert!(!lines.iter().any(|l| l.starts_with('…')));
    }

    #[test]
    fn a_failed_worker_list_leaves_the_rest_of_the_screen() {
        let mut frame = frame(healthy(), Vec::new());
        frame.workers = Err("PermissionDenied: nope".into());
        let lines = render(&frame, Layout::default());
        assert_eq!(
            line_with(&lines, "workers:"),
            "workers: cannot list them: PermissionDenied: nope"
        );
        line_with(&lines, "outbox:");
    }

    #[test]
    fn versions_are_one_line_until_they_differ_and_a_column_in_the_full_table() {
        let mut status = healthy();
        assert_eq!(versions(&status), "version 0.1.0");
        status.replicas[2].version = "0.2.0".into();
        status.replicas[0].version.clear();
        assert_eq!(
            versions(&status),
            "versions differ: 1 on ?, 2 on 0.1.0, 3 on 0.2.0"
        );
        status.replicas[2] = unreachable(3);
        status.replicas[0].version = "0.1.0".into();
        assert_eq!(
            versions(&status),
            "version 0.1.0",
            "the unreachable one is left out"
        );
        let table = replica_table(&status, true);
        assert!(table[0].ends_with("VERSION"), "{table:?}");
        assert!(table[1].ends_with("0.1.0"), "{table:?}");
        assert!(table[3].ends_with(" -"), "{table:?}");
        assert!(!replica_table(&status, false)[0].contains("VERSION"));
    }

    #[test]
    fn a_non_voting_follower_is_a_learner() {
        let mut learner = replica(4, "follower", 100);
        learner.voter = false;
        let mut status = healthy();
        status.replicas.push(learner);
        let lines = render(&frame(status.clone(), Vec::new()), Layout::default());
        let row: Vec<&str> = line_with(&lines, "4 ").split_whitespace().collect();
        assert_eq!(row[2], "learner");
        assert_eq!(row[7], "20");
        // A learner does not count towards the majority.
        assert_eq!(
            Quorum::of(&status),
            Quorum {
                voters: 3,
                reachable_voters: 3
            }
        );
    }

    #[test]
    fn missing_job_counts_are_said_to_be_missing() {
        let mut status = healthy();
        status.job_counts = None;
        let lines = render(&frame(status, Vec::new()), Layout::default());
        assert_eq!(
            line_with(&lines, "jobs:"),
            "jobs: not reported by replica 2 (an older version?)"
        );
    }

    #[test]
    fn json_has_counts_quorum_lag_and_every_worker() {
        let workers: Vec<Worker> = (0..30)
            .map(|n| worker(&format!("w{n:02}"), true, n != 3, false))
            .collect();
        let value = frame_json(&frame(healthy(), workers));
        assert_eq!(value["available"], true);
        assert_eq!(value["taken_at_ms"], NOW_MS);
        assert_eq!(value["cluster"]["leader_id"], 2);
        assert_eq!(value["cluster"]["jobs"]["queued"], 4);
        assert_eq!(value["cluster"]["jobs"]["picked_up"], 1);
        assert_eq!(value["cluster"]["jobs"]["failed"], 3);
        assert_eq!(value["cluster"]["replicas"][0]["lag"], 1);
        assert_eq!(value["quorum"]["majority_up"], true);
        assert_eq!(value["workers"]["online"], 30);
        assert_eq!(value["workers"]["disabled"], 1);
        assert_eq!(value["workers"]["list"].as_array().map(Vec::len), Some(30));
    }

    #[test]
    fn frames_are_written_for_a_terminal_a_pipe_or_a_script() {
        let frame = frame(healthy(), Vec::new());
        let watching = Layout {
            every_secs: Some(1),
            ..Layout::default()
        };
        let written = |output, layout, terminal| {
            let mut out = Vec::new();
            write_frame(&mut out, &frame, output, layout, terminal).expect("write");
            String::from_utf8(out).expect("utf-8")
        };
        let once = written(Output::Table, Layout::default(), true);
        assert!(once.starts_with("scaleout status at ") && !once.contains('\x1b'));
        assert!(once.ends_with("dropped\n"), "{once:?}");
        let piped = written(Output::Table, watching, false);
        assert!(piped.ends_with("Ctrl-C to stop\n\n"), "{piped:?}");
        assert!(!piped.contains('\x1b'));
        let on_terminal = written(Output::Table, watching, true);
        assert!(on_terminal.starts_with("\x1b[Hscaleout status at "));
        assert!(on_terminal.ends_with("\x1b[J"));
        let json = written(Output::Json, watching, true);
        assert_eq!(json.lines().count(), 1);
        let value: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(value["cluster"]["answered_by"], 2);
    }

    #[test]
    fn a_redraw_overwrites_each_line_and_clears_below() {
        let text = redraw_in_place(&["a".to_string(), String::new()]);
        assert_eq!(text, "\x1b[Ha\x1b[K\n\x1b[K\n\x1b[J");
    }

    #[test]
    fn ages_and_times_read_well() {
        assert_eq!(format_age(NOW_MS, 0), "-");
        assert_eq!(format_age(NOW_MS, NOW_MS - 400), "0.4 s ago");
        assert_eq!(format_age(NOW_MS, NOW_MS + 400), "0.0 s ago");
        assert_eq!(format_age(NOW_MS, NOW_MS - 185_000), "3 min ago");
        assert_eq!(format_age(NOW_MS, NOW_MS - 7_200_000), "2 h ago");
        assert_eq!(format_age(NOW_MS, NOW_MS - 3 * 86_400_000), "3 days ago");
        assert_eq!(format_utc(NOW_MS + 3_999), "2025-06-01 12:00:03 UTC");
    }

    #[test]
    fn long_names_and_errors_are_cut() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
