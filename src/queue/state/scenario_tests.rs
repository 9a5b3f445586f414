//! Scenario tests of workers, dispatch, leases, cancel and logs: one story per test, each
//! command checked by the [`Sim`] driver (indexes consistent, rejections change nothing, the
//! persisted rows rebuild the state).

use super::test_support::*;
use super::QueueState;
use crate::queue::{
    AttemptOutcome, Command, CommandOutput, JobSpec, JobState, LeaseRef, QueueError, WorkerSeen,
    MAX_LOG_LINES_PER_JOB,
};

#[test]
fn submit_acquire_renew_complete() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 4);
    let id = sim.submit(spec());
    assert_eq!(sim.job(id).ready_at_ms, T0);
    assert!(sim.state.has_eligible_task(w, sim.now, MAX_CPU, MIN_MEM));

    sim.advance(10);
    let tasks = sim.acquire(w, 4);
    assert_eq!(tasks.len(), 1);
    let task = &tasks[0];
    assert_eq!((task.job_id, task.token, task.attempt), (id, 1, 1));
    assert_eq!(task.expires_at_ms, sim.now + LEASE_MS);
    assert_eq!(task.spec, spec());
    assert_eq!(sim.job(id).state, JobState::PickedUp);
    assert!(sim.worker(w).running.contains(&id));
    assert_eq!(sim.state.live_leases(), 1);
    assert_eq!(sim.state.next_lease_expiry(), Some(task.expires_at_ms));
    assert!(!sim.state.has_eligible_task(w, sim.now, MAX_CPU, MIN_MEM));

    sim.advance(1000);
    let statuses = sim.renew(w, &[lease_of(task)]);
    assert!(statuses[0].renewed);
    assert!(!statuses[0].cancel_requested);
    assert_eq!(statuses[0].expires_at_ms, sim.now + LEASE_MS);
    assert_eq!(sim.job(id).state, JobState::Running);
    assert_eq!(sim.state.next_lease_expiry(), Some(sim.now + LEASE_MS));

    sim.advance(1000);
    let done = sim.complete(w, lease_of(task), AttemptOutcome::Succeeded);
    assert_eq!(
        done,
        Ok(CommandOutput::Completed {
            state: JobState::Succeeded
        })
    );
    let job = sim.job(id);
    assert_eq!(job.lease, None);
    assert_eq!(job.attempts.len(), 1);
    let attempt = &job.attempts[0];
    assert_eq!(attempt.worker, w);
    assert_eq!(attempt.token, 1);
    assert_eq!(attempt.started_at_ms, T0 + 10);
    assert_eq!(attempt.ended_at_ms, Some(sim.now));
    assert_eq!(attempt.outcome, Some(AttemptOutcome::Succeeded));
    assert_eq!(attempt.exit_code, Some(0));
    assert!(sim.worker(w).running.is_empty());
    assert_eq!(sim.state.live_leases(), 0);
    assert_eq!(sim.state.next_lease_expiry(), None);

    // A task completes at most once: the same verdict again (its answer was lost) is answered
    // as applied before and changes nothing; another verdict is kept as a late line, not
    // applied; a token the worker never held is refused.
    let before = sim.state.clone();
    assert_eq!(
        sim.complete(w, lease_of(task), AttemptOutcome::Succeeded),
        Ok(CommandOutput::CompletedBefore {
            state: JobState::Succeeded
        })
    );
    assert_eq!(sim.state, before);
    assert_eq!(
        sim.complete(w, lease_of(task), AttemptOutcome::Failed),
        Ok(CommandOutput::CompletedLate)
    );
    assert_eq!(sim.job(id).state, JobState::Succeeded);
    assert_eq!(sim.job(id).attempts, before.job(id).unwrap().attempts);
    let late = sim.rows.job_logs(id, 0, 0);
    assert_eq!(late.len(), 1);
    assert!(late[0].late);
    assert_eq!(late[0].line.level, crate::queue::LogLevel::Warning);
    assert!(
        late[0].line.text.starts_with(&format!(
            "late result from worker {w} (lease 1): failed, exit code 1"
        )),
        "{}",
        late[0].line.text
    );
    // As an earlier build's leader proposes it, a verdict on an ended attempt is refused and
    // changes nothing (that leader records the late line by a second entry).
    let before = sim.state.clone();
    assert_eq!(
        sim.apply(Command::CompleteTask {
            worker: w,
            lease: lease_of(task),
            outcome: AttemptOutcome::Failed,
            exit_code: Some(1),
            error: String::new(),
        }),
        Err(QueueError::LeaseLost {
            job_id: id,
            token: 1
        })
    );
    assert_eq!(sim.state, before);
    let other = LeaseRef {
        job_id: id,
        token: 2,
    };
    assert_eq!(
        sim.complete(w, other, AttemptOutcome::Succeeded),
        Err(QueueError::LeaseLost {
            job_id: id,
            token: 2
        })
    );
    sim.assert_rows_rebuild();
}

#[test]
fn a_command_that_fails_twice_then_succeeds_has_three_attempts() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 1);
    let id = sim.submit(JobSpec {
        max_attempts: 3,
        ..spec()
    });
    for (round, outcome) in [
        AttemptOutcome::Failed,
        AttemptOutcome::Failed,
        AttemptOutcome::Succeeded,
    ]
    .into_iter()
    .enumerate()
    {
        sim.advance(100);
        let task = sim.acquire(w, 1).pop().expect("a task");
        assert_eq!(task.attempt as usize, round + 1);
        let expected = if outcome == AttemptOutcome::Succeeded {
            JobState::Succeeded
        } else {
            JobState::Queued
        };
        assert_eq!(
            sim.complete(w, lease_of(&task), outcome),
            Ok(CommandOutput::Completed { state: expected })
        );
    }
    let job = sim.job(id);
    let outcomes: Vec<_> = job.attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            Some(AttemptOutcome::Failed),
            Some(AttemptOutcome::Failed),
            Some(AttemptOutcome::Succeeded)
        ]
    );
    let numbers: Vec<u32> = job.attempts.iter().map(|a| a.number).collect();
    assert_eq!(numbers, vec![1, 2, 3]);
    let tokens: Vec<u64> = job.attempts.iter().map(|a| a.token).collect();
    assert_eq!(tokens, vec![1, 2, 3]);
}

#[test]
fn the_last_failed_attempt_fails_the_job() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 1);
    let id = sim.submit(JobSpec {
        max_attempts: 2,
        ..spec()
    });
    for expected in [JobState::Queued, JobState::Failed] {
        let task = sim.acquire(w, 1).pop().expect("a task");
        assert_eq!(
            sim.complete(w, lease_of(&task), AttemptOutcome::Failed),
            Ok(CommandOutput::Completed { state: expected })
        );
    }
    assert_eq!(sim.job(id).attempts.len(), 2);
    assert!(sim.acquire(w, 1).is_empty(), "a failed job is not retried");
}

#[test]
fn the_retry_delay_is_honoured() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 1);
    let id = sim.submit(JobSpec {
        max_attempts: 2,
        retry_delay_secs: Some(10),
        ..spec()
    });
    let task = sim.acquire(w, 1).pop().expect("a task");
    sim.advance(500);
    sim.complete(w, lease_of(&task), AttemptOutcome::Failed)
        .expect("complete");
    let failed_at = sim.now;
    assert_eq!(sim.job(id).ready_at_ms, failed_at + 10_000);
    assert_eq!(sim.job(id).state, JobState::Queued);

    sim.advance(9_999);
    assert!(!sim.state.has_eligible_task(w, sim.now, MAX_CPU, MIN_MEM));
    assert!(sim.acquire(w, 1).is_empty());
    sim.advance(1);
    assert!(sim.state.has_eligible_task(w, sim.now, MAX_CPU, MIN_MEM));
    let retry = sim.acquire(w, 1).pop().expect("the retry");
    assert_eq!((retry.job_id, retry.attempt), (id, 2));
}

#[test]
fn a_pinned_job_never_goes_to_another_worker() {
    let mut sim = Sim::new();
    let a = sim.register(1, &[], 4);
    let b = sim.register(2, &[], 4);
    let id = sim.submit(JobSpec {
        allowed_workers: vec![b],
        max_attempts: 2,
        ..spec()
    });
    assert!(!sim.state.has_eligible_task(a, sim.now, MAX_CPU, MIN_MEM));
    assert!(sim.acquire(a, 4).is_empty());
    let task = sim.acquire(b, 4).pop().expect("b gets it");
    assert_eq!(task.job_id, id);
    // Even after its lease on b expires, a does not get the retry.
    sim.advance(LEASE_MS);
    sim.apply(Command::ExpireLeases).expect("expire");
    assert_eq!(sim.job(id).state, JobState::Queued);
    assert!(sim.acquire(a, 4).is_empty());
    assert_eq!(sim.acquire(b, 4).len(), 1);
}

#[test]
fn a_job_runs_only_where_every_tag_is_offered() {
    let mut sim = Sim::new();
    let sql_only = sim.register(1, &["sql"], 4);
    // Unsorted, duplicated: stored normalized.
    let both = sim.register(2, &["x", "sql", "gpu", "sql"], 4);
    assert_eq!(sim.worker(both).info.tags, vec!["gpu", "sql", "x"]);
    let id = sim.submit(JobSpec {
        tags: vec!["sql".into(), "gpu".into()],
        ..spec()
    });
    let untagged = sim.submit(spec());
    let got: Vec<_> = sim.acquire(sql_only, 4).iter().map(|t| t.job_id).collect();
    assert_eq!(got, vec![untagged], "no tags: any worker");
    let got: Vec<_> = sim.acquire(both, 4).iter().map(|t| t.job_id).collect();
    assert_eq!(got, vec![id]);
}

#[test]
fn disabled_and_draining_workers_get_nothing() {
    let mut sim = Sim::new();
    let w = worker_id(1);
    let registered = sim.apply(Command::RegisterWorker {
        info: worker_info(w, &[], 4),
        auto_enable: false,
    });
    assert_eq!(
        registered,
        Ok(CommandOutput::WorkerRegistered { enabled: false })
    );
    sim.submit(spec());
    sim.submit(spec());
    assert!(!sim.state.has_eligible_task(w, sim.now, MAX_CPU, MIN_MEM));
    assert!(sim.acquire(w, 4).is_empty());

    let set = |sim: &mut Sim, enabled, draining| match sim.apply(Command::SetWorkerState {
        worker: w,
        enabled,
        draining,
    }) {
        Ok(CommandOutput::WorkerUpdated { worker }) => (worker.enabled, worker.draining),
        other => panic!("{other:?}"),
    };
    assert_eq!(set(&mut sim, Some(true), None), (true, false));
    let first = sim.acquire(w, 1).pop().expect("enabled: a task");

    // Draining: keeps what it runs (renewals work), takes nothing new.
    assert_eq!(set(&mut sim, None, Some(true)), (true, true));
    assert!(sim.acquire(w, 4).is_empty());
    assert!(sim.renew(w, &[lease_of(&first)])[0].renewed);
    // Enabling ends the drain.
    assert_eq!(set(&mut sim, Some(true), None), (true, false));
    assert_eq!(sim.acquire(w, 4).len(), 1);

    // Re-registration keeps the admin's decisions and the running tasks.
    set(&mut sim, Some(false), None);
    let again = sim.apply(Command::RegisterWorker {
        info: worker_info(w, &["new"], 4),
        auto_enable: true,
    });
    assert_eq!(
        again,
        Ok(CommandOutput::WorkerRegistered { enabled: false })
    );
    assert_eq!(sim.worker(w).running.len(), 2);
    assert_eq!(sim.worker(w).info.tags, vec!["new"]);
    assert_eq!(sim.worker(w).registered_at_ms, T0);
}

#[test]
fn max_task_count_is_never_exceeded() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 2);
    for _ in 0..5 {
        sim.submit(spec());
    }
    let first = sim.acquire(w, 10);
    assert_eq!(first.len(), 2);
    assert!(sim.acquire(w, 10).is_empty());
    assert!(!sim.state.has_eligible_task(w, sim.now, MAX_CPU, MIN_MEM));
    sim.complete(w, lease_of(&first[0]), AttemptOutcome::Succeeded)
        .expect("complete");
    assert_eq!(sim.acquire(w, 10).len(), 1);
    assert_eq!(sim.worker(w).running.len(), 2);
    // free_slots is a ceiling too.
    let other = sim.register(2, &[], 10);
    assert_eq!(sim.acquire(other, 1).len(), 1);
    assert_eq!(sim.acquire(other, 0).len(), 0);
}

#[test]
fn cpu_and_memory_thresholds_gate_new_tasks() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 10);
    for _ in 0..3 {
        sim.submit(spec());
    }
    assert!(sim.acquire_at_load(w, 1, MAX_CPU + 1, 4096).is_empty());
    assert_eq!(sim.worker(w).cpu_percent_x10, MAX_CPU + 1, "load recorded");
    assert!(!sim.state.has_eligible_task(w, sim.now, MAX_CPU, MIN_MEM));
    assert!(sim
        .state
        .has_eligible_task_at_load(w, sim.now, MAX_CPU, 4096, MAX_CPU, MIN_MEM));
    assert!(sim.acquire_at_load(w, 1, 0, MIN_MEM - 1).is_empty());
    // At the limits exactly: allowed (SSIS: no new task *above* the CPU limit, *below* the
    // memory minimum).
    assert_eq!(sim.acquire_at_load(w, 1, MAX_CPU, MIN_MEM).len(), 1);
    // A heartbeat's load report counts too.
    sim.apply(Command::WorkerHeartbeat {
        worker: w,
        running: vec![],
        cpu_percent_x10: 999,
        free_memory_mb: 4096,
    })
    .expect("heartbeat");
    assert!(!sim.state.has_eligible_task(w, sim.now, MAX_CPU, MIN_MEM));
}

#[test]
fn dispatch_takes_priority_then_oldest_ready_then_id() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 100);
    let with_priority = |p| JobSpec {
        priority: p,
        max_attempts: 2,
        ..spec()
    };
    let low_old = sim.submit(with_priority(0));
    sim.advance(10);
    let high_a = sim.submit(with_priority(5));
    let high_b = sim.submit(with_priority(5)); // same ready time: id order
    sim.advance(10);
    let low_new = sim.submit(with_priority(0));
    let negative = sim.submit(with_priority(-1));
    sim.advance(10);
    let order: Vec<_> = sim.acquire(w, 100).iter().map(|t| t.job_id).collect();
    assert_eq!(order, vec![high_a, high_b, low_old, low_new, negative]);

    // A retried job is ready again only when it failed: behind older ready jobs of its priority.
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 100);
    let retried = sim.submit(with_priority(0));
    let task = sim.acquire(w, 1).pop().expect("task");
    sim.advance(10);
    let waiting = sim.submit(with_priority(0));
    sim.advance(10);
    sim.complete(w, lease_of(&task), AttemptOutcome::Failed)
        .expect("complete");
    let order: Vec<_> = sim.acquire(w, 100).iter().map(|t| t.job_id).collect();
    assert_eq!(order, vec![waiting, retried]);
}

#[test]
fn an_expired_lease_requeues_and_fences_the_old_holder() {
    let mut sim = Sim::new();
    let a = sim.register(1, &[], 1);
    let b = sim.register(2, &[], 1);
    let id = sim.submit(JobSpec {
        max_attempts: 2,
        ..spec()
    });
    let old = sim.acquire(a, 1).pop().expect("a gets it");
    let old_lease = lease_of(&old);
    sim.renew(a, &[old_lease]);
    assert_eq!(sim.job(id).state, JobState::Running);

    // a stops; nothing expires before the lease does.
    sim.advance(LEASE_MS - 1);
    assert_eq!(
        sim.apply(Command::ExpireLeases),
        Ok(CommandOutput::Expired { jobs: vec![] })
    );
    sim.advance(1);
    assert_eq!(
        sim.apply(Command::ExpireLeases),
        Ok(CommandOutput::Expired { jobs: vec![id] })
    );
    let job = sim.job(id);
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.attempts[0].outcome, Some(AttemptOutcome::Expired));
    assert_eq!(job.attempts[0].ended_at_ms, Some(sim.now));
    assert!(sim.worker(a).running.is_empty());

    let new = sim.acquire(b, 1).pop().expect("b gets the retry");
    assert_eq!((new.job_id, new.attempt), (id, 2));
    assert!(new.token > old.token);

    // a comes back: its renew, heartbeat, logs and complete are all told the lease is gone.
    let statuses = sim.renew(a, &[old_lease]);
    assert!(!statuses[0].renewed);
    assert_eq!(statuses[0].expires_at_ms, 0);
    let hb = sim.apply(Command::WorkerHeartbeat {
        worker: a,
        running: vec![old_lease],
        cpu_percent_x10: 0,
        free_memory_mb: 4096,
    });
    assert_eq!(
        hb,
        Ok(CommandOutput::Heartbeat {
            enabled: true,
            draining: false,
            cancel: vec![],
            lost: vec![old_lease]
        })
    );
    let logs = sim.apply(Command::AppendLogs {
        worker: a,
        lease: old_lease,
        lines: vec![line("late output")],
    });
    assert_eq!(logs, Ok(CommandOutput::LogsAppended { late: true }));
    // Its result comes too late: kept in the log, in the same entry, and not applied.
    assert_eq!(
        sim.complete(a, old_lease, AttemptOutcome::Succeeded),
        Ok(CommandOutput::CompletedLate)
    );
    // b's token presented by a is not a's lease either.
    assert_eq!(
        sim.complete(a, lease_of(&new), AttemptOutcome::Succeeded),
        Err(QueueError::LeaseLost {
            job_id: id,
            token: new.token
        })
    );
    assert_eq!(sim.job(id).state, JobState::PickedUp);

    // The new attempt completes, once.
    assert_eq!(
        sim.complete(b, lease_of(&new), AttemptOutcome::Succeeded),
        Ok(CommandOutput::Completed {
            state: JobState::Succeeded
        })
    );
    assert_eq!(
        sim.complete(b, lease_of(&new), AttemptOutcome::Succeeded),
        Ok(CommandOutput::CompletedBefore {
            state: JobState::Succeeded
        })
    );
    // Once the job has finished, a verdict on its earlier attempt is still late (only the
    // last attempt's can repeat the verdict the job ended with).
    assert_eq!(
        sim.complete(a, old_lease, AttemptOutcome::Succeeded),
        Ok(CommandOutput::CompletedLate)
    );
    let logs = sim.rows.job_logs(id, 0, 0);
    assert_eq!(logs.len(), 3);
    assert!(logs.iter().all(|line| line.late));
    assert!(
        logs.iter().all(|line| line.attempt == 1),
        "attributed to the attempt that ran it"
    );
    assert!(logs[1].line.text.starts_with("late result from worker"));
    assert!(logs[2].line.text.starts_with("late result from worker"));
    sim.assert_rows_rebuild();
}

#[test]
fn an_expired_last_attempt_fails_and_an_expired_cancel_cancels() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 2);
    let last = sim.submit(spec());
    let cancelled = sim.submit(JobSpec {
        max_attempts: 5,
        ..spec()
    });
    sim.acquire(w, 2);
    sim.apply(Command::CancelJob { job_id: cancelled })
        .expect("cancel");
    sim.advance(LEASE_MS);
    sim.apply(Command::ExpireLeases).expect("expire");
    assert_eq!(sim.job(last).state, JobState::Failed);
    assert_eq!(sim.job(cancelled).state, JobState::Cancelled);
    assert_eq!(
        sim.job(cancelled).attempts[0].outcome,
        Some(AttemptOutcome::Expired)
    );
}

#[test]
fn cancel_a_queued_job_at_once_and_a_running_one_through_its_worker() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 1);
    let running = sim.submit(JobSpec {
        max_attempts: 3,
        ..spec()
    });
    let queued = sim.submit(spec());
    let task = sim.acquire(w, 1).pop().expect("task");
    assert_eq!(task.job_id, running);

    let Ok(CommandOutput::Cancelled { job_id, state }) =
        sim.apply(Command::CancelJob { job_id: queued })
    else {
        panic!("cancel queued")
    };
    assert_eq!((job_id, state), (queued, JobState::Cancelled));

    sim.advance(5);
    let Ok(CommandOutput::Cancelled { state, .. }) =
        sim.apply(Command::CancelJob { job_id: running })
    else {
        panic!("cancel running")
    };
    assert_eq!(state, JobState::PickedUp, "the worker must stop it first");
    assert!(sim.job(running).cancel_requested);
    // Asking again is fine.
    sim.apply(Command::CancelJob { job_id: running })
        .expect("cancel again");

    // The worker hears it from its heartbeat and from its renewal.
    let hb = sim.apply(Command::WorkerHeartbeat {
        worker: w,
        running: vec![lease_of(&task)],
        cpu_percent_x10: 0,
        free_memory_mb: 4096,
    });
    assert_eq!(
        hb,
        Ok(CommandOutput::Heartbeat {
            enabled: true,
            draining: false,
            cancel: vec![lease_of(&task)],
            lost: vec![]
        })
    );
    assert!(sim.renew(w, &[lease_of(&task)])[0].cancel_requested);

    assert_eq!(
        sim.complete(w, lease_of(&task), AttemptOutcome::Cancelled),
        Ok(CommandOutput::Completed {
            state: JobState::Cancelled
        })
    );
    let job = sim.job(running);
    assert_eq!(job.attempts.len(), 1, "a cancelled job is not retried");
    assert_eq!(job.attempts[0].outcome, Some(AttemptOutcome::Cancelled));
    assert!(sim.worker(w).running.is_empty());
}

#[test]
fn a_killed_task_that_reports_failure_after_a_cancel_is_cancelled_not_retried() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 1);
    let id = sim.submit(JobSpec {
        max_attempts: 3,
        ..spec()
    });
    let task = sim.acquire(w, 1).pop().expect("task");
    sim.apply(Command::CancelJob { job_id: id })
        .expect("cancel");
    assert_eq!(
        sim.complete(w, lease_of(&task), AttemptOutcome::Failed),
        Ok(CommandOutput::Completed {
            state: JobState::Cancelled
        })
    );
    // A success that raced the cancel stands: the work was done.
    let other = sim.submit(spec());
    let task = sim.acquire(w, 1).pop().expect("task");
    sim.apply(Command::CancelJob { job_id: other })
        .expect("cancel");
    assert_eq!(
        sim.complete(w, lease_of(&task), AttemptOutcome::Succeeded),
        Ok(CommandOutput::Completed {
            state: JobState::Succeeded
        })
    );
    assert_eq!(
        sim.apply(Command::CancelJob { job_id: other }),
        Err(QueueError::NotCancellable {
            job_id: other,
            state: JobState::Succeeded
        })
    );
}

#[test]
fn extend_leases_pushes_every_live_lease_past_a_failover() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 4);
    sim.submit(spec());
    sim.submit(spec());
    let tasks = sim.acquire(w, 4);
    let first_expiry = tasks[0].expires_at_ms;
    sim.advance(LEASE_MS + 10_000); // the old leader died; nobody renewed
    assert_eq!(
        sim.apply(Command::ExtendLeases { lease_ms: LEASE_MS }),
        Ok(CommandOutput::Extended { leases: 2 })
    );
    assert_eq!(sim.state.next_lease_expiry(), Some(sim.now + LEASE_MS));
    for task in &tasks {
        let lease = sim.job(task.job_id).lease.clone().expect("still leased");
        assert_eq!(lease.expires_at_ms, sim.now + LEASE_MS);
        assert!(lease.expires_at_ms > first_expiry);
    }
    assert_eq!(
        sim.apply(Command::ExpireLeases),
        Ok(CommandOutput::Expired { jobs: vec![] })
    );
    // Applied again (a retried or repeated takeover), it changes nothing: it does not stack.
    let due = sim.state.next_lease_expiry().expect("live");
    sim.apply(Command::ExtendLeases { lease_ms: LEASE_MS })
        .expect("extend");
    assert_eq!(sim.state.next_lease_expiry(), Some(due));
    // A lease already running past now + lease keeps its expiry.
    sim.apply(Command::ExtendLeases { lease_ms: 5 })
        .expect("extend");
    assert_eq!(sim.state.next_lease_expiry(), Some(due));
    // Later, it is pushed to now + lease.
    sim.advance(LEASE_MS - 1);
    sim.apply(Command::ExtendLeases { lease_ms: LEASE_MS })
        .expect("extend");
    assert_eq!(sim.state.next_lease_expiry(), Some(sim.now + LEASE_MS));
    // The workers keep going.
    let statuses = sim.renew(w, &tasks.iter().map(lease_of).collect::<Vec<_>>());
    assert!(statuses.iter().all(|s| s.renewed));
}

#[test]
fn only_an_idle_worker_can_be_removed() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 4);
    sim.submit(spec());
    let task = sim.acquire(w, 4).pop().expect("task");
    assert_eq!(
        sim.apply(Command::RemoveWorker { worker: w }),
        Err(QueueError::WorkerBusy {
            worker: w,
            running: 1
        })
    );
    sim.complete(w, lease_of(&task), AttemptOutcome::Succeeded)
        .expect("complete");
    assert_eq!(
        sim.apply(Command::RemoveWorker { worker: w }),
        Ok(CommandOutput::WorkerRemoved)
    );
    assert!(sim.state.worker(w).is_none());
    assert_eq!(
        sim.apply(Command::RemoveWorker { worker: w }),
        Err(QueueError::WorkerNotFound(w))
    );
    sim.assert_rows_rebuild();
    assert!(sim.rows.workers.is_empty(), "the row is deleted");
}

#[test]
fn unknown_workers_and_bad_arguments_are_refused() {
    let mut sim = Sim::new();
    let stranger = worker_id(9);
    sim.submit(spec());
    let refusals = [
        (
            Command::WorkerHeartbeat {
                worker: stranger,
                running: vec![],
                cpu_percent_x10: 0,
                free_memory_mb: 0,
            },
            "not registered",
        ),
        (
            Command::AcquireTasks {
                worker: stranger,
                free_slots: 1,
                lease_ms: LEASE_MS,
                cpu_percent_x10: 0,
                free_memory_mb: 4096,
                max_cpu_percent_x10: MAX_CPU,
                min_free_memory_mb: MIN_MEM,
                request_id: None,
            },
            "not registered",
        ),
        (
            Command::RenewLeases {
                worker: stranger,
                leases: vec![],
                lease_ms: LEASE_MS,
            },
            "not registered",
        ),
        (
            Command::SetWorkerState {
                worker: stranger,
                enabled: Some(true),
                draining: None,
            },
            "not registered",
        ),
        (Command::ExtendLeases { lease_ms: 0 }, "out of range"),
        (
            Command::RegisterWorker {
                info: worker_info(stranger, &[], 0),
                auto_enable: true,
            },
            "max_tasks",
        ),
        (
            Command::CompleteTask {
                worker: stranger,
                lease: LeaseRef {
                    job_id: 1,
                    token: 1,
                },
                outcome: AttemptOutcome::Expired,
                exit_code: None,
                error: String::new(),
            },
            "cannot complete a task as expired",
        ),
        (
            Command::CompleteTask {
                worker: stranger,
                lease: LeaseRef {
                    job_id: 1,
                    token: 1,
                },
                outcome: AttemptOutcome::Succeeded,
                exit_code: None,
                error: String::new(),
            },
            "not current",
        ),
        (
            Command::AppendLogs {
                worker: stranger,
                lease: LeaseRef {
                    job_id: 1,
                    token: 77,
                },
                lines: vec![line("x")],
            },
            "not current",
        ),
        (
            Command::AppendLogs {
                worker: stranger,
                lease: LeaseRef {
                    job_id: 42,
                    token: 1,
                },
                lines: vec![line("x")],
            },
            "job 42 not found",
        ),
    ];
    for (command, needle) in refusals {
        let err = sim.apply(command.clone()).expect_err(needle).to_string();
        assert!(
            err.contains(needle),
            "{command:?}: {err:?} lacks {needle:?}"
        );
    }
    // And the registered worker with a lease too long.
    let w = sim.register(1, &[], 1);
    let err = sim
        .apply(Command::AcquireTasks {
            worker: w,
            free_slots: 1,
            lease_ms: crate::queue::MAX_LEASE_MS + 1,
            cpu_percent_x10: 0,
            free_memory_mb: 4096,
            max_cpu_percent_x10: MAX_CPU,
            min_free_memory_mb: MIN_MEM,
            request_id: None,
        })
        .expect_err("too long");
    assert!(matches!(err, QueueError::InvalidRequest(_)));
}

#[test]
fn logs_are_capped_with_one_running_notice() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 1);
    let id = sim.submit(spec());
    let task = sim.acquire(w, 1).pop().expect("task");
    let append = |sim: &mut Sim, from: u64, n: u64| {
        let lines = (from..from + n)
            .map(|i| line(&format!("line {i}")))
            .collect();
        sim.apply(Command::AppendLogs {
            worker: w,
            lease: lease_of(&task),
            lines,
        })
    };
    for batch in 0..10 {
        assert_eq!(
            append(&mut sim, batch * 1000 + 1, 1000),
            Ok(CommandOutput::LogsAppended { late: false })
        );
    }
    assert_eq!(sim.job(id).log_lines, MAX_LOG_LINES_PER_JOB);
    assert_eq!(sim.job(id).log_lines_dropped, 0);
    append(&mut sim, 10_001, 5).expect("append");
    append(&mut sim, 10_006, 3).expect("append");
    let job = sim.job(id);
    assert_eq!(job.log_lines, MAX_LOG_LINES_PER_JOB + 1);
    assert_eq!(job.log_lines_dropped, 8);
    let tail = sim.rows.job_logs(id, MAX_LOG_LINES_PER_JOB - 1, 10);
    let texts: Vec<&str> = tail.iter().map(|l| l.line.text.as_str()).collect();
    assert_eq!(
        texts,
        vec!["line 10000", "log truncated: 8 more lines dropped"]
    );
    assert_eq!(tail[1].sequence, MAX_LOG_LINES_PER_JOB + 1);

    // Paging: in order, from after a sequence, bounded.
    let page = sim.rows.job_logs(id, 10, 3);
    let seqs: Vec<u64> = page.iter().map(|l| l.sequence).collect();
    assert_eq!(seqs, vec![11, 12, 13]);
    assert_eq!(page[0].line.text, "line 11");
    assert!(sim.rows.job_logs(id + 1, 0, 10).is_empty());
    sim.assert_rows_rebuild();
}

/// The byte cap: lines of 16 KiB reach it long before the line cap; the line that would cross
/// it and every line after it (even a short one) are dropped, counted in the one notice.
#[test]
fn logs_are_capped_by_bytes_too() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 1);
    let id = sim.submit(spec());
    let task = sim.acquire(w, 1).pop().expect("task");
    let big = "x".repeat(crate::queue::MAX_LOG_LINE_BYTES);
    let fits = (crate::queue::MAX_LOG_BYTES_PER_JOB / big.len() as u64) as usize;
    let mut lines: Vec<crate::queue::LogLine> = (0..fits + 2).map(|_| line(&big)).collect();
    lines.push(line("short"));
    sim.apply(Command::AppendLogs {
        worker: w,
        lease: lease_of(&task),
        lines,
    })
    .expect("append");
    sim.apply(Command::AppendLogs {
        worker: w,
        lease: lease_of(&task),
        lines: vec![line("later")],
    })
    .expect("append");
    let job = sim.job(id);
    assert_eq!(job.log_bytes, (fits * big.len()) as u64);
    assert!(job.log_bytes <= crate::queue::MAX_LOG_BYTES_PER_JOB);
    assert_eq!(job.log_lines_dropped, 4);
    assert_eq!(job.log_lines, MAX_LOG_LINES_PER_JOB + 1);
    let tail = sim.rows.job_logs(id, fits as u64 - 1, 10);
    let sequences: Vec<u64> = tail.iter().map(|l| l.sequence).collect();
    assert_eq!(sequences, vec![fits as u64, MAX_LOG_LINES_PER_JOB + 1]);
    assert_eq!(tail[1].line.text, "log truncated: 4 more lines dropped");
    sim.assert_rows_rebuild();
}

#[test]
fn a_retried_log_batch_is_stored_once() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 1);
    let id = sim.submit(spec());
    let task = sim.acquire(w, 1).pop().expect("task");
    let send = |sim: &mut Sim, batch: u64, texts: &[&str]| {
        sim.apply(Command::AppendLogBatch {
            worker: w,
            lease: lease_of(&task),
            batch,
            lines: texts.iter().map(|t| line(t)).collect(),
        })
    };
    let appended = Ok(CommandOutput::LogsAppended { late: false });
    assert_eq!(send(&mut sim, 1, &["a", "b"]), appended);
    let events = sim.events().len();
    // The answer was lost: the same batch again, then again from the spool.
    assert_eq!(send(&mut sim, 1, &["a", "b"]), appended);
    assert_eq!(send(&mut sim, 1, &["a", "b"]), appended);
    assert_eq!(send(&mut sim, 2, &["c"]), appended);
    // A late re-send of an older batch changes nothing either.
    assert_eq!(send(&mut sim, 1, &["a", "b"]), appended);
    let texts: Vec<String> = sim
        .rows
        .job_logs(id, 0, 100)
        .into_iter()
        .map(|l| l.line.text)
        .collect();
    assert_eq!(texts, vec!["a", "b", "c"]);
    assert_eq!(sim.job(id).log_lines, 3);
    // One SSISDB event per stored line: the retries recorded none.
    assert_eq!(sim.events().len(), events + 1);
    // Unnumbered appends (the master's own late-result note) are always stored.
    for _ in 0..2 {
        sim.apply(Command::AppendLogs {
            worker: w,
            lease: lease_of(&task),
            lines: vec![line("note")],
        })
        .expect("append");
    }
    assert_eq!(sim.job(id).log_lines, 5);
    // Batch numbers are per lease: the next attempt starts again from 1.
    assert_eq!(sim.state.log_batch_mark(id, task.token), Some(2));
    sim.assert_rows_rebuild();
}

#[test]
fn changes_name_every_row_a_command_touched() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 1);
    let id = sim.submit(spec());
    let ctx = crate::queue::ApplyContext::unbounded(99, sim.now);
    sim.state.take_changes();
    sim.state
        .apply(
            &ctx,
            Command::AcquireTasks {
                worker: w,
                free_slots: 1,
                lease_ms: LEASE_MS,
                cpu_percent_x10: 0,
                free_memory_mb: 4096,
                max_cpu_percent_x10: MAX_CPU,
                min_free_memory_mb: MIN_MEM,
                request_id: None,
            },
        )
        .expect("acquire");
    let changes = sim.state.take_changes();
    assert_eq!(changes.jobs.into_iter().collect::<Vec<_>>(), vec![id]);
    assert_eq!(changes.workers.into_iter().collect::<Vec<_>>(), vec![w]);
    assert!(changes.log_lines.is_empty());
}

fn acquire_with_id(
    sim: &mut Sim,
    worker: crate::queue::WorkerId,
    request_id: &str,
) -> Vec<crate::queue::Assignment> {
    match sim.apply(Command::AcquireTasks {
        worker,
        free_slots: 1,
        lease_ms: LEASE_MS,
        cpu_percent_x10: 0,
        free_memory_mb: 4096,
        max_cpu_percent_x10: MAX_CPU,
        min_free_memory_mb: MIN_MEM,
        request_id: Some(request_id.into()),
    }) {
        Ok(CommandOutput::Acquired { tasks }) => tasks,
        other => panic!("acquire: {other:?}"),
    }
}

#[test]
fn a_retried_acquire_gets_the_same_leases_back() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 4);
    let first = sim.submit(spec());
    let second = sim.submit(spec());
    let granted = acquire_with_id(&mut sim, w, "call-1");
    assert_eq!(granted.len(), 1);
    assert_eq!(granted[0].job_id, first);
    // The answer was lost; the worker retries the same call on the new leader.
    sim.advance(5);
    let again = acquire_with_id(&mut sim, w, "call-1");
    assert_eq!(again, granted, "the same lease, not a second one");
    assert_eq!(sim.job(second).state, JobState::Queued);
    assert_eq!(sim.state.live_leases(), 1);
    // A new call gets new work.
    let next = acquire_with_id(&mut sim, w, "call-2");
    assert_eq!(next[0].job_id, second);
    assert!(next[0].token > granted[0].token);
    // Once the first lease is gone, its replay grants nothing stale.
    sim.complete(w, lease_of(&granted[0]), AttemptOutcome::Succeeded)
        .expect("complete");
    assert!(acquire_with_id(&mut sim, w, "call-2")
        .iter()
        .all(|t| t.job_id == second));
}

#[test]
fn job_counts_and_activity_follow_every_step() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 4);
    let ok = sim.submit(spec());
    let failing = sim.submit(JobSpec {
        max_attempts: 1,
        ..spec()
    });
    let expiring = sim.submit(JobSpec {
        max_attempts: 2,
        ..spec()
    });
    assert_eq!(sim.state.jobs_in(JobState::Queued), 3);
    assert_eq!(sim.state.activity().jobs_submitted, 3);

    sim.advance(10);
    let tasks = sim.acquire(w, 4);
    assert_eq!(tasks.len(), 3);
    assert_eq!(sim.state.jobs_in(JobState::Queued), 0);
    assert_eq!(sim.state.jobs_in(JobState::PickedUp), 3);
    assert_eq!(sim.state.activity().leases_granted, 3);
    let task = |id| {
        tasks
            .iter()
            .find(|t| t.job_id == id)
            .map(lease_of)
            .expect("leased")
    };

    sim.advance(10);
    sim.renew(w, &[task(ok), task(failing)]);
    assert_eq!(sim.state.activity().leases_renewed, 2);
    assert_eq!(sim.state.jobs_in(JobState::Running), 2);
    sim.complete(w, task(ok), AttemptOutcome::Succeeded)
        .expect("complete");
    sim.complete(w, task(failing), AttemptOutcome::Failed)
        .expect("complete");
    sim.advance(LEASE_MS + 1);
    sim.apply(Command::ExpireLeases).expect("expire");

    let activity = sim.state.activity();
    assert_eq!(activity.attempts(AttemptOutcome::Succeeded), 1);
    assert_eq!(activity.attempts(AttemptOutcome::Failed), 1);
    assert_eq!(activity.attempts(AttemptOutcome::Expired), 1);
    assert_eq!(activity.attempts(AttemptOutcome::Cancelled), 0);
    assert_eq!(sim.state.jobs_in(JobState::Succeeded), 1);
    assert_eq!(sim.state.jobs_in(JobState::Failed), 1);
    assert_eq!(
        sim.state.jobs_in(JobState::Queued),
        1,
        "the expired job has an attempt left"
    );
    assert_eq!(sim.state.jobs_in(JobState::PickedUp), 0);
    assert_eq!(sim.state.jobs_in(JobState::Running), 0);
    assert_eq!(sim.job(expiring).attempts.len(), 1);

    // Activity is what this copy did since it was loaded, not replicated state: a rebuilt
    // copy starts from zero but keeps the job counts.
    let rebuilt = QueueState::from_parts(sim.state.to_parts());
    assert_eq!(rebuilt, sim.state);
    assert_eq!(rebuilt.activity(), crate::queue::Activity::default());
    assert_eq!(rebuilt.jobs_in(JobState::Succeeded), 1);
}

/// A batch of sightings records each known worker's newest one, never later than the apply's
/// own time, never over a newer one, and skips a worker removed since.
#[test]
fn sightings_record_known_workers_never_ahead_of_the_apply_or_behind_the_log() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 2);
    let gone = worker_id(9);
    let seen = |worker, at_ms, cpu| WorkerSeen {
        worker,
        at_ms,
        cpu_percent_x10: cpu,
        free_memory_mb: 512,
    };
    let now = sim.now;
    let out = sim.apply(Command::WorkersSeen {
        seen: vec![seen(w, now + 5_000, 10), seen(gone, now, 20)],
    });
    assert_eq!(out, Ok(CommandOutput::WorkersSeen { recorded: 1 }));
    let worker = sim.state.worker(w).expect("registered");
    assert_eq!(worker.last_heartbeat_ms, now, "clamped to the apply's time");
    assert_eq!(worker.cpu_percent_x10, 10);
    // An older sighting than the one recorded changes nothing.
    sim.now += 1_000;
    let out = sim.apply(Command::WorkersSeen {
        seen: vec![seen(w, now - 1, 30)],
    });
    assert_eq!(out, Ok(CommandOutput::WorkersSeen { recorded: 0 }));
    assert_eq!(sim.state.worker(w).expect("registered").cpu_percent_x10, 10);
}
