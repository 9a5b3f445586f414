//! Sign-in tokens for the web console: `scaleout console token --identity admin` signs a short
//! statement ("this certificate's holder may sign in until T") with the identity's own private
//! key; any replica checks the certificate against the cluster's CA, the signature against the
//! certificate and the time, and signs the browser in with the certificate's role. Nothing is
//! stored on the replicas and nothing new is to be set up: whoever holds an operator or admin
//! certificate can mint a token for that role, exactly as they can already call the API with it.
//! A token expires (8 hours by default, at most 7 days); a leaked one is as good as the role
//! until then, so it is shown once and kept out of URLs.
//!
//! Format: `sot1.<certificate>.<claims>.<signature>`, each part base64url without padding; the
//! signature covers `sot1.<certificate>.<claims>`.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::SignatureScheme;
use serde::{Deserialize, Serialize};

use crate::tls::{Role, TlsIdentity};

const PREFIX: &str = "sot1";

/// The longest a token may be valid for.
pub const MAX_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The signature schemes a token may be signed with, in the order a key is asked for them.
const SCHEMES: [SignatureScheme; 5] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PKCS1_SHA256,
];

/// What a token says, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claims {
    /// The certificate's role, as its URI (checked against the certificate on verify).
    role: String,
    issued_at_ms: u64,
    expires_at_ms: u64,
    /// The signature scheme, as its TLS code point.
    scheme: u16,
    /// Random: two tokens minted in the same millisecond differ.
    nonce: String,
}

/// Who a valid token signs in, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    pub role: Role,
    pub expires_at_ms: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("this is not a console sign-in token (it should start with `{PREFIX}.`); make one with `scaleout console token`")]
    NotAToken,
    #[error("the token is damaged ({0}); copy it again whole, or make a new one")]
    Malformed(&'static str),
    #[error("the token's certificate is not valid for this cluster: {0}")]
    Certificate(String),
    #[error("the token's signature does not match its certificate: it was altered")]
    Signature,
    #[error("the token expired {ago_secs} s ago; make a new one with `scaleout console token`")]
    Expired { ago_secs: u64 },
    #[error("the token claims the role {claimed}, but its certificate is {actual}")]
    RoleMismatch { claimed: String, actual: String },
    #[error(
        "a {0} certificate cannot sign in to the console: use an operator or admin certificate"
    )]
    NotAPerson(String),
    #[error("a token may be valid for 1 minute to {} hours", MAX_VALIDITY.as_secs() / 3600)]
    Validity,
    #[error("cannot sign with this private key: {0}")]
    Key(String),
}

fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn decode(part: &str, what: &'static str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed(what))
}

/// Mints a token for `identity` (an operator or admin certificate and its key), valid for
/// `valid_for` from `now_ms`.
pub fn issue(
    identity: &TlsIdentity,
    valid_for: Duration,
    now_ms: u64,
) -> Result<String, TokenError> {
    if !(Duration::from_secs(60)..=MAX_VALIDITY).contains(&valid_for) {
        return Err(TokenError::Validity);
    }
    let role = identity.role();
    if !matches!(role, Role::Operator(_) | Role::Admin(_)) {
        return Err(TokenError::NotAPerson(role.to_string()));
    }
    let key = rustls::crypto::ring::sign::any_supported_type(&identity.private_key())
        .map_err(|e| TokenError::Key(e.to_string()))?;
    let signer = key.choose_scheme(&SCHEMES).ok_or_else(|| {
        TokenError::Key(format!(
            "no supported scheme for a {:?} key",
            key.algorithm()
        ))
    })?;
    let cert = identity
        .cert_chain()
        .first()
        .ok_or(TokenError::Key("the identity has no certificate".into()))?;
    let claims = Claims {
        role: role.uri(),
        issued_at_ms: now_ms,
        expires_at_ms: now_ms.saturating_add(valid_for.as_millis() as u64),
        scheme: u16::from(signer.scheme()),
        nonce: uuid::Uuid::new_v4().simple().to_string(),
    };
    let claims = serde_json::to_vec(&claims).map_err(|e| TokenError::Key(e.to_string()))?;
    let signed = format!("{PREFIX}.{}.{}", encode(cert.as_ref()), encode(&claims));
    let signature = signer
        .sign(signed.as_bytes())
        .map_err(|e| TokenError::Key(e.to_string()))?;
    Ok(format!("{signed}.{}", encode(&signature)))
}

/// Checks tokens against the cluster's CA.
pub struct TokenVerifier {
    chain: Arc<dyn ClientCertVerifier>,
}

impl TokenVerifier {
    /// A verifier trusting the CA certificates `ca` (the replica's own).
    pub fn new(ca: &[CertificateDer<'static>]) -> Result<TokenVerifier, crate::tls::TlsError> {
        Ok(TokenVerifier {
            chain: crate::tls::client_verifier(ca)?,
        })
    }

    /// Who `token` signs in at `now_ms`, or why it does not.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<SignedIn, TokenError> {
        let token = token.trim();
        let mut parts = token.split('.');
        if parts.next() != Some(PREFIX) {
            return Err(TokenError::NotAToken);
        }
        let (Some(cert), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("it does not have four parts"));
        };
        let signed = &token[..token.len() - signature.len() - 1];
        let cert = CertificateDer::from(decode(cert, "certificate")?);
        let claims: Claims = serde_json::from_slice(&decode(claims, "claims")?)
            .map_err(|_| TokenError::Malformed("claims"))?;
        let signature = decode(signature, "signature")?;

        self.chain
            .verify_client_cert(
                &cert,
                &[],
                UnixTime::since_unix_epoch(Duration::from_millis(now_ms)),
            )
            .map_err(|e| TokenError::Certificate(e.to_string()))?;
        verify_signature(
            &cert,
            SignatureScheme::from(claims.scheme),
            signed,
            &signature,
        )?;

        let role = crate::tls::role_from_cert(&cert)
            .map_err(|e| TokenError::Certificate(e.to_string()))?;
        if claims.role != role.uri() {
            return Err(TokenError::RoleMismatch {
                claimed: claims.role,
                actual: role.uri(),
            });
        }
        if !matches!(role, Role::Operator(_) | Role::Admin(_)) {
            return Err(TokenError::NotAPerson(role.to_string()));
        }
        if now_ms >= claims.expires_at_ms {
            return Err(TokenError::Expired {
                ago_secs: (now_ms - claims.expires_at_ms) / 1000,
            });
        }
        Ok(SignedIn {
            role,
            expires_at_ms: claims.expires_at_ms,
        })
    }
}

/// Whether `signature` over `message` was made with the key of `cert` under `scheme`.
fn verify_signature(
    cert: &CertificateDer<'_>,
    scheme: SignatureScheme,
    message: &str,
    signature: &[u8],
) -> Result<(), TokenError> {
    if !SCHEMES.contains(&scheme) {
        return Err(TokenError::Signature);
    }
    let end_entity = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| TokenError::Certificate(e.to_string()))?;
    let algorithms = crate::tls::crypto_provider()
        .signature_verification_algorithms
        .mapping
        .iter()
        .find(|(known, _)| *known == scheme)
        .map(|(_, algorithms)| *algorithms)
        .unwrap_or_default();
    algorithms
        .iter()
        .any(|algorithm| {
            end_entity
                .verify_signature(*algorithm, message.as_bytes(), signature)
                .is_ok()
        })
        .then_some(())
        .ok_or(TokenError::Signature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::CertsInit;

    /// A CA with operator, admin, a worker and a replica, and the verifier of that CA.
    fn cluster_certs() -> (tempfile::TempDir, TokenVerifier) {
        let dir = tempfile::tempdir().expect("temp dir");
        let worker = uuid::Uuid::new_v4();
        crate::certs::init(&CertsInit {
            dir: dir.path().to_path_buf(),
            replicas: 1,
            workers: vec![worker],
            hosts: vec!["localhost".into()],
            validity_days: 30,
            operator: "operator".into(),
            admin: "admin".into(),
            force: false,
        })
        .expect("certs");
        let replica = identity(&dir, "replica-1");
        let verifier = TokenVerifier::new(replica.ca_certs()).expect("verifier");
        (dir, verifier)
    }

    fn identity(dir: &tempfile::TempDir, name: &str) -> TlsIdentity {
        let paths = crate::tls::TlsPaths::in_dir(dir.path(), name);
        crate::tls::load_identity(&paths.ca, &paths.cert, &paths.key).expect("identity")
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn an_operator_or_admin_token_signs_in_with_its_role_until_it_expires() {
        crate::tls::install_crypto_provider();
        let (dir, verifier) = cluster_certs();
        let now = crate::wall_time::now_ms();
        for (name, role) in [
            ("admin", Role::Admin("admin".into())),
            ("operator", Role::Operator("operator".into())),
        ] {
            let token = issue(&identity(&dir, name), 8 * HOUR, now).expect("token");
            assert!(token.starts_with("sot1."), "{token}");
            let signed_in = verifier.verify(&token, now + 1000).expect("valid");
            assert_eq!(signed_in.role, role);
            assert_eq!(signed_in.expires_at_ms, now + 8 * 3_600_000);
            assert_eq!(
                verifier.verify(&token, now + 8 * 3_600_000 + 5_000),
                Err(TokenError::Expired { ago_secs: 5 })
            );
        }
    }

    #[test]
    fn altered_foreign_and_non_person_tokens_are_refused() {
        crate::tls::install_crypto_provider();
        let (dir, verifier) = cluster_certs();
        let now = crate::wall_time::now_ms();
        let token = issue(&identity(&dir, "operator"), HOUR, now).expect("token");

        // Claims rewritten to admin, signature kept: the signature no longer matches.
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims: Claims =
            serde_json::from_slice(&decode(parts[2], "claims").expect("b64")).expect("json");
        claims.expires_at_ms += 1;
        let forged = format!(
            "{}.{}.{}.{}",
            parts[0],
            parts[1],
            encode(&serde_json::to_vec(&claims).expect("json")),
            parts[3]
        );
        assert_eq!(verifier.verify(&forged, now), Err(TokenError::Signature));

        // Another cluster's CA: the certificate is not trusted here.
        let (_other_dir, other_verifier) = cluster_certs();
        assert!(matches!(
            other_verifier.verify(&token, now),
            Err(TokenError::Certificate(_))
        ));

        // Worker and replica certificates are not people.
        let worker_name = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .find(|n| n.starts_with("worker-") && !n.ends_with("-key.pem"))
            .expect("a worker certificate")
            .trim_end_matches(".pem")
            .to_string();
        for name in [worker_name.as_str(), "replica-1"] {
            assert!(matches!(
                issue(&identity(&dir, name), HOUR, now),
                Err(TokenError::NotAPerson(_))
            ));
        }

        assert_eq!(verifier.verify("hello", now), Err(TokenError::NotAToken));
        assert_eq!(
            verifier.verify("sot1.a.b", now),
            Err(TokenError::Malformed("it does not have four parts"))
        );
        assert_eq!(
            issue(&identity(&dir, "admin"), MAX_VALIDITY + HOUR, now),
            Err(TokenError::Validity)
        );
    }
}
