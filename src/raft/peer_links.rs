//! Whether each peer answers this replica's Raft messages, logged once per change: a peer that
//! stops answering is one WARN (after a short grace, so a peer restarting or starting a moment
//! after this one is not a warning), its return one INFO with how long it was gone. openraft
//! retries an unreachable peer every few hundred milliseconds and logs each failure; those
//! logs are hidden by default (`main.rs`), and this is what an operator reads instead.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::NodeId;

/// How long a peer may fail before it is reported: longer than a restart of a replica takes to
/// open its peer port, shorter than anyone waits for a failover.
pub const GRACE: Duration = Duration::from_secs(2);

/// What a change of a peer's link means for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkChange {
    /// The peer has failed every message for `GRACE` or more.
    Lost { failing_for: Duration },
    /// The peer answers again after it was reported lost.
    Back { gone_for: Duration },
}

#[derive(Debug, Clone, Copy)]
struct Link {
    /// Since when every message failed (`None`: the last one was answered).
    failing_since: Option<Instant>,
    /// It was reported lost and has not answered since.
    reported: bool,
}

/// The links of one replica to its peers.
#[derive(Debug, Default)]
pub struct PeerLinks {
    links: Mutex<BTreeMap<NodeId, Link>>,
}

impl PeerLinks {
    /// A message to `peer` failed at `now`: the change to report, if this failure makes one.
    pub fn failed(&self, peer: NodeId, now: Instant) -> Option<LinkChange> {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let link = links.entry(peer).or_insert(Link {
            failing_since: None,
            reported: false,
        });
        let since = *link.failing_since.get_or_insert(now);
        let failing_for = now.saturating_duration_since(since);
        if link.reported || failing_for < GRACE {
            return None;
        }
        link.reported = true;
        Some(LinkChange::Lost { failing_for })
    }

    /// `peer` answered a message at `now`: the change to report, if it was reported lost.
    pub fn answered(&self, peer: NodeId, now: Instant) -> Option<LinkChange> {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let link = links.get_mut(&peer)?;
        let since = link.failing_since.take();
        let reported = std::mem::take(&mut link.reported);
        match (reported, since) {
            (true, Some(since)) => Some(LinkChange::Back {
                gone_for: now.saturating_duration_since(since),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_peer_is_reported_once_after_the_grace_and_its_return_once() {
        let links = PeerLinks::default();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(links.failed(2, at(0)), None);
        assert_eq!(links.failed(2, at(1_000)), None, "within the grace");
        assert_eq!(
            links.failed(2, at(2_000)),
            Some(LinkChange::Lost {
                failing_for: Duration::from_secs(2)
            })
        );
        for ms in [2_400, 5_000, 9_000] {
            assert_eq!(links.failed(2, at(ms)), None, "once, not per retry");
        }
        assert_eq!(
            links.answered(2, at(10_000)),
            Some(LinkChange::Back {
                gone_for: Duration::from_secs(10)
            })
        );
        assert_eq!(links.answered(2, at(10_100)), None);
        // Lost again: a new report after a new grace.
        assert_eq!(links.failed(2, at(11_000)), None);
        assert!(links.failed(2, at(13_000)).is_some());
    }

    #[test]
    fn a_peer_back_within_the_grace_is_never_reported() {
        let links = PeerLinks::default();
        let start = Instant::now();
        assert_eq!(links.failed(3, start), None);
        assert_eq!(
            links.answered(3, start + Duration::from_millis(1_500)),
            None
        );
        assert_eq!(links.failed(3, start + Duration::from_millis(2_500)), None);
        assert_eq!(links.answered(4, start), None, "a peer never failed");
    }
}
