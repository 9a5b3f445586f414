//! The web console's HTTPS server on `console_listen` (`crate::console`): the replica's own
//! certificate, no client certificate asked, people signed in by token. Pages are built from
//! the replica's own API services called in-process with the signed-in role, so the console
//! can do exactly what that role can do through the API, no more, and reads and writes follow
//! the API's rules (linearizable reads, writes forwarded to the leader).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tonic::Request;
use tracing::{debug, info, warn};

use super::admin_service::AdminApi;
use crate::console::pages::{self, Viewer};
use crate::console::session;
use crate::console::token::{SignedIn, TokenVerifier};
use crate::pb::v1::admin_service_server::AdminService;
use crate::pb::v1::ClusterStatusRequest;
use crate::tls::TlsMaterial;
use crate::transport::PeerIdentity;

/// How long a page waits for the API services.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS handshake slower than this is dropped, so one silent client cannot hold the others.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The console server, running; dropping it stops it.
pub struct ConsoleServer {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConsoleServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Console {
    tokens: Arc<TokenVerifier>,
    admin: AdminApi,
}

/// Serves the console on `listener` until `shutdown`.
pub fn serve(
    listener: TcpListener,
    tls: Arc<TlsMaterial>,
    admin: AdminApi,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<ConsoleServer, crate::tls::TlsError> {
    let addr = listener
        .local_addr()
        .map_err(|e| crate::tls::TlsError::Config(e.to_string()))?;
    let console = Console {
        tokens: Arc::new(TokenVerifier::new(tls.identity().ca_certs())?),
        admin,
    };
    let router = Router::new()
        .route("/", get(overview))
        .route("/signin", get(signin_page).post(signin))
        .route("/signout", post(signout))
        .with_state(console);
    let listener = TlsListener { tcp: listener, tls };
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            warn!(%error, "the console stopped");
        }
    });
    info!(%addr, "web console listening (HTTPS)");
    Ok(ConsoleServer { task })
}

/// TCP connections that completed a TLS handshake with the replica's certificate in use now.
struct TlsListener {
    tcp: TcpListener,
    tls: Arc<TlsMaterial>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, remote) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    debug!(%error, "console accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let config = match crate::tls::browser_server_config(&self.tls.identity()) {
                Ok(config) => Arc::new(config),
                Err(error) => {
                    warn!(%error, "the console cannot use the replica's certificate");
                    continue;
                }
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => return (tls, remote),
                Ok(Err(error)) => debug!(%remote, %error, "console TLS handshake failed"),
                Err(_) => debug!(%remote, "console TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// The signed-in session of a request: its token, and who it signs in.
struct Session {
    token: String,
    signed_in: SignedIn,
}

impl Session {
    fn of(console: &Console, headers: &HeaderMap) -> Option<Session> {
        let cookies = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok());
        let token = session::token_in(cookies)?.to_string();
        let signed_in = console
            .tokens
            .verify(&token, crate::wall_time::now_ms())
            .ok()?;
        Some(Session { token, signed_in })
    }

    fn csrf(&self) -> String {
        session::csrf_for(&self.token)
    }

    /// A request to the API services as this session's role; a write on a follower is
    /// forwarded to the leader, as for the CLI.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = crate::rpc::contract::leader_request(message, API_TIMEOUT);
        request.extensions_mut().insert(PeerIdentity {
            remote: None,
            role: Some(self.signed_in.role.clone()),
        });
        request
    }
}

async fn overview(State(console): State<Console>, headers: HeaderMap) -> Response {
    let Some(session) = Session::of(&console, &headers) else {
        return Redirect::to("/signin").into_response();
    };
    let csrf = session.csrf();
    let viewer = Viewer {
        role: &session.signed_in.role,
        csrf: &csrf,
    };
    match console
        .admin
        .cluster_status(session.request(ClusterStatusRequest {}))
        .await
    {
        Ok(status) => Html(pages::overview(&viewer, &status.into_inner())).into_response(),
        Err(status) if status.code() == tonic::Code::PermissionDenied => (
            StatusCode::FORBIDDEN,
            Html(pages::refused(
                &viewer,
                "Seeing the cluster",
                "the operator or admin role",
            )),
        )
            .into_response(),
        Err(status) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Html(pages::unavailable(&viewer, status.message())),
        )
            .into_response(),
    }
}

async fn signin_page() -> Html<String> {
    Html(pages::signin(None))
}

#[derive(Deserialize)]
struct SignInForm {
    token: String,
}

async fn signin(State(console): State<Console>, Form(form): Form<SignInForm>) -> Response {
    let now = crate::wall_time::now_ms();
    match console.tokens.verify(&form.token, now) {
        Ok(signed_in) => {
            info!(role = %signed_in.role, "console sign-in");
            let token = form.token.trim();
            let max_age = signed_in.expires_at_ms.saturating_sub(now) / 1000;
            (
                [(header::SET_COOKIE, session::session_cookie(token, max_age))],
                Redirect::to("/"),
            )
                .into_response()
        }
        Err(error) => {
            info!(%error, "console sign-in refused");
            (
                StatusCode::UNAUTHORIZED,
                Html(pages::signin(Some(&error.to_string()))),
            )
                .into_response()
        }
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn signout(
    State(console): State<Console>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let Some(session) = Session::of(&console, &headers) else {
        return Redirect::to("/signin").into_response();
    };
    if !session::csrf_matches(&session.token, &form.csrf) {
        return csrf_refused();
    }
    (
        [(header::SET_COOKIE, session::cleared_cookie())],
        Redirect::to("/signin"),
    )
        .into_response()
}

/// A form posted without the session's CSRF token: not from the console's own page.
fn csrf_refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        Html(pages::page(
            "Refused",
            None,
            None,
            "<h1>Refused</h1><p class=\"bad\">This form did not come from the console's own page \
             (its CSRF token is missing or wrong). Reload the page and try again.</p>",
        )),
    )
        .into_response()
}
