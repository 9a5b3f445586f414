//! Runs one task attempt as a child process and reports how it ended.
//!
//! The child gets its own process group, so a timeout, a cancel, a lost lease or a shutdown can
//! kill everything it started (`SIGKILL` to the group), and whatever it left running in the
//! background dies with it when it exits: a task owns its whole process tree, as a systemd unit
//! owns its cgroup. The direct child is always reaped; grandchildren, once killed, are reaped by
//! init (in a container, run the worker under an init such as `tini`).
//!
//! stdout and stderr are read line by line (lossy UTF-8, lines longer than
//! [`MAX_LINE_BYTES`] split) into a channel; every line is sent before [`run`] returns, so the
//! caller can flush the logs before it reports the result.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc, watch};

use crate::pb::v1::JobSpec;
use crate::wall_time::now_ms;

/// Longest output line kept whole; longer ones arrive as several lines.
pub const MAX_LINE_BYTES: usize = 8 * 1024;
/// How long to wait for the output pipes to close once the task's group is gone (a process
/// that left the group with `setsid` may hold them open).
const PIPE_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of a task's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    /// Worker clock, ms since the Unix epoch.
    pub at_ms: u64,
    pub stream: Stream,
    pub text: String,
}

/// Why the agent stopped a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// The job was cancelled: complete the attempt as CANCELLED.
    Cancelled,
    /// The lease is no longer ours: report nothing.
    LeaseLost,
    /// No renewal succeeded in time: the lease may already be given to another worker.
    NoRenewal,
    /// The worker is shutting down.
    Shutdown,
}

impl KillReason {
    pub fn as_str(self) -> &'static str {
        match self {
            KillReason::Cancelled => "cancelled",
            KillReason::LeaseLost => "lease lost",
            KillReason::NoRenewal => "no renewal in time",
            KillReason::Shutdown => "worker shutting down",
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// The process exited with this code.
    Exited(i32),
    /// The process was killed by this signal (not by us).
    Signaled(i32),
    /// The spec's timeout (seconds) ran out; the group was killed.
    TimedOut(u64),
    /// The agent killed the group.
    Killed(KillReason),
    /// The process could not be started, or waiting for it failed.
    SpawnFailed(String),
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub argv: Vec<String>,
    /// Added to the worker's own environment.
    pub env: BTreeMap<String, String>,
    pub work_dir: PathBuf,
    pub timeout: Option<Duration>,
}

/// The command line of a job: its argv, or for a `package` job the executor template with
/// `{package}` replaced, then `/Par` `name;value` per parameter (sorted by name), then the job's
/// argv as extra executor arguments.
pub fn command_line(spec: &JobSpec, executor: &[String]) -> Result<Vec<String>, String> {
    if !spec.package.is_empty() {
        let mut argv: Vec<String> = executor
            .iter()
            .map(|arg| arg.replace("{package}", &spec.package))
            .collect();
        let params: BTreeMap<&String, &String> = spec.params.iter().collect();
        for (name, value) in params {
            argv.push("/Par".to_string());
            argv.push(format!("{name};{value}"));
        }
        argv.extend(spec.argv.iter().cloned());
        return Ok(argv);
    }
    match spec.argv.first() {
        Some(program) if !program.is_empty() => Ok(spec.argv.clone()),
        _ => Err("the job has no command: argv is empty and no package is given".to_string()),
    }
}

/// Creates `<root>/<job_id>-<attempt>` empty, removing what an earlier run of the same attempt
/// (before a worker restart) left there.
pub fn prepare_work_dir(root: &Path, job_id: u64, attempt: u32) -> io::Result<PathBuf> {
    let dir = root.join(format!("{job_id}-{attempt}"));
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Kills the group when dropped, so a task whose future is dropped (an aborted slot) leaves
/// nothing running.
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn kill(&self) {
        if let Some(pgid) = self.0 {
            // ESRCH: the group is already gone, which is what we want.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `invocation` to its end. Output lines go to `output` (a closed receiver is fine: the
/// pipes are still drained so the child never blocks). Setting `kill` to a reason kills the
/// process group and returns [`RunOutcome::Killed`].
pub async fn run(
    invocation: Invocation,
    output: mpsc::Sender<OutputLine>,
    mut kill: watch::Receiver<Option<KillReason>>,
) -> RunOutcome {
    let Some((program, args)) = invocation.argv.split_first() else {
        return RunOutcome::SpawnFailed("the command line is empty".into());
    };
    // A kill that came before the start: do not start at all.
    if let Some(reason) = *kill.borrow_and_update() {
        return RunOutcome::Killed(reason);
    }
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(&invocation.env)
        .current_dir(&invocation.work_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // If the agent dies without killing its tasks (kill -9), the kernel kills the task's main
    // process: otherwise it would run on unknown to anyone while its lease expires and the task
    // runs again elsewhere. (The signal follows the spawning thread: a runtime worker thread,
    // which lives as long as the agent.)
    // SAFETY: the closure runs between fork and exec and makes one async-signal-safe call.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return RunOutcome::SpawnFailed(format!("cannot start `{program}`: {e}")),
    };
    let group = GroupGuard(
        child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(Pid::from_raw),
    );
    let mut readers = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        readers.push(tokio::spawn(read_lines(
            stdout,
            Stream::Stdout,
            output.clone(),
        )));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.push(tokio::spawn(read_lines(
            stderr,
            Stream::Stderr,
            output.clone(),
        )));
    }
    drop(output);

    let timeout = async {
        match invocation.timeout {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        status = child.wait() => match status {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => RunOutcome::Exited(code),
                (None, Some(signal)) => RunOutcome::Signaled(signal),
                (None, None) => RunOutcome::SpawnFailed(format!("`{program}` ended with {status}")),
            },
            Err(e) => RunOutcome::SpawnFailed(format!("cannot wait for `{program}`: {e}")),
        },
        () = timeout => {
            group.kill();
            let _ = child.wait().await;
            RunOutcome::TimedOut(invocation.timeout.map(|t| t.as_secs()).unwrap_or_default())
        }
        reason = killed(&mut kill) => {
            group.kill();
            let _ = child.wait().await;
            RunOutcome::Killed(reason)
        }
    };
    // What the task left running in the background ends with it.
    group.kill();
    for reader in readers {
        let abort = reader.abort_handle();
        if tokio::time::timeout(PIPE_DRAIN_TIMEOUT, reader)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    outcome
}

/// Resolves when a kill reason is set; never if the sender is dropped without one.
async fn killed(kill: &mut watch::Receiver<Option<KillReason>>) -> KillReason {
    loop {
        if let Some(reason) = *kill.borrow_and_update() {
            return reason;
        }
        if kill.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Splits a pipe into lines of at most [`MAX_LINE_BYTES`] and sends them; keeps reading (and
/// dropping lines) if the receiver is gone, so the child never blocks on a full pipe.
async fn read_lines(pipe: impl AsyncRead + Unpin, stream: Stream, tx: mpsc::Sender<OutputLine>) {
    let mut reader = BufReader::with_capacity(64 * 1024, pipe);
    let mut line: Vec<u8> = Vec::new();
    let mut open = true;
    loop {
        let buf = match reader.fill_buf().await {
            Ok(buf) if !buf.is_empty() => buf,
            // End of file, or a read error: either way nothing more will come.
            _ => break,
        };
        let (chunk, newline) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], true),
            None => (buf, false),
        };
        line.extend_from_slice(chunk);
        let consumed = chunk.len() + usize::from(newline);
        reader.consume(consumed);
        while line.len() > MAX_LINE_BYTES {
            let rest = line.split_off(utf8_cut(&line, MAX_LINE_BYTES));
            send_line(&tx, &mut open, stream, &line).await;
            line = rest;
        }
        if newline {
            send_line(&tx, &mut open, stream, &line).await;
            line.clear();
        }
    }
    if !line.is_empty() {
        send_line(&tx, &mut open, stream, &line).await;
    }
}

async fn send_line(tx: &mpsc::Sender<OutputLine>, open: &mut bool, stream: Stream, bytes: &[u8]) {
    if !*open {
        return;
    }
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let line = OutputLine {
        at_ms: now_ms(),
        stream,
        text: String::from_utf8_lossy(bytes).into_owned(),
    };
    *open = tx.send(line).await.is_ok();
}

/// Where to split a line that is too long: at `max`, or a little before it so that a UTF-8
/// character is not cut in two (bytes that are not UTF-8 are cut at `max`).
fn utf8_cut(bytes: &[u8], max: usize) -> usize {
    if bytes.len() <= max {
        return bytes.len();
    }
    let is_continuation = |b: u8| b & 0xC0 == 0x80;
    let mut cut = max;
    // A UTF-8 character has at most three continuation bytes.
    for _ in 0..3 {
        if cut > 0 && is_continuation(bytes[cut]) {
            cut -= 1;
        } else {
            break;
        }
    }
    if cut == 0 || is_continuation(bytes[cut]) {
        max
    } else {
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, dir: &Path) -> Invocation {
        Invocation {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: BTreeMap::new(),
            work_dir: dir.to_path_buf(),
            timeout: None,
        }
    }

    /// Runs and collects every line.
    async fn run_collect(
        invocation: Invocation,
        kill: watch::Receiver<Option<KillReason>>,
    ) -> (RunOutcome, Vec<OutputLine>) {
        let (tx, mut rx) = mpsc::channel(16);
        let collector = tokio::spawn(async move {
            let mut lines = Vec::new();
            while let Some(line) = rx.recv().await {
                lines.push(line);
            }
            lines
        });
        let outcome = run(invocation, tx, kill).await;
        (outcome, collector.await.unwrap())
    }

    fn no_kill() -> watch::Receiver<Option<KillReason>> {
        // The sender is dropped at once: "never killed".
        watch::channel(None).1
    }

    fn alive(pid: i32) -> bool {
        // A zombie still answers kill(0); look at its state instead.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => {
                let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
                !matches!(state.and_then(|s| s.chars().next()), Some('Z') | Some('X'))
            }
            Err(_) => false,
        }
    }

    #[tokio::test]
    async fn exit_codes_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let (outcome, lines) = run_collect(
            sh("echo one; echo two >&2; printf 'no newline'", dir.path()),
            no_kill(),
        )
        .await;
        assert_eq!(outcome, RunOutcome::Exited(0));
        let mut texts: Vec<(Stream, String)> =
            lines.into_iter().map(|l| (l.stream, l.text)).collect();
        texts.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(
            texts,
            vec![
                (Stream::Stdout, "no newline".to_string()),
                (Stream::Stdout, "one".to_string()),
                (Stream::Stderr, "two".to_string()),
            ]
        );
        let (outcome, _) = run_collect(sh("exit 3", dir.path()), no_kill()).await;
        assert_eq!(outcome, RunOutcome::Exited(3));
        let (outcome, _) = run_collect(sh("kill -TERM $$", dir.path()), no_kill()).await;
        assert_eq!(outcome, RunOutcome::Signaled(15));
    }

    #[tokio::test]
    async fn env_and_work_dir_apply() {
        let dir = tempfile::tempdir().unwrap();
        let mut invocation = sh("echo \"$GREETING\"; pwd; echo x > here.txt", dir.path());
        invocation
            .env
            .insert("GREETING".into(), "hello there".into());
        let (outcome, lines) = run_collect(invocation, no_kill()).await;
        assert_eq!(outcome, RunOutcome::Exited(0));
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts[0], "hello there");
        assert_eq!(
            Path::new(texts[1]).canonicalize().unwrap(),
            dir.path().canonicalize().unwrap()
        );
        assert!(dir.path().join("here.txt").is_file());
        // The worker's own environment is inherited.
        let (_, lines) = run_collect(sh("echo \"$PATH\"", dir.path()), no_kill()).await;
        assert!(!lines[0].text.is_empty());
    }

    #[tokio::test]
    async fn a_missing_program_fails_with_the_os_error() {
        let dir = tempfile::tempdir().unwrap();
        let invocation = Invocation {
            argv: vec!["/nonexistent/program".into(), "x".into()],
            env: BTreeMap::new(),
            work_dir: dir.path().to_path_buf(),
            timeout: None,
        };
        let (outcome, _) = run_collect(invocation, no_kill()).await;
        match outcome {
            RunOutcome::SpawnFailed(message) => {
                assert!(message.contains("/nonexistent/program"), "{message}");
                assert!(message.contains("No such file"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn timeout_kills_the_child_and_its_grandchildren() {
        let dir = tempfile::tempdir().unwrap();
        let mut invocation = sh(
            "sleep 600 & echo $!; sh -c 'sleep 600 & echo $!; wait' & sleep 600",
            dir.path(),
        );
        invocation.timeout = Some(Duration::from_secs(1));
        let started = std::time::Instant::now();
        let (outcome, lines) = run_collect(invocation, no_kill()).await;
        assert_eq!(outcome, RunOutcome::TimedOut(1));
        assert!(started.elapsed() < Duration::from_secs(10));
        let pids: Vec<i32> = lines.iter().filter_map(|l| l.text.parse().ok()).collect();
        assert_eq!(pids.len(), 2, "{lines:?}");
        // Killed grandchildren are reaped by init; give it a moment.
        for _ in 0..100 {
            if pids.iter().all(|&pid| !alive(pid)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for pid in pids {
            assert!(!alive(pid), "grandchild {pid} survived the timeout");
        }
    }

    #[tokio::test]
    async fn kill_stops_the_whole_group_and_background_leftovers_die_on_exit() {
        let dir = tempfile::tempdir().unwrap();
        let (kill_tx, kill_rx) = watch::channel(None);
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(run(
            sh("sleep 600 & echo $!; sleep 600", dir.path()),
            tx,
            kill_rx,
        ));
        let line = rx.recv().await.unwrap();
        let grandchild: i32 = line.text.parse().unwrap();
        assert!(alive(grandchild));
        kill_tx.send(Some(KillReason::Cancelled)).unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outcome, RunOutcome::Killed(KillReason::Cancelled));
        for _ in 0..100 {
            if !alive(grandchild) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(grandchild));

        // The main process exits while a background child still holds the pipes: the child is
        // killed with the group and run() returns promptly.
        let started = std::time::Instant::now();
        let (outcome, lines) =
            run_collect(sh("sleep 600 & echo $!; exit 0", dir.path()), no_kill()).await;
        assert_eq!(outcome, RunOutcome::Exited(0));
        assert!(started.elapsed() < Duration::from_secs(5));
        let leftover: i32 = lines[0].text.parse().unwrap();
        for _ in 0..100 {
            if !alive(leftover) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(leftover));
    }

    #[tokio::test]
    async fn long_lines_are_split_and_bad_utf8_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let script = format!(
            "head -c {} /dev/zero | tr '\\0' 'a'; echo; printf 'caf\\351\\n'; printf 'x\\r\\n'",
            MAX_LINE_BYTES * 2 + 10
        );
        let (outcome, lines) = run_collect(sh(&script, dir.path()), no_kill()).await;
        assert_eq!(outcome, RunOutcome::Exited(0));
        let lens: Vec<usize> = lines.iter().map(|l| l.text.len()).collect();
        assert_eq!(&lens[..3], &[MAX_LINE_BYTES, MAX_LINE_BYTES, 10]);
        assert_eq!(lines[3].text, "caf\u{FFFD}");
        assert_eq!(lines[4].text, "x");
    }

    #[test]
    fn utf8_cut_keeps_characters_whole() {
        let text = "ééé".as_bytes(); // 2 bytes each
        assert_eq!(utf8_cut(text, 3), 2);
        assert_eq!(utf8_cut(text, 4), 4);
        assert_eq!(utf8_cut(b"abcdef", 4), 4);
    }

    #[test]
    fn command_lines() {
        let executor: Vec<String> = ["/opt/ssis/bin/dtexec", "/F", "{package}"]
            .map(String::from)
            .to_vec();
        let spec = JobSpec {
            package: "/pkgs/load.dtsx".into(),
            params: [("b", "2"), ("a", "x y")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            argv: vec!["/Rep".into(), "E".into()],
            ..Default::default()
        };
        assert_eq!(
            command_line(&spec, &executor).unwrap(),
            vec![
                "/opt/ssis/bin/dtexec",
                "/F",
                "/pkgs/load.dtsx",
                "/Par",
                "a;x y",
                "/Par",
                "b;2",
                "/Rep",
                "E"
            ]
        );
        let spec = JobSpec {
            argv: vec!["echo".into(), "hi".into()],
            ..Default::default()
        };
        assert_eq!(command_line(&spec, &executor).unwrap(), vec!["echo", "hi"]);
        assert!(command_line(&JobSpec::default(), &executor).is_err());
    }

    #[test]
    fn work_dirs_are_fresh() {
        let root = tempfile::tempdir().unwrap();
        let dir = prepare_work_dir(root.path(), 7, 2).unwrap();
        assert_eq!(dir, root.path().join("7-2"));
        std::fs::write(dir.join("old"), "x").unwrap();
        let dir = prepare_work_dir(root.path(), 7, 2).unwrap();
        assert!(!dir.join("old").exists());
    }
}
