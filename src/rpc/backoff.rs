//! Pacing of retries: a growing pause, and jitter so callers that failed together do not come
//! back in step.

use std::time::Duration;

use rand::Rng;

/// `base` scaled by a random factor in [0.5, 1.5).
pub fn jitter(base: Duration) -> Duration {
    base.mul_f64(rand::thread_rng().gen_range(0.5..1.5))
}

/// A pause that doubles after each failure, from `start` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub start: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(start: Duration, max: Duration) -> Backoff {
        Backoff { start, max }
    }

    /// The pauses, one per failure: `start`, twice that, ... capped at `max`.
    pub fn pauses(self) -> Pauses {
        Pauses {
            backoff: self,
            next: self.start,
        }
    }
}

/// See [`Backoff::pauses`].
#[derive(Debug, Clone)]
pub struct Pauses {
    backoff: Backoff,
    next: Duration,
}

impl Pauses {
    /// The next pause, jittered; the one after it is twice as long (up to the cap).
    pub fn next_jittered(&mut self) -> Duration {
        let pause = jitter(self.next);
        self.next = (self.next * 2).min(self.backoff.max);
        pause
    }

    /// Starts over from the first pause (after a success).
    pub fn reset(&mut self) {
        self.next = self.backoff.start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_within_the_jitter() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let mut pauses = backoff.pauses();
        for base_ms in [100u64, 200, 350, 350] {
            let pause = pauses.next_jittered();
            assert!(
                pause >= Duration::from_millis(base_ms / 2)
                    && pause < Duration::from_millis(base_ms * 3 / 2),
                "{pause:?} for {base_ms} ms"
            );
        }
        pauses.reset();
        assert!(pauses.next_jittered() < Duration::from_millis(150));
    }
}
