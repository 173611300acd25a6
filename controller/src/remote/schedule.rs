//! When to poll next: the poll loop's timing rules as a pure state machine (no clock, no
//! randomness of its own), so each rule has a plain unit test.
//!
//! - Until a first success, a service that cannot be reached is retried every second
//!   (the controller often starts first); that does not raise the backoff level, so a
//!   slow service start is not punished afterwards.
//! - Otherwise: `interval + backoff`, with the interval being the configured one or the
//!   service's suggestion when inside [1 s, 60 s].

use std::time::Duration;

use super::backoff::{Backoff, BackoffPolicy};
use super::fetch::FailureKind;

/// Retry delay while the service has never been reached.
pub const STARTUP_RETRY: Duration = Duration::from_secs(1);
/// Unit of the exponential backoff (the delay after the first error).
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Bounds inside which a server-suggested interval is honoured.
pub const SUGGESTED_BOUNDS_SECS: std::ops::RangeInclusive<u64> = 1..=60;

/// The schedule's memory between polls.
#[derive(Debug, Clone)]
pub struct Schedule {
    poll_interval: Duration,
    backoff: Backoff,
    ever_succeeded: bool,
}

impl Schedule {
    pub fn new(poll_interval: Duration, max_backoff: Duration) -> Self {
        Self {
            poll_interval,
            backoff: Backoff::new(BackoffPolicy { base: BACKOFF_BASE, max: max_backoff }),
            ever_succeeded: false,
        }
    }

    /// The backoff level (0: no backoff), for the metrics.
    pub fn backoff_level(&self) -> u32 {
        self.backoff.level()
    }

    pub fn ever_succeeded(&self) -> bool {
        self.ever_succeeded
    }

    /// Delay after a successful poll. `jitter` is a draw in [0, 1).
    pub fn after_success(&mut self, suggested_secs: Option<u64>, jitter: f64) -> Duration {
        self.ever_succeeded = true;
        self.backoff.on_success();
        self.interval(suggested_secs) + self.backoff.delay(jitter)
    }

    /// Delay after a failed poll of `kind` (not `Disabled`, which stops the loop).
    pub fn after_failure(&mut self, kind: FailureKind, suggested_secs: Option<u64>, jitter: f64) -> Duration {
        if !self.ever_succeeded && kind == FailureKind::Unreachable {
            return STARTUP_RETRY;
        }
        self.backoff.on_error();
        self.interval(suggested_secs) + self.backoff.delay(jitter)
    }

    /// The configured interval, or the suggestion when inside the bounds.
    pub fn interval(&self, suggested_secs: Option<u64>) -> Duration {
        match suggested_secs {
            Some(s) if SUGGESTED_BOUNDS_SECS.contains(&s) => Duration::from_secs(s),
            _ => self.poll_interval,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Schedule {
        Schedule::new(Duration::from_secs(5), Duration::from_secs(90))
    }

    #[test]
    fn unreachable_before_the_first_success_retries_every_second() {
        let mut s = schedule();
        for _ in 0..20 {
            assert_eq!(s.after_failure(FailureKind::Unreachable, None, 0.9), STARTUP_RETRY);
        }
        assert_eq!(s.after_success(None, 0.9), Duration::from_secs(5), "no backoff left from startup");
    }

    #[test]
    fn a_service_that_answers_with_errors_gets_growing_backoff_from_the_start() {
        let mut s = schedule();
        let delays: Vec<u64> =
            (0..4).map(|_| s.after_failure(FailureKind::Rejected, None, 1.0).as_secs()).collect();
        assert_eq!(delays, [6, 7, 9, 13]);
    }

    #[test]
    fn after_a_success_outages_back_off_and_success_steps_down() {
        let mut s = schedule();
        s.after_success(None, 0.0);
        let d1 = s.after_failure(FailureKind::Unreachable, None, 1.0);
        let d2 = s.after_failure(FailureKind::Unreachable, None, 1.0);
        assert_eq!((d1.as_secs(), d2.as_secs()), (6, 7));
        assert_eq!(s.after_success(None, 1.0), Duration::from_secs(6), "one level down, not reset");
        assert_eq!(s.after_success(None, 1.0), Duration::from_secs(5));
    }

    #[test]
    fn suggested_interval_is_honoured_only_within_bounds() {
        let s = schedule();
        assert_eq!(s.interval(Some(12)), Duration::from_secs(12));
        assert_eq!(s.interval(Some(1)), Duration::from_secs(1));
        assert_eq!(s.interval(Some(60)), Duration::from_secs(60));
        assert_eq!(s.interval(Some(0)), Duration::from_secs(5));
        assert_eq!(s.interval(Some(3600)), Duration::from_secs(5));
        assert_eq!(s.interval(None), Duration::from_secs(5));
    }
}
