//! A replica given a bad config exits with code 2 and an error that names the key.

use std::path::Path;
use std::process::Command;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_scaleout"))
}

const MEMBERS: &str = r#"
[[members]]
id = 1
api = "127.0.0.1:17101"
peer = "127.0.0.1:17201"
[[members]]
id = 2
api = "127.0.0.1:17102"
peer = "127.0.0.1:17202"
"#;

/// Runs `scaleout master` on `config` and returns (exit code, stderr).
fn run_master(config: &str, dir: &Path) -> (Option<i32>, String) {
    let path = dir.join("master.toml");
    std::fs::write(&path, config).expect("write config");
    let output = Command::new(binary())
        .args(["master", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .output()
        .expect("run scaleout master");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn each_config_mistake_exits_2_and_names_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let base = format!(
        "id = 1\ndata_dir = \"{}\"\ninsecure = true\n",
        data.display()
    );
    let unwritable = dir.path().join("file-not-dir");
    std::fs::write(&unwritable, "x").expect("write");
    let cases: Vec<(String, &str)> = vec![
        (format!("{base}heartbeat_ms = 5\n{MEMBERS}"), "heartbeat_ms"),
        (format!("{base}{MEMBERS}[raft]\nheartbeat_ms = 5\n"), "raft.heartbeat_ms"),
        (
            format!("{base}{MEMBERS}[[members]]\nid = 2\napi = \"127.0.0.1:17103\"\npeer = \"127.0.0.1:17203\"\n"),
            "members",
        ),
        (
            format!("{base}{MEMBERS}[[members]]\nid = 3\napi = \"127.0.0.1:17101\"\npeer = \"127.0.0.1:17203\"\n"),
            "127.0.0.1:17101",
        ),
        (format!("id = 9\ndata_dir = \"{}\"\ninsecure = true\n{MEMBERS}", data.display()), "id"),
        (
            format!("id = 1\ndata_dir = \"{}\"\ninsecure = true\n{MEMBERS}", unwritable.join("sub").display()),
            "data_dir",
        ),
        (format!("{base}{MEMBERS}[raft]\nheartbeat_interval_ms = 0\n"), "heartbeat_interval_ms"),
        (
            format!("{base}{MEMBERS}[raft]\nelection_timeout_min_ms = 900\nelection_timeout_max_ms = 500\n"),
            "election_timeout_max_ms",
        ),
        (
            format!("{base}{MEMBERS}[raft]\nheartbeat_interval_ms = 300\nelection_timeout_min_ms = 400\n"),
            "election_timeout_min_ms",
        ),
        (format!("{base}{MEMBERS}").replace("127.0.0.1:17202", "127.0.0.1:port"), "members[1].peer"),
        (format!("{base}[raft\n"), "master.toml"),
    ];
    for (config, key) in cases {
        let (code, stderr) = run_master(&config, dir.path());
        assert_eq!(code, Some(2), "exit code for a mistake in {key}: {stderr}");
        assert!(
            stderr.contains(key),
            "the error should name {key:?}: {stderr}"
        );
    }
}

#[test]
fn a_missing_config_file_exits_2_and_names_the_file() {
    let output = Command::new(binary())
        .args(["master", "--config", "/nonexistent/master.toml"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/master.toml"));
}

#[test]
fn a_corrupt_data_dir_exits_2_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("sled")).expect("mkdir");
    std::fs::write(data.join("sled").join("conf"), b"\xff\xfe garbage").expect("corrupt");
    std::fs::write(
        data.join("sled").join("db"),
        b"\x00\x01\x02 not a sled file",
    )
    .expect("corrupt");
    let config = format!(
        "id = 1\ndata_dir = \"{}\"\ninsecure = true\n{MEMBERS}",
        data.display()
    );
    let (code, stderr) = run_master(&config, dir.path());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&data.join("sled").display().to_string()),
        "{stderr}"
    );
}

#[test]
fn client_commands_exit_3_when_the_cluster_is_unreachable() {
    let output = Command::new(binary())
        .args([
            "job",
            "get",
            "1",
            "--endpoints",
            "127.0.0.1:1",
            "--timeout-secs",
            "1",
            "--insecure",
        ])
        .output()
        .expect("run");
    assert_eq!(
        output.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Two local ports nothing listens on.
fn closed_ports() -> [u16; 2] {
    let listeners = [
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind"),
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind"),
    ];
    listeners.map(|l| l.local_addr().expect("address").port())
}

/// Nothing listens on any endpoint (a stopped cluster, wrong ports): the CLI says so within
/// 2 s, naming each endpoint's error, instead of retrying for its whole 15 s deadline.
#[test]
fn a_cluster_refusing_every_connection_fails_fast_naming_each_endpoint() {
    let [a, b] = closed_ports();
    let endpoints = format!("127.0.0.1:{a},127.0.0.1:{b}");
    let started = std::time::Instant::now();
    let output = Command::new(binary())
        .args(["job", "get", "1", "--insecure", "--endpoints", &endpoints])
        .output()
        .expect("run");
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        elapsed < std::time::Duration::from_secs(2),
        "{elapsed:?}: {stderr}"
    );
    for port in [a, b] {
        assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    }
    assert!(
        stderr.contains("no replica accepts connections"),
        "{stderr}"
    );

    // A submit that reached no replica created no job: nothing to retry with a key.
    let output = Command::new(binary())
        .args(["job", "submit", "--insecure", "--endpoints", &endpoints])
        .args(["--", "echo"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(!stderr.contains("outcome is unknown"), "{stderr}");
}

/// An endpoint without a port (or with a bad one) is a usage error before any call.
#[test]
fn an_endpoint_without_a_port_is_a_usage_error_at_once() {
    for (endpoint, says) in [
        ("127.0.0.1", "no port"),
        ("127.0.0.1:99999", "not a port"),
        (":7101", "no host"),
    ] {
        let started = std::time::Instant::now();
        let output = Command::new(binary())
            .args(["job", "get", "1", "--insecure", "--endpoints", endpoint])
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{endpoint}: {stderr}");
        assert!(
            stderr.contains(says) && stderr.contains(endpoint),
            "{stderr}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}

/// `--max-attempts` outside 1–100 is refused, naming the range (0 used to mean 1).
#[test]
fn max_attempts_outside_its_range_is_refused() {
    for attempts in ["0", "101"] {
        let output = Command::new(binary())
            .args(["job", "submit", "--insecure", "--endpoints", "127.0.0.1:1"])
            .args(["--max-attempts", attempts, "--", "echo"])
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("1..=100"), "{stderr}");
    }
}

/// A replica that takes the connection and never answers: the submit may have arrived.
#[test]
fn a_submit_with_an_unknown_outcome_prints_the_key_to_retry_with() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = silent.local_addr().expect("address").to_string();
    let submit = |key: Option<&str>| {
        let mut args = vec![
            "job",
            "submit",
            "--endpoints",
            &endpoint,
            "--timeout-secs",
            "1",
            "--insecure",
        ];
        if let Some(key) = key {
            args.extend(["--idempotency-key", key]);
        }
        args.extend(["--", "echo", "hi"]);
        Command::new(binary()).args(args).output().expect("run")
    };
    let output = submit(None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    let key = stderr
        .split("--idempotency-key ")
        .nth(1)
        .and_then(|rest| rest.split([':', ' ', '\n']).next())
        .unwrap_or_else(|| panic!("no key to retry with in: {stderr}"));
    assert!(key.starts_with("cli-") && key.len() > 20, "{stderr}");
    assert!(stderr.contains("outcome is unknown"), "{stderr}");

    // A key the user gave is the one shown.
    let output = submit(Some("nightly-load-2026-12-04"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("--idempotency-key nightly-load-2026-12-04"),
        "{stderr}"
    );
}

/// `--timeout-secs` bounds a call even below the client's 5 s per-call timeout: a port that
/// accepts and never answers ends `job get --timeout-secs 1` in about a second.
#[test]
fn a_silent_replica_costs_no_more_than_the_timeout_asked_for() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = silent.local_addr().expect("address").to_string();
    let started = std::time::Instant::now();
    let output = Command::new(binary())
        .args(["job", "get", "1", "--endpoints", &endpoint])
        .args(["--timeout-secs", "1", "--insecure"])
        .output()
        .expect("run");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        took < std::time::Duration::from_millis(2500),
        "took {took:?}: {stderr}"
    );
}

#[test]
fn an_invalid_job_spec_exits_2_before_any_network_call() {
    let output = Command::new(binary())
        .args([
            "job",
            "submit",
            "--env",
            "NO-EQUALS-SIGN",
            "--endpoints",
            "127.0.0.1:1",
            "--insecure",
            "--",
            "echo",
        ])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("NO-EQUALS-SIGN"));
}

#[test]
fn the_sample_worker_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config/local/worker-1.toml");
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    // The certificates the sample's comments say to make, in a temp dir instead of certs/.
    let sample_worker: uuid::Uuid = "0b5c4c1e-2f5e-4c7a-9d5e-3a1f7c2b9e10"
        .parse()
        .expect("uuid");
    let certs = dir.path().join("certs");
    scaleout::certs::init(&scaleout::certs::CertsInit {
        workers: vec![sample_worker],
        ..scaleout::certs::CertsInit::new(&certs)
    })
    .expect("certs init");
    let cert = certs.join(format!("worker-{sample_worker}"));
    let overrides = vec![
        format!("state_dir={}", state.display()),
        format!("tasks_root_folder={}", state.join("tasks").display()),
        format!("tls.ca={}", certs.join("ca.pem").display()),
        format!("tls.cert={}.pem", cert.display()),
        format!("tls.key={}-key.pem", cert.display()),
    ];
    let config =
        scaleout::worker::WorkerConfig::load(&path, &overrides).expect("sample worker config");
    assert_eq!(config.endpoints.len(), 3);
    assert_eq!(config.max_task_count, 4);
    assert_eq!(
        config.agent_id, sample_worker,
        "the agent id comes from the certificate"
    );
}

#[test]
fn certs_init_writes_a_ca_and_refuses_to_replace_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = dir.path().join("certs");
    let run = |extra: &[&str]| {
        Command::new(binary())
            .args(["certs", "init", "--dir"])
            .arg(&target)
            .args(extra)
            .output()
            .expect("run certs init")
    };
    let first = run(&["--replicas", "3", "--workers", "1"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    for file in [
        "ca.pem",
        "replica-3.pem",
        "replica-3-key.pem",
        "operator.pem",
        "admin-key.pem",
    ] {
        assert!(target.join(file).exists(), "{file} missing");
    }
    let again = run(&[]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert!(run(&["--force"]).status.success());
}
