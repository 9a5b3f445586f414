//! The client library used by the CLI, the demo, the benchmarks and the tests.
//!
//! It holds a list of replica endpoints (any of them will do). Writes and linearizable reads go
//! to the leader through [`Replicas::on_leader`] (redirects followed, failures retried on the
//! next endpoint after a short backoff, all within the client's deadline); stale reads and
//! status go to any replica.
//!
//! Submits are made safe to retry: when the caller gives no idempotency key, the client makes
//! one, so a submit whose answer was lost and is retried on the new leader cannot create a
//! second job.

use std::future::Future;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::pb::v1::admin_service_client::AdminServiceClient;
use crate::pb::v1::job_service_client::JobServiceClient;
use crate::pb::v1::{
    AddReplicaRequest, AddReplicaResponse, CancelJobRequest, ClusterStatusRequest,
    ClusterStatusResponse, GetJobLogsRequest, GetJobLogsResponse, GetJobRequest, Job, JobSpec,
    JobState, ListJobsRequest, ListJobsResponse, ListWorkersRequest, RemoveReplicaRequest,
    RemoveReplicaResponse, RemoveWorkerRequest, SetWorkerStateRequest, SubmitJobRequest,
    SubmitJobResponse, TransferLeaderRequest, TransferLeaderResponse, Worker, WorkerAction,
};
use crate::rpc::{leader_request, Backoff, CallError, EndpointError, Reason, Replicas};
use crate::transport::Security;

const DEFAULT_DEADLINE: Duration = Duration::from_secs(15);
const MAX_DEADLINE: Duration = Duration::from_secs(24 * 3600);
const PER_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A person waits at the CLI: retry quickly.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(25), Duration::from_millis(200));
const MAX_MESSAGE_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no endpoints given: pass --endpoints host:port,... or set SCALEOUT_ENDPOINTS")]
    NoEndpoints,
    #[error("endpoint {endpoint:?} is not a valid address: {message}")]
    BadEndpoint { endpoint: String, message: String },
    /// No replica could serve the call before the deadline: the cluster is down or has no leader.
    #[error("the cluster is unavailable: no replica served the request within {deadline:?} (last error: {last_error})")]
    Unavailable {
        deadline: Duration,
        last_error: String,
    },
    /// Nothing listens at any endpoint (the CLI gives up at once: [`Client::failing_fast`]).
    #[error("no replica accepts connections: are they running, and are these their API addresses (not their peer ports)? {each}")]
    Unreachable { each: String },
    /// A replica answered with an error that retrying will not fix.
    #[error("{}: {}", .0.code(), .0.message())]
    Rejected(Status),
}

impl ClientError {
    pub fn status(&self) -> Option<&Status> {
        match self {
            ClientError::Rejected(status) => Some(status),
            _ => None,
        }
    }
}

pub struct Client {
    replicas: Replicas,
    deadline: Duration,
}

impl Client {
    /// A client of the replicas at `endpoints` (host:port), connecting with `security` (an
    /// operator or admin certificate, or plaintext for an `insecure` cluster).
    pub fn new<S: AsRef<str>>(endpoints: &[S], security: Security) -> Result<Client, ClientError> {
        let replicas = Replicas::new(endpoints, security, BACKOFF).map_err(|e| match e {
            EndpointError::None => ClientError::NoEndpoints,
            EndpointError::Invalid { endpoint, message } => {
                ClientError::BadEndpoint { endpoint, message }
            }
        })?;
        Ok(Client {
            replicas,
            deadline: DEFAULT_DEADLINE,
        })
    }

    /// Gives up at once, unavailable, when every endpoint refused the connection, instead of
    /// retrying until the deadline (see [`Replicas::failing_fast`]): what the CLI does.
    pub fn failing_fast(mut self) -> Self {
        self.replicas = self.replicas.failing_fast();
        self
    }

    /// How long one call may take in all, redirects and retries included (at most a day).
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline.min(MAX_DEADLINE);
        self
    }

    pub fn endpoints(&self) -> &[String] {
        self.replicas.endpoints()
    }

    /// The client's error for a call that failed: for one no replica served, with a hint when
    /// the likely cause is a plaintext client talking to a TLS cluster.
    fn error(&self, error: CallError) -> ClientError {
        let mut last_error = match error {
            CallError::Rejected(status) | CallError::LeaseLost(status) => {
                return ClientError::Rejected(status)
            }
            CallError::Refused { each } => return ClientError::Unreachable { each },
            CallError::Unavailable { last_error, .. } => last_error,
        };
        // What a TLS server's refusal of a plaintext HTTP/2 preface looks like from here.
        let refused_plaintext = ["h2 protocol error", "broken pipe", "connection reset"]
            .iter()
            .any(|sign| last_error.contains(sign));
        if !self.replicas.security().is_tls() && refused_plaintext {
            last_error.push_str(
                " (the replicas may be running TLS: give a certificate with --tls-dir or \
                 --ca/--cert/--key instead of --insecure)",
            );
        }
        ClientError::Unavailable {
            deadline: self.deadline,
            last_error,
        }
    }

    /// Runs `op` against the leader, following redirects, until it succeeds, fails for good, or
    /// the deadline passes.
    async fn on_leader<T, F, Fut>(&self, op: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        // Within the caller's deadline, even one shorter than a call's own timeout: a client
        // asked for an answer within 1 s must not wait 5 s for a replica that does not answer.
        self.replicas
            .on_leader(PER_CALL_TIMEOUT, self.deadline, op)
            .await
            .map_err(|e| self.error(e))
    }

    /// [`Client::on_leader`] for a call that may take up to `per_call` on the leader (the
    /// overall deadline stretches to fit one such call).
    async fn on_leader_with<T, F, Fut>(&self, per_call: Duration, op: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.replicas
            .on_leader(per_call, self.deadline.max(per_call), op)
            .await
            .map_err(|e| self.error(e))
    }

    /// Runs `op` against the endpoints in order, without redirects, until one answers.
    async fn on_any<T, F, Fut>(&self, op: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.replicas
            .on_any(PER_CALL_TIMEOUT, self.deadline, op)
            .await
            .map_err(|e| self.error(e))
    }

    fn job_client(channel: Channel) -> JobServiceClient<Channel> {
        JobServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Submits a job; with no key given, one is made so retries cannot duplicate the job.
    pub async fn submit_job(
        &self,
        spec: JobSpec,
        idempotency_key: Option<String>,
    ) -> Result<SubmitJobResponse, ClientError> {
        let idempotency_key = idempotency_key
            .filter(|key| !key.is_empty())
            .unwrap_or_else(|| format!("auto-{}", uuid::Uuid::new_v4()));
        let request = SubmitJobRequest {
            spec: Some(spec),
            idempotency_key,
        };
        self.on_leader(|channel, timeout| {
            let call = leader_request(request.clone(), timeout);
            async move { Self::job_client(channel).submit_job(call).await }
        })
        .await
    }

    pub async fn get_job(&self, job_id: u64, stale: bool) -> Result<Job, ClientError> {
        let op = |channel, timeout| {
            let call = leader_request(GetJobRequest { job_id, stale }, timeout);
            async move { Self::job_client(channel).get_job(call).await }
        };
        let reply = if stale {
            self.on_any(op).await?
        } else {
            self.on_leader(op).await?
        };
        reply
            .job
            .ok_or_else(|| ClientError::Rejected(Status::internal("the reply had no job")))
    }

    pub async fn list_jobs(
        &self,
        state: Option<JobState>,
        after_id: u64,
        limit: u32,
        stale: bool,
    ) -> Result<ListJobsResponse, ClientError> {
        self.list_jobs_where(ListJobsRequest {
            state: state.unwrap_or(JobState::Unspecified) as i32,
            after_id,
            limit,
            stale,
            ..ListJobsRequest::default()
        })
        .await
    }

    /// One page of the jobs `request` asks for (state, name, tag, worker).
    pub async fn list_jobs_where(
        &self,
        request: ListJobsRequest,
    ) -> Result<ListJobsResponse, ClientError> {
        let stale = request.stale;
        let op = |channel, timeout| {
            let call = leader_request(request.clone(), timeout);
            async move { Self::job_client(channel).list_jobs(call).await }
        };
        if stale {
            self.on_any(op).await
        } else {
            self.on_leader(op).await
        }
    }

    /// Every job in the given state (or all), following pages.
    pub async fn list_all_jobs(
        &self,
        state: Option<JobState>,
        stale: bool,
    ) -> Result<Vec<Job>, ClientError> {
        self.list_all_jobs_where(ListJobsRequest {
            state: state.unwrap_or(JobState::Unspecified) as i32,
            stale,
            ..ListJobsRequest::default()
        })
        .await
    }

    /// Every job `request` asks for, following pages from its `after_id`.
    pub async fn list_all_jobs_where(
        &self,
        mut request: ListJobsRequest,
    ) -> Result<Vec<Job>, ClientError> {
        let mut jobs = Vec::new();
        request.limit = 1000;
        loop {
            let page = self.list_jobs_where(request.clone()).await?;
            jobs.extend(page.jobs);
            if page.next_after_id == 0 {
                return Ok(jobs);
            }
            request.after_id = page.next_after_id;
        }
    }

    pub async fn cancel_job(&self, job_id: u64) -> Result<Job, ClientError> {
        let reply = self
            .on_leader(|channel, timeout| {
                let call = leader_request(CancelJobRequest { job_id }, timeout);
                async move { Self::job_client(channel).cancel_job(call).await }
            })
            .await?;
        reply
            .job
            .ok_or_else(|| ClientError::Rejected(Status::internal("the reply had no job")))
    }

    /// A job's log lines after `after_sequence`.
    pub async fn get_job_logs(
        &self,
        job_id: u64,
        after_sequence: u64,
        stale: bool,
    ) -> Result<GetJobLogsResponse, ClientError> {
        let op = |channel, timeout| {
            let call = leader_request(
                GetJobLogsRequest {
                    job_id,
                    after_sequence,
                    limit: 0,
                    stale,
                    tail: false,
                },
                timeout,
            );
            async move { Self::job_client(channel).get_job_logs(call).await }
        };
        if stale {
            self.on_any(op).await
        } else {
            self.on_leader(op).await
        }
    }

    pub async fn list_workers(&self, stale: bool) -> Result<Vec<Worker>, ClientError> {
        let op = |channel, timeout| {
            let call = leader_request(ListWorkersRequest { stale }, timeout);
            async move { AdminServiceClient::new(channel).list_workers(call).await }
        };
        let reply = if stale {
            self.on_any(op).await?
        } else {
            self.on_leader(op).await?
        };
        Ok(reply.workers)
    }

    /// Enables, disables or drains a worker; returns it as it is now.
    pub async fn set_worker_state(
        &self,
        worker_id: &str,
        action: WorkerAction,
    ) -> Result<Worker, ClientError> {
        let request = SetWorkerStateRequest {
            worker_id: worker_id.to_string(),
            action: action as i32,
        };
        let reply = self
            .on_leader(|channel, timeout| {
                let call = leader_request(request.clone(), timeout);
                async move {
                    AdminServiceClient::new(channel)
                        .set_worker_state(call)
                        .await
                }
            })
            .await?;
        reply
            .worker
            .ok_or_else(|| ClientError::Rejected(Status::internal("the reply had no worker")))
    }

    /// Removes an idle worker. A retry whose earlier try may have removed it (its answer was
    /// lost) and that then finds no such worker reports success: the worker is gone either way.
    pub async fn remove_worker(&self, worker_id: &str) -> Result<(), ClientError> {
        let request = RemoveWorkerRequest {
            worker_id: worker_id.to_string(),
        };
        let maybe_removed = std::sync::atomic::AtomicBool::new(false);
        let outcome = self
            .on_leader(|channel, timeout| {
                let call = leader_request(request.clone(), timeout);
                let maybe_removed = &maybe_removed;
                async move {
                    let reply = AdminServiceClient::new(channel).remove_worker(call).await;
                    if reply.as_ref().is_err_and(|s| outcome_unknown(s.code())) {
                        maybe_removed.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    reply
                }
            })
            .await;
        match outcome {
            Ok(_) => Ok(()),
            Err(ClientError::Rejected(status))
                if Reason::of(&status) == Some(Reason::WorkerNotFound)
                    && maybe_removed.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// Adds replica `id` (which must be running) as a learner, waits up to `catch_up` for it to
    /// hold the log, then makes it a voter. Returns the voters and the change's log index.
    pub async fn add_replica(
        &self,
        id: u64,
        api_addr: &str,
        peer_addr: &str,
        catch_up: Duration,
    ) -> Result<AddReplicaResponse, ClientError> {
        let request = AddReplicaRequest {
            id,
            api_addr: api_addr.to_string(),
            peer_addr: peer_addr.to_string(),
            catch_up_timeout_ms: u32::try_from(catch_up.as_millis()).unwrap_or(u32::MAX),
        };
        self.on_leader_with(catch_up + PER_CALL_TIMEOUT, |channel, timeout| {
            let call = leader_request(request.clone(), timeout);
            async move { AdminServiceClient::new(channel).add_replica(call).await }
        })
        .await
    }

    /// Removes replica `id` from the membership. Returns the voters and the change's log index.
    pub async fn remove_replica(&self, id: u64) -> Result<RemoveReplicaResponse, ClientError> {
        let request = RemoveReplicaRequest { id };
        self.on_leader_with(PER_CALL_TIMEOUT * 4, |channel, timeout| {
            let call = leader_request(request, timeout);
            async move { AdminServiceClient::new(channel).remove_replica(call).await }
        })
        .await
    }

    /// Hands leadership to voter `to`, or to the most up-to-date one; returns once the new
    /// leader leads.
    pub async fn transfer_leader(
        &self,
        to: Option<u64>,
    ) -> Result<TransferLeaderResponse, ClientError> {
        let request = TransferLeaderRequest { to };
        self.on_leader(|channel, timeout| {
            let call = leader_request(request, timeout);
            async move { AdminServiceClient::new(channel).transfer_leader(call).await }
        })
        .await
    }

    /// The cluster as the first replica that answers sees it.
    pub async fn cluster_status(&self) -> Result<ClusterStatusResponse, ClientError> {
        self.on_any(|channel, timeout| {
            let mut call = tonic::Request::new(ClusterStatusRequest {});
            call.set_timeout(timeout);
            async move { AdminServiceClient::new(channel).cluster_status(call).await }
        })
        .await
    }
}

/// Whether a call that ended with `code` may still have taken effect on the leader (its answer
/// was lost or it timed out after being sent): the caller cannot tell, and a retry must be one
/// the leader recognizes (an idempotency key, or a call that is harmless twice).
pub fn outcome_unknown(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
    )
}
