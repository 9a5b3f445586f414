//! Set-based writes: the rows of one table that a batch writes, as at most a few statements per
//! table whatever the batch's size. The caller first reads which keys the table already holds
//! (inside the batch's fenced transaction, so no other shipper can add any meanwhile); then
//! the present ones become one `UPDATE … FROM table JOIN (VALUES …)` per
//! `ssisdb.rows_per_statement` rows, guarded by `row_version` so that no row goes back to an
//! older state, and the absent ones one plain multi-row `INSERT … VALUES` per as many rows.
//!
//! A table whose rows only move forward (a job's, a task's, an attempt's: each change moves a
//! time or a count on) also keeps `row_digest`, a hash of the row's content: a row whose stored
//! digest is the batch's is left alone, so a job named by several batches is written once per
//! change, not once per batch (the shipper reads rows as they are now, so a lagging shipper
//! reads a job's final state in the first batch that names it).
//!
//! Values go into the statement text as literals ([`Lit`]), not as parameters: a 1,000-row
//! statement of ten columns needs 10,000 values, and SQL Server takes at most 2,100 parameters in
//! a request (iridium, the tests' server, about 200). A batch request's text has no such bound
//! (SQL Server: 65,536 network packets); 1,000 rows is the most SQL Server takes in one
//! `VALUES` list, and the default.

use std::collections::BTreeMap;
use std::fmt::Write;

use ring::digest::{digest, SHA256};

use super::sql::sql_time;

/// A value written into SQL text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lit {
    Null,
    /// An INT column's value.
    Int(i64),
    /// A BIGINT column's value, cast so every row of a `VALUES` list has the column's type
    /// (a join on an INT literal finds no BIGINT key on iridium).
    Big(i64),
    Bit(bool),
    /// NVARCHAR text, quoted with every `'` doubled; NUL becomes U+FFFD.
    Text(String),
    /// A DATETIME2 column's value from leader-clock milliseconds (whole seconds, UTC).
    Time(u64),
    /// A NULL DATETIME2 (SQL Server types a bare NULL in `VALUES` as INT, which does not
    /// convert to DATETIME2).
    NoTime,
}

impl Lit {
    pub(crate) fn text(s: impl Into<String>) -> Lit {
        Lit::Text(s.into())
    }

    pub(crate) fn opt_text(s: Option<impl Into<String>>) -> Lit {
        s.map_or(Lit::Null, |s| Lit::Text(s.into()))
    }

    /// A nullable DATETIME2 and its `*_ms` BIGINT twin.
    pub(crate) fn opt_time(ms: Option<u64>) -> [Lit; 2] {
        match ms {
            Some(ms) => [Lit::Time(ms), Lit::Big(super::sql::big(ms))],
            None => [Lit::NoTime, Lit::Null],
        }
    }

    /// A DATETIME2 and its `*_ms` BIGINT twin.
    pub(crate) fn time(ms: u64) -> [Lit; 2] {
        [Lit::Time(ms), Lit::Big(super::sql::big(ms))]
    }

    /// The literal as SQL text.
    pub(crate) fn to_sql(&self) -> String {
        let mut text = String::new();
        self.write(&mut text);
        text
    }

    pub(crate) fn write(&self, out: &mut String) {
        match self {
            Lit::Null => out.push_str("NULL"),
            Lit::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Lit::Big(n) => {
                let _ = write!(out, "CAST({n} AS BIGINT)");
            }
            Lit::Bit(b) => out.push(if *b { '1' } else { '0' }),
            Lit::Text(s) => {
                out.push_str("N'");
                for c in s.chars() {
                    match c {
                        '\'' => out.push_str("''"),
                        '\0' => out.push('\u{FFFD}'),
                        c => out.push(c),
                    }
                }
                out.push('\'');
            }
            Lit::Time(ms) => {
                let _ = write!(out, "CAST(N'{}' AS DATETIME2)", sql_time(*ms));
            }
            Lit::NoTime => out.push_str("CAST(NULL AS DATETIME2)"),
        }
    }
}

/// How one table's rows are written.
pub(crate) struct TableShape {
    pub table: &'static str,
    /// The key column (one column: iridium does not enforce composite keys).
    pub key: &'static str,
    /// Columns written only when the row is inserted.
    pub fixed: &'static [&'static str],
    /// Columns written on insert and on update; the last one is `row_version`, the guard.
    pub changing: &'static [&'static str],
    /// Whether the table keeps `row_digest` and unchanged rows are left alone: only for rows
    /// whose content never comes back to an earlier value (see the module documentation), or
    /// a row left alone could keep an older `row_version` than its content's.
    pub skip_unchanged: bool,
}

/// One row: its key, then values for [`TableShape::fixed`] and [`TableShape::changing`].
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub key: Lit,
    pub fixed: Vec<Lit>,
    pub changing: Vec<Lit>,
}

impl Row {
    /// A hash of the changing values but `row_version`: equal for equal content; never 0, the
    /// schema's "no digest yet".
    pub(crate) fn digest(&self) -> i64 {
        let content = self.changing.len().saturating_sub(1);
        let mut text = String::new();
        for value in &self.changing[..content] {
            value.write(&mut text);
            text.push('\u{1F}');
        }
        let hash = digest(&SHA256, text.as_bytes());
        let mut first = [0; 8];
        first.copy_from_slice(&hash.as_ref()[..8]);
        (i64::from_le_bytes(first) & i64::MAX).max(1)
    }
}

/// Keys a table holds (as [`key_text`] renders them), with their stored `row_digest` (`None`
/// where the table keeps none, or the row has none yet).
pub(crate) type PresentKeys = BTreeMap<String, Option<i64>>;

/// The statements that write `rows` into a table whose present keys are `present` (keys
/// rendered as [`Lit::write`] renders them, e.g. `CAST(7 AS BIGINT)` or `N'…'`). Rows whose key
/// is absent are inserted only when `insert_absent`.
pub(crate) fn statements(
    shape: &TableShape,
    rows: &[Row],
    present: &PresentKeys,
    insert_absent: bool,
    rows_per_statement: usize,
) -> Vec<String> {
    let per = rows_per_statement.max(1);
    let (present_rows, insert): (Vec<&Row>, Vec<&Row>) = rows
        .iter()
        .partition(|row| present.contains_key(&key_text(&row.key)));
    let update: Vec<&Row> = present_rows
        .into_iter()
        .filter(|row| {
            !shape.skip_unchanged
                || present.get(&key_text(&row.key)).copied().flatten() != Some(row.digest())
        })
        .collect();
    let mut out: Vec<String> = update
        .chunks(per)
        .map(|chunk| update_statement(shape, chunk))
        .collect();
    if insert_absent {
        out.extend(insert_statements(shape, &insert, per));
    }
    out
}

/// Plain multi-row INSERTs of `rows`, `rows_per_statement` at a time.
pub(crate) fn insert_statements(
    shape: &TableShape,
    rows: &[&Row],
    rows_per_statement: usize,
) -> Vec<String> {
    rows.chunks(rows_per_statement.max(1))
        .map(|chunk| insert_statement(shape, chunk))
        .collect()
}

/// A key as the present-key set holds it.
pub(crate) fn key_text(key: &Lit) -> String {
    key.to_sql()
}

fn values(out: &mut String, shape: &TableShape, rows: &[&Row], with_fixed: bool) {
    for (i, row) in rows.iter().enumerate() {
        out.push_str(if i == 0 { "(" } else { ", (" });
        row.key.write(out);
        let fixed = if with_fixed { &row.fixed[..] } else { &[] };
        for value in fixed.iter().chain(&row.changing) {
            out.push_str(", ");
            value.write(out);
        }
        if shape.skip_unchanged {
            out.push_str(", ");
            Lit::Big(row.digest()).write(out);
        }
        out.push(')');
    }
}

/// The changing columns, then `row_digest` where the table keeps it.
fn changing_columns(shape: &TableShape) -> impl Iterator<Item = &'static str> {
    let digest: &'static [&'static str] = if shape.skip_unchanged {
        &["row_digest"]
    } else {
        &[]
    };
    shape.changing.iter().chain(digest).copied()
}

fn update_statement(shape: &TableShape, rows: &[&Row]) -> String {
    let mut s = String::from("UPDATE t SET ");
    for (i, column) in changing_columns(shape).enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{column} = v.{column}");
    }
    let _ = write!(s, " FROM {} AS t INNER JOIN (VALUES ", shape.table);
    values(&mut s, shape, rows, false);
    let _ = write!(s, ") AS v({}", shape.key);
    for column in changing_columns(shape) {
        let _ = write!(s, ", {column}");
    }
    let _ = write!(
        s,
        ") ON t.{key} = v.{key} WHERE t.row_version <= v.row_version",
        key = shape.key
    );
    s
}

fn insert_statement(shape: &TableShape, rows: &[&Row]) -> String {
    let mut s = format!("INSERT INTO {} ({}", shape.table, shape.key);
    for column in shape.fixed.iter().copied().chain(changing_columns(shape)) {
        let _ = write!(s, ", {column}");
    }
    s.push_str(") VALUES ");
    values(&mut s, shape, rows, true);
    s
}

/// `SELECT <tag>, key[, row_digest] FROM table WHERE key IN (…)` for `keys`, split every
/// `rows_per_statement` keys: which of them the table holds (and their digests). The tag tells
/// the result sets apart when several are read in one request.
pub(crate) fn present_keys_query(
    shape: &TableShape,
    tag: i32,
    keys: &[&Lit],
    rows_per_statement: usize,
) -> Vec<String> {
    keys.chunks(rows_per_statement.max(1))
        .map(|chunk| {
            let digest = if shape.skip_unchanged {
                ", row_digest AS d"
            } else {
                ""
            };
            let mut s = format!(
                "SELECT {tag} AS tag, {key} AS k{digest} FROM {table} WHERE {key} IN (",
                key = shape.key,
                table = shape.table
            );
            for (i, key) in chunk.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                key.write(&mut s);
            }
            s.push(')');
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: TableShape = TableShape {
        table: "scaleout.jobs",
        key: "job_id",
        fixed: &["job_name"],
        changing: &["state", "row_version"],
        skip_unchanged: false,
    };

    fn row(id: i64, name: &str, state: &str, version: i64) -> Row {
        Row {
            key: Lit::Big(id),
            fixed: vec![Lit::text(name)],
            changing: vec![Lit::text(state), Lit::Big(version)],
        }
    }

    #[test]
    fn literals_quote_text_and_cast_bigints() {
        let mut s = String::new();
        for lit in [
            Lit::Null,
            Lit::Int(-3),
            Lit::Big(7),
            Lit::Bit(true),
            Lit::text("it's; DROP TABLE x --\0"),
            Lit::Time(1_714_557_601_999),
            Lit::NoTime,
        ] {
            lit.write(&mut s);
            s.push('|');
        }
        assert_eq!(
            s,
            "NULL|-3|CAST(7 AS BIGINT)|1|N'it''s; DROP TABLE x --\u{FFFD}'|\
             CAST(N'2024-05-01T10:00:01' AS DATETIME2)|CAST(NULL AS DATETIME2)|"
        );
    }

    #[test]
    fn present_rows_are_updated_with_the_guard_and_absent_ones_inserted() {
        let rows = vec![row(1, "a", "running", 9), row(2, "b", "queued", 9)];
        let present: PresentKeys = [(key_text(&Lit::Big(1)), None)].into();
        let sql = statements(&SHAPE, &rows, &present, true, 1000);
        assert_eq!(
            sql,
            vec![
                "UPDATE t SET state = v.state, row_version = v.row_version FROM scaleout.jobs AS t \
                 INNER JOIN (VALUES (CAST(1 AS BIGINT), N'running', CAST(9 AS BIGINT))) AS \
                 v(job_id, state, row_version) ON t.job_id = v.job_id WHERE t.row_version <= \
                 v.row_version"
                    .to_string(),
                "INSERT INTO scaleout.jobs (job_id, job_name, state, row_version) VALUES \
                 (CAST(2 AS BIGINT), N'b', N'queued', CAST(9 AS BIGINT))"
                    .to_string(),
            ]
        );
        assert_eq!(statements(&SHAPE, &rows, &present, false, 1000).len(), 1);
    }

    #[test]
    fn unchanged_rows_are_left_alone_where_the_table_keeps_digests() {
        let shape = TableShape {
            skip_unchanged: true,
            ..SHAPE
        };
        let rows = vec![row(1, "a", "running", 9), row(2, "b", "queued", 9)];
        // Row 1 as stored at an older version: same content, same digest.
        let stored = row(1, "a", "running", 5).digest();
        assert_eq!(stored, rows[0].digest());
        assert_ne!(stored, row(1, "a", "succeeded", 9).digest());
        let present: PresentKeys = [
            (key_text(&Lit::Big(1)), Some(stored)),
            (key_text(&Lit::Big(2)), Some(stored)),
        ]
        .into();
        let sql = statements(&shape, &rows, &present, true, 1000);
        assert_eq!(sql.len(), 1, "{sql:?}");
        assert!(sql[0].starts_with("UPDATE t SET state = v.state, row_version = v.row_version, row_digest = v.row_digest FROM"), "{}", sql[0]);
        assert!(
            sql[0].contains("(CAST(2 AS BIGINT), N'queued', CAST(9 AS BIGINT), CAST("),
            "{}",
            sql[0]
        );
        let inserted = statements(&shape, &rows, &PresentKeys::new(), true, 1000);
        assert!(inserted[0].starts_with("INSERT INTO scaleout.jobs (job_id, job_name, state, row_version, row_digest) VALUES"), "{}", inserted[0]);
        let keys: Vec<&Lit> = rows.iter().map(|r| &r.key).collect();
        assert!(present_keys_query(&shape, 3, &keys, 1000)[0]
            .starts_with("SELECT 3 AS tag, job_id AS k, row_digest AS d FROM"));
    }

    #[test]
    fn statements_hold_at_most_the_rows_per_statement() {
        let rows: Vec<Row> = (0..2500).map(|i| row(i, "n", "queued", 1)).collect();
        let sql = statements(&SHAPE, &rows, &PresentKeys::new(), true, 1000);
        assert_eq!(sql.len(), 3);
        assert_eq!(sql[2].matches("), (").count() + 1, 500);
        let keys: Vec<&Lit> = rows.iter().map(|r| &r.key).collect();
        let reads = present_keys_query(&SHAPE, 1, &keys, 1000);
        assert_eq!(reads.len(), 3);
        assert!(reads[0].starts_with(
            "SELECT 1 AS tag, job_id AS k FROM scaleout.jobs WHERE job_id IN (CAST(0 AS BIGINT), "
        ));
    }
}
