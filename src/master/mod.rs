//! The replica process: storage, the Raft node, the two listeners and the services on them.
//!
//! A replica listens on two addresses, like etcd: `api` for clients and workers (JobService,
//! AdminService) and `peer` for Raft traffic between replicas. Any replica answers; a follower
//! redirects writes and linearizable reads to the leader (see [`crate::rpc::contract::not_leader`]),
//! or forwards a write to it over the peer network when its caller asks (`forward.rs`).
//!
//! Start-up order: open the data dir, start the Raft node, bind both listeners, then bootstrap:
//! a pristine replica of a pristine cluster initializes it with the static member list (the
//! same on every replica, so the first membership entry is identical everywhere); a replica
//! with state on disk never initializes again.

mod admin_service;
pub mod authz;
mod bootstrap;
mod check_quorum;
pub mod clock;
mod console;
mod forward;
mod handover;
mod health;
mod history;
mod job_service;
mod leader;
mod leader_hint;
mod membership;
mod observe;
mod peer_port;
mod proposer;
mod reads;
mod replica;
mod sightings;
mod worker_service;

pub use bootstrap::BootstrapError;
pub use proposer::{ProposeError, Proposer};
pub use replica::{run, MasterError};
