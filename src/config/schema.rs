//! The schema: what keys exist and what they hold. Checked before deserializing so errors can
//! name the full key path; `schema_matches_structs` (tests) keeps it in step with the structs.

use super::*;

#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    /// A whole number, 0 or more.
    Int,
    /// Any number.
    Float,
    Bool,
    Str,
    /// A list of strings; an override may write it comma-separated.
    List,
    Table(&'static [Field]),
    TableArray(&'static [Field]),
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Field {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    /// `Some(hint)` when the key is required; the hint says what to write.
    pub(super) required: Option<&'static str>,
}

pub(crate) const fn opt(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: None,
    }
}

pub(super) const fn req(name: &'static str, kind: Kind, hint: &'static str) -> Field {
    Field {
        name,
        kind,
        required: Some(hint),
    }
}

pub(super) const MEMBER_HINT: &str =
    "every [[members]] entry needs id, api (host:port for clients and \
                           workers) and peer (host:port for Raft)";

pub(super) const PEER_ROUTE_HINT: &str =
    "every [[peer_routes]] entry needs id (a member's id) and address \
                               (the host:port to dial it at)";

pub(super) const PEER_ROUTE: &[Field] = &[
    req("id", Kind::Int, PEER_ROUTE_HINT),
    req("address", Kind::Str, PEER_ROUTE_HINT),
];

pub(super) const MEMBER: &[Field] = &[
    req("id", Kind::Int, MEMBER_HINT),
    req("api", Kind::Str, MEMBER_HINT),
    req("peer", Kind::Str, MEMBER_HINT),
];

pub(super) const RAFT: &[Field] = &[
    opt("heartbeat_interval_ms", Kind::Int),
    opt("election_timeout_min_ms", Kind::Int),
    opt("election_timeout_max_ms", Kind::Int),
    opt("snapshot_every_logs", Kind::Int),
    opt("keep_logs_after_snapshot", Kind::Int),
    opt("install_snapshot_timeout_ms", Kind::Int),
];

pub(super) const PROPOSALS: &[Field] = &[
    opt("max_batch", Kind::Int),
    opt("linger_us", Kind::Int),
    opt("max_in_flight", Kind::Int),
];

pub(super) const STORAGE: &[Field] = &[opt("cache_capacity_mb", Kind::Int)];

pub(super) const RETENTION: &[Field] = &[
    opt("finished_job_secs", Kind::Int),
    opt("max_finished_jobs", Kind::Int),
    opt("sweep_interval_ms", Kind::Int),
];

pub(super) const API: &[Field] = &[opt("max_message_bytes", Kind::Int)];

pub(crate) const TLS: &[Field] = &[
    opt("ca", Kind::Str),
    opt("cert", Kind::Str),
    opt("key", Kind::Str),
];

pub(super) const WORKERS: &[Field] = &[
    opt("lease_interval_ms", Kind::Int),
    opt("offline_after_ms", Kind::Int),
    opt("approval", Kind::Str),
    opt("max_acquire_wait_ms", Kind::Int),
    opt("expiry_check_interval_ms", Kind::Int),
    opt("max_clock_jump_ms", Kind::Int),
    opt("test_clock_offset_file", Kind::Str),
];

pub(super) const SSISDB: &[Field] = &[
    opt("connection_string", Kind::Str),
    opt("password_file", Kind::Str),
    opt("password_env", Kind::Str),
    opt("ca", Kind::Str),
    opt("max_outbox_events", Kind::Int),
    opt("retention_secs", Kind::Int),
    opt("batch_events", Kind::Int),
    opt("connect_timeout_ms", Kind::Int),
    opt("ship_interval_ms", Kind::Int),
    opt("rows_per_statement", Kind::Int),
    opt("intake_interval_ms", Kind::Int),
];

pub(super) const TOP: &[Field] = &[
    req(
        "id",
        Kind::Int,
        "add `id = N`, this replica's id among the [[members]] ids",
    ),
    req(
        "data_dir",
        Kind::Str,
        "add `data_dir = \"...\"`, the directory for this replica's Raft log (relative to the \
         config file's directory)",
    ),
    opt("insecure", Kind::Bool),
    opt("tls", Kind::Table(TLS)),
    opt("api_listen", Kind::Str),
    opt("peer_listen", Kind::Str),
    opt("metrics_listen", Kind::Str),
    opt("console_listen", Kind::Str),
    opt("peer_routes", Kind::TableArray(PEER_ROUTE)),
    req(
        "members",
        Kind::TableArray(MEMBER),
        "add one [[members]] table (id, api, peer) per replica, the same list in every \
         replica's file",
    ),
    opt("raft", Kind::Table(RAFT)),
    opt("proposals", Kind::Table(PROPOSALS)),
    opt("storage", Kind::Table(STORAGE)),
    opt("retention", Kind::Table(RETENTION)),
    opt("api", Kind::Table(API)),
    opt("workers", Kind::Table(WORKERS)),
    opt("ssisdb", Kind::Table(SSISDB)),
];

pub(super) fn check_table(
    table: &Table,
    fields: &'static [Field],
    path: &mut Vec<Seg>,
    file: &Path,
    origins: &Origins,
) -> Result<(), ConfigError> {
    for (k, v) in table {
        path.push(Seg::Key(k.clone()));
        let key = display_path(path);
        let Some(field) = fields.iter().find(|f| f.name == k) else {
            return Err(ConfigError::UnknownKey {
                path: file.to_path_buf(),
                origin: origins.get(&key),
                key,
                expected: expected_list(fields.iter().map(|f| f.name).collect()),
            });
        };
        let wrong = |what: &str| ConfigError::Invalid {
            path: file.to_path_buf(),
            key: key.clone(),
            message: format!(
                "must be {what}, found {}{}",
                match v {
                    // May be a connection string with a password in it.
                    Value::String(_) if key == "ssisdb" || key.starts_with("ssisdb.") => {
                        "a string".into()
                    }
                    _ => describe(v),
                },
                origin_note(&origins.get(&key))
            ),
        };
        match (field.kind, v) {
            (Kind::Int, Value::Integer(i)) if *i >= 0 => {}
            (Kind::Int, _) => return Err(wrong("a whole number, 0 or more")),
            (Kind::Float, Value::Integer(_) | Value::Float(_)) => {}
            (Kind::Float, _) => return Err(wrong("a number")),
            (Kind::List, Value::Array(items)) if items.iter().all(Value::is_str) => {}
            (Kind::List, _) => return Err(wrong("a list of strings, e.g. [\"a\", \"b\"]")),
            (Kind::Bool, Value::Boolean(_)) => {}
            (Kind::Bool, _) => return Err(wrong("true or false")),
            (Kind::Str, Value::String(_)) => {}
            (Kind::Str, _) => return Err(wrong("a string in quotes")),
            (Kind::Table(inner), Value::Table(t)) => check_table(t, inner, path, file, origins)?,
            (Kind::Table(_), _) => return Err(wrong(&format!("a table ([{key}])"))),
            (Kind::TableArray(inner), Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(Seg::Index(i));
                    match item {
                        Value::Table(t) => check_table(t, inner, path, file, origins)?,
                        other => {
                            let key = display_path(path);
                            return Err(ConfigError::Invalid {
                                path: file.to_path_buf(),
                                message: format!(
                                    "must be a table ([[{}]] entry), found {}{}",
                                    k,
                                    describe(other),
                                    origin_note(&origins.get(&key))
                                ),
                                key,
                            });
                        }
                    }
                    path.pop();
                }
            }
            (Kind::TableArray(_), _) => {
                return Err(wrong(&format!("an array of tables ([[{key}]] entries)")))
            }
        }
        path.pop();
    }
    for field in fields {
        if let (Some(hint), false) = (field.required, table.contains_key(field.name)) {
            path.push(Seg::Key(field.name.to_string()));
            let key = display_path(path);
            path.pop();
            return Err(ConfigError::Invalid {
                path: file.to_path_buf(),
                message: format!("is missing; {hint}{}", origin_note(&origins.get(&key))),
                key,
            });
        }
    }
    Ok(())
}
