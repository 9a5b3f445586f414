//! Linearizable reads: when this replica may answer one from its own state.
//!
//! openraft's `ensure_linearizable` confirms leadership with a quorum and waits until the state
//! machine has applied `max(first entry of the leader's term, commit index)`. That is not
//! enough on a leader that restarted: openraft restores a replica whose stored vote is its own
//! committed one as leader of the same term, and its commit index is the one it last synced
//! (the commit index is a hint written without a sync; only log entries are synced before a
//! write is acknowledged). Entries of that term it committed and acknowledged just before a
//! power cut are then in its log and not yet known committed, and a read there answered from
//! the older index missed them (the chaos suite found it; `tests/cluster.rs` replays it).
//!
//! So a read is also held until this replica holds office in the current term: the leader loop
//! (`leader.rs`) has committed and applied an entry of that term, which comes after every entry
//! of the replica's log, acknowledged or not, as of taking office.
//!
//! A follower answers a linearizable read itself only when the caller says it cannot follow a
//! redirect ([`ReadAnywhere`]: the web console, whose page is served by the replica the browser
//! opened): it asks the leader for a read index (the leader confirms as above and answers how
//! far it has applied), applies as far, and reads its own state. Others are sent to the leader.

use std::time::Duration;

use tokio::sync::watch;
use tonic::Status;

use super::check_quorum::QuorumCheck;
use super::forward::Forwarder;
use super::job_service::read_error_status;
use crate::raft::Raft;
use crate::rpc::contract::cut_off_leader;

/// How long a read waits for a newly elected leader to take office before it is refused (the
/// caller retries): one commit round, normally milliseconds.
const OFFICE_WAIT: Duration = Duration::from_secs(2);

/// How long a follower's read waits for the leader's read index and then to apply as far:
/// normally one round trip and the next heartbeat.
const READ_INDEX_WAIT: Duration = Duration::from_secs(3);

/// Set in a request's extensions (in-process callers only: it cannot come over the network) by
/// a caller that cannot follow a redirect: a follower serves its linearizable read through the
/// leader's read index instead of sending it away.
#[derive(Clone, Copy, Debug)]
pub struct ReadAnywhere;

impl ReadAnywhere {
    /// Whether `request` was marked.
    pub fn asked<T>(request: &tonic::Request<T>) -> bool {
        request.extensions().get::<ReadAnywhere>().is_some()
    }
}

/// The newest term this replica took office in, as the leader loop announces it (a replica
/// that leads again in a later term holds no office until it takes that one).
#[derive(Clone)]
pub struct Office {
    term: watch::Sender<Option<u64>>,
}

impl Default for Office {
    fn default() -> Self {
        Office {
            term: watch::Sender::new(None),
        }
    }
}

impl Office {
    /// The leader loop: this replica's entry of `term` committed and is applied here.
    pub fn take(&self, term: u64) {
        self.term.send_replace(Some(term));
    }

    fn held(&self) -> watch::Receiver<Option<u64>> {
        self.term.subscribe()
    }
}

/// Answers whether a linearizable read may be served here now; cheap to clone.
#[derive(Clone)]
pub struct Reads {
    raft: Raft,
    office: Office,
    quorum: QuorumCheck,
    /// How a follower asks the leader for a read index.
    forwarder: Option<Forwarder>,
}

impl Reads {
    pub fn new(raft: Raft, office: Office, quorum: QuorumCheck) -> Self {
        Reads {
            raft,
            office,
            quorum,
            forwarder: None,
        }
    }

    /// Lets a follower serve [`ReadAnywhere`] reads through the leader's read index.
    pub fn with_read_index(mut self, forwarder: Forwarder) -> Self {
        self.forwarder = Some(forwarder);
        self
    }

    /// [`Reads::linearizable`], or with `anywhere` on a follower: once this replica has applied
    /// as far as the leader had when it confirmed it still leads, so its own state holds every
    /// write acknowledged before the call.
    pub async fn linearizable_anywhere(&self, anywhere: bool) -> Result<(), Status> {
        let leads = self.raft.metrics().borrow().state == openraft::ServerState::Leader;
        let forwarder = match &self.forwarder {
            Some(forwarder) if anywhere && !leads => forwarder,
            _ => return self.linearizable().await,
        };
        let Some((leader, node)) = forwarder.leader_elsewhere() else {
            return Err(Status::unavailable(
                "this replica follows no leader now (an election is under way, or it lost \
                 its majority), so it cannot confirm its state is current; retry in a moment",
            ));
        };
        let index = forwarder.read_index(leader, &node, READ_INDEX_WAIT).await?;
        self.raft
            .wait(Some(READ_INDEX_WAIT))
            .applied_index_at_least(Some(index), "applied as far as the read index")
            .await
            .map(|_| ())
            .map_err(|_| {
                Status::unavailable(format!(
                    "this replica has not applied the leader's entries up to {index} within \
                     {READ_INDEX_WAIT:?} (it lags); retry, or read from the leader"
                ))
            })
    }

    /// Whether this replica leads, is not cut off from its majority, and holds office in its
    /// current term, as of now and without waiting or asking its peers: its state then holds
    /// every entry committed before its term, and every entry it committed since. The leader
    /// answers from its state the calls whose only change would be a worker's sighting
    /// (`sightings.rs`); a leader deposed without knowing it yet may answer one stale, which
    /// those answers tolerate (a cancel heard one heartbeat later).
    pub fn in_office_now(&self) -> bool {
        if self.quorum.cut_off().is_some() {
            return false;
        }
        let (leads, term) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            (m.state == openraft::ServerState::Leader, m.current_term)
        };
        leads
            && self
                .office
                .term
                .borrow()
                .is_some_and(|office| office >= term)
    }

    /// Returns once this replica's state holds every write acknowledged before the call: it
    /// leads (a quorum confirmed it), has applied what was committed, and holds office in its
    /// term. A follower gets the redirect to the leader; a leader that cannot confirm or take
    /// office in time gets `UNAVAILABLE`.
    pub async fn linearizable(&self) -> Result<(), Status> {
        // A leader cut off from its majority could not confirm anyway: say so at once.
        if let Some(silence) = self.quorum.cut_off() {
            return Err(cut_off_leader(silence.as_millis() as u64));
        }
        self.raft
            .ensure_linearizable()
            .await
            .map_err(read_error_status)?;
        let term = self.raft.metrics().borrow().current_term;
        let mut held = self.office.held();
        let in_office = held.wait_for(|office| office.is_some_and(|office| office >= term));
        let waited = tokio::time::timeout(OFFICE_WAIT, in_office)
            .await
            .map(|held| held.map(|_| ()));
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Status::unavailable(
                "the replica is stopping; retry another replica",
            )),
            Err(_) => Err(Status::unavailable(format!(
                "this replica leads term {term} but has not yet committed an entry of it, so \
                 it cannot tell that its state holds every acknowledged write; retry in a \
                 moment"
            ))),
        }
    }
}
