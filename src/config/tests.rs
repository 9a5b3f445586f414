//! The replica config loader's tests: every key, every override form, every error message.

use super::ssisdb::parse_connection_string;
use super::*;
use std::collections::BTreeSet;
use std::time::Duration;

const VALID: &str = r#"
id = 2
data_dir = "data/m2"
insecure = true

[[members]]
id = 1
api = "127.0.0.1:7101"
peer = "127.0.0.1:7201"

[[members]]
id = 2
api = "127.0.0.1:7102"
peer = "127.0.0.1:7202"

[[members]]
id = 3
api = "127.0.0.1:7103"
peer = "127.0.0.1:7203"

[raft]
heartbeat_interval_ms = 100
"#;

fn sets(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn parse(dir: &Path, text: &str, overrides: &[&str]) -> Result<MasterConfig, ConfigError> {
    MasterConfig::from_toml_str(text, dir, &sets(overrides))
}

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn valid_file_parses_with_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let c = parse(dir.path(), VALID, &[]).unwrap();
    assert_eq!(c.id, 2);
    assert!(c.insecure);
    assert_eq!(c.members.len(), 3);
    assert_eq!(c.me().api, "127.0.0.1:7102");
    assert_eq!(c.api_listen, "127.0.0.1:7102");
    assert_eq!(c.peer_listen, "127.0.0.1:7202");
    assert_eq!(c.peers().map(|m| m.id).collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(c.raft, RaftSettings::default());
    assert_eq!(c.proposals, ProposalSettings::default());
    assert_eq!(c.retention, RetentionSettings::default());
    assert_eq!(c.retention.retention_ms(), 86_400_000);
    let never = RetentionSettings {
        finished_job_secs: 0,
        ..RetentionSettings::default()
    };
    assert_eq!(never.retention_ms(), u64::MAX, "0: never by age");
    assert_eq!(c.storage.cache_capacity_bytes(), 64 << 20);
    assert_eq!(c.api.max_message_bytes, 4 << 20);
    assert!(c.data_dir.is_absolute());
    assert!(!c.data_dir.exists(), "loading creates nothing");
    assert_eq!(
        c.data_dir,
        dir.path().canonicalize().unwrap().join("data/m2")
    );
    c.validate().unwrap();
    // The start-up step makes it, and its probe file is gone.
    c.prepare_data_dir(Path::new("m2.toml")).unwrap();
    assert_eq!(std::fs::read_dir(&c.data_dir).unwrap().count(), 0);
}

#[test]
fn explicit_listen_addresses_and_sections() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{VALID}\n[proposals]\nmax_batch = 64\nlinger_us = 0\nmax_in_flight = 1\n\
         [storage]\ncache_capacity_mb = 8\n[api]\nmax_message_bytes = 65536\n"
    );
    let c = parse(
        dir.path(),
        &text,
        &[
            "api_listen=0.0.0.0:7102",
            "peer_listen=[::]:7202",
            "raft.keep_logs_after_snapshot=0",
        ],
    )
    .unwrap();
    assert_eq!(c.api_listen, "0.0.0.0:7102");
    assert_eq!(c.peer_listen, "[::]:7202");
    assert_eq!(
        c.proposals,
        ProposalSettings {
            max_batch: 64,
            linger_us: 0,
            max_in_flight: 1
        }
    );
    assert_eq!(c.storage.cache_capacity_mb, 8);
    assert_eq!(c.api.max_message_bytes, 65536);
    assert_eq!(c.raft.keep_logs_after_snapshot, 0);
}

/// Each rule: overrides applied to VALID, the key the error must name, and a fragment of
/// its message.
#[test]
fn each_validation_rule_names_its_key() {
    let members = |list: &str| format!("members=[{list}]");
    let m = |id: u64, api: &str, peer: &str| format!("{{id={id},api=\"{api}\",peer=\"{peer}\"}}");
    let one = m(2, "127.0.0.1:7102", "127.0.0.1:7202");
    let cases: Vec<(Vec<String>, &str, &str)> = vec![
        (vec![members("")], "members", "empty"),
        (
            vec![members(&format!(
                "{one},{}",
                m(2, "127.0.0.1:7103", "127.0.0.1:7203")
            ))],
            "members",
            "member id 2 is listed twice",
        ),
        (
            vec!["members[0].api=127.0.0.1:7102".into()],
            "members",
            "address 127.0.0.1:7102",
        ),
        (
            vec!["members[2].peer=127.0.0.1:7102".into()],
            "members",
            "used twice",
        ),
        (vec!["id=9".into()], "id", "not among the members"),
        (
            vec!["members[2].peer=127.0.0.1".into()],
            "members[2].peer",
            "not host:port",
        ),
        (
            vec!["members[2].peer=127.0.0.1:peer".into()],
            "members[2].peer",
            "port `peer`",
        ),
        (
            vec!["members[1].api=127.0.0.1:0".into()],
            "members[1].api",
            "port 0",
        ),
        (
            vec!["members[0].api=http://a:1".into()],
            "members[0].api",
            "scheme",
        ),
        (
            vec!["members[0].api=::1:7101".into()],
            "members[0].api",
            "brackets",
        ),
        (
            vec!["api_listen=localhost".into()],
            "api_listen",
            "not host:port",
        ),
        (
            vec!["peer_listen=127.0.0.1:7102".into()],
            "peer_listen",
            "also api_listen",
        ),
        (
            vec!["metrics_listen=127.0.0.1:7202".into()],
            "metrics_listen",
            "address of its own",
        ),
        (
            vec!["metrics_listen=metrics-host".into()],
            "metrics_listen",
            "not host:port",
        ),
        (
            vec!["console_listen=console-host".into()],
            "console_listen",
            "not host:port",
        ),
        (
            vec!["console_listen=127.0.0.1:7202".into()],
            "console_listen",
            "address of its own",
        ),
        (
            vec!["console_listen=127.0.0.1:7443".into()],
            "console_listen",
            "needs [tls]",
        ),
        (
            vec!["peer_routes=[{id=2,address=\"127.0.0.1:7999\"}]".into()],
            "peer_routes[0].id",
            "own id",
        ),
        (
            vec![
                "peer_routes=[{id=1,address=\"127.0.0.1:7999\"},{id=1,address=\"127.0.0.1:7998\"}]"
                    .into(),
            ],
            "peer_routes[1].id",
            "two routes",
        ),
        (
            vec!["peer_routes=[{id=1,address=\"nowhere\"}]".into()],
            "peer_routes[0].address",
            "not host:port",
        ),
        (
            vec!["peer_routes=[{id=1}]".into()],
            "peer_routes[0].address",
            "needs id",
        ),
        (vec!["insecure=false".into()], "tls", "no [tls] section"),
        (
            vec!["tls={ca=\"ca.pem\",cert=\"c.pem\",key=\"k.pem\"}".into()],
            "insecure",
            "choose one",
        ),
        (
            vec!["insecure=false".into(), "tls.ca=ca.pem".into()],
            "tls.cert",
            "is missing",
        ),
        (vec!["tls.ca=1".into(), "tls=2".into()], "tls", "a table"),
        (
            vec!["raft.heartbeat_interval_ms=0".into()],
            "raft.heartbeat_interval_ms",
            "at least 1 (e.g.",
        ),
        (
            vec!["raft.election_timeout_min_ms=150".into()],
            "raft.election_timeout_min_ms",
            "at least twice",
        ),
        (
            vec!["raft.election_timeout_max_ms=250".into()],
            "raft.election_timeout_max_ms",
            "greater than raft.election_timeout_min_ms",
        ),
        (
            vec!["raft.snapshot_every_logs=0".into()],
            "raft.snapshot_every_logs",
            "at least 1 (e.g.",
        ),
        (
            vec!["raft.install_snapshot_timeout_ms=0".into()],
            "raft.install_snapshot_timeout_ms",
            "at least 1 (e.g.",
        ),
        (
            vec!["proposals.max_batch=0".into()],
            "proposals.max_batch",
            "between 1 and 10000",
        ),
        (
            vec!["proposals.max_batch=10001".into()],
            "proposals.max_batch",
            "between 1 and 10000",
        ),
        (
            vec!["proposals.linger_us=100001".into()],
            "proposals.linger_us",
            "at most 100000",
        ),
        (
            vec!["proposals.max_in_flight=0".into()],
            "proposals.max_in_flight",
            "at least 1",
        ),
        (
            vec!["storage.cache_capacity_mb=0".into()],
            "storage.cache_capacity_mb",
            "between 1",
        ),
        (
            vec!["retention.finished_job_secs=30".into()],
            "retention.finished_job_secs",
            "at least 60",
        ),
        (
            vec!["retention.max_finished_jobs=10".into()],
            "retention.max_finished_jobs",
            "at least 100",
        ),
        (
            vec!["retention.sweep_interval_ms=0".into()],
            "retention.sweep_interval_ms",
            "between 100",
        ),
        (
            vec!["api.max_message_bytes=65535".into()],
            "api.max_message_bytes",
            "64 KiB",
        ),
        (
            vec!["api.max_message_bytes=268435457".into()],
            "api.max_message_bytes",
            "256 MiB",
        ),
        // Shape errors, caught before deserializing.
        (
            vec!["raft.heartbeat_interval_ms=fast".into()],
            "raft.heartbeat_interval_ms",
            "whole number",
        ),
        (
            vec!["raft.heartbeat_interval_ms=-5".into()],
            "raft.heartbeat_interval_ms",
            "whole number",
        ),
        (vec!["insecure=yes".into()], "insecure", "true or false"),
        (vec!["raft=3".into()], "raft", "a table"),
        (
            vec!["members=[1]".into()],
            "members[0]",
            "[[members]] entry",
        ),
        (
            vec![members("{id=2,api=\"127.0.0.1:7102\"}")],
            "members[0].peer",
            "is missing",
        ),
    ];
    for (overrides, key, fragment) in cases {
        let dir = tempfile::tempdir().unwrap();
        let err = MasterConfig::from_toml_str(VALID, dir.path(), &overrides)
            .expect_err(&format!("{overrides:?} should be rejected"));
        let text = err.to_string();
        assert_eq!(err.key(), Some(key), "{overrides:?}: {text}");
        assert!(text.contains(&format!("`{key}`")), "{overrides:?}: {text}");
        assert!(text.contains(fragment), "{overrides:?}: {text}");
        assert!(text.contains("<inline config>"), "{overrides:?}: {text}");
        if key != "members" {
            assert!(
                text.contains("set by --set"),
                "{overrides:?} names its origin: {text}"
            );
        }
    }
}

#[test]
fn missing_required_keys() {
    let dir = tempfile::tempdir().unwrap();
    for (key, text) in [
        ("id", VALID.replacen("id = 2\n", "", 1)),
        ("data_dir", VALID.replace("data_dir = \"data/m2\"\n", "")),
        (
            "members",
            "id = 1\ndata_dir = \"d\"\ninsecure = true\n".to_string(),
        ),
    ] {
        let err = parse(dir.path(), &text, &[]).unwrap_err();
        assert_eq!(err.key(), Some(key), "{err}");
        assert!(err.to_string().contains("is missing"), "{err}");
    }
    let err = parse(dir.path(), VALID, &["data_dir="]).unwrap_err();
    assert_eq!(err.key(), Some("data_dir"), "{err}");
}

#[test]
fn unwritable_data_dir_names_path_and_os_error() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = write_file(dir.path(), "not-a-dir", "x");
    let text = VALID.replace("data/m2", "not-a-dir/m2");
    let err = parse(dir.path(), &text, &[]).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.key(), Some("data_dir"), "{msg}");
    assert!(
        msg.contains(&blocker.join("m2").display().to_string()),
        "{msg}"
    );
    assert!(msg.to_lowercase().contains("not a directory"), "{msg}");
}

/// `scaleout ssisdb check` and `data-dir adopt` load the config too: loading must not create
/// the data dir; starting a replica does, and says when it cannot.
#[test]
fn loading_writes_nothing_and_the_start_up_step_makes_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let config = parse(dir.path(), VALID, &[]).unwrap();
    assert!(!config.data_dir.exists(), "{}", config.data_dir.display());
    config.prepare_data_dir(Path::new("m2.toml")).unwrap();
    assert!(config.data_dir.is_dir());

    // A data dir that cannot be made: named with the file and the key.
    let blocker = write_file(dir.path(), "file", "x");
    let mut config = config;
    config.data_dir = blocker.join("m2");
    let err = config.prepare_data_dir(Path::new("m2.toml")).unwrap_err();
    assert_eq!(err.key(), Some("data_dir"), "{err}");
    assert!(err.to_string().contains("m2.toml"), "{err}");
    assert!(err.to_string().contains("m2"), "{err}");
}

#[test]
fn insecure_defaults_to_false_and_then_tls_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let err = parse(dir.path(), &VALID.replace("insecure = true\n", ""), &[]).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.key(), Some("tls"), "{msg}");
    assert!(msg.contains("no [tls] section"), "{msg}");
    assert!(msg.contains("tls.ca, tls.cert and tls.key"), "{msg}");
    assert!(msg.contains("scaleout certs init --dir certs"), "{msg}");
    assert!(msg.contains("insecure = true"), "{msg}");
    assert!(!msg.contains("set by"), "{msg}");

    // An override that turns insecure off is named.
    let err = parse(dir.path(), VALID, &["insecure=false"]).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.key(), Some("tls"), "{msg}");
    assert!(
        msg.contains("(insecure set by --set insecure=false)"),
        "{msg}"
    );
}

/// Development certificates (3 replicas, one worker, operator, admin) in `dir/<name>`.
fn dev_certs(dir: &Path, name: &str) -> crate::certs::CertsReport {
    crate::certs::init(&crate::certs::CertsInit::new(dir.join(name)).with_worker_count(1)).unwrap()
}

/// VALID (replica 2) with `[tls]` instead of `insecure = true`.
fn with_tls(ca: &str, cert: &str, key: &str) -> String {
    format!(
        "{}\n[tls]\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n",
        VALID.replace("insecure = true\n", "")
    )
}

fn replica_2_tls() -> String {
    with_tls(
        "certs/ca.pem",
        "certs/replica-2.pem",
        "certs/replica-2-key.pem",
    )
}

#[test]
fn tls_identity_of_this_replica_loads() {
    let dir = tempfile::tempdir().unwrap();
    dev_certs(dir.path(), "certs");
    let c = parse(dir.path(), &replica_2_tls(), &[]).unwrap();
    assert!(!c.insecure);
    let certs = dir.path().join("certs");
    assert_eq!(
        c.tls,
        Some(TlsPaths {
            ca: certs.join("ca.pem"),
            cert: certs.join("replica-2.pem"),
            key: certs.join("replica-2-key.pem"),
        })
    );
    c.validate().unwrap();
}

#[test]
fn tls_paths_resolve_against_the_config_directory() {
    let dir = tempfile::tempdir().unwrap();
    dev_certs(dir.path(), "etc/certs");
    let file = write_file(dir.path(), "etc/scaleout/m2.toml", &{
        with_tls(
            "../certs/ca.pem",
            "../certs/replica-2.pem",
            "../certs/replica-2-key.pem",
        )
    });
    let c = load_with_env(&file, &[], std::iter::empty()).unwrap();
    let tls = c.tls.unwrap();
    let conf = dir.path().join("etc/scaleout");
    assert_eq!(tls.ca, conf.join("../certs/ca.pem"));
    assert_eq!(tls.cert, conf.join("../certs/replica-2.pem"));
    assert_eq!(tls.key, conf.join("../certs/replica-2-key.pem"));
    assert!(tls.ca.is_absolute() && tls.ca.is_file());

    // From the environment or --set: relative to the current directory, like data_dir.
    let cwd = std::env::current_dir().unwrap();
    let env = vec![(
        "SCALEOUT_TLS__CA".to_string(),
        "no-such-dir/ca.pem".to_string(),
    )];
    let err = load_with_env(&file, &[], env).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.key(), Some("tls.ca"), "{msg}");
    assert!(
        msg.contains(&cwd.join("no-such-dir/ca.pem").display().to_string()),
        "{msg}"
    );
    assert!(
        msg.contains("environment variable SCALEOUT_TLS__CA"),
        "{msg}"
    );
    let err = load_with_env(
        &file,
        &sets(&["tls.key=no-such-dir/k.pem"]),
        std::iter::empty(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.key(), Some("tls.key"), "{msg}");
    assert!(
        msg.contains(&cwd.join("no-such-dir/k.pem").display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("set by --set tls.key="), "{msg}");
}

#[test]
fn insecure_and_tls_conflict() {
    let dir = tempfile::tempdir().unwrap();
    dev_certs(dir.path(), "certs");
    let text = format!("insecure = true\n{}", replica_2_tls());
    let err = parse(dir.path(), &text, &[]).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.key(), Some("insecure"), "{msg}");
    assert!(msg.contains("remove [tls] for plaintext"), "{msg}");
    assert!(msg.contains("insecure = false"), "{msg}");
    // Also when [tls] is incomplete: the conflict is the first thing to fix.
    let text = format!("{VALID}\n[tls]\nca = \"certs/ca.pem\"\n");
    let err = parse(dir.path(), &text, &[]).unwrap_err();
    assert_eq!(err.key(), Some("insecure"), "{err}");
    // And via an override.
    let err = parse(dir.path(), &replica_2_tls(), &["insecure=true"]).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.key(), Some("insecure"), "{msg}");
    assert!(msg.contains("set by --set insecure=true"), "{msg}");
}

#[test]
fn missing_tls_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    dev_certs(dir.path(), "certs");
    for missing in ["ca", "cert", "key"] {
        let text = replica_2_tls()
            .lines()
            .filter(|line| !line.starts_with(&format!("{missing} = ")))
            .collect::<Vec<_>>()
            .join("\n");
        let err = parse(dir.path(), &text, &[]).unwrap_err();
        let msg = err.to_string();
        let key = format!("tls.{missing}");
        assert_eq!(err.key(), Some(key.as_str()), "{msg}");
        assert!(msg.contains("is missing"), "{msg}");
    }
    let err = parse(dir.path(), &replica_2_tls(), &["tls.key= "]).unwrap_err();
    assert_eq!(err.key(), Some("tls.key"), "{err}");
    let err = parse(
        dir.path(),
        &format!("{}keyfile = \"k.pem\"\n", replica_2_tls()),
        &[],
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("unknown key `tls.keyfile`"),
        "{err}"
    );
}

#[test]
fn certificate_of_another_replica_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    dev_certs(dir.path(), "certs");
    let err = parse(dir.path(), &replica_2_tls(), &["id=1"]).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.key(), Some("tls.cert"), "{msg}");
    assert!(msg.contains("replica-2.pem"), "{msg}");
    assert!(msg.contains("is for scaleout://replica/2"), "{msg}");
    assert!(msg.contains("this is replica 1"), "{msg}");
    assert!(msg.contains("use replica-1.pem"), "{msg}");
    assert!(msg.contains("scaleout://replica/1"), "{msg}");

    // A worker's certificate is not a replica's either.
    let worker = std::fs::read_dir(dir.path().join("certs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.starts_with("worker-") && !n.ends_with("-key.pem"))
        .unwrap();
    let stem = worker.trim_end_matches(".pem");
    let text = with_tls(
        "certs/ca.pem",
        &format!("certs/{stem}.pem"),
        &format!("certs/{stem}-key.pem"),
    );
    let err = parse(dir.path(), &text, &[]).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.key(), Some("tls.cert"), "{msg}");
    assert!(msg.contains("is for scaleout://worker/"), "{msg}");
}

#[test]
fn certificate_from_another_ca_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    dev_certs(dir.path(), "certs");
    dev_certs(dir.path(), "other");
    let text = with_tls(
        "certs/ca.pem",
        "other/replica-2.pem",
        "other/replica-2-key.pem",
    );
    let err = parse(dir.path(), &text, &[]).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.key(), Some("tls.cert"), "{msg}");
    assert!(msg.contains("wrong CA"), "{msg}");
    assert!(msg.contains("other/replica-2.pem"), "{msg}");

    // The key of another certificate.
    let text = with_tls(
        "certs/ca.pem",
        "certs/replica-2.pem",
        "certs/replica-1-key.pem",
    );
    let err = parse(dir.path(), &text, &[]).unwrap_err();
    assert_eq!(err.key(), Some("tls.key"), "{err}");
    assert!(err.to_string().contains("does not match"), "{err}");
}

#[test]
fn missing_tls_files_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    dev_certs(dir.path(), "certs");
    for (key, text) in [
        (
            "tls.ca",
            with_tls(
                "certs/absent.pem",
                "certs/replica-2.pem",
                "certs/replica-2-key.pem",
            ),
        ),
        (
            "tls.cert",
            with_tls(
                "certs/ca.pem",
                "certs/absent.pem",
                "certs/replica-2-key.pem",
            ),
        ),
        (
            "tls.key",
            with_tls("certs/ca.pem", "certs/replica-2.pem", "certs/absent.pem"),
        ),
        (
            "tls.cert",
            with_tls(
                "certs/ca.pem",
                "certs/replica-2-key.pem",
                "certs/replica-2-key.pem",
            ),
        ),
    ] {
        let err = parse(dir.path(), &text, &[]).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.key(), Some(key), "{msg}");
        assert!(msg.contains(&format!("`{key}`")), "{msg}");
        assert!(
            msg.contains(&dir.path().join("certs").display().to_string()),
            "{msg}"
        );
    }
    let err = parse(
        dir.path(),
        &with_tls(
            "certs/absent.pem",
            "certs/replica-2.pem",
            "certs/replica-2-key.pem",
        ),
        &[],
    )
    .unwrap_err();
    assert!(err.to_string().contains("cannot read the ca file"), "{err}");
}

#[test]
fn unknown_keys_are_named_with_their_full_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "m.toml",
        &VALID.replace("heartbeat_interval_ms", "heartbeat_ms"),
    );
    let err = load_with_env(&file, &[], std::iter::empty()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ConfigError::UnknownKey { .. }), "{msg}");
    assert!(msg.contains("unknown key `raft.heartbeat_ms`"), "{msg}");
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    assert!(msg.contains("`heartbeat_interval_ms`"), "{msg}");

    let text = VALID.replacen(
        "peer = \"127.0.0.1:7202\"",
        "peer = \"127.0.0.1:7202\"\nadress = \"x\"",
        1,
    );
    let err = parse(dir.path(), &text, &[]).unwrap_err();
    assert!(
        err.to_string().contains("unknown key `members[1].adress`"),
        "{err}"
    );

    let err = parse(dir.path(), &VALID.replace("[raft]", "[rafts]"), &[]).unwrap_err();
    assert!(err.to_string().contains("unknown key `rafts`"), "{err}");

    let err = parse(dir.path(), VALID, &["raft.heartbeat=1"]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("unknown key `raft.heartbeat`"), "{msg}");
    assert!(msg.contains("set by --set raft.heartbeat=1"), "{msg}");

    let err = parse(dir.path(), VALID, &["raft={heartbeat=1}"]).unwrap_err();
    assert!(
        err.to_string().contains("unknown key `raft.heartbeat`"),
        "{err}"
    );
}

#[test]
fn malformed_overrides_and_syntax_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (arg, fragment) in [
        ("raft.heartbeat_interval_ms", "key.path=value"),
        ("raft..x=1", "not a key path"),
        ("members.api=x:1", "pick an entry by index"),
        ("members[7].api=x:1", "no index 7"),
        ("id.x=1", "single value"),
    ] {
        let err = parse(dir.path(), VALID, &[arg]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(arg) || msg.contains("members"), "{arg}: {msg}");
        assert!(msg.contains(fragment), "{arg}: {msg}");
    }
    let err = parse(dir.path(), "id = = 1", &[]).unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    assert!(err.to_string().contains("line 1"), "{err}");

    let err = load_with_env(&dir.path().join("absent.toml"), &[], std::iter::empty()).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    assert!(err.to_string().contains("absent.toml"), "{err}");
}

#[test]
fn env_and_set_overrides_apply_in_precedence_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "conf/m2.toml", VALID);
    let abs = dir.path().join("elsewhere");
    let env = |extra: &[(&str, &str)]| {
        let mut vars = vec![
            (
                "SCALEOUT_RAFT__HEARTBEAT_INTERVAL_MS".to_string(),
                "110".to_string(),
            ),
            ("SCALEOUT_DATA_DIR".to_string(), abs.display().to_string()),
            (
                "SCALEOUT_PROPOSALS__MAX_BATCH".to_string(),
                "64".to_string(),
            ),
            (
                "SCALEOUT_MEMBERS__1__API".to_string(),
                "localhost:7302".to_string(),
            ),
            // Used by the CLI or unrelated: ignored.
            ("SCALEOUT_ENDPOINTS".to_string(), "a:1,b:2".to_string()),
            ("SCALEOUT_LOG".to_string(), "debug".to_string()),
            ("SCALEOUT_CONFIG".to_string(), "/nowhere.toml".to_string()),
            ("SCALEOUT_SOMETHING_ELSE".to_string(), "1".to_string()),
            // The worker's.
            (
                "SCALEOUT_WORKER_TLS__CERT".to_string(),
                "/w.pem".to_string(),
            ),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        vars
    };

    let c = load_with_env(&file, &[], env(&[])).unwrap();
    assert_eq!(c.raft.heartbeat_interval_ms, 110, "env beats the file");
    // A nested key path is this config's: a typo in it is an error naming the variable and
    // the key, as the same typo in the file or --set is.
    let err = load_with_env(
        &file,
        &[],
        env(&[("SCALEOUT_RAFT__HEARTBEAT_INTERVL_MS", "100")]),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("SCALEOUT_RAFT__HEARTBEAT_INTERVL_MS")
            && text.contains("raft.heartbeat_intervl_ms")
            && text.contains("heartbeat_interval_ms"),
        "{text}"
    );
    assert_eq!(c.proposals.max_batch, 64);
    assert_eq!(
        c.data_dir,
        dir.path().canonicalize().unwrap().join("elsewhere")
    );
    assert_eq!(c.me().api, "localhost:7302");
    assert_eq!(
        c.api_listen, "localhost:7302",
        "listen default follows the overridden member"
    );

    let c = load_with_env(
        &file,
        &sets(&[
            "raft.heartbeat_interval_ms=120",
            "proposals.max_batch=32",
            "proposals.max_batch=16",
        ]),
        env(&[]),
    )
    .unwrap();
    assert_eq!(c.raft.heartbeat_interval_ms, 120, "--set beats env");
    assert_eq!(c.proposals.max_batch, 16, "later --set wins");

    // A whole-array env override applies before an indexed one.
    let c = load_with_env(
        &file,
        &[],
        env(&[(
            "SCALEOUT_MEMBERS",
            r#"[{id=2,api="127.0.0.1:7402",peer="127.0.0.1:7502"},{id=3,api="127.0.0.1:7403",peer="127.0.0.1:7503"}]"#,
        )]),
    )
    .unwrap();
    assert_eq!(c.members.len(), 2);
    assert_eq!(c.members[1].api, "localhost:7302");

    // Bad values name the variable that set them.
    let err = load_with_env(
        &file,
        &[],
        env(&[("SCALEOUT_RAFT__ELECTION_TIMEOUT_MAX_MS", "200")]),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.key(), Some("raft.election_timeout_max_ms"), "{msg}");
    assert!(
        msg.contains("environment variable SCALEOUT_RAFT__ELECTION_TIMEOUT_MAX_MS"),
        "{msg}"
    );
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    // A rule comparing two keys also names the source of the other one.
    let err =
        load_with_env(&file, &sets(&["raft.heartbeat_interval_ms=250"]), env(&[])).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.key(), Some("raft.election_timeout_min_ms"), "{msg}");
    assert!(
        msg.contains("(raft.heartbeat_interval_ms set by --set raft.heartbeat_interval_ms=250)"),
        "{msg}"
    );
    let err = load_with_env(&file, &[], env(&[("SCALEOUT_ID", "two")])).unwrap_err();
    assert!(err.to_string().contains("SCALEOUT_ID"), "{err}");
}

#[test]
fn string_keys_take_raw_text_and_literals_parse() {
    assert_eq!(parse_value("150", Kind::Int), Value::Integer(150));
    assert_eq!(parse_value("true", Kind::Bool), Value::Boolean(true));
    assert_eq!(parse_value("150", Kind::Str), Value::String("150".into()));
    assert_eq!(
        parse_value("\"a b\"", Kind::Str),
        Value::String("a b".into())
    );
    assert_eq!(
        parse_value("/var/lib/x", Kind::Str),
        Value::String("/var/lib/x".into())
    );
    assert_eq!(
        parse_value("1\nx = 2", Kind::Int),
        Value::String("1\nx = 2".into())
    );
    assert!(matches!(parse_value("[1, 2]", Kind::Int), Value::Array(_)));
    assert_eq!(parse_key("members[0].api"), parse_key("members.0.api"));
    assert_eq!(
        parse_key("members[1].peer").unwrap(),
        vec![
            Seg::Key("members".into()),
            Seg::Index(1),
            Seg::Key("peer".into())
        ]
    );
    assert_eq!(parse_key(""), None);
    assert_eq!(parse_key("a..b"), None);
}

#[test]
fn relative_data_dir_resolves_against_the_config_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "etc/scaleout/m2.toml",
        &VALID.replace("data/m2", "../../var/m2"),
    );
    let c = load_with_env(&file, &[], std::iter::empty()).unwrap();
    assert_eq!(
        c.data_dir,
        dir.path().canonicalize().unwrap().join("var/m2")
    );
    assert!(!c.data_dir.exists(), "loading creates nothing");
}

/// The schema used for key checks and overrides lists exactly the structs' fields.
#[test]
fn schema_matches_structs() {
    fn leaves(value: &Value, prefix: String, out: &mut BTreeSet<String>) {
        match value {
            Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(v, key, out);
                }
            }
            Value::Array(items) => {
                for item in items {
                    leaves(item, format!("{prefix}[]"), out);
                }
            }
            _ => {
                out.insert(prefix);
            }
        }
    }
    fn schema(fields: &[Field], prefix: &str, out: &mut BTreeSet<String>) {
        for f in fields {
            let key = if prefix.is_empty() {
                f.name.to_string()
            } else {
                format!("{prefix}.{}", f.name)
            };
            match f.kind {
                Kind::Table(inner) => schema(inner, &key, out),
                Kind::TableArray(inner) => schema(inner, &format!("{key}[]"), out),
                _ => {
                    out.insert(key);
                }
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = parse(dir.path(), VALID, &[]).unwrap();
    // Optional tables are left out when unset; fill them so their keys are compared too.
    c.tls = Some(TlsPaths::in_dir(dir.path(), "replica-2"));
    c.ssisdb = SsisdbSettings {
        connection_string: Some("Server=h;User Id=u".into()),
        password_file: Some(dir.path().join("pw")),
        password_env: Some("PW".into()),
        ca: Some(dir.path().join("ca.pem")),
        ..SsisdbSettings::default()
    };
    c.peer_routes = vec![PeerRoute {
        id: 3,
        address: "127.0.0.1:7303".into(),
    }];
    c.metrics_listen = Some("127.0.0.1:9464".into());
    c.console_listen = Some("127.0.0.1:7443".into());
    c.workers.test_clock_offset_file = Some(dir.path().join("clock-offset"));
    let mut from_structs = BTreeSet::new();
    leaves(
        &Value::try_from(&c).unwrap(),
        String::new(),
        &mut from_structs,
    );
    let mut from_schema = BTreeSet::new();
    schema(TOP, "", &mut from_schema);
    assert_eq!(from_structs, from_schema);
}

#[test]
fn peer_routes_parse() {
    let dir = tempfile::tempdir().unwrap();
    let c = parse(
        dir.path(),
        &format!("{VALID}\n[[peer_routes]]\nid = 1\naddress = \"10.0.0.9:7201\"\n"),
        &[],
    )
    .unwrap();
    assert_eq!(
        c.peer_routes,
        vec![PeerRoute {
            id: 1,
            address: "10.0.0.9:7201".into()
        }]
    );
}

const SSISDB_CS: &str =
    "Server=tcp:ag-listener.corp,1433;Database=SSISDB;User Id=scaleout_master;Encrypt=true";

#[test]
fn ssisdb_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let c = parse(dir.path(), VALID, &[]).unwrap();
    let s = &c.ssisdb;
    assert_eq!(*s, SsisdbSettings::default());
    assert!(!s.enabled());
    assert_eq!(s.connection_string, None);
    assert_eq!(s.password_file, None);
    assert_eq!(s.password_env, None);
    assert_eq!(s.ca, None);
    assert_eq!(s.max_outbox_events, 100_000);
    assert_eq!(s.retention_secs, 604_800);
    assert_eq!(s.retention(), Duration::from_secs(7 * 24 * 3600));
    assert_eq!(s.batch_events, 1_000);
    assert_eq!(s.connect_timeout(), Duration::from_millis(15_000));
    assert_eq!(s.ship_interval(), Duration::from_millis(200));
    let err = s.password().unwrap_err();
    assert!(err.contains("ssisdb.password_file"), "{err}");
    // Blank is not configured either.
    let c = parse(dir.path(), VALID, &["ssisdb.connection_string=\" \""]).unwrap();
    assert!(!c.ssisdb.enabled());
    assert!(SsisdbSettings {
        connection_string: Some(SSISDB_CS.into()),
        ..SsisdbSettings::default()
    }
    .enabled());
}

/// Each rule: overrides applied to VALID, the key the error must name, and a fragment of
/// its message.
#[test]
fn each_ssisdb_rule_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let pw = write_file(dir.path(), "pw", "secret\n");
    let empty = write_file(dir.path(), "empty-pw", "\n");
    let absent = dir.path().join("absent");
    let cs = |text: &str| format!("ssisdb.connection_string={text}");
    let pw_file = |path: &Path| format!("ssisdb.password_file={}", path.display());
    let ok_cs = || cs(SSISDB_CS);
    let ok_pw = || pw_file(&pw);
    let cases: Vec<(Vec<String>, &str, &str)> = vec![
        (
            vec!["ssisdb.max_outbox_events=999".into()],
            "ssisdb.max_outbox_events",
            "between 1000 and 100000000",
        ),
        (
            vec!["ssisdb.max_outbox_events=100000001".into()],
            "ssisdb.max_outbox_events",
            "between 1000 and 100000000",
        ),
        (
            vec!["ssisdb.retention_secs=59".into()],
            "ssisdb.retention_secs",
            "between 60 and 31536000",
        ),
        (
            vec!["ssisdb.retention_secs=31536001".into()],
            "ssisdb.retention_secs",
            "between 60 and 31536000",
        ),
        (
            vec!["ssisdb.batch_events=0".into()],
            "ssisdb.batch_events",
            "between 1 and 10000",
        ),
        (
            vec!["ssisdb.batch_events=10001".into()],
            "ssisdb.batch_events",
            "between 1 and 10000",
        ),
        (
            vec!["ssisdb.connect_timeout_ms=99".into()],
            "ssisdb.connect_timeout_ms",
            "between 100 and 300000",
        ),
        (
            vec!["ssisdb.connect_timeout_ms=300001".into()],
            "ssisdb.connect_timeout_ms",
            "between 100 and 300000",
        ),
        (
            vec!["ssisdb.ship_interval_ms=9".into()],
            "ssisdb.ship_interval_ms",
            "between 10 and 60000",
        ),
        (
            vec!["ssisdb.ship_interval_ms=60001".into()],
            "ssisdb.ship_interval_ms",
            "between 10 and 60000",
        ),
        (
            vec![cs("Server=h;User Id=u;Password=hunter2"), ok_pw()],
            "ssisdb.connection_string",
            "the password must not be in the config file; put it in ssisdb.password_file \
             or the variable named by ssisdb.password_env",
        ),
        (
            vec![cs("Server=h; user id = u ;  PWD = hunter2"), ok_pw()],
            "ssisdb.connection_string",
            "must not be in the config file",
        ),
        (
            vec![cs("Database=SSISDB;User Id=u"), ok_pw()],
            "ssisdb.connection_string",
            "names no server",
        ),
        (
            vec![cs("Server=;User Id=u"), ok_pw()],
            "ssisdb.connection_string",
            "names no server",
        ),
        (
            // Read as tiberius reads it: two spaces make another key, which names nothing.
            vec![cs("Network  Address=h;User Id=u"), ok_pw()],
            "ssisdb.connection_string",
            "names no server",
        ),
        (
            vec![cs("Server=tcp:h,1433;Database=SSISDB"), ok_pw()],
            "ssisdb.connection_string",
            "names no SQL login",
        ),
        (
            vec![cs("Server=h;Integrated Security=true"), ok_pw()],
            "ssisdb.connection_string",
            "User Id=",
        ),
        (
            vec![cs("Server=h;User Id=u;hunter2"), ok_pw()],
            "ssisdb.connection_string",
            "a part with no `=`",
        ),
        (
            vec![cs("Server=h;=x;User Id=u"), ok_pw()],
            "ssisdb.connection_string",
            "no key before",
        ),
        (
            vec![cs("Server='h;User Id=u"), ok_pw()],
            "ssisdb.connection_string",
            "never closed",
        ),
        (vec![ok_cs()], "ssisdb.password_file", "is required"),
        (
            vec![ok_cs(), ok_pw(), "ssisdb.password_env=SSISDB_PW".into()],
            "ssisdb.password_env",
            "keep only one",
        ),
        (
            vec![ok_cs(), pw_file(&absent)],
            "ssisdb.password_file",
            "cannot read",
        ),
        (
            vec![ok_cs(), pw_file(dir.path())],
            "ssisdb.password_file",
            "not a regular file",
        ),
        (
            vec![ok_cs(), pw_file(&empty)],
            "ssisdb.password_file",
            "is empty",
        ),
        (
            vec![ok_cs(), "ssisdb.password_env=\"\"".into()],
            "ssisdb.password_env",
            "not an environment variable name",
        ),
        (
            vec![ok_cs(), "ssisdb.password_env=A=B".into()],
            "ssisdb.password_env",
            "not an environment variable name",
        ),
        (
            vec![ok_cs(), ok_pw(), format!("ssisdb.ca={}", absent.display())],
            "ssisdb.ca",
            "cannot read",
        ),
        // Shape errors, caught before deserializing.
        (
            vec!["ssisdb.batch_events=many".into()],
            "ssisdb.batch_events",
            "whole number",
        ),
        (vec!["ssisdb=3".into()], "ssisdb", "a table"),
    ];
    for (overrides, key, fragment) in cases {
        let err = MasterConfig::from_toml_str(VALID, dir.path(), &overrides)
            .expect_err(&format!("{overrides:?} should be rejected"));
        let text = err.to_string();
        assert_eq!(err.key(), Some(key), "{overrides:?}: {text}");
        assert!(text.contains(&format!("`{key}`")), "{overrides:?}: {text}");
        assert!(text.contains(fragment), "{overrides:?}: {text}");
        assert!(text.contains("set by --set"), "{overrides:?}: {text}");
        assert!(!text.contains("hunter2"), "{overrides:?}: {text}");
    }

    // Errors about files name the file.
    let err = parse(dir.path(), VALID, &[&ok_cs(), &pw_file(&absent)]).unwrap_err();
    assert!(
        err.to_string().contains(&absent.display().to_string()),
        "{err}"
    );
    let err = parse(
        dir.path(),
        VALID,
        &[
            &ok_cs(),
            &ok_pw(),
            &format!("ssisdb.ca={}", absent.display()),
        ],
    )
    .unwrap_err();
    assert!(
        err.to_string().contains(&absent.display().to_string()),
        "{err}"
    );

    // Without a connection string the password and CA settings are not looked at.
    let c = parse(
        dir.path(),
        VALID,
        &[
            &pw_file(&absent),
            "ssisdb.password_env=SSISDB_PW",
            &format!("ssisdb.ca={}", absent.display()),
        ],
    )
    .unwrap();
    assert!(!c.ssisdb.enabled());

    // Accepted spellings: other server and login keys, quoted values, a trailing `;`.
    for text in [
        SSISDB_CS,
        "Data Source=tcp:h,1433;UID=u",
        "address=h;user=u;",
        "Addr = h ; User ID = u",
        "Network Address=h;Username=u",
        "Server=\"tcp:h,1433\";User Id='o''brien;x';Application Name=\"a \"\"b\"\"\"",
    ] {
        let c = parse(dir.path(), VALID, &[&cs(text), &ok_pw()])
            .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(c.ssisdb.enabled());
        assert_eq!(c.ssisdb.password().unwrap(), "secret");
    }
}

#[test]
fn ssisdb_connection_string_parses_into_pairs() {
    // Read as tiberius reads it when it connects (keys lower-cased, a quoted value keeps its
    // `;`), so a string that loads is a string that connects.
    let pairs = parse_connection_string(
        " Server = tcp:h,1433 ;;USER ID='o;x'; Database=\"SSISDB\" ;Encrypt=true;Username=u",
    );
    assert!(pairs.is_err(), "an empty part between `;;`: {pairs:?}");
    let pairs = parse_connection_string(
        " Server = tcp:h,1433 ;USER ID='o;x'; Database=\"SSISDB\" ;Encrypt=true",
    )
    .unwrap();
    let expect = [
        ("database", "SSISDB"),
        ("encrypt", "true"),
        ("server", "tcp:h,1433"),
        ("user id", "o;x"),
    ];
    assert_eq!(
        pairs,
        expect
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
    );
    assert_eq!(parse_connection_string("").unwrap(), vec![]);
    // The errors never repeat the text, or a character of it, which may hold a password.
    for bad in ["Server=h;hunter2", "Server=h;User Id=u;Secret=hünter2x"] {
        let err = parse_connection_string(bad).unwrap_err();
        assert!(!err.contains("hunter2") && !err.contains('ü'), "{err}");
    }
}

#[test]
fn ssisdb_login_keys_are_the_ones_tiberius_reads() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "secret\n").unwrap();
    for login in ["User Id", "UID", "User", "Username"] {
        let text = format!("Server=h;{login}=u");
        let c = parse(
            dir.path(),
            VALID,
            &[
                &format!("ssisdb.connection_string={text}"),
                &format!("ssisdb.password_file={}", pw.display()),
            ],
        )
        .unwrap_or_else(|e| panic!("{text}: {e}"));
        // What loads connects: the login is found where tiberius finds it.
        let target =
            crate::ssisdb::connect::target(&c.ssisdb).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(target.user, "u", "{text}");
    }
}

#[test]
fn ssisdb_connection_string_override_is_hidden_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = parse(
        dir.path(),
        VALID,
        &["ssisdb.connection_string=Server=h;User Id=u;Password=hunter2"],
    )
    .unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.key(), Some("ssisdb.connection_string"), "{msg}");
    assert!(
        msg.contains("set by --set ssisdb.connection_string=<hidden>"),
        "{msg}"
    );
    assert!(!msg.contains("hunter2"), "{msg}");
    let err = parse(
        dir.path(),
        VALID,
        &["ssisdb={connection_string=\"Server=h;User Id=u;Pwd=hunter2\"}"],
    )
    .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let err = parse(dir.path(), VALID, &["ssisdb=Server=h;Pwd=hunter2"]).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.key(), Some("ssisdb"), "{msg}");
    assert!(msg.contains("found a string"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
    // From the file: the message does not quote the string either.
    let text =
        format!("{VALID}\n[ssisdb]\nconnection_string = \"Server=h;User Id=u;Password=hunter2\"\n");
    let err = parse(dir.path(), &text, &[]).unwrap_err();
    assert_eq!(err.key(), Some("ssisdb.connection_string"), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn ssisdb_password_from_a_file_relative_to_the_config_directory() {
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "etc/secrets/ssisdb-password", "s3 cret\r\n");
    dev_certs(dir.path(), "etc/certs");
    let file = write_file(
        dir.path(),
        "etc/scaleout/m2.toml",
        &format!(
            "{VALID}\n[ssisdb]\nconnection_string = \"{SSISDB_CS}\"\n\
             password_file = \"../secrets/ssisdb-password\"\nca = \"../certs/ca.pem\"\n"
        ),
    );
    let c = load_with_env(&file, &[], std::iter::empty()).unwrap();
    let conf = dir.path().join("etc/scaleout");
    assert_eq!(
        c.ssisdb.password_file,
        Some(conf.join("../secrets/ssisdb-password"))
    );
    assert_eq!(c.ssisdb.ca, Some(conf.join("../certs/ca.pem")));
    assert!(c.ssisdb.enabled());
    // One trailing line break is dropped; other whitespace is part of the password.
    assert_eq!(c.ssisdb.password().unwrap(), "s3 cret");
    let settings = |path: PathBuf| SsisdbSettings {
        password_file: Some(path),
        ..c.ssisdb.clone()
    };
    let two = write_file(dir.path(), "two-lines", "pw\n\n");
    assert_eq!(settings(two).password().unwrap(), "pw\n");
    let absent = dir.path().join("absent");
    let err = settings(absent.clone()).password().unwrap_err();
    assert!(err.contains(&absent.display().to_string()), "{err}");
    assert!(err.contains("password"), "{err}");

    // From --set or the environment: relative to the current directory.
    let cwd = std::env::current_dir().unwrap();
    let err = load_with_env(
        &file,
        &sets(&["ssisdb.password_file=no-such-dir/pw"]),
        std::iter::empty(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.key(), Some("ssisdb.password_file"), "{msg}");
    assert!(
        msg.contains(&cwd.join("no-such-dir/pw").display().to_string()),
        "{msg}"
    );
    let env = vec![(
        "SCALEOUT_SSISDB__CA".to_string(),
        "no-such-dir/ca.pem".to_string(),
    )];
    let err = load_with_env(&file, &[], env).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.key(), Some("ssisdb.ca"), "{msg}");
    assert!(
        msg.contains(&cwd.join("no-such-dir/ca.pem").display().to_string()),
        "{msg}"
    );
    assert!(
        msg.contains("environment variable SCALEOUT_SSISDB__CA"),
        "{msg}"
    );
}

#[test]
fn ssisdb_password_from_an_environment_variable() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("SCALEOUT_TEST_SSISDB_PASSWORD_{}", std::process::id());
    let c = parse(
        dir.path(),
        VALID,
        &[
            &format!("ssisdb.connection_string={SSISDB_CS}"),
            &format!("ssisdb.password_env={name}"),
        ],
    )
    .unwrap();
    assert_eq!(c.ssisdb.password_env.as_deref(), Some(name.as_str()));
    // Not set: an error at connect time, naming the variable.
    let err = c.ssisdb.password().unwrap_err();
    assert!(err.contains(&name) && err.contains("is not set"), "{err}");
    std::env::set_var(&name, "");
    let err = c.ssisdb.password().unwrap_err();
    assert!(err.contains(&name) && err.contains("is empty"), "{err}");
    std::env::set_var(&name, " pass word\n");
    assert_eq!(c.ssisdb.password().unwrap(), " pass word\n");
    std::env::remove_var(&name);
}

#[test]
fn ssisdb_table_parses() {
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "secrets/ssisdb-password", "pw\n");
    dev_certs(dir.path(), "certs");
    let text = format!(
        r#"{VALID}
[ssisdb]
connection_string = "{SSISDB_CS}"
password_file = "secrets/ssisdb-password"
ca = "certs/ca.pem"
max_outbox_events = 250000
retention_secs = 86400
batch_events = 500
connect_timeout_ms = 5000
ship_interval_ms = 50
"#
    );
    let c = parse(dir.path(), &text, &[]).unwrap();
    assert_eq!(
        c.ssisdb,
        SsisdbSettings {
            connection_string: Some(SSISDB_CS.into()),
            password_file: Some(dir.path().join("secrets/ssisdb-password")),
            password_env: None,
            ca: Some(dir.path().join("certs/ca.pem")),
            max_outbox_events: 250_000,
            retention_secs: 86_400,
            batch_events: 500,
            connect_timeout_ms: 5_000,
            ship_interval_ms: 50,
            rows_per_statement: 1_000,
            intake_interval_ms: 2_000,
        }
    );
    assert_eq!(c.ssisdb.password().unwrap(), "pw");
    c.validate().unwrap();

    // Overrides reach into the table; unknown keys are named with their full path.
    let c = parse(dir.path(), &text, &["ssisdb.batch_events=10000"]).unwrap();
    assert_eq!(c.ssisdb.batch_events, 10_000);
    let err = parse(dir.path(), &format!("{text}password = \"x\"\n"), &[]).unwrap_err();
    assert!(
        err.to_string().contains("unknown key `ssisdb.password`"),
        "{err}"
    );
}

/// Lexically resolves `.` and `..`.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn sample_local_configs_agree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let local = root.join("deploy/config/local");
    let scratch = tempfile::tempdir().unwrap();
    // The files name development certificates made by `scaleout certs init`, which are
    // not in the repository: make a set in the scratch directory instead.
    let certs = scratch.path().join("certs");
    crate::certs::init(&crate::certs::CertsInit::new(&certs)).unwrap();
    let mut member_lists = Vec::new();
    for n in 1..=3u64 {
        let file = local.join(format!("master-{n}.toml"));
        let text = std::fs::read_to_string(&file).unwrap();
        let raw: Table = toml::from_str(&text).unwrap();
        // Keep the test hermetic: data_dir and the certificates come from a scratch
        // directory ...
        let data = scratch.path().join(format!("master-{n}"));
        let mut set = vec![format!("data_dir={}", data.display())];
        let scratch_tls = TlsPaths::in_dir(&certs, &format!("replica-{n}"));
        if raw.contains_key("tls") {
            set.extend([
                format!("tls.ca={}", scratch_tls.ca.display()),
                format!("tls.cert={}", scratch_tls.cert.display()),
                format!("tls.key={}", scratch_tls.key.display()),
            ]);
        }
        let c = load_with_env(&file, &set, std::iter::empty())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(c.id, n, "{} has the id of its name", file.display());
        assert_eq!(c.me().api, format!("127.0.0.1:710{n}"));
        assert_eq!(c.me().peer, format!("127.0.0.1:720{n}"));
        assert_eq!(c.api_listen, c.me().api);
        assert_eq!(c.peer_listen, c.me().peer);
        match &c.tls {
            Some(tls) => {
                assert!(!c.insecure);
                assert_eq!(*tls, scratch_tls);
            }
            None => assert!(c.insecure),
        }
        member_lists.push(c.members.clone());
        // ... while the file's own data_dir points into <repo>/target/scaleout-local ...
        let dir = raw["data_dir"].as_str().unwrap();
        assert_eq!(
            normalize(&local.join(dir)),
            normalize(&root.join(format!("target/scaleout-local/master-{n}")))
        );
        // ... and its certificates are this replica's, in the directory next to it.
        if let Some(Value::Table(tls)) = raw.get("tls") {
            let expected = TlsPaths::in_dir(&local.join("certs"), &format!("replica-{n}"));
            for (key, path) in [
                ("ca", &expected.ca),
                ("cert", &expected.cert),
                ("key", &expected.key),
            ] {
                let value = tls[key].as_str().unwrap();
                assert_eq!(normalize(&local.join(value)), *path, "{}", file.display());
            }
        }
    }
    assert_eq!(member_lists[0].len(), 3);
    assert!(
        member_lists.iter().all(|list| *list == member_lists[0]),
        "{member_lists:?}"
    );
}

#[test]
fn known_keys_are_the_schema() {
    let keys = known_keys();
    for key in [
        "id",
        "data_dir",
        "metrics_listen",
        "tls.cert",
        "members",
        "members[].api",
        "peer_routes[].address",
        "raft.heartbeat_interval_ms",
        "ssisdb.password_file",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
    }
    for key in &keys {
        // `members[].id` is set as `members[0].id`; every key names a value, tables
        // (`raft`, `tls`) are not keys of their own.
        let segs = parse_key(&key.replace("[]", "[0]")).expect(key);
        match lookup(TOP, &segs) {
            Ok(Kind::Table(_)) | Err(_) => panic!("{key} is not a key of the schema"),
            Ok(Kind::TableArray(_)) => assert!(!key.contains('.'), "{key}"),
            Ok(_) => {}
        }
    }
    let mut unique = keys.clone();
    unique.dedup();
    assert_eq!(unique, keys, "sorted, each once");
}
