//! The worker agent's main loop: register, heartbeat, acquire tasks into slots, renew their
//! leases, stream their logs, report their results, and spool what cannot be delivered.
//!
//! Four loops run side by side, and one future per running task:
//! - **control**: registers (retrying with backoff until a replica answers), then heartbeats
//!   every `agent_heartbeat_interval` with the running leases, CPU and free memory. The answer
//!   says whether the worker is enabled or draining, which jobs were cancelled (kill, complete
//!   CANCELLED) and which leases are lost (kill, report nothing). A master that no longer knows
//!   the worker (removed, or its registration lost) gets a new registration.
//! - **acquire**: while registered, enabled, not draining and with free slots, long-polls
//!   AcquireTasks for up to `free_slots` tasks and starts each in a slot.
//! - **renew**: every `task_heartbeat_interval`, one RenewLeases call for every lease held. A
//!   lease not renewed is lost: its task is killed. A cancel request kills it and completes it
//!   CANCELLED. A task is killed once its lease may no longer be valid: `kill_after` (by
//!   default derived from the master's lease, learned at registration) after its last
//!   successful renewal was *sent*, so it never runs beside its next attempt. A configured
//!   tolerance longer than the lease stops the agent at registration (exit 2) unless
//!   `allow_overlapping_attempts` is set. A task gets `SCALEOUT_LEASE_TOKEN` (with
//!   `SCALEOUT_JOB_ID` and `SCALEOUT_ATTEMPT`) to fence its own writes.
//! - **drain**: delivers the spool, oldest first, whenever the cluster answers.
//! - **a task**: runs the process ([`super::runner`]), batches its output (up to
//!   [`MAX_BATCH_LINES`] lines or [`BATCH_LINGER`]) into AppendLogs, then reports the result
//!   with CompleteTask. If no replica answers within a deadline, the batch or the result goes to
//!   the spool, and so does everything after it for that task, which keeps its order. The lease
//!   of a result waiting in the spool keeps being renewed (even across a worker restart), so the
//!   result is still current when it arrives. A delivery answered LEASE_LOST is dropped: the
//!   master recorded it as late.
//!
//! Leader changes never touch running tasks: every call simply finds the new leader.
//!
//! On shutdown the agent stops acquiring, kills every running task and reports each as FAILED
//! with the error "worker shut down" (delivered if a replica answers within
//! [`SHUTDOWN_DELIVERY_DEADLINE`], else spooled for the next start), so the master can retry
//! the job elsewhere at once instead of waiting for the lease to expire.
//!
//! stdout lines are logged at INFO, stderr lines at ERROR; the agent adds a line of its own
//! (prefixed `[worker]`) when it fails to start a task, times it out or kills it.
//!
//! The agent counts failed renewals and finished tasks into [`WorkerMetrics`], and
//! [`Agent::view`] gives [`super::observe`] the rest (registration, last contact, slots, spool)
//! at each scrape.

// Wire messages are built with `..Default::default()` so that fields added to the proto later
// (it grows with the issues) keep their defaults instead of breaking the build.
#![allow(clippy::needless_update)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::{info, warn};

use super::config::WorkerConfig;

/// In the state dir: the id of the AcquireTasks call not yet answered.
const ACQUIRE_REQUEST_FILE: &str = "acquire-request-id";

use super::connection::{CallError, Connection};
use super::host::{self, CpuSampler};
use super::observe::{WorkerMetrics, WorkerView};
use super::runner::KillReason;
use super::spool::{Spool, SpoolEntry, SpoolSize};
use crate::pb::v1::LeaseRef;
use crate::rpc::{Backoff, Reason};

mod acquire;
mod control;
mod delivery;
mod renewal;
mod task;

/// Most lines in one AppendLogs call.
pub const MAX_BATCH_LINES: usize = 200;
/// How long the first line of a batch waits for more.
pub const BATCH_LINGER: Duration = Duration::from_millis(500);
/// How long one attempt at one replica may take (long-polls add their wait).
const PER_CALL_TIMEOUT: Duration = Duration::from_secs(5);
const REGISTER_DEADLINE: Duration = Duration::from_secs(10);
/// A log batch waits this long for the cluster before it is spooled (the task's output is
/// held back meanwhile, so keep it short).
const LOG_DELIVERY_DEADLINE: Duration = Duration::from_secs(5);
const COMPLETE_DELIVERY_DEADLINE: Duration = Duration::from_secs(10);
/// Delivery deadline while shutting down: then spool.
pub const SHUTDOWN_DELIVERY_DEADLINE: Duration = Duration::from_secs(2);
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);
/// How often the drain loop looks at the spool when nothing wakes it.
const DRAIN_RECHECK: Duration = Duration::from_secs(1);
/// The longest the agent waits for killed tasks to report on shutdown.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(15);
/// Lines buffered between a task's pipes and its log batcher.
const LINE_CHANNEL: usize = 1024;
/// How soon a worker too busy for new tasks looks at its load again.
const LOAD_RECHECK: Duration = Duration::from_millis(500);
/// How often the agent looks for tasks whose lease may have run out.
const KILL_CHECK_EVERY: Duration = Duration::from_millis(100);
/// The master's default lease interval, assumed until a registration tells the real one.
const DEFAULT_LEASE_MS: u64 = 30_000;
/// Backoff bounds for registration and for an acquire loop that gets no answer.
const RETRY: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));

/// A lease: job id and token. A job can come back to this worker with a new lease while the
/// old attempt is still being killed, so slots are keyed by both.
type Key = (u64, u64);

/// A task this worker runs.
struct Slot {
    attempt: u32,
    kill: watch::Sender<Option<KillReason>>,
    last_renewed: Instant,
    /// A renewal after the grant found the lease current and the job not cancelled: only then
    /// does the process start (a grant can arrive late, from a deposed leader, after a cancel).
    confirmed: watch::Sender<bool>,
    /// The process has not ended yet (after that the slot only waits for its report).
    running: bool,
}

/// A finished task whose result waits in the spool; its lease is kept alive until delivery.
struct Pending {
    last_renewed: Instant,
}

#[derive(Default)]
struct State {
    registered: bool,
    enabled: bool,
    draining: bool,
    /// Whether the last call reached the cluster (for logging transitions only).
    unreachable_since: Option<Instant>,
    /// When a call last reached the cluster (readiness).
    last_contact: Option<Instant>,
    /// The last failed call's error (readiness says it).
    last_error: Option<String>,
    slots: BTreeMap<Key, Slot>,
    pending: BTreeMap<Key, Pending>,
    /// The master's lease interval, from the last registration (0 before it).
    lease_interval_ms: u64,
    /// Why this agent cannot go on (a setting the master's lease makes unsafe): it stops.
    fatal: Option<String>,
}

pub(super) struct Agent {
    config: WorkerConfig,
    worker_id: String,
    connection: Connection,
    state: Mutex<State>,
    spool: Arc<Mutex<Spool>>,
    /// The spool's size, read without its lock.
    spool_size: Arc<SpoolSize>,
    metrics: WorkerMetrics,
    cpu: Mutex<CpuSampler>,
    shutting_down: AtomicBool,
    /// Something the acquire loop waits for changed (a slot freed, enabled, registered).
    wake_acquire: Notify,
    /// Something went into the spool.
    wake_drain: Notify,
    /// A slot was removed (shutdown waits on it).
    slot_removed: Notify,
    /// `State::fatal` was set: the loops stop.
    fatal_set: Notify,
    /// New leases wait for a confirming renewal: renew now rather than at the next tick.
    wake_renew: Notify,
}

/// Waits until a task's lease is confirmed by a renewal, or until it is killed first (its
/// reason).
async fn wait_for_confirmation(
    mut confirmed: watch::Receiver<bool>,
    mut kill: watch::Receiver<Option<KillReason>>,
) -> Result<(), KillReason> {
    tokio::select! {
        biased;
        killed = kill.wait_for(Option::is_some) => match killed {
            Ok(reason) => Err(reason.unwrap_or(KillReason::Shutdown)),
            Err(_) => Err(KillReason::Shutdown),
        },
        result = confirmed.wait_for(|c| *c) => match result {
            Ok(_) => Ok(()),
            Err(_) => Err(KillReason::Shutdown),
        },
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn lease_ref((job_id, lease_token): Key) -> LeaseRef {
    LeaseRef {
        job_id,
        lease_token,
    }
}

/// Whether the master refused the call because it does not know this worker.
fn worker_unknown(error: &CallError) -> bool {
    matches!(error, CallError::Rejected(_)) && error.reason() == Some(Reason::WorkerNotFound)
}

impl Agent {
    pub(super) fn new(
        config: WorkerConfig,
        connection: Connection,
        spool: Spool,
        metrics: WorkerMetrics,
    ) -> Agent {
        let now = Instant::now();
        // Results spooled by an earlier run still hold leases: keep them alive until delivered.
        let pending = spool
            .entries()
            .filter(|entry| matches!(entry, SpoolEntry::Complete { .. }))
            .map(|entry| {
                (
                    (entry.job_id(), entry.lease_token()),
                    Pending { last_renewed: now },
                )
            })
            .collect();
        Agent {
            worker_id: config.agent_id.to_string(),
            config,
            connection,
            state: Mutex::new(State {
                pending,
                ..State::default()
            }),
            spool_size: spool.size(),
            spool: Arc::new(Mutex::new(spool)),
            metrics,
            cpu: Mutex::new(CpuSampler::default()),
            shutting_down: AtomicBool::new(false),
            wake_acquire: Notify::new(),
            wake_drain: Notify::new(),
            slot_removed: Notify::new(),
            fatal_set: Notify::new(),
            wake_renew: Notify::new(),
        }
    }

    /// The loops; they run until dropped.
    pub(super) async fn run_loops(self: &Arc<Self>) {
        let fatal = self.fatal_set.notified();
        tokio::select! {
            _ = async {
                tokio::join!(
                    self.control_loop(),
                    self.acquire_loop(),
                    self.renew_loop(),
                    self.kill_loop(),
                    self.drain_loop()
                )
            } => {}
            () = fatal => {}
        }
    }

    /// Why the agent stopped on its own, if it did (see `State::fatal`).
    pub(super) fn fatal(&self) -> Option<String> {
        lock(&self.state).fatal.clone()
    }

    /// How long after its last renewal was sent a task is killed (`config::kill_after`).
    fn kill_after(&self) -> Duration {
        let lease_ms = match lock(&self.state).lease_interval_ms {
            0 => DEFAULT_LEASE_MS,
            known => known,
        };
        super::config::kill_after(&self.config, lease_ms)
    }

    fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    pub(super) fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// What the metrics endpoint reports, read now.
    pub(super) fn view(&self) -> WorkerView {
        let state = lock(&self.state);
        WorkerView {
            registered: state.registered,
            shutting_down: self.shutting_down(),
            since_contact: state.last_contact.map(|at| at.elapsed()),
            last_error: state.last_error.clone(),
            running_tasks: state.slots.len(),
            spool_entries: self.spool_size.entries(),
            spool_bytes: self.spool_size.bytes(),
        }
    }

    fn delivery_deadline(&self, normal: Duration) -> Duration {
        if self.shutting_down() {
            SHUTDOWN_DELIVERY_DEADLINE
        } else {
            normal
        }
    }

    fn load(&self) -> (f64, u64) {
        let cpu = lock(&self.cpu).sample();
        (cpu, host::free_memory_mb())
    }

    /// Every lease this worker holds: running tasks and spooled results.
    fn held_leases(&self) -> Vec<LeaseRef> {
        let state = lock(&self.state);
        let keys: BTreeSet<Key> = state
            .slots
            .keys()
            .chain(state.pending.keys())
            .copied()
            .collect();
        keys.into_iter().map(lease_ref).collect()
    }

    /// Notes whether the cluster answered, logging only the transitions.
    fn note_reachable(&self, reachable: bool, error: Option<&CallError>) {
        let mut state = lock(&self.state);
        if reachable {
            state.last_contact = Some(Instant::now());
        }
        if let Some(error) = error {
            state.last_error = Some(error.to_string());
        }
        match (reachable, state.unreachable_since) {
            (true, Some(since)) => {
                state.unreachable_since = None;
                info!(
                    leader = self.connection.leader().as_deref().unwrap_or("?"),
                    after_ms = since.elapsed().as_millis() as u64,
                    "the cluster answers again"
                );
            }
            (false, None) => {
                state.unreachable_since = Some(Instant::now());
                warn!(
                    endpoints = ?self.connection.endpoints(),
                    error = error.map(ToString::to_string).unwrap_or_default(),
                    "no replica answers; running tasks go on, their logs and results are spooled"
                );
            }
            _ => {}
        }
    }

    fn forget_registration(&self) {
        let mut state = lock(&self.state);
        if state.registered {
            warn!(
                "the master does not know this worker (removed, or its registration lost); \
                 registering again"
            );
        }
        state.registered = false;
    }

    /// Stops the task holding `key` for `reason`; the first reason wins.
    fn kill(&self, key: Key, reason: KillReason) -> bool {
        let state = lock(&self.state);
        let Some(slot) = state.slots.get(&key).filter(|slot| slot.running) else {
            return false;
        };
        let first = slot.kill.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
        if first {
            info!(
                job_id = key.0,
                lease = key.1,
                attempt = slot.attempt,
                ?reason,
                "stopping the task"
            );
        }
        first
    }

    // ---- shutdown ----------------------------------------------------------------------------

    /// Stops acquiring, kills every running task and waits (bounded) for their results to be
    /// delivered or spooled.
    pub(super) async fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let keys: Vec<Key> = lock(&self.state).slots.keys().copied().collect();
        info!(
            running = keys.len(),
            "shutting down: running tasks are killed and reported as failed (worker shut down)"
        );
        for key in keys {
            self.kill(key, KillReason::Shutdown);
        }
        let until = Instant::now() + SHUTDOWN_WAIT;
        loop {
            let removed = self.slot_removed.notified();
            tokio::pin!(removed);
            removed.as_mut().enable();
            let left = lock(&self.state).slots.len();
            if left == 0 {
                break;
            }
            if tokio::time::timeout_at(until, removed).await.is_err() {
                warn!(
                    left,
                    "tasks did not finish reporting in time; their leases will expire"
                );
                break;
            }
        }
        let spooled = self
            .with_spool(|spool| spool.len())
            .await
            .unwrap_or_default();
        info!(spooled, "worker agent stopped");
    }
}
