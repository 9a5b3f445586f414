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

use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, error, info, trace, warn, Instrument};

use super::config::WorkerConfig;
use crate::disk::{write_atomically, OsDisk};
use crate::wall_time::now_ms;

/// In the state dir: the id of the AcquireTasks call not yet answered.
const ACQUIRE_REQUEST_FILE: &str = "acquire-request-id";

use super::connection::{CallError, Connection};
use super::host::{self, CpuSampler};
use super::observe::{Finished, WorkerMetrics, WorkerView};
use super::runner::{self, Invocation, KillReason, OutputLine, RunOutcome, Stream};
use super::spool::{Spool, SpoolEntry, SpoolSize, SpooledLine, SpooledOutcome};
use crate::pb::v1::{
    AcquireTasksRequest, AppendLogsRequest, AttemptOutcome, CompleteTaskRequest, HeartbeatRequest,
    HeartbeatResponse, JobState, LeaseRef, LogLevel, LogLine, RegisterWorkerRequest,
    RenewLeasesRequest, TaskAssignment, WorkerInfo,
};
use crate::rpc::{Backoff, Reason};

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

    // ---- control: registration and heartbeats ------------------------------------------------

    async fn control_loop(&self) {
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
                    let mut call = tonic::Request::new(request.clone());
                    call.set_timeout(timeout);
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
                if let Err(refusal) = super::config::check_tolerance(c, reply.lease_interval_ms) {
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
                let mut call = tonic::Request::new(request.clone());
                call.set_timeout(timeout);
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

    // ---- acquire -----------------------------------------------------------------------------

    /// Free slots when the worker may take tasks, else `None`.
    fn free_slots(&self) -> Option<u32> {
        let state = lock(&self.state);
        let busy = u32::try_from(state.slots.len()).unwrap_or(u32::MAX);
        let free = self.config.max_task_count.saturating_sub(busy);
        (state.registered && state.enabled && !state.draining && !self.shutting_down() && free > 0)
            .then_some(free)
    }

    async fn acquire_loop(self: &Arc<Self>) {
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
            };
            let wait = self.config.acquire_wait();
            let sent = Instant::now();
            let result = self
                .connection
                .call(
                    wait + PER_CALL_TIMEOUT,
                    wait + REGISTER_DEADLINE,
                    |mut client, timeout| {
                        let mut call = tonic::Request::new(request.clone());
                        call.set_timeout(timeout);
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

    /// Puts a leased task in a slot and runs it; `requested` is when the call that got the lease
    /// was sent (the lease started after it).
    fn start(self: &Arc<Self>, task: TaskAssignment, requested: Instant) {
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
                info!(?outcome, ?exit_code, %error, "task ended");
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
        info!(?reason, "task not started: its lease was not confirmed");
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

    // ---- renew -------------------------------------------------------------------------------

    async fn renew_loop(&self) {
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
    async fn kill_loop(&self) {
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
                let mut call = tonic::Request::new(request.clone());
                call.set_timeout(timeout);
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

    // ---- spool -------------------------------------------------------------------------------

    /// Runs `f` on the spool off the async threads (it fsyncs).
    async fn with_spool<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Spool) -> R + Send + 'static,
    ) -> Option<R> {
        let spool = Arc::clone(&self.spool);
        tokio::task::spawn_blocking(move || f(&mut lock(&spool)))
            .await
            .ok()
    }

    async fn spool_append(&self, entry: SpoolEntry) {
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

    async fn drain_loop(&self) {
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

    async fn append_logs(
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
                let mut call = tonic::Request::new(request.clone());
                call.set_timeout(timeout);
                async move { client.append_logs(call).await }
            })
            .await
            .map(|_| ())
    }

    async fn complete_task(
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
                let mut call = tonic::Request::new(request.clone());
                call.set_timeout(timeout);
                async move { client.complete_task(call).await }
            })
            .await?;
        Ok(JobState::try_from(reply.job_state).unwrap_or(JobState::Unspecified))
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
                    return info!(?outcome, job_state, "result delivered");
                }
                Err(CallError::LeaseLost(_)) => {
                    return warn!(
                        ?outcome,
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
                    return error!(error = %call_error, ?outcome, "result refused; dropped");
                }
            }
        }
        info!(?outcome, "result spooled until a replica answers");
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
