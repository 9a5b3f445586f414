//! The outbox: which events each change makes, their ids, the bound, acks and pruning.

use super::test_support::*;
use crate::queue::{
    event_origin, AttemptOutcome, Command, CommandOutput, EventKind, JobState, OutboxEvent,
    WorkerChange,
};

fn kinds(events: &[OutboxEvent]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind.clone()).collect()
}

fn all_events(sim: &Sim) -> Vec<OutboxEvent> {
    sim.state.outbox_after(0, usize::MAX)
}

#[test]
fn a_job_run_makes_its_events_in_order() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 4);
    let id = sim.submit(spec());
    let task = sim.acquire(w, 1).remove(0);
    let lease = lease_of(&task);
    sim.renew(w, &[lease]);
    sim.apply(Command::AppendLogs {
        worker: w,
        lease,
        lines: vec![line("one"), line("two")],
    })
    .expect("logs");
    sim.complete(w, lease, AttemptOutcome::Succeeded)
        .expect("complete");

    assert_eq!(
        kinds(&all_events(&sim)),
        vec![
            EventKind::WorkerChanged {
                worker: w,
                change: WorkerChange::Registered
            },
            EventKind::JobSubmitted { job: id },
            EventKind::JobStateChanged {
                job: id,
                from: JobState::Queued,
                to: JobState::PickedUp
            },
            EventKind::AttemptStarted {
                job: id,
                attempt: 1,
                worker: w,
                lease_token: lease.token
            },
            EventKind::JobStateChanged {
                job: id,
                from: JobState::PickedUp,
                to: JobState::Running
            },
            EventKind::LogLine {
                job: id,
                sequence: 1
            },
            EventKind::LogLine {
                job: id,
                sequence: 2
            },
            EventKind::AttemptEnded {
                job: id,
                attempt: 1,
                worker: w,
                outcome: AttemptOutcome::Succeeded
            },
            EventKind::JobStateChanged {
                job: id,
                from: JobState::Running,
                to: JobState::Succeeded
            },
        ]
    );
    sim.assert_rows_rebuild();
}

#[test]
fn event_ids_are_log_index_and_sequence_and_only_grow() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 4);
    for _ in 0..3 {
        sim.submit(spec());
    }
    // One entry leasing three jobs makes six events with sequences 0..6 of that index.
    sim.acquire(w, 3);
    let acquire_index = sim.index;
    let events = all_events(&sim);
    let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let from_acquire: Vec<(u64, u64)> = events
        .iter()
        .map(|e| event_origin(e.id))
        .filter(|(index, _)| *index == acquire_index)
        .collect();
    assert_eq!(
        from_acquire,
        (0..6).map(|seq| (acquire_index, seq)).collect::<Vec<_>>()
    );
}

#[test]
fn acks_remove_what_was_shipped_and_only_move_forward() {
    let mut sim = Sim::new();
    sim.register(1, &[], 4);
    for _ in 0..4 {
        sim.submit(spec());
    }
    let events = all_events(&sim);
    assert_eq!(events.len(), 5);
    let up_to = events[2].id;
    assert_eq!(
        sim.apply(Command::AckOutbox { up_to }),
        Ok(CommandOutput::OutboxAcked {
            acked_up_to: up_to,
            removed: 3
        })
    );
    assert_eq!(all_events(&sim), events[3..].to_vec());
    // A retried or older ack changes nothing.
    let before = sim.state.clone();
    assert_eq!(
        sim.apply(Command::AckOutbox {
            up_to: events[1].id
        }),
        Ok(CommandOutput::OutboxAcked {
            acked_up_to: up_to,
            removed: 0
        })
    );
    assert_eq!(sim.state, before);
    assert_eq!(sim.state.outbox_meta().acked_up_to, up_to);
    sim.assert_rows_rebuild();
}

#[test]
fn past_the_limit_log_lines_are_counted_not_kept_and_state_events_stay() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 4);
    let id = sim.submit(spec());
    let lease = lease_of(&sim.acquire(w, 1).remove(0));
    let kept = sim.state.outbox_len() as u64;
    sim.outbox_limit = kept + 2;
    let lines: Vec<_> = (0..5).map(|n| line(&format!("line {n}"))).collect();
    sim.apply(Command::AppendLogs {
        worker: w,
        lease,
        lines,
    })
    .expect("logs");
    sim.apply(Command::AppendLogs {
        worker: w,
        lease,
        lines: vec![line("five"), line("six")],
    })
    .expect("more logs");
    // The lines are all stored for `job logs`; two made events, five were counted in one.
    assert_eq!(sim.job(id).log_lines, 7);
    let events = all_events(&sim);
    let log_events = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::LogLine { .. }))
        .count();
    assert_eq!(log_events, 2);
    let truncated: Vec<_> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::LogTruncated { job, dropped } => Some((job, dropped)),
            _ => None,
        })
        .collect();
    assert_eq!(truncated, vec![(id, 5)]);
    assert_eq!(sim.state.outbox_meta().dropped_log_events, 5);

    // State events are never dropped, even over the limit.
    sim.complete(w, lease, AttemptOutcome::Succeeded)
        .expect("complete");
    let last = all_events(&sim).pop().expect("an event");
    assert_eq!(
        last.kind,
        EventKind::JobStateChanged {
            job: id,
            from: JobState::PickedUp,
            to: JobState::Succeeded
        }
    );
    sim.assert_rows_rebuild();

    // Shipping the truncation notice makes room; a later drop starts a new count.
    let up_to = last.id;
    sim.apply(Command::AckOutbox { up_to }).expect("ack");
    assert_eq!(sim.state.outbox_len(), 0);
    sim.assert_rows_rebuild();
}

#[test]
fn worker_changes_are_events_heartbeats_are_not() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 4);
    sim.apply(Command::SetWorkerState {
        worker: w,
        enabled: Some(false),
        draining: None,
    })
    .expect("disable");
    sim.apply(Command::SetWorkerState {
        worker: w,
        enabled: Some(false),
        draining: None,
    })
    .expect("disable again");
    sim.apply(Command::SetWorkerState {
        worker: w,
        enabled: Some(true),
        draining: Some(true),
    })
    .expect("enable and drain");
    sim.apply(Command::WorkerHeartbeat {
        worker: w,
        running: vec![],
        cpu_percent_x10: 10,
        free_memory_mb: 10,
    })
    .expect("heartbeat");
    sim.apply(Command::RemoveWorker { worker: w })
        .expect("remove");
    let changes: Vec<WorkerChange> = all_events(&sim)
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::WorkerChanged { change, .. } => Some(change),
            _ => None,
        })
        .collect();
    assert_eq!(
        changes,
        vec![
            WorkerChange::Registered,
            WorkerChange::Disabled,
            WorkerChange::Draining,
            WorkerChange::Removed
        ]
    );
}

#[test]
fn pruning_drops_old_events_and_moves_the_cursor() {
    let mut sim = Sim::new();
    sim.register(1, &[], 4);
    sim.submit(spec());
    sim.advance(60_000);
    let recent = sim.submit(spec());
    let cutoff = sim.now;
    let result = sim.apply(Command::PruneOutbox { before_ms: cutoff });
    let events = all_events(&sim);
    assert_eq!(
        kinds(&events),
        vec![EventKind::JobSubmitted { job: recent }]
    );
    match result {
        Ok(CommandOutput::OutboxAcked {
            acked_up_to,
            removed,
        }) => {
            assert_eq!(removed, 2);
            assert!(acked_up_to < events[0].id);
            assert_eq!(sim.state.outbox_meta().acked_up_to, acked_up_to);
        }
        other => panic!("prune: {other:?}"),
    }
    sim.assert_rows_rebuild();
}

#[test]
fn a_cancel_of_a_running_job_is_an_event() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 4);
    let id = sim.submit(spec());
    sim.acquire(w, 1);
    sim.apply(Command::CancelJob { job_id: id })
        .expect("cancel");
    sim.apply(Command::CancelJob { job_id: id })
        .expect("cancel again");
    let cancels = all_events(&sim)
        .iter()
        .filter(|e| e.kind == EventKind::CancelRequested { job: id })
        .count();
    assert_eq!(cancels, 1);
}
