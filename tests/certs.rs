//! Development certificates and TLS identity loading: `certs::init` output, roles read back,
//! one clear error per certificate mistake, and real rustls handshakes (in memory) that accept
//! the generated identities and refuse a foreign CA or a missing client certificate.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use scaleout::certs::{self, CertsInit, CertsReport, DevCa, Validity};
use scaleout::tls::{self, Role, TlsError, TlsIdentity};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// A fresh `certs init` output: 2 replicas, 2 workers, operator, admin.
fn generated() -> (tempfile::TempDir, CertsReport) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = CertsInit::new(dir.path()).with_worker_count(2);
    opts.replicas = 2;
    let report = certs::init(&opts).expect("certs init");
    (dir, report)
}

fn identity(report: &CertsReport, role: &Role) -> TlsIdentity {
    let issued = report.find(role).expect("issued");
    tls::load_identity(&report.ca_cert, &issued.cert, &issued.key).expect("load identity")
}

/// Writes a CA and one certificate from it into `dir`; returns (ca, cert, key) paths.
fn write_set(dir: &Path, ca: &DevCa, pair: &certs::PemPair, stem: &str) -> [PathBuf; 3] {
    let paths = [
        dir.join(format!("{stem}-ca.pem")),
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}-key.pem")),
    ];
    std::fs::write(&paths[0], &ca.pem().cert_pem).expect("write ca");
    std::fs::write(&paths[1], &pair.cert_pem).expect("write cert");
    std::fs::write(&paths[2], &pair.key_pem).expect("write key");
    paths
}

fn load_err(ca: &Path, cert: &Path, key: &Path) -> TlsError {
    tls::load_identity(ca, cert, key).expect_err("loading must fail")
}

/// Every user-facing error names the file and says how to fix it.
fn assert_clear(err: &TlsError, file: &Path) {
    let msg = err.to_string();
    assert!(
        msg.contains(&file.display().to_string()),
        "message does not name {}: {msg}",
        file.display()
    );
    assert!(msg.contains("fix:"), "message gives no fix: {msg}");
}

#[cfg(unix)]
#[test]
fn init_writes_every_file_with_private_keys_0600() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, report) = generated();
    // CA + 2 replicas + 2 workers + operator + admin, each a cert and a key.
    assert_eq!(report.issued.len(), 6);
    let mut expected = vec!["ca.pem".to_owned(), "ca-key.pem".to_owned()];
    for issued in &report.issued {
        let stem = certs::file_stem(&issued.role);
        assert_eq!(issued.cert, dir.path().join(format!("{stem}.pem")));
        assert_eq!(issued.key, dir.path().join(format!("{stem}-key.pem")));
        expected.push(format!("{stem}.pem"));
        expected.push(format!("{stem}-key.pem"));
    }
    for name in [
        "replica-1.pem",
        "replica-2.pem",
        "operator.pem",
        "admin-key.pem",
    ] {
        assert!(expected.iter().any(|e| e == name), "{name} missing");
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    expected.sort();
    assert_eq!(on_disk, expected);
    for name in &expected {
        let path = dir.path().join(name);
        let text = std::fs::read_to_string(&path).expect("read");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        if name.ends_with("-key.pem") {
            assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{name}");
            assert_eq!(mode, 0o600, "{name} has mode {mode:o}");
        } else {
            assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{name}");
        }
    }
}

#[test]
fn every_generated_certificate_loads_with_its_role() {
    let (_dir, report) = generated();
    let workers: Vec<Uuid> = report
        .issued
        .iter()
        .filter_map(|c| match c.role {
            Role::Worker(id) => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(workers.len(), 2);
    assert_ne!(workers[0], workers[1]);
    for issued in &report.issued {
        let id = tls::load_identity(&report.ca_cert, &issued.cert, &issued.key)
            .unwrap_or_else(|e| panic!("{}: {e}", issued.cert.display()));
        assert_eq!(id.role(), &issued.role);
        assert_eq!(
            tls::role_from_cert(&id.cert_chain()[0]).expect("role"),
            issued.role
        );
    }
    assert!(report.find(&Role::Replica(1)).is_some());
    assert!(report.find(&Role::Replica(2)).is_some());
    assert!(report.find(&Role::Operator("operator".into())).is_some());
    assert!(report.find(&Role::Admin("admin".into())).is_some());
}

#[test]
fn replica_certificates_carry_the_hosts_and_both_usages() {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_dir, report) = generated();
    let issued = report.find(&Role::Replica(2)).expect("replica 2");
    let pem = std::fs::read(&issued.cert).expect("read");
    let der = CertificateDer::from_pem_slice(&pem).expect("pem");
    let (_, cert) = X509Certificate::from_der(der.as_ref()).expect("x509");
    let san = cert
        .subject_alternative_name()
        .expect("san")
        .expect("has san");
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => format!("dns:{d}"),
            GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
            GeneralName::URI(u) => format!("uri:{u}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert!(names.contains(&"dns:localhost".to_owned()), "{names:?}");
    assert!(names.contains(&"ip:[127, 0, 0, 1]".to_owned()), "{names:?}");
    assert!(
        names.contains(&"uri:scaleout://replica/2".to_owned()),
        "{names:?}"
    );
    let eku = cert.extended_key_usage().expect("eku").expect("has eku");
    assert!(eku.value.server_auth && eku.value.client_auth);

    let op = report.find(&Role::Operator("operator".into())).expect("op");
    let pem = std::fs::read(&op.cert).expect("read");
    let der = CertificateDer::from_pem_slice(&pem).expect("pem");
    let (_, cert) = X509Certificate::from_der(der.as_ref()).expect("x509");
    let eku = cert.extended_key_usage().expect("eku").expect("has eku");
    assert!(eku.value.client_auth && !eku.value.server_auth);
}

#[test]
fn missing_or_unreadable_file_is_named() {
    let (dir, report) = generated();
    let r1 = report.find(&Role::Replica(1)).expect("r1");
    let missing = dir.path().join("nope.pem");
    let err = load_err(&report.ca_cert, &missing, &r1.key);
    assert!(
        matches!(err, TlsError::Read { what: "cert", .. }),
        "{err:?}"
    );
    assert_clear(&err, &missing);
    assert!(err.to_string().contains("tls.cert"), "{err}");

    // A directory cannot be read as a file, even by root (who ignores mode 000).
    let err = load_err(dir.path(), &r1.cert, &r1.key);
    assert!(matches!(err, TlsError::Read { what: "ca", .. }), "{err:?}");
    assert_clear(&err, dir.path());
}

#[test]
fn not_pem_and_swapped_files_are_explained() {
    let (dir, report) = generated();
    let r1 = report.find(&Role::Replica(1)).expect("r1");
    let junk = dir.path().join("junk.der");
    std::fs::write(&junk, [0x30u8, 0x82, 0x01, 0x00, 0xff]).expect("write");
    let err = load_err(&report.ca_cert, &junk, &r1.key);
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    assert_clear(&err, &junk);
    assert!(err.to_string().contains("not PEM"), "{err}");

    // Certificate and key paths swapped.
    let err = load_err(&report.ca_cert, &r1.key, &r1.cert);
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    assert_clear(&err, &r1.key);
    assert!(err.to_string().contains("swapped"), "{err}");

    let err = load_err(&report.ca_cert, &r1.cert, &junk);
    assert!(matches!(err, TlsError::NoKey { .. }), "{err:?}");
    assert_clear(&err, &junk);
}

#[test]
fn key_that_does_not_match_the_certificate() {
    let (_dir, report) = generated();
    let r1 = report.find(&Role::Replica(1)).expect("r1");
    let r2 = report.find(&Role::Replica(2)).expect("r2");
    let err = load_err(&report.ca_cert, &r1.cert, &r2.key);
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    assert_clear(&err, &r1.cert);
    assert_clear(&err, &r2.key);
}

#[test]
fn certificate_from_another_ca() {
    let (_dir, report) = generated();
    let (_other_dir, other) = generated();
    let r1 = other.find(&Role::Replica(1)).expect("r1");
    let err = load_err(&report.ca_cert, &r1.cert, &r1.key);
    assert!(matches!(err, TlsError::WrongCa { .. }), "{err:?}");
    assert_clear(&err, &r1.cert);
    assert_clear(&err, &report.ca_cert);
    assert!(err.to_string().contains("wrong CA"), "{err}");
}

#[test]
fn expired_and_not_yet_valid_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DevCa::generate("test CA", Validity::days_from_now(30)).expect("ca");
    let now = OffsetDateTime::now_utc();
    let past = Validity {
        not_before: now - Duration::days(10),
        not_after: now - Duration::days(1),
    };
    let pair = ca
        .issue(&Role::Replica(1), &["localhost".into()], past)
        .expect("issue");
    let [ca_path, cert, key] = write_set(dir.path(), &ca, &pair, "expired");
    let err = load_err(&ca_path, &cert, &key);
    assert!(
        matches!(err, TlsError::Expired { what: "cert", .. }),
        "{err:?}"
    );
    assert_clear(&err, &cert);
    assert!(err.to_string().contains("expired on"), "{err}");

    let future = Validity {
        not_before: now + Duration::days(1),
        not_after: now + Duration::days(10),
    };
    let pair = ca
        .issue(&Role::Replica(1), &["localhost".into()], future)
        .expect("issue");
    let [ca_path, cert, key] = write_set(dir.path(), &ca, &pair, "future");
    let err = load_err(&ca_path, &cert, &key);
    assert!(matches!(err, TlsError::NotYetValid { .. }), "{err:?}");
    assert_clear(&err, &cert);
    assert!(err.to_string().contains("clock"), "{err}");

    // An expired CA is reported as such, naming the CA file.
    let old_ca = DevCa::generate("old CA", past).expect("ca");
    let pair = old_ca
        .issue(&Role::Replica(1), &["localhost".into()], past)
        .expect("issue");
    let [ca_path, cert, key] = write_set(dir.path(), &old_ca, &pair, "old");
    let err = load_err(&ca_path, &cert, &key);
    assert!(
        matches!(err, TlsError::Expired { what: "ca", .. }),
        "{err:?}"
    );
    assert_clear(&err, &ca_path);
}

#[test]
fn certificate_without_a_role_uri() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DevCa::generate("test CA", Validity::days_from_now(30)).expect("ca");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let pair = ca.issue_params(&params).expect("issue");
    let [ca_path, cert, key] = write_set(dir.path(), &ca, &pair, "norole");
    let err = load_err(&ca_path, &cert, &key);
    assert!(matches!(err, TlsError::NoRole { .. }), "{err:?}");
    assert_clear(&err, &cert);
    assert!(err.to_string().contains("scaleout://replica/1"), "{err}");
}

#[test]
fn certificate_without_client_auth_is_rejected_with_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DevCa::generate("test CA", Validity::days_from_now(30)).expect("ca");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let pair = ca.issue_params(&params).expect("issue");
    let [ca_path, cert, key] = write_set(dir.path(), &ca, &pair, "serveronly");
    let err = load_err(&ca_path, &cert, &key);
    assert!(matches!(err, TlsError::Rejected { .. }), "{err:?}");
    assert_clear(&err, &cert);
    assert!(err.to_string().contains("clientAuth"), "{err}");
}

/// Runs a handshake between two in-memory connections, then sends one message each way.
/// Returns the server's view of the client's role, or the first error either side saw.
fn handshake(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> Result<Role, String> {
    let name = ServerName::try_from("localhost").expect("name");
    let mut c = ClientConnection::new(client, name).map_err(|e| e.to_string())?;
    let mut s = ServerConnection::new(server).map_err(|e| e.to_string())?;
    // Bounded: a handshake takes a handful of flights.
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).map_err(|e| e.to_string())?;
        }
        if !buf.is_empty() {
            s.read_tls(&mut buf.as_slice()).map_err(|e| e.to_string())?;
            s.process_new_packets()
                .map_err(|e| format!("server: {e}"))?;
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).map_err(|e| e.to_string())?;
        }
        if !buf.is_empty() {
            c.read_tls(&mut buf.as_slice()).map_err(|e| e.to_string())?;
            c.process_new_packets()
                .map_err(|e| format!("client: {e}"))?;
        }
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
            break;
        }
    }
    if c.is_handshaking() || s.is_handshaking() {
        return Err("handshake did not finish".to_owned());
    }
    // Application data both ways proves the session keys agree.
    c.writer().write_all(b"ping").map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    c.write_tls(&mut buf).map_err(|e| e.to_string())?;
    s.read_tls(&mut buf.as_slice()).map_err(|e| e.to_string())?;
    s.process_new_packets()
        .map_err(|e| format!("server: {e}"))?;
    let mut got = [0u8; 4];
    s.reader().read_exact(&mut got).map_err(|e| e.to_string())?;
    assert_eq!(&got, b"ping");
    assert_eq!(s.alpn_protocol(), Some(&b"h2"[..]));
    let peer = s
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("server saw no client certificate")?;
    tls::role_from_cert(peer).map_err(|e| e.to_string())
}

#[test]
fn mutual_tls_handshake_with_generated_certificates() {
    tls::install_crypto_provider();
    let (_dir, report) = generated();
    let server = tls::server_config(&identity(&report, &Role::Replica(1))).expect("server");
    let operator = Role::Operator("operator".into());
    let client = tls::client_config(&identity(&report, &operator)).expect("client");
    let role = handshake(Arc::new(client), Arc::new(server)).expect("handshake");
    assert_eq!(role, operator);

    // Replica to replica: the peer port's case.
    let server = tls::server_config(&identity(&report, &Role::Replica(1))).expect("server");
    let client = tls::client_config(&identity(&report, &Role::Replica(2))).expect("client");
    let role = handshake(Arc::new(client), Arc::new(server)).expect("handshake");
    assert_eq!(role, Role::Replica(2));
}

#[test]
fn handshake_refuses_a_client_certificate_from_another_ca() {
    let (_dir, report) = generated();
    let (_other_dir, other) = generated();
    let server = tls::server_config(&identity(&report, &Role::Replica(1))).expect("server");
    // The intruder trusts our CA (so the server passes its check) but holds a foreign cert.
    let foreign = identity(&other, &Role::Admin("admin".into()));
    let mut roots = RootCertStore::empty();
    roots
        .add(identity(&report, &Role::Replica(1)).ca_certs()[0].clone())
        .expect("root");
    let client = ClientConfig::builder_with_provider(tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(foreign.cert_chain().to_vec(), foreign.private_key())
        .expect("client");
    let err = handshake(Arc::new(client), Arc::new(server)).expect_err("must refuse");
    assert!(err.starts_with("server:"), "{err}");
    // UnknownIssuer; BadSignature when the foreign CA happens to share our CA's name.
    assert!(
        err.contains("UnknownIssuer") || err.contains("BadSignature"),
        "{err}"
    );
}

#[test]
fn handshake_refuses_a_client_without_a_certificate() {
    let (_dir, report) = generated();
    let replica = identity(&report, &Role::Replica(1));
    let server = tls::server_config(&replica).expect("server");
    let mut roots = RootCertStore::empty();
    roots.add(replica.ca_certs()[0].clone()).expect("root");
    let client = ClientConfig::builder_with_provider(tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let err = handshake(Arc::new(client), Arc::new(server)).expect_err("must refuse");
    assert!(err.starts_with("server:"), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

#[test]
fn client_refuses_a_server_from_another_ca() {
    let (_dir, report) = generated();
    let (_other_dir, other) = generated();
    let server = tls::server_config(&identity(&other, &Role::Replica(1))).expect("server");
    let client =
        tls::client_config(&identity(&report, &Role::Operator("operator".into()))).expect("client");
    let err = handshake(Arc::new(client), Arc::new(server)).expect_err("must refuse");
    assert!(err.starts_with("client:"), "{err}");
}
