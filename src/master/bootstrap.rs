//! Bootstrap: start a new cluster exactly once, and never let a replica that lost its state
//! rejoin as if it had not.
//!
//! A replica with state on disk rejoins as it is. A pristine one (nothing stored) asks every
//! member of the `[[members]]` list for its view (`NodeStatus`, over the peer port):
//!
//! - if a member already runs a cluster whose membership lists this replica with this data
//!   dir's storage id, this replica was part of the first membership and waits for the leader's
//!   log (it grants votes to candidates that name its storage id: it has nothing to forget);
//! - if that membership lists this replica with another storage id, the replica's data dir was
//!   wiped or replaced while it was a member: it refuses to start ([`BootstrapError::LostState`],
//!   exit 2) and says how to rejoin safely (remove, start empty, add);
//! - if it does not list this replica, the replica waits to be added (`cluster add-replica`);
//! - if every member answers and none runs a cluster, this is the first start of a new cluster:
//!   each pristine replica initializes it with the same membership, the member list with the
//!   storage id each one reported, so the entry is identical everywhere.
//!
//! Until one of these happens it keeps asking. A new cluster therefore needs every listed member
//! up at its first start, as with etcd's initial cluster: a member missing then could otherwise be
//! one whose disk was wiped after the cluster started, and nothing would tell them apart.

use std::collections::BTreeMap;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::MasterConfig;
use crate::pb::raft::raft_service_client::RaftServiceClient;
use crate::pb::raft::{NodeStatusRequest, NodeStatusResponse};
use crate::raft::admission::Admission;
use crate::raft::{NodeId, PeerNetwork, Raft, ReplicaNode};

const PEER_PROBE_TIMEOUT: Duration = Duration::from_millis(700);
const PROBE_EVERY: Duration = Duration::from_millis(300);

/// Why bootstrap could not go on.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(
        "replica {node_id} is a member of the running cluster with data dir storage id \
         {admitted}, but its data dir is empty and new (storage id {found}): its state was lost \
         (a wiped or replaced disk). Restarting it as it is could let it help elect a leader \
         that lacks acknowledged writes, so it refuses to start. Rejoin safely: on a healthy \
         replica run `scaleout cluster remove-replica {node_id} --identity admin`, start this \
         replica again on its empty data dir, then `scaleout cluster add-replica {node_id} --api \
         ... --peer ... --identity admin`; it catches up by snapshot (docs/membership.md)"
    )]
    LostState {
        node_id: NodeId,
        admitted: String,
        found: uuid::Uuid,
    },
    #[error("cannot initialize the cluster: {0}")]
    Raft(String),
}

/// The membership of a new cluster: the member list, with each member's storage id.
fn first_membership(
    config: &MasterConfig,
    storage_ids: &BTreeMap<NodeId, uuid::Uuid>,
) -> BTreeMap<NodeId, ReplicaNode> {
    config
        .members
        .iter()
        .map(|m| {
            (
                m.id,
                ReplicaNode {
                    api_addr: m.api.clone(),
                    peer_addr: m.peer.clone(),
                    storage_id: storage_ids.get(&m.id).copied(),
                },
            )
        })
        .collect()
}

/// What one member's answer says about this replica.
enum Verdict {
    /// The member runs no cluster yet; its storage id.
    Pristine(uuid::Uuid),
    /// The member runs a cluster that admitted this replica's data dir.
    AdmittedHere,
    /// The member runs a cluster that does not list this replica.
    NotListed,
    /// The member runs a cluster that lists this replica with another data dir.
    ListedElsewhere(String),
}

fn judge(me: &Admission, answer: &NodeStatusResponse) -> Option<Verdict> {
    if answer.members.is_empty() {
        return answer.storage_id.parse().ok().map(Verdict::Pristine);
    }
    Some(match answer.members.iter().find(|m| m.id == me.node_id) {
        None => Verdict::NotListed,
        Some(listed) if listed.storage_id == me.storage_id.to_string() => Verdict::AdmittedHere,
        Some(listed) => Verdict::ListedElsewhere(listed.storage_id.clone()),
    })
}

/// Runs bootstrap to its end (see the module docs); `pristine` says whether the data dir held
/// anything at open.
pub async fn bootstrap(
    raft: &Raft,
    config: &MasterConfig,
    network: &PeerNetwork,
    me: Admission,
    pristine: bool,
) -> Result<(), BootstrapError> {
    if !pristine {
        info!("state found on disk; rejoining the cluster without initializing");
        return Ok(());
    }
    let mut reported_waiting = false;
    loop {
        let mut storage_ids = BTreeMap::from([(me.node_id, me.storage_id)]);
        let mut silent = Vec::new();
        for member in config.members.iter().filter(|m| m.id != me.node_id) {
            let answer = probe(network, member.id, &member.peer)
                .await
                .filter(|answer| answer.id == member.id);
            match answer.as_ref().and_then(|a| judge(&me, a)) {
                None => silent.push(member.id),
                Some(Verdict::Pristine(storage_id)) => {
                    storage_ids.insert(member.id, storage_id);
                }
                Some(Verdict::AdmittedHere) => {
                    info!(
                        peer = member.id,
                        "the cluster was started with this data dir; waiting for the leader's log"
                    );
                    return Ok(());
                }
                Some(Verdict::NotListed) => {
                    warn!(
                        peer = member.id,
                        "this replica has no state and the running cluster does not list it; \
                         waiting to be added (scaleout cluster add-replica)"
                    );
                    return Ok(());
                }
                Some(Verdict::ListedElsewhere(admitted)) => {
                    return Err(BootstrapError::LostState {
                        node_id: me.node_id,
                        admitted,
                        found: me.storage_id,
                    })
                }
            }
        }
        if silent.is_empty() {
            break initialize(raft, first_membership(config, &storage_ids)).await;
        }
        if !reported_waiting {
            info!(
                waiting_for = %silent.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(","),
                "this replica has no state; waiting for every listed member to answer before \
                 starting a new cluster (or to learn that one runs)"
            );
            reported_waiting = true;
        }
        // Someone else may have started the cluster meanwhile and brought this replica its log.
        if raft.is_initialized().await.unwrap_or(false) {
            return Ok(());
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

async fn initialize(
    raft: &Raft,
    members: BTreeMap<NodeId, ReplicaNode>,
) -> Result<(), BootstrapError> {
    let count = members.len();
    match raft.initialize(members).await {
        Ok(()) => {
            info!(members = count, "initialized a new cluster");
            Ok(())
        }
        // Another path initialized it first (a log arrived from a peer): nothing to do.
        Err(openraft::error::RaftError::APIError(
            openraft::error::InitializeError::NotAllowed(e),
        )) => {
            info!(reason = %e, "cluster already initialized");
            Ok(())
        }
        Err(e) => Err(BootstrapError::Raft(e.to_string())),
    }
}

async fn probe(network: &PeerNetwork, id: NodeId, peer_addr: &str) -> Option<NodeStatusResponse> {
    let channel = network.channel_to(id, peer_addr).ok()?;
    let mut request = tonic::Request::new(NodeStatusRequest {});
    request.set_timeout(PEER_PROBE_TIMEOUT);
    let mut client = RaftServiceClient::new(channel);
    let call = client.node_status(request);
    tokio::time::timeout(PEER_PROBE_TIMEOUT, call)
        .await
        .ok()?
        .ok()
        .map(tonic::Response::into_inner)
}
