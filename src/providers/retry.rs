//! Retry policy: jittered exponential backoff ("full jitter": a uniform delay in
//! `[0, base · 2^attempt]`, capped), a server's `Retry-After` taking precedence, a bounded number
//! of retries and a bounded total wait. Whether to retry at all is decided by the gateway:
//! only retryable errors, and never after output reached the caller.

use std::time::Duration;

use rand::Rng;

use super::config::ProviderSettings;

/// The retry limits of one provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub base: Duration,
    pub max_delay: Duration,
    pub budget: Duration,
}

impl RetryPolicy {
    pub fn from_settings(s: &ProviderSettings) -> RetryPolicy {
        RetryPolicy {
            max_retries: s.max_retries,
            base: Duration::from_millis(s.retry_base_ms),
            max_delay: Duration::from_millis(s.retry_max_delay_ms),
            budget: Duration::from_millis(s.retry_budget_ms),
        }
    }

    /// The wait before retry number `attempt` (0-based), or `None` when no retry should be made:
    /// retries used up, the wait would exceed `max_delay` (a long `Retry-After` — better try the
    /// next target), or the total wait would exceed the budget.
    pub fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        waited: Duration,
        rng: &mut impl Rng,
    ) -> Option<Duration> {
        if attempt >= self.max_retries {
            return None;
        }
        let d = match retry_after {
            Some(ra) => ra,
            None => {
                let exp = self
                    .base
                    .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
                    .min(self.max_delay);
                let ms = exp.as_millis() as u64;
                Duration::from_millis(rng.random_range(0..=ms))
            }
        };
        if d > self.max_delay || waited + d > self.budget {
            return None;
        }
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            base: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            budget: Duration::from_millis(1500),
        }
    }

    #[test]
    fn jitter_is_bounded_and_grows() {
        let mut rng = rand::rng();
        for attempt in 0..3 {
            for _ in 0..50 {
                let d = policy()
                    .delay(attempt, None, Duration::ZERO, &mut rng)
                    .expect("retry");
                assert!(d <= Duration::from_millis(100 << attempt));
            }
        }
        assert_eq!(policy().delay(3, None, Duration::ZERO, &mut rng), None);
    }

    #[test]
    fn retry_after_is_honoured_within_limits() {
        let mut rng = rand::rng();
        let ra = Some(Duration::from_millis(700));
        assert_eq!(
            policy().delay(0, ra, Duration::ZERO, &mut rng),
            Some(Duration::from_millis(700))
        );
        assert_eq!(
            policy().delay(0, Some(Duration::from_secs(5)), Duration::ZERO, &mut rng),
            None
        );
        assert_eq!(
            policy().delay(1, ra, Duration::from_millis(900), &mut rng),
            None
        );
    }
}
