//! Conversions of jobs, specs and states between the wire and the domain.

use crate::queue::{Job, JobSpec, JobState, QueueError};

use super::v1;

/// A spec as the API received it, turned into the domain's, with worker ids parsed.
/// The result still goes through [`JobSpec::validate`].
pub fn spec_from_pb(spec: v1::JobSpec) -> Result<JobSpec, QueueError> {
    let allowed_workers = spec
        .allowed_workers
        .iter()
        .map(|id| JobSpec::parse_worker_id(id))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(JobSpec {
        argv: spec.argv,
        name: spec.name,
        env: spec.env.into_iter().collect(),
        params: spec.params.into_iter().collect(),
        package: (!spec.package.is_empty()).then_some(spec.package),
        max_attempts: spec.max_attempts.max(1),
        allowed_workers,
        tags: spec.tags,
        timeout_secs: (spec.timeout_secs != 0).then_some(spec.timeout_secs),
        priority: spec.priority,
        retry_delay_secs: (spec.retry_delay_secs != 0).then_some(spec.retry_delay_secs),
    })
}

impl From<&JobSpec> for v1::JobSpec {
    fn from(spec: &JobSpec) -> Self {
        v1::JobSpec {
            argv: spec.argv.clone(),
            name: spec.name.clone(),
            env: spec.env.clone().into_iter().collect(),
            params: spec.params.clone().into_iter().collect(),
            package: spec.package.clone().unwrap_or_default(),
            max_attempts: spec.max_attempts,
            allowed_workers: spec
                .allowed_workers
                .iter()
                .map(|id| id.to_string())
                .collect(),
            tags: spec.tags.clone(),
            timeout_secs: spec.timeout_secs.unwrap_or(0),
            priority: spec.priority,
            retry_delay_secs: spec.retry_delay_secs.unwrap_or(0),
        }
    }
}

impl From<JobState> for v1::JobState {
    fn from(state: JobState) -> Self {
        match state {
            JobState::Queued => v1::JobState::Queued,
            JobState::PickedUp => v1::JobState::PickedUp,
            JobState::Running => v1::JobState::Running,
            JobState::Succeeded => v1::JobState::Succeeded,
            JobState::Failed => v1::JobState::Failed,
            JobState::Cancelled => v1::JobState::Cancelled,
        }
    }
}

/// `None` for "unspecified" (no filter); an error for a number this version does not know.
pub fn state_from_pb(value: i32) -> Result<Option<JobState>, String> {
    match v1::JobState::try_from(value) {
        Ok(v1::JobState::Unspecified) => Ok(None),
        Ok(v1::JobState::Queued) => Ok(Some(JobState::Queued)),
        Ok(v1::JobState::Running) => Ok(Some(JobState::Running)),
        Ok(v1::JobState::Succeeded) => Ok(Some(JobState::Succeeded)),
        Ok(v1::JobState::Failed) => Ok(Some(JobState::Failed)),
        Ok(v1::JobState::Cancelled) => Ok(Some(JobState::Cancelled)),
        Ok(v1::JobState::PickedUp) => Ok(Some(JobState::PickedUp)),
        Err(_) => Err(format!("unknown job state {value}")),
    }
}

impl From<&Job> for v1::Job {
    fn from(job: &Job) -> Self {
        v1::Job {
            id: job.id,
            spec: Some(v1::JobSpec::from(&job.spec)),
            state: v1::JobState::from(job.state) as i32,
            idempotency_key: job.idempotency_key.clone().unwrap_or_default(),
            created_at_ms: job.created_at_ms,
            updated_at_ms: job.updated_at_ms,
            created_index: job.created_index,
            attempts: job.attempts.iter().map(Into::into).collect(),
            cancel_requested: job.cancel_requested,
            ready_at_ms: job.ready_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_survives_the_round_trip() {
        let spec = JobSpec {
            argv: vec!["dtexec".into()],
            name: "load".into(),
            env: [("A".to_string(), "1".to_string())].into(),
            params: [("p".to_string(), "v".to_string())].into(),
            package: Some("/p.dtsx".into()),
            max_attempts: 3,
            allowed_workers: vec![uuid::Uuid::new_v4()],
            tags: vec!["etl".into()],
            timeout_secs: Some(60),
            priority: 5,
            retry_delay_secs: Some(30),
        };
        assert_eq!(spec_from_pb(v1::JobSpec::from(&spec)), Ok(spec));
    }

    #[test]
    fn a_bad_worker_id_is_named() {
        let spec = v1::JobSpec {
            argv: vec!["x".into()],
            allowed_workers: vec!["w1".into()],
            ..Default::default()
        };
        let err = spec_from_pb(spec).expect_err("w1 is no uuid").to_string();
        assert!(err.contains("\"w1\""), "{err}");
    }

    #[test]
    fn states_map_both_ways() {
        for state in JobState::ALL {
            assert_eq!(
                state_from_pb(v1::JobState::from(state) as i32),
                Ok(Some(state))
            );
        }
        assert_eq!(state_from_pb(0), Ok(None));
        assert!(state_from_pb(42).is_err());
    }
}
