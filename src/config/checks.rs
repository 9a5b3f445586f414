//! Checks shared by the config loaders: numeric ranges, socket addresses, writable directories,
//! and the `[tls]` files (shared with the worker's config, `crate::worker::config`).

use std::ops::RangeInclusive;

use super::*;

/// One row of a loader's range table: a numeric setting, the values it may take, and what its
/// error adds after the rule (units, an example, the default).
pub(crate) struct Bound {
    key: &'static str,
    value: u64,
    allowed: RangeInclusive<u64>,
    /// What 0 means, when 0 is allowed besides `allowed` (it turns the setting off).
    zero_means: Option<&'static str>,
    hint: &'static str,
}

impl Bound {
    pub(crate) fn new(
        key: &'static str,
        value: impl TryInto<u64>,
        allowed: RangeInclusive<u64>,
        hint: &'static str,
    ) -> Bound {
        Bound {
            key,
            value: value.try_into().unwrap_or(u64::MAX),
            allowed,
            zero_means: None,
            hint,
        }
    }

    /// 0 is allowed too, and means `meaning`.
    pub(crate) fn or_zero(self, meaning: &'static str) -> Bound {
        Bound {
            zero_means: Some(meaning),
            ..self
        }
    }

    fn holds(&self) -> bool {
        self.allowed.contains(&self.value) || (self.value == 0 && self.zero_means.is_some())
    }

    /// "is 0 but must be at least 1 (e.g. 100)".
    fn message(&self) -> String {
        let (low, high) = (*self.allowed.start(), *self.allowed.end());
        let range = match (low, high) {
            (_, u64::MAX) => format!("at least {low}"),
            (0, _) => format!("at most {high}"),
            _ => format!("between {low} and {high}"),
        };
        let rule = match self.zero_means {
            Some(meaning) => format!("0 ({meaning}) or {range}"),
            None => range,
        };
        format!("is {} but must be {rule} ({})", self.value, self.hint)
    }
}

/// The first row of a range table whose value is out of range, as (key, message).
pub(crate) fn check_bounds(
    table: impl IntoIterator<Item = Bound>,
) -> Result<(), (&'static str, String)> {
    match table.into_iter().find(|bound| !bound.holds()) {
        Some(bound) => Err((bound.key, bound.message())),
        None => Ok(()),
    }
}

/// The rule that exactly one of `insecure = true` and `[tls]` is given, as (key, message) of
/// the violation. `who` is "replica" or "worker", for the hint.
pub(crate) fn tls_choice_error(
    insecure: bool,
    has_tls: bool,
    who: &str,
) -> Option<(&'static str, String)> {
    match (insecure, has_tls) {
        (true, true) => Some((
            "insecure",
            "is true, but a [tls] section is given too; choose one: remove [tls] for plaintext, \
             or set insecure = false to use TLS"
                .into(),
        )),
        (false, false) => Some((
            "tls",
            format!(
                "no [tls] section: set tls.ca, tls.cert and tls.key (development certificates: \
                 `scaleout certs init --dir certs`, then this {who}'s files from certs/), or \
                 insecure = true for plaintext on a trusted network"
            ),
        )),
        _ => None,
    }
}

/// The message for a `tls.*` key that `[tls]` lacks; `stem` names the development file, e.g.
/// `replica-N` or `worker-<uuid>`.
pub(crate) fn tls_missing_message(key: &str, stem: &str) -> String {
    let what = match key {
        "tls.ca" => {
            "the PEM file of the CA that issued the certificates (development: certs/ca.pem)"
                .to_string()
        }
        "tls.cert" => {
            format!("the PEM file of this process's certificate (development: certs/{stem}.pem)")
        }
        _ => format!(
            "the PEM file of the private key of tls.cert (development: certs/{stem}-key.pem)"
        ),
    };
    format!("is missing or empty in [tls]; set {key} to {what}; ca, cert and key are all required")
}

/// The config key a [`TlsError`] from loading the files is most specifically about.
pub(crate) fn tls_error_key(error: &TlsError) -> &'static str {
    let by_what = |what: &str| match what {
        "ca" => "tls.ca",
        "cert" => "tls.cert",
        "key" => "tls.key",
        _ => "tls",
    };
    match error {
        TlsError::Read { what, .. }
        | TlsError::NotPem { what, .. }
        | TlsError::NoCertificate { what, .. }
        | TlsError::Expired { what, .. }
        | TlsError::NotYetValid { what, .. } => by_what(what),
        TlsError::NoKey { .. } | TlsError::BadKey { .. } | TlsError::KeyMismatch { .. } => {
            "tls.key"
        }
        TlsError::WrongCa { .. }
        | TlsError::Rejected { .. }
        | TlsError::NoRole { .. }
        | TlsError::BadRole { .. } => "tls.cert",
        _ => "tls",
    }
}

/// Loads and checks the files of `[tls]`; an error as (key, message).
pub(crate) fn load_tls_identity(paths: &TlsPaths) -> Result<TlsIdentity, (&'static str, String)> {
    load_identity(&paths.ca, &paths.cert, &paths.key)
        .map_err(|e| (tls_error_key(&e), e.to_string()))
}

/// Checks `addr` is host:port with a dialable host (a name, IPv4, or bracketed IPv6) and a
/// port; port 0 (an ephemeral port, for listeners) only when `allow_port_zero`.
pub(crate) fn check_addr(addr: &str, allow_port_zero: bool) -> Result<(), String> {
    const EXAMPLE: &str = "e.g. 127.0.0.1:7101 or replica-1.example.net:7101";
    if addr.contains("://") {
        return Err(format!(
            "`{addr}` has a scheme; write only host:port, {EXAMPLE}"
        ));
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!(
            "`{addr}` is not host:port (the :port is missing), {EXAMPLE}"
        ));
    };
    if host.is_empty() {
        return Err(format!("`{addr}` has no host, {EXAMPLE}"));
    }
    if let Some(inner) = host.strip_prefix('[') {
        let ok = inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<Ipv6Addr>().is_ok());
        if !ok {
            return Err(format!(
                "`{addr}`: `{host}` is not a bracketed IPv6 address like [::1]"
            ));
        }
    } else if host.contains(':') {
        return Err(format!(
            "`{addr}`: write IPv6 addresses in brackets, e.g. [::1]:7101"
        ));
    } else if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        return Err(format!(
            "`{addr}`: `{host}` is not a host name or IP address, {EXAMPLE}"
        ));
    }
    match port.parse::<u16>() {
        Ok(0) if !allow_port_zero => Err(format!(
            "`{addr}` has port 0; give the fixed port the others dial"
        )),
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "`{addr}`: port `{port}` is not a number between 1 and 65535, {EXAMPLE}"
        )),
    }
}

/// The nearest part of `path` (itself, or its longest leading part) that exists.
pub(super) fn existing_part(path: &Path) -> Option<&Path> {
    path.ancestors()
        .find(|part| !part.as_os_str().is_empty() && part.exists())
}

/// Whether `dir` could be a directory, judged without writing: it is one, or the nearest part
/// of its path that exists is a directory (creating the rest is left to the start-up step).
pub(crate) fn check_dir_possible(dir: &Path) -> Result<(), String> {
    match existing_part(dir) {
        Some(part) if !part.is_dir() => Err(format!(
            "cannot create directory {}: {} is not a directory; choose a directory this user \
             can write",
            dir.display(),
            part.display()
        )),
        _ => Ok(()),
    }
}

/// Creates `dir` and checks a file can be written and removed in it.
pub(crate) fn probe_dir(dir: &Path) -> Result<(), String> {
    static PROBES: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(dir).map_err(|e| {
        format!(
            "cannot create directory {}: {e}; choose a directory this user can write",
            dir.display()
        )
    })?;
    let probe = dir.join(format!(
        ".scaleout-write-probe-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&probe, b"probe").map_err(|e| {
        format!(
            "directory {} is not writable: {e}; choose a directory this user can write",
            dir.display()
        )
    })?;
    std::fs::remove_file(&probe)
        .map_err(|e| format!("cannot remove the probe file {}: {e}", probe.display()))
}
