//! The gRPC health service (`grpc.health.v1.Health`) on the API port, for load balancers and
//! `grpcurl`: it answers what `/readyz` answers at the moment it is asked. (tonic-health's own
//! service answers a status someone set earlier: copied from readiness every half second, a
//! replica just cut off from its peers said SERVING while `/readyz` already said not ready.)

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::ops::Observed;

/// How often a `Watch` stream looks at readiness; it sends only changes.
const WATCH_EVERY: Duration = Duration::from_millis(200);

/// Health of the whole server (the empty name) and of each API service, all the replica's
/// readiness.
pub struct ReadinessHealth {
    observed: Arc<dyn Observed>,
    services: Vec<String>,
    /// Turns true when the replica stops: `Watch` streams end then, so they do not hold up
    /// the server's drain of calls in flight.
    stopping: watch::Receiver<bool>,
}

impl ReadinessHealth {
    /// `services`: the full names of the API services (`scaleout.v1.JobService`, ...).
    pub fn new(
        observed: Arc<dyn Observed>,
        services: &[&str],
        stopping: watch::Receiver<bool>,
    ) -> ReadinessHealth {
        let mut names: Vec<String> = services.iter().map(|s| s.to_string()).collect();
        names.push(String::new());
        ReadinessHealth {
            observed,
            services: names,
            stopping,
        }
    }

    fn knows(&self, service: &str) -> bool {
        self.services.iter().any(|known| known == service)
    }
}

fn serving(observed: &dyn Observed) -> ServingStatus {
    match observed.readiness() {
        Ok(()) => ServingStatus::Serving,
        Err(_) => ServingStatus::NotServing,
    }
}

fn answer(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for ReadinessHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        if !self.knows(&service) {
            return Err(Status::not_found(format!(
                "this replica serves no service {service:?}; ask for \"\" (the whole server) or \
                 one of {:?}",
                &self.services[..self.services.len() - 1]
            )));
        }
        Ok(Response::new(answer(serving(self.observed.as_ref()))))
    }

    type WatchStream = WatchStream;

    /// The status now, then each change, until the caller goes away; an unknown service is
    /// `SERVICE_UNKNOWN` (the protocol's answer for a service that may appear later).
    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let service = request.into_inner().service;
        let observed = self.observed.clone();
        let known = self.knows(&service);
        let changes = futures::stream::unfold(
            (observed, None::<ServingStatus>, self.stopping.clone()),
            move |(observed, last, mut stopping)| async move {
                loop {
                    let now = match known {
                        true => serving(observed.as_ref()),
                        false => ServingStatus::ServiceUnknown,
                    };
                    if last != Some(now) {
                        return Some((Ok(answer(now)), (observed, Some(now), stopping)));
                    }
                    tokio::select! {
                        () = tokio::time::sleep(WATCH_EVERY) => {}
                        _ = stopping.wait_for(|stop| *stop) => return None,
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(changes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::sync::Mutex;

    struct Switch(Mutex<bool>);

    impl Observed for Switch {
        fn metrics_text(&self) -> String {
            String::new()
        }
        fn readiness(&self) -> Result<(), String> {
            match *self.0.lock().unwrap_or_else(|p| p.into_inner()) {
                true => Ok(()),
                false => Err("no leader known".into()),
            }
        }
    }

    fn status_of(reply: Result<Response<HealthCheckResponse>, Status>) -> ServingStatus {
        let status = reply.expect("an answer").into_inner().status;
        ServingStatus::try_from(status).expect("a known status")
    }

    fn asking(service: &str) -> Request<HealthCheckRequest> {
        Request::new(HealthCheckRequest {
            service: service.into(),
        })
    }

    #[tokio::test]
    async fn check_answers_readiness_at_the_moment_it_is_asked() {
        let switch = Arc::new(Switch(Mutex::new(true)));
        let (_stop, stopping) = watch::channel(false);
        let health = ReadinessHealth::new(switch.clone(), &["scaleout.v1.JobService"], stopping);
        assert_eq!(
            status_of(health.check(asking("")).await),
            ServingStatus::Serving
        );
        *switch.0.lock().unwrap() = false;
        for service in ["", "scaleout.v1.JobService"] {
            assert_eq!(
                status_of(health.check(asking(service)).await),
                ServingStatus::NotServing
            );
        }
        let unknown = health
            .check(asking("nope.Service"))
            .await
            .expect_err("unknown");
        assert_eq!(unknown.code(), tonic::Code::NotFound);
        assert!(
            unknown.message().contains("scaleout.v1.JobService"),
            "{unknown:?}"
        );
    }

    #[tokio::test]
    async fn watch_sends_the_status_then_each_change() {
        let switch = Arc::new(Switch(Mutex::new(true)));
        let (stop, stopping) = watch::channel(false);
        let health = ReadinessHealth::new(switch.clone(), &[], stopping);
        let mut stream = health
            .watch(asking(""))
            .await
            .expect("a stream")
            .into_inner();
        let next = |s: Option<Result<HealthCheckResponse, Status>>| {
            ServingStatus::try_from(s.expect("an item").expect("ok").status).expect("known")
        };
        assert_eq!(next(stream.next().await), ServingStatus::Serving);
        *switch.0.lock().unwrap() = false;
        assert_eq!(next(stream.next().await), ServingStatus::NotServing);
        let mut unknown = health
            .watch(asking("x.Y"))
            .await
            .expect("a stream")
            .into_inner();
        assert_eq!(next(unknown.next().await), ServingStatus::ServiceUnknown);
        stop.send(true).expect("watched");
        assert!(
            stream.next().await.is_none(),
            "a stopping replica ends the stream"
        );
    }
}
