//! A log line that may be written at most once a second, counting the ones it held back:
//! events a peer can trigger at will (refused calls, refused connections) must not let it
//! flood the loader's log.
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const INTERVAL: Duration = Duration::from_secs(1);

pub struct QuietLog {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl QuietLog {
    pub const fn new() -> Self {
        Self { last: Mutex::new(None), suppressed: AtomicU64::new(0) }
    }

    /// `Some(n)` when a line may be written now (`n` were held back since the last one).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < INTERVAL) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_with_the_count_of_the_rest() {
        let log = QuietLog::new();
        let t0 = Instant::now();
        assert_eq!(log.admit_at(t0), Some(0));
        let held = (1..1000).filter(|i| log.admit_at(t0 + Duration::from_micros(*i)).is_some()).count();
        assert_eq!(held, 0, "no line within the second");
        assert_eq!(log.admit_at(t0 + INTERVAL), Some(999));
    }
}
