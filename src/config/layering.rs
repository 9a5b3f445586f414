//! Layering a config: the file, then environment variables, then `--set` flags, each override
//! checked against a schema, each value remembered with where it came from so an error can name
//! it; relative paths resolved against the file's directory or the cwd. The engine knows no key
//! names: the replica's and the worker's loaders each hand it their [`Layers`].

use super::*;

/// A config's text, the file it came from (named in errors) and the directory relative paths
/// written in it are relative to.
pub(crate) struct ConfigText {
    pub(crate) text: String,
    pub(crate) file: PathBuf,
    pub(crate) base_dir: PathBuf,
}

impl ConfigText {
    /// Reads the file at `path`.
    pub(crate) fn read(path: &Path) -> Result<ConfigText, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base_dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        Ok(ConfigText {
            text,
            file: path.to_path_buf(),
            base_dir: base_dir.to_path_buf(),
        })
    }

    /// Text given in memory, named `<inline config>` in errors.
    pub(crate) fn inline(text: &str, base_dir: &Path) -> ConfigText {
        ConfigText {
            text: text.to_string(),
            file: PathBuf::from(INLINE),
            base_dir: base_dir.to_path_buf(),
        }
    }
}

/// What errors call a config given as text rather than as a file.
pub(crate) const INLINE: &str = "<inline config>";

/// The process's environment as layering reads it (a name or value that is not UTF-8 is
/// skipped).
pub(crate) fn process_env() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
}

/// What one kind of config file is layered with.
pub(crate) struct Layers {
    /// The keys the file accepts.
    pub(crate) schema: &'static [Field],
    /// Environment variables `<prefix><KEY>` override keys (`.` written `__`).
    pub(crate) env_prefix: &'static str,
    /// Variables under the prefix that belong to something else (the CLI's).
    pub(crate) ignored_env: &'static [&'static str],
    /// Longer prefixes under this one that belong to something else (the worker's, for the
    /// replica).
    pub(crate) foreign_env: &'static [&'static str],
    /// Every other variable under the prefix must name a key (a typo is an error, as in the
    /// file); otherwise only names with `__` (a nested key path) must, and the rest are
    /// somebody else's.
    pub(crate) every_env_is_a_key: bool,
    /// An override, for the error when one is not `key=value`.
    pub(crate) example: &'static str,
    /// Key paths, for the error when a key is not one.
    pub(crate) key_examples: &'static str,
}

/// The file's table with the overrides applied, checked against the schema, and where each
/// overridden value came from.
pub(crate) struct Layered {
    pub(crate) tree: Table,
    pub(crate) origins: Origins,
}

impl Layers {
    /// Parses `text`, applies `env` (only names under the prefix that map to keys) then
    /// `overrides` (`key.path=value`), and checks the result's shape against the schema.
    pub(crate) fn layer(
        &self,
        text: &str,
        file: &Path,
        overrides: &[String],
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Layered, ConfigError> {
        let mut tree: Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: file.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let mut origins = Origins::default();

        // Environment: names under the prefix that are this config's must map to keys (a typo
        // is an error, as in the file or --set); shallow keys first so `SCALEOUT_MEMBERS` is
        // applied before `SCALEOUT_MEMBERS__0__API`.
        let mut from_env: Vec<(Vec<Seg>, Kind, String, String)> = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(self.env_prefix) else {
                continue;
            };
            if rest.is_empty()
                || self.ignored_env.contains(&name.as_str())
                || self.foreign_env.iter().any(|p| name.starts_with(p))
            {
                continue;
            }
            let ours = self.every_env_is_a_key || rest.contains("__");
            let origin = format!("environment variable {name}");
            let segs: Option<Vec<Seg>> = rest
                .split("__")
                .map(|part| parse_segment(&part.to_ascii_lowercase()))
                .collect();
            let Some(segs) = segs else {
                if ours {
                    return Err(ConfigError::Override {
                        path: file.to_path_buf(),
                        arg: origin,
                        message: format!(
                            "`{rest}` is not a key path; write keys as {}KEY or \
                             {}TABLE__KEY (array items as TABLE__0__KEY)",
                            self.env_prefix, self.env_prefix
                        ),
                    });
                }
                continue;
            };
            match lookup(self.schema, &segs) {
                Ok(kind) => from_env.push((segs, kind, name, value)),
                Err(_) if !ours => {}
                Err(error) => return Err(not_a_key(error, &segs, file, origin)),
            }
        }
        from_env.sort_by(|a, b| (a.0.len(), &a.2).cmp(&(b.0.len(), &b.2)));
        for (segs, kind, name, raw) in from_env {
            let origin = format!("environment variable {name}");
            apply(&mut tree, &segs, parse_value(&raw, kind), file, &origin)?;
            origins.set(&segs, origin);
        }

        for arg in overrides {
            let shown = shown_override(arg);
            let bad = |message: String| ConfigError::Override {
                path: file.to_path_buf(),
                arg: format!("--set {shown}"),
                message,
            };
            let (key, raw) = arg
                .split_once('=')
                .ok_or_else(|| bad(format!("expected key.path=value, e.g. {}", self.example)))?;
            let key = key.trim();
            let segs = parse_key(key).ok_or_else(|| {
                bad(format!(
                    "`{key}` is not a key path; write dotted keys like {}",
                    self.key_examples
                ))
            })?;
            let origin = format!("--set {shown}");
            let kind = lookup(self.schema, &segs)
                .map_err(|error| not_a_key(error, &segs, file, origin.clone()))?;
            apply(&mut tree, &segs, parse_value(raw, kind), file, &origin)?;
            origins.set(&segs, origin);
        }

        check_table(&tree, self.schema, &mut Vec::new(), file, &origins)?;
        Ok(Layered { tree, origins })
    }
}

/// The error for an override (`origin`: `--set …` or `environment variable …`) whose key path
/// `segs` the schema does not have.
fn not_a_key(error: LookupError, segs: &[Seg], file: &Path, origin: String) -> ConfigError {
    match error {
        LookupError::Unknown { at, expected } => ConfigError::UnknownKey {
            path: file.to_path_buf(),
            key: display_path(&segs[..=at]),
            origin: Some(origin),
            expected: expected_list(expected),
        },
        LookupError::Shape { at, message } => ConfigError::Override {
            path: file.to_path_buf(),
            arg: origin,
            message: format!("`{}` {message}", display_path(&segs[..at])),
        },
    }
}

/// The replica's keys, `SCALEOUT_*` variables and `--set` forms.
const REPLICA_LAYERS: Layers = Layers {
    schema: TOP,
    env_prefix: ENV_PREFIX,
    ignored_env: IGNORED_ENV,
    foreign_env: &[crate::worker::config::WORKER_ENV_PREFIX],
    every_env_is_a_key: false,
    example: "raft.heartbeat_interval_ms=150",
    key_examples: "raft.heartbeat_interval_ms or members[0].api",
};

/// Parse, merge overrides, check the shape, deserialize, resolve defaults and paths, validate.
pub(super) fn build(
    source: &ConfigText,
    overrides: &[String],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<MasterConfig, ConfigError> {
    let (file, base_dir) = (source.file.as_path(), source.base_dir.as_path());
    let Layered { tree, origins } = REPLICA_LAYERS.layer(&source.text, file, overrides, env)?;

    let raw: RawConfig = Value::Table(tree)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            path: file.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;

    let data_dir_origin = origins.get("data_dir");
    if raw.data_dir.trim().is_empty() {
        return Err(ConfigError::Invalid {
            path: file.to_path_buf(),
            key: "data_dir".into(),
            message: format!(
                "must not be empty; name the directory for this replica's Raft log{}",
                origin_note(&data_dir_origin)
            ),
        });
    }
    let data_dir = resolve_path(&raw.data_dir, data_dir_origin.is_some(), base_dir);
    // An error found here, before `check`, reads like one found there.
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        path: file.to_path_buf(),
        key: key.to_string(),
        message: format!("{message}{}", origins.note(key, &message)),
    };
    let tls = resolve_tls(
        raw.tls,
        raw.insecure,
        &origins,
        base_dir,
        "replica",
        "replica-N",
    )
    .map_err(|(key, message)| invalid(key, message))?;
    let mut ssisdb = raw.ssisdb;
    // Like data_dir; an empty path stays empty for `check` to name.
    let ssisdb_path = |key: &str, path: Option<PathBuf>| {
        path.map(|path| {
            let text = path.to_string_lossy();
            match text.trim() {
                "" => PathBuf::new(),
                value => absolute(resolve_path(value, origins.get(key).is_some(), base_dir)),
            }
        })
    };
    ssisdb.password_file = ssisdb_path("ssisdb.password_file", ssisdb.password_file.take());
    ssisdb.ca = ssisdb_path("ssisdb.ca", ssisdb.ca.take());
    let me = raw.members.iter().find(|m| m.id == raw.id);
    let mut config = MasterConfig {
        id: raw.id,
        data_dir,
        insecure: raw.insecure,
        tls,
        api_listen: raw
            .api_listen
            .or_else(|| me.map(|m| m.api.clone()))
            .unwrap_or_default(),
        peer_listen: raw
            .peer_listen
            .or_else(|| me.map(|m| m.peer.clone()))
            .unwrap_or_default(),
        metrics_listen: raw.metrics_listen.filter(|addr| !addr.trim().is_empty()),
        console_listen: raw.console_listen.filter(|addr| !addr.trim().is_empty()),
        members: raw.members,
        peer_routes: raw.peer_routes,
        raft: raw.raft,
        proposals: raw.proposals,
        storage: raw.storage,
        retention: raw.retention,
        api: raw.api,
        workers: raw.workers,
        ssisdb,
    };
    config.check().map_err(|(key, message)| {
        let note = origins.note(&key, &message);
        ConfigError::Invalid {
            path: file.to_path_buf(),
            key,
            message: format!("{message}{note}"),
        }
    })?;
    config.data_dir = canonical_prefix(&config.data_dir);
    Ok(config)
}

/// `path` with its longest existing prefix resolved by the file system (symlinks, `..`) and the
/// rest appended: the canonical path of a directory that may not exist yet, found without
/// creating it. Left as it is when nothing of it exists.
pub(super) fn canonical_prefix(path: &Path) -> PathBuf {
    let Some(part) = super::checks::existing_part(path) else {
        return path.to_path_buf();
    };
    match (std::fs::canonicalize(part), path.strip_prefix(part)) {
        (Ok(resolved), Ok(rest)) if rest.as_os_str().is_empty() => resolved,
        (Ok(resolved), Ok(rest)) => resolved.join(rest),
        _ => path.to_path_buf(),
    }
}

/// The file as written, before defaults are resolved.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    id: u64,
    data_dir: String,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    api_listen: Option<String>,
    #[serde(default)]
    peer_listen: Option<String>,
    #[serde(default)]
    metrics_listen: Option<String>,
    #[serde(default)]
    console_listen: Option<String>,
    #[serde(default)]
    peer_routes: Vec<PeerRoute>,
    members: Vec<MemberConfig>,
    #[serde(default)]
    raft: RaftSettings,
    #[serde(default)]
    proposals: ProposalSettings,
    #[serde(default)]
    storage: StorageSettings,
    #[serde(default)]
    retention: RetentionSettings,
    #[serde(default)]
    api: ApiSettings,
    #[serde(default)]
    workers: WorkerSettings,
    #[serde(default)]
    ssisdb: SsisdbSettings,
}

/// A `--set` argument as errors show it: the value of `ssisdb.connection_string` (or of the
/// whole `ssisdb` table) is hidden, since a rejected one may hold a password.
pub(super) fn shown_override(arg: &str) -> String {
    match arg.split_once('=') {
        Some((key, _))
            if matches!(
                key.trim().to_ascii_lowercase().as_str(),
                "ssisdb" | "ssisdb.connection_string"
            ) =>
        {
            format!("{}=<hidden>", key.trim())
        }
        _ => arg.to_string(),
    }
}

/// `[tls]` as written, for both processes; every key is required, which
/// [`RawTls::resolve`] checks to name the missing one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    #[serde(default)]
    ca: Option<String>,
    #[serde(default)]
    cert: Option<String>,
    #[serde(default)]
    key: Option<String>,
}

impl RawTls {
    /// The three paths, absolute: relative to `base_dir` when written in the file, to the
    /// current directory when an override gave them. A missing or empty one is an error as
    /// (key, message), the message naming the files `stem` (e.g. `replica-N`) stands for.
    pub(crate) fn resolve(
        self,
        origins: &Origins,
        base_dir: &Path,
        stem: &str,
    ) -> Result<TlsPaths, (&'static str, String)> {
        let path = |key: &'static str, value: Option<String>| match value.as_deref().map(str::trim)
        {
            Some(value) if !value.is_empty() => {
                let overridden = origins.get(key).is_some();
                Ok(absolute(resolve_path(value, overridden, base_dir)))
            }
            _ => Err((key, tls_missing_message(key, stem))),
        };
        Ok(TlsPaths {
            ca: path("tls.ca", self.ca)?,
            cert: path("tls.cert", self.cert)?,
            key: path("tls.key", self.key)?,
        })
    }
}

/// `[tls]` as given beside `insecure`: its paths resolved ([`RawTls::resolve`]), none, or the
/// error of giving both (`who` is "replica" or "worker", `stem` names the development files).
pub(crate) fn resolve_tls(
    tls: Option<RawTls>,
    insecure: bool,
    origins: &Origins,
    base_dir: &Path,
    who: &str,
    stem: &str,
) -> Result<Option<TlsPaths>, (&'static str, String)> {
    if insecure && tls.is_some() {
        if let Some(violation) = tls_choice_error(true, true, who) {
            return Err(violation);
        }
    }
    tls.map(|raw| raw.resolve(origins, base_dir, stem))
        .transpose()
}

/// A path as configured: absolute stays; relative is relative to the current directory when an
/// environment variable or `--set` gave it (`overridden`), else to the config file's directory.
pub(crate) fn resolve_path(value: &str, overridden: bool, base_dir: &Path) -> PathBuf {
    let path = PathBuf::from(value);
    if path.is_absolute() {
        path
    } else if overridden {
        std::env::current_dir()
            .map(|cwd| cwd.join(&path))
            .unwrap_or(path)
    } else {
        base_dir.join(path)
    }
}

/// `path` made absolute against the current directory, without resolving symlinks (a
/// certificate reload must follow a swapped symlink); `.` components dropped.
pub(super) fn absolute(path: PathBuf) -> PathBuf {
    let path = if path.is_absolute() {
        path
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(&path))
            .unwrap_or(path)
    };
    path.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// One step of a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

pub(super) fn display_path(segs: &[Seg]) -> String {
    let mut out = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

pub(super) fn parse_segment(part: &str) -> Option<Seg> {
    if part.is_empty() {
        None
    } else if part.bytes().all(|b| b.is_ascii_digit()) {
        part.parse().ok().map(Seg::Index)
    } else {
        Some(Seg::Key(part.to_string()))
    }
}

/// `raft.heartbeat_interval_ms`, `members[0].api`, `members.0.api`.
pub(super) fn parse_key(key: &str) -> Option<Vec<Seg>> {
    let mut segs = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => part.split_at(i),
            None => (part, ""),
        };
        if !name.is_empty() {
            segs.push(parse_segment(name)?);
        } else if rest.is_empty() {
            return None;
        }
        while !rest.is_empty() {
            let inner = rest.strip_prefix('[')?;
            let close = inner.find(']')?;
            segs.push(Seg::Index(inner[..close].trim().parse().ok()?));
            rest = &inner[close + 1..];
        }
    }
    (!segs.is_empty()).then_some(segs)
}

pub(super) enum LookupError {
    /// `segs[at]` is not a key of the table it names; `expected` are the keys that are.
    Unknown {
        at: usize,
        expected: Vec<&'static str>,
    },
    /// `segs[..at]` cannot be indexed by `segs[at]`.
    Shape { at: usize, message: &'static str },
}

/// The kind of value at a key path of `schema`.
pub(super) fn lookup(schema: &'static [Field], segs: &[Seg]) -> Result<Kind, LookupError> {
    let mut kind = Kind::Table(schema);
    for (at, seg) in segs.iter().enumerate() {
        kind = match (kind, seg) {
            (Kind::Table(fields), Seg::Key(k)) => match fields.iter().find(|f| f.name == k) {
                Some(field) => field.kind,
                None => {
                    return Err(LookupError::Unknown {
                        at,
                        expected: fields.iter().map(|f| f.name).collect(),
                    })
                }
            },
            (Kind::TableArray(fields), Seg::Index(_)) => Kind::Table(fields),
            (Kind::TableArray(_), Seg::Key(_)) => {
                return Err(LookupError::Shape {
                    at,
                    message: "is an array: pick an entry by index, e.g. members[0].api",
                })
            }
            (Kind::Table(_), Seg::Index(_)) => {
                return Err(LookupError::Shape {
                    at,
                    message: "is a table, not an array",
                })
            }
            (_, _) => {
                return Err(LookupError::Shape {
                    at,
                    message: "is a single value and has no keys inside it",
                })
            }
        };
    }
    Ok(kind)
}

pub(super) fn expected_list(names: Vec<&'static str>) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An override's text as a TOML value: a TOML literal if it parses as one, else a string;
/// string keys take the raw text unless it is a quoted TOML string; list keys take a TOML
/// array or comma-separated strings.
pub(super) fn parse_value(raw: &str, kind: Kind) -> Value {
    let literal = toml::from_str::<Table>(&format!("v = {}", raw.trim()))
        .ok()
        .filter(|t| t.len() == 1)
        .and_then(|mut t| t.remove("v"));
    match (kind, literal) {
        (Kind::Str, Some(Value::String(s))) => Value::String(s),
        (Kind::List, Some(Value::Array(items))) => Value::Array(items),
        // `a, b, c`: the comma-separated form of a list of strings.
        (Kind::List, _) => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
        (Kind::Str, _) | (_, None) => Value::String(raw.to_string()),
        (_, Some(value)) => value,
    }
}

/// Sets `value` at `segs` in the tree: tables merge, anything else replaces.
pub(super) fn apply(
    tree: &mut Table,
    segs: &[Seg],
    value: Value,
    file: &Path,
    origin: &str,
) -> Result<(), ConfigError> {
    fn set(
        cur: &mut Value,
        segs: &[Seg],
        depth: usize,
        value: Value,
    ) -> Result<(), (usize, String)> {
        let Some((first, rest)) = segs.split_first() else {
            merge(cur, value);
            return Ok(());
        };
        match first {
            Seg::Key(k) => {
                let Value::Table(table) = cur else {
                    return Err((depth, format!("is {}, not a table", describe(cur))));
                };
                if rest.is_empty() && !table.contains_key(k) {
                    table.insert(k.clone(), value);
                    return Ok(());
                }
                let child = table
                    .entry(k.clone())
                    .or_insert_with(|| match rest.first() {
                        Some(Seg::Index(_)) => Value::Array(Vec::new()),
                        _ => Value::Table(Table::new()),
                    });
                set(child, rest, depth + 1, value)
            }
            Seg::Index(i) => {
                let Value::Array(items) = cur else {
                    return Err((depth, format!("is {}, not an array", describe(cur))));
                };
                if *i > items.len() {
                    return Err((
                        depth,
                        format!(
                            "has {} entries, so there is no index {i} (index {} adds one)",
                            items.len(),
                            items.len()
                        ),
                    ));
                }
                if *i == items.len() {
                    items.push(Value::Table(Table::new()));
                }
                set(&mut items[*i], rest, depth + 1, value)
            }
        }
    }
    fn merge(cur: &mut Value, value: Value) {
        match (cur, value) {
            (Value::Table(existing), Value::Table(new)) => {
                for (k, v) in new {
                    match existing.get_mut(&k) {
                        Some(slot) => merge(slot, v),
                        None => {
                            existing.insert(k, v);
                        }
                    }
                }
            }
            (cur, value) => *cur = value,
        }
    }

    let mut root = Value::Table(std::mem::take(tree));
    let result = set(&mut root, segs, 0, value);
    if let Value::Table(table) = root {
        *tree = table;
    }
    result.map_err(|(depth, message)| ConfigError::Override {
        path: file.to_path_buf(),
        arg: origin.to_string(),
        message: format!("`{}` {message}", display_path(&segs[..depth])),
    })
}

/// Which override last set each key (by display path); the file otherwise.
#[derive(Default)]
pub(crate) struct Origins(BTreeMap<String, String>);

impl Origins {
    fn set(&mut self, segs: &[Seg], origin: String) {
        let key = display_path(segs);
        let (dot, bracket) = (format!("{key}."), format!("{key}["));
        self.0
            .retain(|k, _| !k.starts_with(&dot) && !k.starts_with(&bracket));
        self.0.insert(key, origin);
    }

    /// Where the value of `key`, and of any other overridden key path that `message` mentions
    /// (e.g. the heartbeat an election timeout is compared with) or that decides it (`insecure`
    /// and `[tls]` for each other), came from; empty if from the file.
    fn note(&self, key: &str, message: &str) -> String {
        let mut notes: Vec<String> = self
            .get(key)
            .map(|o| format!("set by {o}"))
            .into_iter()
            .collect();
        let in_tls = |k: &str| k == "tls" || k.starts_with("tls.");
        for (other, origin) in &self.0 {
            let nested = other.contains(['.', '[']);
            let related = match key {
                "insecure" => in_tls(other),
                "tls" => other == "insecure",
                _ => in_tls(key) && other.starts_with("tls."),
            };
            if other != key && (related || nested && mentions(message, other)) {
                notes.push(format!("{other} set by {origin}"));
            }
        }
        if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join("; "))
        }
    }

    /// The origin of `key` or of the closest enclosing key that was overridden.
    pub(crate) fn get(&self, key: &str) -> Option<String> {
        let mut key = key;
        loop {
            if let Some(origin) = self.0.get(key) {
                return Some(origin.clone());
            }
            key = &key[..key.rfind(['.', '['])?];
        }
    }
}

/// Whether `text` names the key path `key` as a whole word.
pub(super) fn mentions(text: &str, key: &str) -> bool {
    let part_of_key = |c: char| c.is_ascii_alphanumeric() || "_.[]".contains(c);
    text.match_indices(key).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + key.len()..].chars().next();
        !before.is_some_and(part_of_key) && !after.is_some_and(|c| part_of_key(c) && c != '.')
    })
}

pub(super) fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the string {s:?}"),
        Value::Integer(i) => format!("the integer {i}"),
        Value::Float(f) => format!("the float {f}"),
        Value::Boolean(b) => format!("the boolean {b}"),
        Value::Datetime(d) => format!("the date-time {d}"),
        Value::Array(_) => "an array".into(),
        Value::Table(_) => "a table".into(),
    }
}
