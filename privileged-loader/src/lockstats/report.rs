//! What the collector reports: per map, per lock type, the contention seen; plus the
//! collector's own status. Serialized as is by `loaderctl lockstats --json`; `api.rs`
//! converts it to the `GetLockStats` proto.
//!
//! The aggregation from range statistics to this report is pure and unit-tested here.
use std::collections::BTreeMap;

use serde::Serialize;

use super::contention::RangeStats;
use super::ranges::{LockType, RangeTable};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectorState {
    /// Programs attached, ranges tracked.
    Running,
    /// `lockstats.enabled = false`, or disabled at runtime: nothing attached.
    Disabled,
    /// Initialize failed; `reasons` says why. Nothing attached.
    Failed,
}

/// A map that has locks but is not tracked, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MapLeftOut {
    pub id: u32,
    pub name: String,
    pub owner: String,
    pub reason: String,
}

/// An attached program of the collector (its kernel id, to find it in `bpftool prog`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProgramRef {
    pub name: String,
    pub id: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LockStatsStatus {
    pub state: CollectorState,
    /// Why the collector is not running, or what it runs without (e.g. no per-CPU ranges).
    pub reasons: Vec<String>,
    /// Where kernel symbol addresses came from: "iter/ksym" or "/proc/kallsyms" (empty if none).
    pub symbols_source: String,
    pub tracked_maps: u32,
    pub tracked_ranges: u32,
    pub max_ranges: u32,
    /// Maps with locks that are not tracked: over the range bound, overlapping, or not openable.
    pub maps_left_out: Vec<MapLeftOut>,
    /// Contention events of ranges that found the stats map full (counted, not recorded).
    pub dropped_ranges: u64,
    /// Sleeping-lock waits not timed because the per-task table was full.
    pub dropped_waiters: u64,
    /// contention_end events without their begin.
    pub unmatched_events: u64,
    /// Every lock contention event on the system since start, and those on tracked ranges:
    /// their ratio says how much of the system's contention is in BPF maps.
    pub events_seen: u64,
    pub events_tracked: u64,
    pub initialize_us: u64,
    pub programs: Vec<ProgramRef>,
}

impl LockStatsStatus {
    pub fn new(state: CollectorState, max_ranges: u32) -> Self {
        Self {
            state,
            reasons: Vec::new(),
            symbols_source: String::new(),
            tracked_maps: 0,
            tracked_ranges: 0,
            max_ranges,
            maps_left_out: Vec::new(),
            dropped_ranges: 0,
            dropped_waiters: 0,
            unmatched_events: 0,
            events_seen: 0,
            events_tracked: 0,
            initialize_us: 0,
            programs: Vec::new(),
        }
    }
}

/// Contention on one lock type of one map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LockTypeStats {
    pub lock_type: LockType,
    /// How many address ranges of this type are tracked (e.g. one per CPU for per-CPU locks).
    pub ranges: u32,
    pub contended_count: u64,
    pub total_wait_ns: u64,
    pub avg_wait_ns: u64,
    pub min_wait_ns: u64,
    pub max_wait_ns: u64,
}

/// One tracked map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MapLockStats {
    pub id: u32,
    pub name: String,
    /// e.g. "hash", "lru_hash", "ringbuf".
    pub map_type: String,
    /// The loader module owning the map, or "external".
    pub owner: String,
    pub locks: Vec<LockTypeStats>,
}

impl MapLockStats {
    pub fn total_wait_ns(&self) -> u64 {
        self.locks.iter().map(|l| l.total_wait_ns).sum()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LockStatsReport {
    pub status: LockStatsStatus,
    /// Tracked maps, most total wait first.
    pub maps: Vec<MapLockStats>,
}

/// Name, type and owner of a tracked map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapMeta {
    pub name: String,
    pub map_type: u32,
    pub owner: String,
}

/// Per map and lock type: folds the per-range statistics of `stats` (range index →
/// figures) over `table`. Every tracked map appears, with zeros when it saw no contention.
pub fn aggregate(
    table: &RangeTable,
    meta: &BTreeMap<u32, MapMeta>,
    stats: &[(u32, RangeStats)],
) -> Vec<MapLockStats> {
    let by_range: BTreeMap<u32, &RangeStats> = stats.iter().map(|(i, s)| (*i, s)).collect();
    let mut per_lock: BTreeMap<(u32, LockType), (u32, RangeStats)> = BTreeMap::new();
    for (i, range) in table.ranges.iter().enumerate() {
        let entry = per_lock.entry((range.map_id, range.lock_type)).or_default();
        entry.0 += 1;
        if let Some(s) = u32::try_from(i).ok().and_then(|i| by_range.get(&i)) {
            entry.1.merge(s);
        }
    }
    let mut maps: BTreeMap<u32, MapLockStats> = BTreeMap::new();
    for ((map_id, lock_type), (ranges, s)) in per_lock {
        let m = meta.get(&map_id);
        let map = maps.entry(map_id).or_insert_with(|| MapLockStats {
            id: map_id,
            name: m.map(|m| m.name.clone()).unwrap_or_default(),
            map_type: map_type_name(m.map_or(0, |m| m.map_type)).to_string(),
            owner: m.map(|m| m.owner.clone()).unwrap_or_default(),
            locks: Vec::new(),
        });
        map.locks.push(LockTypeStats {
            lock_type,
            ranges,
            contended_count: s.count,
            total_wait_ns: s.total_ns,
            avg_wait_ns: s.total_ns.checked_div(s.count).unwrap_or(0),
            min_wait_ns: s.min_ns,
            max_wait_ns: s.max_ns,
        });
    }
    let mut maps: Vec<MapLockStats> = maps.into_values().collect();
    maps.sort_by_key(|m| (std::cmp::Reverse(m.total_wait_ns()), m.id));
    maps
}

/// The uapi name of a `bpf_map_type`, for the map types that have locks we track.
pub fn map_type_name(map_type: u32) -> &'static str {
    match map_type {
        1 => "hash",
        5 => "percpu_hash",
        9 => "lru_hash",
        10 => "lru_percpu_hash",
        13 => "hash_of_maps",
        27 => "ringbuf",
        31 => "user_ringbuf",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lockstats::ranges::LockRange;

    fn range(start: u64, map_id: u32, lock_type: LockType) -> LockRange {
        LockRange { start, end: start + 16, map_id, lock_type }
    }

    #[test]
    fn ranges_fold_into_map_and_lock_type_sorted_by_total_wait() {
        let table = RangeTable {
            ranges: vec![
                range(0x100, 1, LockType::HashBucket),
                range(0x200, 2, LockType::HashFreelistPcpu),
                range(0x300, 2, LockType::HashFreelistPcpu),
                range(0x400, 2, LockType::HashBucket),
            ],
        };
        let meta = BTreeMap::from([
            (1, MapMeta { name: "idle".into(), map_type: 1, owner: "external".into() }),
            (2, MapMeta { name: "hot".into(), map_type: 9, owner: "conntrack".into() }),
        ]);
        let stats = [
            (1, RangeStats { count: 1, total_ns: 10, min_ns: 10, max_ns: 10 }),
            (2, RangeStats { count: 3, total_ns: 90, min_ns: 20, max_ns: 40 }),
            (3, RangeStats { count: 1, total_ns: 1000, min_ns: 1000, max_ns: 1000 }),
        ];
        let maps = aggregate(&table, &meta, &stats);
        assert_eq!(maps.iter().map(|m| m.id).collect::<Vec<_>>(), vec![2, 1]);
        let hot = &maps[0];
        assert_eq!(
            (hot.name.as_str(), hot.map_type.as_str(), hot.owner.as_str()),
            ("hot", "lru_hash", "conntrack")
        );
        let freelist =
            hot.locks.iter().find(|l| l.lock_type == LockType::HashFreelistPcpu).expect("freelist");
        assert_eq!(
            (freelist.ranges, freelist.contended_count, freelist.total_wait_ns, freelist.avg_wait_ns),
            (2, 4, 100, 25)
        );
        assert_eq!((freelist.min_wait_ns, freelist.max_wait_ns), (10, 40));
        let bucket = hot.locks.iter().find(|l| l.lock_type == LockType::HashBucket).expect("bucket");
        assert_eq!(bucket.total_wait_ns, 1000);
        assert_eq!(maps[1].locks[0].contended_count, 0, "an idle map is listed with zeros");
    }
}
