//! Which jobs a listing shows beyond their state: a part of the name, a tag, the worker that
//! ran an attempt. Pure; the API scans pages of jobs through it (`master::job_service`).

use super::{Job, WorkerId};

/// A filter on jobs; every part that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Part of the job's name, any case.
    pub name_contains: Option<String>,
    /// A tag the job requires, exactly.
    pub tag: Option<String>,
    /// An attempt ran on one of these workers (an id prefix resolved against the registry, or
    /// a display name: every worker it names).
    pub workers: Option<Vec<WorkerId>>,
}

impl JobFilter {
    /// Whether nothing is filtered.
    pub fn is_empty(&self) -> bool {
        self.name_contains.is_none() && self.tag.is_none() && self.workers.is_none()
    }

    pub fn matches(&self, job: &Job) -> bool {
        let name = self
            .name_contains
            .as_ref()
            .is_none_or(|part| job.spec.name.to_lowercase().contains(&part.to_lowercase()));
        let tag = self
            .tag
            .as_ref()
            .is_none_or(|tag| job.spec.tags.iter().any(|t| t == tag));
        let worker = self.workers.as_ref().is_none_or(|workers| {
            job.attempts
                .iter()
                .any(|attempt| workers.contains(&attempt.worker))
        });
        name && tag && worker
    }

    /// The workers `text` names among `registered` (id, display name): every one whose id
    /// starts with it or whose display name is it.
    pub fn workers_named<'a>(
        text: &str,
        registered: impl IntoIterator<Item = (WorkerId, &'a str)>,
    ) -> Vec<WorkerId> {
        let text = text.trim();
        registered
            .into_iter()
            .filter(|(id, name)| {
                id.to_string().starts_with(&text.to_lowercase()) || name.eq_ignore_ascii_case(text)
            })
            .map(|(id, _)| id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Attempt, JobSpec, JobState};

    fn job(name: &str, tags: &[&str], workers: &[WorkerId]) -> Job {
        let spec = JobSpec {
            name: name.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..JobSpec::default()
        };
        Job {
            id: 1,
            spec,
            state: JobState::Succeeded,
            idempotency_key: None,
            created_at_ms: 0,
            updated_at_ms: 0,
            created_index: 1,
            attempts: attempts(workers),
            lease: None,
            cancel_requested: false,
            ready_at_ms: 0,
            log_lines: 0,
            log_lines_dropped: 0,
            log_bytes: 0,
        }
    }

    fn attempts(workers: &[WorkerId]) -> Vec<Attempt> {
        workers
            .iter()
            .enumerate()
            .map(|(n, worker)| Attempt {
                number: n as u32 + 1,
                worker: *worker,
                token: n as u64 + 1,
                started_at_ms: 0,
                ended_at_ms: None,
                outcome: None,
                exit_code: None,
                error: String::new(),
            })
            .collect()
    }

    #[test]
    fn every_part_set_must_match() {
        let (a, b) = (WorkerId::from_u128(0xa1), WorkerId::from_u128(0xb2));
        let sales = job("Load-Sales-7", &["finance", "nightly"], &[a, b]);
        assert!(JobFilter::default().matches(&sales));
        let by_name = JobFilter {
            name_contains: Some("sales".into()),
            ..JobFilter::default()
        };
        assert!(by_name.matches(&sales));
        assert!(!by_name.matches(&job("load-hr", &[], &[])));
        let by_tag = JobFilter {
            tag: Some("nightly".into()),
            ..by_name.clone()
        };
        assert!(by_tag.matches(&sales));
        let wrong_tag = JobFilter {
            tag: Some("night".into()),
            ..by_name.clone()
        };
        assert!(!wrong_tag.matches(&sales), "tags match whole");
        let by_worker = JobFilter {
            workers: Some(vec![b]),
            ..JobFilter::default()
        };
        assert!(by_worker.matches(&sales), "any attempt's worker");
        assert!(!by_worker.matches(&job("x", &[], &[a])));
        let nobody = JobFilter {
            workers: Some(vec![]),
            ..JobFilter::default()
        };
        assert!(
            !nobody.matches(&sales),
            "a worker filter naming no one matches nothing"
        );
    }

    #[test]
    fn a_worker_is_named_by_an_id_prefix_or_its_display_name() {
        let (a, b) = (
            WorkerId::parse_str("0b5c0000-0000-0000-0000-000000000001").expect("uuid"),
            WorkerId::parse_str("7e110000-0000-0000-0000-000000000002").expect("uuid"),
        );
        let registry = [(a, "etl-1"), (b, "etl-2")];
        assert_eq!(JobFilter::workers_named("0B5C", registry), vec![a]);
        assert_eq!(JobFilter::workers_named("ETL-2", registry), vec![b]);
        assert!(JobFilter::workers_named("etl", registry).is_empty());
    }
}
