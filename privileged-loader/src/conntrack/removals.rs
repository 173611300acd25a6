//! The removal generation of the conntrack map (`conntrack_removals` in
//! `bpf/include/conntrack_record.h`).
//!
//! The per-packet hooks keep, per CPU, the entries they just recorded from their first
//! packet, so that the handshake reply right after needs no second record (the hook's
//! per-packet cost: docs/conntrack.md). That is only sound while nothing removed those
//! slots from the map in between: a destroyed entry's slots, deleted after the fact,
//! may be the ones a newer entry with the same tuples (a reused port) was just recorded
//! in. So every removal is bracketed by two bumps of this counter (odd while one is under
//! way), and a cached record counts only under the value it was made with.
use aya::Ebpf;
use aya::maps::{Array, MapData};

use super::MODULE;

/// The map's name in both eBPF objects.
pub const REMOVALS_MAP: &str = "conntrack_removals";

/// The counter, written only here (under the conntrack map's writer lock).
pub struct Removals {
    map: Array<MapData, u64>,
    generation: u64,
}

impl Removals {
    /// Takes the counter of a loaded object; `None` for an object without one (nothing
    /// to keep in step).
    pub fn take(ebpf: &mut Ebpf) -> Option<Self> {
        let map = Array::try_from(ebpf.take_map(REMOVALS_MAP)?).ok()?;
        let generation = map.get(&0, 0).unwrap_or(0);
        Some(Self { map, generation })
    }

    /// Runs `remove` between two bumps of the counter.
    pub fn around<T>(&mut self, remove: impl FnOnce() -> T) -> T {
        self.bump();
        let removed = remove();
        self.bump();
        removed
    }

    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        if let Err(e) = self.map.set(0, self.generation, 0) {
            // Only the hook's shortcut for handshake replies depends on it; it is an
            // array write that does not fail short of a kernel bug, so say so loudly.
            tracing::warn!(module = MODULE, error = %e, "cannot bump {REMOVALS_MAP}");
        }
    }
}
