//! Leadership hand-over between replicas (Raft thesis §3.10, "TimeoutNow"): the peer side.
//!
//! The leader (`master::handover`) pauses proposals, waits until the target holds its whole
//! log, then sends it `TimeoutNow`. The target checks that the sender is the leader it follows
//! in the current term, keeps the leader and term as its ticket ([`LeaderTerm`]), and stands for election at once (no pre-vote: the
//! leader itself asked). Its vote requests carry the ticket in [`HANDOVER_HEADER`]; a voter that
//! follows the same leader in the same term waives the leader lease for it (`lease.rs`), and the
//! leader waives it for the target it chose. Without a hand-over a stopping leader costs a whole
//! election timeout; with it, a round trip and a vote.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::lease::LeaderTerm;
use super::NodeId;

/// gRPC metadata on a vote request: `<leader id>/<term>` of the hand-over it answers.
pub const HANDOVER_HEADER: &str = "x-scaleout-handover";

/// How long a ticket is shown with vote requests: one election's worth; a later election of the
/// same candidate is an ordinary one.
const TICKET_LIFETIME: Duration = Duration::from_secs(2);

/// The leader's request to its chosen successor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimeoutNowRequest {
    pub leader: NodeId,
    pub term: u64,
}

/// The successor's answer; `reason` says why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutNowReply {
    pub accepted: bool,
    pub reason: String,
}

/// What the target knows when `TimeoutNow` arrives.
#[derive(Debug, Clone)]
pub struct TargetView {
    pub me: NodeId,
    pub following: bool,
    pub may_vote: bool,
    pub leader: Option<NodeId>,
    pub term: u64,
}

/// Whether the target takes the hand-over: only from the leader it follows, in its term.
pub fn accept(view: &TargetView, request: &TimeoutNowRequest) -> Result<LeaderTerm, String> {
    if !view.may_vote {
        return Err("its membership does not admit it as a voter".into());
    }
    if !view.following {
        return Err("it is not a follower".into());
    }
    if view.leader != Some(request.leader) || view.term != request.term {
        return Err(format!(
            "it follows {} in term {}, not replica {} in term {}",
            view.leader
                .map_or_else(|| "no leader".to_string(), |id| format!("replica {id}")),
            view.term,
            request.leader,
            request.term
        ));
    }
    if request.leader == view.me {
        return Err("a replica cannot hand over to itself".into());
    }
    Ok(LeaderTerm {
        leader: request.leader,
        term: request.term,
    })
}

/// The hand-over state of one replica, shared by its peer service, its network and its leader
/// duties.
#[derive(Debug, Default)]
pub struct Handover {
    /// On a leader: the voter it is handing over to.
    outgoing: Mutex<Option<NodeId>>,
    /// On a successor: the ticket it stands with, and since when.
    ticket: Mutex<Option<(LeaderTerm, Instant)>>,
}

impl Handover {
    /// This leader hands over to `target` (`None`: the hand-over ended).
    pub fn set_outgoing(&self, target: Option<NodeId>) {
        *self.outgoing.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }

    /// Whether this replica, as leader, is handing over to `candidate`.
    pub fn hands_over_to(&self, candidate: NodeId) -> bool {
        *self.outgoing.lock().unwrap_or_else(|p| p.into_inner()) == Some(candidate)
    }

    /// This replica takes over from the ticket's leader.
    pub fn hold(&self, ticket: LeaderTerm) {
        *self.ticket.lock().unwrap_or_else(|p| p.into_inner()) = Some((ticket, Instant::now()));
    }

    /// The ticket to show with a vote request of `term`: the election right after the
    /// hand-over's term, while it is recent.
    pub fn ticket_for(&self, term: u64) -> Option<LeaderTerm> {
        let held = *self.ticket.lock().unwrap_or_else(|p| p.into_inner());
        held.filter(|(ticket, since)| {
            ticket.term.checked_add(1) == Some(term) && since.elapsed() < TICKET_LIFETIME
        })
        .map(|(ticket, _)| ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follower_of(leader: NodeId, term: u64) -> TargetView {
        TargetView {
            me: 2,
            following: true,
            may_vote: true,
            leader: Some(leader),
            term,
        }
    }

    #[test]
    fn a_follower_takes_over_only_from_its_leader_in_its_term() {
        let request = TimeoutNowRequest { leader: 1, term: 7 };
        assert_eq!(
            accept(&follower_of(1, 7), &request),
            Ok(LeaderTerm { leader: 1, term: 7 })
        );
        assert_eq!(
            accept(&follower_of(1, 8), &request),
            Err("it follows replica 1 in term 8, not replica 1 in term 7".into())
        );
        assert!(accept(&follower_of(3, 7), &request).is_err());
        let no_leader = TargetView {
            leader: None,
            ..follower_of(1, 7)
        };
        assert_eq!(
            accept(&no_leader, &request),
            Err("it follows no leader in term 7, not replica 1 in term 7".into())
        );
        let outsider = TargetView {
            may_vote: false,
            ..follower_of(1, 7)
        };
        assert!(accept(&outsider, &request).is_err());
        let candidate = TargetView {
            following: false,
            ..follower_of(1, 7)
        };
        assert!(accept(&candidate, &request).is_err());
    }

    #[test]
    fn a_ticket_is_shown_only_in_the_election_right_after_its_term() {
        let handover = Handover::default();
        assert_eq!(handover.ticket_for(8), None);
        handover.hold(LeaderTerm { leader: 1, term: 7 });
        assert_eq!(
            handover.ticket_for(8),
            Some(LeaderTerm { leader: 1, term: 7 })
        );
        assert_eq!(handover.ticket_for(7), None);
        assert_eq!(handover.ticket_for(9), None);
    }

    #[test]
    fn a_leader_waives_the_lease_only_for_its_chosen_successor() {
        let handover = Handover::default();
        assert!(!handover.hands_over_to(2));
        handover.set_outgoing(Some(2));
        assert!(handover.hands_over_to(2));
        assert!(!handover.hands_over_to(3));
        handover.set_outgoing(None);
        assert!(!handover.hands_over_to(2));
    }
}
