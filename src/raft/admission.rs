//! Whether this replica may take part in elections and in the quorum: only as the member the
//! cluster admitted, with the data dir it was admitted with.
//!
//! Raft's safety rests on every voter remembering the votes it cast and the entries it
//! acknowledged. A voter whose data dir was wiped (or replaced by an empty one) remembers
//! neither, and restarted in place it could help elect a leader that lacks an acknowledged
//! write. Every data dir carries a storage id drawn when it was created (`storage.rs`), and the
//! membership names the storage id of each member ([`ReplicaNode::storage_id`]). So:
//!
//! - a replica stands for election only while the membership it knows lists it as a voter with
//!   its own storage id, and grants a vote only to a candidate that names its storage id and
//!   while its own membership admits it as a voter or it holds none yet. A replica that holds no
//!   membership but whose id a candidate names is one whose data dir was collected for the first
//!   membership and has stored nothing since: it has nothing to forget. A wiped replica has a
//!   new id that no membership names, so it never votes;
//! - every Raft message names the storage id the sender expects at the receiver
//!   ([`STORAGE_ID_HEADER`]); a replica whose id differs refuses appends, snapshots and votes
//!   alike, so a wiped replica never counts toward a quorum until the cluster adds it again
//!   (`cluster remove-replica`, then `add-replica`, which reads its new id);
//! - at start, a pristine replica that finds itself listed with another id refuses to start
//!   (`master/bootstrap.rs`).
//!
//! Not here: what a replica does about a peer that is refused (it treats it as unreachable).

use openraft::Membership;

use super::{NodeId, ReplicaNode};

/// gRPC metadata on every Raft message: the storage id the sender expects the receiver to have.
pub const STORAGE_ID_HEADER: &str = "x-scaleout-storage-id";

/// Who this replica is: its id and its data dir's storage id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    pub node_id: NodeId,
    pub storage_id: uuid::Uuid,
}

/// Where this replica stands in a membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Listed with this data dir's storage id, as a voter or not.
    Admitted { voter: bool },
    /// Not listed (a pristine replica that knows no membership yet, or a removed one).
    NotListed,
    /// Listed with another storage id: this data dir is not the one the cluster admitted.
    Replaced { admitted: Option<uuid::Uuid> },
}

impl Admission {
    pub fn standing(&self, membership: &Membership<NodeId, ReplicaNode>) -> Standing {
        match membership.get_node(&self.node_id) {
            None => Standing::NotListed,
            Some(node) if node.storage_id == Some(self.storage_id) => Standing::Admitted {
                voter: membership.voter_ids().any(|id| id == self.node_id),
            },
            Some(node) => Standing::Replaced {
                admitted: node.storage_id,
            },
        }
    }

    /// Whether this replica may stand for election.
    pub fn may_vote(&self, membership: &Membership<NodeId, ReplicaNode>) -> bool {
        self.standing(membership) == Standing::Admitted { voter: true }
    }

    /// Whether this replica may grant a vote to a candidate that named its storage id (checked
    /// first, by [`Admission::check_expected`]).
    pub fn may_grant_vote(&self, membership: &Membership<NodeId, ReplicaNode>) -> bool {
        self.may_vote(membership) || membership.nodes().next().is_none()
    }

    /// Checks the storage id a sender expects (the header's value, if any) against this one.
    pub fn check_expected(&self, expected: Option<&str>) -> Result<(), String> {
        match expected {
            // Every replica of this build sends it; a message without it comes from no member.
            None => Err(format!(
                "the message does not name the storage id it expects at replica {}",
                self.node_id
            )),
            Some(expected) if expected == self.storage_id.to_string() => Ok(()),
            Some(expected) => Err(format!(
                "replica {} was admitted with data dir storage id {expected}, but its data dir \
                 now has {}: it lost its state (a wiped or replaced disk) and takes no part in \
                 elections or quorums until it is removed and added again (docs/membership.md)",
                self.node_id, self.storage_id
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn node(storage: u128) -> ReplicaNode {
        ReplicaNode {
            api_addr: "a:1".into(),
            peer_addr: "p:1".into(),
            storage_id: Some(uuid::Uuid::from_u128(storage)),
        }
    }

    #[test]
    fn only_the_admitted_data_dir_of_a_voter_votes() {
        let me = Admission {
            node_id: 2,
            storage_id: uuid::Uuid::from_u128(20),
        };
        let nodes = BTreeMap::from([(1, node(10)), (2, node(20)), (3, node(30))]);
        let voters = BTreeSet::from([1, 2, 3]);
        let admitted = Membership::new(vec![voters.clone()], nodes.clone());
        assert!(me.may_vote(&admitted));

        let learner = Membership::new(vec![BTreeSet::from([1, 3])], nodes.clone());
        assert_eq!(me.standing(&learner), Standing::Admitted { voter: false });
        assert!(!me.may_vote(&learner));

        let wiped = Admission {
            storage_id: uuid::Uuid::from_u128(21),
            ..me
        };
        assert_eq!(
            wiped.standing(&admitted),
            Standing::Replaced {
                admitted: Some(uuid::Uuid::from_u128(20))
            }
        );
        assert!(!wiped.may_vote(&admitted));

        let pristine = Membership::<NodeId, ReplicaNode>::default();
        assert_eq!(me.standing(&pristine), Standing::NotListed);
        assert!(!me.may_vote(&pristine), "it stands for nothing");
        assert!(
            me.may_grant_vote(&pristine),
            "named by a candidate, it has nothing to forget"
        );
        let removed = Membership::new(
            vec![BTreeSet::from([1, 3])],
            BTreeMap::from([(1, node(10)), (3, node(30))]),
        );
        assert_eq!(me.standing(&removed), Standing::NotListed);
        assert!(!me.may_grant_vote(&removed));
        assert!(!wiped.may_grant_vote(&admitted));
    }

    #[test]
    fn a_message_for_another_data_dir_is_refused() {
        let me = Admission {
            node_id: 2,
            storage_id: uuid::Uuid::from_u128(20),
        };
        assert!(me
            .check_expected(Some(&uuid::Uuid::from_u128(20).to_string()))
            .is_ok());
        let refused = me
            .check_expected(Some(&uuid::Uuid::from_u128(21).to_string()))
            .unwrap_err();
        assert!(refused.contains("removed and added again"), "{refused}");
        assert!(me.check_expected(None).is_err());
    }
}
