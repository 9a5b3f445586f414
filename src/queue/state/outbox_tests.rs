//! The outbox: which events each change makes, their ids, the bound, releases and pruning, and
//! the held outbox of earlier builds. The state holds counters only: the events are the rows
//! `Sim` stores from each change set, which it checks against the counters after every command.

use super::test_support::*;
use super::QueueState;
use crate::queue::{
    event_origin, AttemptOutcome, Command, CommandOutput, EventKind, JobState, OutboxEvent,
    QueueError, WorkerChange,
};

fn kinds(events: &[OutboxEvent]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind.clone()).collect()
}

fn all_events(sim: &Sim) -> Vec<OutboxEvent> {
    sim.events()
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
fn releases_remove_what_was_shipped_and_only_move_forward() {
    let mut sim = Sim::new();
    sim.register(1, &[], 4);
    for _ in 0..4 {
        sim.submit(spec());
    }
    let events = all_events(&sim);
    assert_eq!(events.len(), 5);
    assert_eq!(sim.state.outbox_len(), 5);
    let up_to = events[2].id;
    assert_eq!(
        sim.release_through(up_to),
        Ok(CommandOutput::OutboxAcked {
            acked_up_to: up_to,
            removed: 3
        })
    );
    assert_eq!(all_events(&sim), events[3..].to_vec());
    assert_eq!(sim.state.outbox_len(), 2);
    // A retried release, or one counted from another cursor, changes nothing.
    let before = sim.state.clone();
    for (after, up_to_again) in [(0, up_to), (0, events[4].id), (up_to, events[1].id)] {
        assert_eq!(
            sim.apply(Command::ReleaseOutbox {
                after,
                up_to: up_to_again,
                events: 3
            }),
            Ok(CommandOutput::OutboxAcked {
                acked_up_to: up_to,
                removed: 0
            })
        );
    }
    assert_eq!(sim.state, before);
    assert_eq!(sim.state.outbox_meta().acked_up_to, up_to);
    sim.assert_rows_rebuild();
}

#[test]
fn a_release_past_the_newest_event_or_of_more_than_are_pending_is_refused() {
    let mut sim = Sim::new();
    sim.register(1, &[], 4);
    sim.submit(spec());
    let newest = sim.state.outbox_meta().newest_event_id();
    for (up_to, events) in [(newest + 1, 1), (newest, 3)] {
        let refused = sim.apply(Command::ReleaseOutbox {
            after: 0,
            up_to,
            events,
        });
        assert!(
            matches!(refused, Err(QueueError::InvalidRequest(_))),
            "{refused:?}"
        );
    }
    assert_eq!(sim.state.outbox_len(), 2);
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

    // Shipping the truncation notice makes room.
    let up_to = last.id;
    sim.release_through(up_to).expect("release");
    assert_eq!(sim.state.outbox_len(), 0);
    sim.assert_rows_rebuild();
}

#[test]
fn a_running_jobs_truncation_event_is_rewritten_in_place_until_shipped_keeping_its_time() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 4);
    let id = sim.submit(spec());
    let lease = lease_of(&sim.acquire(w, 1).remove(0));
    sim.outbox_limit = sim.state.outbox_len() as u64;
    let append = |sim: &mut Sim, n: usize| {
        let lines = (0..n).map(|i| line(&format!("l{i}"))).collect();
        sim.apply(Command::AppendLogs {
            worker: w,
            lease,
            lines,
        })
        .expect("logs");
    };
    append(&mut sim, 2);
    let first = sim
        .state
        .truncation(id)
        .cloned()
        .expect("a truncation event");
    sim.advance(5_000);
    append(&mut sim, 3);
    let rewritten = sim.state.truncation(id).cloned().expect("still one");
    assert_eq!(rewritten.id, first.id);
    assert_eq!(rewritten.at_ms, first.at_ms, "events stay in time order");
    assert_eq!(
        rewritten.kind,
        EventKind::LogTruncated {
            job: id,
            dropped: 5
        }
    );
    assert_eq!(sim.events().last(), Some(&rewritten));

    // Shipped: the next drop starts a new event.
    sim.release_through(rewritten.id).expect("release");
    assert!(sim.state.truncation(id).is_none());
    sim.outbox_limit = sim.state.outbox_len() as u64;
    append(&mut sim, 1);
    let next = sim.state.truncation(id).cloned().expect("a new one");
    assert!(next.id > rewritten.id);
    assert_eq!(
        next.kind,
        EventKind::LogTruncated {
            job: id,
            dropped: 1
        }
    );
    sim.assert_rows_rebuild();

    // Finished: the queue lets go of it; the stored event stays until shipped.
    sim.complete(w, lease, AttemptOutcome::Succeeded)
        .expect("complete");
    assert!(sim.state.truncation(id).is_none());
    assert!(sim.events().contains(&next));
    sim.assert_rows_rebuild();
}

#[test]
fn late_lines_of_a_finished_job_past_the_limit_make_one_event_per_append() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 4);
    let id = sim.submit(spec());
    let lease = lease_of(&sim.acquire(w, 1).remove(0));
    sim.complete(w, lease, AttemptOutcome::Succeeded)
        .expect("complete");
    let finished_last_event = sim.state.finished_job(id).expect("kept").last_event;
    sim.outbox_limit = sim.state.outbox_len() as u64;
    for _ in 0..2 {
        sim.apply(Command::AppendLogs {
            worker: w,
            lease,
            lines: (0..4).map(|i| line(&format!("late {i}"))).collect(),
        })
        .expect("late lines are kept");
    }
    let truncations: Vec<EventKind> = sim
        .events()
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::LogTruncated { .. }))
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        truncations,
        vec![
            EventKind::LogTruncated {
                job: id,
                dropped: 4
            };
            2
        ]
    );
    assert!(
        sim.state.truncation(id).is_none(),
        "not held for a finished job"
    );
    // Retention with SSISDB waits for them too.
    let kept = sim.state.finished_job(id).expect("kept");
    assert_eq!(Some(kept.last_event), sim.events().last().map(|e| e.id));
    assert!(kept.last_event > finished_last_event);
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
    let result = sim.prune(cutoff);
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

/// A state as an earlier build left it: every pending event held, counters of its time.
fn held(sim: &Sim) -> QueueState {
    let mut parts = sim.state.to_parts();
    parts.outbox = sim.events();
    parts.outbox_meta.held = true;
    QueueState::from_parts(parts)
}

#[test]
fn a_held_outbox_applies_an_earlier_builds_ack_and_prune_as_it_did() {
    let mut sim = Sim::new();
    let w = sim.register(1, &[], 4);
    let id = sim.submit(spec());
    sim.advance(60_000);
    let lease = lease_of(&sim.acquire(w, 1).remove(0));
    sim.state = held(&sim);
    sim.rows.outbox_meta.held = true;
    let events = sim.events();
    assert_eq!(events.len(), 4, "registered, submitted, leased (2)");

    // Ack: a prefix, by id.
    assert_eq!(
        sim.apply(Command::AckOutbox {
            up_to: events[0].id
        }),
        Ok(CommandOutput::OutboxAcked {
            acked_up_to: events[0].id,
            removed: 1
        })
    );
    // Prune: by age, event by event; the cursor moves past them.
    assert_eq!(
        sim.apply(Command::PruneOutbox { before_ms: sim.now }),
        Ok(CommandOutput::OutboxAcked {
            acked_up_to: events[1].id,
            removed: 1
        })
    );
    assert_eq!(sim.events(), events[2..].to_vec());
    assert_eq!(sim.state.outbox_len(), 2);
    sim.assert_rows_rebuild();

    // Finished while held: its last event is not known to this build's bookkeeping...
    sim.complete(w, lease, AttemptOutcome::Succeeded)
        .expect("complete");
    let mut parts = sim.state.to_parts();
    for kept in &mut parts.finished {
        kept.last_event = crate::queue::UNKNOWN_LAST_EVENT;
    }
    sim.state = QueueState::from_parts(parts);
    assert_eq!(
        sim.state.finished_job(id).map(|k| k.last_event),
        Some(crate::queue::UNKNOWN_LAST_EVENT)
    );

    // ...until the first release of this build lets go of the outbox, at the same index on
    // every replica: what stays is counted, and the job's last event is found among it.
    let pending = sim.events();
    let up_to = pending[1].id;
    assert_eq!(
        sim.apply(Command::ReleaseOutbox {
            after: events[1].id,
            up_to,
            // Ignored: a held outbox counts for itself.
            events: 99,
        }),
        Ok(CommandOutput::OutboxAcked {
            acked_up_to: up_to,
            removed: 2
        })
    );
    assert!(!sim.state.outbox_meta().held);
    assert_eq!(sim.state.outbox_len(), pending.len() - 2);
    let newest_about_job = pending
        .iter()
        .filter(|e| e.kind.job() == Some(id))
        .map(|e| e.id)
        .max();
    assert_eq!(
        sim.state.finished_job(id).map(|k| k.last_event),
        newest_about_job
    );
    sim.assert_rows_rebuild();

    // From now on an earlier build's ack or prune changes nothing.
    let before = sim.state.clone();
    let newest = sim.state.outbox_meta().newest_event_id();
    for command in [
        Command::AckOutbox { up_to: newest },
        Command::PruneOutbox {
            before_ms: u64::MAX,
        },
    ] {
        assert_eq!(
            sim.apply(command),
            Ok(CommandOutput::OutboxAcked {
                acked_up_to: up_to,
                removed: 0
            })
        );
    }
    assert_eq!(sim.state, before);
}
