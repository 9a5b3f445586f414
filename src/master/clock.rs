//! The leader's clock: the time stamped into every proposal, which becomes cluster time when it
//! is applied (leases, retry delays, event times).
//!
//! A wall clock can step (NTP, a VM resume, an operator): stamped as read, a forward step on the
//! leader would expire every live lease at once. So the wall clock is read once per term, when
//! this replica starts leading, and stamps then advance with the monotonic clock (which never
//! steps) from that reading. A step inside a term changes nothing; the next term re-reads the
//! wall clock, and its first entry (`ExtendLeases`, see `leader.rs`) gives every live lease a
//! whole lease interval from the new reading, so a jump between terms expires nothing either.
//!
//! A term's starting reading is also never behind the cluster time already applied (time does
//! not go backwards, and apply clamps it anyway), and never more than `max_clock_jump_ms`
//! ahead of it: a replica whose wall clock is wildly wrong (a year ahead) cannot move the
//! cluster's time that far; it moves on from the last applied time plus the bound, and says so.
//!
//! The wall clock is injectable ([`WallClock`]): tests step it, and the chaos suite steps a
//! replica's clock through a test-only offset file (`workers.test_clock_offset_file`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

/// A wall clock: milliseconds since the Unix epoch.
pub trait WallClock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// The system's real-time clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemWallClock;

impl WallClock for SystemWallClock {
    fn now_ms(&self) -> u64 {
        crate::wall_time::now_ms()
    }
}

/// Test only: the system clock plus a signed offset in ms read from a file (re-read at most
/// every 50 ms), so a chaos run can step one replica's clock without root.
#[derive(Debug)]
pub struct OffsetFileClock {
    path: PathBuf,
    cached: Mutex<Option<(std::time::Instant, i64)>>,
}

const OFFSET_REREAD: Duration = Duration::from_millis(50);

impl OffsetFileClock {
    pub fn new(path: PathBuf) -> Self {
        OffsetFileClock {
            path,
            cached: Mutex::new(None),
        }
    }

    fn offset_ms(&self) -> i64 {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        match *cached {
            Some((read_at, offset)) if read_at.elapsed() < OFFSET_REREAD => offset,
            _ => {
                // A missing or unreadable file means no offset: the file is written by a test.
                let offset = std::fs::read_to_string(&self.path)
                    .ok()
                    .and_then(|text| text.trim().parse::<i64>().ok())
                    .unwrap_or(0);
                *cached = Some((std::time::Instant::now(), offset));
                offset
            }
        }
    }
}

impl WallClock for OffsetFileClock {
    fn now_ms(&self) -> u64 {
        SystemWallClock
            .now_ms()
            .saturating_add_signed(self.offset_ms())
    }
}

/// The time this replica stamps on what it proposes (see the module docs).
pub struct LeaderClock {
    wall: Arc<dyn WallClock>,
    /// How far a term's starting reading may be ahead of the applied cluster time; 0: no bound.
    max_jump_ms: u64,
    current: Mutex<TermTime>,
}

#[derive(Debug, Clone, Copy)]
struct TermTime {
    term: Option<u64>,
    base_ms: u64,
    started: Instant,
    /// The last stamp handed out: stamps never go backwards within this process.
    last_ms: u64,
}

impl LeaderClock {
    pub fn new(wall: Arc<dyn WallClock>, max_jump_ms: u64) -> Self {
        let base_ms = wall.now_ms();
        LeaderClock {
            wall,
            max_jump_ms,
            current: Mutex::new(TermTime {
                term: None,
                base_ms,
                started: Instant::now(),
                last_ms: 0,
            }),
        }
    }

    pub fn system(max_jump_ms: u64) -> Self {
        LeaderClock::new(Arc::new(SystemWallClock), max_jump_ms)
    }

    /// Starts `term`'s time from the wall clock, kept between the cluster time already applied
    /// (`applied_ms`) and that plus the jump bound. Called once when this replica starts leading
    /// `term`; again for the same term, it changes nothing.
    pub fn begin_term(&self, term: u64, applied_ms: u64) -> u64 {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.term == Some(term) {
            return stamp(&mut current);
        }
        let wall = self.wall.now_ms();
        let floor = applied_ms.max(current.last_ms);
        let mut base = wall.max(floor);
        if self.max_jump_ms > 0 && base > floor.saturating_add(self.max_jump_ms) && floor > 0 {
            warn!(
                term,
                wall_ms = wall,
                cluster_time_ms = floor,
                ahead_ms = wall - floor,
                max_clock_jump_ms = self.max_jump_ms,
                "this replica's wall clock is far ahead of the cluster's time: time moves on from \
                 the cluster's time plus workers.max_clock_jump_ms instead; check NTP on this \
                 host (if the whole cluster was really down that long, raise the bound)"
            );
            base = floor.saturating_add(self.max_jump_ms);
        } else if wall < floor {
            info!(
                term,
                wall_ms = wall,
                cluster_time_ms = floor,
                behind_ms = floor - wall,
                "this replica's wall clock is behind the cluster's time: time moves on from the \
                 cluster's time"
            );
        }
        *current = TermTime {
            term: Some(term),
            base_ms: base,
            started: Instant::now(),
            last_ms: current.last_ms,
        };
        stamp(&mut current)
    }

    /// The stamp for a proposal made now: the term's base plus monotonic time since.
    pub fn now_ms(&self) -> u64 {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        stamp(&mut current)
    }

    /// How far the wall clock has moved from this term's time (positive: ahead), for a warning
    /// when a step happened inside the term.
    pub fn wall_drift_ms(&self) -> i64 {
        let stamp = self.now_ms();
        self.wall.now_ms() as i64 - stamp as i64
    }
}

fn stamp(current: &mut TermTime) -> u64 {
    let elapsed = current.started.elapsed().as_millis() as u64;
    let now = current.base_ms.saturating_add(elapsed).max(current.last_ms);
    current.last_ms = now;
    now
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// A wall clock the test sets.
    struct Settable(AtomicU64);

    impl WallClock for Settable {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    const T0: u64 = 1_700_000_000_000;

    fn clock(max_jump_ms: u64) -> (Arc<Settable>, LeaderClock) {
        let wall = Arc::new(Settable(AtomicU64::new(T0)));
        let clock = LeaderClock::new(wall.clone(), max_jump_ms);
        (wall, clock)
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_inside_a_term_changes_no_stamp() {
        let (wall, clock) = clock(0);
        assert_eq!(clock.begin_term(1, T0 - 5_000), T0);
        tokio::time::advance(Duration::from_millis(1_000)).await;
        wall.0.store(T0 + 3_600_000, Ordering::SeqCst); // an hour forward
        assert_eq!(clock.now_ms(), T0 + 1_000);
        assert_eq!(clock.wall_drift_ms(), 3_599_000);
        wall.0.store(T0 - 3_600_000, Ordering::SeqCst); // then two hours back
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(clock.now_ms(), T0 + 1_500);
        // The same term again is not a new reading.
        assert_eq!(clock.begin_term(1, T0), T0 + 1_500);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_term_starts_from_the_wall_but_never_behind_applied_time() {
        let (wall, clock) = clock(0);
        clock.begin_term(1, 0);
        tokio::time::advance(Duration::from_millis(2_000)).await;
        assert_eq!(clock.now_ms(), T0 + 2_000);
        // The wall clock went back; the next term keeps time moving forwards.
        wall.0.store(T0 - 60_000, Ordering::SeqCst);
        assert_eq!(clock.begin_term(2, T0 + 1_000), T0 + 2_000);
        // Applied time from another leader ahead of this replica's stamps wins too.
        assert_eq!(clock.begin_term(3, T0 + 9_000), T0 + 9_000);
        // A wall clock ahead is taken (no bound).
        wall.0.store(T0 + 100_000, Ordering::SeqCst);
        assert_eq!(clock.begin_term(4, T0 + 9_000), T0 + 100_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wall_clock_far_ahead_moves_time_by_the_bound_only() {
        let (wall, clock) = clock(60_000);
        wall.0.store(T0 + 365 * 86_400_000, Ordering::SeqCst);
        assert_eq!(clock.begin_term(1, T0), T0 + 60_000);
        // Within the bound it is taken as it is.
        let (wall, clock) = self::clock(60_000);
        wall.0.store(T0 + 59_000, Ordering::SeqCst);
        assert_eq!(clock.begin_term(1, T0), T0 + 59_000);
    }
}
