//! The `scaleout` schema in SSISDB: the script (deploy/sql/scaleout-schema.sql, compiled in),
//! [`install_schema`] and [`check`] (`scaleout ssisdb install-schema|check`).
//!
//! The master's own login only reads and writes rows of schema `scaleout`
//! (deploy/sql/scaleout-login.sql); installing the schema needs a login that may create it, so
//! `install-schema` is run by an admin with that login in the connection string.

use std::fmt;

use super::connect::{connect_target, target, SqlClient, SsisdbError};
use super::sql::simple;
use crate::config::SsisdbSettings;

/// The schema version this build writes; `check` wants at least this.
pub const SCHEMA_VERSION: i64 = 3;

/// The schema script, re-runnable, batches separated by `GO` lines.
pub const SCHEMA_SQL: &str = include_str!("../../deploy/sql/scaleout-schema.sql");

/// Tables the shipper writes and views DBAs read, as `check` looks for them.
pub const TABLES: [&str; 9] = [
    "scaleout.schema_version",
    "scaleout.shipper",
    "scaleout.replicas",
    "scaleout.worker_agents",
    "scaleout.jobs",
    "scaleout.tasks",
    "scaleout.task_attempts",
    "scaleout.event_messages",
    "scaleout.job_requests",
];
pub const VIEWS: [&str; 5] = [
    "scaleout.catalog_worker_agents",
    "scaleout.internal_tasks",
    "scaleout.job_request_status",
    "scaleout.catalog_executions",
    "scaleout.catalog_operation_messages",
];
/// Procedures callers run (job intake from T-SQL).
pub const PROCEDURES: [&str; 1] = ["scaleout.submit_job"];

/// The script's batches: the text between `GO` lines, comments kept (SQL Server ignores them).
pub fn schema_batches() -> Vec<&'static str> {
    let mut batches = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in SCHEMA_SQL.split_inclusive('\n') {
        if line.trim().eq_ignore_ascii_case("GO") {
            batches.push(&SCHEMA_SQL[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    batches.push(&SCHEMA_SQL[start..]);
    batches
        .into_iter()
        .filter(|b| {
            b.lines()
                .any(|l| !l.trim().is_empty() && !l.trim().starts_with("--"))
        })
        .collect()
}

/// Creates what is missing of schema `scaleout` (every statement is guarded, so running it
/// again changes nothing).
pub async fn install_schema(settings: &SsisdbSettings) -> Result<(), SsisdbError> {
    let (mut client, addr) = connect_target(target(settings)?, settings.connect_timeout()).await?;
    for batch in schema_batches() {
        simple(&mut client, &addr, batch)
            .await
            .map_err(|e| match e {
                SsisdbError::Sql(detail) => SsisdbError::Sql(format!(
                    "{detail}; the login in ssisdb.connection_string must be allowed to create \
                 schema scaleout and its tables (run install-schema as an admin), in batch:\n{}",
                    batch.trim()
                )),
                other => other,
            })?;
    }
    tracing::info!(%addr, version = SCHEMA_VERSION, "SSISDB schema scaleout installed");
    Ok(())
}

/// One thing `check` looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckItem {
    pub what: String,
    pub ok: bool,
    /// What was found, or what is wrong and how to fix it.
    pub detail: String,
}

/// What `scaleout ssisdb check` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub items: Vec<CheckItem>,
}

impl CheckReport {
    /// Whether everything needed for shipping is there.
    pub fn is_ok(&self) -> bool {
        !self.items.is_empty() && self.items.iter().all(|i| i.ok)
    }

    fn add(&mut self, what: impl Into<String>, ok: bool, detail: impl Into<String>) {
        self.items.push(CheckItem {
            what: what.into(),
            ok,
            detail: detail.into(),
        });
    }

    /// The failed items.
    pub fn problems(&self) -> impl Iterator<Item = &CheckItem> {
        self.items.iter().filter(|i| !i.ok)
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for item in &self.items {
            let mark = if item.ok { "ok  " } else { "FAIL" };
            writeln!(f, "{mark} {}: {}", item.what, item.detail)?;
        }
        if self.is_ok() {
            writeln!(f, "SSISDB is ready for scaleout")
        } else {
            writeln!(f, "SSISDB is NOT ready: fix the FAIL lines above")
        }
    }
}

const INSTALL_HINT: &str = "run `scaleout ssisdb install-schema --config FILE` (as a login that \
                            may create schema scaleout)";

/// Connects, then checks the schema version, every table and view, and that the login may
/// write (an insert that is rolled back). Never fails: the report says what is wrong.
pub async fn check(settings: &SsisdbSettings) -> CheckReport {
    let mut report = CheckReport::default();
    let target = match target(settings) {
        Ok(t) => t,
        Err(e) => {
            report.add("configuration", false, e.to_string());
            return report;
        }
    };
    let (mut client, addr) = match connect_target(target, settings.connect_timeout()).await {
        Ok(c) => c,
        Err(e) => {
            report.add("connect", false, e.to_string());
            return report;
        }
    };
    report.add("connect", true, format!("logged in at {addr}"));
    check_objects(&mut client, &addr, &mut report).await;
    if report.is_ok() {
        check_write(&mut client, &addr, &mut report).await;
    }
    report
}

async fn exists(client: &mut SqlClient, name: &str) -> Result<bool, tiberius::error::Error> {
    let row = client
        .query(
            "SELECT CASE WHEN OBJECT_ID(@P1) IS NULL THEN 0 ELSE 1 END",
            &[&name],
        )
        .await?
        .into_row()
        .await?;
    Ok(row.is_some_and(|r| super::sql::count_of(&r) == 1))
}

async fn check_objects(client: &mut SqlClient, addr: &str, report: &mut CheckReport) {
    let mut missing = Vec::new();
    for name in TABLES.iter().chain(&VIEWS).chain(&PROCEDURES) {
        match exists(client, name).await {
            Ok(true) => {}
            Ok(false) => missing.push(*name),
            Err(e) => {
                report.add(
                    "schema objects",
                    false,
                    SsisdbError::from_sql(addr, e).to_string(),
                );
                return;
            }
        }
    }
    if missing.is_empty() {
        report.add(
            "schema objects",
            true,
            format!(
                "{} tables, {} views and {} procedure present",
                TABLES.len(),
                VIEWS.len(),
                PROCEDURES.len()
            ),
        );
    } else {
        report.add(
            "schema objects",
            false,
            format!("missing: {}; {INSTALL_HINT}", missing.join(", ")),
        );
    }
    if missing.contains(&"scaleout.schema_version") {
        report.add(
            "schema version",
            false,
            format!("no scaleout.schema_version table; {INSTALL_HINT}"),
        );
        return;
    }
    let versions = match client
        .query("SELECT version FROM scaleout.schema_version", &[])
        .await
    {
        Ok(stream) => stream.into_first_result().await,
        Err(e) => Err(e),
    };
    match versions {
        Ok(rows) => {
            let newest = rows.iter().map(super::sql::count_of).max();
            match newest {
                Some(v) if v >= SCHEMA_VERSION => {
                    report.add("schema version", true, format!("version {v}"))
                }
                Some(v) => report.add(
                    "schema version",
                    false,
                    format!("version {v}, this build needs {SCHEMA_VERSION}; {INSTALL_HINT}"),
                ),
                None => report.add(
                    "schema version",
                    false,
                    format!("scaleout.schema_version is empty (an interrupted install?); {INSTALL_HINT}"),
                ),
            }
        }
        Err(e) => report.add(
            "schema version",
            false,
            SsisdbError::from_sql(addr, e).to_string(),
        ),
    }
}

/// An insert into scaleout.replicas, rolled back: proves the login may write the schema.
async fn check_write(client: &mut SqlClient, addr: &str, report: &mut CheckReport) {
    let result = async {
        simple(client, addr, "BEGIN TRANSACTION").await?;
        let insert = client
            .execute(
                "INSERT INTO scaleout.replicas (replica_id, api_address, peer_address, role, \
                 term, leader_id, last_online_time, last_online_ms) VALUES (-1, N'check', \
                 N'check', N'check', 0, NULL, CAST(@P1 AS DATETIME2), 0)",
                &[&super::sql::sql_time(crate::wall_time::now_ms())],
            )
            .await
            .map_err(|e| SsisdbError::from_sql(addr, e));
        super::sql::rollback(client).await;
        insert.map(|_| ())
    }
    .await;
    match result {
        Ok(()) => report.add("write permission", true, "the login may write schema scaleout (test insert rolled back)"),
        Err(SsisdbError::Sql(detail)) => report.add(
            "write permission",
            false,
            format!("a test insert into scaleout.replicas failed: {detail}; grant the login the role in deploy/sql/scaleout-login.sql"),
        ),
        Err(e) => report.add("write permission", false, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_splits_into_guarded_batches() {
        let batches = schema_batches();
        assert!(batches.len() >= 10, "{}", batches.len());
        assert!(batches.iter().all(|b| !b.contains("\nGO")));
        for t in TABLES {
            assert!(
                SCHEMA_SQL.contains(&format!("IF OBJECT_ID(N'{t}', N'U') IS NULL")),
                "{t}"
            );
        }
        for v in VIEWS {
            assert!(
                SCHEMA_SQL.contains(&format!("IF OBJECT_ID(N'{v}', N'V') IS NULL")),
                "{v}"
            );
        }
        for p in PROCEDURES {
            assert!(
                SCHEMA_SQL.contains(&format!("IF OBJECT_ID(N'{p}', N'P') IS NULL")),
                "{p}"
            );
        }
    }
}
