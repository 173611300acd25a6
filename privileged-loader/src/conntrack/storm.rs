//! Connection storms: the DESTROY subscription is dropped while new connections arrive
//! faster than it is worth, and taken again when they calm down.
//!
//! The subscription's price is paid by the kernel on the connections' own path (an event
//! extension on every new entry, a netlink message per destroyed one): about 5–12 % of the
//! connection rate in a 27,000/s storm on two cores (docs/benchmarks.md). The eBPF
//! programs count the connections they record in a per-CPU array (`conntrack_new`, free:
//! no lock, no shared cache line); [`StormGuard`] turns one-second samples of its sum into
//! a verdict, with hysteresis: shed after `sustain` samples above the threshold (at once when
//! the event queue overruns above it), restore after three times as many below half of it. While shed, destroyed entries leave by the
//! sweep and the LRU; on restore a resynchronisation sweep runs.
use aya::Ebpf;
use aya::maps::{MapData, MapError, PerCpuArray};

/// The per-CPU counter of recorded connections in both eBPF objects.
pub const COUNTER_MAP: &str = "conntrack_new";

/// Marks the module's status note while the subscription is shed (removed on restore).
pub const SHED_NOTE: &str = "DESTROY subscription shed (connection storm)";

/// Reads the eBPF programs' count of recorded connections.
pub struct NewConnections {
    map: PerCpuArray<MapData, u64>,
}

impl NewConnections {
    /// Takes the counter out of a loaded object; `None` for an object without it.
    pub fn take(ebpf: &mut Ebpf) -> Option<Self> {
        let map = PerCpuArray::try_from(ebpf.take_map(COUNTER_MAP)?).ok()?;
        Some(Self { map })
    }

    /// Connections recorded since the object was loaded, summed over CPUs.
    pub fn total(&self) -> Result<u64, MapError> {
        Ok(self.map.get(&0, 0)?.iter().copied().fold(0u64, u64::wrapping_add))
    }
}

/// A restore waits this many times `sustain`: shedding early saves the storm's
/// connections the most, while restoring early costs a resynchronisation sweep, and
/// another shed if the storm was only pausing.
pub const RESTORE_AFTER_SUSTAINS: u32 = 3;

/// When to shed: above `shed_above_per_sec` for `sustain` consecutive samples (one per
/// second); restored below half of it for [`RESTORE_AFTER_SUSTAINS`] times as long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StormPolicy {
    pub shed_above_per_sec: u64,
    pub sustain: u32,
}

/// What to do with the subscription after a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    Shed,
    Restore,
}

/// The shed/restore decision over a series of rate samples.
#[derive(Debug)]
pub struct StormGuard {
    policy: StormPolicy,
    shed: bool,
    /// Consecutive samples on the other side of the current state's threshold.
    streak: u32,
}

impl StormGuard {
    pub fn new(policy: StormPolicy) -> Self {
        Self { policy, shed: false, streak: 0 }
    }

    pub fn is_shed(&self) -> bool {
        self.shed
    }

    /// Undoes the last shed or restore: the subscription could not be changed, so the
    /// next samples decide again from the state it is really in.
    pub fn revert(&mut self) {
        self.shed = !self.shed;
    }

    /// The event queue overran while new connections arrived at `per_sec`: the events
    /// outpace their handling already, which is the storm the sustained rate stands for,
    /// so a rate above the threshold sheds at once instead of after `sustain` samples
    /// (waiting costs the connections several percent more, and the overrun's resync
    /// sweep would run in the middle of the storm).
    pub fn overrun(&mut self, per_sec: u64) -> Verdict {
        if self.shed || per_sec <= self.policy.shed_above_per_sec {
            return Verdict::Keep;
        }
        self.streak = 0;
        self.shed = true;
        Verdict::Shed
    }

    /// Takes one sample (new connections per second) and says whether to change state.
    pub fn observe(&mut self, per_sec: u64) -> Verdict {
        let crossing = if self.shed {
            per_sec < self.policy.shed_above_per_sec / 2
        } else {
            per_sec > self.policy.shed_above_per_sec
        };
        self.streak = if crossing { self.streak + 1 } else { 0 };
        let needed = self.policy.sustain.max(1) * if self.shed { RESTORE_AFTER_SUSTAINS } else { 1 };
        if self.streak < needed {
            return Verdict::Keep;
        }
        self.streak = 0;
        self.shed = !self.shed;
        if self.shed { Verdict::Shed } else { Verdict::Restore }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> StormGuard {
        StormGuard::new(StormPolicy { shed_above_per_sec: 1000, sustain: 2 })
    }

    #[test]
    fn a_sustained_storm_sheds_once_and_a_longer_calm_restores_once() {
        let mut g = guard();
        let storm = [2000, 2000, 2000];
        let calm = [400, 400, 400, 400, 400, 400, 400];
        let verdicts: Vec<_> = storm.iter().chain(&calm).map(|r| g.observe(*r)).collect();
        use Verdict::*;
        assert_eq!(verdicts, [Keep, Shed, Keep, Keep, Keep, Keep, Keep, Keep, Restore, Keep]);
        assert!(!g.is_shed());
    }

    #[test]
    fn a_short_burst_does_not_shed() {
        let mut g = guard();
        for rate in [5000, 10, 5000, 10, 5000, 10] {
            assert_eq!(g.observe(rate), Verdict::Keep);
        }
        assert!(!g.is_shed());
    }

    #[test]
    fn an_overrun_in_a_storm_sheds_at_once_and_a_calm_one_does_not() {
        let mut g = guard();
        assert_eq!(g.overrun(900), Verdict::Keep, "below the threshold an overrun is only a resync");
        assert!(!g.is_shed());
        assert_eq!(g.observe(2000), Verdict::Keep);
        assert_eq!(g.overrun(2000), Verdict::Shed);
        assert!(g.is_shed());
        assert_eq!(g.overrun(2000), Verdict::Keep, "already shed");
        let calm: Vec<_> = [100; 6].map(|r| g.observe(r)).to_vec();
        let restored = [[Verdict::Keep; 5].as_slice(), &[Verdict::Restore]].concat();
        assert_eq!(calm, restored, "restored with the usual hysteresis");
    }

    #[test]
    fn between_half_and_the_threshold_the_state_holds() {
        let mut g = guard();
        for _ in 0..2 {
            g.observe(2000);
        }
        assert!(g.is_shed());
        for _ in 0..10 {
            assert_eq!(g.observe(700), Verdict::Keep, "hysteresis: 700/s is above half of 1000/s");
        }
        assert!(g.is_shed());
    }
}
