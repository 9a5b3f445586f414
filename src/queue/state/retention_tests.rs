//! Retention scenarios: what a sweep removes, what it keeps, and what a removed job leaves
//! behind (nothing but its id, never handed out again).

use super::test_support::*;
use crate::queue::{AttemptOutcome, Command, CommandOutput, JobId, JobState};

const HOUR_MS: u64 = 3_600_000;

fn sweep(sim: &mut Sim, retention_ms: u64, max_finished: u64, until_shipped: bool) -> (u64, bool) {
    match sim.apply(Command::RemoveFinishedJobs {
        retention_ms,
        max_finished,
        until_shipped,
        limit: 1000,
    }) {
        Ok(CommandOutput::JobsRemoved { removed, more }) => (removed, more),
        other => panic!("sweep: {other:?}"),
    }
}

fn submit_keyed(sim: &mut Sim, key: &str) -> (JobId, bool) {
    match sim.apply(Command::SubmitJob {
        spec: spec(),
        idempotency_key: Some(key.into()),
    }) {
        Ok(CommandOutput::Submitted {
            job_id,
            deduplicated,
        }) => (job_id, deduplicated),
        other => panic!("submit: {other:?}"),
    }
}

/// Runs `job` to success on `worker`, writing two log lines in a numbered batch.
fn run_to_success(sim: &mut Sim, worker: crate::queue::WorkerId) -> JobId {
    let task = sim.acquire(worker, 1).pop().expect("a task");
    let lease = lease_of(&task);
    sim.apply(Command::AppendLogBatch {
        worker,
        lease,
        batch: 1,
        lines: vec![line("one"), line("two")],
    })
    .expect("logs");
    sim.complete(worker, lease, AttemptOutcome::Succeeded)
        .expect("complete");
    task.job_id
}

#[test]
fn a_finished_job_past_retention_goes_with_its_logs_marks_and_key() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 4);
    let (id, _) = submit_keyed(&mut sim, "nightly-load-2026-12-04");
    assert_eq!(run_to_success(&mut sim, w), id);
    assert_eq!(sim.rows.job_logs(id, 0, 100).len(), 2);

    // Not yet past retention: kept.
    sim.advance(HOUR_MS);
    assert_eq!(sweep(&mut sim, 24 * HOUR_MS, 0, false), (0, false));
    assert!(sim.state.job(id).is_some());

    sim.advance(24 * HOUR_MS);
    assert_eq!(sweep(&mut sim, 24 * HOUR_MS, 0, false), (1, false));
    assert!(sim.state.job(id).is_none());
    assert!(sim.state.was_removed(id));
    assert!(!sim.state.was_removed(id + 1), "never handed out");
    assert!(sim.rows.job_logs(id, 0, 100).is_empty());
    assert_eq!(sim.state.log_batch_marks().count(), 0);
    assert_eq!(sim.state.finished_count(), 0);
    assert_eq!(sim.state.activity().jobs_removed, 1);
    sim.assert_rows_rebuild();

    // The key's window closed with its job: the same key makes a new job, with a new id.
    let (again, deduplicated) = submit_keyed(&mut sim, "nightly-load-2026-12-04");
    assert!(!deduplicated);
    assert!(again > id);
}

#[test]
fn queued_and_running_jobs_are_never_removed() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 1);
    let running = sim.submit(spec());
    let task = sim.acquire(w, 1).pop().expect("a task");
    assert_eq!(task.job_id, running);
    let queued = sim.submit(spec());
    sim.advance(48 * HOUR_MS);
    // Retention 0 and a cap of one finished job: neither applies to unfinished work.
    assert_eq!(sweep(&mut sim, 0, 1, false), (0, false));
    assert_eq!(sim.job(running).state, JobState::PickedUp);
    assert_eq!(sim.job(queued).state, JobState::Queued);
}

#[test]
fn the_cap_removes_the_oldest_finished_first() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 1);
    let mut ids = Vec::new();
    for _ in 0..5 {
        sim.submit(spec());
        sim.advance(1000);
        ids.push(run_to_success(&mut sim, w));
    }
    // Retention far away; a cap of 2 keeps the two newest.
    assert_eq!(sweep(&mut sim, 24 * HOUR_MS, 2, false), (3, false));
    let left: Vec<JobId> = sim.state.jobs().map(|j| j.id).collect();
    assert_eq!(left, ids[3..].to_vec());

    // A small limit leaves the rest for the next sweep and says so.
    for _ in 0..3 {
        sim.submit(spec());
        sim.advance(1000);
        run_to_success(&mut sim, w);
    }
    let removed = sim.apply(Command::RemoveFinishedJobs {
        retention_ms: 24 * HOUR_MS,
        max_finished: 2,
        until_shipped: false,
        limit: 2,
    });
    assert_eq!(
        removed,
        Ok(CommandOutput::JobsRemoved {
            removed: 2,
            more: true
        })
    );
    assert_eq!(sweep(&mut sim, 24 * HOUR_MS, 2, false), (1, false));
    assert_eq!(sim.state.finished_count(), 2);
}

#[test]
fn with_ssisdb_a_job_waits_until_its_events_are_shipped() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 1);
    sim.submit(spec());
    let id = run_to_success(&mut sim, w);
    sim.advance(48 * HOUR_MS);
    assert_eq!(sweep(&mut sim, HOUR_MS, 0, true), (0, false));
    assert!(
        sim.state.job(id).is_some(),
        "its events are still in the outbox"
    );

    let newest = sim.events().last().map(|e| e.id).expect("events");
    sim.release_through(newest).expect("shipped");
    assert_eq!(sweep(&mut sim, HOUR_MS, 0, true), (1, false));
    assert!(sim.state.job(id).is_none());
}

#[test]
fn replicas_remove_the_same_jobs_whatever_their_own_clocks() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 1);
    sim.submit(spec());
    run_to_success(&mut sim, w);
    let mut replica = sim.state.clone();
    sim.advance(2 * HOUR_MS);
    let command = Command::RemoveFinishedJobs {
        retention_ms: HOUR_MS,
        max_finished: 0,
        until_shipped: false,
        limit: 10,
    };
    let ctx = crate::queue::ApplyContext::unbounded(sim.index + 1, sim.now);
    let on_leader = sim.apply(command.clone());
    let on_replica = replica.apply(&ctx, command);
    assert_eq!(on_leader, on_replica);
    assert_eq!(sim.state, replica);
}
