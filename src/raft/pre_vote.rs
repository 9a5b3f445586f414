//! Pre-Vote (Raft thesis §9.6): before it stands for election, a replica asks the voters whether
//! they would vote for it, and stands only if a quorum would.
//!
//! openraft 0.9 has no Pre-Vote: `trigger().elect()` raises the term at once. A replica that
//! cannot win (cut off from the leader by a one-way link, isolated, restarted behind) then
//! raises its term again and again, and when it is heard from, its term deposes a healthy leader
//! (the chaos suite's one-way link cost 4.9 s without an acknowledged submit). Asking first
//! changes nothing in Raft's safety (a pre-vote grants nothing and changes no state on either
//! side); it only keeps a replica that would lose from disturbing the others.
//!
//! A voter would vote for the candidate when it has not heard from a leader for the leader
//! lease (as `lease.rs` refuses real votes until then) or saw that leader's process go
//! (`leader_watch.rs`), does not lead itself, holds a membership
//! that admits it as a voter (`admission.rs`), and the candidate's log is at least as up to date
//! as its own. Terms play no part: a candidate whose term is behind learns the newer one from
//! the real election, as without Pre-Vote.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{LogId, NodeId, ReplicaNode};
use openraft::Membership;

/// The question a candidate asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVoteRequest {
    pub candidate: NodeId,
    pub last_log_id: Option<LogId>,
}

/// A voter's answer; `reason` says why not (for the candidate's log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteReply {
    pub granted: bool,
    pub reason: String,
}

/// What a voter knows when it answers.
#[derive(Debug, Clone)]
pub struct VoterView {
    pub leading: bool,
    pub may_vote: bool,
    /// Since it last heard from a leader (its own votes and attempts do not count).
    pub since_leader: Duration,
    /// The leader lease: how long a voter refuses real votes after hearing a leader.
    pub lease: Duration,
    /// This voter saw its leader's process go (`leader_watch.rs`): the lease is waived.
    pub leader_gone: bool,
    pub last_log_id: Option<LogId>,
}

/// Whether a voter in `view` would vote for the candidate of `request`.
pub fn decide(view: &VoterView, request: &PreVoteRequest) -> PreVoteReply {
    let refuse = |reason: String| PreVoteReply {
        granted: false,
        reason,
    };
    if view.leading {
        return refuse("it leads".into());
    }
    if !view.may_vote {
        return refuse("its membership does not admit it as a voter".into());
    }
    if view.since_leader < view.lease && !view.leader_gone {
        return refuse(format!(
            "it heard from a leader {} ms ago",
            view.since_leader.as_millis()
        ));
    }
    if request.last_log_id < view.last_log_id {
        return refuse(format!(
            "the candidate's log ({}) is behind its own ({})",
            describe(request.last_log_id),
            describe(view.last_log_id)
        ));
    }
    PreVoteReply {
        granted: true,
        reason: String::new(),
    }
}

fn describe(log_id: Option<LogId>) -> String {
    log_id.map_or_else(
        || "empty".into(),
        |id| format!("term {} index {}", id.leader_id.term, id.index),
    )
}

/// Whether `granted` is a quorum of `membership`'s voters: a majority of every configuration
/// (two during a joint change).
pub fn is_quorum(membership: &Membership<NodeId, ReplicaNode>, granted: &BTreeSet<NodeId>) -> bool {
    membership.get_joint_config().iter().all(|voters| {
        let yes = voters.iter().filter(|id| granted.contains(id)).count();
        yes * 2 > voters.len()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn log_id(term: u64, index: u64) -> Option<LogId> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    fn view() -> VoterView {
        VoterView {
            leading: false,
            may_vote: true,
            since_leader: Duration::from_millis(900),
            lease: Duration::from_millis(500),
            leader_gone: false,
            last_log_id: log_id(3, 40),
        }
    }

    fn asking(last_log_id: Option<LogId>) -> PreVoteRequest {
        PreVoteRequest {
            candidate: 2,
            last_log_id,
        }
    }

    #[test]
    fn a_voter_without_a_leader_grants_an_up_to_date_candidate() {
        assert!(decide(&view(), &asking(log_id(3, 40))).granted);
        assert!(decide(&view(), &asking(log_id(3, 41))).granted);
        assert!(decide(&view(), &asking(log_id(4, 2))).granted);
    }

    #[test]
    fn a_candidate_behind_is_refused_and_told_why() {
        let reply = decide(&view(), &asking(log_id(3, 39)));
        assert!(!reply.granted);
        assert_eq!(
            reply.reason,
            "the candidate's log (term 3 index 39) is behind its own (term 3 index 40)"
        );
        assert!(!decide(&view(), &asking(log_id(2, 90))).granted);
        assert!(!decide(&view(), &asking(None)).granted);
    }

    #[test]
    fn a_voter_that_heard_a_leader_within_the_lease_refuses() {
        let recent = VoterView {
            since_leader: Duration::from_millis(120),
            ..view()
        };
        let reply = decide(&recent, &asking(log_id(9, 99)));
        assert_eq!(
            reply,
            PreVoteReply {
                granted: false,
                reason: "it heard from a leader 120 ms ago".into()
            }
        );
        // Unless it saw that leader's process go itself.
        let gone = VoterView {
            leader_gone: true,
            ..recent
        };
        assert!(decide(&gone, &asking(log_id(9, 99))).granted);
        assert!(!decide(&gone, &asking(log_id(3, 39))).granted);
    }

    #[test]
    fn a_leader_or_a_replica_that_may_not_vote_refuses() {
        let leader = VoterView {
            leading: true,
            ..view()
        };
        assert!(!decide(&leader, &asking(log_id(9, 99))).granted);
        let outsider = VoterView {
            may_vote: false,
            ..view()
        };
        assert!(!decide(&outsider, &asking(log_id(9, 99))).granted);
    }

    #[test]
    fn a_quorum_is_a_majority_of_every_configuration() {
        let nodes = |ids: &[u64]| -> BTreeSet<u64> { ids.iter().copied().collect() };
        let three = Membership::<NodeId, ReplicaNode>::new(vec![nodes(&[1, 2, 3])], None);
        assert!(is_quorum(&three, &nodes(&[1, 2])));
        assert!(!is_quorum(&three, &nodes(&[1])));
        assert!(!is_quorum(&three, &nodes(&[1, 4, 5])));
        let joint = Membership::<NodeId, ReplicaNode>::new(
            vec![nodes(&[1, 2, 3]), nodes(&[3, 4, 5])],
            None,
        );
        assert!(!is_quorum(&joint, &nodes(&[1, 2])));
        assert!(is_quorum(&joint, &nodes(&[1, 3, 4])));
        let alone = Membership::<NodeId, ReplicaNode>::new(vec![nodes(&[1])], None);
        assert!(is_quorum(&alone, &nodes(&[1])));
    }
}
