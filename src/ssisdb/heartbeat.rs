//! Every replica's heartbeat row in `scaleout.replicas` (leader or not), like the SSIS Scale
//! Out Master's: its addresses, role, term and leader, every [`HEARTBEAT_EVERY`].

use std::time::Duration;

use tracing::{info, warn};

use super::connect::{connect_target, target, SqlClient};
use super::rows::p;
use super::sql::{big, clip, send, sql_time, Packer, Param};
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
                (crate::raft::role_name(m.state), m.current_term, m.current_leader)
            };
            let now = now_ms();
            let mut packer = Packer::default();
            let set = || -> Vec<Param> {
                vec![
                    p(clip(&api, 256)),
                    p(clip(&peer, 256)),
                    p(role),
                    p(big(term)),
                    p(leader.map(big)),
                    p(sql_time(now)),
                    p(big(now)),
                ]
            };
            let mut params = vec![p(big(replica_id))];
            params.extend(set());
            params.push(p(big(replica_id)));
            params.push(p(big(replica_id)));
            params.extend(set());
            packer.push(
                "IF EXISTS (SELECT 1 FROM scaleout.replicas WHERE replica_id = ?) \
                 UPDATE scaleout.replicas SET api_address = ?, peer_address = ?, role = ?, term = ?, \
                 leader_id = ?, last_online_time = CAST(? AS DATETIME2), last_online_ms = ? \
                 WHERE replica_id = ? ELSE INSERT INTO scaleout.replicas (replica_id, api_address, \
                 peer_address, role, term, leader_id, last_online_time, last_online_ms) VALUES \
                 (?, ?, ?, ?, ?, ?, CAST(? AS DATETIME2), ?)",
                params,
            );
            send(c, addr, packer.finish()).await
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
