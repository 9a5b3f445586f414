//! Leadership hand-over, the leader's side: `scaleout cluster transfer-leader` and a stopping
//! leader (SIGTERM) give leadership to a voter without an election timeout.
//!
//! 1. Proposals pause (`Proposer::pause`): the ones in flight finish, new ones wait.
//! 2. The target (the given voter, or the most up-to-date one) catches up to the last entry.
//! 3. It gets `TimeoutNow` and stands at once; the voters waive the lease for it
//!    (`raft::handover`, `raft::lease`). Its log is as long as anyone's, so it wins.
//! 4. Once it leads, proposals resume here; openraft now answers them with a redirect, so the
//!    callers that waited go to the new leader at once.
//!
//! Each step is bounded; a hand-over that fails before the target stood leaves this replica
//! leading, one that fails after leaves the cluster to an ordinary election; either way the
//! error says which step failed. It runs in its own task: a caller that goes away does not leave
//! proposals paused or heartbeats off.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use tracing::{info, warn};

use super::proposer::Proposer;
use crate::pb::raft::raft_service_client::RaftServiceClient;
use crate::raft::handover::{Handover, TimeoutNowReply, TimeoutNowRequest};
use crate::raft::lease;
use crate::raft::{peer_request, NodeId, PeerNetwork, Raft, ReplicaNode};

/// How far each follower's log matches the leader's (openraft's replication metrics).
type Matched = std::collections::BTreeMap<NodeId, Option<openraft::LogId<NodeId>>>;

/// Why leadership was not handed over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandoverError {
    #[error("this replica is not the leader")]
    NotLeader {
        leader_id: Option<NodeId>,
        leader: Option<ReplicaNode>,
    },
    #[error("replica {0} is not a voter of this cluster; give a voter's id or none")]
    NotAVoter(NodeId),
    #[error("this replica is the only voter: there is no one to hand leadership to")]
    NoOtherVoter,
    #[error(
        "no other voter has answered this leader lately: there is no one to hand leadership to"
    )]
    NoLiveVoter,
    #[error("a membership change is under way; hand leadership over once it has finished")]
    MembershipChanging,
    #[error("proposals still in flight after {0:?}; try again")]
    Busy(Duration),
    #[error("replica {target} did not catch up with the leader's log within {waited:?} (it holds index {matched:?} of {last}); pick another or try again")]
    TargetBehind {
        target: NodeId,
        matched: Option<u64>,
        last: u64,
        waited: Duration,
    },
    #[error("replica {target} refused to take over: {reason}")]
    Refused { target: NodeId, reason: String },
    #[error("replica {target} took the hand-over but no new leader was seen within {waited:?}; an ordinary election follows")]
    NoNewLeader { target: NodeId, waited: Duration },
}

/// The outcome of a hand-over.
#[derive(Debug, Clone)]
pub struct HandedOver {
    pub leader_id: NodeId,
    pub leader: Option<ReplicaNode>,
    pub term: u64,
    pub elapsed: Duration,
}

/// The bounds of each step.
#[derive(Debug, Clone, Copy)]
pub struct HandoverTiming {
    /// For the proposals in flight, and for the target to catch up.
    pub settle: Duration,
    /// For the target's election.
    pub elect: Duration,
}

impl HandoverTiming {
    /// Bounds that fit the election timing: `election_timeout_max` for each step.
    pub fn for_election_timeout(timeout_max: Duration) -> Self {
        HandoverTiming {
            settle: timeout_max.max(Duration::from_millis(500)),
            elect: (timeout_max * 2).max(Duration::from_secs(1)),
        }
    }
}

/// Hands leadership over; cheap to clone.
#[derive(Clone)]
pub struct Handovers {
    raft: Raft,
    network: PeerNetwork,
    state: Arc<Handover>,
    proposer: Proposer,
    timing: HandoverTiming,
    /// openraft's own lease (`raft::lease`): a leader grants no vote, not even its successor's,
    /// until it has led that long.
    openraft_lease: Duration,
    /// When this replica last became leader, and in which term.
    elected: Arc<std::sync::Mutex<Option<(u64, Instant)>>>,
    /// One hand-over at a time.
    running: Arc<tokio::sync::Mutex<()>>,
}

impl Handovers {
    pub fn new(
        raft: Raft,
        network: PeerNetwork,
        proposer: Proposer,
        timing: HandoverTiming,
        openraft_lease: Duration,
    ) -> Self {
        let elected = Arc::new(std::sync::Mutex::new(None));
        tokio::spawn(note_elections(raft.clone(), elected.clone()));
        Handovers {
            state: network.handover(),
            raft,
            network,
            proposer,
            timing,
            openraft_lease,
            elected,
            running: Arc::default(),
        }
    }

    /// Hands leadership to `to` (a voter), or to the most up-to-date voter that answers. Runs
    /// to its end even if the caller goes away (a dropped call must not leave proposals paused
    /// or heartbeats off).
    pub async fn hand_over(&self, to: Option<NodeId>) -> Result<HandedOver, HandoverError> {
        let this = self.clone();
        tokio::spawn(async move { this.run(to).await })
            .await
            .unwrap_or_else(|join| {
                Err(HandoverError::Refused {
                    target: to.unwrap_or_default(),
                    reason: format!("the hand-over task failed: {join}"),
                })
            })
    }

    async fn run(&self, to: Option<NodeId>) -> Result<HandedOver, HandoverError> {
        let _one_at_a_time = self.running.lock().await;
        let started = Instant::now();
        let m = self.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            let leader = m
                .current_leader
                .and_then(|id| m.membership_config.membership().get_node(&id).cloned());
            return Err(HandoverError::NotLeader {
                leader_id: m.current_leader,
                leader,
            });
        }
        let me = m.id;
        let term = m.current_term;
        let membership = m.membership_config.membership().clone();
        if to == Some(me) {
            // Already there (a retried call whose first attempt succeeded lands here too).
            return Ok(HandedOver {
                leader_id: me,
                leader: membership.get_node(&me).cloned(),
                term,
                elapsed: started.elapsed(),
            });
        }
        if membership.get_joint_config().len() > 1 {
            return Err(HandoverError::MembershipChanging);
        }
        let voters: Vec<NodeId> = membership.voter_ids().filter(|id| *id != me).collect();
        let target = match to {
            Some(id) if !voters.contains(&id) => return Err(HandoverError::NotAVoter(id)),
            Some(id) => id,
            None => {
                // A voter that has not answered for the lease is likely down: not a successor.
                let answers = self.network.answers();
                let live: Vec<NodeId> = voters
                    .iter()
                    .copied()
                    .filter(|id| answers.silent_for(*id) < self.timing.settle)
                    .collect();
                most_up_to_date(&live, m.replication.as_ref()).ok_or(if voters.is_empty() {
                    HandoverError::NoOtherVoter
                } else {
                    HandoverError::NoLiveVoter
                })?
            }
        };
        let Some(node) = membership.get_node(&target).cloned() else {
            return Err(HandoverError::NotAVoter(target));
        };
        info!(target, term, "handing leadership over");
        // A leader just elected would refuse its successor's vote (openraft's lease runs from
        // its election); the wait comes before the pause, so callers do not pay it.
        let led_for = self
            .elected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .filter(|(elected_in, _)| *elected_in == term)
            .map_or(Duration::ZERO, |(_, at)| at.elapsed());
        tokio::time::sleep((self.openraft_lease + lease::MARGIN).saturating_sub(led_for)).await;
        let quiet = lease::successor_needs_a_follower(membership.voter_ids().count());

        // 1. Pause proposals; the ones in flight finish first.
        let outcome = match tokio::time::timeout(self.timing.settle, self.proposer.pause()).await {
            Ok(paused) => {
                self.state.set_outgoing(Some(target));
                let outcome = self.succession(me, term, target, &node, quiet).await;
                self.state.set_outgoing(None);
                drop(paused);
                outcome
            }
            Err(_) => Err(HandoverError::Busy(self.timing.settle)),
        };
        match &outcome {
            Ok(()) => {}
            Err(error) => warn!(target, term, %error, "hand-over failed"),
        }
        outcome?;
        let m = self.raft.metrics().borrow().clone();
        let leader_id = m.current_leader.unwrap_or(target);
        let handed = HandedOver {
            leader_id,
            leader: m
                .membership_config
                .membership()
                .get_node(&leader_id)
                .cloned(),
            term: m.current_term,
            elapsed: started.elapsed(),
        };
        info!(
            leader = handed.leader_id,
            term = handed.term,
            elapsed_ms = handed.elapsed.as_millis() as u64,
            "leadership handed over"
        );
        Ok(handed)
    }

    /// Steps 2 and 3, with proposals paused.
    async fn succession(
        &self,
        me: NodeId,
        term: u64,
        target: NodeId,
        node: &ReplicaNode,
        quiet: bool,
    ) -> Result<(), HandoverError> {
        let caught_up = self
            .raft
            .wait(Some(self.timing.settle))
            .metrics(
                |m| {
                    let matched = matched_index(m.replication.as_ref(), target);
                    m.state != ServerState::Leader
                        || (matched.is_some() && matched == m.last_log_index)
                },
                "target caught up",
            )
            .await;
        let m = self.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader || m.current_term != term {
            return Err(HandoverError::NotLeader {
                leader_id: m.current_leader,
                leader: None,
            });
        }
        if caught_up.is_err() {
            return Err(HandoverError::TargetBehind {
                target,
                matched: matched_index(m.replication.as_ref(), target),
                last: m.last_log_index.unwrap_or(0),
                waited: self.timing.settle,
            });
        }

        // With more than three voters the successor also needs a follower past openraft's
        // lease, which every heartbeat renews: none are sent from here until a new leader is
        // known. Only from here: the other followers' election timers run while no heartbeat
        // comes, and the shorter the silence, the less likely one of them stands against the
        // successor (the target waits out that lease before it stands, `raft::service`).
        if quiet {
            self.raft.runtime_config().heartbeat(false);
        }
        let outcome = self.stand_aside_for(me, term, target, node).await;
        if quiet {
            self.raft.runtime_config().heartbeat(true);
        }
        outcome
    }

    /// Step 3: `TimeoutNow` to the caught-up target, then the wait for a new leader.
    async fn stand_aside_for(
        &self,
        me: NodeId,
        term: u64,
        target: NodeId,
        node: &ReplicaNode,
    ) -> Result<(), HandoverError> {
        let reply = self
            .send_timeout_now(target, node, TimeoutNowRequest { leader: me, term })
            .await
            .map_err(|reason| HandoverError::Refused { target, reason })?;
        if !reply.accepted {
            return Err(HandoverError::Refused {
                target,
                reason: reply.reason,
            });
        }

        self.raft
            .wait(Some(self.timing.elect))
            .metrics(
                |m| m.current_term > term && m.current_leader.is_some_and(|id| id != me),
                "a new leader",
            )
            .await
            .map(|_| ())
            .map_err(|_| HandoverError::NoNewLeader {
                target,
                waited: self.timing.elect,
            })
    }

    async fn send_timeout_now(
        &self,
        target: NodeId,
        node: &ReplicaNode,
        request: TimeoutNowRequest,
    ) -> Result<TimeoutNowReply, String> {
        let channel = self
            .network
            .channel_to(target, &node.peer_addr)
            .map_err(|e| format!("cannot dial {}: {e}", node.peer_addr))?;
        let mut call = peer_request(node, &request)?;
        call.set_timeout(self.timing.settle);
        let reply = RaftServiceClient::new(channel)
            .timeout_now(call)
            .await
            .map_err(|status| match status.code() {
                tonic::Code::Unimplemented => {
                    "it runs a version without leader hand-over".to_string()
                }
                _ => status.message().to_string(),
            })?
            .into_inner();
        bincode::deserialize(&reply.data).map_err(|e| e.to_string())
    }
}

/// Keeps `elected` at the term this replica last became leader in, and when it saw that.
async fn note_elections(raft: Raft, elected: Arc<std::sync::Mutex<Option<(u64, Instant)>>>) {
    let mut metrics = raft.metrics();
    loop {
        let (leading, term) = {
            let m = metrics.borrow_and_update();
            (m.state == ServerState::Leader, m.current_term)
        };
        if leading {
            let mut noted = elected.lock().unwrap_or_else(|p| p.into_inner());
            if noted.map(|(t, _)| t) != Some(term) {
                *noted = Some((term, Instant::now()));
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

fn matched_index(replication: Option<&Matched>, target: NodeId) -> Option<u64> {
    replication?
        .get(&target)
        .copied()
        .flatten()
        .map(|id| id.index)
}

/// The voter whose log matches the leader's furthest (the lowest id among equals).
fn most_up_to_date(voters: &[NodeId], replication: Option<&Matched>) -> Option<NodeId> {
    voters
        .iter()
        .copied()
        .max_by_key(|id| (matched_index(replication, *id), std::cmp::Reverse(*id)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId};
    use std::collections::BTreeMap;

    fn matched(entries: &[(NodeId, Option<u64>)]) -> BTreeMap<NodeId, Option<LogId<NodeId>>> {
        entries
            .iter()
            .map(|(id, index)| {
                (
                    *id,
                    index.map(|i| LogId::new(CommittedLeaderId::new(3, 1), i)),
                )
            })
            .collect()
    }

    #[test]
    fn the_successor_is_the_voter_furthest_along_then_the_lowest_id() {
        let replication = matched(&[(2, Some(40)), (3, Some(42)), (4, Some(42)), (5, None)]);
        assert_eq!(most_up_to_date(&[2, 3, 4, 5], Some(&replication)), Some(3));
        assert_eq!(most_up_to_date(&[2, 5], Some(&replication)), Some(2));
        assert_eq!(most_up_to_date(&[5, 6], Some(&replication)), Some(5));
        assert_eq!(most_up_to_date(&[], Some(&replication)), None);
        assert_eq!(most_up_to_date(&[4, 2], None), Some(2));
    }
}
