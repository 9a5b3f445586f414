//! Development certificates: `scaleout certs init --dir DIR` makes a CA and one certificate per
//! replica, per worker, and for an operator and an admin client (rcgen, ECDSA P-256).
//!
//! # Role encoding
//! Every certificate carries its role as exactly one subjectAltName URI (parsed back by
//! [`crate::tls::role_from_cert`]):
//!
//! | file                         | SANs                                               | EKU                    |
//! |------------------------------|----------------------------------------------------|------------------------|
//! | `replica-N.pem`              | the host names and IPs, URI `scaleout://replica/N` | serverAuth, clientAuth |
//! | `worker-<uuid>.pem`          | URI `scaleout://worker/<uuid>`                     | clientAuth             |
//! | `operator.pem`               | URI `scaleout://operator/<name>`                   | clientAuth             |
//! | `admin.pem`                  | URI `scaleout://admin/<name>`                      | clientAuth             |
//!
//! Replicas get both usages because they serve (api and peer ports) and dial their peers.
//! Each certificate `<name>.pem` has its key in `<name>-key.pem`; the CA is `ca.pem` and
//! `ca-key.pem`. Files are PEM; key files are created with mode 0600 (never readable by
//! others, even for a moment). Replica ids are numbered from 1, like the Raft node ids in the
//! sample configs.
//!
//! An existing CA is never overwritten without `force`: certificates issued from it would stop
//! being trusted everywhere at once.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::tls::{is_valid_role_name, Role};

/// File name of the CA certificate in the output directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key in the output directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// Options of `scaleout certs init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertsInit {
    /// Output directory, created if missing.
    pub dir: PathBuf,
    /// Number of replica certificates, `replica-1` .. `replica-N`.
    pub replicas: u32,
    /// Worker agent ids, one certificate each. See [`CertsInit::with_worker_count`].
    pub workers: Vec<Uuid>,
    /// Host names and IP addresses put in every replica certificate's SANs.
    pub hosts: Vec<String>,
    /// Validity of every certificate, from now.
    pub validity_days: u32,
    /// Name in the operator certificate's role URI.
    pub operator: String,
    /// Name in the admin certificate's role URI.
    pub admin: String,
    /// Replace an existing CA (and every certificate) in `dir`.
    pub force: bool,
}

impl Default for CertsInit {
    fn default() -> Self {
        CertsInit {
            dir: PathBuf::from("certs"),
            replicas: 3,
            workers: Vec::new(),
            hosts: vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            validity_days: 365,
            operator: "operator".to_owned(),
            admin: "admin".to_owned(),
            force: false,
        }
    }
}

impl CertsInit {
    /// Defaults, writing into `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CertsInit {
            dir: dir.into(),
            ..CertsInit::default()
        }
    }

    /// Adds `count` workers with fresh random agent ids (for `--workers N`).
    pub fn with_worker_count(mut self, count: u32) -> Self {
        self.workers.extend((0..count).map(|_| Uuid::new_v4()));
        self
    }
}

/// One certificate written by [`init`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The role its URI SAN encodes.
    pub role: Role,
    /// Path of `<name>.pem`.
    pub cert: PathBuf,
    /// Path of `<name>-key.pem` (mode 0600).
    pub key: PathBuf,
}

/// What [`init`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertsReport {
    /// Path of `ca.pem`.
    pub ca_cert: PathBuf,
    /// Path of `ca-key.pem` (mode 0600).
    pub ca_key: PathBuf,
    /// Replicas, then workers, then the operator, then the admin.
    pub issued: Vec<IssuedCert>,
    /// The last instant every certificate is valid.
    pub not_after: OffsetDateTime,
}

impl CertsReport {
    /// The certificate issued for `role`, if any.
    pub fn find(&self, role: &Role) -> Option<&IssuedCert> {
        self.issued.iter().find(|c| &c.role == role)
    }
}

/// Every way [`init`] and the CA helpers can fail.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{} already holds a CA ({}); refusing to replace it, because every certificate it issued would stop being trusted; fix: use another --dir, or pass --force to replace the CA and all certificates", dir.display(), path.display())]
    CaExists { dir: PathBuf, path: PathBuf },
    #[error("cannot write {}: {source}; fix: check that the directory exists and is writable", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid option: {0}")]
    Invalid(String),
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A validity window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (so a replica whose clock is slightly behind accepts a certificate
    /// made a moment ago on another machine) until `days` days from now.
    pub fn days_from_now(days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(i64::from(days)),
        }
    }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct PemPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A development CA held in memory: makes the files of [`init`], and lets tests issue
/// certificates with unusual properties (expired, from another CA).
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    pem: PemPair,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

impl DevCa {
    /// Generates a self-signed CA named `common_name`.
    pub fn generate(common_name: &str, validity: Validity) -> Result<Self, CertsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        // Path length 0: this CA signs end-entity certificates only.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let pem = PemPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(DevCa {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// The CA certificate and key, PEM.
    pub fn pem(&self) -> &PemPair {
        &self.pem
    }

    /// Issues a certificate for `role`. Replicas get `hosts` as DNS/IP SANs and both server
    /// and client usage; every other role is client only.
    pub fn issue(
        &self,
        role: &Role,
        hosts: &[String],
        validity: Validity,
    ) -> Result<PemPair, CertsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&role.to_string());
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let mut sans = Vec::new();
        if let Role::Replica(_) = role {
            for host in hosts {
                sans.push(match host.parse() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(host.clone().try_into().map_err(|_| {
                        CertsError::Invalid(format!("host `{host}` is not a valid DNS name"))
                    })?),
                });
            }
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
        } else {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        sans.push(SanType::URI(role.uri().try_into()?));
        params.subject_alt_names = sans;
        self.issue_params(&params)
    }

    /// Signs arbitrary parameters with this CA, for certificates [`DevCa::issue`] would not
    /// make (no role URI, odd usages): tests of the loader's errors use it.
    pub fn issue_params(&self, params: &CertificateParams) -> Result<PemPair, CertsError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(PemPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "scaleout");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// The file stem of a role's certificate: `replica-N`, `worker-<uuid>`, `operator`, `admin`.
pub fn file_stem(role: &Role) -> String {
    match role {
        Role::Replica(id) => format!("replica-{id}"),
        Role::Worker(id) => format!("worker-{id}"),
        Role::Operator(_) => "operator".to_owned(),
        Role::Admin(_) => "admin".to_owned(),
    }
}

fn validate(options: &CertsInit) -> Result<(), CertsError> {
    if options.validity_days == 0 {
        return Err(CertsError::Invalid(
            "validity must be at least 1 day".to_owned(),
        ));
    }
    if options.replicas > 0 && options.hosts.is_empty() {
        return Err(CertsError::Invalid(
            "replica certificates need at least one host name or IP (e.g. localhost)".to_owned(),
        ));
    }
    for host in &options.hosts {
        // rcgen takes any ASCII as a DNS name; a typo would only show later as a name
        // mismatch at connect time, so check here.
        let is_ip = host.parse::<std::net::IpAddr>().is_ok();
        let is_dns = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*')
            });
        if !is_ip && !is_dns {
            return Err(CertsError::Invalid(format!(
                "host `{host}` is neither an IP address nor a DNS name"
            )));
        }
    }
    for (what, name) in [("operator", &options.operator), ("admin", &options.admin)] {
        if !is_valid_role_name(name) {
            return Err(CertsError::Invalid(format!(
                "{what} name `{name}` must be non-empty and use only letters, digits, `.`, `_`, `-`"
            )));
        }
    }
    Ok(())
}

/// Makes the development CA and every certificate in `options.dir`. Refuses to replace an
/// existing CA unless `options.force`.
pub fn init(options: &CertsInit) -> Result<CertsReport, CertsError> {
    validate(options)?;
    let dir = &options.dir;
    let ca_cert = dir.join(CA_CERT_FILE);
    let ca_key = dir.join(CA_KEY_FILE);
    if !options.force {
        for path in [&ca_cert, &ca_key] {
            // `symlink_metadata` so a dangling link also counts as "something is there".
            if path.symlink_metadata().is_ok() {
                return Err(CertsError::CaExists {
                    dir: dir.clone(),
                    path: path.clone(),
                });
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| CertsError::Write {
        path: dir.clone(),
        source,
    })?;

    let validity = Validity::days_from_now(options.validity_days);
    // A distinct name per CA, so two development CAs are told apart by people and by
    // verifiers (same-named CAs make a foreign certificate look like a bad signature).
    let tag = Uuid::new_v4().simple().to_string();
    let ca = DevCa::generate(&format!("scaleout development CA {}", &tag[..8]), validity)?;

    let mut roles: Vec<Role> = (1..=u64::from(options.replicas))
        .map(Role::Replica)
        .collect();
    roles.extend(options.workers.iter().copied().map(Role::Worker));
    roles.push(Role::Operator(options.operator.clone()));
    roles.push(Role::Admin(options.admin.clone()));

    // Issue everything before writing anything, so a generation error leaves no half set.
    let mut pairs = Vec::with_capacity(roles.len());
    for role in &roles {
        pairs.push(ca.issue(role, &options.hosts, validity)?);
    }

    write_file(&ca_key, &ca.pem().key_pem, true)?;
    write_file(&ca_cert, &ca.pem().cert_pem, false)?;
    let mut issued = Vec::with_capacity(roles.len());
    for (role, pair) in roles.into_iter().zip(pairs) {
        issued.push(write_issued(dir, role, &pair)?);
    }
    Ok(CertsReport {
        ca_cert,
        ca_key,
        issued,
        not_after: validity.not_after,
    })
}

/// Writes a role's certificate and key into `dir` as `<stem>.pem` and `<stem>-key.pem` (0600).
pub fn write_issued(dir: &Path, role: Role, pair: &PemPair) -> Result<IssuedCert, CertsError> {
    let stem = file_stem(&role);
    let key = dir.join(format!("{stem}-key.pem"));
    let cert = dir.join(format!("{stem}.pem"));
    write_file(&key, &pair.key_pem, true)?;
    write_file(&cert, &pair.cert_pem, false)?;
    Ok(IssuedCert { role, cert, key })
}

/// Writes `contents` to `path`; a secret is 0600 from creation on (and made so if the file
/// already existed with wider permissions).
pub fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), CertsError> {
    let err = |source| CertsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        open.mode(0o600);
        // An existing file keeps its mode when opened, so tighten it before writing the secret.
        if path.exists() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        }
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = open.open(path).map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_options() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = CertsInit::new(dir.path());
        opts.operator = "a/b".into();
        assert!(matches!(init(&opts), Err(CertsError::Invalid(_))));
        let mut opts = CertsInit::new(dir.path());
        opts.validity_days = 0;
        assert!(matches!(init(&opts), Err(CertsError::Invalid(_))));
        let mut opts = CertsInit::new(dir.path());
        opts.hosts = vec!["bad host!".into()];
        assert!(matches!(init(&opts), Err(CertsError::Invalid(_))));
        // Nothing was written by the failed runs.
        assert_eq!(std::fs::read_dir(dir.path()).expect("read_dir").count(), 0);
    }

    #[test]
    fn refuses_to_replace_a_ca_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = CertsInit::new(dir.path());
        opts.replicas = 1;
        init(&opts).expect("first init");
        let first = std::fs::read_to_string(dir.path().join(CA_CERT_FILE)).expect("ca");
        let err = init(&opts).expect_err("second init must refuse");
        let msg = err.to_string();
        assert!(msg.contains("ca.pem") && msg.contains("--force"), "{msg}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(CA_CERT_FILE)).expect("ca"),
            first
        );
        opts.force = true;
        init(&opts).expect("forced init");
        assert_ne!(
            std::fs::read_to_string(dir.path().join(CA_CERT_FILE)).expect("ca"),
            first
        );
    }

    #[cfg(unix)]
    #[test]
    fn write_file_tightens_an_existing_secret() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.pem");
        std::fs::write(&path, "old").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_file(&path, "new", true).expect("write_file");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
