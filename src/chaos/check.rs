//! The chaos checker: what the load generator saw (the history) and what the cluster holds at
//! the end, checked against the invariants of DESIGN.md. Pure: no IO, so it is tested on
//! made-up histories.
//!
//! - 1 no acknowledged submit is lost, and the job under its id is the one submitted (same
//!   idempotency key and same command line): a lost job whose id was handed out again is
//!   caught, not counted as there;
//! - 2 fencing: a job completes at most once, and only its latest attempt may carry a worker's
//!   result (an earlier one that succeeded means a stale completion was accepted);
//! - 3 no job has more attempts than `max_attempts`;
//! - 4 a lease expires only where a worker was really out of reach: an expired attempt whose
//!   lifetime overlaps no worker fault (pause, kill, API cut) means a replica fault expired it;
//! - 6 one job per idempotency key, and every acknowledgment of a key names that job;
//! - 7 a linearizable read never misses a job acknowledged before the read began, nor a cancel
//!   acknowledged before it began (it must show the job cancelled, being cancelled, or ended);
//! - and after the faults heal: every acknowledged job is terminal, and every replica holds
//!   the same state, read while all report one applied index: every job whole (attempts,
//!   tokens, outcomes, timestamps), the log lines of a sample of jobs, the workers, and the
//!   outbox. Replicas that never report one applied index are a finding, not a skipped check.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use crate::pb::v1::{self, AttemptOutcome, JobState};

/// One logical submit: its key, when it was invoked and answered (ms since the run began),
/// and the job id if it was acknowledged.
#[derive(Debug, Clone)]
pub struct SubmitRecord {
    pub key: String,
    pub invoked_ms: u64,
    pub completed_ms: u64,
    /// `None`: the outcome is unknown (the cluster did not answer in time).
    pub job_id: Option<u64>,
    /// The command line submitted: the job under the acknowledged id must have it.
    pub argv: Vec<String>,
}

/// How long after a fault healed a broken read is still reported as in its wake.
const FAULT_AFTERMATH_MS: u64 = 5_000;

/// A linearizable GetJob of an acknowledged job.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub job_id: u64,
    /// When the submit of `job_id` was acknowledged, and when the read was invoked.
    pub acked_ms: u64,
    pub invoked_ms: u64,
    /// The job was not there (an error that is not "not found" is not recorded).
    pub missing: bool,
    /// The read began after a cancel of the job was acknowledged (`acked_ms` is then the
    /// cancel's acknowledgment).
    pub after_cancel: bool,
    /// The read showed the job cancelled, being cancelled (`cancel_requested`) or ended.
    pub saw_cancel: bool,
    /// What the read saw, for the report: after a miss, the refusal and what the replicas showed
    /// right after; after a cancel, the state it read.
    pub detail: String,
}

/// One injected fault, with its window in wall-clock ms since the Unix epoch (the clock of the
/// leader's attempt timestamps, same machine).
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub kind: &'static str,
    pub detail: String,
    pub started_unix_ms: u64,
    pub healed_unix_ms: u64,
    /// A fault that keeps workers from the leader (their leases may expire).
    pub touches_workers: bool,
}

/// SSISDB at the end, after the leader's outbox drained.
#[derive(Debug, Clone, Default)]
pub struct SsisdbEnd {
    pub view: super::ssisdb::SsisdbView,
    /// Events still in the leader's outbox (0 unless the drain timed out).
    pub outbox_left: u64,
    /// The committed shipped cursor.
    pub shipped_up_to: u64,
    /// Keys of the job requests written to `scaleout.job_requests` during the run.
    pub sent_requests: Vec<String>,
}

/// What the cluster holds at the end.
#[derive(Debug, Clone, Default)]
pub struct FinalState {
    /// Every job, read linearizably from the leader.
    pub jobs: Vec<v1::Job>,
    /// Replica id → what it holds, each read from that replica's own state while every replica
    /// reported one applied index (empty when they never did: see `replicas_apart`).
    pub per_replica: BTreeMap<u64, ReplicaView>,
    /// `None` when the replicas reported one applied index at the end; otherwise what they
    /// reported on the last try (each replica's applied index before and after its reads).
    pub replicas_apart: Option<String>,
    /// Replica id → (events in its outbox, its shipped cursor): the outbox is replicated
    /// state, so every replica holds the same (the SSISDB side of invariant 5 is
    /// `tests/ssisdb.rs`).
    pub outboxes: BTreeMap<u64, (u64, u64)>,
    /// Calls with a stale lease token the replicas refused (renewals, log appends,
    /// completions), counted in the workers' logs.
    pub stale_refused: u64,
    /// When the run shipped to SSISDB.
    pub ssisdb: Option<SsisdbEnd>,
    /// When the run began (wall clock, ms since the Unix epoch): places the history's times
    /// among the faults'.
    pub started_unix_ms: u64,
    /// Processes that exited without being killed by the run.
    pub crashes: Vec<String>,
}

/// One replica's own state at the end, for the comparison of replicas.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplicaView {
    /// Job id → the whole job as this replica holds it.
    pub jobs: BTreeMap<u64, v1::Job>,
    /// Job id → its log lines (sequence, attempt, text), for a sample of jobs.
    pub logs: BTreeMap<u64, Vec<(u64, u32, String)>>,
    /// Worker id → its replicated row (enabled, draining, last heartbeat, running jobs).
    pub workers: BTreeMap<String, String>,
}

/// The checker's verdict and the run's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub seed: u64,
    pub seconds: f64,
    pub faults: BTreeMap<&'static str, u64>,
    pub faults_injected: u64,
    pub submits_acknowledged: u64,
    pub submits_indeterminate: u64,
    pub jobs_completed: u64,
    pub stale_completions_refused: u64,
    pub longest_commit_gap_ms: u64,
    /// Where that window began (seconds into the run) and the faults it overlapped.
    pub longest_commit_gap_from_s: f64,
    pub longest_commit_gap_during: Vec<String>,
    /// The next longest such windows (up to four), longest first: each its length, start and
    /// the faults it overlapped, as one line.
    pub next_commit_gaps: Vec<String>,
    pub reads_checked: u64,
    /// Rows in scaleout.event_messages at the end (when the run shipped to SSISDB).
    pub ssisdb_events: Option<u64>,
    /// Leases expired by a worker fault (expected).
    pub leases_expired_by_worker_faults: u64,
    // Violations: every list must be empty.
    pub lost: Vec<u64>,
    /// Acknowledged ids that now hold another submit's job: `id (acknowledged for key, holds key)`.
    pub replaced: Vec<String>,
    pub completed_twice: Vec<u64>,
    pub stale_completions_accepted: Vec<u64>,
    pub over_max_attempts: Vec<u64>,
    pub expired_without_worker_fault: Vec<u64>,
    pub duplicate_keys: Vec<String>,
    pub inconsistent_acks: Vec<String>,
    /// `id (acknowledged at …, read at …, during …)`.
    pub stale_reads: Vec<String>,
    pub not_terminal: Vec<u64>,
    pub diverged_replicas: Vec<String>,
    pub ssisdb_problems: Vec<String>,
    pub unexpected_exits: Vec<String>,
    /// SSISDB rows (jobs, tasks, task_attempts) that do not show a job's final change.
    pub ssisdb_rows_behind: Vec<String>,
    /// Job requests from T-SQL written during the run, and those that did not become exactly
    /// one job.
    pub ssisdb_requests: usize,
    pub ssisdb_requests_wrong: Vec<String>,
}

impl Report {
    /// No invariant was broken.
    pub fn ok(&self) -> bool {
        self.violations().is_empty()
    }

    /// Each broken invariant, with the jobs (or keys) that show it.
    pub fn violations(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut add = |name: &str, items: Vec<String>| {
            if !items.is_empty() {
                let shown: Vec<String> = items.iter().take(10).cloned().collect();
                found.push(format!("{name}: {} ({})", items.len(), shown.join(", ")));
            }
        };
        let ids = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>();
        add("acknowledged jobs lost", ids(&self.lost));
        add(
            "acknowledged job ids that now hold another job",
            self.replaced.clone(),
        );
        add("jobs completed twice", ids(&self.completed_twice));
        add(
            "stale completions accepted",
            ids(&self.stale_completions_accepted),
        );
        add("jobs over max_attempts", ids(&self.over_max_attempts));
        add(
            "leases expired without a worker fault",
            ids(&self.expired_without_worker_fault),
        );
        add(
            "idempotency keys with two jobs",
            self.duplicate_keys.clone(),
        );
        add(
            "keys acknowledged with two job ids",
            self.inconsistent_acks.clone(),
        );
        add(
            "linearizable reads that missed an acknowledged job",
            self.stale_reads.clone(),
        );
        add(
            "acknowledged jobs not terminal after healing",
            ids(&self.not_terminal),
        );
        add(
            "replicas that differ from the leader",
            self.diverged_replicas.clone(),
        );
        add("SSISDB not exactly once", self.ssisdb_problems.clone());
        add(
            "SSISDB rows that differ from the replicated state",
            self.ssisdb_rows_behind.clone(),
        );
        add(
            "job requests from T-SQL that are not exactly one job",
            self.ssisdb_requests_wrong.clone(),
        );
        add(
            "processes that exited by themselves",
            self.unexpected_exits.clone(),
        );
        found
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(
            f,
            "chaos (seed {}): {:.0} s, {} faults ({})",
            self.seed,
            self.seconds,
            self.faults_injected,
            faults.join(", ")
        )?;
        writeln!(
            f,
            "jobs acknowledged {}, completed {}, lost {}, replaced by another job {}, completed \
             twice {}; submits with no answer {}",
            self.submits_acknowledged,
            self.jobs_completed,
            self.lost.len(),
            self.replaced.len(),
            self.completed_twice.len(),
            self.submits_indeterminate
        )?;
        writeln!(
            f,
            "stale lease calls refused {}, stale completions accepted {}; leases expired by worker faults {}, \
             by anything else {}; linearizable reads checked {}",
            self.stale_completions_refused,
            self.stale_completions_accepted.len(),
            self.leases_expired_by_worker_faults,
            self.expired_without_worker_fault.len(),
            self.reads_checked
        )?;
        writeln!(
            f,
            "longest window without an acknowledged submit: {} ms, from {:.1} s{}",
            self.longest_commit_gap_ms,
            self.longest_commit_gap_from_s,
            if self.longest_commit_gap_during.is_empty() {
                String::new()
            } else {
                format!(", during {}", self.longest_commit_gap_during.join("; "))
            }
        )?;
        if !self.next_commit_gaps.is_empty() {
            writeln!(
                f,
                "next longest windows: {}",
                self.next_commit_gaps.join(" | ")
            )?;
        }
        if let Some(events) = self.ssisdb_events {
            writeln!(
                f,
                "SSISDB: {events} events, {} problems; {} job requests from T-SQL, {} not \
                 exactly one job",
                self.ssisdb_problems.len(),
                self.ssisdb_requests,
                self.ssisdb_requests_wrong.len()
            )?;
            writeln!(
                f,
                "SSISDB rows that differ from the replicated state: {}{}",
                self.ssisdb_rows_behind.len(),
                if self.ssisdb_rows_behind.is_empty() {
                    String::new()
                } else {
                    let shown: Vec<&str> = self
                        .ssisdb_rows_behind
                        .iter()
                        .take(5)
                        .map(String::as_str)
                        .collect();
                    format!(" ({})", shown.join(", "))
                }
            )?;
        }
        let violations = self.violations();
        if violations.is_empty() {
            write!(f, "every invariant held")
        } else {
            write!(f, "INVARIANTS BROKEN:\n  {}", violations.join("\n  "))
        }
    }
}

/// Every difference between the replicas' views (read at one applied index), and between them
/// and the leader's linearizable list of jobs.
fn compare_replicas(end: &FinalState) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(apart) = &end.replicas_apart {
        found.push(format!(
            "the replicas never reported one applied index at the end ({apart})"
        ));
        return found;
    }
    let mut views = end.per_replica.iter();
    let Some((first, reference)) = views.next() else {
        return found;
    };
    let differing = |a: &BTreeMap<u64, v1::Job>, b: &BTreeMap<u64, v1::Job>| -> Vec<u64> {
        a.keys()
            .chain(b.keys())
            .copied()
            .collect::<BTreeSet<u64>>()
            .into_iter()
            .filter(|id| a.get(id) != b.get(id))
            .collect()
    };
    for (replica, view) in views {
        let jobs = differing(&reference.jobs, &view.jobs);
        if !jobs.is_empty() {
            found.push(format!(
                "replica {replica} and replica {first} hold {} jobs differently (e.g. {:?})",
                jobs.len(),
                &jobs[..jobs.len().min(5)]
            ));
        }
        let logs: Vec<u64> = reference
            .logs
            .keys()
            .chain(view.logs.keys())
            .copied()
            .collect::<BTreeSet<u64>>()
            .into_iter()
            .filter(|id| reference.logs.get(id) != view.logs.get(id))
            .collect();
        if !logs.is_empty() {
            found.push(format!(
                "replica {replica} and replica {first} hold the log lines of jobs {logs:?} \
                 differently"
            ));
        }
        if view.workers != reference.workers {
            found.push(format!(
                "replica {replica} and replica {first} hold the workers differently"
            ));
        }
    }
    // The leader's list was read before the replicas: only what cannot change once every job
    // ended is compared (states, attempts, tokens, outcomes).
    let settled = |job: &v1::Job| {
        let attempts: Vec<(u32, u64, i32, String)> = job
            .attempts
            .iter()
            .map(|a| (a.number, a.lease_token, a.outcome, a.worker_id.clone()))
            .collect();
        (job.state, job.idempotency_key.clone(), attempts)
    };
    let leader: BTreeMap<u64, _> = end.jobs.iter().map(|j| (j.id, settled(j))).collect();
    let replica: BTreeMap<u64, _> = reference
        .jobs
        .values()
        .map(|j| (j.id, settled(j)))
        .collect();
    if leader != replica {
        let ids: BTreeSet<u64> = leader.keys().chain(replica.keys()).copied().collect();
        let off: Vec<u64> = ids
            .into_iter()
            .filter(|id| leader.get(id) != replica.get(id))
            .take(5)
            .collect();
        found.push(format!(
            "the leader's linearizable jobs differ from replica {first}'s (e.g. {off:?})"
        ));
    }
    let mut outboxes = end.outboxes.iter();
    if let Some((first, expected)) = outboxes.next() {
        for (replica, outbox) in outboxes {
            if outbox != expected {
                found.push(format!(
                    "replica {replica}'s outbox holds {} events up to cursor {}, replica \
                     {first}'s {} up to {}",
                    outbox.0, outbox.1, expected.0, expected.1
                ));
            }
        }
    }
    found
}

/// Whether a job state is one a job ends in.
pub(super) fn terminal(state: i32) -> bool {
    matches!(
        JobState::try_from(state),
        Ok(JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    )
}

/// Checks `submits`, `reads` and `faults` against `end`. `lease_ms` is the lease interval: a
/// worker fault can expire a lease until one interval after it heals.
pub fn check(
    seed: u64,
    seconds: f64,
    submits: &[SubmitRecord],
    reads: &[ReadRecord],
    faults: &[FaultRecord],
    end: &FinalState,
    lease_ms: u64,
) -> Report {
    let mut report = Report {
        seed,
        seconds,
        unexpected_exits: end.crashes.clone(),
        faults_injected: faults.len() as u64,
        stale_completions_refused: end.stale_refused,
        reads_checked: reads.len() as u64,
        ..Report::default()
    };
    for fault in faults {
        *report.faults.entry(fault.kind).or_default() += 1;
    }

    // 6: every acknowledgment of a key names one job.
    let mut acked: BTreeMap<&str, u64> = BTreeMap::new();
    for submit in submits {
        match submit.job_id {
            Some(id) => {
                if let Some(first) = acked.insert(&submit.key, id) {
                    if first != id {
                        report
                            .inconsistent_acks
                            .push(format!("{} ({first} and {id})", submit.key));
                    }
                }
            }
            None => report.submits_indeterminate += 1,
        }
    }
    report.submits_acknowledged = acked.len() as u64;

    let jobs: BTreeMap<u64, &v1::Job> = end.jobs.iter().map(|j| (j.id, j)).collect();
    let mut by_key: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for job in &end.jobs {
        if !job.idempotency_key.is_empty() {
            by_key.entry(&job.idempotency_key).or_default().push(job.id);
        }
    }
    report.duplicate_keys = by_key
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .map(|(key, ids)| format!("{key} {ids:?}"))
        .collect();

    // 1 and the end state of every acknowledged job: the job under the id is the one submitted.
    let acked_ids: BTreeSet<u64> = acked.values().copied().collect();
    let submitted_argv: BTreeMap<&str, &[String]> = submits
        .iter()
        .map(|s| (s.key.as_str(), s.argv.as_slice()))
        .collect();
    for (key, &id) in &acked {
        if let Some(job) = jobs.get(&id) {
            let argv = job.spec.as_ref().map_or(&[][..], |s| s.argv.as_slice());
            if job.idempotency_key != *key {
                report.replaced.push(format!(
                    "{id} (acknowledged for {key}, holds {})",
                    job.idempotency_key
                ));
            } else if submitted_argv.get(key).is_some_and(|sent| *sent != argv) {
                report.replaced.push(format!(
                    "{id} (acknowledged for {key} with another command line: {argv:?})"
                ));
            }
        }
    }
    for &id in &acked_ids {
        match jobs.get(&id) {
            None => report.lost.push(id),
            Some(job) if !terminal(job.state) => report.not_terminal.push(id),
            Some(_) => report.jobs_completed += 1,
        }
    }

    // 2, 3 and 4 on every job's attempts.
    let worker_windows: Vec<(u64, u64)> = faults
        .iter()
        .filter(|f| f.touches_workers)
        .map(|f| (f.started_unix_ms, f.healed_unix_ms.saturating_add(lease_ms)))
        .collect();
    for job in &end.jobs {
        let outcomes: Vec<AttemptOutcome> = job
            .attempts
            .iter()
            .map(|a| AttemptOutcome::try_from(a.outcome).unwrap_or(AttemptOutcome::Unspecified))
            .collect();
        let succeeded = outcomes
            .iter()
            .filter(|o| **o == AttemptOutcome::Succeeded)
            .count();
        if succeeded > 1 {
            report.completed_twice.push(job.id);
        }
        let earlier = &outcomes[..outcomes.len().saturating_sub(1)];
        if earlier.contains(&AttemptOutcome::Succeeded) {
            report.stale_completions_accepted.push(job.id);
        }
        let max_attempts = job.spec.as_ref().map_or(1, |s| s.max_attempts.max(1));
        if job.attempts.len() > max_attempts as usize {
            report.over_max_attempts.push(job.id);
        }
        for attempt in &job.attempts {
            if attempt.outcome != AttemptOutcome::Expired as i32 {
                continue;
            }
            let (start, end) = (attempt.started_at_ms, attempt.ended_at_ms);
            if worker_windows
                .iter()
                .any(|(from, to)| start <= *to && end >= *from)
            {
                report.leases_expired_by_worker_faults += 1;
            } else {
                report.expired_without_worker_fault.push(job.id);
            }
        }
    }

    // 7.
    report.stale_reads = reads
        .iter()
        .filter(|r| r.invoked_ms >= r.acked_ms && (r.missing || (r.after_cancel && !r.saw_cancel)))
        .map(|r| {
            let (acked, read) = (
                end.started_unix_ms + r.acked_ms,
                end.started_unix_ms + r.invoked_ms,
            );
            // A fault's effects outlast its healing (a restarted replica catching up), so
            // the faults healed shortly before are named too.
            let during: Vec<String> = faults
                .iter()
                .filter(|f| {
                    f.started_unix_ms <= read && f.healed_unix_ms + FAULT_AFTERMATH_MS >= acked
                })
                .map(|f| {
                    if f.healed_unix_ms < acked {
                        format!(
                            "{} {} (healed {:.1} s before)",
                            f.kind,
                            f.detail,
                            (acked - f.healed_unix_ms) as f64 / 1000.0
                        )
                    } else {
                        format!("{} {}", f.kind, f.detail)
                    }
                })
                .collect();
            format!(
                "{} ({} acknowledged at {:.1} s, read at {:.1} s{}{})",
                r.job_id,
                if r.after_cancel { "cancel" } else { "submit" },
                r.acked_ms as f64 / 1000.0,
                r.invoked_ms as f64 / 1000.0,
                if during.is_empty() {
                    String::new()
                } else {
                    format!(", during {}", during.join("; "))
                },
                if r.detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", r.detail)
                }
            )
        })
        .collect();

    // Replicas hold the same state, and the leader's linearizable view agrees with it.
    report.diverged_replicas = compare_replicas(end);

    if let Some(sql) = &end.ssisdb {
        report.ssisdb_events = Some(sql.view.rows);
        report.ssisdb_problems = ssisdb_problems(sql, &end.jobs, &acked_ids);
        report.ssisdb_rows_behind = ssisdb_rows_behind(sql, &end.jobs);
        report.ssisdb_requests = sql.sent_requests.len();
        report.ssisdb_requests_wrong = ssisdb_requests_wrong(sql, &end.jobs);
    }

    // The longest stretch between two acknowledged submits.
    let mut completions: Vec<u64> = submits
        .iter()
        .filter(|s| s.job_id.is_some())
        .map(|s| s.completed_ms)
        .collect();
    completions.sort_unstable();
    let mut gaps: Vec<(u64, u64)> = completions.windows(2).map(|w| (w[0], w[1])).collect();
    // Longest first; the earlier of two equal ones first.
    gaps.sort_by_key(|(from, to)| (std::cmp::Reverse(to - from), *from));
    let during = |from: u64, to: u64| -> Vec<String> {
        let (from, to) = (end.started_unix_ms + from, end.started_unix_ms + to);
        faults
            .iter()
            .filter(|f| f.started_unix_ms <= to && f.healed_unix_ms >= from)
            .map(|f| format!("{} {}", f.kind, f.detail))
            .collect()
    };
    if let Some(&(from, to)) = gaps.first() {
        report.longest_commit_gap_ms = to - from;
        report.longest_commit_gap_from_s = from as f64 / 1000.0;
        report.longest_commit_gap_during = during(from, to);
    }
    report.next_commit_gaps = gaps
        .iter()
        .skip(1)
        .take(4)
        .map(|&(from, to)| {
            let faults = during(from, to);
            format!(
                "{} ms from {:.1} s{}",
                to - from,
                from as f64 / 1000.0,
                if faults.is_empty() {
                    String::new()
                } else {
                    format!(" during {}", faults.join("; "))
                }
            )
        })
        .collect();
    report
}

/// Invariant 5 on what SSISDB holds: everything shipped, no event twice, the cursor at the
/// newest event, and every acknowledged job's submit, attempt starts and attempt ends there
/// exactly once each.
fn ssisdb_problems(sql: &SsisdbEnd, jobs: &[v1::Job], acked: &BTreeSet<u64>) -> Vec<String> {
    let mut problems = Vec::new();
    if sql.outbox_left > 0 {
        problems.push(format!("{} events never shipped", sql.outbox_left));
    }
    if sql.view.rows != sql.view.distinct_ids {
        problems.push(format!(
            "{} rows for {} event ids",
            sql.view.rows, sql.view.distinct_ids
        ));
    }
    if sql.view.rows > 0 && sql.view.max_event_id != sql.shipped_up_to {
        problems.push(format!(
            "newest event {} but the shipped cursor is {}",
            sql.view.max_event_id, sql.shipped_up_to
        ));
    }
    for job in jobs.iter().filter(|j| acked.contains(&j.id)) {
        let kinds = sql.view.by_job.get(&job.id);
        let count = |kind: &str| kinds.and_then(|k| k.get(kind)).copied().unwrap_or(0);
        let ended = job
            .attempts
            .iter()
            .filter(|a| a.outcome != AttemptOutcome::Unspecified as i32)
            .count() as u64;
        let expected = [
            ("JobSubmitted", 1),
            ("AttemptStarted", job.attempts.len() as u64),
            ("AttemptEnded", ended),
        ];
        for (kind, want) in expected {
            let got = count(kind);
            if got != want {
                problems.push(format!("job {}: {got} {kind} events, not {want}", job.id));
            }
        }
    }
    problems
}

/// Where SSISDB's rows (`scaleout.jobs`, `tasks`, `task_attempts`) do not show the final
/// replicated state: every job, acknowledged or not, and no row for a job the state lacks.
fn ssisdb_rows_behind(sql: &SsisdbEnd, jobs: &[v1::Job]) -> Vec<String> {
    let mut problems = Vec::new();
    for job in jobs {
        let want_job = vec![(
            status_code(job.state),
            job.attempts.len() as i64,
            job.updated_at_ms as i64,
        )];
        let got_job = sql.view.job_rows.get(&job.id).cloned().unwrap_or_default();
        if got_job != want_job {
            problems.push(format!(
                "job {}: jobs row (status, attempts, updated ms) {got_job:?}, not {want_job:?}",
                job.id
            ));
        }
        let got_task = sql.view.task_rows.get(&job.id).cloned().unwrap_or_default();
        if got_task != want_job {
            problems.push(format!(
                "job {}: tasks row (status, executed, updated ms) {got_task:?}, not \
                 {want_job:?}",
                job.id
            ));
        }
        let want_attempts: Vec<(i64, i64, String, i64)> = job
            .attempts
            .iter()
            .map(|a| {
                (
                    i64::from(a.number),
                    a.lease_token as i64,
                    outcome_name(a.outcome).to_string(),
                    // 0 while running: the column is NULL.
                    if a.ended_at_ms == 0 {
                        -1
                    } else {
                        a.ended_at_ms as i64
                    },
                )
            })
            .collect();
        let got_attempts = sql
            .view
            .attempt_rows
            .get(&job.id)
            .cloned()
            .unwrap_or_default();
        if got_attempts != want_attempts {
            problems.push(format!(
                "job {}: attempt rows {got_attempts:?}, not {want_attempts:?}",
                job.id
            ));
        }
    }
    let known: BTreeSet<u64> = jobs.iter().map(|j| j.id).collect();
    let strangers: BTreeSet<u64> = sql
        .view
        .job_rows
        .keys()
        .chain(sql.view.task_rows.keys())
        .filter(|id| !known.contains(id))
        .copied()
        .collect();
    for id in strangers {
        problems.push(format!(
            "job {id}: rows in SSISDB for a job the state does not hold"
        ));
    }
    problems
}

/// Every job request written during the run has one row, marked submitted with a job that
/// carries the request's key (the idempotency key the leader submits it with); a request made
/// into two jobs shows as two jobs with one key (`duplicate_keys`) or a row naming another job.
fn ssisdb_requests_wrong(sql: &SsisdbEnd, jobs: &[v1::Job]) -> Vec<String> {
    let by_id: BTreeMap<u64, &v1::Job> = jobs.iter().map(|j| (j.id, j)).collect();
    let mut problems = Vec::new();
    for key in &sql.sent_requests {
        let rows = sql.view.requests.get(key).cloned().unwrap_or_default();
        let [(state, job)] = rows.as_slice() else {
            problems.push(format!("request {key}: {} rows, not 1", rows.len()));
            continue;
        };
        if state != "submitted" {
            problems.push(format!("request {key}: {state}, not submitted"));
            continue;
        }
        match u64::try_from(*job).ok().and_then(|id| by_id.get(&id)) {
            Some(found) if found.idempotency_key == *key => {}
            Some(found) => problems.push(format!(
                "request {key}: names job {job}, whose key is {:?}",
                found.idempotency_key
            )),
            None => problems.push(format!(
                "request {key}: names job {job}, which is not there"
            )),
        }
    }
    problems
}

/// The `status` column of `scaleout.jobs` for a job state (SSIS's catalog codes), stated here
/// again on purpose: the checker does not reuse the code it checks.
fn status_code(state: i32) -> i64 {
    match JobState::try_from(state) {
        Ok(JobState::Queued) => 1,
        Ok(JobState::PickedUp) => 2,
        Ok(JobState::Running) => 3,
        Ok(JobState::Failed) => 4,
        Ok(JobState::Succeeded) => 5,
        Ok(JobState::Cancelled) => 6,
        _ => 0,
    }
}

/// The `outcome` column of `scaleout.task_attempts`.
fn outcome_name(outcome: i32) -> &'static str {
    match AttemptOutcome::try_from(outcome) {
        Ok(AttemptOutcome::Succeeded) => "succeeded",
        Ok(AttemptOutcome::Failed) => "failed",
        Ok(AttemptOutcome::Expired) => "expired",
        Ok(AttemptOutcome::Cancelled) => "cancelled",
        // Not ended: the column is NULL.
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(
        id: u64,
        key: &str,
        state: JobState,
        attempts: &[(AttemptOutcome, u64, u64)],
    ) -> v1::Job {
        v1::Job {
            id,
            idempotency_key: key.into(),
            state: state as i32,
            spec: Some(v1::JobSpec {
                max_attempts: 2,
                ..Default::default()
            }),
            attempts: attempts
                .iter()
                .enumerate()
                .map(|(i, (outcome, start, end))| v1::Attempt {
                    number: i as u32 + 1,
                    outcome: *outcome as i32,
                    started_at_ms: *start,
                    ended_at_ms: *end,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn acked(key: &str, id: u64, at: u64) -> SubmitRecord {
        SubmitRecord {
            key: key.into(),
            invoked_ms: at,
            completed_ms: at + 5,
            job_id: Some(id),
            argv: Vec::new(),
        }
    }

    fn read(job_id: u64, acked_ms: u64, invoked_ms: u64, missing: bool) -> ReadRecord {
        ReadRecord {
            job_id,
            acked_ms,
            invoked_ms,
            missing,
            after_cancel: false,
            saw_cancel: false,
            detail: String::new(),
        }
    }

    /// Every replica's view of `jobs`, as one would read it.
    fn views(jobs: &[v1::Job]) -> BTreeMap<u64, ReplicaView> {
        let view = ReplicaView {
            jobs: jobs.iter().map(|j| (j.id, j.clone())).collect(),
            logs: BTreeMap::from([(1, vec![(1, 1, "hello".to_string())])]),
            workers: BTreeMap::from([("w".to_string(), "enabled".to_string())]),
        };
        BTreeMap::from([(1, view.clone()), (2, view)])
    }

    fn healthy() -> (Vec<SubmitRecord>, FinalState) {
        let submits = vec![acked("a", 1, 0), acked("b", 2, 100), acked("c", 3, 1000)];
        let jobs = vec![
            job(
                1,
                "a",
                JobState::Succeeded,
                &[(AttemptOutcome::Succeeded, 10, 20)],
            ),
            job(
                2,
                "b",
                JobState::Succeeded,
                &[
                    (AttemptOutcome::Failed, 10, 20),
                    (AttemptOutcome::Succeeded, 30, 40),
                ],
            ),
            job(3, "c", JobState::Cancelled, &[]),
        ];
        let end = FinalState {
            per_replica: views(&jobs),
            replicas_apart: None,
            outboxes: BTreeMap::from([(1, (40, 7)), (2, (40, 7))]),
            jobs,
            stale_refused: 2,
            started_unix_ms: 0,
            crashes: Vec::new(),
            ssisdb: None,
        };
        (submits, end)
    }

    #[test]
    fn a_clean_history_passes() {
        let (submits, end) = healthy();
        let report = check(7, 60.0, &submits, &[], &[], &end, 5000);
        assert!(report.ok(), "{report}");
        assert_eq!(report.submits_acknowledged, 3);
        assert_eq!(report.jobs_completed, 3);
        assert_eq!(report.longest_commit_gap_ms, 900);
        assert!((report.longest_commit_gap_from_s - 0.105).abs() < 1e-9);
        assert_eq!(report.next_commit_gaps.len(), 1, "{report}");
        assert!(report.to_string().contains("next longest windows: "));
        assert_eq!(report.stale_completions_refused, 2);
        assert!(report.to_string().contains("every invariant held"));
    }

    #[test]
    fn a_crash_is_a_finding() {
        let (submits, mut end) = healthy();
        end.crashes = vec!["replica 2 (exit status: 1)".into()];
        let report = check(7, 60.0, &submits, &[], &[], &end, 5000);
        assert!(!report.ok());
        assert!(report
            .to_string()
            .contains("processes that exited by themselves: 1 (replica 2 (exit status: 1))"));
    }

    #[test]
    fn a_lost_acknowledged_job_is_reported() {
        let (submits, mut end) = healthy();
        end.jobs.retain(|j| j.id != 2);
        for view in end.per_replica.values_mut() {
            view.jobs.remove(&2);
        }
        let report = check(7, 60.0, &submits, &[], &[], &end, 5000);
        assert_eq!(report.lost, vec![2]);
        assert!(report.to_string().contains("acknowledged jobs lost: 1 (2)"));
    }

    /// A power cut that lost job 2 and let its id go to another submit is caught: checking ids
    /// alone would pass it.
    #[test]
    fn an_acknowledged_id_holding_another_job_is_reported() {
        let (submits, mut end) = healthy();
        for job in &mut end.jobs {
            if job.id == 2 {
                job.idempotency_key = "someone-else".into();
            }
        }
        let report = check(7, 60.0, &submits, &[], &[], &end, 5000);
        assert_eq!(
            report.replaced,
            vec!["2 (acknowledged for b, holds someone-else)".to_string()]
        );
        assert!(!report.ok());
    }

    #[test]
    fn fencing_violations_are_reported() {
        let (submits, mut end) = healthy();
        end.jobs[0] = job(
            1,
            "a",
            JobState::Succeeded,
            &[
                (AttemptOutcome::Succeeded, 10, 20),
                (AttemptOutcome::Succeeded, 30, 40),
            ],
        );
        end.jobs[1] = job(
            2,
            "b",
            JobState::Failed,
            &[
                (AttemptOutcome::Succeeded, 10, 20),
                (AttemptOutcome::Failed, 30, 40),
                (AttemptOutcome::Failed, 50, 60),
            ],
        );
        let report = check(7, 60.0, &submits, &[], &[], &end, 5000);
        assert_eq!(report.completed_twice, vec![1]);
        assert_eq!(report.stale_completions_accepted, vec![1, 2]);
        assert_eq!(report.over_max_attempts, vec![2]);
    }

    #[test]
    fn expiries_count_against_worker_faults_only() {
        let (submits, mut end) = healthy();
        end.jobs[1] = job(
            2,
            "b",
            JobState::Succeeded,
            &[
                (AttemptOutcome::Expired, 1_000, 9_000),
                (AttemptOutcome::Succeeded, 9_000, 9_500),
            ],
        );
        end.jobs[0] = job(
            1,
            "a",
            JobState::Succeeded,
            &[
                (AttemptOutcome::Expired, 50_000, 58_000),
                (AttemptOutcome::Succeeded, 58_000, 59_000),
            ],
        );
        let pause = FaultRecord {
            kind: "pause-worker",
            detail: "worker-1".into(),
            started_unix_ms: 2_000,
            healed_unix_ms: 8_000,
            touches_workers: true,
        };
        let report = check(7, 60.0, &submits, &[], &[pause], &end, 5000);
        assert_eq!(report.leases_expired_by_worker_faults, 1);
        assert_eq!(report.expired_without_worker_fault, vec![1]);
    }

    #[test]
    fn idempotency_and_read_violations_are_reported() {
        let (mut submits, mut end) = healthy();
        submits.push(acked("a", 4, 2000));
        end.jobs.push(job(
            4,
            "a",
            JobState::Succeeded,
            &[(AttemptOutcome::Succeeded, 1, 2)],
        ));
        let reads = vec![
            read(3, 1005, 1500, true),
            // Invoked before the acknowledgment: concurrent, may miss.
            read(2, 105, 100, true),
        ];
        let report = check(7, 60.0, &submits, &reads, &[], &end, 5000);
        assert_eq!(report.inconsistent_acks, vec!["a (1 and 4)".to_string()]);
        assert_eq!(report.duplicate_keys, vec!["a [1, 4]".to_string()]);
        assert_eq!(
            report.stale_reads,
            vec!["3 (submit acknowledged at 1.0 s, read at 1.5 s)".to_string()]
        );
        assert!(
            report.diverged_replicas.len() == 1,
            "the leader's jobs hold job 4, the replicas' do not: {:?}",
            report.diverged_replicas
        );
    }

    #[test]
    fn replicas_with_different_outboxes_are_reported() {
        let (submits, mut end) = healthy();
        end.outboxes = BTreeMap::from([(1, (40, 7)), (2, (40, 7)), (3, (39, 7))]);
        let report = check(7, 60.0, &submits, &[], &[], &end, 5000);
        assert_eq!(report.diverged_replicas.len(), 1, "{report}");
        assert!(report.diverged_replicas[0].starts_with("replica 3's outbox"));
    }

    fn events(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    }

    #[test]
    fn ssisdb_must_hold_every_event_once() {
        let (submits, mut end) = healthy();
        let mut sql = SsisdbEnd {
            view: healthy_sql_view(),
            outbox_left: 0,
            shipped_up_to: 90,
            sent_requests: Vec::new(),
        };
        end.ssisdb = Some(sql.clone());
        let report = check(7, 60.0, &submits, &[], &[], &end, 5000);
        assert!(report.ok(), "{report}");
        assert_eq!(report.ssisdb_events, Some(9));

        sql.view.rows = 10;
        sql.shipped_up_to = 80;
        sql.outbox_left = 3;
        sql.view
            .by_job
            .insert(2, events(&[("JobSubmitted", 2), ("AttemptStarted", 2)]));
        end.ssisdb = Some(sql);
        let report = check(7, 60.0, &submits, &[], &[], &end, 5000);
        assert_eq!(
            report.ssisdb_problems,
            vec![
                "3 events never shipped".to_string(),
                "10 rows for 9 event ids".into(),
                "newest event 90 but the shipped cursor is 80".into(),
                "job 2: 2 JobSubmitted events, not 1".into(),
                "job 2: 0 AttemptEnded events, not 2".into(),
            ]
        );

        // Every event once, but the rows behind the views went backwards: a deposed leader
        // wrote job 2 as running after the new one wrote it succeeded. Counting events passed
        // it; comparing the rows with the final state does not.
        let (submits, mut end) = healthy();
        let mut sql = SsisdbEnd {
            view: healthy_sql_view(),
            outbox_left: 0,
            shipped_up_to: 90,
            sent_requests: Vec::new(),
        };
        sql.view.job_rows.insert(2, vec![(3, 2, 0)]);
        sql.view.attempt_rows.insert(
            2,
            vec![(1, 0, "failed".into(), 20), (2, 0, String::new(), -1)],
        );
        sql.view.task_rows.insert(9, vec![(1, 0, 0)]);
        end.ssisdb = Some(sql);
        let report = check(7, 60.0, &submits, &[], &[], &end, 5000);
        assert!(report.ssisdb_problems.is_empty(), "{report}");
        assert!(!report.ok(), "{report}");
        assert!(report
            .to_string()
            .contains("SSISDB rows that differ from the replicated state: 3"));
        assert_eq!(
            report.ssisdb_rows_behind,
            vec![
                "job 2: jobs row (status, attempts, updated ms) [(3, 2, 0)], not [(5, 2, 0)]"
                    .to_string(),
                "job 2: attempt rows [(1, 0, \"failed\", 20), (2, 0, \"\", -1)], not \
                 [(1, 0, \"failed\", 20), (2, 0, \"succeeded\", 40)]"
                    .into(),
                "job 9: rows in SSISDB for a job the state does not hold".into(),
            ]
        );
    }

    #[test]
    fn a_row_with_the_final_status_from_an_earlier_change_is_seen() {
        // Job 1's rows show succeeded, but written from a change at 7 ms, not its last at 0;
        // its first attempt's end from another time than the final one.
        let (submits, mut end) = healthy();
        let mut view = healthy_sql_view();
        view.job_rows.insert(1, vec![(5, 1, 7)]);
        view.attempt_rows
            .insert(1, vec![(1, 0, "succeeded".to_string(), 15)]);
        end.ssisdb = Some(SsisdbEnd {
            view,
            outbox_left: 0,
            shipped_up_to: 90,
            sent_requests: Vec::new(),
        });
        let report = check(7, 60.0, &submits, &[], &[], &end, 5000);
        assert_eq!(report.ssisdb_rows_behind.len(), 2, "{report}");
        assert!(!report.ok(), "{report}");
    }

    #[test]
    fn every_job_request_from_t_sql_is_exactly_one_job() {
        let (submits, mut end) = healthy();
        // Jobs 1 and 2 came from requests "a" and "b" (their keys); "c" made job 3.
        let mut view = healthy_sql_view();
        view.requests = BTreeMap::from([
            ("a".to_string(), vec![("submitted".to_string(), 1)]),
            ("b".to_string(), vec![("submitted".to_string(), 2)]),
            ("c".to_string(), vec![("submitted".to_string(), 3)]),
        ]);
        let mut sql = SsisdbEnd {
            view,
            outbox_left: 0,
            shipped_up_to: 90,
            sent_requests: vec!["a".into(), "b".into(), "c".into()],
        };
        end.ssisdb = Some(sql.clone());
        let report = check(7, 60.0, &submits, &[], &[], &end, 5000);
        assert!(report.ok(), "{report}");

        // A request left pending, one naming the job of another key, one never written.
        sql.view
            .requests
            .insert("a".into(), vec![("pending".into(), -1)]);
        sql.view
            .requests
            .insert("b".into(), vec![("submitted".into(), 3)]);
        sql.sent_requests.push("d".into());
        end.ssisdb = Some(sql);
        let report = check(7, 60.0, &submits, &[], &[], &end, 5000);
        assert!(!report.ok(), "{report}");
        assert_eq!(
            report.ssisdb_requests_wrong,
            vec![
                "request a: pending, not submitted".to_string(),
                "request b: names job 3, whose key is \"c\"".into(),
                "request d: 0 rows, not 1".into(),
            ]
        );
    }

    /// What SSISDB holds for [`healthy`]'s jobs.
    fn healthy_sql_view() -> super::super::ssisdb::SsisdbView {
        super::super::ssisdb::SsisdbView {
            rows: 9,
            distinct_ids: 9,
            max_event_id: 90,
            by_job: BTreeMap::from([
                (
                    1,
                    events(&[
                        ("JobSubmitted", 1),
                        ("AttemptStarted", 1),
                        ("AttemptEnded", 1),
                    ]),
                ),
                (
                    2,
                    events(&[
                        ("JobSubmitted", 1),
                        ("AttemptStarted", 2),
                        ("AttemptEnded", 2),
                    ]),
                ),
                (3, events(&[("JobSubmitted", 1)])),
            ]),
            job_rows: BTreeMap::from([
                (1, vec![(5, 1, 0)]),
                (2, vec![(5, 2, 0)]),
                (3, vec![(6, 0, 0)]),
            ]),
            task_rows: BTreeMap::from([
                (1, vec![(5, 1, 0)]),
                (2, vec![(5, 2, 0)]),
                (3, vec![(6, 0, 0)]),
            ]),
            attempt_rows: BTreeMap::from([
                (1, vec![(1, 0, "succeeded".to_string(), 20)]),
                (
                    2,
                    vec![
                        (1, 0, "failed".to_string(), 20),
                        (2, 0, "succeeded".to_string(), 40),
                    ],
                ),
            ]),
            requests: BTreeMap::new(),
        }
    }

    #[test]
    fn unfinished_jobs_and_unknown_submits_are_told_apart() {
        let (mut submits, mut end) = healthy();
        end.jobs[2].state = JobState::Running as i32;
        end.per_replica = views(&end.jobs);
        submits.push(SubmitRecord {
            key: "d".into(),
            invoked_ms: 3000,
            completed_ms: 18000,
            job_id: None,
            argv: Vec::new(),
        });
        let report = check(7, 60.0, &submits, &[], &[], &end, 5000);
        assert_eq!(report.not_terminal, vec![3]);
        assert_eq!(report.submits_indeterminate, 1);
        assert!(report.lost.is_empty());
    }

    /// A lost job whose id went to a retry of the same key with another command line (a
    /// client bug, or a key reused by mistake) is not the job that was acknowledged.
    #[test]
    fn an_acknowledged_id_holding_another_command_line_is_reported() {
        let (mut submits, mut end) = healthy();
        submits[1].argv = vec!["load".into(), "sales".into()];
        end.jobs[1].spec = Some(v1::JobSpec {
            argv: vec!["load".into(), "sales".into()],
            max_attempts: 2,
            ..Default::default()
        });
        end.per_replica = views(&end.jobs);
        assert!(check(7, 60.0, &submits, &[], &[], &end, 5000).ok());
        end.jobs[1].spec = Some(v1::JobSpec {
            argv: vec!["drop".into(), "sales".into()],
            max_attempts: 2,
            ..Default::default()
        });
        end.per_replica = views(&end.jobs);
        let report = check(7, 60.0, &submits, &[], &[], &end, 5000);
        assert_eq!(report.replaced.len(), 1, "{report}");
        assert!(
            report.replaced[0].contains("another command line"),
            "{report}"
        );
    }

    /// Equal in every job's state, different in its attempts: comparing states alone passed it.
    #[test]
    fn replicas_equal_in_state_but_not_in_attempts_are_reported() {
        let (submits, mut end) = healthy();
        let other = end.per_replica.get_mut(&2).expect("replica 2");
        let job = other.jobs.get_mut(&2).expect("job 2");
        job.attempts[1].lease_token += 1;
        let report = check(7, 60.0, &submits, &[], &[], &end, 5000);
        assert!(!report.ok());
        assert!(
            report.diverged_replicas[0].contains("hold 1 jobs differently"),
            "{report}"
        );
        // Log lines and workers count too.
        let (submits, mut end) = healthy();
        let other = end.per_replica.get_mut(&2).expect("replica 2");
        other
            .logs
            .insert(1, vec![(1, 1, "hello".into()), (2, 1, "hello".into())]);
        other.workers.insert("w".into(), "disabled".into());
        let report = check(7, 60.0, &submits, &[], &[], &end, 5000);
        assert_eq!(report.diverged_replicas.len(), 2, "{report}");
        // Replicas that never agree on an applied index are a finding, not a skipped check.
        let (submits, mut end) = healthy();
        end.replicas_apart = Some("replica 1 at 10 → 12, replica 2 at 9 → 9".into());
        end.per_replica.clear();
        let report = check(7, 60.0, &submits, &[], &[], &end, 5000);
        assert!(!report.ok());
        assert!(report
            .to_string()
            .contains("never reported one applied index"));
    }

    /// A missed read names what the replicas showed, and the faults it came in the wake of: the
    /// restart of a leader healed just before it is named, one long over is not.
    #[test]
    fn a_missed_read_names_the_faults_it_followed() {
        let (submits, end) = healthy();
        let fault = |kind, started_unix_ms, healed_unix_ms| FaultRecord {
            kind,
            detail: "replica 1".into(),
            started_unix_ms,
            healed_unix_ms,
            touches_workers: false,
        };
        let faults = [
            fault("power-cut-all", 8_000, 9_000),
            fault("kill-leader", 1_000, 2_000),
        ];
        let missed = ReadRecord {
            detail: "\"job 3 not found\"".into(),
            ..read(3, 10_000, 10_200, true)
        };
        let report = check(7, 60.0, &submits, &[missed], &faults, &end, 5000);
        assert_eq!(
            report.stale_reads,
            vec![
                "3 (submit acknowledged at 10.0 s, read at 10.2 s, during power-cut-all replica 1 \
                 (healed 1.0 s before): \"job 3 not found\")"
                    .to_string()
            ]
        );
    }

    /// A read that began after a cancel was acknowledged and still shows the job running, not
    /// being cancelled: stale. Checking only for "not found" passed it.
    #[test]
    fn a_read_that_misses_an_acknowledged_cancel_is_stale() {
        let (submits, end) = healthy();
        let stale = ReadRecord {
            after_cancel: true,
            saw_cancel: false,
            ..read(2, 500, 500, false)
        };
        let fresh = ReadRecord {
            after_cancel: true,
            saw_cancel: true,
            ..read(1, 500, 500, false)
        };
        let report = check(7, 60.0, &submits, &[stale, fresh], &[], &end, 5000);
        assert_eq!(
            report.stale_reads,
            vec!["2 (cancel acknowledged at 0.5 s, read at 0.5 s)".to_string()],
            "{report}"
        );
    }
}
