//! Tests of job submission, cancel and listing (workers and leases: `scenario_tests.rs` and
//! `property_tests.rs`).

use proptest::prelude::*;

use super::*;
use crate::queue::{CommandOutput, JobSpec, QueueError};

fn ctx(log_index: u64) -> ApplyContext {
    ApplyContext::unbounded(log_index, 1_700_000_000_000 + log_index)
}

fn spec(program: &str) -> JobSpec {
    JobSpec {
        argv: vec![program.into()],
        max_attempts: 1,
        ..JobSpec::default()
    }
}

fn submit(state: &mut QueueState, index: u64, program: &str, key: Option<&str>) -> CommandResult {
    state.apply(
        &ctx(index),
        Command::SubmitJob {
            spec: spec(program),
            idempotency_key: key.map(String::from),
        },
    )
}

fn submitted_id(result: CommandResult) -> JobId {
    match result {
        Ok(CommandOutput::Submitted { job_id, .. }) => job_id,
        other => panic!("expected a submit, got {other:?}"),
    }
}

#[test]
fn ids_start_at_one_and_increase() {
    let mut state = QueueState::new();
    let ids: Vec<JobId> = (1..=3)
        .map(|i| submitted_id(submit(&mut state, i, "a", None)))
        .collect();
    assert_eq!(ids, vec![1, 2, 3]);
    let job = state.job(2).expect("job 2");
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.created_index, 2);
    assert_eq!(job.created_at_ms, ctx(2).now_ms);
}

#[test]
fn the_same_key_returns_the_same_job() {
    let mut state = QueueState::new();
    let first = submit(&mut state, 1, "a", Some("k"));
    assert_eq!(
        first,
        Ok(CommandOutput::Submitted {
            job_id: 1,
            deduplicated: false
        })
    );
    let again = submit(&mut state, 2, "a", Some("k"));
    assert_eq!(
        again,
        Ok(CommandOutput::Submitted {
            job_id: 1,
            deduplicated: true
        })
    );
    assert_eq!(state.job_count(), 1);
    let other_spec = submit(&mut state, 3, "b", Some("k"));
    assert_eq!(
        other_spec,
        Err(QueueError::IdempotencyKeyConflict {
            key: "k".into(),
            job_id: 1
        })
    );
    assert_eq!(state.job_count(), 1);
}

#[test]
fn an_invalid_spec_changes_nothing() {
    let mut state = QueueState::new();
    let before = state.clone();
    let result = state.apply(
        &ctx(1),
        Command::SubmitJob {
            spec: JobSpec {
                argv: vec![],
                ..spec("x")
            },
            idempotency_key: None,
        },
    );
    assert!(matches!(result, Err(QueueError::InvalidSpec(_))));
    assert_eq!(state, before);
    assert!(state.take_changes().is_empty());
}

#[test]
fn cancel_a_queued_job_then_again() {
    let mut state = QueueState::new();
    let id = submitted_id(submit(&mut state, 1, "a", None));
    state.take_changes();
    let cancelled = state.apply(&ctx(2), Command::CancelJob { job_id: id });
    let Ok(CommandOutput::Cancelled {
        job_id,
        state: after,
    }) = cancelled
    else {
        panic!("{cancelled:?}")
    };
    assert_eq!((job_id, after), (id, JobState::Cancelled));
    assert_eq!(
        state.job(id).expect("archived").updated_at_ms,
        ctx(2).now_ms
    );
    assert_eq!(state.take_changes().jobs, BTreeSet::from([id]));
    // Cancelling twice is answered with the job as it is: a retried cancel must not fail.
    assert!(state
        .apply(&ctx(3), Command::CancelJob { job_id: id })
        .is_ok());
    assert_eq!(
        state.apply(&ctx(4), Command::CancelJob { job_id: 99 }),
        Err(QueueError::JobNotFound(99))
    );
}

#[test]
fn listing_pages_and_filters() {
    let mut state = QueueState::new();
    for i in 1..=5 {
        submit(&mut state, i, "a", None).expect("submit");
    }
    state
        .apply(&ctx(6), Command::CancelJob { job_id: 2 })
        .expect("cancel");
    let page = state.list(None, 0, 2);
    assert_eq!(page.ids, vec![1, 2]);
    assert_eq!(page.next_after, Some(2));
    let page = state.list(None, 4, 2);
    assert_eq!(page.ids, vec![5]);
    assert_eq!(page.next_after, None);
    let queued = state.list(Some(JobState::Queued), 0, 0);
    assert_eq!(queued.ids, vec![1, 3, 4, 5]);
    assert_eq!(state.count_in(JobState::Cancelled), 1);
}

#[test]
fn rebuilding_from_parts_gives_the_same_state() {
    let mut state = QueueState::new();
    for i in 1..=4 {
        submit(&mut state, i, "a", Some(&format!("k{i}"))).expect("submit");
    }
    state
        .apply(&ctx(5), Command::CancelJob { job_id: 3 })
        .expect("cancel");
    state.take_changes();
    let rebuilt = QueueState::from_parts(state.to_parts());
    assert_eq!(rebuilt, state);
}

#[test]
fn a_view_keeps_the_jobs_as_they_were_when_it_was_taken() {
    let mut state = QueueState::new();
    for i in 1..=3 {
        submit(&mut state, i, "a", None).expect("submit");
    }
    let view = state.view();
    assert!(
        view.parts.jobs.is_empty(),
        "the live jobs are shared, not copied"
    );
    let before: Vec<Job> = view.jobs.iter().map(|job| Job::clone(job)).collect();
    state
        .apply(&ctx(4), Command::CancelJob { job_id: 2 })
        .expect("cancel");
    let after: Vec<Job> = view.jobs.iter().map(|job| Job::clone(job)).collect();
    assert_eq!(after, before, "apply changed a job the view holds");
    assert_eq!(view.jobs[1].state, JobState::Queued);
    assert_eq!(state.job_state(2), Some(JobState::Cancelled));
    assert_eq!(view.parts.next_job_id, 4);
}

#[derive(Debug, Clone)]
enum Op {
    Submit { program: u8, key: Option<u8> },
    Cancel { job_id: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..3, proptest::option::of(0u8..6)).prop_map(|(program, key)| Op::Submit { program, key }),
        1 => (0u64..20).prop_map(|job_id| Op::Cancel { job_id }),
    ]
}

fn to_command(op: &Op) -> Command {
    match op {
        Op::Submit { program, key } => Command::SubmitJob {
            spec: spec(&format!("prog{program}")),
            idempotency_key: key.map(|k| format!("key{k}")),
        },
        Op::Cancel { job_id } => Command::CancelJob { job_id: *job_id },
    }
}

proptest! {
    #[test]
    fn random_histories_keep_the_invariants(ops in proptest::collection::vec(op(), 1..80)) {
        let mut state = QueueState::new();
        let mut last_new_id = 0;
        let mut key_owner: BTreeMap<String, (JobId, String)> = BTreeMap::new();
        for (i, op) in ops.iter().enumerate() {
            let before = state.clone();
            let result = state.apply(&ctx(i as u64 + 1), to_command(op));
            match (op, &result) {
                (Op::Submit { program, key }, Ok(CommandOutput::Submitted { job_id, deduplicated })) => {
                    let program = format!("prog{program}");
                    if *deduplicated {
                        let (owner, owner_program) = key_owner
                            .get(&format!("key{}", key.expect("a dedup needs a key")))
                            .expect("dedup of a known key");
                        prop_assert_eq!(owner, job_id);
                        prop_assert_eq!(owner_program, &program);
                        // Nothing changed but cluster time, which every applied command moves.
                        let mut expected = before.clone();
                        expected.clock_ms = state.clock_ms;
                        prop_assert_eq!(&state, &expected);
                    } else {
                        // Unique and increasing.
                        prop_assert!(*job_id > last_new_id);
                        last_new_id = *job_id;
                        if let Some(k) = key {
                            let fresh = key_owner.insert(format!("key{}", k), (*job_id, program)).is_none();
                            prop_assert!(fresh);
                        }
                    }
                }
                (Op::Submit { key, program }, Err(QueueError::IdempotencyKeyConflict { job_id, .. })) => {
                    let (owner, owner_program) = key_owner
                        .get(&format!("key{}", key.expect("a conflict needs a key")))
                        .expect("conflict on a known key");
                    prop_assert_eq!(owner, job_id);
                    prop_assert_ne!(owner_program, &format!("prog{program}"));
                }
                (Op::Cancel { job_id }, Ok(CommandOutput::Cancelled { job_id: id, state })) => {
                    prop_assert_eq!(id, job_id);
                    prop_assert_eq!(*state, JobState::Cancelled);
                }
                (Op::Cancel { job_id }, Err(QueueError::JobNotFound(id))) => {
                    prop_assert_eq!(id, job_id);
                    prop_assert!(before.job(*job_id).is_none());
                }
                (_, other) => prop_assert!(false, "unexpected result {:?} for {:?}", other, op),
            }
            if result.is_err() {
                prop_assert_eq!(&state, &before);
            }
            // Only legal transitions, and no job ever disappears.
            for old in before.jobs() {
                let new = state.job(old.id).expect("jobs are never dropped");
                prop_assert!(
                    new.state == old.state || old.state.can_become(new.state),
                    "illegal {} -> {}", old.state, new.state
                );
            }
            // The state index agrees with the jobs.
            let indexed: usize = JobState::ALL.iter().map(|s| state.count_in(*s)).sum();
            prop_assert_eq!(indexed, state.job_count());
        }
        // The persisted form rebuilds the very same state.
        state.take_changes();
        let rebuilt = QueueState::from_parts(state.to_parts());
        prop_assert_eq!(rebuilt, state);
    }

    #[test]
    fn replicas_applying_the_same_log_agree(ops in proptest::collection::vec(op(), 1..60)) {
        let mut a = QueueState::new();
        let mut b = QueueState::new();
        for (i, op) in ops.iter().enumerate() {
            let ra = a.apply(&ctx(i as u64), to_command(op));
            let rb = b.apply(&ctx(i as u64), to_command(op));
            prop_assert_eq!(ra, rb);
        }
        prop_assert_eq!(a, b);
    }
}
