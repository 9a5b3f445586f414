//! The control loop: registers the worker (retrying with backoff until a replica answers)
//! and heartbeats it; a heartbeat's answer enables, drains, cancels and takes leases away.

use std::time::Duration;

use tracing::{error, info, warn};

use super::{lock, worker_unknown, Agent, PER_CALL_TIMEOUT, REGISTER_DEADLINE, RETRY};
use crate::pb::v1::{HeartbeatRequest, HeartbeatResponse, RegisterWorkerRequest, WorkerInfo};
use crate::rpc::leader_request;
use crate::worker::connection::CallError;
use crate::worker::runner::KillReason;

impl Agent {
    pub(super) async fn control_loop(&self) {
        let mut pauses = RETRY.pauses();
        loop {
            if !lock(&self.state).registered {
                match self.register().await {
                    Ok(()) => pauses.reset(),
                    Err(()) => {
                        tokio::time::sleep(pauses.next_jittered()).await;
                        continue;
                    }
                }
            }
            self.heartbeat().await;
            tokio::time::sleep(self.config.agent_heartbeat_interval()).await;
        }
    }

    async fn register(&self) -> Result<(), ()> {
        let c = &self.config;
        let request = RegisterWorkerRequest {
            info: Some(WorkerInfo {
                worker_id: self.worker_id.clone(),
                display_name: c.display_name.clone(),
                description: c.description.clone(),
                machine_name: c.machine_name.clone(),
                tags: c.tags.clone(),
                max_tasks: c.max_task_count,
                version: env!("CARGO_PKG_VERSION").to_string(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let result = self
            .connection
            .call(
                PER_CALL_TIMEOUT,
                REGISTER_DEADLINE,
                |mut client, timeout| {
                    let call = leader_request(request.clone(), timeout);
                    async move { client.register_worker(call).await }
                },
            )
            .await;
        match result {
            Ok(reply) => {
                self.note_reachable(true, None);
                {
                    let mut state = lock(&self.state);
                    state.registered = true;
                    state.enabled = reply.enabled;
                    if reply.lease_interval_ms > 0 {
                        state.lease_interval_ms = reply.lease_interval_ms;
                    }
                }
                info!(
                    display_name = %c.display_name,
                    enabled = reply.enabled,
                    lease_interval_ms = reply.lease_interval_ms,
                    leader = self.connection.leader().as_deref().unwrap_or("?"),
                    "registered with the cluster"
                );
                if !reply.enabled {
                    warn!(
                        "this worker is disabled and takes no tasks until an admin enables it: \
                         scaleout workers enable {}",
                        self.worker_id
                    );
                }
                if reply.lease_interval_ms > 0
                    && c.task_heartbeat_interval_ms.saturating_mul(2) > reply.lease_interval_ms
                {
                    warn!(
                        task_heartbeat_interval_ms = c.task_heartbeat_interval_ms,
                        lease_interval_ms = reply.lease_interval_ms,
                        "task_heartbeat_interval_ms is more than half the master's lease \
                         interval: one slow renewal can lose a lease"
                    );
                }
                if let Err(refusal) =
                    crate::worker::config::check_tolerance(c, reply.lease_interval_ms)
                {
                    error!(lease_interval_ms = reply.lease_interval_ms, "{refusal}");
                    {
                        let mut state = lock(&self.state);
                        state.registered = false;
                        state.fatal = Some(refusal);
                    }
                    self.fatal_set.notify_one();
                    return Err(());
                }
                if c.allow_overlapping_attempts
                    && c.heartbeat_error_tolerance_ms
                        .is_some_and(|t| t > reply.lease_interval_ms)
                {
                    warn!(
                        heartbeat_error_tolerance_ms = c.heartbeat_error_tolerance_ms,
                        lease_interval_ms = reply.lease_interval_ms,
                        "allow_overlapping_attempts: a task of this worker may run beside its \
                         next attempt when this worker is cut off from the cluster"
                    );
                }
                self.wake_acquire.notify_one();
                Ok(())
            }
            Err(error) => {
                match &error {
                    CallError::Unavailable { .. } => self.note_reachable(false, Some(&error)),
                    _ => {
                        error!(%error, "the cluster refused the registration; retrying");
                        lock(&self.state).last_error = Some(error.to_string());
                    }
                }
                Err(())
            }
        }
    }

    async fn heartbeat(&self) {
        let (cpu_percent, free_memory_mb) = self.load();
        let request = HeartbeatRequest {
            worker_id: self.worker_id.clone(),
            running: self.held_leases(),
            cpu_percent,
            free_memory_mb,
            ..Default::default()
        };
        let deadline = self
            .config
            .agent_heartbeat_interval()
            .clamp(Duration::from_secs(1), Duration::from_secs(10));
        let result = self
            .connection
            .call(PER_CALL_TIMEOUT, deadline, |mut client, timeout| {
                let call = leader_request(request.clone(), timeout);
                async move { client.heartbeat(call).await }
            })
            .await;
        match result {
            Ok(reply) => {
                self.note_reachable(true, None);
                self.apply_heartbeat(reply);
            }
            Err(error) if worker_unknown(&error) => self.forget_registration(),
            Err(error @ CallError::Unavailable { .. }) => self.note_reachable(false, Some(&error)),
            Err(error) => warn!(%error, "heartbeat refused"),
        }
    }

    fn apply_heartbeat(&self, reply: HeartbeatResponse) {
        {
            let mut state = lock(&self.state);
            if state.enabled != reply.enabled {
                if reply.enabled {
                    info!("an admin enabled this worker: taking tasks");
                } else {
                    warn!(
                        "this worker was disabled: it takes no new tasks (scaleout workers enable {})",
                        self.worker_id
                    );
                }
            }
            if state.draining != reply.draining {
                if reply.draining {
                    info!("this worker is draining: running tasks finish, no new ones are taken");
                } else {
                    info!("this worker is no longer draining");
                }
            }
            state.enabled = reply.enabled;
            state.draining = reply.draining;
            for lease in &reply.lost {
                state.pending.remove(&(lease.job_id, lease.lease_token));
            }
        }
        for lease in reply.cancel {
            self.kill((lease.job_id, lease.lease_token), KillReason::Cancelled);
        }
        for lease in reply.lost {
            self.kill((lease.job_id, lease.lease_token), KillReason::LeaseLost);
        }
        self.wake_acquire.notify_one();
    }
}
