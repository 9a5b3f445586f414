//! Group commit: concurrent proposals coalesce into one Raft entry.
//!
//! openraft waits for each append's flush before the next, so one command per entry would cap
//! throughput at one fsync per command. Callers hand their command to the proposer task; it takes
//! as many as are waiting (up to `max_batch`, lingering briefly for more), proposes them as one
//! [`Proposal`] stamped with this leader's clock ([`LeaderClock`]), and hands each caller its own result. Up to
//! `max_in_flight` entries are in the pipeline at once; while they are, new commands pile up and
//! form the next, larger batch.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, OwnedRwLockWriteGuard, RwLock, Semaphore};
use tracing::{debug, warn};

use super::check_quorum::QuorumCheck;
use super::clock::LeaderClock;
use super::forward::Forwarder;
use super::observe::ProposalMetrics;
use crate::config::ProposalSettings;
use crate::queue::{Command, CommandResult};
use crate::raft::election::LeaderContact;
use crate::raft::{NodeId, Proposal, Raft, ReplicaNode};

/// Why a command got no result from the log. Travels from leader to follower with a forwarded
/// command's answer (`forward.rs`).
#[derive(Debug, Clone, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ProposeError {
    #[error("this replica is not the leader")]
    NotLeader {
        leader_id: Option<NodeId>,
        leader: Option<ReplicaNode>,
    },
    /// CheckQuorum: this replica leads but has heard from no majority for the lease.
    #[error("this replica has heard from no majority for {silent_ms} ms")]
    CutOff { silent_ms: u64 },
    #[error("the replica is shutting down")]
    ShuttingDown,
    #[error("raft could not commit the proposal: {0}")]
    Raft(String),
}

/// What a follower does with a command an API caller brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFollower {
    /// Refuses it with the leader's address (DESIGN.md's leader redirect).
    Redirect,
    /// Carries it to the leader (`forward.rs`): the caller asked, with `x-scaleout-forward`.
    Forward,
}

impl OnFollower {
    /// What the caller of a request with `metadata` asked for.
    pub fn asked_in(metadata: &tonic::metadata::MetadataMap) -> OnFollower {
        if crate::rpc::contract::asks_forwarding(metadata) {
            OnFollower::Forward
        } else {
            OnFollower::Redirect
        }
    }
}

/// How long a call that reaches a replica during an election waits for a leader to be known.
const ELECTION_WAIT: Duration = Duration::from_millis(500);

/// How long a proposal may wait for its commit before its callers are told the outcome is
/// unknown (they retry with the same idempotency key).
pub(super) const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Leaders a forwarded command is sent to before the caller is redirected instead: each one
/// that refuses proposed nothing (a hand-over, an election under way).
const MAX_FORWARD_HOPS: usize = 3;

struct Pending {
    command: Command,
    /// Encoded size, measured in the caller's task so the batcher only adds.
    bytes: usize,
    reply: oneshot::Sender<Result<CommandResult, ProposeError>>,
}

/// The handle services use to propose commands.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Pending>,
    clock: Arc<LeaderClock>,
    quorum: QuorumCheck,
    /// Held for reading by every batch on its way to Raft; a hand-over holds it for writing.
    gate: Arc<RwLock<()>>,
    raft: Raft,
    /// Whether this replica saw its leader's process go (`raft::leader_watch`).
    contact: Option<Arc<LeaderContact>>,
    /// Carries API callers' commands to the leader while this replica follows.
    forwarder: Option<Forwarder>,
}

impl Proposer {
    /// Starts the batching task; it ends when every handle is dropped. A batch holds at most
    /// `max_batch_bytes` of encoded commands (but always at least one command), so one log
    /// entry always fits in one replica-to-replica message.
    /// `outbox_limit` goes into every proposal (see `queue::outbox`).
    pub(crate) fn start(
        raft: Raft,
        settings: &ProposalSettings,
        max_batch_bytes: usize,
        outbox_limit: u64,
        metrics: ProposalMetrics,
        clock: Arc<LeaderClock>,
        quorum: QuorumCheck,
    ) -> Proposer {
        let (tx, rx) = mpsc::channel(settings.max_batch.max(1) * 4);
        let gate = Arc::new(RwLock::new(()));
        let batcher = Batcher {
            gate: gate.clone(),
            quorum: quorum.clone(),
            raft: raft.clone(),
            max_batch: settings.max_batch.max(1),
            max_batch_bytes,
            linger: Duration::from_micros(settings.linger_us),
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
            outbox_limit,
            metrics,
            clock: clock.clone(),
        };
        tokio::spawn(batcher.run(rx));
        Proposer {
            queue: tx,
            clock,
            quorum,
            gate,
            raft,
            contact: None,
            forwarder: None,
        }
    }

    /// Commands proposed through [`Proposer::propose`] on a follower go to the leader through
    /// `forwarder` instead of being refused with a redirect.
    pub fn with_forwarding(mut self, forwarder: Forwarder) -> Self {
        self.forwarder = Some(forwarder);
        self
    }

    /// Treats a leader this replica saw go as no leader: a call waits for its successor
    /// instead of being redirected to a dead address.
    pub fn with_leader_contact(mut self, contact: Arc<LeaderContact>) -> Self {
        self.contact = Some(contact);
        self
    }

    /// Waits while a hand-over has proposals paused; holding the guard keeps the next one from
    /// starting (for log writes that do not go through the proposer: membership changes).
    pub async fn open(&self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.gate.clone().read_owned().await
    }

    /// Pauses proposals until the guard is dropped: resolves once every batch already on its
    /// way to Raft has its outcome; later ones wait (a leader hand-over, `handover.rs`).
    pub async fn pause(&self) -> OwnedRwLockWriteGuard<()> {
        self.gate.clone().write_owned().await
    }

    /// The clock proposals are stamped with.
    pub fn clock(&self) -> &LeaderClock {
        &self.clock
    }

    /// What a proposal made now is stamped with: this leader's idea of cluster time.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Proposes one command an API caller brought and waits until it is committed and applied:
    /// here on the leader. On a follower, `on_follower` says whether it is refused with the
    /// leader's address (NOT_LEADER) or carried to the leader (`forward.rs`), and then refused
    /// only when no leader can be reached that way.
    pub async fn propose(
        &self,
        command: Command,
        on_follower: OnFollower,
    ) -> Result<CommandResult, ProposeError> {
        let forwarder = match (&self.forwarder, on_follower) {
            (Some(forwarder), OnFollower::Forward) => forwarder,
            _ => return self.propose_here(command).await,
        };
        self.await_election().await;
        // The last refusal and who sent it: that leader's view of who leads now.
        let mut refusal: Option<(NodeId, ProposeError)> = None;
        for _ in 0..MAX_FORWARD_HOPS {
            let Some((leader, node)) = forwarder.leader_elsewhere() else {
                break;
            };
            if refusal.as_ref().is_some_and(|(by, _)| *by == leader) {
                // Refused by this leader already, and no other known since.
                break;
            }
            match forwarder.forward(leader, &node, &command).await {
                // It proposed nothing: the command may go on, to the leader this replica
                // learns of next (forwarding to one only the refusing leader knows would end
                // at once: this replica waits no longer than the reign it sees).
                Err(refused @ ProposeError::NotLeader { .. }) => {
                    refusal = Some((leader, refused));
                    self.await_leader_other_than(leader).await;
                }
                answer => return answer,
            }
        }
        let leading = self.raft.metrics().borrow().state == openraft::ServerState::Leader;
        match refusal {
            Some((_, refused)) if !leading => Err(refused),
            _ => self.propose_here(command).await,
        }
    }

    /// Waits up to [`ELECTION_WAIT`] for this replica to lead or to follow another leader than
    /// `old`.
    async fn await_leader_other_than(&self, old: NodeId) {
        let contact = self.contact.clone();
        let _ = self
            .raft
            .wait(Some(ELECTION_WAIT))
            .metrics(
                move |m| {
                    m.state == openraft::ServerState::Leader
                        || m.current_leader.is_some_and(|leader| {
                            leader != old
                                && !contact
                                    .as_ref()
                                    .is_some_and(|contact| contact.leader_lost(m))
                        })
                },
                "another leader known",
            )
            .await;
    }

    /// Proposes one command on this replica, never forwarding it (the leader's own duties, and
    /// commands a follower forwarded here), and waits until it is committed and applied. A
    /// leader cut off from its majority refuses at once (`check_quorum.rs`) instead of holding
    /// the caller until the commit timeout.
    pub async fn propose_here(&self, command: Command) -> Result<CommandResult, ProposeError> {
        self.await_election().await;
        if let Some(silence) = self.quorum.cut_off() {
            return Err(ProposeError::CutOff {
                silent_ms: silence.as_millis() as u64,
            });
        }
        let (reply, result) = oneshot::channel();
        let bytes = bincode::serialized_size(&command).map_or(usize::MAX, |n| n as usize);
        self.queue
            .send(Pending {
                command,
                bytes,
                reply,
            })
            .await
            .map_err(|_| ProposeError::ShuttingDown)?;
        result.await.map_err(|_| ProposeError::ShuttingDown)?
    }

    /// During an election (no leader known, or the one known is gone), waits up to
    /// [`ELECTION_WAIT`] for one, so the caller is told where the new leader is (or this
    /// replica, elected, takes the command) instead of being sent away to poll the others.
    async fn await_election(&self) {
        let contact = self.contact.clone();
        let electing = move |m: &openraft::RaftMetrics<NodeId, ReplicaNode>| {
            m.state != openraft::ServerState::Leader
                && (m.current_leader.is_none()
                    || contact
                        .as_ref()
                        .is_some_and(|contact| contact.leader_lost(m)))
        };
        if !electing(&self.raft.metrics().borrow()) {
            return;
        }
        let _ = self
            .raft
            .wait(Some(ELECTION_WAIT))
            .metrics(|m| !electing(m), "a leader known")
            .await;
    }
}

struct Batcher {
    gate: Arc<RwLock<()>>,
    quorum: QuorumCheck,
    raft: Raft,
    max_batch: usize,
    max_batch_bytes: usize,
    linger: Duration,
    in_flight: Arc<Semaphore>,
    outbox_limit: u64,
    metrics: ProposalMetrics,
    clock: Arc<LeaderClock>,
}

impl Batcher {
    async fn run(self, mut rx: mpsc::Receiver<Pending>) {
        // A command that did not fit the previous batch starts the next one.
        let mut carried: Option<Pending> = None;
        loop {
            let first = match carried.take() {
                Some(pending) => pending,
                None => match rx.recv().await {
                    Some(pending) => pending,
                    None => return,
                },
            };
            // Waiting for a pipeline slot before gathering is what makes batches grow under load.
            let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
                return;
            };
            let mut bytes = first.bytes;
            let mut batch = vec![first];
            let linger_until = tokio::time::Instant::now() + self.linger;
            while batch.len() < self.max_batch {
                let next = match rx.try_recv() {
                    Ok(pending) => Some(pending),
                    Err(_) if self.linger.is_zero() => None,
                    Err(_) => tokio::time::timeout_at(linger_until, rx.recv())
                        .await
                        .ok()
                        .flatten(),
                };
                let Some(pending) = next else { break };
                if bytes.saturating_add(pending.bytes) > self.max_batch_bytes {
                    carried = Some(pending);
                    break;
                }
                bytes += pending.bytes;
                batch.push(pending);
            }
            let raft = self.raft.clone();
            let outbox_limit = self.outbox_limit;
            let metrics = self.metrics.clone();
            // Stamped here, in gathering order; apply keeps cluster time from going backwards
            // when concurrent batches commit in another order.
            let now_ms = self.clock.now_ms();
            let gate = self.gate.clone();
            let quorum = self.quorum.clone();
            tokio::spawn(async move {
                let open = gate.read_owned().await;
                commit(raft, &quorum, batch, now_ms, outbox_limit, &metrics).await;
                drop(open);
                drop(permit);
            });
        }
    }
}

async fn commit(
    raft: Raft,
    quorum: &QuorumCheck,
    batch: Vec<Pending>,
    now_ms: u64,
    outbox_limit: u64,
    metrics: &ProposalMetrics,
) {
    let (commands, replies): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    let count = commands.len();
    metrics.entries.increment(1);
    metrics.commands.increment(count as u64);
    metrics.batch_commands.record(count as f64);
    let proposal = Proposal {
        now_ms,
        outbox_limit,
        commands,
    };
    // openraft answers only once the entry commits or is truncated; a leader cut off from the
    // majority would hold its callers (and a pipeline slot) forever without a bound. Once
    // CheckQuorum says it is cut off, its callers are told at once (the outcome is unknown:
    // they retry elsewhere with the same idempotency key); the timeout bounds the rest.
    let outcome = tokio::select! {
        outcome = raft.client_write(proposal) => outcome.map_err(classify),
        silence = quorum.until_cut_off() => Err(ProposeError::CutOff {
            silent_ms: silence.as_millis() as u64,
        }),
        () = tokio::time::sleep(COMMIT_TIMEOUT) => Err(ProposeError::Raft(format!(
            "not committed within {COMMIT_TIMEOUT:?}; the outcome is unknown"
        ))),
    };
    match outcome {
        Ok(response) => {
            debug!(
                log_index = response.log_id.index,
                commands = count,
                "batch committed"
            );
            let mut results = response.data.results.into_iter();
            for reply in replies {
                let result = results.next().ok_or_else(|| {
                    ProposeError::Raft(
                        "the state machine returned fewer results than commands".into(),
                    )
                });
                let _ = reply.send(result);
            }
        }
        Err(error) => {
            metrics.errors.increment(1);
            if !matches!(
                error,
                ProposeError::NotLeader { .. } | ProposeError::CutOff { .. }
            ) {
                warn!(%error, commands = count, "proposal failed");
            }
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

fn classify(error: RaftError<NodeId, ClientWriteError<NodeId, ReplicaNode>>) -> ProposeError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            ProposeError::NotLeader {
                leader_id: forward.leader_id,
                leader: forward.leader_node,
            }
        }
        RaftError::Fatal(openraft::error::Fatal::Stopped) => ProposeError::ShuttingDown,
        other => ProposeError::Raft(other.to_string()),
    }
}
