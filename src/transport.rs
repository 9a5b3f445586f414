//! How every gRPC connection is made and accepted: mutual TLS with the process's certificate,
//! or plaintext when the process is configured `insecure = true`.
//!
//! Outgoing: [`Security::channel`] gives a lazily connecting tonic channel; with TLS each new
//! connection takes the certificate in use at that moment ([`TlsMaterial`] reloads), checks
//! the server's certificate against the CA and the host name dialled, and presents ours.
//! Channels are reused, so the handshake is paid once per connection, not per call.
//!
//! Incoming: [`incoming`] accepts TCP connections and runs TLS handshakes concurrently (a slow
//! or hostile client cannot hold up the others). A connection whose client certificate is
//! missing, from another CA, expired, or without a `scaleout://` role never reaches a service.
//! Each accepted connection carries a [`PeerIdentity`] that the services read to authorize
//! calls (`master::authz`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, warn};

use crate::tls::{role_from_cert, Role, TlsMaterial};

/// A TLS handshake that takes longer than this is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once per listener; more connections wait in the accept queue.
const MAX_CONCURRENT_HANDSHAKES: usize = 256;

/// Accepted connections not yet taken by the server.
const ACCEPTED_BACKLOG: usize = 64;

/// Whether a process talks TLS, and with which certificate.
#[derive(Clone, Debug)]
pub enum Security {
    /// Plaintext and no authentication (`insecure = true`).
    Insecure,
    /// Mutual TLS: every connection authenticated both ways with certificates from one CA.
    MutualTls(Arc<TlsMaterial>),
}

impl Security {
    pub fn is_tls(&self) -> bool {
        matches!(self, Security::MutualTls(_))
    }

    /// A lazily connecting channel to `addr` (`host:port`); `configure` sets the endpoint's
    /// timeouts and keep-alives. The host is what the server's certificate must name.
    pub fn channel(
        &self,
        addr: &str,
        configure: impl FnOnce(Endpoint) -> Endpoint,
    ) -> Result<Channel, tonic::transport::Error> {
        let endpoint = configure(Endpoint::from_shared(format!("http://{addr}"))?);
        Ok(match self {
            Security::Insecure => endpoint.tcp_nodelay(true).connect_lazy(),
            Security::MutualTls(material) => endpoint.connect_with_connector_lazy(TlsConnector {
                material: material.clone(),
            }),
        })
    }
}

/// How often a plaintext process reminds its operator that nothing is authenticated.
pub const INSECURE_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Warns at once and then every minute, for as long as it runs, that `process` (a replica, a
/// worker) talks plaintext without authentication. Also takes SIGHUP, which would otherwise
/// end the process, and says there is nothing to reload.
pub async fn warn_insecure_every_minute(process: &'static str) {
    let mut hangup = crate::hangup::Hangup::listen().ok();
    let mut every = tokio::time::interval(INSECURE_WARNING_INTERVAL);
    loop {
        tokio::select! {
            _ = every.tick() => warn!(
                process,
                "INSECURE: insecure = true, so this {process} talks plaintext without \
                 authentication; anyone who can reach its ports can act as a client, worker or \
                 replica. Use it only on a trusted loopback or test network; set [tls] ca, cert \
                 and key to secure it"
            ),
            () = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            } => warn!(process, "SIGHUP: no certificates to reload (insecure = true)"),
        }
    }
}

/// Dials TCP, then TLS with the certificate in use now.
#[derive(Clone)]
struct TlsConnector {
    material: Arc<TlsMaterial>,
}

impl tower::Service<Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.material.client_config();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "address has no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "address has no port")
            })?;
            let server_name = ServerName::try_from(host.clone()).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "`{host}` is not a host name or IP address a certificate can name: {e}"
                    ),
                )
            })?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(server_name, tcp)
                .await
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        handshake_error_text(&format!("{host}:{port}"), &e),
                    )
                })?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// A handshake failure with what it most likely means.
fn handshake_error_text(peer: &str, error: &io::Error) -> String {
    use rustls::{AlertDescription as Alert, CertificateError as Cert};
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let hint = match tls {
        Some(rustls::Error::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature)) => {
            "the server's certificate is not from the CA in `tls.ca`"
        }
        Some(rustls::Error::InvalidCertificate(
            Cert::NotValidForName | Cert::NotValidForNameContext { .. },
        )) => {
            "the server's certificate does not name this host: dial a name or IP it was issued \
             for, or issue it with this one (`certs init --host`)"
        }
        Some(rustls::Error::InvalidCertificate(Cert::Expired | Cert::ExpiredContext { .. })) => {
            "the server's certificate has expired; it needs a new one"
        }
        Some(rustls::Error::InvalidCertificate(
            Cert::NotValidYet | Cert::NotValidYetContext { .. },
        )) => "the server's certificate is not valid yet: check the clocks",
        Some(rustls::Error::AlertReceived(Alert::UnknownCA | Alert::BadCertificate)) => {
            "the server does not trust our certificate: is `tls.cert` from the server's CA?"
        }
        Some(rustls::Error::AlertReceived(Alert::CertificateExpired)) => {
            "the server says our certificate has expired"
        }
        Some(rustls::Error::AlertReceived(Alert::CertificateRequired)) => {
            "the server requires a client certificate"
        }
        Some(rustls::Error::InvalidMessage(_)) | None => {
            "is the server running with TLS (and not `insecure = true`)?"
        }
        Some(_) => "see the error",
    };
    format!("TLS handshake with {peer} failed: {error} ({hint})")
}

/// What a server-side handshake failure most likely means, for the operator reading the log.
fn refusal_hint(error: &io::Error) -> &'static str {
    use rustls::{AlertDescription as Alert, CertificateError as Cert};
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidMessage(_)) => {
            "the client speaks plaintext or not TLS; it needs TLS with a client certificate \
             (or this replica insecure = true)"
        }
        Some(rustls::Error::NoCertificatesPresented) => {
            "the client sent no certificate; clients, workers and replicas all need one from \
             this CA"
        }
        Some(rustls::Error::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature)) => {
            "the client's certificate is not from this replica's CA (tls.ca)"
        }
        Some(rustls::Error::InvalidCertificate(Cert::Expired | Cert::ExpiredContext { .. })) => {
            "the client's certificate has expired"
        }
        Some(rustls::Error::AlertReceived(Alert::UnknownCA | Alert::BadCertificate)) => {
            "the client does not trust this replica's certificate: is its CA file this \
             replica's tls.ca?"
        }
        Some(rustls::Error::AlertReceived(Alert::CertificateUnknown)) => {
            "the client rejected this replica's certificate (wrong host name?)"
        }
        _ => "see the error",
    }
}

/// Who is on the other end of an accepted connection. Tonic puts it in every request's
/// extensions.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    pub remote: Option<SocketAddr>,
    /// The verified certificate's role; `None` on a plaintext (`insecure`) connection.
    pub role: Option<Role>,
}

/// An accepted connection, plain or TLS.
pub struct ServerIo {
    stream: ServerStream,
    identity: PeerIdentity,
}

enum ServerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Connected for ServerIo {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        self.identity.clone()
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            ServerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            ServerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            ServerStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            ServerStream::Plain(s) => s.is_write_vectored(),
            ServerStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            ServerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            ServerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connections accepted on `listener` (`port` names it in logs), handshaken when
/// `security` is TLS. Accepting stops when the returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    security: Security,
    port: &'static str,
) -> ReceiverStream<io::Result<ServerIo>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_BACKLOG);
    tokio::spawn(accept_loop(listener, security, port, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    security: Security,
    port: &'static str,
    accepted: mpsc::Sender<io::Result<ServerIo>>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    loop {
        let (tcp, remote) = tokio::select! {
            () = accepted.closed() => return,
            result = listener.accept() => match result {
                Ok(connection) => connection,
                Err(error) => {
                    // Out of file descriptors and the like: wait, do not spin or stop serving.
                    warn!(port, %error, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if let Err(error) = tcp.set_nodelay(true) {
            debug!(port, %remote, %error, "cannot set TCP_NODELAY");
        }
        match &security {
            Security::Insecure => {
                let io = ServerIo {
                    stream: ServerStream::Plain(tcp),
                    identity: PeerIdentity {
                        remote: Some(remote),
                        role: None,
                    },
                };
                if accepted.send(Ok(io)).await.is_err() {
                    return;
                }
            }
            Security::MutualTls(material) => {
                let Ok(permit) = handshakes.clone().acquire_owned().await else {
                    return;
                };
                let config = material.server_config();
                let accepted = accepted.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Some(io) = handshake(tcp, remote, config, port).await {
                        let _ = accepted.send(Ok(io)).await;
                    }
                });
            }
        }
    }
}

/// Completes a server-side handshake; `None` (logged) when the client is refused.
async fn handshake(
    tcp: TcpStream,
    remote: SocketAddr,
    config: Arc<rustls::ServerConfig>,
    port: &'static str,
) -> Option<ServerIo> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            let hint = refusal_hint(&error);
            warn!(port, %remote, %error, hint, "TLS handshake refused");
            return None;
        }
        Err(_) => {
            warn!(port, %remote, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
            return None;
        }
    };
    // The verifier has checked the chain; the role is what the certificate may do.
    let role = match stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    {
        Some(cert) => match role_from_cert(cert) {
            Ok(role) => role,
            Err(error) => {
                warn!(port, %remote, %error, "client certificate refused: no usable role");
                return None;
            }
        },
        None => {
            warn!(port, %remote, "client sent no certificate");
            return None;
        }
    };
    debug!(port, %remote, %role, "TLS connection accepted");
    Some(ServerIo {
        stream: ServerStream::Tls(Box::new(stream)),
        identity: PeerIdentity {
            remote: Some(remote),
            role: Some(role),
        },
    })
}
