//! The plain-HTTP operations endpoint: `/metrics`, `/healthz`, `/readyz`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// What the endpoint reports on: a replica or a worker.
pub trait Observed: Send + Sync + 'static {
    /// Every metric in the Prometheus text format, sampled now.
    fn metrics_text(&self) -> String;
    /// `Ok` when ready to serve; otherwise why not, in one line.
    fn readiness(&self) -> Result<(), String>;
}

/// How often histogram samples are folded into buckets when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The endpoint, running.
pub struct OpsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl OpsServer {
    /// The address it is bound to (with the port chosen when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for OpsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `observed` on `listener` until `shutdown` resolves (or the server is dropped), and
/// keeps `registry`'s histograms folded.
pub fn serve(
    listener: TcpListener,
    observed: Arc<dyn Observed>,
    registry: super::Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<OpsServer> {
    let addr = listener.local_addr()?;
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(observed);
    let task = tokio::spawn(async move {
        let upkeep = async {
            let mut every = tokio::time::interval(UPKEEP_EVERY);
            loop {
                every.tick().await;
                registry.run_upkeep();
            }
        };
        let served = axum::serve(listener, router).with_graceful_shutdown(shutdown);
        tokio::select! {
            result = served => {
                if let Err(error) = result {
                    warn!(%error, "the metrics endpoint stopped");
                }
            }
            () = upkeep => {}
        }
    });
    info!(metrics = %addr, "serving /metrics, /healthz and /readyz");
    Ok(OpsServer { addr, task })
}

async fn metrics(State(observed): State<Arc<dyn Observed>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        observed.metrics_text(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(observed): State<Arc<dyn Observed>>) -> (StatusCode, String) {
    match observed.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Fake {
        ready: AtomicBool,
    }

    impl Observed for Fake {
        fn metrics_text(&self) -> String {
            "scaleout_test 1\n".into()
        }
        fn readiness(&self) -> Result<(), String> {
            if self.ready.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("no leader known".into())
            }
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn health_readiness_and_metrics_answer() {
        let fake = Arc::new(Fake {
            ready: AtomicBool::new(false),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = serve(
            listener,
            fake.clone(),
            super::super::Registry::new(),
            std::future::pending(),
        )
        .unwrap();
        let addr = server.local_addr();

        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let not_ready = get(addr, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert!(
            not_ready.contains("not ready: no leader known"),
            "{not_ready}"
        );
        fake.ready.store(true, Ordering::Relaxed);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.contains("text/plain; version=0.0.4"), "{metrics}");
        assert!(metrics.contains("scaleout_test 1"), "{metrics}");
        assert!(get(addr, "/nothing").await.starts_with("HTTP/1.1 404"));
    }
}
