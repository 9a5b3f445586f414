//! The peer port serves the other replicas only. Every call there from anyone else is refused
//! the same way before it is routed (PERMISSION_DENIED, ROLE_NOT_ALLOWED), and a call for a
//! service the port does not serve is told where the API is: a client or worker given the peer
//! address by mistake used to get tonic's "Operation is not implemented or not supported: "
//! with nothing after it, or a refusal that depended on which service it happened to name.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::{Code, Status};

use super::authz::{authorize, Permission};
use crate::tls::Role;
use crate::transport::PeerIdentity;

/// What the peer port serves, and the API address to point everyone else to.
#[derive(Clone)]
pub struct PeerPortLayer {
    services: Arc<[&'static str]>,
    api_addr: Arc<str>,
}

impl PeerPortLayer {
    /// `services`: the gRPC service names served on the peer port; `api_addr`: this replica's
    /// API address, as the others dial it.
    pub fn new(services: &[&'static str], api_addr: &str) -> Self {
        PeerPortLayer {
            services: services.into(),
            api_addr: api_addr.into(),
        }
    }

    /// The refusal for a call to `path`, or `None` to serve it.
    fn refusal<B>(&self, request: &http::Request<B>) -> Option<Status> {
        let path = request.uri().path();
        let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
        // Every replication call passes here: a replica (or a plaintext peer) calling a service
        // of the port goes through without an allocation.
        let a_peer = request
            .extensions()
            .get::<PeerIdentity>()
            .is_some_and(|identity| matches!(identity.role, None | Some(Role::Replica(_))));
        if a_peer && self.services.contains(&service) {
            return None;
        }
        let hint = format!(
            "this is a replica's peer port, which only the other replicas call; clients and \
             workers call its API address {}",
            self.api_addr
        );
        // The caller's identity rides in the request's extensions, as the services see it.
        let probe = tonic::Request::from_parts(
            tonic::metadata::MetadataMap::new(),
            request.extensions().clone(),
            (),
        );
        if let Err(refused) = authorize(&probe, path, Permission::Replicate) {
            return Some(Status::with_details(
                refused.code(),
                format!("{}: {hint}", refused.message()),
                refused.details().to_vec().into(),
            ));
        }
        if self.services.contains(&service) {
            None
        } else {
            Some(Status::new(
                Code::Unimplemented,
                format!("{path} is not served here: {hint}"),
            ))
        }
    }
}

impl<S> tower::Layer<S> for PeerPortLayer {
    type Service = PeerPortOnly<S>;

    fn layer(&self, inner: S) -> PeerPortOnly<S> {
        PeerPortOnly {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`PeerPortLayer`] makes.
#[derive(Clone)]
pub struct PeerPortOnly<S> {
    inner: S,
    layer: PeerPortLayer,
}

impl<S, B, RB> tower::Service<http::Request<B>> for PeerPortOnly<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match self.layer.refusal(&request) {
            Some(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
            None => Box::pin(self.inner.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    fn request(path: &str, role: Role) -> http::Request<()> {
        let mut request = http::Request::builder()
            .uri(format!("http://x{path}"))
            .body(())
            .expect("request");
        request.extensions_mut().insert(PeerIdentity {
            remote: None,
            role: Some(role),
        });
        request
    }

    /// The refusal the layer answers `path` with, or `None` when the call was served.
    async fn refusal(path: &str, role: Role) -> Option<Status> {
        let served = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::from("served")))
        });
        let mut service =
            PeerPortLayer::new(&["scaleout.raft.RaftService"], "10.0.0.1:7101").layer(served);
        let response = service
            .ready()
            .await
            .expect("ready")
            .call(request(path, role))
            .await
            .expect("answer");
        let status = Status::from_header_map(response.headers());
        assert_eq!(status.is_none(), response.body() == "served");
        status
    }

    #[tokio::test]
    async fn a_replica_is_served_and_everyone_else_refused_the_same_way_with_the_api_address() {
        let replica = Role::Replica(2);
        let raft = "/scaleout.raft.RaftService/AppendEntries";
        assert!(refusal(raft, replica.clone()).await.is_none());
        let operator = Role::Operator("op".into());
        for path in [raft, "/scaleout.v1.JobService/SubmitJob"] {
            let refused = refusal(path, operator.clone()).await.expect("refused");
            assert_eq!(refused.code(), Code::PermissionDenied, "{path}");
            assert_eq!(
                crate::rpc::Reason::of(&refused),
                Some(crate::rpc::Reason::RoleNotAllowed)
            );
            assert!(refused.message().contains("10.0.0.1:7101"), "{refused:?}");
        }
        // A replica asking for something the port does not serve is told where the API is.
        let refused = refusal("/scaleout.v1.JobService/SubmitJob", replica)
            .await
            .expect("refused");
        assert_eq!(refused.code(), Code::Unimplemented);
        assert!(refused.message().contains("10.0.0.1:7101"), "{refused:?}");
    }
}
