//! CheckQuorum: a leader that has not heard from a majority for the leader lease stops taking
//! calls and answers NOT_LEADER, so clients and workers move to another replica at once.
//!
//! openraft 0.9 has no CheckQuorum: a leader cut off from its peers believes it leads until it
//! hears a higher term, accepts writes it can never commit and holds each caller until the
//! proposer's 10 s commit timeout. By the time the lease (`election_timeout_max_ms`) has passed
//! without a majority answering, the others may already have elected a new leader; from then on
//! this replica refuses writes and linearizable reads with NOT_LEADER (no leader named: it does
//! not know the new one). openraft still counts it as leader until it hears a higher term; only
//! the refusals change, and they end by themselves as soon as a majority answers again.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;

use crate::raft::{NodeId, PeerAnswers, Raft};

/// Answers whether this replica, if it leads, still hears from a majority; cheap to clone.
#[derive(Clone)]
pub struct QuorumCheck {
    raft: Raft,
    answers: Arc<PeerAnswers>,
    lease: Duration,
}

impl QuorumCheck {
    pub fn new(raft: Raft, answers: Arc<PeerAnswers>, lease: Duration) -> Self {
        QuorumCheck {
            raft,
            answers,
            lease,
        }
    }

    /// `Some(silence)` when this replica leads and no majority of some configuration (itself
    /// included) has answered it within the lease: how long the majority has been silent.
    pub fn cut_off(&self) -> Option<Duration> {
        // Called on every proposal: the metrics are borrowed, not cloned.
        let (me, membership) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            if m.state != ServerState::Leader {
                return None;
            }
            (m.id, m.membership_config.clone())
        };
        let membership = membership.membership();
        let silence = |id: NodeId| {
            if id == me {
                Duration::ZERO
            } else {
                self.answers.silent_for(id)
            }
        };
        // For each configuration, the silence of its majority: the (n/2+1)-th shortest.
        let worst = membership
            .get_joint_config()
            .iter()
            .map(|voters| {
                let mut silences: Vec<Duration> = voters.iter().map(|id| silence(*id)).collect();
                silences.sort_unstable();
                silences
                    .get(voters.len() / 2)
                    .copied()
                    .unwrap_or(Duration::ZERO)
            })
            .max()
            .unwrap_or(Duration::ZERO);
        (worst > self.lease).then_some(worst)
    }

    /// Resolves once this replica, leading, has heard from no majority for the lease (checked
    /// every [`CUT_OFF_CHECK`]): a proposal in flight then has no hope of committing soon.
    pub async fn until_cut_off(&self) -> Duration {
        loop {
            if let Some(silence) = self.cut_off() {
                return silence;
            }
            tokio::time::sleep(CUT_OFF_CHECK).await;
        }
    }
}

/// How often a proposal in flight checks whether its leader was cut off.
const CUT_OFF_CHECK: Duration = Duration::from_millis(50);
