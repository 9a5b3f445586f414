//! SSISDB: where the outbox goes (invariant 5 of DESIGN.md).
//!
//! Only the masters talk to SSISDB; workers hold no database credentials. The Raft leader ships
//! the replicated outbox (`queue::outbox`, see [`crate::queue::OutboxEvent`]) in batches, each in one SQL transaction that
//! upserts the rows the events name and inserts the events idempotently by event id, then
//! proposes the new shipped cursor. A batch written twice (the leader died between the commit in
//! SQL and the cursor's commit in Raft) lands once, so every event is in SSISDB exactly once.
//!
//! - [`mod@connect`]: the connection: ADO string, password, TLS trust, MultiSubnetFailover-style
//!   racing of every listener address, and [`SsisdbError`].
//! - [`schema`]: the `scaleout` schema script, `install-schema` and `check`.
//! - [`shipper`]: the leader's shipping duty (started by the leader loop for each term of
//!   office); `rows.rs`: the rows a batch writes, fenced by the term; `heartbeat.rs`: every
//!   replica's own row.
//! - [`intake`]: jobs submitted from T-SQL (`EXEC scaleout.submit_job`), read and submitted by
//!   the leader.

pub mod connect;
mod heartbeat;
pub mod intake;
mod rows;
pub mod schema;
pub mod shipper;
mod sql;
mod upsert;

pub use connect::{connect, SqlClient, SsisdbError};
pub use heartbeat::heartbeat;
pub use rows::{write_events, Fence};
pub use schema::{check, install_schema, CheckItem, CheckReport, SCHEMA_VERSION};
pub use shipper::{Committer, ShipperStatus, Shipping};
