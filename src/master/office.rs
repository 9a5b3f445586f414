//! Who holds office: the term in which this replica has committed an entry as leader.
//!
//! `metrics().state == Leader` is not proof of leading: a replica cut off from its peers, or an
//! old leader just restarted, believes it leads until it hears otherwise. The leader loop
//! (`leader.rs`) takes office for term T only once its first entry of T has committed (a
//! majority accepted T, and every entry of earlier terms is applied here), and leaves it as soon
//! as the role or the term changes. Duties that act outside Raft (shipping to SSISDB) wait for
//! office and carry its term, so the database can refuse a writer whose term is older than one
//! it has seen.

use std::sync::Arc;

use tokio::sync::watch;

use crate::raft::Raft;

/// The office this replica holds, shared by the leader loop (which takes and leaves it) and the
/// duties that need it.
#[derive(Clone)]
pub struct Office {
    term: Arc<watch::Sender<Option<u64>>>,
}

impl Default for Office {
    fn default() -> Self {
        Office::new()
    }
}

impl Office {
    /// Not in office.
    pub fn new() -> Office {
        Office {
            term: Arc::new(watch::channel(None).0),
        }
    }

    /// The leader loop committed its first entry of `term`.
    pub(crate) fn take(&self, term: u64) {
        self.term.send_replace(Some(term));
    }

    /// The leader loop saw the role or the term change.
    pub(crate) fn leave(&self) {
        self.term.send_replace(None);
    }

    /// The term of office when this replica took office and still leads in that same term.
    pub fn held(&self, raft: &Raft) -> Option<u64> {
        let term = (*self.term.borrow())?;
        let metrics = raft.metrics();
        let m = metrics.borrow();
        (m.state == openraft::ServerState::Leader && m.current_term == term).then_some(term)
    }

    /// Returns once this replica no longer holds office in `term` (the role, the term or the
    /// office changed), so a duty can abandon what it does in that term's name.
    pub async fn lost(&self, raft: &Raft, term: u64) {
        let mut metrics = raft.metrics();
        let mut office = self.term.subscribe();
        while self.held(raft) == Some(term) {
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return },
                changed = office.changed() => if changed.is_err() { return },
            }
        }
    }
}
