//! Circuit breaker per provider: `failures` consecutive failures open it; while open, calls
//! are refused without touching the network; after `cooldown` one probe call is let through
//! (half-open); its success closes the breaker, its failure opens it again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is in flight since `since`.
    HalfOpen {
        since: Instant,
    },
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> State {
        *self.lock()
    }

    /// Whether a call may go out now (an allowed call must report success or failure).
    pub fn allow(&self) -> bool {
        let now = Instant::now();
        let mut st = self.lock();
        match *st {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *st = State::HalfOpen { since: now };
                true
            }
            State::Open { .. } => false,
            // A probe that never reported (cancelled) does not block the provider forever.
            State::HalfOpen { since } if now.duration_since(since) >= self.cooldown => {
                *st = State::HalfOpen { since: now };
                true
            }
            State::HalfOpen { .. } => false,
        }
    }

    pub fn success(&self) {
        *self.lock() = State::Closed { failures: 0 };
    }

    pub fn failure(&self) {
        let now = Instant::now();
        let mut st = self.lock();
        *st = match *st {
            State::Closed { failures } if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            _ => State::Open {
                until: now + self.cooldown,
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_half_opens_and_recovers() {
        let b = Breaker::new(2, Duration::from_millis(30));
        assert!(b.allow());
        b.failure();
        assert!(b.allow());
        b.failure();
        assert!(!b.allow(), "open after two failures");
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow(), "half-open probe");
        assert!(!b.allow(), "one probe at a time");
        b.failure();
        assert!(!b.allow(), "failed probe re-opens");
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow());
        b.success();
        assert_eq!(b.state(), State::Closed { failures: 0 });
    }
}
