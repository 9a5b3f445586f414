//! Bootstrap from the static member list: initialize a pristine cluster exactly once.

use std::collections::BTreeMap;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::MasterConfig;
use crate::pb::raft::raft_service_client::RaftServiceClient;
use crate::pb::raft::NodeStatusRequest;
use crate::raft::{NodeId, PeerNetwork, Raft, ReplicaNode};

const PEER_PROBE_TIMEOUT: Duration = Duration::from_millis(700);

pub fn members(config: &MasterConfig) -> BTreeMap<NodeId, ReplicaNode> {
    config
        .members
        .iter()
        .map(|m| {
            (
                m.id,
                ReplicaNode {
                    api_addr: m.api.clone(),
                    peer_addr: m.peer.clone(),
                },
            )
        })
        .collect()
}

/// Initializes the cluster if this replica is pristine and no reachable peer belongs to a
/// running cluster already.
///
/// Every pristine replica of a new cluster may call `initialize` with the same member list: the
/// membership entry it writes is identical everywhere, and the election that follows picks one
/// leader. A replica whose data dir was lost must not start a cluster of its own: if a peer
/// reports committed entries beyond the initial membership, this replica waits to be caught up
/// by the leader instead (it is still in the membership, so the leader replicates to it).
pub async fn bootstrap(
    raft: &Raft,
    config: &MasterConfig,
    network: &PeerNetwork,
) -> Result<(), String> {
    if raft.is_initialized().await.map_err(|e| e.to_string())? {
        info!("state found on disk; rejoining the cluster without initializing");
        return Ok(());
    }
    for member in config.members.iter().filter(|m| m.id != config.id) {
        if let Some(applied) = probe_applied_index(network, member.id, &member.peer).await {
            if applied > 0 {
                warn!(
                    peer = member.id,
                    applied,
                    "this replica has no state but the cluster is running; waiting for the \
                     leader to catch it up (by snapshot if needed)"
                );
                return Ok(());
            }
        }
    }
    match raft.initialize(members(config)).await {
        Ok(()) => {
            info!(members = config.members.len(), "initialized a new cluster");
            Ok(())
        }
        // Another path initialized it first (a vote or log arrived from a peer): nothing to do.
        Err(openraft::error::RaftError::APIError(
            openraft::error::InitializeError::NotAllowed(e),
        )) => {
            info!(reason = %e, "cluster already initialized");
            Ok(())
        }
        Err(e) => Err(format!("cannot initialize the cluster: {e}")),
    }
}

async fn probe_applied_index(network: &PeerNetwork, id: NodeId, peer_addr: &str) -> Option<u64> {
    let channel = network.channel_to(id, peer_addr).ok()?;
    let mut request = tonic::Request::new(NodeStatusRequest {});
    request.set_timeout(PEER_PROBE_TIMEOUT);
    let mut client = RaftServiceClient::new(channel);
    let call = client.node_status(request);
    let reply = tokio::time::timeout(PEER_PROBE_TIMEOUT, call)
        .await
        .ok()?
        .ok()?;
    reply.into_inner().applied_index
}
