//! A worker's identity, its agent id: a UUID that names it to the masters (and, with TLS, the
//! one in its certificate, `scaleout://worker/<uuid>`). It must survive restarts, since the
//! masters remember each worker's enabled state by it, so a generated id is kept in
//! `<state_dir>/agent_id` (written atomically, fsynced).

use std::path::Path;

use uuid::Uuid;

use crate::config::load_tls_identity;
use crate::tls::{Role, TlsPaths};

/// The name of the file in `state_dir` that keeps a generated agent id.
pub const AGENT_ID_FILE: &str = "agent_id";

/// SSIS's "all workers" GUID: it means "any worker" in a job, so no worker may use it.
const ALL_WORKERS: Uuid = Uuid::from_u128(0x11111111_1111_1111_1111_111111111111);

/// The agent id, once the config is validated and `state_dir` exists: the certificate's
/// (`cert_id`, read by [`of_certificate`]), which a configured `agent_id` and the stored one must
/// equal; else the configured one; else the stored one, generated and stored on first start.
pub(super) fn settle(
    cert_id: Option<Uuid>,
    configured: Option<&str>,
    tls: Option<&TlsPaths>,
    state_dir: &Path,
) -> Result<Uuid, String> {
    let explicit = configured
        .map(|text| parse_agent_id(text.trim()))
        .transpose()?;
    match (cert_id, tls) {
        (Some(cert_id), Some(paths)) => {
            settle_tls_agent_id(cert_id, explicit, &paths.cert, state_dir)
        }
        _ => match explicit {
            Some(id) => Ok(id),
            None => persistent_agent_id(state_dir),
        },
    }
}

/// Loads the `[tls]` files and returns the worker id of the certificate; an error as
/// (key, message).
pub(super) fn of_certificate(paths: &TlsPaths) -> Result<Uuid, (&'static str, String)> {
    let identity = load_tls_identity(paths)?;
    match identity.role() {
        Role::Worker(id) if !id.is_nil() && *id != ALL_WORKERS => Ok(*id),
        Role::Worker(_) => Err((
            "tls.cert",
            format!(
                "the certificate in {} is for {}, a reserved id (it means no worker or any \
                 worker); fix: issue the worker a certificate with another UUID",
                paths.cert.display(),
                identity.role().uri()
            ),
        )),
        other => Err((
            "tls.cert",
            format!(
                "the certificate in {} is for {}, but this is a worker; fix: use a worker \
                 certificate (a SAN URI scaleout://worker/<uuid>, e.g. worker-<uuid>.pem from \
                 `scaleout certs init --dir certs --workers N`)",
                paths.cert.display(),
                other.uri()
            ),
        )),
    }
}

/// With TLS the agent id is the certificate's: a configured `agent_id` and the one kept in
/// `<state_dir>/agent_id` must match it; the file is written with it when absent, so the id
/// stays with the state dir.
fn settle_tls_agent_id(
    cert_id: Uuid,
    explicit: Option<Uuid>,
    cert: &Path,
    state_dir: &Path,
) -> Result<Uuid, String> {
    if let Some(id) = explicit.filter(|id| *id != cert_id) {
        return Err(format!(
            "is {id}, but the certificate in {} is for worker {cert_id}; with TLS the agent id \
             comes from the certificate; fix: remove agent_id, or use the certificate of worker \
             {id}",
            cert.display()
        ));
    }
    match stored_agent_id(state_dir)? {
        Some(stored) if stored != cert_id => Err(format!(
            "{} holds agent id {stored}, but the certificate in {} is for worker {cert_id}; \
             this state dir belongs to another worker; fix: use that worker's certificate \
             (scaleout://worker/{stored}), or a fresh state_dir for worker {cert_id}",
            state_dir.join(AGENT_ID_FILE).display(),
            cert.display()
        )),
        Some(_) => Ok(cert_id),
        None => {
            store_agent_id(state_dir, cert_id)?;
            Ok(cert_id)
        }
    }
}

/// A configured or stored agent id: a UUID that is not reserved.
fn parse_agent_id(text: &str) -> Result<Uuid, String> {
    let id = Uuid::parse_str(text).map_err(|e| {
        format!("`{text}` is not a UUID ({e}); e.g. 6f1c2b9e-5d1a-4a67-9d0e-2f4b8c3a7e10, or leave it out to generate one")
    })?;
    if id.is_nil() || id == ALL_WORKERS {
        return Err(format!(
            "`{text}` is reserved (it means no worker or any worker); use another UUID"
        ));
    }
    Ok(id)
}

/// The id kept in `<state_dir>/agent_id`, generated and written (atomically, fsynced) the first
/// time, so the worker keeps its identity, and so its enabled state, across restarts.
fn persistent_agent_id(state_dir: &Path) -> Result<Uuid, String> {
    if let Some(id) = stored_agent_id(state_dir)? {
        return Ok(id);
    }
    let id = Uuid::new_v4();
    store_agent_id(state_dir, id)?;
    Ok(id)
}

/// The id in `<state_dir>/agent_id`; `None` when the file does not exist.
fn stored_agent_id(state_dir: &Path) -> Result<Option<Uuid>, String> {
    let path = state_dir.join(AGENT_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_agent_id(text.trim()).map(Some).map_err(|e| {
            format!(
                "{} holds an invalid id: {e}; fix or delete the file (a new id means a new \
                 worker that must be enabled again)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Writes `id` to `<state_dir>/agent_id`, atomically and fsynced.
fn store_agent_id(state_dir: &Path, id: Uuid) -> Result<(), String> {
    let path = state_dir.join(AGENT_ID_FILE);
    crate::disk::write_atomically(&crate::disk::OsDisk, &path, format!("{id}\n").as_bytes())
        .map_err(|e| format!("cannot write the agent id to {}: {e}", path.display()))
}
