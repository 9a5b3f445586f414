//! A tower layer that times every gRPC call by service, method and status code.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use super::Registry;

/// Wraps a gRPC server's services so each call lands in
/// `scaleout_rpc_duration_seconds{service, method, code}`.
#[derive(Clone)]
pub struct GrpcTimingLayer {
    registry: Registry,
}

impl GrpcTimingLayer {
    pub fn new(registry: Registry) -> Self {
        GrpcTimingLayer { registry }
    }
}

impl<S> tower::Layer<S> for GrpcTimingLayer {
    type Service = GrpcTiming<S>;

    fn layer(&self, inner: S) -> GrpcTiming<S> {
        GrpcTiming {
            inner,
            registry: self.registry.clone(),
        }
    }
}

/// The service [`GrpcTimingLayer`] makes.
#[derive(Clone)]
pub struct GrpcTiming<S> {
    inner: S,
    registry: Registry,
}

const DURATION: &str = "scaleout_rpc_duration_seconds";
const DURATION_HELP: &str = "gRPC calls served, by service, method and status code: time from \
                             the request to the response headers.";

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcTiming<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = split_path(request.uri().path());
        let registry = self.registry.clone();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            let code = match &result {
                Ok(response) => status_code(response.headers()),
                Err(_) => tonic::Code::Internal,
            };
            // An unknown path is answered Unimplemented; its name is the caller's to choose, so
            // it is not a label (that would let any client grow the metric without bound).
            let (service, method) = if code == tonic::Code::Unimplemented {
                ("unknown".to_string(), "unknown".to_string())
            } else {
                (service, method)
            };
            registry
                .histogram(
                    DURATION,
                    DURATION_HELP,
                    &[
                        ("service", &service),
                        ("method", &method),
                        ("code", &format!("{code:?}")),
                    ],
                )
                .record(started.elapsed().as_secs_f64());
            result
        })
    }
}

/// `/scaleout.v1.JobService/SubmitJob` → (`scaleout.v1.JobService`, `SubmitJob`).
fn split_path(path: &str) -> (String, String) {
    let trimmed = path.trim_start_matches('/');
    match trimmed.split_once('/') {
        Some((service, method)) => (service.to_string(), method.to_string()),
        None => (trimmed.to_string(), String::new()),
    }
}

/// The status of a call that failed before its body (a "trailers-only" response carries it in
/// the headers); a call whose headers have none succeeded or reports in its trailers.
fn status_code(headers: &http::HeaderMap) -> tonic::Code {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    fn respond(
        status: Option<&'static str>,
    ) -> impl tower::Service<
        http::Request<()>,
        Response = http::Response<()>,
        Error = std::convert::Infallible,
        Future = std::future::Ready<Result<http::Response<()>, std::convert::Infallible>>,
    > + Clone {
        tower::service_fn(move |_request: http::Request<()>| {
            let mut response = http::Response::new(());
            if let Some(status) = status {
                response
                    .headers_mut()
                    .insert("grpc-status", http::HeaderValue::from_static(status));
            }
            std::future::ready(Ok(response))
        })
    }

    async fn call(
        service: &mut impl Service<http::Request<()>, Error = std::convert::Infallible>,
        path: &str,
    ) {
        let request = http::Request::builder().uri(path).body(()).unwrap();
        service.ready().await.unwrap().call(request).await.unwrap();
    }

    #[tokio::test]
    async fn calls_are_timed_by_service_method_and_code() {
        let registry = Registry::new();
        let layer = GrpcTimingLayer::new(registry.clone());
        let mut ok = layer.layer(respond(None));
        let mut not_found = layer.layer(respond(Some("5")));
        let mut unimplemented = layer.layer(respond(Some("12")));
        call(&mut ok, "/scaleout.v1.JobService/SubmitJob").await;
        call(&mut ok, "/scaleout.v1.JobService/SubmitJob").await;
        call(&mut not_found, "/scaleout.v1.JobService/GetJob").await;
        call(&mut unimplemented, "/made.up/Anything").await;
        let text = registry.render();
        assert!(
            text.contains(
                "scaleout_rpc_duration_seconds_count{service=\"scaleout.v1.JobService\",method=\"SubmitJob\",code=\"Ok\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("method=\"GetJob\",code=\"NotFound\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("service=\"unknown\",method=\"unknown\",code=\"Unimplemented\"} 1"),
            "{text}"
        );
        assert!(!text.contains("made.up"), "{text}");
    }

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/scaleout.v1.JobService/SubmitJob"),
            ("scaleout.v1.JobService".into(), "SubmitJob".into())
        );
        assert_eq!(split_path("/odd"), ("odd".into(), String::new()));
    }
}
