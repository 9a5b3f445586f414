//! Every replica's heartbeat row in `scaleout.replicas` (leader or not), like the SSIS Scale
//! Out Master's: its addresses, role, term and leader, every [`HEARTBEAT_EVERY`].

use std::time::Duration;

use tracing::{info, warn};

use super::connect::{connect_target, target, SqlClient};
use super::sql::{big, clip, simple};
use super::upsert::Lit;
use crate::config::SsisdbSettings;
use crate::raft::Raft;
use crate::rpc::jitter;
use crate::wall_time::now_ms;

/// How often each replica writes its row in scaleout.replicas.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// A replica heartbeat that met a lock conflict tries again within this.
const LOCK_RETRY: Duration = Duration::from_millis(200);

/// Every replica's own row in scaleout.replicas, every 10 s (`HEARTBEAT_EVERY`), on its own
/// connection (iridium's table locks are no-wait: a conflict is retried).
pub async fn heartbeat(
    raft: Raft,
    settings: SsisdbSettings,
    replica_id: u64,
    api: String,
    peer: String,
) {
    let mut client: Option<(SqlClient, String)> = None;
    let mut last_error: Option<String> = None;
    loop {
        let result = async {
            if client.is_none() {
                let t = target(&settings)?;
                client = Some(connect_target(t, settings.connect_timeout()).await?);
            }
            let Some((c, addr)) = client.as_mut() else {
                return Ok(());
            };
            let (role, term, leader) = {
                let m = raft.metrics().borrow().clone();
                (
                    crate::raft::role_name(m.state),
                    m.current_term,
                    m.current_leader,
                )
            };
            let now = now_ms();
            let id = big(replica_id);
            let columns = [
                "api_address",
                "peer_address",
                "role",
                "term",
                "leader_id",
                "last_online_time",
                "last_online_ms",
            ];
            let values: Vec<String> = [
                Lit::text(clip(&api, 256)),
                Lit::text(clip(&peer, 256)),
                Lit::text(role),
                Lit::Big(big(term)),
                leader.map_or(Lit::Null, |l| Lit::Big(big(l))),
                Lit::Time(now),
                Lit::Big(big(now)),
            ]
            .iter()
            .map(Lit::to_sql)
            .collect();
            let set: Vec<String> = columns
                .iter()
                .zip(&values)
                .map(|(column, value)| format!("{column} = {value}"))
                .collect();
            let sql = format!(
                "IF EXISTS (SELECT 1 FROM scaleout.replicas WHERE replica_id = {id}) \
                 UPDATE scaleout.replicas SET {} WHERE replica_id = {id} \
                 ELSE INSERT INTO scaleout.replicas (replica_id, {}) VALUES ({id}, {})",
                set.join(", "),
                columns.join(", "),
                values.join(", "),
            );
            simple(c, addr, &sql).await
        }
        .await;
        match result {
            Ok(()) => {
                if last_error.take().is_some() {
                    info!(replica = replica_id, "SSISDB replica heartbeat recovered");
                }
                // Never later than the period: `status` counts a replica silent after a few of them.
                tokio::time::sleep(jitter(HEARTBEAT_EVERY).min(HEARTBEAT_EVERY)).await;
            }
            Err(e) if e.is_lock_conflict() => {
                tokio::time::sleep(jitter(LOCK_RETRY).min(LOCK_RETRY)).await;
            }
            Err(e) => {
                client = None;
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    warn!(replica = replica_id, error = %text, "SSISDB replica heartbeat failed");
                    last_error = Some(text);
                }
                tokio::time::sleep(jitter(HEARTBEAT_EVERY).min(HEARTBEAT_EVERY)).await;
            }
        }
    }
}
