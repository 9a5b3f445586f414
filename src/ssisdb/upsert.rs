//! Set-based writes: the rows of one table that a batch writes, as at most a few statements per
//! table whatever the batch's size. The caller first reads which keys the table already holds
//! (inside the batch's fenced transaction, so no other shipper can add any meanwhile); then
//! the present ones become one `UPDATE … FROM table JOIN (VALUES …)` per
//! `ssisdb.rows_per_statement` rows, guarded by `row_version` so that no row goes back to an
//! older state, and the absent ones one plain multi-row `INSERT … VALUES` per as many rows.
//!
//! Values go into the statement text as literals ([`Lit`]), not as parameters: a 1,000-row
//! statement of ten columns needs 10,000 values, and SQL Server takes at most 2,100 parameters in
//! a request (iridium, the tests' server, about 200). A batch request's text has no such bound
//! (SQL Server: 65,536 network packets); 1,000 rows is the most SQL Server takes in one
//! `VALUES` list, and the default.

use std::collections::BTreeSet;
use std::fmt::Write;

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
}

/// One row: its key, then values for [`TableShape::fixed`] and [`TableShape::changing`].
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub key: Lit,
    pub fixed: Vec<Lit>,
    pub changing: Vec<Lit>,
}

/// The statements that write `rows` into a table whose present keys are `present` (keys
/// rendered as [`Lit::write`] renders them, e.g. `CAST(7 AS BIGINT)` or `N'…'`). Rows whose key
/// is absent are inserted only when `insert_absent`.
pub(crate) fn statements(
    shape: &TableShape,
    rows: &[Row],
    present: &BTreeSet<String>,
    insert_absent: bool,
    rows_per_statement: usize,
) -> Vec<String> {
    let per = rows_per_statement.max(1);
    let (update, insert): (Vec<&Row>, Vec<&Row>) = rows
        .iter()
        .partition(|row| present.contains(&key_text(&row.key)));
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

fn values(out: &mut String, rows: &[&Row], with_fixed: bool) {
    for (i, row) in rows.iter().enumerate() {
        out.push_str(if i == 0 { "(" } else { ", (" });
        row.key.write(out);
        let fixed = if with_fixed { &row.fixed[..] } else { &[] };
        for value in fixed.iter().chain(&row.changing) {
            out.push_str(", ");
            value.write(out);
        }
        out.push(')');
    }
}

fn update_statement(shape: &TableShape, rows: &[&Row]) -> String {
    let mut s = String::from("UPDATE t SET ");
    for (i, column) in shape.changing.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{column} = v.{column}");
    }
    let _ = write!(s, " FROM {} AS t INNER JOIN (VALUES ", shape.table);
    values(&mut s, rows, false);
    let _ = write!(s, ") AS v({}", shape.key);
    for column in shape.changing {
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
    for column in shape.fixed.iter().chain(shape.changing) {
        let _ = write!(s, ", {column}");
    }
    s.push_str(") VALUES ");
    values(&mut s, rows, true);
    s
}

/// `SELECT <tag>, key FROM table WHERE key IN (…)` for `keys`, split every
/// `rows_per_statement` keys: which of them the table holds. The tag tells the result sets
/// apart when several are read in one request.
pub(crate) fn present_keys_query(
    shape: &TableShape,
    tag: i32,
    keys: &[&Lit],
    rows_per_statement: usize,
) -> Vec<String> {
    keys.chunks(rows_per_statement.max(1))
        .map(|chunk| {
            let mut s = format!(
                "SELECT {tag} AS tag, {key} AS k FROM {table} WHERE {key} IN (",
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
        let present: BTreeSet<String> = [key_text(&Lit::Big(1))].into();
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
    fn statements_hold_at_most_the_rows_per_statement() {
        let rows: Vec<Row> = (0..2500).map(|i| row(i, "n", "queued", 1)).collect();
        let sql = statements(&SHAPE, &rows, &BTreeSet::new(), true, 1000);
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
