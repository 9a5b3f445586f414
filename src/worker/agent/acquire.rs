//! The acquire loop: while there are free slots and the host has room, long-polls
//! AcquireTasks, keeping the request id until a call is answered so a lost answer's grants
//! come back on the retry.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};

use super::{
    lock, worker_unknown, Agent, ACQUIRE_REQUEST_FILE, LOAD_RECHECK, PER_CALL_TIMEOUT,
    REGISTER_DEADLINE, RETRY,
};
use crate::disk::{write_atomically, OsDisk};
use crate::pb::v1::AcquireTasksRequest;
use crate::rpc::leader_request;
use crate::worker::connection::CallError;

impl Agent {
    /// Free slots when the worker may take tasks, else `None`.
    fn free_slots(&self) -> Option<u32> {
        let state = lock(&self.state);
        let busy = u32::try_from(state.slots.len()).unwrap_or(u32::MAX);
        let free = self.config.max_task_count.saturating_sub(busy);
        (state.registered && state.enabled && !state.draining && !self.shutting_down() && free > 0)
            .then_some(free)
    }

    pub(super) async fn acquire_loop(self: &Arc<Self>) {
        let mut pauses = RETRY.pauses();
        let mut host_busy = false;
        // Kept until a call is answered: if a leader granted tasks and died before answering,
        // the retry (even after a long outage, or after this agent restarted) carries the same
        // id and gets those leases back. Kept on disk for the restart case.
        let id_file = self.config.state_dir.join(ACQUIRE_REQUEST_FILE);
        let mut request_id = std::fs::read_to_string(&id_file)
            .ok()
            .map(|text| text.trim().to_string())
            .filter(|id| !id.is_empty() && id.len() <= 64)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let mut id_saved = false;
        loop {
            let free_slots = loop {
                let woken = self.wake_acquire.notified();
                if let Some(free) = self.free_slots() {
                    break free;
                }
                // The timeout covers a wake-up that raced with the check.
                let _ = tokio::time::timeout(Duration::from_secs(1), woken).await;
            };
            let (cpu_percent, free_memory_mb) = self.load();
            // TaskRequestMaxCPU / TaskRequestMinMemory: the master checks them too, but against
            // the reading sent with the request, for the whole long-poll; checking here first
            // re-reads the load soon instead of waiting out a poll on a stale figure, and
            // spares the cluster a call that cannot get anything.
            let busy = cpu_percent > self.config.task_request_max_cpu
                || free_memory_mb < self.config.task_request_min_memory_mb;
            if busy != host_busy {
                host_busy = busy;
                debug!(
                    cpu_percent,
                    free_memory_mb,
                    busy,
                    "host load {} task_request_max_cpu / task_request_min_memory_mb",
                    if busy { "beyond" } else { "back within" }
                );
            }
            if busy {
                tokio::time::sleep(LOAD_RECHECK).await;
                continue;
            }
            if !id_saved {
                if let Err(e) = write_atomically(&OsDisk, &id_file, request_id.as_bytes()) {
                    warn!(error = %e, file = %id_file.display(), "cannot save the acquire request id; a restart may orphan a grant");
                }
                id_saved = true;
            }
            let request = AcquireTasksRequest {
                worker_id: self.worker_id.clone(),
                free_slots,
                wait_ms: self.config.acquire_wait_ms,
                cpu_percent,
                free_memory_mb,
                task_request_max_cpu: self.config.task_request_max_cpu,
                task_request_min_memory_mb: self.config.task_request_min_memory_mb,
                request_id: request_id.clone(),
                results: Vec::new(),
            };
            let wait = self.config.acquire_wait();
            let sent = Instant::now();
            let result = self
                .connection
                .call(
                    wait + PER_CALL_TIMEOUT,
                    wait + REGISTER_DEADLINE,
                    |mut client, timeout| {
                        let call = leader_request(request.clone(), timeout);
                        async move { client.acquire_tasks(call).await }
                    },
                )
                .await;
            match result {
                Ok(reply) => {
                    pauses.reset();
                    request_id = uuid::Uuid::new_v4().to_string();
                    id_saved = false;
                    self.note_reachable(true, None);
                    let granted = !reply.tasks.is_empty();
                    for task in reply.tasks {
                        self.start(task, sent);
                    }
                    if granted {
                        self.wake_renew.notify_one();
                    }
                    continue;
                }
                Err(error) if worker_unknown(&error) => self.forget_registration(),
                Err(error @ CallError::Unavailable { .. }) => {
                    self.note_reachable(false, Some(&error))
                }
                Err(error) => warn!(%error, "task request refused"),
            }
            tokio::time::sleep(pauses.next_jittered()).await;
        }
    }
}
