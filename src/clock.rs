//! The clock the I/O shell reads: wall time for decisions and status,
//! monotonic time for waits and ages. Passed in, never read directly, so that
//! a test can drive it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// Wall-clock time, for decisions, status and schedules.
    fn now(&self) -> Timestamp;
    /// Monotonic time, for waits and ages that a wall-clock jump must not
    /// stretch or shorten.
    fn instant(&self) -> Instant;
}

/// The clock every part of the shell shares.
pub type SharedClock = Arc<dyn Clock>;

/// The system's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// The system's clocks, shared.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that moves only when told to; both of its readings move together.
#[derive(Debug)]
pub struct ManualClock {
    wall_start: Timestamp,
    monotonic_start: Instant,
    elapsed: Mutex<Duration>,
}

impl ManualClock {
    /// A clock reading `at` until it is advanced.
    pub fn new(at: Timestamp) -> Self {
        Self {
            wall_start: at,
            monotonic_start: Instant::now(),
            elapsed: Mutex::new(Duration::ZERO),
        }
    }

    pub fn advance(&self, by: Duration) {
        *self.elapsed.lock().expect("clock lock") += by;
    }

    fn elapsed(&self) -> Duration {
        *self.elapsed.lock().expect("clock lock")
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        let elapsed = SignedDuration::try_from(self.elapsed()).expect("test clocks stay small");
        self.wall_start + elapsed
    }

    fn instant(&self) -> Instant {
        self.monotonic_start + self.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_both_readings_together_and_only_when_told() {
        let clock = ManualClock::new("2026-11-21T19:00:00Z".parse().unwrap());
        let (wall, mono) = (clock.now(), clock.instant());
        assert_eq!(clock.now(), wall);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now(), "2026-11-21T19:00:01.5Z".parse().unwrap());
        assert_eq!(clock.instant() - mono, Duration::from_millis(1500));
    }
}
