//! TLS groundwork: one crypto provider, certificate loading with clear errors, peer roles,
//! and rustls configs for mutual TLS.
//!
//! # Roles in certificates
//! A peer's role is a URI in the certificate's subjectAltName extension (see also
//! [`crate::certs`], which issues development certificates in this encoding):
//!
//! | URI SAN                       | [`Role`]                  | may use                               |
//! |-------------------------------|---------------------------|---------------------------------------|
//! | `scaleout://replica/<u64>`    | [`Role::Replica`]         | the peer (Raft) port, as that replica |
//! | `scaleout://worker/<uuid>`    | [`Role::Worker`]          | WorkerService, as that agent id only  |
//! | `scaleout://operator/<name>`  | [`Role::Operator`]        | submit, read, cancel, cluster status  |
//! | `scaleout://admin/<name>`     | [`Role::Admin`]           | operator rights + workers, membership |
//!
//! A URI rather than the subject common name because SANs are what X.509 path validation and
//! every CA tool treat as identities, a URI cannot be mistaken for a host name, and any CA
//! (step-ca, Vault, openssl, AD CS) can put one in. A certificate must carry exactly one
//! `scaleout://` URI; more than one is rejected rather than guessed at. Names are limited to
//! `[A-Za-z0-9._-]` so that the URI needs no escaping.
//!
//! # Crypto provider
//! Only rustls' `ring` provider is compiled in. The configs built here name it explicitly, so
//! they do not depend on the process-wide default; [`install_crypto_provider`] still installs
//! it at start for any other rustls user in the process (tonic, tiberius).

mod material;

pub use material::{ReloadError, TlsMaterial, TlsPaths, FILE_POLL_INTERVAL};

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};
use uuid::Uuid;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The URI scheme that marks a role SAN.
pub const ROLE_URI_SCHEME: &str = "scaleout";

/// The crypto provider every config here uses: ring, the only one compiled in.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide rustls provider. Idempotent: a second call (or a provider
/// installed earlier by someone else) is not an error, because only one can exist in this build.
pub fn install_crypto_provider() {
    // `install_default` fails only when a provider is already installed; that is the outcome
    // we want either way.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What a peer may do, read from its certificate. See the module docs for the encoding.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A master replica, by its Raft node id.
    Replica(u64),
    /// A worker agent, by its persistent agent id.
    Worker(Uuid),
    /// An operator client: submit, read, cancel, cluster status.
    Operator(String),
    /// An admin client: operator rights plus worker and membership management.
    Admin(String),
}

impl Role {
    /// The SAN URI that encodes this role, e.g. `scaleout://replica/3`.
    pub fn uri(&self) -> String {
        match self {
            Role::Replica(id) => format!("{ROLE_URI_SCHEME}://replica/{id}"),
            Role::Worker(id) => format!("{ROLE_URI_SCHEME}://worker/{id}"),
            Role::Operator(name) => format!("{ROLE_URI_SCHEME}://operator/{name}"),
            Role::Admin(name) => format!("{ROLE_URI_SCHEME}://admin/{name}"),
        }
    }

    /// Parses a role URI. `Ok(None)` for a URI of another scheme (certificates may carry other
    /// URIs, e.g. SPIFFE ids); an error for a `scaleout://` URI that is malformed.
    pub fn parse_uri(uri: &str) -> Result<Option<Role>, String> {
        let prefix = format!("{ROLE_URI_SCHEME}://");
        let Some(rest) = uri.strip_prefix(&prefix) else {
            return Ok(None);
        };
        let (kind, value) = rest
            .split_once('/')
            .ok_or_else(|| format!("`{uri}` has no `/<id>` after the role"))?;
        let role = match kind {
            "replica" => Role::Replica(
                value
                    .parse()
                    .map_err(|_| format!("`{uri}`: replica id `{value}` is not a number"))?,
            ),
            "worker" => Role::Worker(
                Uuid::from_str(value)
                    .map_err(|_| format!("`{uri}`: worker id `{value}` is not a UUID"))?,
            ),
            "operator" => Role::Operator(valid_name(uri, value)?),
            "admin" => Role::Admin(valid_name(uri, value)?),
            other => {
                return Err(format!(
                    "`{uri}`: unknown role `{other}` (expected replica, worker, operator or admin)"
                ))
            }
        };
        Ok(Some(role))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Replica(id) => write!(f, "replica {id}"),
            Role::Worker(id) => write!(f, "worker {id}"),
            Role::Operator(name) => write!(f, "operator {name}"),
            Role::Admin(name) => write!(f, "admin {name}"),
        }
    }
}

/// Whether `name` may appear in an operator or admin URI: non-empty, `[A-Za-z0-9._-]` only,
/// so the URI needs no percent-encoding and cannot smuggle a `/`.
pub fn is_valid_role_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn valid_name(uri: &str, value: &str) -> Result<String, String> {
    if is_valid_role_name(value) {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "`{uri}`: name `{value}` must be non-empty and use only letters, digits, `.`, `_`, `-`"
        ))
    }
}

/// Every way loading or using TLS material can fail. Each message names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} file {}: {source}; fix: check the path (config key `tls.{what}`) and that this user may read it", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} file {} is not valid PEM: {reason}; fix: give a PEM file (`-----BEGIN ...-----`); convert DER with `openssl x509 -inform der -in FILE -out FILE.pem`", path.display())]
    NotPem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the {what} file {} holds no certificate{hint}; fix: point `tls.{what}` at a PEM file with a `BEGIN CERTIFICATE` block", path.display())]
    NoCertificate {
        what: &'static str,
        path: PathBuf,
        /// Extra guidance, e.g. when the file holds a private key instead.
        hint: String,
    },
    #[error("the key file {} holds no private key{hint}; fix: point `tls.key` at the PEM private key (PKCS#8, PKCS#1 or SEC1) of the certificate", path.display())]
    NoKey { path: PathBuf, hint: String },
    #[error("the private key in {} is not usable: {reason}; fix: use an ECDSA P-256/P-384, Ed25519 or RSA key", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("the key in {} does not match the certificate in {}; fix: use the key file generated with that certificate (e.g. `replica-1-key.pem` for `replica-1.pem`)", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("the certificate in {} (`tls.{what}`) expired on {not_after} (now {now}); fix: issue a new certificate (development: `scaleout certs init --dir DIR --force`)", path.display())]
    Expired {
        what: &'static str,
        path: PathBuf,
        not_after: String,
        now: String,
    },
    #[error("the certificate in {} (`tls.{what}`) is not valid before {not_before} (now {now}); fix: check this machine's clock, or wait until then", path.display())]
    NotYetValid {
        what: &'static str,
        path: PathBuf,
        not_before: String,
        now: String,
    },
    #[error("the certificate in {} is not signed by the CA in {} (wrong CA); fix: point `tls.ca` at the CA that issued it, or issue the certificate from this CA", cert.display(), ca.display())]
    WrongCa { cert: PathBuf, ca: PathBuf },
    #[error("the certificate in {} is not accepted by the CA in {}: {reason}; fix: issue a certificate from that CA with the clientAuth extended key usage (serverAuth too for replicas)", cert.display(), ca.display())]
    Rejected {
        cert: PathBuf,
        ca: PathBuf,
        reason: String,
    },
    #[error("the certificate in {} has no scaleout role (a SAN URI such as `scaleout://replica/1`, `scaleout://worker/<uuid>`, `scaleout://operator/<name>` or `scaleout://admin/<name>`); fix: issue it with that URI SAN", path.display())]
    NoRole { path: PathBuf },
    #[error("the certificate in {} has an invalid scaleout role: {reason}; fix: issue it with exactly one well-formed `scaleout://` URI SAN", path.display())]
    BadRole { path: PathBuf, reason: String },
    #[error("a peer certificate could not be parsed: {0}")]
    Parse(String),
    #[error("a peer certificate has no scaleout role URI SAN")]
    PeerNoRole,
    #[error("a peer certificate has an invalid scaleout role: {0}")]
    PeerBadRole(String),
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

/// A loaded and checked identity: the CA to trust, this process's certificate chain and key,
/// and the role its certificate carries.
pub struct TlsIdentity {
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    role: Role,
    not_after: SystemTime,
}

impl TlsIdentity {
    /// The CA certificates trusted for peers (the only roots).
    pub fn ca_certs(&self) -> &[CertificateDer<'static>] {
        &self.ca
    }

    /// This process's certificate chain, end entity first.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// This process's private key.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// The role this process's certificate carries.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// When this process's certificate expires (for a warning before it does).
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            role: self.role.clone(),
            not_after: self.not_after,
        }
    }
}

impl fmt::Debug for TlsIdentity {
    // Never print the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("role", &self.role)
            .field("ca_certs", &self.ca.len())
            .field("chain", &self.chain.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Reads the role from a certificate's `scaleout://` URI SAN.
pub fn role_from_cert(der: &CertificateDer<'_>) -> Result<Role, TlsError> {
    let (_, cert) =
        X509Certificate::from_der(der.as_ref()).map_err(|e| TlsError::Parse(e.to_string()))?;
    match role_in(&cert) {
        Ok(Some(role)) => Ok(role),
        Ok(None) => Err(TlsError::PeerNoRole),
        Err(reason) => Err(TlsError::PeerBadRole(reason)),
    }
}

/// The role URI of a parsed certificate: none, one, or an error (malformed or ambiguous).
fn role_in(cert: &X509Certificate<'_>) -> Result<Option<Role>, String> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("unreadable subjectAltName: {e}"))?;
    let mut found: Option<Role> = None;
    for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
        if let GeneralName::URI(uri) = name {
            if let Some(role) = Role::parse_uri(uri)? {
                if let Some(first) = &found {
                    return Err(format!(
                        "more than one role URI ({} and {}); a certificate must carry exactly one",
                        first.uri(),
                        role.uri()
                    ));
                }
                found = Some(role);
            }
        }
    }
    Ok(found)
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Parses every certificate in a PEM file; explains what the file holds when it has none.
fn parse_certs(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NotPem {
            what,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        let hint = if PrivateKeyDer::from_pem_slice(pem).is_ok() {
            " (it holds a private key: were `tls.cert` and `tls.key` swapped?)".to_owned()
        } else if !looks_like_pem(pem) {
            " (it is not PEM text: a DER file needs converting)".to_owned()
        } else {
            String::new()
        };
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
            hint,
        });
    }
    Ok(certs)
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => {
            let hint = if CertificateDer::pem_slice_iter(pem).any(|c| c.is_ok()) {
                " (it holds a certificate: were `tls.cert` and `tls.key` swapped?)".to_owned()
            } else if !looks_like_pem(pem) {
                " (it is not PEM text)".to_owned()
            } else {
                String::new()
            };
            Err(TlsError::NoKey {
                path: path.to_owned(),
                hint,
            })
        }
        Err(e) => Err(TlsError::NotPem {
            what: "key",
            path: path.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// Checks a certificate's validity window against `now`, naming the dates.
fn check_validity(
    what: &'static str,
    path: &Path,
    cert: &X509Certificate<'_>,
    now: SystemTime,
) -> Result<SystemTime, TlsError> {
    let now_secs = unix_secs(now);
    let validity = cert.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    if now_secs > not_after {
        return Err(TlsError::Expired {
            what,
            path: path.to_owned(),
            not_after: validity.not_after.to_string(),
            now: fmt_unix(now_secs),
        });
    }
    if now_secs < not_before {
        return Err(TlsError::NotYetValid {
            what,
            path: path.to_owned(),
            not_before: validity.not_before.to_string(),
            now: fmt_unix(now_secs),
        });
    }
    Ok(UNIX_EPOCH + Duration::from_secs(u64::try_from(not_after).unwrap_or(0)))
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn fmt_unix(secs: i64) -> String {
    // Same format as the certificate dates it is compared with.
    x509_parser::time::ASN1Time::from_timestamp(secs)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| secs.to_string())
}

fn parse_x509<'a>(
    what: &'static str,
    path: &Path,
    der: &'a CertificateDer<'_>,
) -> Result<X509Certificate<'a>, TlsError> {
    X509Certificate::from_der(der.as_ref())
        .map(|(_, cert)| cert)
        .map_err(|e| TlsError::NotPem {
            what,
            path: path.to_owned(),
            reason: format!("a certificate block is not valid X.509: {e}"),
        })
}

pub(crate) fn client_verifier(
    ca: &[CertificateDer<'static>],
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots
            .add(cert.clone())
            .map_err(|e| TlsError::Config(format!("CA certificate not usable as a root: {e}")))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// Loads the CA, certificate and key PEM files and checks them the way a peer will, so a
/// mistake shows at start with the file and the fix rather than as a failed handshake later:
/// readable, PEM, key matches certificate, within its validity window, issued by the CA, and
/// carrying a `scaleout://` role.
pub fn load_identity(ca: &Path, cert: &Path, key: &Path) -> Result<TlsIdentity, TlsError> {
    load_identity_at(ca, cert, key, SystemTime::now())
}

/// [`load_identity`] at a given time (tests, and warning ahead of expiry).
pub fn load_identity_at(
    ca_path: &Path,
    cert_path: &Path,
    key_path: &Path,
    now: SystemTime,
) -> Result<TlsIdentity, TlsError> {
    let ca_pem = read_file("ca", ca_path)?;
    let cert_pem = read_file("cert", cert_path)?;
    let key_pem = read_file("key", key_path)?;
    let ca = parse_certs("ca", ca_path, &ca_pem)?;
    let chain = parse_certs("cert", cert_path, &cert_pem)?;
    let key = parse_key(key_path, &key_pem)?;

    // Key first: a mismatched key is the most common copy mistake and hides nothing else.
    let provider = crypto_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| TlsError::BadKey {
            path: key_path.to_owned(),
            reason: e.to_string(),
        })?;
    match CertifiedKey::new(chain.clone(), signing_key).keys_match() {
        // `Unknown`: the key cannot report its public half; the handshake will still fail
        // loudly if it is wrong, so do not refuse here.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                cert: cert_path.to_owned(),
                key: key_path.to_owned(),
            })
        }
        Err(e) => {
            return Err(TlsError::BadKey {
                path: key_path.to_owned(),
                reason: e.to_string(),
            })
        }
    }

    // Dates before the chain, so an expired certificate says "expired" with its date rather
    // than a generic verification failure.
    for ca_cert in &ca {
        check_validity("ca", ca_path, &parse_x509("ca", ca_path, ca_cert)?, now)?;
    }
    let end_entity = &chain[0];
    let parsed = parse_x509("cert", cert_path, end_entity)?;
    let not_after = check_validity("cert", cert_path, &parsed, now)?;

    // The chain, checked by the same verifier the servers use for client certificates. Every
    // scaleout certificate is used as a client (replicas dial their peers), so clientAuth
    // applies to all of them.
    let verifier = client_verifier(&ca)?;
    let unix_now = UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(unix_secs(now)).unwrap_or(0),
    ));
    if let Err(e) = verifier.verify_client_cert(end_entity, &chain[1..], unix_now) {
        return Err(match e {
            rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature,
            ) => TlsError::WrongCa {
                cert: cert_path.to_owned(),
                ca: ca_path.to_owned(),
            },
            other => TlsError::Rejected {
                cert: cert_path.to_owned(),
                ca: ca_path.to_owned(),
                reason: other.to_string(),
            },
        });
    }

    let role = match role_in(&parsed) {
        Ok(Some(role)) => role,
        Ok(None) => {
            return Err(TlsError::NoRole {
                path: cert_path.to_owned(),
            })
        }
        Err(reason) => {
            return Err(TlsError::BadRole {
                path: cert_path.to_owned(),
                reason,
            })
        }
    };
    Ok(TlsIdentity {
        ca,
        chain,
        key,
        role,
        not_after,
    })
}

/// A server config that presents `identity` and requires a client certificate issued by the
/// identity's CA. Roles are checked by the services, from the verified peer certificate.
pub fn server_config(identity: &TlsIdentity) -> Result<ServerConfig, TlsError> {
    let verifier = client_verifier(&identity.ca)?;
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    // gRPC runs over HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A server config for browsers (the web console): presents `identity` over HTTP/1.1 and asks
/// for no client certificate; people sign in with a token instead (`console::token`).
pub fn browser_server_config(identity: &TlsIdentity) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client config that trusts only the identity's CA and presents the identity's certificate.
pub fn client_config(identity: &TlsIdentity) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in &identity.ca {
        roots
            .add(cert.clone())
            .map_err(|e| TlsError::Config(format!("CA certificate not usable as a root: {e}")))?;
    }
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_uris_round_trip() {
        let id = Uuid::new_v4();
        for role in [
            Role::Replica(3),
            Role::Worker(id),
            Role::Operator("ops-1".into()),
            Role::Admin("root.admin".into()),
        ] {
            assert_eq!(Role::parse_uri(&role.uri()), Ok(Some(role.clone())));
        }
    }

    #[test]
    fn other_schemes_are_ignored_and_bad_roles_explained() {
        assert_eq!(Role::parse_uri("spiffe://x/y"), Ok(None));
        for bad in [
            "scaleout://replica/x",
            "scaleout://worker/not-a-uuid",
            "scaleout://operator/",
            "scaleout://admin/a/b",
            "scaleout://boss/1",
            "scaleout://replica",
        ] {
            let err = Role::parse_uri(bad).expect_err(bad);
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn install_is_idempotent() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(CryptoProvider::get_default().is_some());
    }
}
