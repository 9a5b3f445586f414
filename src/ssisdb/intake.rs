//! Job intake from T-SQL: SQL Agent job steps and stored procedures submit jobs with
//! `EXEC scaleout.submit_job …`, which adds a row to `scaleout.job_requests`
//! (deploy/sql/scaleout-schema.sql, schema 3). The leader reads the pending rows every
//! `ssisdb.intake_interval_ms`, submits each through the log like any API submit, and writes
//! back `submitted` and the job id, or `rejected` and why.
//!
//! One job per request however often it is read: the request's `request_key` (or
//! `ssisdb-request-<request_id>`) is the job's idempotency key, so a leader that dies between its
//! submit and the row's update, or two leaders reading the same row, make the same job. A
//! malformed request (bad JSON, no command, an attempt count out of range, an unknown worker id
//! format) is rejected on its own row; the others go on. A request the cluster could not take
//! (no quorum, leadership lost) stays pending for the next read.

use std::collections::BTreeMap;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::connect::{connect_target, target, SqlClient, SsisdbError};
use super::shipper::Committer;
use super::sql::{big, clip, simple, MAX_STRING};
use super::upsert::Lit;
use crate::config::SsisdbSettings;
use crate::queue::{Command, CommandOutput, JobSpec, QueueError};
use crate::rpc::Backoff;

/// Most requests read per poll; more are taken at once on the next.
const REQUESTS_PER_READ: usize = 100;
/// After a failed read or write: reconnect and retry, never later than the cap.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

/// One row of `scaleout.job_requests` in state `pending`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobRequest {
    pub request_id: i64,
    pub request_key: Option<String>,
    pub name: Option<String>,
    /// A JSON array of strings.
    pub argv: Option<String>,
    pub package: Option<String>,
    /// A JSON object of strings (numbers and booleans are taken as their text).
    pub parameters: Option<String>,
    pub max_attempts: Option<i32>,
    /// Comma-separated.
    pub tags: Option<String>,
    /// Comma-separated worker agent ids.
    pub workers: Option<String>,
}

impl JobRequest {
    /// The idempotency key the request's job is submitted with.
    pub fn idempotency_key(&self) -> String {
        match self.request_key.as_deref().map(str::trim) {
            Some(key) if !key.is_empty() => key.to_string(),
            _ => format!("ssisdb-request-{}", self.request_id),
        }
    }

    /// The job the request asks for, or what is wrong with it (said for the row's
    /// `error_message`, naming the procedure's argument).
    pub fn spec(&self) -> Result<JobSpec, String> {
        let present = |text: &Option<String>| {
            text.as_deref()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
        };
        let name = present(&self.name)
            .ok_or("@name is missing: give the job a name, e.g. @name = N'nightly load'")?;
        let argv = match present(&self.argv) {
            None => Vec::new(),
            Some(text) => serde_json::from_str::<Vec<String>>(&text).map_err(|e| {
                format!(
                    "@argv is not a JSON array of strings ({e}); write the command and its \
                     arguments as e.g. N'[\"cmd.exe\",\"/c\",\"echo hi\"]'"
                )
            })?,
        };
        let package = present(&self.package);
        if argv.is_empty() && package.is_none() {
            return Err(
                "neither @argv nor @package is given: give the command to run \
                        (@argv = N'[\"cmd.exe\",\"/c\",\"echo hi\"]') or a package path"
                    .into(),
            );
        }
        let params = match present(&self.parameters) {
            None => BTreeMap::new(),
            Some(text) => parameters(&text)?,
        };
        let max_attempts = match self.max_attempts {
            None => 1,
            Some(n) => u32::try_from(n)
                .ok()
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| format!("@max_attempts is {n} but must be 1 to 100"))?,
        };
        let list = |text: &Option<String>| -> Vec<String> {
            present(text)
                .map(|t| {
                    t.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let allowed_workers = list(&self.workers)
            .iter()
            .map(|id| JobSpec::parse_worker_id(id).map_err(|e| format!("@worker: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let spec = JobSpec {
            argv,
            name,
            env: BTreeMap::new(),
            params,
            package,
            max_attempts,
            allowed_workers,
            tags: list(&self.tags),
            timeout_secs: None,
            priority: 0,
            retry_delay_secs: None,
        };
        spec.validate().map_err(|e| e.to_string())?;
        Ok(spec)
    }
}

/// `@parameters`: a JSON object whose values are strings, numbers or booleans.
fn parameters(text: &str) -> Result<BTreeMap<String, String>, String> {
    let bad = |why: String| {
        format!(
            "@parameters is not a JSON object of parameter names and values ({why}); write e.g. \
             N'{{\"Date\":\"2026-12-06\",\"Retries\":3}}'"
        )
    };
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let serde_json::Value::Object(map) = value else {
        return Err(bad("not an object".into()));
    };
    map.into_iter()
        .map(|(name, value)| match value {
            serde_json::Value::String(s) => Ok((name, s)),
            serde_json::Value::Number(n) => Ok((name, n.to_string())),
            serde_json::Value::Bool(b) => Ok((name, b.to_string())),
            other => Err(bad(format!(
                "parameter {name:?} is {other}, not a string, number or boolean"
            ))),
        })
        .collect()
}

/// What became of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Submitted { job_id: u64 },
    Rejected { reason: String },
}

/// Reads pending requests and submits them, every `interval`, until aborted with the term.
pub(super) async fn take_requests(
    settings: &SsisdbSettings,
    committer: &impl Committer,
    interval: Duration,
    replica_id: u64,
) {
    let mut client: Option<(SqlClient, String)> = None;
    let mut pauses = BACKOFF.pauses();
    let mut last_error: Option<String> = None;
    loop {
        match poll_once(settings, committer, &mut client, replica_id).await {
            Ok(taken) => {
                if last_error.take().is_some() {
                    info!(replica = replica_id, "job intake from SSISDB recovered");
                }
                pauses.reset();
                if taken < REQUESTS_PER_READ {
                    tokio::time::sleep(interval).await;
                }
            }
            Err(e) => {
                client = None;
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    warn!(replica = replica_id, error = %text, "job intake from SSISDB failed; requests wait in scaleout.job_requests");
                    last_error = Some(text);
                }
                tokio::time::sleep(pauses.next_jittered().min(BACKOFF.max).max(interval)).await;
            }
        }
    }
}

/// One read of the pending requests; returns how many it took (fewer than it read when the
/// cluster could not take one).
async fn poll_once(
    settings: &SsisdbSettings,
    committer: &impl Committer,
    client: &mut Option<(SqlClient, String)>,
    replica_id: u64,
) -> Result<usize, SsisdbError> {
    if client.is_none() {
        let t = target(settings)?;
        *client = Some(connect_target(t, settings.connect_timeout()).await?);
    }
    let Some((sql, addr)) = client.as_mut() else {
        return Ok(0);
    };
    let requests = pending(sql, addr).await?;
    let mut taken = 0;
    for request in &requests {
        let outcome = match request.spec() {
            Err(reason) => Outcome::Rejected { reason },
            Ok(spec) => {
                let command = Command::SubmitJob {
                    spec,
                    idempotency_key: Some(request.idempotency_key()),
                };
                match committer.commit(command).await {
                    Ok(Ok(CommandOutput::Submitted { job_id, .. })) => {
                        Outcome::Submitted { job_id }
                    }
                    Ok(Err(
                        e
                        @ (QueueError::InvalidSpec(_) | QueueError::IdempotencyKeyConflict { .. }),
                    )) => Outcome::Rejected {
                        reason: e.to_string(),
                    },
                    Ok(Ok(other)) => {
                        return Err(SsisdbError::Sql(format!(
                            "a submit from scaleout.job_requests returned {other:?}"
                        )))
                    }
                    Ok(Err(e)) => Outcome::Rejected {
                        reason: e.to_string(),
                    },
                    // Not committed (no quorum, office lost): the row stays pending, and the
                    // next read waits for the interval.
                    Err(e) => {
                        debug!(replica = replica_id, request_id = request.request_id, error = %e, "job request not submitted; it stays pending");
                        return Ok(taken);
                    }
                }
            }
        };
        record(
            sql,
            addr,
            request.request_id,
            &outcome,
            replica_id,
            committer.now_ms(),
        )
        .await?;
        taken += 1;
        match &outcome {
            Outcome::Submitted { job_id } => {
                info!(
                    replica = replica_id,
                    request_id = request.request_id,
                    job_id,
                    "job submitted from scaleout.job_requests"
                )
            }
            Outcome::Rejected { reason } => {
                info!(replica = replica_id, request_id = request.request_id, %reason, "job request from SSISDB rejected")
            }
        }
    }
    Ok(taken)
}

/// The oldest pending requests, at most [`REQUESTS_PER_READ`].
async fn pending(client: &mut SqlClient, addr: &str) -> Result<Vec<JobRequest>, SsisdbError> {
    let rows = client
        .simple_query(format!(
            "SELECT TOP ({REQUESTS_PER_READ}) request_id, request_key, job_name, argv, \
             package_path, parameters, max_attempts, tags, worker_agent_ids \
             FROM scaleout.job_requests WHERE state = N'pending' ORDER BY request_id"
        ))
        .await
        .map_err(|e| SsisdbError::from_sql(addr, e))?
        .into_first_result()
        .await
        .map_err(|e| SsisdbError::from_sql(addr, e))?;
    let text = |row: &tiberius::Row, i: usize| {
        row.try_get::<&str, _>(i).ok().flatten().map(str::to_string)
    };
    Ok(rows
        .iter()
        .filter_map(|row| {
            Some(JobRequest {
                request_id: row.try_get::<i64, _>(0).ok().flatten()?,
                request_key: text(row, 1),
                name: text(row, 2),
                argv: text(row, 3),
                package: text(row, 4),
                parameters: text(row, 5),
                max_attempts: row.try_get::<i32, _>(6).ok().flatten(),
                tags: text(row, 7),
                workers: text(row, 8),
            })
        })
        .collect())
}

/// Writes the outcome on the request's row, if it is still pending (another leader may have
/// written the same outcome already).
async fn record(
    client: &mut SqlClient,
    addr: &str,
    request_id: i64,
    outcome: &Outcome,
    replica_id: u64,
    now_ms: u64,
) -> Result<(), SsisdbError> {
    let (state, job_id, error) = match outcome {
        Outcome::Submitted { job_id } => ("submitted", Lit::Big(big(*job_id)), Lit::Null),
        Outcome::Rejected { reason } => {
            ("rejected", Lit::Null, Lit::text(clip(reason, MAX_STRING)))
        }
    };
    let sql = format!(
        "UPDATE scaleout.job_requests SET state = N'{state}', job_id = {}, error_message = {}, \
         processed_time = {}, processed_ms = {}, processed_by = {} \
         WHERE request_id = {request_id} AND state = N'pending'",
        job_id.to_sql(),
        error.to_sql(),
        Lit::Time(now_ms).to_sql(),
        big(now_ms),
        big(replica_id),
    );
    simple(client, addr, &sql).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(argv: &str) -> JobRequest {
        JobRequest {
            request_id: 7,
            name: Some("nightly".into()),
            argv: Some(argv.into()),
            ..JobRequest::default()
        }
    }

    #[test]
    fn a_full_request_becomes_its_spec() {
        let r = JobRequest {
            request_id: 1,
            request_key: Some(" load-1 ".into()),
            name: Some("load".into()),
            argv: None,
            package: Some(r"\\share\etl\load.dtsx".into()),
            parameters: Some(r#"{"Date":"2026-12-06","Retries":3,"Full":true}"#.into()),
            max_attempts: Some(3),
            tags: Some("etl, big ,".into()),
            workers: Some("5f0c6f1e-3c2a-4b8e-9d7a-0e2f4b6c8a10".into()),
        };
        let spec = r.spec().expect("valid");
        assert_eq!(spec.name, "load");
        assert_eq!(spec.package.as_deref(), Some(r"\\share\etl\load.dtsx"));
        assert_eq!(spec.params["Retries"], "3");
        assert_eq!(spec.params["Full"], "true");
        assert_eq!(spec.max_attempts, 3);
        assert_eq!(spec.tags, vec!["etl", "big"]);
        assert_eq!(spec.allowed_workers.len(), 1);
        assert_eq!(r.idempotency_key(), "load-1");
        assert_eq!(request("[\"x\"]").idempotency_key(), "ssisdb-request-7");
        assert_eq!(
            request(r#"["cmd.exe","/c","echo hi"]"#)
                .spec()
                .expect("argv")
                .argv
                .len(),
            3
        );
    }

    #[test]
    fn a_malformed_request_says_which_argument_is_wrong() {
        let cases = [
            (request("echo hi"), "@argv is not a JSON array"),
            (request("[]"), "neither @argv nor @package"),
            (
                JobRequest {
                    name: None,
                    ..request("[\"x\"]")
                },
                "@name is missing",
            ),
            (
                JobRequest {
                    max_attempts: Some(0),
                    ..request("[\"x\"]")
                },
                "@max_attempts is 0",
            ),
            (
                JobRequest {
                    max_attempts: Some(-2),
                    ..request("[\"x\"]")
                },
                "must be 1 to 100",
            ),
            (
                JobRequest {
                    parameters: Some("[1]".into()),
                    ..request("[\"x\"]")
                },
                "@parameters is not a JSON object",
            ),
            (
                JobRequest {
                    parameters: Some(r#"{"a":[1]}"#.into()),
                    ..request("[\"x\"]")
                },
                "parameter \"a\"",
            ),
            (
                JobRequest {
                    workers: Some("w1".into()),
                    ..request("[\"x\"]")
                },
                "@worker: ",
            ),
        ];
        for (r, expected) in cases {
            let error = r.spec().expect_err(expected);
            assert!(error.contains(expected), "{expected}: {error}");
        }
    }
}
