//! The leader lease a voter keeps: after hearing from its leader it votes for no one else for
//! `election_timeout_max`, so a replica that was only slow or cut off cannot depose a leader the
//! others still hear.
//!
//! openraft 0.9 keeps this lease itself, with no exceptions: a leader's hand-over
//! (`handover.rs`) would still wait out a whole lease. So openraft's own lease is cut to just
//! over one heartbeat ([`openraft_timeouts`]) and the lease is kept here, at the peer service,
//! before a vote request reaches openraft, with two exceptions: the election of a leader's chosen
//! successor (its ticket names the leader this voter follows, in its term; the leader itself
//! waives it for the target it chose), and when this voter saw its leader's process go
//! (`leader_watch.rs`). Pre-votes are answered by the same lease
//! (`pre_vote.rs`), so a candidate that stands has already been told it would get its votes.

use std::time::Duration;

use super::NodeId;

/// A leader and its term, as the lease waivers name it in gRPC metadata (`<leader id>/<term>`):
/// the hand-over ticket (`handover.rs`) and the leader a candidate saw go (`leader_watch.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderTerm {
    pub leader: NodeId,
    pub term: u64,
}

impl LeaderTerm {
    pub fn header_value(&self) -> String {
        format!("{}/{}", self.leader, self.term)
    }

    /// The value of a well-formed header.
    pub fn parse(value: &str) -> Option<LeaderTerm> {
        let (leader, term) = value.split_once('/')?;
        Some(LeaderTerm {
            leader: leader.parse().ok()?,
            term: term.parse().ok()?,
        })
    }

    /// What `header` of a request's metadata names, if it is there and well formed.
    pub fn from_metadata(metadata: &tonic::metadata::MetadataMap, header: &str) -> Option<Self> {
        LeaderTerm::parse(metadata.get(header)?.to_str().ok()?)
    }

    /// Sets `header` of `metadata` to this leader and term.
    pub fn insert_into(&self, metadata: &mut tonic::metadata::MetadataMap, header: &'static str) {
        if let Ok(value) = self.header_value().parse() {
            metadata.insert(header, value);
        }
    }
}

/// Added where a step waits for openraft's lease to run out on the other voters: they heard
/// the leader's last message a little before or after this replica did.
pub const MARGIN: Duration = Duration::from_millis(10);

/// Whether a successor needs, besides its own vote and the old leader's, a follower past
/// openraft's lease (which every heartbeat renews): with more than three voters.
pub fn successor_needs_a_follower(voters: usize) -> bool {
    voters / 2 + 1 > 2
}

/// What a voter knows when a vote request arrives.
#[derive(Debug, Clone)]
pub struct VoterLease {
    /// This replica leads.
    pub leading: bool,
    /// The leader of this replica's committed vote (itself when leading), if any.
    pub leader: Option<NodeId>,
    pub term: u64,
    /// Since this replica last heard from a leader (itself: zero).
    pub since_leader: Duration,
    pub lease: Duration,
    /// As leader, it is handing over to the candidate.
    pub handing_over_to_candidate: bool,
    /// It saw its leader's process go (`leader_watch.rs`).
    pub leader_gone: bool,
}

/// Why this voter refuses to consider `candidate`'s vote request now, if it does; the request
/// then never reaches openraft (the candidate sees a plain refusal).
pub fn refusal(view: &VoterLease, candidate: NodeId, ticket: Option<LeaderTerm>) -> Option<String> {
    let leader = view.leader?;
    if leader == candidate {
        return None;
    }
    if view.leading {
        return (!view.handing_over_to_candidate).then(|| "it leads".to_string());
    }
    let ticket_of_leader = ticket
        == Some(LeaderTerm {
            leader,
            term: view.term,
        });
    if view.leader_gone || ticket_of_leader {
        return None;
    }
    (view.since_leader < view.lease).then(|| {
        format!(
            "it heard from leader {leader} {} ms ago (lease {} ms)",
            view.since_leader.as_millis(),
            view.lease.as_millis()
        )
    })
}

/// openraft's `election_timeout_min` and `election_timeout_max` for a `heartbeat_ms` interval.
/// openraft's elections are off (`election.rs` drives them), so these set only its leader lease
/// (the maximum) and the time it gives a vote request (the minimum): just over one heartbeat,
/// like an append's.
pub fn openraft_timeouts(heartbeat_ms: u64) -> (u64, u64) {
    (
        heartbeat_ms.saturating_add(1),
        heartbeat_ms.saturating_add(2),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follower() -> VoterLease {
        VoterLease {
            leading: false,
            leader: Some(1),
            term: 5,
            since_leader: Duration::from_millis(80),
            lease: Duration::from_millis(500),
            handing_over_to_candidate: false,
            leader_gone: false,
        }
    }

    #[test]
    fn a_follower_that_hears_its_leader_refuses_others() {
        assert_eq!(
            refusal(&follower(), 2, None).as_deref(),
            Some("it heard from leader 1 80 ms ago (lease 500 ms)")
        );
        let lapsed = VoterLease {
            since_leader: Duration::from_millis(500),
            ..follower()
        };
        assert_eq!(refusal(&lapsed, 2, None), None);
        let gone = VoterLease {
            leader_gone: true,
            ..follower()
        };
        assert_eq!(refusal(&gone, 2, None), None);
    }

    #[test]
    fn the_leaders_ticket_waives_the_lease_only_for_its_term() {
        let ticket = |leader, term| Some(LeaderTerm { leader, term });
        assert_eq!(refusal(&follower(), 2, ticket(1, 5)), None);
        assert!(refusal(&follower(), 2, ticket(1, 4)).is_some());
        assert!(refusal(&follower(), 2, ticket(3, 5)).is_some());
    }

    #[test]
    fn a_leader_votes_only_for_its_chosen_successor() {
        let leader = VoterLease {
            leading: true,
            leader: Some(1),
            since_leader: Duration::ZERO,
            ..follower()
        };
        assert_eq!(refusal(&leader, 2, None).as_deref(), Some("it leads"));
        let handing_over = VoterLease {
            handing_over_to_candidate: true,
            ..leader
        };
        assert_eq!(refusal(&handing_over, 2, None), None);
    }

    #[test]
    fn without_a_leader_openraft_decides() {
        let leaderless = VoterLease {
            leader: None,
            ..follower()
        };
        assert_eq!(refusal(&leaderless, 2, None), None);
        // A request from its own leader (a re-election) is openraft's to judge.
        assert_eq!(refusal(&follower(), 1, None), None);
    }

    #[test]
    fn a_leader_and_term_travel_as_a_header_and_bad_ones_are_ignored() {
        let named = LeaderTerm {
            leader: 3,
            term: 41,
        };
        assert_eq!(LeaderTerm::parse(&named.header_value()), Some(named));
        for bad in ["", "3", "3/", "/41", "x/41", "3/41/2", "-1/4"] {
            assert_eq!(LeaderTerm::parse(bad), None, "{bad:?}");
        }
        let mut metadata = tonic::metadata::MetadataMap::new();
        named.insert_into(&mut metadata, "x-test");
        assert_eq!(LeaderTerm::from_metadata(&metadata, "x-test"), Some(named));
        assert_eq!(LeaderTerm::from_metadata(&metadata, "x-other"), None);
    }

    #[test]
    fn only_more_than_three_voters_need_a_follower_for_a_successor() {
        assert!(!successor_needs_a_follower(2));
        assert!(!successor_needs_a_follower(3));
        assert!(successor_needs_a_follower(4));
        assert!(successor_needs_a_follower(5));
    }

    #[test]
    fn openraft_keeps_a_lease_of_about_one_heartbeat() {
        assert_eq!(openraft_timeouts(100), (101, 102));
        assert_eq!(openraft_timeouts(50), (51, 52));
    }
}
