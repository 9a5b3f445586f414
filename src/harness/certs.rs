//! The development CA of a local TLS cluster and the certificates it issues.

use std::fs;
use std::path::PathBuf;

use crate::certs::{file_stem, write_file, write_issued, DevCa, Validity, CA_CERT_FILE};
use crate::tls::{Role, TlsMaterial, TlsPaths};
use crate::transport::Security;

/// The development CA of a TLS cluster and the directory its certificates are written to
/// (`ca.pem`, `replica-N.pem`, `operator.pem`, `admin.pem`, `worker-<uuid>.pem`, keys beside).
pub struct ClusterCerts {
    pub dir: PathBuf,
    pub ca: DevCa,
    pub hosts: Vec<String>,
    /// The admin identity, loaded once: clients are made on every status poll.
    admin: std::sync::OnceLock<Security>,
}

impl ClusterCerts {
    pub(super) fn create(dir: PathBuf, replicas: u64) -> anyhow::Result<ClusterCerts> {
        fs::create_dir_all(&dir)?;
        let validity = Validity::days_from_now(30);
        let ca = DevCa::generate(
            &format!(
                "scaleout test CA {}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            validity,
        )?;
        write_file(&dir.join(CA_CERT_FILE), &ca.pem().cert_pem, false)?;
        let certs = ClusterCerts {
            dir,
            ca,
            hosts: vec!["127.0.0.1".into(), "localhost".into()],
            admin: std::sync::OnceLock::new(),
        };
        for id in 1..=replicas {
            certs.issue(Role::Replica(id))?;
        }
        certs.issue(Role::Operator("operator".into()))?;
        certs.issue(Role::Admin("admin".into()))?;
        Ok(certs)
    }

    /// Issues (or re-issues) `role`'s certificate into the directory.
    pub fn issue(&self, role: Role) -> anyhow::Result<TlsPaths> {
        let pair = self
            .ca
            .issue(&role, &self.hosts, Validity::days_from_now(30))?;
        let issued = write_issued(&self.dir, role, &pair)?;
        Ok(TlsPaths {
            ca: self.dir.join(CA_CERT_FILE),
            cert: issued.cert,
            key: issued.key,
        })
    }

    /// The files of `role`'s certificate.
    pub fn paths(&self, role: &Role) -> TlsPaths {
        TlsPaths::in_dir(&self.dir, &file_stem(role))
    }

    /// The admin's certificate, as the cluster's clients use it.
    pub fn admin_security(&self) -> anyhow::Result<Security> {
        if let Some(security) = self.admin.get() {
            return Ok(security.clone());
        }
        let loaded = self.security(&Role::Admin("admin".into()))?;
        Ok(self.admin.get_or_init(|| loaded).clone())
    }

    /// A client connecting with `role`'s certificate.
    pub fn security(&self, role: &Role) -> anyhow::Result<Security> {
        Ok(Security::MutualTls(TlsMaterial::load(self.paths(role))?))
    }
}

/// The `[tls]` table of a config file for `paths`.
pub(super) fn tls_table(paths: &TlsPaths) -> String {
    format!(
        "\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        paths.ca.display(),
        paths.cert.display(),
        paths.key.display()
    )
}
