//! The web console's HTTPS server on `console_listen` (`crate::console`): the replica's own
//! certificate, no client certificate asked, people signed in by token. Pages are built from
//! the replica's own API services called in-process with the signed-in role, so the console
//! can do exactly what that role can do through the API, no more, and reads and writes follow
//! the API's rules (linearizable reads, writes forwarded to the leader).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
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
use super::history::RecentHistory;
use super::job_service::JobApi;
use super::reads::ReadAnywhere;
use crate::console::pages::{self, Viewer};
use crate::console::session;
use crate::console::token::{SignedIn, TokenVerifier};
use crate::pb::v1::admin_service_server::AdminService;
use crate::pb::v1::job_service_server::JobService;
use crate::pb::v1::{
    AddReplicaRequest, CancelJobRequest, ClusterStatusRequest, GetJobLogsRequest, GetJobRequest,
    JobSpec, ListJobsRequest, ListWorkersRequest, RemoveReplicaRequest, RemoveWorkerRequest,
    SetWorkerStateRequest, SubmitJobRequest, TransferLeaderRequest, WorkerAction,
};
use crate::queue::JobState;
use crate::rpc::contract::Reason;
use crate::tls::TlsMaterial;
use crate::transport::PeerIdentity;

/// How long a page waits for the API services.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS handshake slower than this is dropped, so one silent client cannot hold the others.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The console server, running; dropping it stops it.
pub struct ConsoleServer {
    tasks: [tokio::task::JoinHandle<()>; 3],
}

/// What the console's pages are built from.
pub struct Services {
    pub admin: AdminApi,
    pub jobs: JobApi,
    /// The replica's recent history (the overview's charts), and the task that keeps it.
    pub history: RecentHistory,
    pub sampler: tokio::task::JoinHandle<()>,
}

impl Drop for ConsoleServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[derive(Clone)]
struct Console {
    tokens: Arc<TokenVerifier>,
    admin: AdminApi,
    jobs: JobApi,
    history: RecentHistory,
}

/// Serves the console on `listener` until `shutdown`.
pub fn serve(
    listener: TcpListener,
    tls: Arc<TlsMaterial>,
    services: Services,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<ConsoleServer, crate::tls::TlsError> {
    let addr = listener
        .local_addr()
        .map_err(|e| crate::tls::TlsError::Config(e.to_string()))?;
    let console = Console {
        tokens: Arc::new(TokenVerifier::new(tls.identity().ca_certs())?),
        admin: services.admin,
        jobs: services.jobs,
        history: services.history,
    };
    let router = Router::new()
        .route("/", get(overview))
        .route("/signin", get(signin_page).post(signin))
        .route("/signout", post(signout))
        .route("/jobs", get(jobs_page).post(submit))
        .route("/jobs/{id}", get(job_page))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/workers", get(workers_page))
        .route("/workers/{id}/{action}", post(worker_action))
        .route("/cluster", get(cluster_page).post(add_replica))
        .route("/cluster/{id}/{action}", post(member_action))
        .route("/static/console.css", get(stylesheet))
        .route("/static/console.js", get(script))
        .layer(axum::middleware::map_response(guarded))
        .with_state(console);
    let (handshaken, accepted) = tokio::sync::mpsc::channel(64);
    let handshakes = tokio::spawn(handshake_each(listener, tls, handshaken));
    let listener = TlsListener { accepted, addr };
    let server = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            warn!(%error, "the console stopped");
        }
    });
    info!(%addr, "web console listening (HTTPS)");
    Ok(ConsoleServer {
        tasks: [handshakes, server, services.sampler],
    })
}

/// The console's address for people and the other replicas' pages: the address it is bound
/// to, or, bound to every interface, that port on the host of the replica's API address as
/// the members know it.
pub fn url_for(bound: SocketAddr, advertised_api: &str) -> String {
    if !bound.ip().is_unspecified() {
        return format!("https://{bound}");
    }
    let host = advertised_api
        .rsplit_once(':')
        .map_or(advertised_api, |(host, _)| host);
    format!("https://{host}:{}", bound.port())
}

/// Accepts TCP connections and makes each TLS handshake in a task of its own (a client that
/// never finishes one holds up nobody), with the replica's certificate in use at that moment.
async fn handshake_each(
    listener: TcpListener,
    tls: Arc<TlsMaterial>,
    handshaken: tokio::sync::mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                debug!(%error, "console accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let config = tls.browser_server_config();
        let handshaken = handshaken.clone();
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = handshaken.send((tls, remote)).await;
                }
                Ok(Err(error)) => debug!(%remote, %error, "console TLS handshake failed"),
                Err(_) => debug!(%remote, "console TLS handshake timed out"),
            }
        });
    }
}

/// The connections whose TLS handshake is done, for axum.
struct TlsListener {
    accepted: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The handshake task ended (the console is stopping): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// The signed-in session of a request: its token, and who it signs in.
struct Session {
    token: String,
    signed_in: SignedIn,
    /// The CSRF token of the session's forms.
    csrf: String,
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
        let csrf = session::csrf_for(&token);
        Some(Session {
            token,
            signed_in,
            csrf,
        })
    }

    /// Who the pages say is signed in, with the CSRF token for their forms.
    fn viewer(&self) -> Viewer<'_> {
        Viewer {
            role: &self.signed_in.role,
            csrf: &self.csrf,
        }
    }

    /// A request to the API services as this session's role; a write on a follower is
    /// forwarded to the leader, as for the CLI.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = crate::rpc::contract::leader_request(message, API_TIMEOUT);
        request.extensions_mut().insert(PeerIdentity {
            remote: None,
            role: Some(self.signed_in.role.clone()),
        });
        // The page is served here: a follower answers linearizable reads itself.
        request.extensions_mut().insert(ReadAnywhere);
        request
    }
}

/// `$service.$method` as a linearizable read (on a follower through the leader's read index),
/// or, when that cannot be confirmed now (an election, no majority), as a read of this
/// replica's own state; and, then, why. `$stale` names the flag in `$request`.
macro_rules! read {
    ($session:expr, $service:expr, $method:ident, |$stale:ident| $request:expr) => {{
        let first = {
            let $stale = false;
            $service.$method($session.request($request)).await
        };
        match first {
            Err(status) if status.code() == tonic::Code::Unavailable => {
                let $stale = true;
                let reply = $service.$method($session.request($request)).await;
                (reply, Some(status.message().to_string()))
            }
            other => (other, None),
        }
    }};
}

/// `html`, with a notice when it was read from this replica's own state, and why.
fn noticed(html: String, unconfirmed: Option<String>) -> Html<String> {
    match unconfirmed {
        Some(why) => Html(pages::with_notice(
            html,
            &format!(
                "Read from this replica's own state, which may be behind the leader: a current \
                 read could not be confirmed ({why})."
            ),
        )),
        None => Html(html),
    }
}

/// The request's session, or (from the handler) the answer that sends the browser to sign in;
/// with a form's CSRF token, also checked, or the refusal of a form that is not the console's.
macro_rules! signed_in {
    ($console:expr, $headers:expr) => {
        match Session::of(&$console, &$headers) {
            Some(session) => session,
            None => return Redirect::to("/signin").into_response(),
        }
    };
    ($console:expr, $headers:expr, $csrf:expr) => {{
        let session = signed_in!($console, $headers);
        if !session::csrf_matches(&session.token, &$csrf) {
            return csrf_refused();
        }
        session
    }};
}

async fn overview(State(console): State<Console>, headers: HeaderMap) -> Response {
    let session = signed_in!(console, headers);
    let viewer = session.viewer();
    match console
        .admin
        .cluster_status(session.request(ClusterStatusRequest {}))
        .await
    {
        Ok(status) => {
            // As the rest of the overview: this replica's own state, as far as it has applied.
            let workers = console
                .admin
                .list_workers(session.request(ListWorkersRequest { stale: true }))
                .await
                .ok()
                .map(|reply| reply.into_inner().workers);
            Html(pages::overview(
                &viewer,
                &status.into_inner(),
                workers.as_deref(),
                &console.history.last_hour(),
            ))
            .into_response()
        }
        // A cluster that does not answer gets a page that tries again by itself.
        Err(status) if status.code() == tonic::Code::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            Html(pages::unavailable(&viewer, status.message())),
        )
            .into_response(),
        Err(status) => failure(&viewer, "Seeing the cluster", OPERATE, status),
    }
}

/// Every answer: not framed by another site, no inline script or style, nothing cached that a
/// session showed (the static files may be).
async fn guarded(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let fixed = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    for (name, value) in fixed {
        headers.insert(name, header::HeaderValue::from_static(value));
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
    }
    response
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        pages::STYLESHEET,
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        pages::SCRIPT,
    )
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
    let _session = signed_in!(console, headers, form.csrf);
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

/// A request turned down before or by the cluster, with `code` and the reason.
fn rejected(code: StatusCode, viewer: &Viewer<'_>, what: &str, reason: &str) -> Response {
    (code, Html(pages::rejected(viewer, what, reason))).into_response()
}

/// The page for a call the API refused or could not serve; `needs`: the role the action needs.
fn failure(viewer: &Viewer<'_>, what: &str, needs: &str, status: tonic::Status) -> Response {
    use tonic::Code;
    let (code, html) = match status.code() {
        Code::PermissionDenied => (StatusCode::FORBIDDEN, pages::refused(viewer, what, needs)),
        Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists => (
            StatusCode::BAD_REQUEST,
            pages::rejected(viewer, what, status.message()),
        ),
        Code::NotFound => (
            StatusCode::NOT_FOUND,
            pages::rejected(viewer, what, status.message()),
        ),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            pages::rejected(
                viewer,
                what,
                &format!("the cluster did not answer: {}", status.message()),
            ),
        ),
    };
    (code, Html(html)).into_response()
}

const OPERATE: &str = "the operator or admin role";
const ADMINISTER: &str = "the admin role";

#[derive(Deserialize)]
struct JobsQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    after: u64,
    #[serde(flatten)]
    filter: pages::JobsFilter,
}

async fn jobs_page(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(query): Query<JobsQuery>,
) -> Response {
    let session = signed_in!(console, headers);
    let viewer = session.viewer();
    let state = match query.state.as_str() {
        "" => None,
        name => match JobState::ALL.into_iter().find(|s| s.as_str() == name) {
            Some(state) => Some(state),
            None => {
                return rejected(
                    StatusCode::BAD_REQUEST,
                    &viewer,
                    "Listing jobs",
                    &format!("there is no job state {name:?}"),
                )
            }
        },
    };
    let filter = &query.filter;
    let (reply, unconfirmed) = read!(session, console.jobs, list_jobs, |stale| ListJobsRequest {
        state: state.map_or(0, |s| crate::pb::v1::JobState::from(s) as i32),
        after_id: query.after,
        limit: 50,
        stale,
        name_contains: filter.name.clone(),
        tag: filter.tag.clone(),
        worker: filter.worker.clone(),
    });
    match reply {
        Ok(reply) => {
            let reply = reply.into_inner();
            let html = pages::jobs(&viewer, &reply.jobs, state, filter, reply.next_after_id);
            noticed(html, unconfirmed).into_response()
        }
        Err(status) => failure(&viewer, "Listing jobs", OPERATE, status),
    }
}

#[derive(Deserialize)]
struct SubmitForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    argv: String,
    #[serde(default)]
    package: String,
    #[serde(default)]
    params: String,
    #[serde(default)]
    max_attempts: String,
    #[serde(default)]
    priority: String,
    #[serde(default)]
    timeout_secs: String,
    #[serde(default)]
    tags: String,
    #[serde(default)]
    workers: String,
}

impl SubmitForm {
    /// The job spec the form describes, or what is wrong with it.
    fn spec(&self) -> Result<JobSpec, String> {
        fn number<T: std::str::FromStr>(text: &str, field: &str, default: T) -> Result<T, String> {
            match text.trim() {
                "" => Ok(default),
                text => text
                    .parse()
                    .map_err(|_| format!("{field}: {text:?} is not a number")),
            }
        }
        let list = |text: &str| -> Vec<String> {
            text.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(String::from)
                .collect()
        };
        let mut params = std::collections::HashMap::new();
        for line in self.params.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (name, value) = line
                .split_once('=')
                .ok_or_else(|| format!("parameter {line:?} is not NAME=VALUE"))?;
            params.insert(name.trim().to_string(), value.to_string());
        }
        let spec = JobSpec {
            argv: self
                .argv
                .lines()
                .map(|line| line.trim_end_matches('\r'))
                .filter(|line| !line.trim().is_empty())
                .map(String::from)
                .collect(),
            name: self.name.trim().to_string(),
            package: self.package.trim().to_string(),
            params,
            max_attempts: number(&self.max_attempts, "attempts", 1)?,
            priority: number(&self.priority, "priority", 0)?,
            timeout_secs: number(&self.timeout_secs, "timeout", 0)?,
            tags: list(&self.tags),
            allowed_workers: list(&self.workers),
            ..JobSpec::default()
        };
        // The replica's own checks, so the form says what is wrong before anything is sent.
        crate::pb::spec_from_pb(spec.clone())
            .and_then(|domain| domain.validate())
            .map_err(|e| e.to_string())?;
        Ok(spec)
    }
}

async fn submit(
    State(console): State<Console>,
    headers: HeaderMap,
    Form(form): Form<SubmitForm>,
) -> Response {
    let session = signed_in!(console, headers, form.csrf);
    let viewer = session.viewer();
    let spec = match form.spec() {
        Ok(spec) => spec,
        Err(reason) => {
            return rejected(
                StatusCode::BAD_REQUEST,
                &viewer,
                "Submitting a job",
                &reason,
            )
        }
    };
    let request = SubmitJobRequest {
        spec: Some(spec),
        idempotency_key: format!("console-{}", uuid::Uuid::new_v4()),
    };
    match console.jobs.submit_job(session.request(request)).await {
        Ok(reply) => {
            let id = reply.into_inner().job_id;
            info!(job_id = id, role = %session.signed_in.role, "job submitted from the console");
            Redirect::to(&format!("/jobs/{id}")).into_response()
        }
        Err(status) => failure(&viewer, "Submitting a job", OPERATE, status),
    }
}

async fn job_page(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    let session = signed_in!(console, headers);
    let viewer = session.viewer();
    let what = format!("Job {id}");
    let (reply, unconfirmed) = read!(session, console.jobs, get_job, |stale| GetJobRequest {
        job_id: id,
        stale,
    });
    let job = match reply {
        Ok(reply) => match reply.into_inner().job {
            Some(job) => job,
            None => return failure(&viewer, &what, OPERATE, tonic::Status::not_found("no job")),
        },
        Err(status) => return failure(&viewer, &what, OPERATE, status),
    };
    let logs = console
        .jobs
        .get_job_logs(session.request(GetJobLogsRequest {
            job_id: id,
            after_sequence: 0,
            limit: pages::LOG_LINES_SHOWN,
            stale: unconfirmed.is_some(),
            tail: true,
        }))
        .await
        .map(|reply| reply.into_inner().lines)
        .unwrap_or_default();
    let html = pages::job(&viewer, &job, &logs, crate::wall_time::now_ms());
    noticed(html, unconfirmed).into_response()
}

async fn cancel(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = signed_in!(console, headers, form.csrf);
    let viewer = session.viewer();
    match console
        .jobs
        .cancel_job(session.request(CancelJobRequest { job_id: id }))
        .await
    {
        Ok(_) => {
            info!(job_id = id, role = %session.signed_in.role, "job cancelled from the console");
            Redirect::to(&format!("/jobs/{id}")).into_response()
        }
        Err(status) => failure(&viewer, &format!("Cancelling job {id}"), OPERATE, status),
    }
}

async fn workers_page(State(console): State<Console>, headers: HeaderMap) -> Response {
    let session = signed_in!(console, headers);
    let viewer = session.viewer();
    let (reply, unconfirmed) = read!(session, console.admin, list_workers, |stale| {
        ListWorkersRequest { stale }
    });
    match reply {
        Ok(reply) => {
            let now = crate::wall_time::now_ms();
            let html = pages::workers(&viewer, &reply.into_inner().workers, now);
            noticed(html, unconfirmed).into_response()
        }
        Err(status) => failure(&viewer, "Listing workers", OPERATE, status),
    }
}

async fn worker_action(
    State(console): State<Console>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = signed_in!(console, headers, form.csrf);
    let viewer = session.viewer();
    let (what, outcome) = match action.as_str() {
        "enable" | "disable" | "drain" => {
            let (what, act) = match action.as_str() {
                "enable" => ("Enabling a worker", WorkerAction::Enable),
                "disable" => ("Disabling a worker", WorkerAction::Disable),
                _ => ("Draining a worker", WorkerAction::Drain),
            };
            let request = SetWorkerStateRequest {
                worker_id: id.clone(),
                action: act as i32,
            };
            (
                what,
                console
                    .admin
                    .set_worker_state(session.request(request))
                    .await
                    .map(|_| ()),
            )
        }
        "remove" => (
            "Removing a worker",
            console
                .admin
                .remove_worker(session.request(RemoveWorkerRequest {
                    worker_id: id.clone(),
                }))
                .await
                .map(|_| ()),
        ),
        other => {
            return rejected(
                StatusCode::NOT_FOUND,
                &viewer,
                "A worker action",
                &format!("there is no worker action {other:?} (enable, disable, drain, remove)"),
            )
        }
    };
    match outcome {
        Ok(()) => {
            info!(worker = %id, action = %action, role = %session.signed_in.role, "worker changed from the console");
            Redirect::to("/workers").into_response()
        }
        Err(status) => failure(&viewer, what, ADMINISTER, status),
    }
}

async fn cluster_page(State(console): State<Console>, headers: HeaderMap) -> Response {
    let session = signed_in!(console, headers);
    let viewer = session.viewer();
    match console
        .admin
        .cluster_status(session.request(ClusterStatusRequest {}))
        .await
    {
        Ok(status) => Html(pages::cluster(&viewer, &status.into_inner())).into_response(),
        Err(status) => failure(&viewer, "Seeing the cluster", OPERATE, status),
    }
}

#[derive(Deserialize)]
struct AddReplicaForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    api_addr: String,
    #[serde(default)]
    peer_addr: String,
    #[serde(default)]
    catch_up_secs: String,
}

impl AddReplicaForm {
    /// The request the form describes, or what is wrong with it.
    fn request(&self) -> Result<AddReplicaRequest, String> {
        let id: u64 = self
            .id
            .trim()
            .parse()
            .map_err(|_| format!("id: {:?} is not a replica id (a number)", self.id.trim()))?;
        let address = |text: &str, field: &str| -> Result<String, String> {
            let text = text.trim();
            match text.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    Ok(text.to_string())
                }
                _ => Err(format!("{field}: {text:?} is not host:port")),
            }
        };
        let catch_up_secs: u32 = match self.catch_up_secs.trim() {
            "" => 60,
            text => text
                .parse()
                .ok()
                .filter(|secs| (1..=3600).contains(secs))
                .ok_or_else(|| format!("catch-up limit: {text:?} is not 1 to 3600 seconds"))?,
        };
        Ok(AddReplicaRequest {
            id,
            api_addr: address(&self.api_addr, "API address")?,
            peer_addr: address(&self.peer_addr, "peer address")?,
            catch_up_timeout_ms: catch_up_secs * 1000,
        })
    }
}

async fn add_replica(
    State(console): State<Console>,
    headers: HeaderMap,
    Form(form): Form<AddReplicaForm>,
) -> Response {
    let session = signed_in!(console, headers, form.csrf);
    let viewer = session.viewer();
    let what = "Adding a replica";
    let request = match form.request() {
        Ok(request) => request,
        Err(reason) => return rejected(StatusCode::BAD_REQUEST, &viewer, what, &reason),
    };
    let id = request.id;
    match console.admin.add_replica(session.request(request)).await {
        Ok(_) => {
            info!(replica = id, role = %session.signed_in.role, "replica added from the console");
            Redirect::to("/cluster").into_response()
        }
        Err(status) => membership_failure(&console, &session, what, status).await,
    }
}

async fn member_action(
    State(console): State<Console>,
    headers: HeaderMap,
    Path((id, action)): Path<(u64, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = signed_in!(console, headers, form.csrf);
    let viewer = session.viewer();
    let (what, outcome) = match action.as_str() {
        "remove" => (
            "Removing a replica",
            console
                .admin
                .remove_replica(session.request(RemoveReplicaRequest { id }))
                .await
                .map(|_| ()),
        ),
        "lead" => (
            "Handing leadership over",
            console
                .admin
                .transfer_leader(session.request(TransferLeaderRequest { to: Some(id) }))
                .await
                .map(|_| ()),
        ),
        other => {
            return rejected(
                StatusCode::NOT_FOUND,
                &viewer,
                "A cluster action",
                &format!("there is no cluster action {other:?} (remove, lead)"),
            )
        }
    };
    match outcome {
        Ok(()) => {
            info!(replica = id, action = %action, role = %session.signed_in.role, "cluster changed from the console");
            Redirect::to("/cluster").into_response()
        }
        Err(status) => membership_failure(&console, &session, what, status).await,
    }
}

/// The page for a membership change that failed: on a replica that does not lead, where the
/// leader's console is (membership changes are not forwarded); otherwise as any refusal.
async fn membership_failure(
    console: &Console,
    session: &Session,
    what: &str,
    status: tonic::Status,
) -> Response {
    let viewer = session.viewer();
    if Reason::of(&status) != Some(Reason::NotLeader) {
        return failure(&viewer, what, ADMINISTER, status);
    }
    let leader_console = console
        .admin
        .cluster_status(session.request(ClusterStatusRequest {}))
        .await
        .ok()
        .map(|reply| reply.into_inner())
        .and_then(|cluster| {
            let leader = cluster.leader_id?;
            cluster
                .replicas
                .into_iter()
                .find(|r| r.id == leader && !r.console_url.is_empty())
                .map(|r| r.console_url)
        });
    (
        StatusCode::CONFLICT,
        Html(pages::not_leader(&viewer, what, leader_console.as_deref())),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_query_with_paging_and_filters_is_understood() {
        let uri: axum::http::Uri = "/jobs?state=queued&name=sales%20load&tag=&worker=etl-1&after=7"
            .parse()
            .expect("uri");
        let Query(query) = Query::<JobsQuery>::try_from_uri(&uri).expect("the next page's link");
        assert_eq!(
            (
                query.state.as_str(),
                query.after,
                query.filter.name.as_str()
            ),
            ("queued", 7, "sales load")
        );
        assert_eq!(query.filter.worker, "etl-1");
        let bare: axum::http::Uri = "/jobs".parse().expect("uri");
        assert!(Query::<JobsQuery>::try_from_uri(&bare).is_ok());
    }

    #[test]
    fn a_console_bound_everywhere_is_named_by_the_api_host() {
        let everywhere: SocketAddr = "0.0.0.0:7443".parse().expect("address");
        assert_eq!(
            url_for(everywhere, "etl-master-2.corp.example:7100"),
            "https://etl-master-2.corp.example:7443"
        );
        let v6: SocketAddr = "[::]:7443".parse().expect("address");
        assert_eq!(url_for(v6, "[fd00::2]:7100"), "https://[fd00::2]:7443");
        let one: SocketAddr = "127.0.0.1:7301".parse().expect("address");
        assert_eq!(url_for(one, "ignored:1"), "https://127.0.0.1:7301");
    }
}
