//! Lease renewal: one RenewLeases call for every lease held, each tick, and the kill of a task
//! whose lease may have run out (so no attempt runs beside the next one).

use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tracing::warn;

use super::{lock, worker_unknown, Agent, KILL_CHECK_EVERY, PER_CALL_TIMEOUT};
use crate::pb::v1::{LeaseRef, RenewLeasesRequest};
use crate::rpc::leader_request;
use crate::worker::connection::CallError;
use crate::worker::runner::KillReason;

impl Agent {
    pub(super) async fn renew_loop(&self) {
        let period = self.config.task_heartbeat_interval();
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = self.wake_renew.notified() => {}
            }
            let leases = self.held_leases();
            if !leases.is_empty() {
                self.renew(leases, period).await;
            }
        }
    }

    /// Kills tasks whose lease may have run out, on a timer of its own: a renewal that hangs
    /// until its deadline must not delay the kill past the lease.
    pub(super) async fn kill_loop(&self) {
        let mut ticker = tokio::time::interval(KILL_CHECK_EVERY);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.enforce_tolerance();
        }
    }

    async fn renew(&self, leases: Vec<LeaseRef>, period: Duration) {
        let request = RenewLeasesRequest {
            worker_id: self.worker_id.clone(),
            leases,
            ..Default::default()
        };
        let deadline = period.clamp(Duration::from_secs(1), Duration::from_secs(10));
        // The master extends a lease from when it applies the renewal, which is after this:
        // counting from here, a task is killed before its lease can run out.
        let sent = Instant::now();
        let result = self
            .connection
            .call(PER_CALL_TIMEOUT, deadline, |mut client, timeout| {
                let call = leader_request(request.clone(), timeout);
                async move { client.renew_leases(call).await }
            })
            .await;
        if result.is_err() {
            self.metrics.renew_failed(request.leases.len());
        }
        let reply = match result {
            Ok(reply) => reply,
            Err(error) if worker_unknown(&error) => return self.forget_registration(),
            Err(error @ CallError::Unavailable { .. }) => {
                return self.note_reachable(false, Some(&error))
            }
            Err(error) => return warn!(%error, "lease renewal refused"),
        };
        self.note_reachable(true, None);
        let not_renewed = reply.leases.iter().filter(|s| !s.renewed).count();
        if not_renewed > 0 {
            self.metrics.renew_failed(not_renewed);
        }
        let mut lost = Vec::new();
        let mut cancelled = Vec::new();
        {
            let mut state = lock(&self.state);
            for status in reply.leases {
                let Some(lease) = status.lease else { continue };
                let key = (lease.job_id, lease.lease_token);
                if !status.renewed {
                    state.pending.remove(&key);
                    lost.push(key);
                    continue;
                }
                if let Some(slot) = state.slots.get_mut(&key) {
                    slot.last_renewed = sent;
                    if !status.cancel_requested {
                        slot.confirmed.send_if_modified(|confirmed| {
                            let first = !*confirmed;
                            *confirmed = true;
                            first
                        });
                    }
                }
                if let Some(pending) = state.pending.get_mut(&key) {
                    pending.last_renewed = sent;
                }
                if status.cancel_requested {
                    cancelled.push(key);
                }
            }
        }
        for key in lost {
            if self.kill(key, KillReason::LeaseLost) {
                warn!(
                    job_id = key.0,
                    lease = key.1,
                    "lease not renewed: it expired or the job ended"
                );
            }
        }
        for key in cancelled {
            self.kill(key, KillReason::Cancelled);
        }
    }

    /// Kills tasks whose lease has not been renewed for `heartbeat_error_tolerance`, and stops
    /// renewing spooled results that old: the master has expired those leases by now.
    fn enforce_tolerance(&self) {
        let tolerance = self.kill_after();
        let mut stale = Vec::new();
        {
            let mut state = lock(&self.state);
            for (key, slot) in &state.slots {
                // A task not started yet runs nothing that could overlap: it waits for a
                // renewal to confirm its lease (or to say it is lost), however long that takes.
                if *slot.confirmed.borrow() && slot.last_renewed.elapsed() > tolerance {
                    stale.push(*key);
                }
            }
            state
                .pending
                .retain(|_, pending| pending.last_renewed.elapsed() <= tolerance);
        }
        for key in stale {
            if self.kill(key, KillReason::NoRenewal) {
                warn!(
                    job_id = key.0,
                    lease = key.1,
                    tolerance_ms = tolerance.as_millis() as u64,
                    "no lease renewal succeeded within heartbeat_error_tolerance: killing the task"
                );
            }
        }
    }
}
