//! Mutual TLS against real replica processes: who is refused, where, and why; and certificate
//! rotation without a restart.
//!
//! One test at a time (a lock): each starts its own cluster with its own development CA.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use scaleout::certs::{DevCa, PemPair, Validity};
use scaleout::client::Client;
use scaleout::harness::{ClusterOptions, LocalCluster, WorkerOptions};
use scaleout::pb::raft::raft_service_client::RaftServiceClient;
use scaleout::pb::raft::NodeStatusRequest;
use scaleout::pb::v1::{self, worker_service_client::WorkerServiceClient};
use scaleout::rpc::Reason;
use scaleout::tls::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tonic::Code;
use tonic_types::StatusExt;

static SERIAL: Mutex<()> = Mutex::const_new(());
const WAIT: Duration = Duration::from_secs(60);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_scaleout"))
}

/// One TLS replica, leading.
async fn one_replica() -> LocalCluster {
    let options = ClusterOptions {
        replicas: 1,
        ..ClusterOptions::default()
    };
    let cluster = LocalCluster::start(binary(), options).expect("start");
    cluster.wait_for_leader(WAIT).await.expect("leader");
    cluster
}

/// One replica and one registered worker agent named `name`; returns its agent id.
async fn one_replica_with_worker(name: &str) -> (LocalCluster, uuid::Uuid) {
    let mut cluster = one_replica().await;
    let worker = cluster
        .start_worker(WorkerOptions::named(name))
        .expect("worker");
    let admin = cluster.client().expect("admin client");
    let deadline = Instant::now() + WAIT;
    while admin.list_workers(false).await.expect("list").is_empty() {
        assert!(Instant::now() < deadline, "worker {name} never registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (cluster, worker)
}

fn spec() -> v1::JobSpec {
    v1::JobSpec {
        argv: vec!["/bin/true".into()],
        max_attempts: 1,
        ..Default::default()
    }
}

fn ca_roots(cluster: &LocalCluster) -> RootCertStore {
    let certs = cluster.certs.as_ref().expect("a TLS cluster");
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(certs.ca.pem().cert_pem.as_bytes()).expect("ca pem"))
        .expect("root");
    roots
}

/// A client config trusting the cluster's CA and presenting `pair` (or nothing).
fn client_config(cluster: &LocalCluster, pair: Option<&PemPair>) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(ca_roots(cluster));
    let mut config = match pair {
        Some(pair) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(pair.cert_pem.as_bytes()).expect("cert")],
                PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).expect("key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// Connects to `addr` with `config` and sends the HTTP/2 preface. `Ok(server certificate)` when
/// the server answers (its SETTINGS frame), `Err(what the client saw)` when it refuses.
async fn tls_attempt(addr: &str, config: Arc<ClientConfig>) -> Result<Vec<u8>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("tcp: {e}"))?;
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let server_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 9];
    match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(server_cert),
        Ok(Ok(_)) => Err("closed without an answer".into()),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Err(_) => Err("no answer in 10 s".into()),
    }
}

/// Asserts that both ports refuse `config` at the TLS layer with `alert` (as the client sees
/// it), that the replica logged the refusal, and that it still serves its own clients.
async fn assert_refused_everywhere(
    cluster: &LocalCluster,
    config: Arc<ClientConfig>,
    alert: &str,
    logged_reason: &str,
) {
    let replica = cluster.replica(1).expect("replica");
    for (port, addr) in [("api", &replica.api_addr), ("peer", &replica.peer_addr)] {
        let error = tls_attempt(addr, config.clone())
            .await
            .expect_err(&format!("the {port} port must refuse"));
        assert!(error.contains(alert), "{port}: {error}");
    }
    wait_for_log(cluster, 1, "TLS handshake refused").await;
    wait_for_log(cluster, 1, logged_reason).await;
    let client = cluster.client().expect("client");
    assert!(
        client
            .list_all_jobs(None, false)
            .await
            .expect("list")
            .is_empty(),
        "nothing was created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused_on_every_port() {
    let _serial = SERIAL.lock().await;
    let cluster = one_replica().await;
    assert_refused_everywhere(
        &cluster,
        client_config(&cluster, None),
        "CertificateRequired",
        "sent no certificate",
    )
    .await;

    // And a plaintext client on a TLS port gets nothing either, on every service.
    let plaintext = Client::new(
        &cluster.endpoints(),
        scaleout::transport::Security::Insecure,
    )
    .expect("client")
    .with_deadline(Duration::from_secs(2));
    assert!(plaintext.cluster_status().await.is_err());
    assert!(plaintext.submit_job(spec(), None).await.is_err());
    assert!(plaintext.list_workers(false).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused_on_every_port() {
    let _serial = SERIAL.lock().await;
    let cluster = one_replica().await;
    let other = DevCa::generate("another CA", Validity::days_from_now(30)).expect("ca");
    for role in [Role::Admin("admin".into()), Role::Replica(1)] {
        let pair = other
            .issue(
                &role,
                &["127.0.0.1".to_string()],
                Validity::days_from_now(30),
            )
            .expect("issue");
        assert_refused_everywhere(
            &cluster,
            client_config(&cluster, Some(&pair)),
            "UnknownCA",
            "not from this replica's CA",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused_on_every_port() {
    let _serial = SERIAL.lock().await;
    let cluster = one_replica().await;
    let now = time::OffsetDateTime::now_utc();
    let expired = Validity {
        not_before: now - time::Duration::days(10),
        not_after: now - time::Duration::days(1),
    };
    let certs = cluster.certs.as_ref().expect("certs");
    for role in [Role::Admin("admin".into()), Role::Replica(1)] {
        let pair = certs
            .ca
            .issue(&role, &["127.0.0.1".to_string()], expired)
            .expect("issue");
        assert_refused_everywhere(
            &cluster,
            client_config(&cluster, Some(&pair)),
            "CertificateExpired",
            "certificate has expired",
        )
        .await;
    }
}

/// Waits until replica `id`'s log has a line containing `text`.
async fn wait_for_log(cluster: &LocalCluster, id: u64, text: &str) {
    let path = &cluster.replica(id).expect("replica").log_path;
    let deadline = Instant::now() + WAIT;
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica {id} never logged {text:?}:\n{}",
            cluster.log_tail(id, 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_role_refused(status: &tonic::Status, role: &Role) {
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let info = status.get_error_details().error_info().cloned();
    assert_eq!(
        info.map(|i| i.reason),
        Some(Reason::RoleNotAllowed.as_str().to_string()),
        "{status:?}"
    );
    assert!(status.message().contains(&role.uri()), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_certificate_cannot_call_admin_or_job_services() {
    let _serial = SERIAL.lock().await;
    let (cluster, worker) = one_replica_with_worker("w").await;
    let admin = cluster.client().expect("admin client");

    let role = Role::Worker(worker);
    let certs = cluster.certs.as_ref().expect("certs");
    let as_worker = Client::new(
        &cluster.endpoints(),
        certs.security(&role).expect("security"),
    )
    .expect("client");
    let refused = as_worker
        .set_worker_state(&worker.to_string(), v1::WorkerAction::Disable)
        .await
        .expect_err("a worker may not manage workers");
    assert_role_refused(refused.status().expect("a status"), &role);
    let refused = as_worker
        .remove_worker(&worker.to_string())
        .await
        .expect_err("a worker may not remove workers");
    assert_role_refused(refused.status().expect("a status"), &role);
    let refused = as_worker
        .submit_job(spec(), None)
        .await
        .expect_err("a worker may not submit");
    assert_role_refused(refused.status().expect("a status"), &role);
    let refused = as_worker
        .list_jobs(None, 0, 10, false)
        .await
        .expect_err("a worker may not read jobs");
    assert_role_refused(refused.status().expect("a status"), &role);

    // An operator reads but does not manage workers either.
    let operator = Client::new(
        &cluster.endpoints(),
        certs
            .security(&Role::Operator("operator".into()))
            .expect("security"),
    )
    .expect("client");
    let refused = operator
        .set_worker_state(&worker.to_string(), v1::WorkerAction::Disable)
        .await
        .expect_err("an operator may not manage workers");
    assert_role_refused(
        refused.status().expect("a status"),
        &Role::Operator("operator".into()),
    );
    operator
        .cluster_status()
        .await
        .expect("an operator sees status");
    operator
        .submit_job(spec(), None)
        .await
        .expect("an operator submits");

    // Nothing the refused calls asked for happened.
    let workers = admin.list_workers(false).await.expect("list");
    assert_eq!(workers.len(), 1);
    assert!(workers[0].enabled, "still enabled: {workers:?}");
    assert_eq!(
        admin.list_all_jobs(None, false).await.expect("jobs").len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_a_cannot_act_as_worker_b() {
    let _serial = SERIAL.lock().await;
    let (cluster, b) = one_replica_with_worker("b").await;
    let admin = cluster.client().expect("admin client");
    let before = admin.list_workers(false).await.expect("list");

    // A certificate for worker a (never started), used to speak for b.
    let a = uuid::Uuid::new_v4();
    let certs = cluster.certs.as_ref().expect("certs");
    certs.issue(Role::Worker(a)).expect("issue a");
    let api = cluster.replica(1).expect("replica").api_addr.clone();
    let mut as_a =
        WorkerServiceClient::new(cluster.channel_as(&api, &Role::Worker(a)).expect("channel"));
    let refused = as_a
        .heartbeat(v1::HeartbeatRequest {
            worker_id: b.to_string(),
            ..Default::default()
        })
        .await
        .expect_err("a heartbeat for b");
    assert_role_refused(&refused, &Role::Worker(a));
    let refused = as_a
        .acquire_tasks(v1::AcquireTasksRequest {
            worker_id: b.to_string(),
            free_slots: 1,
            ..Default::default()
        })
        .await
        .expect_err("taking b's tasks");
    assert_role_refused(&refused, &Role::Worker(a));
    let mut info = before[0].info.clone().expect("b's info");
    info.display_name = "impostor".into();
    let refused = as_a
        .register_worker(v1::RegisterWorkerRequest {
            info: Some(info.clone()),
        })
        .await
        .expect_err("registering as b");
    assert_role_refused(&refused, &Role::Worker(a));

    // As itself, a may register.
    info.worker_id = a.to_string();
    info.display_name = "a".into();
    as_a.register_worker(v1::RegisterWorkerRequest { info: Some(info) })
        .await
        .expect("a registers as itself");

    let after = admin.list_workers(false).await.expect("list");
    let b_after = after
        .iter()
        .find(|w| {
            w.info
                .as_ref()
                .is_some_and(|i| i.worker_id == b.to_string())
        })
        .expect("b still listed");
    assert_eq!(
        b_after.info.as_ref().map(|i| i.display_name.as_str()),
        Some("b"),
        "b's registration was not replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_refused_on_the_peer_port_and_replicas_on_the_api_port() {
    let _serial = SERIAL.lock().await;
    let cluster = one_replica().await;
    let replica = cluster.replica(1).expect("replica");
    let worker = uuid::Uuid::new_v4();
    let certs = cluster.certs.as_ref().expect("certs");
    certs.issue(Role::Worker(worker)).expect("issue");
    for role in [
        Role::Operator("operator".into()),
        Role::Admin("admin".into()),
        Role::Worker(worker),
    ] {
        let mut raft = RaftServiceClient::new(
            cluster
                .channel_as(&replica.peer_addr, &role)
                .expect("channel"),
        );
        let refused = raft
            .node_status(NodeStatusRequest {})
            .await
            .expect_err("a client on the peer port");
        assert_role_refused(&refused, &role);
    }
    // Every call there from a client is refused the same way, whatever service it names, and
    // is told the API address (it used to get an empty UNIMPLEMENTED for the API's services).
    let operator = Role::Operator("operator".into());
    let mut jobs = v1::job_service_client::JobServiceClient::new(
        cluster
            .channel_as(&replica.peer_addr, &operator)
            .expect("channel"),
    );
    for _ in 0..20 {
        let refused = jobs
            .submit_job(v1::SubmitJobRequest::default())
            .await
            .expect_err("a client's submit on the peer port");
        assert_role_refused(&refused, &operator);
        assert!(refused.message().contains(&replica.api_addr), "{refused:?}");
    }
    // The replica's own certificate works there ...
    let mut raft = RaftServiceClient::new(
        cluster
            .channel_as(&replica.peer_addr, &Role::Replica(1))
            .expect("channel"),
    );
    raft.node_status(NodeStatusRequest {})
        .await
        .expect("a replica on the peer port");
    // ... and not on the api port.
    let as_replica = Client::new(
        &cluster.endpoints(),
        certs.security(&Role::Replica(1)).expect("security"),
    )
    .expect("client");
    let refused = as_replica
        .cluster_status()
        .await
        .expect_err("a replica on the api port");
    assert_role_refused(refused.status().expect("a status"), &Role::Replica(1));
}

/// The certificate `addr` presents to a new connection.
async fn presented_certificate(cluster: &LocalCluster, addr: &str) -> Vec<u8> {
    let certs = cluster.certs.as_ref().expect("certs");
    let admin = certs
        .ca
        .issue(
            &Role::Admin("probe".into()),
            &["127.0.0.1".to_string()],
            Validity::days_from_now(1),
        )
        .expect("issue");
    tls_attempt(addr, client_config(cluster, Some(&admin)))
        .await
        .expect("a TLS connection")
}

async fn wait_presented(cluster: &LocalCluster, addr: &str, expected: &[u8]) {
    let deadline = Instant::now() + WAIT;
    while presented_certificate(cluster, addr).await != expected {
        assert!(
            Instant::now() < deadline,
            "{addr} never presented the new certificate"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn pem_der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path)
        .expect("cert pem")
        .as_ref()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_certificates_are_used_without_a_restart_and_the_leader_stays() {
    let _serial = SERIAL.lock().await;
    let cluster = LocalCluster::start(binary(), ClusterOptions::default()).expect("start");
    let (leader, term) = cluster.wait_for_leader(WAIT).await.expect("leader");
    let client = cluster.client().expect("client");
    client.submit_job(spec(), None).await.expect("submit");
    let certs = cluster.certs.as_ref().expect("certs");
    let pids: Vec<Option<u32>> = cluster.replicas.iter().map(|r| r.pid()).collect();

    // The leader: new files, then SIGHUP.
    let leader_replica = cluster.replica(leader).expect("leader");
    let old = presented_certificate(&cluster, &leader_replica.api_addr).await;
    let paths = certs.issue(Role::Replica(leader)).expect("reissue");
    let new = pem_der(&paths.cert);
    assert_ne!(old, new);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(leader_replica.pid().expect("pid") as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    wait_presented(&cluster, &leader_replica.api_addr, &new).await;
    wait_presented(&cluster, &leader_replica.peer_addr, &new).await;

    // A follower: new files only; the file watcher notices.
    let follower = cluster
        .replicas
        .iter()
        .find(|r| r.id != leader)
        .expect("follower");
    let paths = certs.issue(Role::Replica(follower.id)).expect("reissue");
    let new = pem_der(&paths.cert);
    wait_presented(&cluster, &follower.api_addr, &new).await;

    // Same processes, same leader, same term, and still serving.
    let after: Vec<Option<u32>> = cluster.replicas.iter().map(|r| r.pid()).collect();
    assert_eq!(pids, after, "no replica restarted");
    let status = client.cluster_status().await.expect("status");
    assert_eq!(
        (status.leader_id, status.term),
        (Some(leader), term),
        "{status:?}"
    );
    client.submit_job(spec(), None).await.expect("submit after");
    let log = cluster.log_tail(leader, 200);
    assert!(log.contains("TLS certificates reloaded"), "{log}");

    // A broken replacement is refused and the old certificate stays in use.
    std::fs::write(&paths.key, "not a key").expect("break the key");
    wait_for_log(&cluster, follower.id, "TLS reload refused").await;
    assert_eq!(
        presented_certificate(&cluster, &follower.api_addr).await,
        new
    );
    client
        .submit_job(spec(), None)
        .await
        .expect("still serving");
}

#[test]
fn the_cli_without_a_certificate_says_how_to_give_one() {
    let output = std::process::Command::new(binary())
        .args(["job", "list", "--endpoints", "127.0.0.1:1"])
        .env_remove("SCALEOUT_TLS_DIR")
        .env_remove("SCALEOUT_TLS_CA")
        .env_remove("SCALEOUT_TLS_CERT")
        .env_remove("SCALEOUT_TLS_KEY")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--tls-dir"), "{stderr}");
    assert!(stderr.contains("--insecure"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_refuses_a_server_of_another_ca_or_without_the_dialled_name() {
    let _serial = SERIAL.lock().await;
    let cluster = one_replica().await;
    let certs = cluster.certs.as_ref().expect("certs");
    let api = cluster.replica(1).expect("replica").api_addr.clone();

    // A client whose certificates all come from another CA: the server is not trusted.
    let elsewhere = tempfile::tempdir().expect("temp dir");
    scaleout::certs::init(&scaleout::certs::CertsInit::new(elsewhere.path())).expect("another CA");
    let foreign = scaleout::tls::TlsMaterial::load(scaleout::tls::TlsPaths::in_dir(
        elsewhere.path(),
        "operator",
    ))
    .expect("a consistent set from the other CA");
    let client = Client::new(
        &[api.as_str()],
        scaleout::transport::Security::MutualTls(foreign),
    )
    .expect("client")
    .with_deadline(Duration::from_secs(2));
    let error = client
        .cluster_status()
        .await
        .expect_err("an untrusted server");
    assert!(
        error.to_string().contains("not from the CA in `tls.ca`"),
        "{error}"
    );

    // A replica certificate that names only `localhost`, dialled as 127.0.0.1.
    let pair = certs
        .ca
        .issue(
            &Role::Replica(1),
            &["localhost".to_string()],
            Validity::days_from_now(1),
        )
        .expect("issue");
    let replica_paths = certs.paths(&Role::Replica(1));
    std::fs::write(&replica_paths.key, &pair.key_pem).expect("key");
    std::fs::write(&replica_paths.cert, &pair.cert_pem).expect("cert");
    let expected = CertificateDer::from_pem_slice(pair.cert_pem.as_bytes())
        .expect("pem")
        .as_ref()
        .to_vec();
    // The probe dials by IP without checking names; wait until the new certificate is in use.
    let deadline = Instant::now() + WAIT;
    while tls_attempt(&api, probe_config(&cluster)).await.ok() != Some(expected.clone()) {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never used"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let by_ip = cluster
        .client_at(&api)
        .expect("client")
        .with_deadline(Duration::from_secs(2));
    let error = by_ip
        .cluster_status()
        .await
        .expect_err("the name does not match");
    assert!(
        error.to_string().contains("does not name this host"),
        "{error}"
    );
    let port = api.rsplit(':').next().expect("port");
    let by_name = cluster
        .client_at(&format!("localhost:{port}"))
        .expect("client");
    by_name.cluster_status().await.expect("localhost is named");
}

/// A client config that accepts any server certificate from the cluster's CA whatever name it
/// carries, to see which certificate a server presents.
fn probe_config(cluster: &LocalCluster) -> Arc<ClientConfig> {
    #[derive(Debug)]
    struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);
    impl rustls::client::danger::ServerCertVerifier for AnyName {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            ocsp: &[u8],
            now: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            let localhost = ServerName::try_from("localhost").expect("name");
            self.0
                .verify_server_cert(end_entity, intermediates, &localhost, ocsp, now)
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls12_signature(message, cert, dss)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls13_signature(message, cert, dss)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(ca_roots(cluster)),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let certs = cluster.certs.as_ref().expect("certs");
    let admin = certs
        .ca
        .issue(
            &Role::Admin("probe".into()),
            &["127.0.0.1".to_string()],
            Validity::days_from_now(1),
        )
        .expect("issue");
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyName(verifier)))
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(admin.cert_pem.as_bytes()).expect("cert")],
            PrivateKeyDer::from_pem_slice(admin.key_pem.as_bytes()).expect("key"),
        )
        .expect("client auth");
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}
