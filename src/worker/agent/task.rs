//! One task: its slot, its process, its output batched into AppendLogs and its result, delivered
//! in order directly or through the spool ([`Reporter`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, trace, warn, Instrument};

use super::{
    lock, wait_for_confirmation, worker_unknown, Agent, Key, Slot, BATCH_LINGER,
    COMPLETE_DELIVERY_DEADLINE, LINE_CHANNEL, LOG_DELIVERY_DEADLINE, MAX_BATCH_LINES,
};
use crate::pb::v1::{LogLevel, LogLine, TaskAssignment};
use crate::wall_time::now_ms;
use crate::worker::connection::CallError;
use crate::worker::observe::Finished;
use crate::worker::runner::{self, Invocation, KillReason, OutputLine, RunOutcome, Stream};
use crate::worker::spool::{SpoolEntry, SpooledLine, SpooledOutcome};

impl Agent {
    /// Puts a leased task in a slot and runs it; `requested` is when the call that got the lease
    /// was sent (the lease started after it).
    pub(super) fn start(self: &Arc<Self>, task: TaskAssignment, requested: Instant) {
        let key = (task.job_id, task.lease_token);
        let (kill_tx, kill_rx) = watch::channel(None);
        let (confirmed_tx, confirmed_rx) = watch::channel(false);
        {
            let mut state = lock(&self.state);
            if state.slots.len() >= self.config.max_task_count as usize {
                // The master decides with its own count; run what it leased rather than let
                // the lease expire and burn an attempt.
                warn!(job_id = task.job_id, "leased beyond max_task_count");
            }
            if state.slots.contains_key(&key) {
                warn!(
                    job_id = task.job_id,
                    lease = task.lease_token,
                    "lease given twice; ignored"
                );
                return;
            }
            state.slots.insert(
                key,
                Slot {
                    attempt: task.attempt,
                    kill: kill_tx,
                    last_renewed: requested,
                    confirmed: confirmed_tx,
                    running: true,
                },
            );
        }
        let span = tracing::info_span!(
            "task",
            job_id = task.job_id,
            lease = task.lease_token,
            attempt = task.attempt
        );
        let agent = Arc::clone(self);
        tokio::spawn(agent.run_task(task, kill_rx, confirmed_rx).instrument(span));
    }

    // ---- one task ----------------------------------------------------------------------------

    async fn run_task(
        self: Arc<Self>,
        task: TaskAssignment,
        kill: watch::Receiver<Option<KillReason>>,
        confirmed: watch::Receiver<bool>,
    ) {
        let key = (task.job_id, task.lease_token);
        let spec = task.spec.unwrap_or_default();
        let mut reporter = Reporter {
            agent: Arc::clone(&self),
            key,
            attempt: task.attempt,
            spooled: false,
            lost: false,
            last_batch: 0,
        };
        if let Err(reason) = wait_for_confirmation(confirmed, kill.clone()).await {
            self.end_unstarted(key, reason, &mut reporter).await;
            return;
        }
        if self.config.noop_executor {
            debug!(name = %spec.name, "no-op executor: reporting success without running");
            if self.config.noop_log_lines > 0 {
                let text = "x".repeat(self.config.noop_log_line_bytes as usize);
                let now = now_ms();
                let lines = (0..self.config.noop_log_lines)
                    .map(|_| LogLine {
                        at_ms: now,
                        level: LogLevel::Info as i32,
                        text: text.clone(),
                    })
                    .collect();
                reporter.send_logs(lines).await;
            }
            if let Some(slot) = lock(&self.state).slots.get_mut(&key) {
                slot.running = false;
            }
            reporter
                .complete(SpooledOutcome::Succeeded, Some(0), String::new())
                .await;
            self.metrics.finished(Finished::Succeeded);
            lock(&self.state).slots.remove(&key);
            self.slot_removed.notify_waiters();
            self.wake_acquire.notify_one();
            return;
        }
        let prepared = runner::command_line(&spec, &self.config.executor).and_then(|argv| {
            let work_dir =
                runner::prepare_work_dir(&self.config.tasks_root_folder, task.job_id, task.attempt)
                    .map_err(|e| {
                        format!(
                            "cannot create the task folder under {}: {e}",
                            self.config.tasks_root_folder.display()
                        )
                    })?;
            let mut env: BTreeMap<String, String> = spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            env.insert("SCALEOUT_JOB_ID".into(), task.job_id.to_string());
            env.insert("SCALEOUT_ATTEMPT".into(), task.attempt.to_string());
            // Grows with every lease the cluster grants: a package can fence its own writes
            // with it (docs/operations.md, "Fencing a package's writes").
            env.insert("SCALEOUT_LEASE_TOKEN".into(), task.lease_token.to_string());
            Ok(Invocation {
                argv,
                env,
                work_dir,
                timeout: (spec.timeout_secs > 0).then(|| Duration::from_secs(spec.timeout_secs)),
            })
        });
        let work_dir = prepared.as_ref().ok().map(|inv| inv.work_dir.clone());
        let outcome = match prepared {
            Ok(invocation) => {
                info!(name = %spec.name, argv = ?invocation.argv, work_dir = %invocation.work_dir.display(), "task started");
                let (tx, rx) = mpsc::channel(LINE_CHANNEL);
                let (outcome, ()) = tokio::join!(
                    runner::run(invocation, tx, kill),
                    forward_logs(rx, &mut reporter)
                );
                outcome
            }
            Err(message) => RunOutcome::SpawnFailed(message),
        };
        if let Some(slot) = lock(&self.state).slots.get_mut(&key) {
            slot.running = false;
        }

        let tolerance_s = self.kill_after().as_secs_f64();
        let report = match &outcome {
            RunOutcome::Exited(0) => Some((SpooledOutcome::Succeeded, Some(0), String::new())),
            RunOutcome::Exited(code) => Some((
                SpooledOutcome::Failed,
                Some(*code),
                format!("exit code {code}"),
            )),
            RunOutcome::Signaled(signal) => Some((
                SpooledOutcome::Failed,
                None,
                format!("killed by signal {signal}"),
            )),
            RunOutcome::TimedOut(secs) => Some((
                SpooledOutcome::Failed,
                None,
                format!("timed out after {secs} s"),
            )),
            RunOutcome::SpawnFailed(message) => {
                Some((SpooledOutcome::Failed, None, message.clone()))
            }
            RunOutcome::Killed(KillReason::Cancelled) => {
                Some((SpooledOutcome::Cancelled, None, "cancelled".to_string()))
            }
            RunOutcome::Killed(KillReason::NoRenewal) => Some((
                SpooledOutcome::Failed,
                None,
                format!(
                    "killed: no lease renewal succeeded for {tolerance_s:.1} s (its lease may \
                     already be given to another worker)"
                ),
            )),
            RunOutcome::Killed(KillReason::Shutdown) => {
                Some((SpooledOutcome::Failed, None, "worker shut down".to_string()))
            }
            RunOutcome::Killed(KillReason::LeaseLost) => None,
        };
        match &report {
            Some((SpooledOutcome::Succeeded, _, _)) => info!("task succeeded"),
            Some((outcome, exit_code, error)) => {
                info!(outcome = outcome.as_str(), exit_code, %error, "task ended");
                // The job's own log says why, not only the attempt record.
                if !matches!(outcome, SpooledOutcome::Failed) || exit_code.is_none() {
                    let level = match outcome {
                        SpooledOutcome::Failed => LogLevel::Error,
                        _ => LogLevel::Warning,
                    };
                    reporter
                        .send_logs(vec![LogLine {
                            at_ms: now_ms(),
                            level: level as i32,
                            text: format!("[worker] {error}"),
                        }])
                        .await;
                }
            }
            None => info!("task killed: its lease is lost, nothing to report"),
        }
        if let Some((outcome, exit_code, error)) = report {
            reporter.complete(outcome, exit_code, error).await;
        }
        if let Some(dir) = work_dir {
            // Keep what the task left for inspection; an empty folder is only clutter.
            let _ = std::fs::remove_dir(&dir);
        }
        self.metrics.finished(Finished::of(&outcome));
        lock(&self.state).slots.remove(&key);
        self.slot_removed.notify_waiters();
        self.wake_acquire.notify_one();
    }

    /// Ends a task whose process never started: a cancel that came before the confirming
    /// renewal completes it CANCELLED; a lost lease reports nothing (the master ended it); a
    /// shutdown reports FAILED as for a running task.
    async fn end_unstarted(&self, key: Key, reason: KillReason, reporter: &mut Reporter) {
        info!(
            reason = reason.as_str(),
            "task not started: its lease was not confirmed"
        );
        let report = match reason {
            KillReason::Cancelled => Some((
                SpooledOutcome::Cancelled,
                "cancelled before it started".to_string(),
            )),
            KillReason::Shutdown => Some((SpooledOutcome::Failed, "worker shut down".to_string())),
            KillReason::LeaseLost | KillReason::NoRenewal => None,
        };
        if let Some((outcome, error)) = report {
            reporter
                .send_logs(vec![LogLine {
                    at_ms: now_ms(),
                    level: LogLevel::Warning as i32,
                    text: format!("[worker] {error}"),
                }])
                .await;
            reporter.complete(outcome, None, error).await;
        }
        lock(&self.state).slots.remove(&key);
        self.slot_removed.notify_waiters();
        self.wake_acquire.notify_one();
    }
}

/// Delivers one task's logs and result in order: directly while the cluster answers, through
/// the spool from the first failure on.
struct Reporter {
    agent: Arc<Agent>,
    key: Key,
    attempt: u32,
    /// Something of this task is in the spool: everything after it goes there too.
    spooled: bool,
    /// The master answered LEASE_LOST: nothing more is worth sending.
    lost: bool,
    /// The number of the last log batch sent (or spooled) for this lease: each batch keeps its
    /// number through retries and the spool, so the master stores it once.
    last_batch: u64,
}

impl Reporter {
    async fn send_logs(&mut self, lines: Vec<LogLine>) {
        if lines.is_empty() || self.lost {
            return;
        }
        self.last_batch += 1;
        let batch = self.last_batch;
        if !self.spooled {
            let deadline = self.agent.delivery_deadline(LOG_DELIVERY_DEADLINE);
            match self
                .agent
                .append_logs(self.key, batch, lines.clone(), deadline)
                .await
            {
                Ok(()) => return,
                Err(CallError::LeaseLost(_)) => {
                    self.lost = true;
                    warn!("logs refused: the lease is lost; killing the task");
                    self.agent.kill(self.key, KillReason::LeaseLost);
                    return;
                }
                Err(error @ CallError::Unavailable { .. }) => {
                    self.agent.note_reachable(false, Some(&error));
                    self.spooled = true;
                }
                Err(error) if worker_unknown(&error) => {
                    self.agent.forget_registration();
                    self.spooled = true;
                }
                Err(error) => {
                    error!(%error, lines = lines.len(), "log lines refused; dropped");
                    return;
                }
            }
        }
        let lines = lines
            .into_iter()
            .map(|line| SpooledLine {
                at_ms: line.at_ms,
                level: line.level,
                text: line.text,
            })
            .collect();
        self.agent
            .spool_append(SpoolEntry::Logs {
                job_id: self.key.0,
                lease_token: self.key.1,
                attempt: self.attempt,
                batch,
                lines,
            })
            .await;
    }

    async fn complete(&mut self, outcome: SpooledOutcome, exit_code: Option<i32>, error: String) {
        if self.lost {
            return;
        }
        if !self.spooled {
            let deadline = self.agent.delivery_deadline(COMPLETE_DELIVERY_DEADLINE);
            match self
                .agent
                .complete_task(self.key, outcome, exit_code, error.clone(), deadline)
                .await
            {
                Ok(state) => {
                    let job_state = state.as_str_name();
                    return info!(outcome = outcome.as_str(), job_state, "result delivered");
                }
                Err(CallError::LeaseLost(_)) => {
                    return warn!(
                        outcome = outcome.as_str(),
                        "result refused: the lease is lost (the master recorded it as late)"
                    );
                }
                Err(call_error @ CallError::Unavailable { .. }) => {
                    self.agent.note_reachable(false, Some(&call_error));
                }
                Err(call_error) if worker_unknown(&call_error) => {
                    self.agent.forget_registration();
                }
                Err(call_error) => {
                    return error!(error = %call_error, outcome = outcome.as_str(), "result refused; dropped");
                }
            }
        }
        info!(
            outcome = outcome.as_str(),
            "result spooled until a replica answers"
        );
        self.agent
            .spool_append(SpoolEntry::Complete {
                job_id: self.key.0,
                lease_token: self.key.1,
                attempt: self.attempt,
                outcome,
                exit_code,
                error,
            })
            .await;
    }
}

/// Batches a task's output into AppendLogs calls: a batch goes out when it holds
/// [`MAX_BATCH_LINES`] lines or its first line is [`BATCH_LINGER`] old.
async fn forward_logs(mut lines: mpsc::Receiver<OutputLine>, reporter: &mut Reporter) {
    let mut batch: Vec<LogLine> = Vec::new();
    let mut flush_at: Option<Instant> = None;
    loop {
        let next = match flush_at {
            Some(at) => tokio::select! {
                line = lines.recv() => line,
                () = tokio::time::sleep_until(at) => {
                    flush_at = None;
                    reporter.send_logs(std::mem::take(&mut batch)).await;
                    continue;
                }
            },
            None => lines.recv().await,
        };
        let Some(line) = next else { break };
        trace!(stream = ?line.stream, text = %line.text, "task output");
        batch.push(LogLine {
            at_ms: line.at_ms,
            level: match line.stream {
                Stream::Stdout => LogLevel::Info as i32,
                Stream::Stderr => LogLevel::Error as i32,
            },
            text: line.text,
        });
        if batch.len() >= MAX_BATCH_LINES {
            flush_at = None;
            reporter.send_logs(std::mem::take(&mut batch)).await;
        } else if flush_at.is_none() {
            flush_at = Some(Instant::now() + BATCH_LINGER);
        }
    }
    reporter.send_logs(batch).await;
}
