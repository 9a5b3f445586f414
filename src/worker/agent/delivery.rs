//! The spool: what could not be delivered goes there, and the drain loop delivers it, oldest
//! first, whenever the cluster answers.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, error, info};

use super::{
    lease_ref, lock, worker_unknown, Agent, Key, Pending, DRAIN_DEADLINE, DRAIN_RECHECK,
    PER_CALL_TIMEOUT, RETRY,
};
use crate::pb::v1::{AppendLogsRequest, AttemptOutcome, CompleteTaskRequest, JobState, LogLine};
use crate::rpc::leader_request;
use crate::worker::connection::CallError;
use crate::worker::spool::{Spool, SpoolEntry, SpooledOutcome};

impl Agent {
    /// Runs `f` on the spool off the async threads (it fsyncs).
    pub(super) async fn with_spool<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Spool) -> R + Send + 'static,
    ) -> Option<R> {
        let spool = Arc::clone(&self.spool);
        tokio::task::spawn_blocking(move || f(&mut lock(&spool)))
            .await
            .ok()
    }

    pub(super) async fn spool_append(&self, entry: SpoolEntry) {
        let key = (entry.job_id(), entry.lease_token());
        let is_result = matches!(entry, SpoolEntry::Complete { .. });
        match self.with_spool(move |spool| spool.append(entry)).await {
            Some(Ok(_)) => {
                if is_result {
                    let mut state = lock(&self.state);
                    let last_renewed = state
                        .slots
                        .get(&key)
                        .map(|slot| slot.last_renewed)
                        .unwrap_or_else(Instant::now);
                    state.pending.insert(key, Pending { last_renewed });
                }
                self.wake_drain.notify_one();
            }
            Some(Err(error)) => error!(%error, "cannot spool; this data is lost"),
            None => error!("the spool writer failed; this data is lost"),
        }
    }

    pub(super) async fn drain_loop(&self) {
        let mut pauses = RETRY.pauses();
        loop {
            let _ = tokio::time::timeout(DRAIN_RECHECK, self.wake_drain.notified()).await;
            if !lock(&self.state).registered {
                continue;
            }
            loop {
                let front = self
                    .with_spool(|spool| spool.front().map(|(seq, entry)| (seq, entry.clone())))
                    .await
                    .flatten();
                let Some((seq, entry)) = front else {
                    pauses.reset();
                    break;
                };
                let key = (entry.job_id(), entry.lease_token());
                let (job_id, lease, attempt) = (key.0, key.1, entry.attempt());
                match self.deliver(&entry, DRAIN_DEADLINE).await {
                    Ok(()) => debug!(job_id, lease, attempt, seq, "spooled entry delivered"),
                    Err(CallError::LeaseLost(_)) => info!(
                        job_id,
                        lease,
                        attempt,
                        seq,
                        "spooled entry refused as stale: the master recorded it as late"
                    ),
                    Err(error) if worker_unknown(&error) => {
                        self.forget_registration();
                        break;
                    }
                    Err(error @ CallError::Unavailable { .. }) => {
                        debug!(%error, "the cluster is still unreachable; the spool waits");
                        tokio::time::sleep(pauses.next_jittered()).await;
                        break;
                    }
                    Err(error) => error!(
                        job_id,
                        lease,
                        attempt,
                        seq,
                        %error,
                        "spooled entry refused for good; dropped"
                    ),
                }
                if matches!(entry, SpoolEntry::Complete { .. }) {
                    lock(&self.state).pending.remove(&key);
                }
                match self.with_spool(move |spool| spool.ack(seq)).await {
                    Some(Ok(())) => {}
                    Some(Err(error)) => error!(%error, "cannot settle a spooled entry"),
                    None => error!("the spool writer failed"),
                }
            }
        }
    }

    /// Sends a spooled entry.
    async fn deliver(&self, entry: &SpoolEntry, deadline: Duration) -> Result<(), CallError> {
        match entry {
            SpoolEntry::Logs {
                job_id,
                lease_token,
                batch,
                lines,
                ..
            } => {
                let lines = lines
                    .iter()
                    .map(|line| LogLine {
                        at_ms: line.at_ms,
                        level: line.level,
                        text: line.text.clone(),
                    })
                    .collect();
                self.append_logs((*job_id, *lease_token), *batch, lines, deadline)
                    .await
            }
            SpoolEntry::Complete {
                job_id,
                lease_token,
                outcome,
                exit_code,
                error,
                ..
            } => self
                .complete_task(
                    (*job_id, *lease_token),
                    *outcome,
                    *exit_code,
                    error.clone(),
                    deadline,
                )
                .await
                .map(|_| ()),
        }
    }

    pub(super) async fn append_logs(
        &self,
        key: Key,
        batch: u64,
        lines: Vec<LogLine>,
        deadline: Duration,
    ) -> Result<(), CallError> {
        let request = AppendLogsRequest {
            worker_id: self.worker_id.clone(),
            lease: Some(lease_ref(key)),
            lines,
            batch_sequence: batch,
            ..Default::default()
        };
        self.connection
            .call(PER_CALL_TIMEOUT, deadline, |mut client, timeout| {
                let call = leader_request(request.clone(), timeout);
                async move { client.append_logs(call).await }
            })
            .await
            .map(|_| ())
    }

    pub(super) async fn complete_task(
        &self,
        key: Key,
        outcome: SpooledOutcome,
        exit_code: Option<i32>,
        error: String,
        deadline: Duration,
    ) -> Result<JobState, CallError> {
        let outcome = match outcome {
            SpooledOutcome::Succeeded => AttemptOutcome::Succeeded,
            SpooledOutcome::Failed => AttemptOutcome::Failed,
            SpooledOutcome::Cancelled => AttemptOutcome::Cancelled,
        };
        let request = CompleteTaskRequest {
            worker_id: self.worker_id.clone(),
            lease: Some(lease_ref(key)),
            outcome: outcome as i32,
            exit_code,
            error,
            ..Default::default()
        };
        let reply = self
            .connection
            .call(PER_CALL_TIMEOUT, deadline, |mut client, timeout| {
                let call = leader_request(request.clone(), timeout);
                async move { client.complete_task(call).await }
            })
            .await?;
        Ok(JobState::try_from(reply.job_state).unwrap_or(JobState::Unspecified))
    }
}
