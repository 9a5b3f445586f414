//! The README's local walkthrough runs as written: every ```` ```sh ```` block, in order, as one
//! shell session in a fresh directory laid out like the repository (the sample configs of
//! `deploy/config/local`), against the replicas, worker and CLI it starts itself. Blocks fenced
//! ```` ```text ```` are not run: the two commands CI runs itself, other hosts, SQL Server, and
//! runs of half an hour.
//!
//! What differs from a person following it, and why:
//! - the sample configs' ports (71xx, 72xx, 73xx) are rewritten to free ones and `SCALEOUT_ENDPOINTS`
//!   names the new API ports (tests run in parallel; a developer's own cluster may hold 7101);
//! - `target/release/scaleout` is this build's binary, and `cargo build --release` is skipped;
//! - a command that runs until stopped (a replica, a worker, `status --watch` without
//!   `--frames`) runs in the background, as in its own terminal; after starting replicas the
//!   session waits until they have a majority, and after a worker until it is registered, as a
//!   person does by reading their output; `status --watch` is stopped with Ctrl-C (SIGINT)
//!   after a few seconds and must exit 0.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the whole walkthrough may take (its slowest step is `status --watch 5 --frames 3`).
const WALKTHROUGH_DEADLINE: Duration = Duration::from_secs(240);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_scaleout"))
}

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The lines of each ```` ```sh ```` block of `markdown`, in order.
fn shell_blocks(markdown: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(Vec::new()),
            (None, fence) if fence.starts_with("```") => current = Some(vec![fence.into()]),
            (Some(_), "```") => {
                if let Some(block) = current.take() {
                    if block.first().is_none_or(|first| !first.starts_with("```")) {
                        blocks.push(block);
                    }
                }
            }
            (Some(block), line) => block.push(line.to_string()),
            (None, _) => {}
        }
    }
    blocks
}

/// What the session does with one README line.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Built already: this test runs the build it belongs to.
    Skip,
    /// Runs until stopped: in the background, as in its own terminal.
    Background,
    /// Redraws until Ctrl-C.
    UntilCtrlC,
    Run,
}

fn step(line: &str) -> Step {
    let command = line.split('#').next().unwrap_or_default().trim();
    if command.is_empty() || command.starts_with("cargo build") {
        Step::Skip
    } else if command.contains("scaleout master --config")
        || command.contains("scaleout worker --config")
    {
        Step::Background
    } else if command.contains("status --watch") && !command.contains("--frames") {
        Step::UntilCtrlC
    } else {
        Step::Run
    }
}

/// The bash session for `blocks`: each line echoed, then run; the first that fails stops it.
fn session(blocks: &[Vec<String>]) -> String {
    let mut script = String::from(
        "set -euo pipefail\n\
         trap 'echo \"README line failed (exit $?): $BASH_COMMAND\" >&2' ERR\n\
         trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n\
         mkdir -p terminals\n\
         wait_for() { local what=$1; shift; local until=$((SECONDS + 60));\n\
         \x20 until \"$@\" >/dev/null 2>&1; do\n\
         \x20   if [ $SECONDS -ge $until ]; then echo \"gave up waiting for $what\" >&2; return 1; fi\n\
         \x20   sleep 0.2; done; }\n",
    );
    let mut terminal = 0;
    for block in blocks {
        // What was started in the background since the last wait: the next command that
        // needs it waits until it is ready, as a person watching those terminals would.
        let mut started: Vec<String> = Vec::new();
        for line in block {
            let step = step(line);
            if step != Step::Background && step != Step::Skip {
                script.push_str(&readiness_waits(&std::mem::take(&mut started)));
            }
            match step {
                Step::Skip => script.push_str(&format!("echo '# skipped: {}'\n", escape(line))),
                Step::Background => {
                    terminal += 1;
                    script.push_str(&format!(
                        "echo '+ {}' >&2\n{line} > terminals/{terminal}.log 2>&1 &\n",
                        escape(line)
                    ));
                    started.push(line.clone());
                }
                Step::UntilCtrlC => script.push_str(&format!(
                    "echo '+ {}' >&2\ntimeout --preserve-status -s INT 4 {line}\n",
                    escape(line)
                )),
                Step::Run => script.push_str(&format!("echo '+ {}' >&2\n{line}\n", escape(line))),
            }
        }
        script.push_str(&readiness_waits(&started));
    }
    script
}

/// The waits for what `started` (background lines) start: replicas until they have a
/// majority, a worker until it is registered.
fn readiness_waits(started: &[String]) -> String {
    let scaleout = "target/release/scaleout";
    let certs = "--tls-dir deploy/config/local/certs";
    let mut waits = String::new();
    if started.iter().any(|line| line.contains(" master ")) {
        waits.push_str(&format!(
            "wait_for 'a majority of the replicas' {scaleout} cluster status {certs}\n"
        ));
    }
    if started.iter().any(|line| line.contains(" worker ")) {
        waits.push_str(&format!(
            "wait_for 'the worker to register' sh -c \
             '{scaleout} workers list {certs} | grep -q local-worker-1'\n"
        ));
    }
    waits
}

/// `line` inside single quotes.
fn escape(line: &str) -> String {
    line.replace('\'', "'\\''")
}

/// Copies the sample configs to `root` as the repository lays them out, with every sample port
/// replaced by a free one; returns the replicas' new API addresses.
fn lay_out(root: &Path) -> Vec<String> {
    let samples = repository().join("deploy/config/local");
    let configs = root.join("deploy/config/local");
    std::fs::create_dir_all(&configs).expect("config dir");
    const SAMPLE_PORTS: [u16; 9] = [7101, 7102, 7103, 7201, 7202, 7203, 7301, 7302, 7303];
    let ports = scaleout::harness::free_ports(SAMPLE_PORTS.len()).expect("free ports");
    let renumber = |text: &str| {
        let mut text = text.to_string();
        for (i, sample) in SAMPLE_PORTS.iter().enumerate() {
            text = text.replace(
                &format!("127.0.0.1:{sample}"),
                &format!("127.0.0.1:{}", ports[i]),
            );
        }
        text
    };
    for entry in std::fs::read_dir(&samples).expect("deploy/config/local") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).expect("sample config");
            let name = path.file_name().expect("name");
            std::fs::write(configs.join(name), renumber(&text)).expect("write config");
        }
    }
    let release = root.join("target/release");
    std::fs::create_dir_all(&release).expect("target/release");
    std::os::unix::fs::symlink(binary(), release.join("scaleout")).expect("link the binary");
    ports[..3]
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect()
}

/// Kills what the session left running (a failed step leaves replicas behind).
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        scaleout::harness::kill_tasks_left_under(&self.0);
    }
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let readme = std::fs::read_to_string(repository().join("README.md")).expect("README.md");
    let blocks = shell_blocks(&readme);
    assert!(
        blocks.len() >= 4,
        "the README's walkthrough is its ```sh blocks; found {}",
        blocks.len()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().canonicalize().expect("temp dir path");
    let _cleanup = Cleanup(root.clone());
    let endpoints = lay_out(&root);
    let script = session(&blocks);
    std::fs::write(root.join("session.sh"), &script).expect("write the session");

    let started = Instant::now();
    let mut child = Command::new("bash")
        .arg("session.sh")
        .current_dir(&root)
        .env("SCALEOUT_ENDPOINTS", endpoints.join(","))
        .env_remove("SCALEOUT_TLS_DIR")
        .env_remove("SCALEOUT_IDENTITY")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(root.join("stdout.txt")).expect("stdout file"))
        .stderr(std::fs::File::create(root.join("stderr.txt")).expect("stderr file"))
        .spawn()
        .expect("run bash");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for bash") {
            break Some(status);
        }
        if started.elapsed() > WALKTHROUGH_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let read = |name: &str| std::fs::read_to_string(root.join(name)).unwrap_or_default();
    let terminals: String = (1..=8)
        .map(|n| read(&format!("terminals/{n}.log")))
        .filter(|log| !log.is_empty())
        .map(|log| {
            let lines: Vec<&str> = log.lines().collect();
            format!(
                "\n--- a terminal ---\n{}",
                lines[lines.len().saturating_sub(15)..].join("\n")
            )
        })
        .collect();
    let (stdout, stderr) = (read("stdout.txt"), read("stderr.txt"));
    assert!(
        status.is_some_and(|s| s.success()),
        "the walkthrough {} after {:?}\n--- session ---\n{script}\n--- stdout ---\n{stdout}\n\
         --- stderr ---\n{stderr}{terminals}",
        status.map_or("timed out".to_string(), |s| format!("failed ({s})")),
        started.elapsed()
    );
    // What a person reads in the fourth terminal.
    for expected in [
        "leader: replica",
        "job 1 submitted",
        "\"name\":\"hello\"",
        "job 1 is cancelled",
        "local-worker-1",
        "hi",
        "\"available\":true",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} is not in the walkthrough's output:\n{stdout}\n--- stderr ---\n{stderr}"
        );
    }
}

#[test]
fn only_sh_blocks_are_the_walkthrough() {
    let markdown =
        "intro\n```text\ncargo test\n```\n```sh\na\n# c\nb\n```\n```sql\nSELECT 1;\n```\n";
    assert_eq!(shell_blocks(markdown), vec![vec!["a", "# c", "b"]]);
    assert_eq!(step("cargo build --release"), Step::Skip);
    assert_eq!(
        step("target/release/scaleout master --config deploy/config/local/master-1.toml"),
        Step::Background
    );
    assert_eq!(
        step("target/release/scaleout status --watch   # redraw"),
        Step::UntilCtrlC
    );
    assert_eq!(
        step("target/release/scaleout status --watch 5 --frames 3"),
        Step::Run
    );
    assert_eq!(step("# a comment"), Step::Skip);
    // A command after a background one waits until what it started is ready.
    let blocks = vec![vec![
        "target/release/scaleout worker --config w.toml".to_string(),
        "target/release/scaleout workers list".to_string(),
    ]];
    let script = session(&blocks);
    let wait = script.find("wait_for 'the worker").expect("a wait");
    assert!(
        wait < script
            .find("\ntarget/release/scaleout workers list")
            .expect("the list")
    );
}
