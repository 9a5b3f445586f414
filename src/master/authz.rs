//! Who may call what, from the role in the caller's verified certificate (see [`crate::tls`]
//! for the encoding):
//!
//! | caller      | api port: JobService, AdminService reads | AdminService changes | WorkerService        | peer port |
//! |-------------|------------------------------------------|----------------------|----------------------|-----------|
//! | operator    | yes                                      | no                   | no                   | no        |
//! | admin       | yes                                      | yes                  | no                   | no        |
//! | worker `W`  | no                                       | no                   | as `W` only          | no        |
//! | replica     | no                                       | no                   | no                   | yes       |
//!
//! On a plaintext (`insecure = true`) replica nobody is authenticated and every call is let
//! through; the replica warns about it every minute.

use std::collections::HashMap;

use tonic::{Code, Request, Status};

use crate::rpc::contract::with_reason;
use crate::rpc::Reason;
use crate::tls::Role;
use crate::transport::PeerIdentity;

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission<'a> {
    /// Submit, read, cancel, cluster status: operators and admins.
    Operate,
    /// Manage workers and membership: admins.
    Administer,
    /// Act as this worker (the agent id the request names): that worker only.
    ActAsWorker(&'a str),
    /// Raft traffic and replica status: replicas.
    Replicate,
}

impl Permission<'_> {
    fn allows(&self, role: &Role) -> bool {
        match (self, role) {
            (Permission::Operate, Role::Operator(_) | Role::Admin(_)) => true,
            (Permission::Administer, Role::Admin(_)) => true,
            (Permission::ActAsWorker(claimed), Role::Worker(id)) => {
                uuid::Uuid::parse_str(claimed.trim()).is_ok_and(|claimed| claimed == *id)
            }
            (Permission::Replicate, Role::Replica(_)) => true,
            _ => false,
        }
    }

    fn needs(&self) -> String {
        match self {
            Permission::Operate => {
                "an operator or admin certificate (scaleout://operator/<name> or scaleout://admin/<name>)".into()
            }
            Permission::Administer => "an admin certificate (scaleout://admin/<name>)".into(),
            Permission::ActAsWorker(claimed) => {
                format!("the certificate of worker {claimed} (scaleout://worker/{claimed})")
            }
            Permission::Replicate => {
                "a replica certificate (scaleout://replica/<id>); clients and workers use the api port".into()
            }
        }
    }
}

/// Lets the call through when the caller's certificate grants `permission` (or the connection
/// is plaintext); otherwise PERMISSION_DENIED / ROLE_NOT_ALLOWED naming the method and what it
/// needs. `method` is `Service.Method`.
pub fn authorize<T>(
    request: &Request<T>,
    method: &str,
    permission: Permission<'_>,
) -> Result<(), Status> {
    let Some(identity) = request.extensions().get::<PeerIdentity>() else {
        // Every connection the replica accepts carries an identity; a request without one did
        // not come through the listeners and is not trusted.
        return Err(Status::unauthenticated(format!(
            "{method}: the connection has no identity"
        )));
    };
    let Some(role) = &identity.role else {
        return Ok(());
    };
    if permission.allows(role) {
        return Ok(());
    }
    let mut metadata = HashMap::new();
    metadata.insert("role".to_string(), role.uri());
    metadata.insert("method".to_string(), method.to_string());
    Err(with_reason(
        Code::PermissionDenied,
        Reason::RoleNotAllowed,
        format!(
            "{method} is not allowed for {} ({}); it needs {}",
            role,
            role.uri(),
            permission.needs()
        ),
        metadata,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_from(role: Option<Role>) -> Request<()> {
        let mut request = Request::new(());
        request
            .extensions_mut()
            .insert(PeerIdentity { remote: None, role });
        request
    }

    #[test]
    fn the_role_table_holds() {
        let w = uuid::Uuid::new_v4();
        let other = uuid::Uuid::new_v4().to_string();
        let own = w.to_string();
        let operator = Role::Operator("ops".into());
        let admin = Role::Admin("root".into());
        let worker = Role::Worker(w);
        let replica = Role::Replica(2);
        let cases: Vec<(&Role, Permission<'_>, bool)> = vec![
            (&operator, Permission::Operate, true),
            (&operator, Permission::Administer, false),
            (&operator, Permission::ActAsWorker(&own), false),
            (&operator, Permission::Replicate, false),
            (&admin, Permission::Operate, true),
            (&admin, Permission::Administer, true),
            (&admin, Permission::ActAsWorker(&own), false),
            (&admin, Permission::Replicate, false),
            (&worker, Permission::Operate, false),
            (&worker, Permission::Administer, false),
            (&worker, Permission::ActAsWorker(&own), true),
            (&worker, Permission::ActAsWorker(&other), false),
            (&worker, Permission::ActAsWorker("not-a-uuid"), false),
            (&worker, Permission::Replicate, false),
            (&replica, Permission::Operate, false),
            (&replica, Permission::Administer, false),
            (&replica, Permission::ActAsWorker(&own), false),
            (&replica, Permission::Replicate, true),
        ];
        for (role, permission, allowed) in cases {
            let result = authorize(&request_from(Some(role.clone())), "Svc.M", permission);
            assert_eq!(result.is_ok(), allowed, "{role} {permission:?}");
            if let Err(status) = result {
                assert_eq!(status.code(), Code::PermissionDenied);
                assert!(status.message().contains("Svc.M"), "{}", status.message());
                assert!(
                    status.message().contains(&role.uri()),
                    "{}",
                    status.message()
                );
            }
        }
    }

    #[test]
    fn plaintext_lets_everything_through_and_no_identity_nothing() {
        for permission in [
            Permission::Operate,
            Permission::Administer,
            Permission::ActAsWorker("x"),
            Permission::Replicate,
        ] {
            assert!(authorize(&request_from(None), "Svc.M", permission).is_ok());
            let status = authorize(&Request::new(()), "Svc.M", permission).unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated);
        }
    }
}
