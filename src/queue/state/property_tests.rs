//! Property test: random histories of every command, with 2–3 workers and a leader clock that
//! mostly moves forward but also steps back (a clock step, or batches stamped in one order and
//! committed in another), keep the invariants of DESIGN.md (2: fencing, 3: bounded attempts) and the
//! model's own (legal transitions, consistent indexes, persisted rows that rebuild the state,
//! replicas that agree), with an outbox that is sometimes full and released in random prefixes.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::test_support::*;
use super::QueueState;
use crate::queue::{
    AcquireRequest, ApplyContext, AttemptOutcome, Command, CommandOutput, JobId, JobSpec, JobState,
    LeaseRef, OutboxEvent, QueueError, TaskReport, WorkerId, WorkerSeen,
};

const TAGS: [&str; 2] = ["sql", "gpu"];

fn tags(mask: u8) -> Vec<String> {
    TAGS.iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, t)| t.to_string())
        .collect()
}

#[derive(Debug, Clone)]
enum Op {
    Submit {
        priority: i32,
        max_attempts: u32,
        retry_delay_secs: Option<u64>,
        pin: Option<u8>,
        tag_mask: u8,
        /// One of a few idempotency keys, so keys repeat: for live and finished jobs, with the
        /// same spec and with a different one.
        key: Option<u8>,
    },
    Cancel {
        job: u64,
    },
    Register {
        worker: u8,
        auto_enable: bool,
        tag_mask: u8,
        max_tasks: u32,
    },
    Heartbeat {
        worker: u8,
        report: Vec<usize>,
        cpu: u32,
    },
    Acquire {
        worker: u8,
        free_slots: u32,
        cpu: u32,
        mem: u64,
        /// One of two request ids, so a call is sometimes a retry of a granted one.
        request: Option<u8>,
    },
    Renew {
        worker: u8,
        leases: Vec<usize>,
    },
    AppendLogs {
        pick: usize,
        own: bool,
        worker: u8,
        lines: u8,
        /// A numbered batch (retries included, as numbers repeat), or an unnumbered append.
        batch: Option<u64>,
    },
    Complete {
        pick: usize,
        own: bool,
        worker: u8,
        outcome: u8,
    },
    /// Results of some leases and an acquire, in one command (the combined call).
    ReportAndAcquire {
        picks: Vec<usize>,
        worker: u8,
        free_slots: u32,
        outcome: u8,
    },
    Expire,
    Extend,
    SetState {
        worker: u8,
        enabled: Option<bool>,
        draining: Option<bool>,
    },
    Remove {
        worker: u8,
    },
    /// A retention sweep.
    Retain {
        retention_ms: u64,
        max_finished: u64,
        until_shipped: bool,
        limit: u32,
    },
    /// Releases the first `part`/255 of the stored events, counted from the cursor, or
    /// (`stale`) as counted before the last release moved it: a retry, or a slower leader's.
    Release {
        part: u8,
        stale: bool,
    },
    /// The leader's batch of sightings: (worker, how long before now, cpu).
    Seen {
        sightings: Vec<(u8, u64, u32)>,
    },
}

fn op(workers: u8) -> impl Strategy<Value = Op> {
    let w = 0..workers;
    prop_oneof![
        4 => (0i32..3, 1u32..4, proptest::option::of(0u64..3), proptest::option::weighted(0.2, 0..workers), 0u8..4, proptest::option::weighted(0.3, 0u8..3))
            .prop_map(|(priority, max_attempts, retry_delay_secs, pin, tag_mask, key)| Op::Submit {
                priority, max_attempts, retry_delay_secs, pin, tag_mask, key,
            }),
        1 => (1u64..25).prop_map(|job| Op::Cancel { job }),
        1 => (w.clone(), any::<bool>(), 0u8..4, 1u32..4).prop_map(|(worker, auto_enable, tag_mask, max_tasks)| {
            Op::Register { worker, auto_enable, tag_mask, max_tasks }
        }),
        1 => (w.clone(), proptest::collection::vec(any::<usize>(), 0..3), 0u32..1000)
            .prop_map(|(worker, report, cpu)| Op::Heartbeat { worker, report, cpu }),
        4 => (w.clone(), 0u32..4, 0u32..760, 60u64..1000, proptest::option::weighted(0.5, 0u8..2))
            .prop_map(|(worker, free_slots, cpu, mem, request)| Op::Acquire { worker, free_slots, cpu, mem, request }),
        3 => (w.clone(), proptest::collection::vec(any::<usize>(), 0..4))
            .prop_map(|(worker, leases)| Op::Renew { worker, leases }),
        2 => (any::<usize>(), proptest::bool::weighted(0.8), w.clone(), 0u8..4, proptest::option::weighted(0.7, 1u64..4))
            .prop_map(|(pick, own, worker, lines, batch)| Op::AppendLogs { pick, own, worker, lines, batch }),
        5 => (any::<usize>(), proptest::bool::weighted(0.8), w.clone(), 0u8..16)
            .prop_map(|(pick, own, worker, outcome)| Op::Complete { pick, own, worker, outcome }),
        3 => (proptest::collection::vec(any::<usize>(), 0..3), w.clone(), 0u32..4, 0u8..8)
            .prop_map(|(picks, worker, free_slots, outcome)| Op::ReportAndAcquire { picks, worker, free_slots, outcome }),
        2 => Just(Op::Expire),
        1 => Just(Op::Extend),
        1 => (w.clone(), proptest::option::of(any::<bool>()), proptest::option::of(any::<bool>()))
            .prop_map(|(worker, enabled, draining)| Op::SetState { worker, enabled, draining }),
        1 => w.prop_map(|worker| Op::Remove { worker }),
        1 => (0u64..60_000, 0u64..6, any::<bool>(), 1u32..4)
            .prop_map(|(retention_ms, max_finished, until_shipped, limit)| Op::Retain {
                retention_ms, max_finished, until_shipped, limit,
            }),
        1 => (any::<u8>(), proptest::bool::weighted(0.2))
            .prop_map(|(part, stale)| Op::Release { part, stale }),
        1 => proptest::collection::vec((0u8..4, 0u64..3_000, 0u32..1000), 0..4)
            .prop_map(|sightings| Op::Seen { sightings }),
    ]
}

/// Turns an op into a command. Leases are picked mostly among the live ones (`live`), else from
/// every lease ever granted (`granted`, mostly stale by now).
fn to_command(
    op: &Op,
    granted: &[(LeaseRef, WorkerId)],
    live: &[(LeaseRef, WorkerId)],
    max_tasks: &BTreeMap<u8, u32>,
    (stored, acked): (&[OutboxEvent], u64),
    now: u64,
) -> Command {
    let wid = |w: u8| worker_id(u128::from(w));
    let pick = |i: usize| {
        let from = if i % 4 == 0 || live.is_empty() {
            granted
        } else {
            live
        };
        from.get((i / 4) % from.len().max(1)).copied()
    };
    let no_lease = (
        LeaseRef {
            job_id: 1,
            token: 999,
        },
        wid(0),
    );
    match op.clone() {
        Op::Submit {
            priority,
            max_attempts,
            retry_delay_secs,
            pin,
            tag_mask,
            key,
        } => Command::SubmitJob {
            spec: JobSpec {
                priority,
                max_attempts,
                retry_delay_secs,
                allowed_workers: pin.map(wid).into_iter().collect(),
                tags: tags(tag_mask),
                ..spec()
            },
            idempotency_key: key.map(|k| format!("key{k}")),
        },
        Op::Cancel { job } => Command::CancelJob { job_id: job },
        Op::Register {
            worker,
            auto_enable,
            tag_mask,
            max_tasks: asked,
        } => {
            // A worker keeps its MaxTaskCount across re-registrations, so "never more than
            // max_tasks" stays checkable.
            let max = max_tasks.get(&worker).copied().unwrap_or(asked);
            let tag_list = tags(tag_mask);
            let tag_refs: Vec<&str> = tag_list.iter().map(String::as_str).collect();
            Command::RegisterWorker {
                info: worker_info(wid(worker), &tag_refs, max),
                auto_enable,
            }
        }
        Op::Heartbeat {
            worker,
            report,
            cpu,
        } => Command::WorkerHeartbeat {
            worker: wid(worker),
            running: report
                .iter()
                .filter_map(|&i| pick(i))
                .map(|(l, _)| l)
                .collect(),
            cpu_percent_x10: cpu,
            free_memory_mb: 4096,
        },
        Op::Acquire {
            worker,
            free_slots,
            cpu,
            mem,
            request,
        } => Command::AcquireTasks {
            worker: wid(worker),
            free_slots,
            lease_ms: LEASE_MS,
            cpu_percent_x10: cpu,
            free_memory_mb: mem,
            max_cpu_percent_x10: MAX_CPU,
            min_free_memory_mb: MIN_MEM,
            request_id: request.map(|r| format!("r{r}")),
        },
        Op::ReportAndAcquire {
            picks,
            worker,
            free_slots,
            outcome,
        } => Command::ReportAndAcquire {
            worker: wid(worker),
            reports: picks
                .iter()
                .map(|&i| TaskReport {
                    lease: pick(i).unwrap_or(no_lease).0,
                    outcome: [
                        AttemptOutcome::Succeeded,
                        AttemptOutcome::Failed,
                        AttemptOutcome::Cancelled,
                        AttemptOutcome::Expired,
                    ][(usize::from(outcome) + i) % 4],
                    exit_code: Some(i32::from(outcome)),
                    error: String::new(),
                })
                .collect(),
            acquire: AcquireRequest {
                free_slots,
                lease_ms: LEASE_MS,
                cpu_percent_x10: 0,
                free_memory_mb: 4096,
                max_cpu_percent_x10: MAX_CPU,
                min_free_memory_mb: MIN_MEM,
                request_id: None,
            },
        },
        Op::Renew { worker, leases } => Command::RenewLeases {
            worker: wid(worker),
            leases: leases
                .iter()
                .filter_map(|&i| pick(i))
                .map(|(l, _)| l)
                .collect(),
            lease_ms: LEASE_MS,
        },
        Op::AppendLogs {
            pick: i,
            own,
            worker,
            lines,
            batch,
        } => {
            let (lease, holder) = pick(i).unwrap_or(no_lease);
            let worker = if own { holder } else { wid(worker) };
            let lines = (0..lines).map(|n| line(&format!("l{n}"))).collect();
            match batch {
                Some(batch) => Command::AppendLogBatch {
                    worker,
                    lease,
                    batch,
                    lines,
                },
                None => Command::AppendLogs {
                    worker,
                    lease,
                    lines,
                },
            }
        }
        Op::Complete {
            pick: i,
            own,
            worker,
            outcome,
        } => {
            let (lease, holder) = pick(i).unwrap_or(no_lease);
            // Now and then as an earlier build proposes it.
            let earlier_build = usize::from(outcome) / 8 % 2 == 1;
            // Expired (refused from a worker) now and then.
            let outcome = [
                AttemptOutcome::Succeeded,
                AttemptOutcome::Failed,
                AttemptOutcome::Failed,
                AttemptOutcome::Succeeded,
                AttemptOutcome::Failed,
                AttemptOutcome::Cancelled,
                AttemptOutcome::Succeeded,
                AttemptOutcome::Expired,
            ][usize::from(outcome) % 8];
            let worker = if own { holder } else { wid(worker) };
            let error = "e".to_string();
            if earlier_build {
                Command::CompleteTask {
                    worker,
                    lease,
                    outcome,
                    exit_code: None,
                    error,
                }
            } else {
                Command::ReportResult {
                    worker,
                    lease,
                    outcome,
                    exit_code: None,
                    error,
                }
            }
        }
        Op::Expire => Command::ExpireLeases,
        Op::Extend => Command::ExtendLeases { lease_ms: LEASE_MS },
        Op::SetState {
            worker,
            enabled,
            draining,
        } => Command::SetWorkerState {
            worker: wid(worker),
            enabled,
            draining,
        },
        Op::Remove { worker } => Command::RemoveWorker {
            worker: wid(worker),
        },
        Op::Retain {
            retention_ms,
            max_finished,
            until_shipped,
            limit,
        } => Command::RemoveFinishedJobs {
            retention_ms,
            max_finished,
            until_shipped,
            limit,
        },
        // Counted as a leader counts the rows it read.
        // Worker 3 is never registered: a sighting of a removed worker.
        Op::Seen { sightings } => Command::WorkersSeen {
            seen: sightings
                .into_iter()
                .map(|(worker, ago, cpu)| WorkerSeen {
                    worker: wid(worker),
                    at_ms: now.saturating_sub(ago),
                    cpu_percent_x10: cpu,
                    free_memory_mb: 2048,
                })
                .collect(),
        },
        Op::Release { part, .. } => {
            let events = stored.len() * usize::from(part) / 255;
            Command::ReleaseOutbox {
                after: acked,
                up_to: stored[..events].last().map_or(acked, |e| e.id),
                events: events as u64,
            }
        }
    }
}

/// The worker and request of an `AcquireTasks` command.
fn acquire_request(command: &Command) -> Option<(WorkerId, AcquireRequest)> {
    match command.clone() {
        Command::AcquireTasks {
            worker,
            free_slots,
            lease_ms,
            cpu_percent_x10,
            free_memory_mb,
            max_cpu_percent_x10,
            min_free_memory_mb,
            request_id,
        } => Some((
            worker,
            AcquireRequest {
                free_slots,
                lease_ms,
                cpu_percent_x10,
                free_memory_mb,
                max_cpu_percent_x10,
                min_free_memory_mb,
                request_id,
            },
        )),
        _ => None,
    }
}

/// The number of workers, each one's initial MaxTaskCount and tags (they register first, as
/// agents do at start), the outbox limit (often small enough to drop log line events), then
/// (clock step, op) pairs; one step in five goes backwards, some by more than a lease.
#[allow(clippy::type_complexity)]
fn history() -> impl Strategy<Value = (Vec<(u32, u8)>, u64, Vec<(i64, Op)>)> {
    let step = prop_oneof![4 => 0i64..20_000, 1 => -45_000i64..0];
    let limit = prop_oneof![1 => Just(u64::MAX), 1 => 5u64..40];
    (2u8..=3).prop_flat_map(move |workers| {
        (
            proptest::collection::vec((1u32..4, 0u8..4), usize::from(workers)),
            limit.clone(),
            proptest::collection::vec((step.clone(), op(workers)), 1..150),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn random_histories_keep_every_invariant((workers, outbox_limit, ops) in history()) {
        let mut sim = Sim::new();
        sim.outbox_limit = outbox_limit;
        let mut max_tasks: BTreeMap<u8, u32> = BTreeMap::new();
        for (n, &(max, tag_mask)) in workers.iter().enumerate() {
            let tag_list = tags(tag_mask);
            let tag_refs: Vec<&str> = tag_list.iter().map(String::as_str).collect();
            sim.register(n as u128, &tag_refs, max);
            max_tasks.insert(n as u8, max);
        }
        let mut replica = sim.state.clone();
        let mut granted: Vec<(LeaseRef, WorkerId)> = Vec::new();
        let mut last_token = 0;
        let mut terminal: BTreeMap<JobId, JobState> = BTreeMap::new();
        // Worked out here from the stored events: the newest event when each job finished, or
        // a later one about it. Retention with SSISDB waits until the cursor passes it.
        let mut last_event: BTreeMap<JobId, u64> = BTreeMap::new();
        // The stored events and the cursor before the last release that moved it.
        let mut before_last_release: Option<(Vec<OutboxEvent>, u64)> = None;

        for (dt, op) in &ops {
            sim.now = sim.now.saturating_add_signed(*dt);
            // What apply runs the command at: time never goes backwards in log order.
            let at = sim.now.max(sim.state.clock_ms());
            let live: Vec<(LeaseRef, WorkerId)> = sim
                .state
                .jobs()
                .filter_map(|j| {
                    let lease = j.lease.as_ref()?;
                    Some((LeaseRef { job_id: j.id, token: lease.token }, lease.worker))
                })
                .collect();
            let stored_before = sim.events();
            let acked_before = sim.state.outbox_meta().acked_up_to;
            let outbox = match (op, &before_last_release) {
                (Op::Release { stale: true, .. }, Some((stored, acked))) => (stored.as_slice(), *acked),
                _ => (stored_before.as_slice(), acked_before),
            };
            let command = to_command(op, &granted, &live, &max_tasks, outbox, at);
            let before = sim.state.clone();
            let newest_before = before.outbox_meta().newest_event_id();
            let eligible_before = match op {
                Op::Acquire { worker, cpu, mem, .. } => before.has_eligible_task_at_load(
                    worker_id(u128::from(*worker)), at, *cpu, *mem, MAX_CPU, MIN_MEM,
                ),
                _ => false,
            };
            // `Sim::apply` checks the indexes and cross-references after every command, that a
            // rejection changes nothing, and persists the changed rows.
            let result = sim.apply(command.clone());
            let ctx = ApplyContext { log_index: sim.index, now_ms: sim.now, outbox_limit };
            let other = replica.apply(&ctx, command.clone());
            prop_assert_eq!(&result, &other, "replicas disagree on {:?}", op);
            // The replica lets go of finished jobs' full rows at once, as a state machine does
            // once it has written them; `sim` never does. Apply must not tell the difference.
            let written = replica.take_changes().jobs;
            replica.release_archived(written);
            prop_assert_eq!(&replica, &sim.state, "releasing archived rows changed {:?}", op);

            // The leader answers a heartbeat, and a poll that would be granted nothing, from its
            // state and records a sighting for the next WorkersSeen instead of proposing the
            // command: both must be the same as the command's.
            let sighting = match &command {
                Command::WorkerHeartbeat { worker, running, cpu_percent_x10, free_memory_mb } => {
                    prop_assert_eq!(&before.heartbeat_answer(*worker, running), &result);
                    Some((*worker, *cpu_percent_x10, *free_memory_mb))
                }
                Command::AcquireTasks { worker, .. } => {
                    let (_, request) = acquire_request(&command).expect("an acquire");
                    let would = before.acquire_would_grant(*worker, &request, at);
                    match &result {
                        Ok(CommandOutput::Acquired { tasks }) => prop_assert_eq!(would, Ok(!tasks.is_empty())),
                        Err(error) => prop_assert_eq!(would, Err(error.clone())),
                        other => prop_assert!(false, "an acquire answered {:?}", other),
                    }
                    matches!(&result, Ok(CommandOutput::Acquired { tasks }) if tasks.is_empty())
                        .then_some((*worker, request.cpu_percent_x10, request.free_memory_mb))
                }
                _ => None,
            };
            if let (Some((worker, cpu_percent_x10, free_memory_mb)), Ok(_)) = (sighting, &result) {
                let mut seen = before.clone();
                let recorded = seen.apply(&ctx, Command::WorkersSeen {
                    seen: vec![WorkerSeen { worker, at_ms: at, cpu_percent_x10, free_memory_mb }],
                });
                prop_assert_eq!(recorded, Ok(CommandOutput::WorkersSeen { recorded: 1 }));
                prop_assert_eq!(&seen, &sim.state, "a sighting is not the same as {:?}", op);
            }

            match (&command, &result) {
                (Command::RegisterWorker { info, .. }, Ok(_)) => {
                    let w = (0..3u8).find(|w| worker_id(u128::from(*w)) == info.id).expect("ours");
                    max_tasks.entry(w).or_insert(info.max_tasks);
                }
                (Command::AcquireTasks { worker, request_id: Some(id), .. }, Ok(CommandOutput::Acquired { tasks }))
                    if !tasks.is_empty()
                        && before.worker(*worker).and_then(|w| w.last_grant.as_ref()).is_some_and(|g| {
                            g.request_id == *id
                                && g.leases.iter().any(|l| before.job(l.job_id).is_some_and(|j| j.holds_lease(*worker, l.token)))
                        }) =>
                {
                    // A retry of a granted call: what it was granted and still holds, nothing new.
                    let grant = before.worker(*worker).and_then(|w| w.last_grant.clone()).expect("grant");
                    for task in tasks {
                        let lease = LeaseRef { job_id: task.job_id, token: task.token };
                        prop_assert!(grant.leases.contains(&lease), "{:?} was not granted to {}", lease, id);
                        prop_assert!(before.job(task.job_id).is_some_and(|j| j.holds_lease(*worker, task.token)));
                        prop_assert_eq!(sim.state.job(task.job_id), before.job(task.job_id));
                    }
                }
                (Command::AcquireTasks { worker, free_slots, .. }, Ok(CommandOutput::Acquired { tasks })) => {
                    // The leader's pre-check agrees with apply.
                    prop_assert_eq!(!tasks.is_empty(), *free_slots > 0 && eligible_before);
                    prop_assert!(tasks.len() <= *free_slots as usize);
                    // In dispatch order over the whole queue, whatever index dispatch scans.
                    let w = before.worker(*worker).expect("registered");
                    let mut queued: Vec<&crate::queue::Job> = before
                        .jobs()
                        .filter(|j| crate::queue::dispatch::job_eligible(j, w, at))
                        .collect();
                    queued.sort_by_key(|j| crate::queue::dispatch::dispatch_key(j));
                    let expected: Vec<JobId> = queued.iter().take(tasks.len()).map(|j| j.id).collect();
                    let got: Vec<JobId> = tasks.iter().map(|t| t.job_id).collect();
                    prop_assert_eq!(got, expected);
                    for task in tasks {
                        // Fencing tokens: strictly increasing, hence unique.
                        prop_assert!(task.token > last_token, "token {} after {}", task.token, last_token);
                        last_token = task.token;
                        let job = before.job(task.job_id).expect("granted job existed");
                        prop_assert_eq!(job.state, JobState::Queued);
                        prop_assert!(job.ready_at_ms <= at);
                        granted.push((LeaseRef { job_id: task.job_id, token: task.token }, *worker));
                    }
                }
                (
                    Command::CompleteTask { worker, lease, .. } | Command::ReportResult { worker, lease, .. },
                    Ok(CommandOutput::Completed { .. }),
                ) => {
                    let job = before.job(lease.job_id).expect("job");
                    prop_assert!(job.holds_lease(*worker, lease.token), "a stale complete was applied");
                }
                (Command::CompleteTask { worker, lease, outcome, .. }, Err(QueueError::LeaseLost { .. })) => {
                    prop_assert!(*outcome != AttemptOutcome::Expired);
                    let held = before.job(lease.job_id).is_some_and(|j| j.holds_lease(*worker, lease.token));
                    prop_assert!(!held, "a current lease was refused");
                }
                (Command::ReportResult { worker, lease, outcome, .. }, Err(QueueError::LeaseLost { .. })) => {
                    prop_assert!(*outcome != AttemptOutcome::Expired);
                    let held = before.job(lease.job_id).is_some_and(|j| j.holds_lease(*worker, lease.token));
                    prop_assert!(!held, "a current lease was refused");
                    // Refused outright only when this worker never ran the job under this token.
                    let ran = before.job(lease.job_id).is_some_and(|j| j.attempt_with(*worker, lease.token).is_some());
                    prop_assert!(!ran, "a late completion was refused instead of recorded");
                }
                (Command::CompleteTask { .. }, Ok(CommandOutput::CompletedBefore { .. } | CommandOutput::CompletedLate)) => {
                    prop_assert!(false, "an earlier build's completion was decided as this build's");
                }
                (Command::ReportResult { worker, lease, outcome, exit_code, .. }, Ok(CommandOutput::CompletedBefore { state })) => {
                    // The same verdict again: the attempt ended with it, and nothing changes.
                    if let Some(job) = before.job(lease.job_id) {
                        prop_assert!(!job.holds_lease(*worker, lease.token));
                        prop_assert!(is_repeat(&before, job, *worker, lease.token, *outcome, *exit_code));
                        prop_assert_eq!(job.state, *state);
                    }
                    prop_assert_eq!(sim.state.job(lease.job_id), before.job(lease.job_id));
                }
                (Command::ReportResult { worker, lease, outcome, exit_code, .. }, Ok(CommandOutput::CompletedLate)) => {
                    // Another verdict on an attempt that ended: kept as one late line, not applied.
                    if let Some(job) = before.job(lease.job_id) {
                        prop_assert!(!job.holds_lease(*worker, lease.token));
                        prop_assert!(!is_repeat(&before, job, *worker, lease.token, *outcome, *exit_code));
                        let after = sim.state.job(lease.job_id).expect("job");
                        prop_assert_eq!(after.state, job.state);
                        prop_assert_eq!(&after.attempts, &job.attempts);
                        prop_assert_eq!(
                            after.log_lines + after.log_lines_dropped,
                            job.log_lines + job.log_lines_dropped + 1
                        );
                    }
                }
                (
                    Command::ReportAndAcquire { worker, reports, acquire },
                    Ok(CommandOutput::ReportedAndAcquired { reports: answers, acquired }),
                ) => {
                    // The same as its parts applied one after another in the same entry.
                    let mut parts = before.clone();
                    let ctx = ApplyContext { log_index: sim.index, now_ms: sim.now, outbox_limit };
                    let part_answers: Vec<_> = reports
                        .iter()
                        .map(|report| parts.apply(&ctx, report.clone().into_command(*worker)))
                        .collect();
                    let part_acquired = parts.apply(&ctx, acquire.clone().into_command(*worker));
                    prop_assert_eq!(answers, &part_answers);
                    match (&part_acquired, acquired) {
                        (Ok(CommandOutput::Acquired { tasks: expected }), Ok(tasks)) => {
                            prop_assert_eq!(expected, tasks)
                        }
                        (Err(expected), Err(error)) => prop_assert_eq!(expected, error),
                        (expected, got) => prop_assert!(false, "acquire {:?} vs its part {:?}", got, expected),
                    }
                    // The same rows to write, and the same state.
                    let mut combined = before.clone();
                    let _ = combined.apply(&ctx, command.clone());
                    prop_assert_eq!(parts.take_changes(), combined.take_changes());
                    prop_assert_eq!(&parts, &sim.state);
                    for task in acquired.iter().flatten() {
                        prop_assert!(task.token > last_token, "token {} after {}", task.token, last_token);
                        last_token = task.token;
                        granted.push((LeaseRef { job_id: task.job_id, token: task.token }, *worker));
                    }
                }
                (Command::RenewLeases { worker, leases, .. }, Ok(CommandOutput::Renewed { leases: statuses })) => {
                    prop_assert_eq!(leases.len(), statuses.len());
                    for (lease, status) in leases.iter().zip(statuses) {
                        let held = before.job(lease.job_id).is_some_and(|j| j.holds_lease(*worker, lease.token));
                        prop_assert_eq!(status.renewed, held);
                    }
                }
                (Command::AppendLogs { worker, lease, .. }, Ok(CommandOutput::LogsAppended { late })) => {
                    let job = before.job(lease.job_id).expect("job");
                    prop_assert!(job.attempt_with(*worker, lease.token).is_some());
                    prop_assert_eq!(*late, !job.holds_lease(*worker, lease.token));
                }
                (Command::AppendLogBatch { worker, lease, batch, lines }, Ok(CommandOutput::LogsAppended { late })) => {
                    let job = before.job(lease.job_id).expect("job");
                    prop_assert!(job.attempt_with(*worker, lease.token).is_some());
                    prop_assert_eq!(*late, !job.holds_lease(*worker, lease.token));
                    let stored_before = job.log_lines + job.log_lines_dropped;
                    let after = sim.state.job(lease.job_id).expect("job");
                    let stored_after = after.log_lines + after.log_lines_dropped;
                    let mark = before.log_batch_mark(lease.job_id, lease.token);
                    if mark.is_some_and(|last| *batch <= last) {
                        // A retry: nothing stored again.
                        prop_assert_eq!(stored_after, stored_before);
                    } else {
                        prop_assert_eq!(stored_after, stored_before + lines.len() as u64);
                        prop_assert_eq!(sim.state.log_batch_mark(lease.job_id, lease.token), Some(*batch));
                    }
                }
                (Command::ExpireLeases, Ok(CommandOutput::Expired { jobs })) => {
                    for id in jobs {
                        let lease = before.job(*id).and_then(|j| j.lease.clone()).expect("was leased");
                        prop_assert!(lease.expires_at_ms <= at);
                    }
                    prop_assert!(sim.state.next_lease_expiry().is_none_or(|next| next > at));
                }
                _ => {}
            }

            prop_assert!(sim.state.next_lease_token() >= before.next_lease_token());
            // Cluster time never goes backwards, and a live lease never ends before the time
            // it was last granted or renewed for, whatever the leader's clock did.
            prop_assert!(sim.state.clock_ms() >= before.clock_ms());
            if result.is_ok() {
                prop_assert_eq!(sim.state.clock_ms(), at);
            }
            for old in before.jobs() {
                let (Some(old_lease), Some(new_lease)) =
                    (old.lease.as_ref(), sim.state.job(old.id).and_then(|j| j.lease.as_ref()))
                else {
                    continue;
                };
                if old_lease.token == new_lease.token {
                    prop_assert!(
                        new_lease.expires_at_ms >= old_lease.expires_at_ms,
                        "lease {} of job {} was shortened by {:?}", old_lease.token, old.id, op
                    );
                }
            }
            let removed: BTreeSet<JobId> = before
                .jobs()
                .map(|j| j.id)
                .filter(|id| sim.state.job(*id).is_none())
                .collect();
            if let (
                Command::RemoveFinishedJobs { retention_ms, max_finished, until_shipped, limit },
                Ok(CommandOutput::JobsRemoved { removed: count, more }),
            ) = (&command, &result) {
                prop_assert_eq!(removed.len() as u64, *count);
                prop_assert!(removed.len() <= *limit as usize);
                let acked = before.outbox_meta().acked_up_to;
                let unshipped: BTreeSet<JobId> = last_event
                    .iter()
                    .filter(|(_, &last)| last > acked)
                    .map(|(&id, _)| id)
                    .collect();
                // Whatever the bookkeeping: no job goes while an event naming it waits.
                if *until_shipped {
                    for event in &stored_before {
                        if let Some(job) = event.kind.job() {
                            prop_assert!(!removed.contains(&job), "job {} removed before event {} shipped", job, event.id);
                        }
                    }
                }
                let mut finished: Vec<(u64, JobId)> = before
                    .jobs()
                    .filter(|j| j.state.is_terminal())
                    .map(|j| (j.updated_at_ms, j.id))
                    .collect();
                finished.sort_unstable();
                let over_cap = match *max_finished {
                    0 => 0,
                    cap => finished.len().saturating_sub(cap as usize),
                };
                let mut due = Vec::new();
                for (position, (finished_at, id)) in finished.iter().enumerate() {
                    let old_enough = *finished_at <= at.saturating_sub(*retention_ms);
                    if (old_enough || position < over_cap) && !(*until_shipped && unshipped.contains(id)) {
                        due.push(*id);
                    }
                }
                // Exactly the oldest due jobs go, up to the limit; queued and leased ones never.
                let expected: BTreeSet<JobId> = due.iter().take(*limit as usize).copied().collect();
                prop_assert_eq!(&removed, &expected, "removed by {:?}", op);
                prop_assert_eq!(*more, due.len() > *limit as usize);
                for id in &removed {
                    prop_assert!(sim.rows.job_logs(*id, 0, usize::MAX).is_empty());
                    prop_assert!(sim.state.log_batch_marks().all(|(job, _, _)| job != *id));
                    prop_assert!(sim.state.was_removed(*id));
                }
            } else {
                prop_assert!(removed.is_empty(), "{:?} dropped jobs {:?}", op, removed);
            }
            for old in before.jobs().filter(|j| !removed.contains(&j.id)) {
                let new = sim.state.job(old.id).expect("jobs are never dropped but by retention");
                // Only legal transitions; a terminal job never changes state again. A combined
                // command may make two: a result (running -> queued for a retry), then a grant.
                let two_steps = matches!(command, Command::ReportAndAcquire { .. })
                    && old.state.can_become(JobState::Queued)
                    && JobState::Queued.can_become(new.state);
                prop_assert!(
                    new.state == old.state || old.state.can_become(new.state) || two_steps,
                    "illegal {} -> {} on {:?}", old.state, new.state, op
                );
                // Attempt history is append-only: ended attempts never change.
                prop_assert!(new.attempts.len() >= old.attempts.len());
                for (a, b) in old.attempts.iter().zip(&new.attempts) {
                    if a.outcome.is_some() {
                        prop_assert_eq!(a, b);
                    }
                }
                prop_assert!(new.attempts.len() <= new.spec.max_attempts as usize);
            }
            let newest = sim.state.outbox_meta().newest_event_id();
            for event in sim.events().iter().filter(|e| e.id > newest_before) {
                if let Some(last) = event.kind.job().and_then(|job| last_event.get_mut(&job)) {
                    *last = event.id;
                }
            }
            for job in sim.state.jobs() {
                if job.state.is_terminal() {
                    let first = *terminal.entry(job.id).or_insert(job.state);
                    prop_assert_eq!(first, job.state, "job {} completed twice", job.id);
                    // A combined command finishes its jobs before its acquire makes events; it
                    // was checked above to end exactly as its parts, so its own record is right.
                    let finished_at = match &command {
                        Command::ReportAndAcquire { .. } => sim
                            .state
                            .finished_job(job.id)
                            .map_or(newest, |kept| kept.last_event),
                        _ => newest,
                    };
                    last_event.entry(job.id).or_insert(finished_at);
                }
            }
            if let (Command::ReleaseOutbox { after, up_to, events }, Ok(CommandOutput::OutboxAcked { acked_up_to, removed })) = (&command, &result) {
                let moved = *after == before.outbox_meta().acked_up_to && *up_to > *after;
                prop_assert_eq!(*removed, if moved { *events } else { 0 });
                prop_assert_eq!(*acked_up_to, if moved { *up_to } else { before.outbox_meta().acked_up_to });
                prop_assert!(sim.events().iter().all(|e| e.id > *acked_up_to));
                if moved {
                    before_last_release = Some((stored_before.clone(), acked_before));
                }
            }
            for worker in sim.state.workers() {
                let grew = before
                    .worker(worker.info.id)
                    .is_none_or(|old| worker.running.len() > old.running.len());
                if grew {
                    prop_assert!(worker.running.len() <= worker.info.max_tasks as usize);
                }
            }
        }
        // Tokens are unique across the whole history.
        let unique: BTreeSet<u64> = granted.iter().map(|(l, _)| l.token).collect();
        prop_assert_eq!(unique.len(), granted.len());
        // The rows the state machine would have written rebuild the very same state.
        prop_assert_eq!(sim.rows.rebuild(), sim.state.clone());
        prop_assert_eq!(QueueState::from_parts(sim.state.to_parts()), sim.state.clone());
        // Two replicas applying the same log agree.
        prop_assert_eq!(replica, sim.state);
    }
}

/// Whether a verdict on an ended attempt of `job` repeats the one it ended with: for a live job,
/// the attempt's outcome and exit code; for a finished one (whose kept record has no outcomes),
/// its last attempt's, with the verdict that ends a job in its state.
fn is_repeat(
    before: &QueueState,
    job: &crate::queue::Job,
    worker: crate::queue::WorkerId,
    token: u64,
    outcome: AttemptOutcome,
    exit_code: Option<i32>,
) -> bool {
    let Some(attempt) = job.attempt_with(worker, token) else {
        return false;
    };
    if before.finished_job(job.id).is_some() {
        attempt.number as usize == job.attempts.len() && outcome.final_state() == Some(job.state)
    } else {
        attempt.outcome == Some(outcome) && attempt.exit_code == exit_code
    }
}
