//! The files under deploy/ and the operator docs do not drift from the code:
//!
//! - every TOML sample under deploy/ (the local and production samples, the compose configs, and
//!   the TOML inside the Kubernetes ConfigMaps) loads with the crate's own loaders, with real
//!   certificates made here for the role the sample expects, and temp dirs for its data;
//! - every key a sample uses, and every key the loaders accept (`known_keys()`), is in the key
//!   tables of docs/configuration.md, which names no other key; every row of the key tables in
//!   the module docs of src/config/mod.rs and src/worker/config.rs is in it word for word;
//! - the alert rules (deploy/prometheus/scaleout-alerts.yaml) use only metrics the exporter
//!   serves, and docs/operations.md explains every alert and lists every metric.
//!
//! No cluster is started: the loaders are called in-process, so this takes about a second.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use scaleout::certs::{write_file, DevCa, Validity};
use scaleout::config::MasterConfig;
use scaleout::tls::Role;
use scaleout::worker::config::WorkerConfig;
use toml::{Table, Value};
use uuid::Uuid;

/// The metrics the exporters serve: replicas and workers on their `metrics_listen` address.
/// This is the contract the alert rules and docs/operations.md are held to.
const METRICS: &[&str] = &[
    // Replica.
    "scaleout_build_info",
    "scaleout_ready",
    "scaleout_raft_term",
    "scaleout_raft_is_leader",
    "scaleout_raft_leader_id",
    "scaleout_raft_voter",
    "scaleout_raft_last_log_index",
    "scaleout_raft_commit_index",
    "scaleout_raft_applied_index",
    "scaleout_raft_snapshot_index",
    "scaleout_raft_replication_lag_entries",
    "scaleout_raft_quorum_ack_age_seconds",
    "scaleout_raft_leader_contact_age_seconds",
    "scaleout_wal_syncs_total",
    "scaleout_wal_appends_total",
    "scaleout_wal_entries_total",
    "scaleout_proposals_total",
    "scaleout_proposal_commands_total",
    "scaleout_proposal_batch_commands",
    "scaleout_proposal_errors_total",
    "scaleout_forwarded_commands_total",
    "scaleout_rpc_duration_seconds",
    "scaleout_jobs",
    "scaleout_jobs_submitted_total",
    "scaleout_jobs_removed_total",
    "scaleout_leases_granted_total",
    "scaleout_leases_renewed_total",
    "scaleout_leases_expired_total",
    "scaleout_attempts_ended_total",
    "scaleout_workers",
    "scaleout_worker_tasks_running",
    "scaleout_outbox_events",
    "scaleout_outbox_oldest_event_age_seconds",
    "scaleout_ssisdb_events_shipped_total",
    "scaleout_heap_in_use_bytes",
    "scaleout_heap_free_bytes",
    "scaleout_ssisdb_ship_errors_total",
    "scaleout_ssisdb_requests_total",
    "scaleout_ssisdb_statements_total",
    // Worker.
    "scaleout_worker_connected",
    "scaleout_worker_running_tasks",
    "scaleout_worker_max_tasks",
    "scaleout_worker_renew_failures_total",
    "scaleout_worker_tasks_finished_total",
    "scaleout_worker_spool_entries",
    "scaleout_worker_spool_bytes",
];

/// Histograms, whose series carry the `_bucket`, `_sum` and `_count` suffixes.
const HISTOGRAMS: &[&str] = &[
    "scaleout_proposal_batch_commands",
    "scaleout_rpc_duration_seconds",
];

/// Series Prometheus makes itself for every scrape target, which alert rules may use too.
const PROMETHEUS_SERIES: &[&str] = &["up"];

/// Names that look like metrics in the docs but are not: the SSISDB login and role of
/// deploy/sql/scaleout-login.sql.
const NOT_METRICS: &[&str] = &["scaleout_master", "scaleout_writer", "scaleout_submitter"];

/// The worker id used for a worker sample whose certificate file name names none.
const DEFAULT_WORKER: &str = "5e0f3d1c-9a7b-4c2e-8f61-0d3b2a1c4e5f";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every file under `dir` whose name ends with one of `exts`, sorted; development certificates
/// (deploy/config/local/certs) are skipped.
fn files(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "certs") {
                    stack.push(path);
                }
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| exts.contains(&e))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A TOML sample: where it came from (for messages), its text, and the directory its relative
/// paths are relative to.
struct Sample {
    name: String,
    text: String,
    base_dir: PathBuf,
}

/// The literal block scalars of a YAML file whose key ends in `.toml` (`replica.toml: |`), as
/// ConfigMaps hold them: the lines indented deeper than the key, with that indentation removed.
fn toml_in_yaml(path: &Path) -> Vec<Sample> {
    let text = read(path);
    let lines: Vec<&str> = text.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim();
        let Some(key) = trimmed
            .strip_suffix(": |")
            .or_else(|| trimmed.strip_suffix(": |-"))
            .filter(|key| key.ends_with(".toml"))
        else {
            continue;
        };
        let key_indent = indent(line);
        let body: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || indent(l) > key_indent)
            .copied()
            .collect();
        let block_indent = body
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| indent(l))
            .min()
            .unwrap_or(0);
        let toml: Vec<&str> = body
            .iter()
            .map(|l| l.get(block_indent..).unwrap_or(""))
            .collect();
        out.push(Sample {
            name: format!("{} ({key}, line {})", path.display(), i + 1),
            text: toml.join("\n") + "\n",
            base_dir: path.parent().expect("parent").to_path_buf(),
        });
    }
    out
}

/// Every TOML sample under deploy/: the files, and the TOML inside YAML files.
fn samples() -> Vec<Sample> {
    let deploy = repo().join("deploy");
    let mut out: Vec<Sample> = files(&deploy, &["toml"])
        .into_iter()
        .map(|path| Sample {
            name: path.display().to_string(),
            text: read(&path),
            base_dir: path.parent().expect("parent").to_path_buf(),
        })
        .collect();
    for yaml in files(&deploy, &["yaml", "yml"]) {
        out.extend(toml_in_yaml(&yaml));
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Replica,
    Worker,
}

/// A replica config has `[[members]]`, a worker config `endpoints`.
fn kind_of(sample: &Sample, table: &Table) -> Kind {
    match (
        table.contains_key("members"),
        table.contains_key("endpoints"),
    ) {
        (true, false) => Kind::Replica,
        (false, true) => Kind::Worker,
        _ => panic!(
            "{}: cannot tell a replica config ([[members]]) from a worker config (endpoints)",
            sample.name
        ),
    }
}

/// The key paths a config uses, as docs/configuration.md names them: `raft.heartbeat_interval_ms`,
/// `tls.cert`, `members` and `members[].id` for an array of tables.
fn key_paths(table: &Table, prefix: &str, out: &mut BTreeSet<String>) {
    for (name, value) in table {
        let key = format!("{prefix}{name}");
        match value {
            Value::Table(inner) => key_paths(inner, &format!("{key}."), out),
            Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_table) => {
                for item in items {
                    key_paths(item.as_table().expect("table"), &format!("{key}[]."), out);
                }
                out.insert(key);
            }
            _ => {
                out.insert(key);
            }
        }
    }
}

fn str_at<'a>(table: &'a Table, path: &[&str]) -> Option<&'a str> {
    let (last, parents) = path.split_last()?;
    let mut table = table;
    for parent in parents {
        table = table.get(*parent)?.as_table()?;
    }
    table.get(*last)?.as_str()
}

fn file_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .unwrap_or_else(|| panic!("`{path}` names no file"))
        .to_string_lossy()
        .into_owned()
}

/// The first UUID in `text`, if any.
fn uuid_in(text: &str) -> Option<Uuid> {
    (0..text.len().saturating_sub(35))
        .filter(|&i| text.is_char_boundary(i) && text.is_char_boundary(i + 36))
        .find_map(|i| Uuid::parse_str(&text[i..i + 36]).ok())
}

/// Writes the sample's `[tls]` files into `dir` under the file names the sample uses, with a
/// certificate for `role`, and returns the `--set` overrides pointing the sample at them.
fn tls_overrides(
    sample: &Sample,
    table: &Table,
    ca: &DevCa,
    role: &Role,
    dir: &Path,
) -> Vec<String> {
    if !table.contains_key("tls") {
        return Vec::new();
    }
    let name = |key: &str| {
        file_name(
            str_at(table, &["tls", key])
                .unwrap_or_else(|| panic!("{}: [tls] has no `{key}`", sample.name)),
        )
    };
    let (ca_name, cert_name, key_name) = (name("ca"), name("cert"), name("key"));
    let distinct: BTreeSet<&String> = [&ca_name, &cert_name, &key_name].into_iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "{}: tls.ca, tls.cert and tls.key name the same file",
        sample.name
    );
    std::fs::create_dir_all(dir).expect("tls dir");
    let validity = Validity::days_from_now(2);
    let pair = ca
        .issue(role, &["localhost".to_owned()], validity)
        .expect("issue a certificate");
    write_file(&dir.join(&ca_name), &ca.pem().cert_pem, false).expect("write ca");
    write_file(&dir.join(&cert_name), &pair.cert_pem, false).expect("write cert");
    write_file(&dir.join(&key_name), &pair.key_pem, true).expect("write key");
    vec![
        format!("tls.ca={}", dir.join(&ca_name).display()),
        format!("tls.cert={}", dir.join(&cert_name).display()),
        format!("tls.key={}", dir.join(&key_name).display()),
    ]
}

fn load_replica(sample: &Sample, table: &Table, ca: &DevCa, scratch: &Path) {
    let id = table
        .get("id")
        .and_then(Value::as_integer)
        .and_then(|id| u64::try_from(id).ok())
        .unwrap_or_else(|| panic!("{}: no `id`", sample.name));
    // A certificate file named for a replica must be this replica's: a copied file that kept
    // another replica's name would load someone else's certificate on the real host.
    if let Some(cert) = str_at(table, &["tls", "cert"]) {
        let name = file_name(cert);
        if let Some(n) = name
            .strip_prefix("replica-")
            .and_then(|rest| rest.strip_suffix(".pem"))
        {
            assert_eq!(
                n,
                id.to_string(),
                "{}: replica {id} uses certificate {name}",
                sample.name
            );
        }
    }
    let mut set = vec![format!("data_dir={}", scratch.join("data").display())];
    set.extend(tls_overrides(
        sample,
        table,
        ca,
        &Role::Replica(id),
        &scratch.join("tls"),
    ));
    if str_at(table, &["ssisdb", "password_file"]).is_some() {
        let file = scratch.join("ssisdb-password");
        std::fs::write(&file, "not-a-real-password\n").expect("password file");
        set.push(format!("ssisdb.password_file={}", file.display()));
    }
    if str_at(table, &["ssisdb", "ca"]).is_some() {
        let file = scratch.join("sql-ca.pem");
        std::fs::write(&file, &ca.pem().cert_pem).expect("sql ca file");
        set.push(format!("ssisdb.ca={}", file.display()));
    }
    let config = MasterConfig::from_toml_str(&sample.text, &sample.base_dir, &set)
        .unwrap_or_else(|e| panic!("{} does not load as a replica config: {e}", sample.name));
    assert_eq!(config.id, id, "{}", sample.name);
    assert!(
        config.me().id == id && config.members.len() >= 3,
        "{}: a sample cluster has at least three members, this replica among them",
        sample.name
    );
}

fn load_worker(sample: &Sample, table: &Table, ca: &DevCa, scratch: &Path) {
    // The certificate decides the agent id: the UUID in the sample's certificate file name, or
    // its agent_id, or any.
    let from_name = str_at(table, &["tls", "cert"]).and_then(uuid_in);
    let from_key = table
        .get("agent_id")
        .and_then(Value::as_str)
        .map(|id| Uuid::parse_str(id).unwrap_or_else(|e| panic!("{}: {e}", sample.name)));
    let agent = from_name
        .or(from_key)
        .unwrap_or_else(|| Uuid::parse_str(DEFAULT_WORKER).expect("uuid"));
    let state = scratch.join("state");
    let mut set = vec![format!("state_dir={}", state.display())];
    if table.contains_key("tasks_root_folder") {
        set.push(format!(
            "tasks_root_folder={}",
            state.join("tasks").display()
        ));
    }
    set.extend(tls_overrides(
        sample,
        table,
        ca,
        &Role::Worker(agent),
        &scratch.join("tls"),
    ));
    let config = WorkerConfig::from_toml_str(&sample.text, &sample.base_dir, &set)
        .unwrap_or_else(|e| panic!("{} does not load as a worker config: {e}", sample.name));
    if config.tls.is_some() {
        assert_eq!(config.agent_id, agent, "{}", sample.name);
    }
}

/// The keys of the table under `heading` in docs/configuration.md: the first backticked word of
/// every row up to the next heading.
fn documented_keys(doc: &str, heading: &str) -> BTreeSet<String> {
    let mut lines = doc.lines().skip_while(|line| line.trim() != heading);
    assert!(
        lines.next().is_some(),
        "docs/configuration.md has no heading `{heading}`"
    );
    let keys: BTreeSet<String> = lines
        .take_while(|line| !line.starts_with('#'))
        .filter_map(|line| line.strip_prefix("| `"))
        .map(|rest| rest.split('`').next().unwrap_or_default().to_owned())
        .collect();
    assert!(
        !keys.is_empty(),
        "docs/configuration.md: no key rows under `{heading}`"
    );
    keys
}

const REPLICA_KEYS: &str = "### Replica keys";
const WORKER_KEYS: &str = "### Worker keys";

fn configuration_doc() -> String {
    read(&repo().join("docs/configuration.md"))
}

#[test]
fn every_toml_sample_loads() {
    let ca = DevCa::generate("deploy_files test CA", Validity::days_from_now(2)).expect("CA");
    let samples = samples();
    let (mut replicas, mut workers) = (0, 0);
    for (i, sample) in samples.iter().enumerate() {
        let table: Table = toml::from_str(&sample.text)
            .unwrap_or_else(|e| panic!("{} is not valid TOML: {e}", sample.name));
        let temp = tempfile::tempdir().expect("temp dir");
        let scratch = temp.path().join(format!("sample-{i}"));
        match kind_of(sample, &table) {
            Kind::Replica => {
                load_replica(sample, &table, &ca, &scratch);
                replicas += 1;
            }
            Kind::Worker => {
                load_worker(sample, &table, &ca, &scratch);
                workers += 1;
            }
        }
    }
    // local 3 + production 3 + compose 3 + Kubernetes 1; local 1 + production 1 + compose 2 +
    // Kubernetes 1. Fewer means a sample was not found (moved, or its YAML block not read).
    assert!(
        replicas >= 10 && workers >= 5,
        "found {replicas} replica and {workers} worker samples: {:?}",
        samples.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
}

#[test]
fn the_samples_of_one_cluster_agree() {
    // The replica files of one directory (or one YAML file) form one cluster: the same
    // [[members]], distinct ids.
    let mut clusters: std::collections::BTreeMap<PathBuf, Vec<(String, Table)>> =
        Default::default();
    for sample in samples() {
        let table: Table = toml::from_str(&sample.text).expect("valid TOML");
        if kind_of(&sample, &table) == Kind::Replica {
            clusters
                .entry(sample.base_dir.clone())
                .or_default()
                .push((sample.name, table));
        }
    }
    for (dir, replicas) in clusters {
        let (first_name, first) = &replicas[0];
        let mut ids = BTreeSet::new();
        for (name, table) in &replicas {
            assert_eq!(
                table.get("members"),
                first.get("members"),
                "{name} and {first_name} list different [[members]]"
            );
            assert!(
                ids.insert(table.get("id").and_then(Value::as_integer)),
                "two replica samples in {} have the same id",
                dir.display()
            );
        }
    }
}

#[test]
fn the_reference_documents_exactly_the_keys_the_loaders_accept() {
    let doc = configuration_doc();
    for (heading, known) in [
        (REPLICA_KEYS, scaleout::config::known_keys()),
        (WORKER_KEYS, scaleout::worker::config::known_keys()),
    ] {
        let documented = documented_keys(&doc, heading);
        let known: BTreeSet<String> = known.into_iter().collect();
        let undocumented: Vec<&String> = known.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "docs/configuration.md, {heading}: the loader accepts {undocumented:?}, which the \
             table does not document; add a row for each"
        );
        let unknown: Vec<&String> = documented.difference(&known).collect();
        assert!(
            unknown.is_empty(),
            "docs/configuration.md, {heading}: documents {unknown:?}, which the loader rejects; \
             fix or remove those rows"
        );
    }
}

#[test]
fn every_key_of_every_sample_is_documented() {
    let doc = configuration_doc();
    let replica = documented_keys(&doc, REPLICA_KEYS);
    let worker = documented_keys(&doc, WORKER_KEYS);
    for sample in samples() {
        let table: Table = toml::from_str(&sample.text).expect("valid TOML");
        let mut used = BTreeSet::new();
        key_paths(&table, "", &mut used);
        let documented = match kind_of(&sample, &table) {
            Kind::Replica => &replica,
            Kind::Worker => &worker,
        };
        let missing: Vec<&String> = used.difference(documented).collect();
        assert!(
            missing.is_empty(),
            "{} uses {missing:?}, which docs/configuration.md does not document",
            sample.name
        );
    }
}

#[test]
fn the_reference_holds_every_row_of_the_module_docs() {
    // docs/configuration.md is generated from these tables: each row, as written in the module
    // docs, must be in it unchanged.
    let doc = configuration_doc();
    let doc_lines: BTreeSet<&str> = doc.lines().map(str::trim_end).collect();
    for source in ["src/config/mod.rs", "src/worker/config.rs"] {
        let text = read(&repo().join(source));
        let rows: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("//! "))
            .filter(|line| line.starts_with("| `"))
            .map(str::trim_end)
            .collect();
        assert!(
            rows.len() > 10,
            "{source}: no key table found in its module docs"
        );
        for row in rows {
            assert!(
                doc_lines.contains(row),
                "docs/configuration.md lacks this row of {source}'s key table (or has an older \
                 version of it); copy it over:\n{row}"
            );
        }
    }
}

/// The PromQL of every `expr:` in an alert rule file: inline, or a `>-` / `|` block.
fn alert_exprs(yaml: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut out = Vec::new();
    let mut alert = String::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start().trim_start_matches("- ");
        if let Some(name) = trimmed.strip_prefix("alert:") {
            alert = name.trim().to_owned();
        }
        let Some(rest) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        let expr = if matches!(rest, ">-" | ">" | "|" | "|-") {
            lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
                .map(|l| l.trim())
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            rest.to_owned()
        };
        out.push((alert.clone(), expr));
    }
    out
}

/// The `scaleout_*` and Prometheus-made names in `text`. Label values such as
/// `job="scaleout-replica"` split into other words, so they are not taken for metrics.
fn metric_names(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("scaleout_") || PROMETHEUS_SERIES.contains(word))
        .map(str::to_owned)
        .collect()
}

/// Whether `name` is a served series: a metric, or a histogram's `_bucket`/`_sum`/`_count`.
fn is_served(name: &str) -> bool {
    METRICS.contains(&name)
        || PROMETHEUS_SERIES.contains(&name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| HISTOGRAMS.contains(&base))
        })
}

#[test]
fn alert_rules_use_only_served_metrics_and_are_explained() {
    let path = repo().join("deploy/prometheus/scaleout-alerts.yaml");
    let exprs = alert_exprs(&read(&path));
    assert!(exprs.len() >= 10, "{}: found {exprs:?}", path.display());
    let operations = read(&repo().join("docs/operations.md"));
    for (alert, expr) in &exprs {
        assert!(!alert.is_empty(), "an expr before any alert: {expr}");
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{alert}: no scaleout metric in `{expr}`");
        for name in names {
            assert!(
                is_served(&name),
                "{alert} uses `{name}`, which the exporter does not serve (tests/deploy_files.rs \
                 METRICS lists what it does)"
            );
        }
        assert!(
            operations
                .lines()
                .any(|line| line.trim() == format!("### {alert}")),
            "docs/operations.md has no section `### {alert}` saying what it means and what to do"
        );
    }
}

#[test]
fn the_operations_guide_names_every_metric_and_no_other() {
    let operations = read(&repo().join("docs/operations.md"));
    let named: BTreeSet<String> = metric_names(&operations)
        .into_iter()
        .filter(|name| !NOT_METRICS.contains(&name.as_str()))
        .collect();
    for name in &named {
        assert!(
            is_served(name),
            "docs/operations.md names `{name}`, which the exporter does not serve"
        );
    }
    for metric in METRICS {
        assert!(
            named.contains(*metric),
            "docs/operations.md does not describe the metric `{metric}`"
        );
    }
}
