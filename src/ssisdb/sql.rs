//! SQL helpers of the shipper: time text, clipped strings, BIGINTs, plain requests, ROLLBACK
//! and COUNT(*). The statements themselves are written by `upsert.rs` (set-based table writes)
//! and `rows.rs`.

use super::connect::{SqlClient, SsisdbError};

/// Longest text written, in UTF-16 units: the `NVARCHAR(4000)` columns of the schema.
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
    count_at(row, 0)
}

/// Reads a COUNT(*) in column `column`.
pub(crate) fn count_at(row: &tiberius::Row, column: usize) -> i64 {
    row.try_get::<i32, _>(column)
        .ok()
        .flatten()
        .map(i64::from)
        .or_else(|| row.try_get::<i64, _>(column).ok().flatten())
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
}
