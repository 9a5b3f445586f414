//! Building the SQL the shipper sends: time text, clipped strings, and statements packed into
//! few round trips.
//!
//! Limits that shape this (measured against iridium_server 0.1.13, see
//! /tmp/notes/ssisdb-research.md): a statement text over 4,000 UTF-16 units goes as
//! NVARCHAR(MAX), which iridium rejects ("unsupported RPC request") or silently drops, and an
//! RPC with about 250 parameters or more is silently dropped too. So a round trip carries at
//! most [`MAX_TEXT`] characters and [`MAX_PARAMS`] parameters; SQL Server allows far more (2,100
//! parameters), so these are safe there as well.

use tiberius::ToSql;

use super::connect::{SqlClient, SsisdbError};

/// Most characters of SQL text in one round trip.
pub(crate) const MAX_TEXT: usize = 3_800;
/// Most parameters in one round trip.
pub(crate) const MAX_PARAMS: usize = 200;
/// Longest string parameter, in UTF-16 units (longer ones go as NVARCHAR(MAX)).
pub(crate) const MAX_STRING: usize = 4_000;

/// `YYYY-MM-DDTHH:MM:SS` (UTC, whole seconds) of a leader-clock reading, for
/// `CAST(@Pn AS DATETIME2)`: ISO 8601 with `T` reads the same under any language or DATEFORMAT,
/// and iridium accepts neither fractional seconds nor datetime parameters. The exact time is
/// kept in the `*_ms` columns.
pub(crate) fn sql_time(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    let t =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `text` cut to at most `max` UTF-16 units (the NVARCHAR(n) length), on a char boundary.
pub(crate) fn clip(text: &str, max: usize) -> String {
    let mut units = 0;
    let mut end = text.len();
    for (i, c) in text.char_indices() {
        units += c.len_utf16();
        if units > max {
            end = i;
            break;
        }
    }
    text[..end].to_string()
}

/// A u64 as BIGINT; the values here (ids, ms, tokens) stay far below i64::MAX.
pub(crate) fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) type Param = Box<dyn ToSql>;

/// One round trip: SQL text and its parameters.
#[derive(Default)]
pub(crate) struct Trip {
    pub sql: String,
    pub params: Vec<Param>,
}

/// Packs statements into round trips within [`MAX_TEXT`] and [`MAX_PARAMS`]. A statement's
/// template marks each parameter with `?`, in order (templates hold no other `?`).
#[derive(Default)]
pub(crate) struct Packer {
    trips: Vec<Trip>,
    current: Trip,
}

impl Packer {
    pub fn push(&mut self, template: &str, params: Vec<Param>) {
        let len = template.len() + params.len() * 4 + 2;
        if !self.current.params.is_empty()
            && (self.current.sql.len() + len > MAX_TEXT
                || self.current.params.len() + params.len() > MAX_PARAMS)
        {
            self.trips.push(std::mem::take(&mut self.current));
        }
        let mut n = self.current.params.len();
        for part in template.split('?').enumerate() {
            if part.0 > 0 {
                n += 1;
                self.current.sql.push_str("@P");
                self.current.sql.push_str(&n.to_string());
            }
            self.current.sql.push_str(part.1);
        }
        self.current.sql.push_str(";\n");
        self.current.params.extend(params);
    }

    pub fn finish(mut self) -> Vec<Trip> {
        if !self.current.sql.is_empty() {
            self.trips.push(self.current);
        }
        self.trips
    }
}

/// Sends each round trip, draining its results.
pub(crate) async fn send(
    client: &mut SqlClient,
    addr: &str,
    trips: Vec<Trip>,
) -> Result<(), SsisdbError> {
    for trip in trips {
        let refs: Vec<&dyn ToSql> = trip.params.iter().map(|p| p.as_ref()).collect();
        client
            .execute(trip.sql.as_str(), &refs)
            .await
            .map_err(|e| SsisdbError::from_sql(addr, e))?;
    }
    Ok(())
}

/// Runs a statement without parameters, draining its results.
pub(crate) async fn simple(
    client: &mut SqlClient,
    addr: &str,
    sql: &str,
) -> Result<(), SsisdbError> {
    client
        .simple_query(sql)
        .await
        .map_err(|e| SsisdbError::from_sql(addr, e))?
        .into_results()
        .await
        .map_err(|e| SsisdbError::from_sql(addr, e))?;
    Ok(())
}

/// Plain ROLLBACK after a failed statement; its own error (no open transaction, or the
/// connection is gone) is ignored: iridium rejects `IF @@TRANCOUNT > 0 ROLLBACK`.
pub(crate) async fn rollback(client: &mut SqlClient) {
    if let Ok(stream) = client.simple_query("ROLLBACK TRANSACTION").await {
        let _ = stream.into_results().await;
    }
}

/// Reads a COUNT(*) (BIGINT on iridium, INT on SQL Server).
pub(crate) fn count_of(row: &tiberius::Row) -> i64 {
    row.try_get::<i32, _>(0)
        .ok()
        .flatten()
        .map(i64::from)
        .or_else(|| row.try_get::<i64, _>(0).ok().flatten())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_whole_seconds_utc() {
        assert_eq!(sql_time(0), "1970-01-01T00:00:00");
        assert_eq!(sql_time(1_714_557_601_999), "2024-05-01T10:00:01");
    }

    #[test]
    fn clips_by_utf16_units() {
        assert_eq!(clip("abc", 2), "ab");
        assert_eq!(clip("a😀b", 2), "a");
        assert_eq!(clip("a😀b", 3), "a😀");
    }

    #[test]
    fn packs_within_limits() {
        let mut p = Packer::default();
        for i in 0..300i64 {
            p.push(
                "INSERT INTO t (a, b) VALUES (?, ?)",
                vec![Box::new(i), Box::new(i)],
            );
        }
        let trips = p.finish();
        assert!(trips.len() >= 3);
        for t in &trips {
            assert!(t.params.len() <= MAX_PARAMS);
            assert!(t.sql.len() <= MAX_TEXT);
        }
        assert!(trips[0]
            .sql
            .starts_with("INSERT INTO t (a, b) VALUES (@P1, @P2);"));
        assert!(trips[1]
            .sql
            .starts_with("INSERT INTO t (a, b) VALUES (@P1, @P2);"));
        assert_eq!(trips.iter().map(|t| t.params.len()).sum::<usize>(), 600);
    }
}
