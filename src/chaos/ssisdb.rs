//! SSISDB in a chaos run: the replicas reach it through a [`LinkProxy`], so an outage is the
//! listener going dark (refused or black-holed) while the server keeps its data, and what
//! landed is read back directly, past the proxy, for the exactly-once check.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use super::proxy::LinkProxy;
use crate::config::SsisdbSettings;

/// The SQL Server to ship to (with the `scaleout` schema installed).
#[derive(Debug, Clone)]
pub struct SsisdbTarget {
    /// Where the server listens.
    pub server: SocketAddr,
    /// The connection string's other keys, e.g. `Database=SSISDB;User Id=scaleout_master`.
    pub options: String,
    pub password_file: PathBuf,
}

impl SsisdbTarget {
    /// Settings that reach the server at `addr` (the proxy, or the server itself).
    pub fn settings_at(&self, addr: SocketAddr) -> SsisdbSettings {
        SsisdbSettings {
            connection_string: Some(format!(
                "Server=tcp:{},{};{}",
                addr.ip(),
                addr.port(),
                self.options
            )),
            password_file: Some(self.password_file.clone()),
            ..SsisdbSettings::default()
        }
    }

    /// A proxy in front of the server.
    pub async fn proxy(&self) -> anyhow::Result<LinkProxy> {
        LinkProxy::start(self.server).await.context("SSISDB proxy")
    }
}

/// What SSISDB holds at the end.
#[derive(Debug, Clone, Default)]
pub struct SsisdbView {
    /// Rows in scaleout.event_messages, and distinct event ids among them.
    pub rows: u64,
    pub distinct_ids: u64,
    pub max_event_id: u64,
    /// Job id → event kind → rows.
    pub by_job: BTreeMap<u64, BTreeMap<String, u64>>,
    /// Job id → (status code, attempt count, updated ms) of its `scaleout.jobs` row (one per
    /// job): the time of the job's last change tells the final state from an earlier one with
    /// the same status.
    pub job_rows: BTreeMap<u64, Vec<(i64, i64, i64)>>,
    /// Job id → (status code, executed count, updated ms) of its `scaleout.tasks` row (task id
    /// = job id).
    pub task_rows: BTreeMap<u64, Vec<(i64, i64, i64)>>,
    /// Job id → its `scaleout.task_attempts` rows: (attempt number, lease token, outcome,
    /// ended ms or -1).
    pub attempt_rows: BTreeMap<u64, Vec<(i64, i64, String, i64)>>,
    /// Request key → the `scaleout.job_requests` rows of that key: (state, job id or -1).
    pub requests: BTreeMap<String, Vec<(String, i64)>>,
}

/// A job request as a SQL Agent step makes it, written straight to the server (not through
/// the proxy): the row `EXEC scaleout.submit_job` adds, named and keyed `key`.
pub async fn request_job(target: &SsisdbTarget, key: &str, argv: &[String]) -> anyhow::Result<()> {
    let settings = target.settings_at(target.server);
    let mut client = crate::ssisdb::connect(&settings).await?;
    let quote = |text: &str| format!("N'{}'", text.replace('\'', "''"));
    let argv = serde_json::to_string(argv)?;
    client
        .simple_query(format!(
            "INSERT INTO scaleout.job_requests (request_key, job_name, argv, max_attempts) \
             VALUES ({key}, {key}, {argv}, 3)",
            key = quote(key),
            argv = quote(&argv),
        ))
        .await?
        .into_results()
        .await?;
    Ok(())
}

/// How many job requests are still pending.
pub async fn pending_requests(target: &SsisdbTarget) -> anyhow::Result<i64> {
    let settings = target.settings_at(target.server);
    let mut client = crate::ssisdb::connect(&settings).await?;
    let row = client
        .simple_query("SELECT COUNT(*) FROM scaleout.job_requests WHERE state = N'pending'")
        .await?
        .into_row()
        .await?
        .context("no count of pending requests")?;
    int(&row, 0).context("a count that is not a number")
}

/// An integer column, whatever integer type the server sent.
fn int(row: &tiberius::Row, i: usize) -> Option<i64> {
    row.try_get::<i64, _>(i)
        .ok()
        .flatten()
        .or_else(|| row.try_get::<i32, _>(i).ok().flatten().map(i64::from))
        .or_else(|| row.try_get::<i16, _>(i).ok().flatten().map(i64::from))
        .or_else(|| row.try_get::<u8, _>(i).ok().flatten().map(i64::from))
}

/// Reads every event row (straight from the server, not through the proxy).
pub async fn read(target: &SsisdbTarget) -> anyhow::Result<SsisdbView> {
    let settings = target.settings_at(target.server);
    let mut client = crate::ssisdb::connect(&settings).await?;
    let rows = client
        .simple_query("SELECT event_id, job_id, event_kind FROM scaleout.event_messages")
        .await?
        .into_first_result()
        .await?;
    let mut view = SsisdbView::default();
    let mut ids = std::collections::BTreeSet::new();
    for row in rows {
        let id = row
            .try_get::<i64, _>(0)?
            .context("an event row without event_id")?;
        let id = u64::try_from(id).context("a negative event_id")?;
        view.rows += 1;
        ids.insert(id);
        view.max_event_id = view.max_event_id.max(id);
        if let Some(job) = row.try_get::<i64, _>(1)? {
            let kind = row.try_get::<&str, _>(2)?.unwrap_or_default().to_string();
            *view
                .by_job
                .entry(u64::try_from(job).unwrap_or_default())
                .or_default()
                .entry(kind)
                .or_default() += 1;
        }
    }
    view.distinct_ids = ids.len() as u64;
    let jobs = client
        .simple_query("SELECT job_id, status, attempt_count, updated_ms FROM scaleout.jobs")
        .await?
        .into_first_result()
        .await?;
    for row in jobs {
        let job = int(&row, 0).context("a jobs row without job_id")?;
        view.job_rows
            .entry(u64::try_from(job).unwrap_or_default())
            .or_default()
            .push((
                int(&row, 1).unwrap_or(-1),
                int(&row, 2).unwrap_or(-1),
                int(&row, 3).unwrap_or(-1),
            ));
    }
    let tasks = client
        .simple_query("SELECT task_id, status, executed_count, last_updated_ms FROM scaleout.tasks")
        .await?
        .into_first_result()
        .await?;
    for row in tasks {
        let task = int(&row, 0).context("a tasks row without task_id")?;
        view.task_rows
            .entry(u64::try_from(task).unwrap_or_default())
            .or_default()
            .push((
                int(&row, 1).unwrap_or(-1),
                int(&row, 2).unwrap_or(-1),
                int(&row, 3).unwrap_or(-1),
            ));
    }
    let attempts = client
        .simple_query(
            "SELECT task_id, attempt_number, lease_token, outcome, ended_ms \
             FROM scaleout.task_attempts ORDER BY task_id, attempt_number",
        )
        .await?
        .into_first_result()
        .await?;
    let requests = client
        .simple_query("SELECT request_key, state, job_id FROM scaleout.job_requests")
        .await?
        .into_first_result()
        .await?;
    for row in requests {
        let key = row.try_get::<&str, _>(0)?.unwrap_or_default().to_string();
        view.requests.entry(key).or_default().push((
            row.try_get::<&str, _>(1)?.unwrap_or_default().to_string(),
            int(&row, 2).unwrap_or(-1),
        ));
    }
    for row in attempts {
        let job = int(&row, 0).context("an attempt row without task_id")?;
        view.attempt_rows
            .entry(u64::try_from(job).unwrap_or_default())
            .or_default()
            .push((
                int(&row, 1).unwrap_or(-1),
                int(&row, 2).unwrap_or(-1),
                row.try_get::<&str, _>(3)?.unwrap_or_default().to_string(),
                int(&row, 4).unwrap_or(-1),
            ));
    }
    Ok(view)
}
