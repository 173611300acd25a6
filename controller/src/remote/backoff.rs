//! Backoff policy between polls: pure arithmetic, no clock and no randomness of its own
//! (the caller passes a jitter draw in [0, 1)), so every rule is unit-tested exactly.
//!
//! After `n` consecutive error steps the extra delay is `raw(n) = base × 2^(n-1)`, capped
//! at `max`, then jittered down into `[raw(n-1), raw(n)]` (`[base/2, base]` for the first
//! step). Because the lower bound of step `n+1` is the upper bound of step `n`, jittered
//! delays never shrink while the level still grows; at the cap they stay within
//! `[raw(last level), max]`. A
//! success steps the level down by one rather than resetting it, so a flapping service
//! is not hammered as soon as it answers once.

use std::time::Duration;

/// The policy's fixed parameters.
#[derive(Debug, Clone, Copy)]
pub struct BackoffPolicy {
    pub base: Duration,
    pub max: Duration,
}

/// Growth factor between consecutive error steps.
const FACTOR: u32 = 2;

/// The error level and the policy it is read through.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    level: u32,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy) -> Self {
        Self { policy, level: 0 }
    }

    pub fn level(&self) -> u32 {
        self.level
    }

    /// One more error. The level stops growing once the raw delay has reached the cap, so
    /// recovery after a long outage takes a bounded number of successes.
    pub fn on_error(&mut self) {
        if self.raw(self.level) < self.policy.max {
            self.level += 1;
        }
    }

    /// One success: step down a level.
    pub fn on_success(&mut self) {
        self.level = self.level.saturating_sub(1);
    }

    /// The extra delay for the current level with `jitter` in [0, 1).
    pub fn delay(&self, jitter: f64) -> Duration {
        let high = self.raw(self.level);
        let low = match self.level {
            0 => Duration::ZERO,
            1 => high / 2,
            n => self.raw(n - 1),
        };
        let jitter = jitter.clamp(0.0, 1.0);
        (low + (high - low).mul_f64(jitter)).min(self.policy.max)
    }

    /// Unjittered delay at `level` (zero at level 0).
    fn raw(&self, level: u32) -> Duration {
        if level == 0 {
            return Duration::ZERO;
        }
        let factor = FACTOR.checked_pow(level - 1).unwrap_or(u32::MAX);
        self.policy.base.checked_mul(factor).unwrap_or(self.policy.max).min(self.policy.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> Backoff {
        Backoff::new(BackoffPolicy { base: Duration::from_secs(1), max: Duration::from_secs(90) })
    }

    #[test]
    fn no_errors_no_delay() {
        assert_eq!(backoff().delay(0.7), Duration::ZERO);
    }

    #[test]
    fn delays_double_per_error() {
        let mut b = backoff();
        let mut upper = Vec::new();
        for _ in 0..5 {
            b.on_error();
            upper.push(b.delay(1.0).as_secs());
        }
        assert_eq!(upper, [1, 2, 4, 8, 16]);
    }

    #[test]
    fn delays_are_capped() {
        let mut b = backoff();
        for _ in 0..50 {
            b.on_error();
        }
        assert_eq!(b.delay(1.0), Duration::from_secs(90));
        assert_eq!(b.delay(0.0), Duration::from_secs(64));
        assert_eq!(b.level(), 8, "level stops once the cap is reached (64 s < 90 s ≤ 128 s)");
    }

    #[test]
    fn jitter_stays_between_the_previous_and_current_step() {
        let mut b = backoff();
        for _ in 0..4 {
            b.on_error();
        }
        for j in [0.0, 0.25, 0.5, 0.999] {
            let d = b.delay(j);
            assert!(d >= Duration::from_secs(4) && d <= Duration::from_secs(8), "{d:?}");
        }
        assert_eq!(b.delay(-3.0), Duration::from_secs(4), "out-of-range draws are clamped");
        b = backoff();
        b.on_error();
        assert_eq!((b.delay(0.0), b.delay(1.0)), (Duration::from_millis(500), Duration::from_secs(1)));
    }

    #[test]
    fn jittered_delays_never_shrink_while_errors_continue() {
        let mut b = backoff();
        let mut previous = Duration::ZERO;
        for step in 0..12 {
            let level = b.level();
            b.on_error();
            if b.level() == level {
                break; // at the cap: delays vary within [64 s, 90 s]
            }
            // Worst case: the previous draw was the maximum, this one the minimum.
            let lowest = b.delay(0.0);
            assert!(lowest >= previous, "step {step}: {lowest:?} < {previous:?}");
            previous = b.delay(1.0);
        }
    }

    #[test]
    fn success_steps_down_one_level() {
        let mut b = backoff();
        for _ in 0..4 {
            b.on_error();
        }
        b.on_success();
        assert_eq!((b.delay(0.0), b.delay(1.0)), (Duration::from_secs(2), Duration::from_secs(4)));
        for _ in 0..10 {
            b.on_success();
        }
        assert_eq!(b.delay(1.0), Duration::ZERO);
    }
}
