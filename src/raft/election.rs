//! When this replica stands for election. openraft's own timer draws its random election
//! timeout once per process and checks it on a 1.5-heartbeat tick, so two survivors whose
//! draws are close collide round after round (a split vote each time) and every failover pays
//! the tick's granularity. Here openraft's timer is off (`enable_elect = false`) and this
//! driver triggers the election instead, with a fresh random wait for every attempt, checked
//! every few milliseconds.
//!
//! The waits keep openraft's rules: after the last contact with a leader, first the leader
//! lease (`election_timeout_max`: until it runs out, the other voters refuse to vote), then a
//! random part; after an attempt that did not make a leader, a whole random election timeout
//! before the next. Any AppendEntries or snapshot from a leader, and any vote this replica
//! grants, restarts the wait ([`LeaderContact::touch`], called by the peer service).
//!
//! One openraft rule is left out: openraft adds twice `election_timeout_max` after a vote was
//! refused for a shorter log. A lagging survivor here retries every random timeout and may
//! push the up-to-date one to a higher term first; the up-to-date one still wins on its own
//! timeout, so this costs an extra round in that case, not safety.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use openraft::ServerState;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use std::collections::BTreeSet;

use super::admission::Admission;
use super::leader_watch;
use super::lease::{self, LeaderTerm};
use super::pre_vote::{self, PreVoteReply, PreVoteRequest};
use super::{NodeId, PeerNetwork, Raft, ReplicaNode};
use crate::pb::raft::raft_service_client::RaftServiceClient;

/// How often the driver looks at the clock.
const CHECK_EVERY: Duration = Duration::from_millis(10);

/// When this replica last heard from a leader, and when its election wait last restarted.
#[derive(Debug)]
pub struct LeaderContact {
    base: Instant,
    /// The election wait: a leader's message, a vote granted, or this replica's own attempt.
    last_ms: AtomicU64,
    /// A leader's message only: what a pre-vote is answered by (`pre_vote.rs`). A vote granted
    /// or an attempt of its own must not count, or after a split vote each survivor would
    /// refuse the other's pre-vote for a whole lease, round after round.
    leader_ms: AtomicU64,
    /// The leader whose process this replica saw go, and its term (`leader_watch.rs`).
    gone: tokio::sync::watch::Sender<Option<(NodeId, u64)>>,
}

impl Default for LeaderContact {
    fn default() -> Self {
        LeaderContact {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            leader_ms: AtomicU64::new(0),
            gone: tokio::sync::watch::channel(None).0,
        }
    }
}

impl LeaderContact {
    /// Restarts the election wait (a vote granted, an attempt made).
    pub fn touch(&self) {
        let now = self.base.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// A message from the current leader: restarts the election wait and the lease a pre-vote
    /// is refused for.
    pub fn heard_leader(&self) {
        let now = self.base.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(now, Ordering::Relaxed);
        self.leader_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// This replica saw the process of `leader`, its leader in `term`, go away.
    pub fn leader_gone(&self, leader: NodeId, term: u64) {
        self.gone.send_replace(Some((leader, term)));
    }

    /// Whether this replica saw `leader` of `term` go away.
    pub fn is_gone(&self, leader: NodeId, term: u64) -> bool {
        *self.gone.borrow() == Some((leader, term))
    }

    /// Whether the leader this replica follows now (in `m`) is one it saw go.
    pub fn leader_lost(&self, m: &openraft::RaftMetrics<NodeId, ReplicaNode>) -> bool {
        m.current_leader
            .is_some_and(|leader| self.is_gone(leader, m.current_term))
    }

    /// Waits up to `within` until this replica sees `leader` of `term` go away (a candidate
    /// that saw it first asks before this replica's own line has broken); whether it did.
    pub async fn wait_gone(&self, leader: NodeId, term: u64, within: Duration) -> bool {
        let mut seen = self.gone.subscribe();
        tokio::time::timeout(within, seen.wait_for(|gone| *gone == Some((leader, term))))
            .await
            .is_ok_and(|seen| seen.is_ok())
    }

    /// How long the election wait has run.
    pub fn since(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }

    /// How long ago this replica last heard from a leader (since it started, if never).
    pub fn since_leader(&self) -> Duration {
        let last = Duration::from_millis(self.leader_ms.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }
}

/// How often a replica that no quorum would vote for says so again.
const LOSING_REMINDER: Duration = Duration::from_secs(60);

/// The election timing, from `[raft]`.
#[derive(Debug, Clone, Copy)]
pub struct ElectionTiming {
    pub timeout_min: Duration,
    pub timeout_max: Duration,
    /// openraft's own lease (`lease.rs`): a replica whose leader's process is gone stands once
    /// it has heard nothing for this long (the voters' openraft refuses until then).
    pub openraft_lease: Duration,
}

/// When the leader's process is gone every follower sees it at the same moment; standing all
/// at once would split the vote. They stand in turn, by id, this far apart: enough for the
/// first one's vote request to arrive before the next one's turn.
const TURN: Duration = Duration::from_millis(50);

/// How long after the leader's last message this replica may stand once it knows the leader's
/// process is gone: openraft's lease, then its turn among the surviving voters.
fn fast_wait(timing: &ElectionTiming, me: NodeId, gone: NodeId, voters: &[NodeId]) -> Duration {
    let turn = voters.iter().filter(|id| **id != gone && **id < me).count() as u32;
    timing.openraft_lease + lease::MARGIN + TURN * turn
}

/// This replica's turn among the voters that may stand when `leader` falls silent (all of them
/// but the leader, by id), and how many turns there are.
fn silent_leader_turn(me: NodeId, leader: Option<NodeId>, voters: &[NodeId]) -> (u32, u32) {
    let mut standing: Vec<NodeId> = voters
        .iter()
        .copied()
        .filter(|id| Some(*id) != leader)
        .collect();
    standing.sort_unstable();
    let turn = standing.iter().position(|id| *id == me).unwrap_or(0);
    (turn as u32, standing.len().max(1) as u32)
}

impl ElectionTiming {
    /// The wait after losing a leader: the lease, then this replica's `turn` of `turns`. The
    /// width of the timeout range is cut into one slot per voter that may stand, and the wait
    /// falls at random in the first three fifths of its own slot: followers that lost their
    /// leader at the same moment stand at least a fifth of a slot apart, time for the first
    /// one's vote requests to arrive, instead of splitting the vote now and then (two random
    /// draws over the whole range came within a vote's round trip in about one failover in
    /// thirty on a loaded 2-core machine, and the election took a second round).
    fn first_wait(&self, rng: &mut impl Rng, turn: u32, turns: u32) -> Duration {
        let spread = self.timeout_max.saturating_sub(self.timeout_min);
        let slot = spread / turns.max(1);
        self.timeout_max + slot * turn.min(turns) + rng.gen_range(Duration::ZERO..=slot * 3 / 5)
    }

    /// The wait after an attempt that made no leader.
    fn retry_wait(&self, rng: &mut impl Rng) -> Duration {
        rng.gen_range(self.timeout_min..=self.timeout_max)
    }
}

/// Runs until the node shuts down: triggers an election whenever this voter has gone its
/// random wait without a leader. A replica stands only as the admitted member (`admission.rs`):
/// a wiped one listed with its old data dir never does.
pub async fn drive(
    raft: Raft,
    network: PeerNetwork,
    contact: Arc<LeaderContact>,
    timing: ElectionTiming,
    admission: Admission,
) {
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut wait = timing.first_wait(&mut rng, 0, 1);
    // Pre-votes are being lost: said when it starts, then once a minute, not every round.
    let mut losing: Option<Instant> = None;
    // The gone leader (and term) this replica already stood fast against.
    let mut fast_tried: Option<(NodeId, u64)> = None;
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let (leading, voter, leader, term, me, voters) = {
            let m = raft.metrics().borrow().clone();
            let membership = m.membership_config.membership();
            (
                m.state == ServerState::Leader,
                admission.may_vote(membership),
                m.current_leader.filter(|leader| *leader != m.id),
                m.current_term,
                m.id,
                membership.voter_ids().collect::<Vec<_>>(),
            )
        };
        let has_leader = leader.is_some();
        // The leader's process is gone (`leader_watch.rs`): no need to wait out the lease.
        // One fast attempt per leader gone; if it makes no leader, the usual waits apply.
        let gone = leader
            .filter(|leader| contact.is_gone(*leader, term))
            .filter(|leader| fast_tried != Some((*leader, term)));
        let fast = gone
            .is_some_and(|gone| contact.since_leader() >= fast_wait(&timing, me, gone, &voters));
        if leading || !voter || (has_leader && contact.since() < wait && !fast) {
            if leading {
                contact.heard_leader();
            }
            // Only a leader heard from ends a losing streak: a replica restarted alone knows the
            // leader of its last term, dead or not.
            let heard = leader.is_some_and(|leader| !contact.is_gone(leader, term))
                && contact.since_leader() < wait;
            if leading || heard {
                losing = None;
            }
            if leading || has_leader {
                // A leader exists: the next loss starts with a whole lease and a fresh draw
                // in this replica's turn.
                let (turn, turns) = silent_leader_turn(me, leader, &voters);
                wait = timing.first_wait(&mut rng, turn, turns);
            }
            continue;
        }
        if contact.since() < wait && !fast {
            continue;
        }
        // Pre-Vote: stand only where a quorum would vote (`pre_vote.rs`); otherwise wait a
        // whole random timeout and ask again, with the term unchanged.
        let gone = gone.filter(|_| fast).map(|leader| (leader, term));
        if gone.is_some() {
            fast_tried = gone;
        }
        let asked = Instant::now();
        let (granted, refusals) =
            ask_for_pre_votes(&raft, &network, timing.timeout_min, gone).await;
        // The answers take up to a pre-vote timeout to come in (a frozen voter never answers);
        // a leader elected meanwhile would be deposed by standing on them.
        if contact.since_leader() < asked.elapsed() {
            debug!("a leader was heard while the pre-votes came in; not standing");
            continue;
        }
        // Nor one that granted its vote to another candidate meanwhile: when a dead leader is
        // noticed late, the survivors' turns (`fast_wait`) have all passed at once, and the next
        // in turn would otherwise stand against the first one's election, a term later.
        if raft.metrics().borrow().current_term != term {
            debug!(
                term,
                "the term moved on while the pre-votes came in; not standing"
            );
            continue;
        }
        if !granted {
            if losing.is_none_or(|said| said.elapsed() >= LOSING_REMINDER) {
                losing = Some(Instant::now());
                info!(
                    silent_ms = contact.since().as_millis() as u64,
                    refusals = %refusals.join("; "),
                    "no leader heard from, but no quorum would vote for this replica; not \
                     standing for election (asking again every election timeout)"
                );
            }
            contact.touch();
            wait = timing.retry_wait(&mut rng);
            continue;
        }
        losing = None;
        match gone {
            Some((leader, term)) => info!(
                leader,
                term,
                silent_ms = contact.since_leader().as_millis() as u64,
                "the leader's process is gone and a quorum would vote; standing for election"
            ),
            None => info!(
                silent_ms = contact.since().as_millis() as u64,
                "no leader heard from and a quorum would vote; standing for election"
            ),
        }
        if let Err(fatal) = raft.trigger().elect().await {
            warn!(error = %fatal, "the Raft node stopped; no more elections");
            return;
        }
        contact.touch();
        wait = timing.retry_wait(&mut rng);
        debug!(next_wait_ms = wait.as_millis() as u64, "election triggered");
    }
}

/// Asks every other voter of the membership whether it would vote for this replica, each within
/// `timeout`, telling them which leader it saw go (`gone`); returns whether a quorum (this
/// replica included) would, and the refusals.
async fn ask_for_pre_votes(
    raft: &Raft,
    network: &PeerNetwork,
    timeout: Duration,
    gone: Option<(NodeId, u64)>,
) -> (bool, Vec<String>) {
    let (me, membership) = {
        let m = raft.metrics().borrow().clone();
        (m.id, m.membership_config.membership().clone())
    };
    let request = PreVoteRequest {
        candidate: me,
        last_log_id: raft.data_metrics().borrow().last_log,
    };
    let voters: Vec<(NodeId, ReplicaNode)> = membership
        .voter_ids()
        .filter(|id| *id != me)
        .filter_map(|id| membership.get_node(&id).map(|node| (id, node.clone())))
        .collect();
    let asks = voters.into_iter().map(|(id, node)| {
        let request = request.clone();
        let network = network.clone();
        async move {
            let answer =
                tokio::time::timeout(timeout, ask_one(&network, id, &node, &request, gone))
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!("no answer within {} ms", timeout.as_millis()))
                    });
            (id, answer)
        }
    });
    let mut granted = BTreeSet::from([me]);
    let mut refusals = Vec::new();
    let mut answers: futures::stream::FuturesUnordered<_> = asks.collect();
    // Done as soon as a quorum would vote: a voter that does not answer (frozen, cut off) must
    // not hold the election up for the whole timeout.
    while !pre_vote::is_quorum(&membership, &granted) {
        let Some((id, answer)) = answers.next().await else {
            break;
        };
        match answer {
            Ok(reply) if reply.granted => {
                granted.insert(id);
            }
            Ok(reply) => refusals.push(format!("replica {id}: {}", reply.reason)),
            Err(error) => refusals.push(format!("replica {id}: {error}")),
        }
    }
    (pre_vote::is_quorum(&membership, &granted), refusals)
}

/// One voter's pre-vote answer, or why there is none.
async fn ask_one(
    network: &PeerNetwork,
    id: NodeId,
    node: &ReplicaNode,
    request: &PreVoteRequest,
    gone: Option<(NodeId, u64)>,
) -> Result<PreVoteReply, String> {
    let channel = network
        .channel_to(id, &node.peer_addr)
        .map_err(|e| format!("cannot dial {}: {e}", node.peer_addr))?;
    let mut call = super::peer_request(node, request)?;
    if let Some((leader, term)) = gone {
        LeaderTerm { leader, term }
            .insert_into(call.metadata_mut(), leader_watch::LEADER_GONE_HEADER);
    }
    let reply = match RaftServiceClient::new(channel).pre_vote(call).await {
        Ok(reply) => reply.into_inner(),
        // A replica of a build before Pre-Vote (a rolling upgrade): it would have voted as
        // openraft decides, so it counts as a grant, as without Pre-Vote. Refusing here could
        // leave the only up-to-date replica unable to stand.
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            return Ok(PreVoteReply {
                granted: true,
                reason: String::new(),
            })
        }
        Err(status) => return Err(status.message().to_string()),
    };
    bincode::deserialize(&reply.data).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_follow_openraft_rules_and_vary() {
        let timing = ElectionTiming {
            timeout_min: Duration::from_millis(250),
            timeout_max: Duration::from_millis(500),
            openraft_lease: Duration::from_millis(102),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let firsts: Vec<Duration> = (0..200)
            .map(|_| timing.first_wait(&mut rng, 0, 1))
            .collect();
        assert!(firsts
            .iter()
            .all(|w| *w >= Duration::from_millis(500) && *w <= Duration::from_millis(650)));
        // Two followers of a silent leader: one slot each, a fifth of a slot apart at least.
        let (first, second) = (
            silent_leader_turn(1, Some(2), &[1, 2, 3]),
            silent_leader_turn(3, Some(2), &[1, 2, 3]),
        );
        assert_eq!((first, second), ((0, 2), (1, 2)));
        for _ in 0..200 {
            let a = timing.first_wait(&mut rng, first.0, first.1);
            let b = timing.first_wait(&mut rng, second.0, second.1);
            assert!(a >= Duration::from_millis(500) && a <= Duration::from_millis(575));
            assert!(b >= Duration::from_millis(625) && b <= Duration::from_millis(700));
        }
        let retries: Vec<Duration> = (0..200).map(|_| timing.retry_wait(&mut rng)).collect();
        assert!(retries
            .iter()
            .all(|w| *w >= Duration::from_millis(250) && *w <= Duration::from_millis(500)));
        // Fresh draws: no two survivors keep colliding on the same value.
        let distinct: std::collections::BTreeSet<_> = retries.iter().collect();
        assert!(distinct.len() > 100);
    }

    #[test]
    fn survivors_of_a_gone_leader_stand_in_turn_by_id() {
        let timing = ElectionTiming {
            timeout_min: Duration::from_millis(250),
            timeout_max: Duration::from_millis(500),
            openraft_lease: Duration::from_millis(102),
        };
        let voters = [1, 2, 3, 4, 5];
        let waits: Vec<u64> = [1, 3, 4, 5]
            .iter()
            .map(|me| fast_wait(&timing, *me, 2, &voters).as_millis() as u64)
            .collect();
        assert_eq!(waits, vec![112, 162, 212, 262]);
        // Every turn comes well before the lease would have run out.
        assert!(fast_wait(&timing, 3, 1, &[1, 2, 3]) < timing.timeout_max);
    }

    #[tokio::test]
    async fn only_a_leader_restarts_the_pre_vote_lease() {
        let contact = LeaderContact::default();
        contact.heard_leader();
        tokio::time::sleep(Duration::from_millis(30)).await;
        contact.touch();
        assert!(contact.since() < Duration::from_millis(20));
        assert!(contact.since_leader() >= Duration::from_millis(20));
        contact.heard_leader();
        assert!(contact.since_leader() < Duration::from_millis(20));
    }

    #[tokio::test]
    async fn contact_measures_silence() {
        let contact = LeaderContact::default();
        contact.touch();
        assert!(contact.since() < Duration::from_millis(50));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(contact.since() >= Duration::from_millis(20));
        contact.touch();
        assert!(contact.since() < Duration::from_millis(20));
    }
}
