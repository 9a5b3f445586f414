//! A simulated worker for the benchmarks: its own certificate and connection, and the
//! WorkerService calls the agent makes, without the agent's processes, spool or slots.

use std::time::Duration;

use anyhow::Context;

use crate::harness::LocalCluster;
use crate::pb::v1;
use crate::rpc::contract::leader_request;
use crate::worker::connection::{keepalive_for, CallError, Connection};

/// The agent's default `task_heartbeat_interval_ms`, which sets how often it pings.
const AGENT_RENEWAL_INTERVAL: Duration = Duration::from_secs(10);
/// The longest a call (beyond its long-poll wait) keeps trying the replicas.
const CALL: Duration = Duration::from_secs(30);
/// The longest one try waits for its answer (beyond the long-poll wait).
const PER_TRY: Duration = Duration::from_secs(10);

pub(super) struct SimWorker {
    pub id: uuid::Uuid,
    connection: Connection,
}

impl SimWorker {
    /// A new worker named `name` with `max_tasks` slots, registered and enabled.
    pub async fn register(
        cluster: &LocalCluster,
        name: &str,
        max_tasks: u32,
    ) -> anyhow::Result<SimWorker> {
        let id = uuid::Uuid::new_v4();
        // Pinging as an agent with the default renewal interval does.
        let connection = Connection::new(
            &cluster.endpoints(),
            cluster.worker_security(id)?,
            keepalive_for(AGENT_RENEWAL_INTERVAL),
        )
        .map_err(|e| anyhow::anyhow!("bad endpoints: {e}"))?;
        let info = v1::WorkerInfo {
            worker_id: id.to_string(),
            display_name: name.into(),
            machine_name: "localhost".into(),
            max_tasks,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        let reply = connection
            .call(PER_TRY, CALL, |mut c, t| {
                let info = info.clone();
                async move {
                    c.register_worker(leader_request(
                        v1::RegisterWorkerRequest { info: Some(info) },
                        t,
                    ))
                    .await
                }
            })
            .await
            .with_context(|| format!("worker {name} could not register"))?;
        anyhow::ensure!(
            reply.enabled,
            "worker {name} registered but is not enabled (workers.auto_enable is off?)"
        );
        Ok(SimWorker { id, connection })
    }

    /// An AcquireTasks of this worker: `free_slots`, a long poll of `wait_ms`, `results` of
    /// tasks that ended, a new request id, and a load that never holds tasks back.
    pub fn acquire_request(
        &self,
        free_slots: u32,
        wait_ms: u32,
        results: Vec<v1::TaskResult>,
    ) -> v1::AcquireTasksRequest {
        v1::AcquireTasksRequest {
            worker_id: self.id.to_string(),
            free_slots,
            wait_ms,
            cpu_percent: 1.0,
            free_memory_mb: 4096,
            task_request_max_cpu: 100.0,
            request_id: uuid::Uuid::new_v4().to_string(),
            results,
            ..Default::default()
        }
    }

    pub async fn acquire(
        &self,
        request: v1::AcquireTasksRequest,
    ) -> Result<v1::AcquireTasksResponse, CallError> {
        let wait = Duration::from_millis(u64::from(request.wait_ms));
        self.connection
            .call(wait + PER_TRY, wait + CALL, |mut c, t| {
                let request = request.clone();
                async move { c.acquire_tasks(leader_request(request, t)).await }
            })
            .await
    }

    /// CompleteTask with `result`, as builds before results rode on AcquireTasks report.
    pub async fn complete(
        &self,
        result: v1::TaskResult,
    ) -> Result<v1::CompleteTaskResponse, CallError> {
        let request = v1::CompleteTaskRequest {
            worker_id: self.id.to_string(),
            lease: result.lease,
            outcome: result.outcome,
            exit_code: result.exit_code,
            error: result.error,
        };
        self.connection
            .call(PER_TRY, CALL, |mut c, t| {
                let request = request.clone();
                async move { c.complete_task(leader_request(request, t)).await }
            })
            .await
    }

    /// An idle worker's heartbeat: nothing running, a light load.
    pub async fn heartbeat(&self) -> Result<v1::HeartbeatResponse, CallError> {
        let request = v1::HeartbeatRequest {
            worker_id: self.id.to_string(),
            cpu_percent: 1.0,
            free_memory_mb: 4096,
            ..Default::default()
        };
        self.connection
            .call(PER_TRY, CALL, |mut c, t| {
                let request = request.clone();
                async move { c.heartbeat(leader_request(request, t)).await }
            })
            .await
    }
}

/// The result of a task that ran nothing and succeeded.
pub(super) fn succeeded(task: &v1::TaskAssignment) -> v1::TaskResult {
    v1::TaskResult {
        lease: Some(v1::LeaseRef {
            job_id: task.job_id,
            lease_token: task.lease_token,
        }),
        outcome: v1::AttemptOutcome::Succeeded as i32,
        exit_code: Some(0),
        error: String::new(),
    }
}
