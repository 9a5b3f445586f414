//! The flags every command that talks to the cluster takes: endpoints, deadline, certificate.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::Args;

use super::{CliError, Output};
use crate::client::Client;
use crate::tls::{TlsMaterial, TlsPaths};
use crate::transport::Security;

/// Options every client command takes.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Replica API addresses, any of them.
    #[arg(
        long,
        env = "SCALEOUT_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103"
    )]
    pub endpoints: Vec<String>,
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
    /// Read this replica's local state instead of a linearizable read through the leader.
    #[arg(long)]
    pub stale: bool,
    /// Give up after this many seconds (redirects and retries included).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout_secs: u64,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

/// How a client proves who it is: a certificate (mutual TLS), or nothing on an `insecure`
/// cluster.
#[derive(Debug, Clone, Args)]
pub struct ClientTlsArgs {
    /// A directory made by `scaleout certs init`: uses ca.pem, IDENTITY.pem and
    /// IDENTITY-key.pem from it.
    #[arg(long, env = "SCALEOUT_TLS_DIR", value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Which certificate of --tls-dir to use: operator, admin (or any NAME with NAME.pem in it).
    #[arg(long, env = "SCALEOUT_IDENTITY", default_value = "operator")]
    pub identity: String,
    /// The CA certificate (PEM) that issued the replicas' certificates (overrides --tls-dir).
    #[arg(long, env = "SCALEOUT_TLS_CA", value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// This client's certificate (PEM), with an operator or admin role (overrides --tls-dir).
    #[arg(long, env = "SCALEOUT_TLS_CERT", value_name = "PEM")]
    pub cert: Option<PathBuf>,
    /// This client's private key (PEM) (overrides --tls-dir).
    #[arg(long, env = "SCALEOUT_TLS_KEY", value_name = "PEM")]
    pub key: Option<PathBuf>,
    /// Plaintext without a certificate, for a cluster run with `insecure = true`.
    #[arg(long, env = "SCALEOUT_CLIENT_INSECURE", conflicts_with_all = ["tls_dir", "ca", "cert", "key"])]
    pub insecure: bool,
}

impl ClientTlsArgs {
    /// The security these flags ask for; a clear usage error when they name no certificate or
    /// a bad one.
    pub fn security(&self) -> Result<Security, CliError> {
        if self.insecure {
            return Ok(Security::Insecure);
        }
        let material = TlsMaterial::load(self.paths()?).map_err(CliError::usage)?;
        Ok(Security::MutualTls(material))
    }

    /// The CA, certificate and key files these flags name; a usage error naming the flag that
    /// is missing.
    pub fn paths(&self) -> Result<TlsPaths, CliError> {
        let from_dir = self
            .tls_dir
            .as_ref()
            .map(|dir| TlsPaths::in_dir(dir, &self.identity));
        let pick = |explicit: &Option<PathBuf>, from_dir: Option<PathBuf>, flag: &str| {
            explicit.clone().or(from_dir).ok_or_else(|| {
                CliError::usage(anyhow!(
                    "no client certificate: --{flag} is missing; pass --tls-dir DIR (made by \
                     `scaleout certs init --dir DIR`), or --ca, --cert and --key (or \
                     SCALEOUT_TLS_DIR / SCALEOUT_TLS_CA, _CERT, _KEY), or --insecure for a \
                     cluster running with insecure = true"
                ))
            })
        };
        let paths = TlsPaths {
            ca: pick(&self.ca, from_dir.as_ref().map(|p| p.ca.clone()), "ca")?,
            cert: pick(
                &self.cert,
                from_dir.as_ref().map(|p| p.cert.clone()),
                "cert",
            )?,
            key: pick(&self.key, from_dir.as_ref().map(|p| p.key.clone()), "key")?,
        };
        Ok(paths)
    }
}

impl ClientArgs {
    pub(super) fn client(&self) -> Result<Client, CliError> {
        Ok(Client::new(&self.endpoints, self.tls.security()?)?
            .failing_fast()
            .with_deadline(std::time::Duration::from_secs(self.timeout_secs)))
    }
}
