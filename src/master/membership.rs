//! Membership changes on the leader: add a replica (learner, catch-up, then voter) and remove
//! one. openraft moves between configurations through joint consensus, so a majority of both
//! the old and the new voters agrees on every step and no change can make two leaders.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use tonic::{Code, Status};
use tracing::info;

use crate::pb::raft::raft_service_client::RaftServiceClient;
use crate::pb::raft::NodeStatusRequest;
use crate::raft::{NodeId, PeerNetwork, Raft, ReplicaNode};
use crate::rpc::contract::not_leader;

/// How long the leader waits for a new replica to catch up when the caller does not say.
pub const DEFAULT_CATCH_UP: Duration = Duration::from_secs(45);
/// The longest catch-up wait: the whole call must end within the API's request timeout (60 s).
pub const MAX_CATCH_UP: Duration = Duration::from_secs(50);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What a membership change left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub voters: Vec<NodeId>,
    /// Index of the entry that finished the change; 0 when nothing had to change.
    pub log_index: u64,
}

/// Adds replica `id` at `node`: checks it runs and is who it says, reads its data dir's storage
/// id (the membership records it, so a later wipe of that dir is recognized: `raft::admission`),
/// adds it as a learner, waits until it holds the leader's log (the leader sends a snapshot if
/// the log was compacted), then makes it a voter. Running it again after a timeout carries on
/// where it stopped.
pub async fn add_replica(
    raft: &Raft,
    network: &PeerNetwork,
    id: NodeId,
    node: ReplicaNode,
    catch_up: Duration,
) -> Result<Changed, Status> {
    check_address("api_addr", &node.api_addr)?;
    check_address("peer_addr", &node.peer_addr)?;
    let catch_up = catch_up.min(MAX_CATCH_UP);
    let membership = leader_membership(raft)?;
    let in_joint_change = membership.get_joint_config().len() > 1;
    if let Some(existing) = membership.get_node(&id) {
        if existing.api_addr != node.api_addr || existing.peer_addr != node.peer_addr {
            return Err(Status::failed_precondition(format!(
                "replica {id} is already a member at {existing}; to change its addresses, \
                 remove it (scaleout cluster remove-replica {id}) and add it again"
            )));
        }
    }
    if let Some((other, _)) = membership.nodes().find(|(other, n)| {
        **other != id && (n.api_addr == node.api_addr || n.peer_addr == node.peer_addr)
    }) {
        return Err(Status::invalid_argument(format!(
            "replica {other} already uses one of these addresses ({node}); every replica needs \
             its own api and peer address"
        )));
    }
    let storage_id = probe(
        network,
        id,
        &node.peer_addr,
        membership.get_node(&id).is_none(),
    )
    .await?;
    let node = ReplicaNode {
        storage_id: Some(storage_id),
        ..node
    };
    if let Some(existing) = membership.get_node(&id) {
        if existing.storage_id != Some(storage_id) {
            return Err(Status::failed_precondition(format!(
                "replica {id} is a member admitted with data dir storage id {}, but the replica \
                 at {} now has storage id {storage_id}: its state was lost (a wiped or replaced \
                 disk). Remove it first (scaleout cluster remove-replica {id}), then add it again",
                existing
                    .storage_id
                    .map_or_else(|| "none".to_string(), |s| s.to_string()),
                node.peer_addr
            )));
        }
        // A change cut short in its joint phase is finished below, not reported as done.
        if !in_joint_change && membership.voter_ids().any(|voter| voter == id) {
            return Ok(Changed {
                voters: membership.voter_ids().collect(),
                log_index: 0,
            });
        }
    }

    let added = raft
        .add_learner(id, node.clone(), false)
        .await
        .map_err(write_error)?;
    let needed = added.log_id.index;
    info!(replica = id, %node, log_index = needed, "replica added as a learner; waiting for it to catch up");
    wait_caught_up(raft, id, needed, catch_up).await?;

    let changed = change(raft, ChangeMembers::AddVoterIds(BTreeSet::from([id]))).await?;
    info!(replica = id, voters = %id_list(&changed.voters), log_index = changed.log_index, "replica is a voter");
    Ok(changed)
}

/// Removes replica `id`, voter or learner. The last voter cannot be removed. Removing the
/// leader itself is allowed: it leads until the change commits, then the others elect one.
pub async fn remove_replica(raft: &Raft, id: NodeId) -> Result<Changed, Status> {
    let membership = leader_membership(raft)?;
    if membership.get_node(&id).is_none() {
        // Also what a retry sees after a removal whose answer was lost: nothing to do.
        return Ok(Changed {
            voters: membership.voter_ids().collect(),
            log_index: 0,
        });
    }
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let change_members = if voters.contains(&id) {
        if voters.len() == 1 {
            return Err(Status::failed_precondition(format!(
                "replica {id} is the only voter; a cluster needs at least one"
            )));
        }
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    let changed = change(raft, change_members).await?;
    info!(replica = id, voters = %id_list(&changed.voters), log_index = changed.log_index, "replica removed");
    Ok(changed)
}

/// Commits `change_members` through joint consensus; the voters after it and its log index.
async fn change(
    raft: &Raft,
    change_members: ChangeMembers<NodeId, ReplicaNode>,
) -> Result<Changed, Status> {
    let changed = raft
        .change_membership(change_members, false)
        .await
        .map_err(write_error)?;
    Ok(Changed {
        voters: changed
            .membership
            .as_ref()
            .map(|m| m.voter_ids().collect())
            .unwrap_or_default(),
        log_index: changed.log_id.index,
    })
}

/// The membership as the leader has it; any other replica redirects (a follower's copy may
/// lag, and reachability is judged from the leader).
fn leader_membership(raft: &Raft) -> Result<openraft::Membership<NodeId, ReplicaNode>, Status> {
    let metrics = raft.metrics().borrow().clone();
    if metrics.current_leader != Some(metrics.id) {
        let leader = metrics.current_leader.and_then(|id| {
            metrics
                .membership_config
                .membership()
                .get_node(&id)
                .cloned()
        });
        return Err(not_leader(metrics.current_leader, leader.as_ref()));
    }
    Ok(metrics.membership_config.membership().clone())
}

fn check_address(field: &str, address: &str) -> Result<(), Status> {
    let valid = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if valid {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{field} {address:?} is not host:port (e.g. 10.0.0.4:7101)"
        )))
    }
}

/// The new replica must answer on its peer address with its own id: a typo in the address or
/// the id is caught before the membership changes. A replica that is not yet a member must also
/// be empty: one with a log of its own (it initialized a cluster, or kept an old data dir)
/// would fight the leader with its own term. Returns its data dir's storage id.
async fn probe(
    network: &PeerNetwork,
    id: NodeId,
    peer_addr: &str,
    must_be_empty: bool,
) -> Result<uuid::Uuid, Status> {
    let unreachable = |why: String| {
        Status::failed_precondition(format!(
            "cannot reach replica {id} at peer address {peer_addr} ({why}); start it first: its \
             config names id = {id}, lists the current members and itself, and it waits with an \
             empty data dir to be added"
        ))
    };
    let channel = network
        .channel_to(id, peer_addr)
        .map_err(|e| unreachable(e.to_string()))?;
    let mut request = tonic::Request::new(NodeStatusRequest {});
    request.set_timeout(PROBE_TIMEOUT);
    let answer = tokio::time::timeout(
        PROBE_TIMEOUT,
        RaftServiceClient::new(channel).node_status(request),
    )
    .await
    .map_err(|_| unreachable(format!("no answer within {PROBE_TIMEOUT:?}")))?
    .map_err(|status| unreachable(crate::rpc::contract::describe(&status)))?
    .into_inner();
    if answer.id != id {
        return Err(Status::invalid_argument(format!(
            "the replica at {peer_addr} is replica {}, not {id}",
            answer.id
        )));
    }
    let log = answer.last_log_index.unwrap_or(0);
    if must_be_empty && log > 0 {
        return Err(Status::failed_precondition(format!(
            "replica {id} at {peer_addr} already has a log (up to index {log}, term {}): it \
             started a cluster of its own or kept an old data dir; stop it, empty its data dir \
             and start it again before adding it",
            answer.term
        )));
    }
    answer.storage_id.parse().map_err(|_| {
        Status::failed_precondition(format!(
            "replica {id} at {peer_addr} does not report a data dir storage id \
             ({:?}); it runs an older scaleout: upgrade it first",
            answer.storage_id
        ))
    })
}

/// Waits until the leader has replicated up to `index` to `id`.
async fn wait_caught_up(
    raft: &Raft,
    id: NodeId,
    index: u64,
    timeout: Duration,
) -> Result<(), Status> {
    let mut metrics = raft.metrics();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let matched = {
            let m = metrics.borrow_and_update();
            if m.current_leader != Some(m.id) {
                return Err(not_leader(m.current_leader, None));
            }
            m.replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map(|log_id| log_id.index)
        };
        if matched.is_some_and(|m| m >= index) {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline, metrics.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Status::unavailable("the replica is shutting down")),
            Err(_) => {
                // Not DEADLINE_EXCEEDED: the client would retry that elsewhere.
                return Err(Status::failed_precondition(format!(
                    "replica {id} was added as a learner but has not caught up within \
                     {timeout:?} (it holds up to index {}, the leader needs {index}); it keeps \
                     receiving the log: run the same command again to make it a voter",
                    matched.map_or_else(|| "none".to_string(), |m| m.to_string())
                )));
            }
        }
    }
}

fn write_error(error: RaftError<NodeId, ClientWriteError<NodeId, ReplicaNode>>) -> Status {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            not_leader(forward.leader_id, forward.leader_node.as_ref())
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => match e {
            ChangeMembershipError::InProgress(e) => Status::new(
                Code::Aborted,
                format!("another membership change is still in progress ({e}); retry in a moment"),
            ),
            other => Status::failed_precondition(other.to_string()),
        },
        RaftError::Fatal(fatal) => Status::unavailable(format!("the replica is stopping: {fatal}")),
    }
}

/// Replica ids for a log field: `1,2,3`.
fn id_list(ids: &[NodeId]) -> String {
    ids.iter()
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_must_be_host_and_port() {
        assert!(check_address("api_addr", "10.0.0.4:7101").is_ok());
        assert!(check_address("api_addr", "replica-4.corp:7101").is_ok());
        for bad in ["", "10.0.0.4", ":7101", "host:0", "host:port", "host:70000"] {
            let err = check_address("peer_addr", bad).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
            assert!(err.message().contains("peer_addr"), "{}", err.message());
        }
    }
}
