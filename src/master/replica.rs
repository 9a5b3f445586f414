//! Wires one replica together and runs it until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tracing::{error, info, warn};

use super::admin_service::AdminApi;
use super::authz::{authorize, Permission};
use super::bootstrap::bootstrap;
use super::forward::{ForwardApi, Forwarder};
use super::job_service::JobApi;
use super::observe::{ProposalMetrics, ReplicaObserver};
use super::proposer::Proposer;
use super::worker_service::WorkerApi;
use crate::config::MasterConfig;
use crate::ops::{GrpcTimingLayer, Observed, Registry};
use crate::pb::raft::forward_service_server::ForwardServiceServer;
use crate::pb::raft::raft_service_server::RaftServiceServer;
use crate::pb::v1::admin_service_server::AdminServiceServer;
use crate::pb::v1::job_service_server::JobServiceServer;
use crate::pb::v1::worker_service_server::WorkerServiceServer;
use crate::raft::{open_storage, PeerNetwork, Raft, RaftGrpcService, StorageOpenError};
use crate::telemetry;
use crate::tls::{TlsError, TlsMaterial};
use crate::transport::{incoming, warn_insecure_every_minute, Security};

/// Why a replica could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error(transparent)]
    Storage(#[from] StorageOpenError),
    #[error("invalid raft settings: {0}; check the [raft] section of the config")]
    RaftConfig(String),
    #[error("cannot start the raft node: {0}")]
    RaftStart(String),
    #[error("cannot listen on {addr} ({which}): {source}; is another process using it?")]
    Bind {
        which: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Bootstrap(#[from] super::bootstrap::BootstrapError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the {which} server stopped unexpectedly ({reason}); restart the replica")]
    ServerStopped { which: &'static str, reason: String },
    #[error("the {which} server failed: {source}")]
    Serve {
        which: &'static str,
        source: tonic::transport::Error,
    },
    #[error("cannot serve gRPC reflection: {0}")]
    Reflection(String),
}

/// A last bound on any one call (handlers bound their own waits well below this).
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// How long a stopping replica waits for calls in flight.
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Entries per append. openraft gives each append one heartbeat interval to complete, follower
/// fsync included, so a catch-up is sent in modest steps rather than openraft's default 300.
const MAX_APPEND_ENTRIES: u64 = 64;

/// The largest replica-to-replica message. One log entry holds at most one proposal batch, which
/// the proposer keeps under the API limit (a single command can be as large as an API message),
/// so twice that plus room for framing always carries at least one entry; larger appends are
/// split (`PayloadTooLarge`).
fn peer_message_limit(config: &MasterConfig) -> usize {
    config
        .api
        .max_message_bytes
        .saturating_mul(2)
        .saturating_add(1 << 20)
}

fn raft_config(config: &MasterConfig) -> Result<openraft::Config, MasterError> {
    let raft = &config.raft;
    let openraft_election = crate::raft::lease::openraft_timeouts(raft.heartbeat_interval_ms);
    openraft::Config {
        cluster_name: "scaleout".into(),
        heartbeat_interval: raft.heartbeat_interval_ms,
        // openraft's elections are off; these set only its own lease and vote deadline, the
        // real lease is kept at the peer service (`raft::lease`).
        election_timeout_min: openraft_election.0,
        election_timeout_max: openraft_election.1,
        install_snapshot_timeout: raft.install_snapshot_timeout_ms,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_spacing(
            raft.snapshot_every_logs,
            config.id,
        )),
        max_in_snapshot_log_to_keep: raft.keep_logs_after_snapshot,
        max_payload_entries: MAX_APPEND_ENTRIES,
        snapshot_max_chunk_size: (peer_message_limit(config) / 2) as u64,
        // `raft::election` triggers elections, with a fresh random wait each time.
        enable_elect: false,
        ..openraft::Config::default()
    }
    .validate()
    .map_err(|e| MasterError::RaftConfig(e.to_string()))
}

/// This replica's snapshot interval: `every` stretched by 0, 1/8, 2/8 or 3/8 by its id, so the
/// replicas, which apply the same entries at nearly the same time, do not all build a snapshot
/// at once (each build takes a view of the state and writes a file the size of the state).
fn snapshot_spacing(every: u64, id: u64) -> u64 {
    every.saturating_add(every / 8 * (id.saturating_sub(1) % 4))
}

async fn bind(which: &'static str, addr: &str) -> Result<TcpListener, MasterError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MasterError::Bind {
            which,
            addr: addr.to_string(),
            source,
        })
}

/// Runs a replica until `shutdown` resolves, then stops it gracefully.
pub async fn run(
    config: MasterConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), MasterError> {
    telemetry::set_replica(config.id);
    let raft_settings = Arc::new(raft_config(&config)?);
    // Bound before the Raft node starts, so a taken port stops the replica before it can vote.
    let api_listener = bind("api", &config.api_listen).await?;
    let peer_listener = bind("peer", &config.peer_listen).await?;
    let metrics_listener = match &config.metrics_listen {
        Some(addr) => Some(bind("metrics", addr).await?),
        None => None,
    };
    let console_listener = match &config.console_listen {
        Some(addr) => Some(bind("console", addr).await?),
        None => None,
    };
    let registry = Registry::new();

    let storage = open_storage(
        &config.data_dir,
        config.id,
        config.storage.cache_capacity_mb << 20,
    )?;
    let (log_store, state_machine) = (storage.log_store, storage.state_machine);
    let wal_stats = log_store.stats();
    let admission = crate::raft::admission::Admission {
        node_id: config.id,
        storage_id: storage.identity.storage_id,
    };
    info!(storage_id = %admission.storage_id, pristine = storage.pristine, "data dir opened");
    // Name the persisted term in the log lines written before the Raft node reports its own.
    if let Ok(Some(vote)) =
        openraft::storage::RaftLogStorage::read_vote(&mut log_store.clone()).await
    {
        telemetry::set_term(vote.leader_id().term);
    }
    let security = match &config.tls {
        Some(paths) => Security::MutualTls(TlsMaterial::load(paths.clone())?),
        None => Security::Insecure,
    };
    let tls_duties = match &security {
        Security::MutualTls(material) => {
            info!(role = %material.role(), cert = %material.paths().cert.display(), "mutual TLS on both ports");
            material.spawn_reloader()
        }
        Security::Insecure => tokio::spawn(warn_insecure_every_minute("replica")),
    };
    let readers = state_machine.readers();
    let dispatch = state_machine.dispatch_signal();
    let queue = readers.queue.clone();
    let log_reader = readers.logs.clone();
    let job_reader = readers.jobs.clone();
    let committed = {
        let log_store = log_store.clone();
        Arc::new(move || log_store.committed_index()) as Arc<dyn Fn() -> Option<u64> + Send + Sync>
    };
    let peer_max_bytes = peer_message_limit(&config);
    let network = PeerNetwork::new(config.id, peer_max_bytes, security.clone()).with_routes(
        config
            .peer_routes
            .iter()
            .map(|route| (route.id, route.address.clone())),
    );
    let raft = Raft::new(
        config.id,
        raft_settings,
        network.clone(),
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| MasterError::RaftStart(e.to_string()))?;
    let watcher = tokio::spawn(watch_role(raft.clone()));
    let contact = Arc::new(crate::raft::election::LeaderContact::default());
    // openraft's own lease (`raft::lease`): what a fast election and a hand-over wait out.
    let openraft_lease = std::time::Duration::from_millis(
        crate::raft::lease::openraft_timeouts(config.raft.heartbeat_interval_ms).1,
    );
    let elections = tokio::spawn(crate::raft::election::drive(
        raft.clone(),
        network.clone(),
        contact.clone(),
        crate::raft::election::ElectionTiming {
            timeout_min: std::time::Duration::from_millis(config.raft.election_timeout_min_ms),
            timeout_max: std::time::Duration::from_millis(config.raft.election_timeout_max_ms),
            openraft_lease,
        },
        admission,
    ));
    let leader_watch = tokio::spawn(crate::raft::leader_watch::watch(
        raft.clone(),
        network.clone(),
        contact.clone(),
    ));

    let api_addr = local_addr(&api_listener);
    let peer_addr = local_addr(&peer_listener);
    info!(api = %api_addr, peer = %peer_addr, data_dir = %config.data_dir.display(), "replica listening");
    // Where people open this replica's console, as the others' pages link to it.
    let console_url = console_listener
        .as_ref()
        .and_then(|listener| listener.local_addr().ok())
        .map(|bound| {
            let advertised_api = config
                .member(config.id)
                .map_or_else(|| api_addr.clone(), |me| me.api.clone());
            super::console::url_for(bound, &advertised_api)
        })
        .unwrap_or_default();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let max_bytes = config.api.max_message_bytes;
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let wall: Arc<dyn super::clock::WallClock> = match &config.workers.test_clock_offset_file {
        Some(path) => {
            warn!(
                path = %path.display(),
                "workers.test_clock_offset_file is set: this replica's clock follows a test's \
                 offset file (never in production)"
            );
            Arc::new(super::clock::OffsetFileClock::new(path.clone()))
        }
        None => Arc::new(super::clock::SystemWallClock),
    };
    // The leader loop announces its terms of office; linearizable reads wait for one.
    let office = super::reads::Office::default();
    let quorum = super::check_quorum::QuorumCheck::new(
        raft.clone(),
        network.answers(),
        std::time::Duration::from_millis(config.raft.election_timeout_max_ms),
    );
    let forwarder = Forwarder::new(
        raft.clone(),
        network.clone(),
        contact.clone(),
        peer_max_bytes,
        super::proposer::COMMIT_TIMEOUT,
        &registry,
    );
    let reads = super::reads::Reads::new(raft.clone(), office.clone(), quorum.clone())
        .with_read_index(forwarder.clone());
    // Heartbeats and idle polls the leader answers without log entries (`sightings.rs`).
    let sightings = super::sightings::Sightings::default();
    let proposer = Proposer::start(
        raft.clone(),
        &config.proposals,
        max_bytes,
        config.ssisdb.max_outbox_events,
        ProposalMetrics::new(&registry),
        Arc::new(super::clock::LeaderClock::new(
            wall,
            config.workers.max_clock_jump_ms,
        )),
        quorum,
    )
    .with_leader_contact(contact.clone())
    .with_forwarding(forwarder);
    // Whoever dials the peer port by mistake is pointed at the API address the others know.
    let peer_port_only = {
        use tonic::server::NamedService;
        let api_known = config
            .member(config.id)
            .map_or_else(|| api_addr.clone(), |me| me.api.clone());
        super::peer_port::PeerPortLayer::new(
            &[
                <RaftServiceServer<RaftGrpcService> as NamedService>::NAME,
                <ForwardServiceServer<ForwardApi> as NamedService>::NAME,
            ],
            &api_known,
        )
    };
    let peer_server = Server::builder()
        .timeout(REQUEST_TIMEOUT)
        .layer(GrpcTimingLayer::new(registry.clone()))
        .layer(peer_port_only)
        .add_service(InterceptedService::new(
            RaftServiceServer::new(
                RaftGrpcService::new(
                    raft.clone(),
                    committed.clone(),
                    contact.clone(),
                    admission,
                    std::time::Duration::from_millis(config.raft.election_timeout_max_ms),
                    openraft_lease,
                    network.handover(),
                )
                .ending_lines_on(stop_rx.clone())
                .with_console_url(console_url.clone()),
            )
            .max_decoding_message_size(peer_max_bytes)
            .max_encoding_message_size(peer_max_bytes),
            |request: tonic::Request<()>| {
                authorize(&request, "RaftService", Permission::Replicate).map(|()| request)
            },
        ))
        .add_service(InterceptedService::new(
            ForwardServiceServer::new(ForwardApi::new(
                proposer.clone(),
                raft.clone(),
                reads.clone(),
            ))
            .max_decoding_message_size(peer_max_bytes)
            .max_encoding_message_size(peer_max_bytes),
            |request: tonic::Request<()>| {
                authorize(&request, "ForwardService", Permission::Replicate).map(|()| request)
            },
        ))
        .serve_with_incoming_shutdown(
            incoming(peer_listener, security.clone(), "peer"),
            stopped(stop_rx.clone()),
        );
    let mut peer_task = tokio::spawn(peer_server);
    let handovers = super::handover::Handovers::new(
        raft.clone(),
        network.clone(),
        proposer.clone(),
        super::handover::HandoverTiming::for_election_timeout(std::time::Duration::from_millis(
            config.raft.election_timeout_max_ms,
        )),
        openraft_lease,
    );
    let observer = Arc::new(ReplicaObserver::new(
        registry.clone(),
        &config,
        raft.clone(),
        readers.clone(),
        contact.clone(),
        committed.clone(),
        wal_stats,
    ));
    let health_service = {
        use tonic::server::NamedService;
        tonic_health::pb::health_server::HealthServer::new(super::health::ReadinessHealth::new(
            observer.clone(),
            &[
                <JobServiceServer<JobApi> as NamedService>::NAME,
                <AdminServiceServer<AdminApi> as NamedService>::NAME,
                <WorkerServiceServer<WorkerApi> as NamedService>::NAME,
            ],
            stop_rx.clone(),
        ))
    };
    let (reflection_v1, reflection_v1alpha) = reflection()?;
    let job_api = JobApi::new(
        reads.clone(),
        proposer.clone(),
        queue.clone(),
        job_reader.clone(),
        log_reader.clone(),
        max_bytes,
    );
    let admin_api = AdminApi::new(
        raft.clone(),
        reads.clone(),
        network.clone(),
        committed,
        proposer.clone(),
        handovers.clone(),
        queue.clone(),
        config.workers.clone(),
        sightings.clone(),
        admission.storage_id,
    )
    .with_console_url(console_url.clone());
    let api_server = Server::builder()
        .timeout(REQUEST_TIMEOUT)
        .layer(GrpcTimingLayer::new(registry.clone()))
        .layer(super::leader_hint::layer(raft.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            JobServiceServer::new(job_api.clone())
                .max_decoding_message_size(max_bytes)
                .max_encoding_message_size(max_bytes),
        )
        .add_service(
            AdminServiceServer::new(admin_api.clone())
                .max_decoding_message_size(max_bytes)
                .max_encoding_message_size(max_bytes),
        )
        .add_service(
            WorkerServiceServer::new(WorkerApi::new(
                raft.clone(),
                reads.clone(),
                proposer.clone(),
                queue.clone(),
                dispatch.clone(),
                sightings.clone(),
                config.workers.clone(),
            ))
            .max_decoding_message_size(max_bytes)
            .max_encoding_message_size(max_bytes),
        )
        .serve_with_incoming_shutdown(
            incoming(api_listener, security.clone(), "api"),
            stopped(stop_rx.clone()),
        );
    let mut api_task = tokio::spawn(api_server);
    // `console_listen` needs [tls] (checked with the config).
    let console_server = match (console_listener, &security) {
        (Some(listener), Security::MutualTls(material)) => {
            let history = super::history::RecentHistory::default();
            let sampler = history.spawn_sampler(raft.clone(), queue.clone());
            Some(super::console::serve(
                listener,
                material.clone(),
                super::console::Services {
                    admin: admin_api.clone(),
                    jobs: job_api.clone(),
                    history,
                    sampler,
                },
                stopped(stop_rx.clone()),
            )?)
        }
        _ => None,
    };
    let ops_server = match metrics_listener {
        Some(listener) => Some(
            crate::ops::serve(
                listener,
                observer.clone() as Arc<dyn Observed>,
                registry.clone(),
                stopped(stop_rx.clone()),
            )
            .map_err(|source| MasterError::Bind {
                which: "metrics",
                addr: config.metrics_listen.clone().unwrap_or_default(),
                source,
            })?,
        ),
        None => None,
    };

    // A pristine replica may wait here for its peers; a stop request or a dead server ends the
    // wait like it ends the replica.
    tokio::pin!(shutdown);
    let bootstrapped = tokio::select! {
        result = bootstrap(&raft, &config, &network, admission, storage.pristine) => {
            result.map(|()| true).map_err(MasterError::from)
        }
        () = &mut shutdown => Ok(false),
        result = wait_server("api", &mut api_task) => result.map(|()| false),
        result = wait_server("peer", &mut peer_task) => result.map(|()| false),
    };
    if !matches!(bootstrapped, Ok(true)) {
        if let Err(error) = &bootstrapped {
            error!(%error, "bootstrap failed");
        }
        elections.abort();
        leader_watch.abort();
        let _ = stop_tx.send(true);
        let _ = raft.shutdown().await;
        return bootstrapped.map(|_| ());
    }
    // `initialize` stands for election at once; the driver's wait starts after it.
    contact.touch();
    let leader_duties = tokio::spawn(super::leader::run(
        raft.clone(),
        office,
        proposer.clone(),
        queue.clone(),
        config.workers.clone(),
        super::leader::TermDuties {
            retention: super::leader::Retention {
                settings: config.retention.clone(),
                until_shipped: config.ssisdb.enabled(),
            },
            shipping: crate::ssisdb::Shipping {
                readers,
                settings: config.ssisdb.clone(),
                replica_id: config.id,
            },
            sightings,
            dispatch: dispatch.clone(),
        },
    ));
    let memory_duties = tokio::spawn(crate::memory::trim_periodically());
    // Keeps this replica's row in SSISDB, leader or not.
    let heartbeat_duties = config.ssisdb.enabled().then(|| {
        // The addresses the others dial (what SSISDB should show), not the bound ones, which
        // may be 0.0.0.0.
        let (api, peer) = match config.member(config.id) {
            Some(me) => (me.api.clone(), me.peer.clone()),
            None => (api_addr.clone(), peer_addr.clone()),
        };
        tokio::spawn(crate::ssisdb::heartbeat(
            raft.clone(),
            config.ssisdb.clone(),
            config.id,
            api,
            peer,
        ))
    });

    // Run until asked to stop, or until a server dies.
    let served = tokio::select! {
        () = &mut shutdown => Ok(()),
        result = wait_server("api", &mut api_task) => result,
        result = wait_server("peer", &mut peer_task) => result,
    };
    info!("shutting down");
    // A stopping leader first hands leadership over (both servers still up: the successor's
    // vote request comes to the peer port, and the calls held meanwhile get their redirect).
    if raft.metrics().borrow().state == openraft::ServerState::Leader {
        if let Err(error) = handovers.hand_over(None).await {
            warn!(%error, "could not hand leadership over before stopping; the others elect a leader when this replica's lease runs out");
        }
    }
    // Then: a stopping replica hears no more heartbeats and must not stand for election.
    elections.abort();
    leader_watch.abort();
    let _ = stop_tx.send(true);
    // Let in-flight calls finish (bounded), then stop Raft.
    let drained = tokio::time::timeout(SHUTDOWN_DRAIN, async {
        if !api_task.is_finished() {
            let _ = (&mut api_task).await;
        }
        if !peer_task.is_finished() {
            let _ = (&mut peer_task).await;
        }
    });
    if drained.await.is_err() {
        warn!(after = ?SHUTDOWN_DRAIN, "calls still in flight at shutdown; closing them");
        api_task.abort();
        peer_task.abort();
    }
    watcher.abort();
    drop(ops_server);
    drop(console_server);
    leader_duties.abort();
    if let Some(heartbeat) = heartbeat_duties {
        heartbeat.abort();
    }
    memory_duties.abort();
    tls_duties.abort();
    if let Err(e) = raft.shutdown().await {
        warn!(error = %e, "raft did not shut down cleanly");
    }
    served
}

fn local_addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map(|a: SocketAddr| a.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Resolves when a server stops on its own: a replica without its API or peer service must
/// exit (and be restarted by its supervisor) rather than keep voting or leading.
async fn wait_server(
    which: &'static str,
    task: &mut tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) -> Result<(), MasterError> {
    match task.await {
        Ok(Ok(())) => Err(MasterError::ServerStopped {
            which,
            reason: "it returned".into(),
        }),
        Ok(Err(source)) => Err(MasterError::Serve { which, source }),
        Err(join) => Err(MasterError::ServerStopped {
            which,
            reason: join.to_string(),
        }),
    }
}

/// The gRPC reflection services (v1 and v1alpha, which older `grpcurl` asks) for the API
/// port's services.
fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    MasterError,
> {
    use tonic::server::NamedService;
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(<JobServiceServer<JobApi> as NamedService>::NAME)
            .with_service_name(<AdminServiceServer<AdminApi> as NamedService>::NAME)
            .with_service_name(<WorkerServiceServer<WorkerApi> as NamedService>::NAME)
            .with_service_name("grpc.health.v1.Health")
    };
    let v1 = builder()
        .build_v1()
        .map_err(|e| MasterError::Reflection(e.to_string()))?;
    let v1alpha = builder()
        .build_v1alpha()
        .map_err(|e| MasterError::Reflection(e.to_string()))?;
    Ok((v1, v1alpha))
}

/// Keeps the term in every log line current and logs leadership changes.
async fn watch_role(raft: Raft) {
    let mut metrics = raft.metrics();
    let mut last = (0, None, openraft::ServerState::Learner);
    loop {
        let (term, leader, state) = {
            let m = metrics.borrow_and_update();
            (m.current_term, m.current_leader, m.state)
        };
        telemetry::set_term(term);
        if (term, leader, state) != last {
            let role = crate::raft::role_name(state);
            match leader {
                Some(leader) => info!(term, leader, role = %role, "raft role"),
                None => info!(term, role = %role, "raft role (no leader known)"),
            }
            last = (term, leader, state);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::snapshot_spacing;

    #[test]
    fn replicas_snapshot_at_different_points() {
        let points: Vec<u64> = (1..=5).map(|id| snapshot_spacing(10_000, id)).collect();
        assert_eq!(points, vec![10_000, 11_250, 12_500, 13_750, 10_000]);
        // Small intervals stay valid.
        assert_eq!(snapshot_spacing(1, 3), 1);
    }
}
