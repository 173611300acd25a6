//! Lock-range arithmetic: from a map's kernel layout to the address ranges of its locks,
//! and from every map's ranges to the bounded, sorted, non-overlapping table the kernel
//! side binary-searches.
//!
//! Pure: no syscalls. Per-CPU locks live at `percpu_pointer + __per_cpu_offset[cpu]`,
//! the same arithmetic as the kernel's `per_cpu_ptr()`.
use std::collections::BTreeMap;

use serde::Serialize;

use super::layout::MapLayout;

/// Which lock of a map a range belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LockType {
    /// The per-bucket locks of a hash map (`struct bucket` array).
    HashBucket,
    /// The per-CPU freelist heads of a preallocated hash map.
    HashFreelistPcpu,
    /// The global freelist (`extralist`) of a preallocated hash map (kernels < 6.15).
    HashFreelistGlobal,
    /// The global LRU list of an LRU hash map.
    LruGlobalList,
    /// The per-CPU LRU lists (local lists, or whole lists with BPF_F_NO_COMMON_LRU).
    LruPcpuList,
    /// The producer spinlock of a ring buffer.
    RingbufSpinlock,
    /// The wait queue (its spinlock) of a ring buffer.
    RingbufWaitq,
}

impl LockType {
    pub fn as_str(self) -> &'static str {
        match self {
            LockType::HashBucket => "hash_bucket",
            LockType::HashFreelistPcpu => "hash_freelist_pcpu",
            LockType::HashFreelistGlobal => "hash_freelist_global",
            LockType::LruGlobalList => "lru_global_list",
            LockType::LruPcpuList => "lru_pcpu_list",
            LockType::RingbufSpinlock => "ringbuf_spinlock",
            LockType::RingbufWaitq => "ringbuf_waitq",
        }
    }
}

/// `[start, end)` in kernel memory, holding locks of one type of one map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockRange {
    pub start: u64,
    pub end: u64,
    pub map_id: u32,
    pub lock_type: LockType,
}

impl LockRange {
    /// A range of `len` bytes at `start`, or None if empty, at address 0 or wrapping.
    fn new(start: u64, len: u64, map_id: u32, lock_type: LockType) -> Option<Self> {
        let end = start.checked_add(len)?;
        (start != 0 && len != 0).then_some(Self { start, end, map_id, lock_type })
    }

    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start < end && start < self.end
    }
}

/// The lock ranges of one map. Per-CPU ranges need `per_cpu_offsets`; with none (the
/// symbol was not found) they are left out and only the global ones are returned.
pub fn lock_ranges(map: &MapLayout, per_cpu_offsets: &[u64]) -> Vec<LockRange> {
    let id = map.id;
    let mut out = Vec::new();
    let bucket_bytes = u64::from(map.n_buckets) * u64::from(map.bucket_size);
    out.extend(LockRange::new(map.buckets, bucket_bytes, id, LockType::HashBucket));
    out.extend(per_cpu(
        map.freelist_pcpu,
        map.freelist_head_size,
        per_cpu_offsets,
        id,
        LockType::HashFreelistPcpu,
    ));
    out.extend(LockRange::new(
        map.extralist,
        map.freelist_head_size.into(),
        id,
        LockType::HashFreelistGlobal,
    ));
    out.extend(LockRange::new(map.lru_global, map.lru_list_size.into(), id, LockType::LruGlobalList));
    let pcpu_list_size = if map.lru_percpu { map.lru_list_size } else { map.lru_locallist_size };
    out.extend(per_cpu(map.lru_pcpu, pcpu_list_size, per_cpu_offsets, id, LockType::LruPcpuList));
    out.extend(LockRange::new(map.rb_spinlock, map.rb_spinlock_size.into(), id, LockType::RingbufSpinlock));
    out.extend(LockRange::new(map.rb_waitq, map.waitq_size.into(), id, LockType::RingbufWaitq));
    out
}

/// One range per CPU at `percpu_ptr + offset[cpu]` (wrapping, as the kernel adds them).
fn per_cpu(percpu_ptr: u64, size: u32, offsets: &[u64], map_id: u32, lock_type: LockType) -> Vec<LockRange> {
    if percpu_ptr == 0 {
        return Vec::new();
    }
    offsets
        .iter()
        .filter_map(|off| LockRange::new(percpu_ptr.wrapping_add(*off), size.into(), map_id, lock_type))
        .collect()
}

/// Why a map is not tracked although it has locks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeftOut {
    pub map_id: u32,
    pub reason: String,
}

/// The sorted, non-overlapping ranges handed to the kernel; index = range id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeTable {
    pub ranges: Vec<LockRange>,
}

impl RangeTable {
    /// Takes maps in priority order (the loader's own first), whole maps at a time, until
    /// `max_ranges` would be exceeded; a map whose ranges overlap an accepted one is left
    /// out too (the kernel side assumes disjoint ranges). Every map left out is listed.
    pub fn build(maps: &[Vec<LockRange>], max_ranges: usize) -> (RangeTable, Vec<LeftOut>) {
        let mut accepted: BTreeMap<u64, LockRange> = BTreeMap::new();
        let mut left_out = Vec::new();
        for ranges in maps.iter().filter(|r| !r.is_empty()) {
            let map_id = ranges[0].map_id;
            if accepted.len() + ranges.len() > max_ranges {
                left_out.push(LeftOut {
                    map_id,
                    reason: format!(
                        "needs {} lock ranges, {} of max_ranges={max_ranges} are taken; raise lockstats.max_ranges",
                        ranges.len(),
                        accepted.len()
                    ),
                });
                continue;
            }
            if let Some(other) =
                ranges.iter().find_map(|r| overlapping(&accepted, r)).or_else(|| self_overlap(ranges))
            {
                left_out.push(LeftOut {
                    map_id,
                    reason: format!("its lock ranges overlap those of map {other}"),
                });
                continue;
            }
            accepted.extend(ranges.iter().map(|r| (r.start, *r)));
        }
        (RangeTable { ranges: accepted.into_values().collect() }, left_out)
    }

    /// Index of the range holding `addr`: the same search the kernel side runs.
    pub fn find(&self, addr: u64) -> Option<usize> {
        let idx = self.ranges.partition_point(|r| r.end <= addr);
        self.ranges.get(idx).filter(|r| r.start <= addr).map(|_| idx)
    }
}

/// The map id of an accepted range overlapping `r`, if any.
fn overlapping(accepted: &BTreeMap<u64, LockRange>, r: &LockRange) -> Option<u32> {
    let before = accepted.range(..r.end).next_back().map(|(_, a)| a);
    before.filter(|a| a.overlaps(r.start, r.end)).map(|a| a.map_id)
}

/// The map's own id if two of its ranges overlap each other.
fn self_overlap(ranges: &[LockRange]) -> Option<u32> {
    let mut sorted: Vec<&LockRange> = ranges.iter().collect();
    sorted.sort_by_key(|r| r.start);
    sorted.windows(2).any(|w| w[1].start < w[0].end).then(|| ranges[0].map_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: u32 = 1;

    fn hash_map(id: u32, buckets: u64, n_buckets: u32) -> MapLayout {
        MapLayout { id, map_type: HASH, buckets, n_buckets, bucket_size: 16, ..MapLayout::default() }
    }

    #[test]
    fn hash_buckets_span_n_buckets_times_bucket_size() {
        let ranges = lock_ranges(&hash_map(3, 0x1000, 16), &[]);
        assert_eq!(
            ranges,
            vec![LockRange { start: 0x1000, end: 0x1100, map_id: 3, lock_type: LockType::HashBucket }]
        );
    }

    #[test]
    fn per_cpu_freelists_add_each_cpu_offset() {
        let map = MapLayout { freelist_pcpu: 0x2_0000, freelist_head_size: 24, ..hash_map(1, 0x1000, 2) };
        let ranges = lock_ranges(&map, &[0x10_0000, 0x20_0000]);
        let freelists: Vec<_> = ranges
            .iter()
            .filter(|r| r.lock_type == LockType::HashFreelistPcpu)
            .map(|r| (r.start, r.end))
            .collect();
        assert_eq!(freelists, vec![(0x12_0000, 0x12_0018), (0x22_0000, 0x22_0018)]);
    }

    #[test]
    fn per_cpu_pointer_arithmetic_wraps_like_the_kernel() {
        // x86-64 per-CPU pointers are small offsets added to large per-CPU bases.
        let map = MapLayout { lru_pcpu: 0x3_0000, lru_locallist_size: 40, ..MapLayout::default() };
        let ranges = lock_ranges(&map, &[0xffff_8880_7fc0_0000]);
        assert_eq!(ranges[0].start, 0xffff_8880_7fc3_0000);
        assert_eq!(ranges[0].lock_type, LockType::LruPcpuList);
    }

    #[test]
    fn without_cpu_offsets_only_global_locks_remain() {
        let map = MapLayout { freelist_pcpu: 0x2_0000, freelist_head_size: 24, ..hash_map(1, 0x1000, 2) };
        let types: Vec<_> = lock_ranges(&map, &[]).iter().map(|r| r.lock_type).collect();
        assert_eq!(types, vec![LockType::HashBucket]);
    }

    #[test]
    fn lru_maps_have_global_and_per_cpu_lists_percpu_lru_uses_list_size() {
        let common = MapLayout {
            lru_global: 0x5000,
            lru_list_size: 128,
            lru_pcpu: 0x100,
            lru_locallist_size: 40,
            ..hash_map(2, 0x1000, 4)
        };
        let ranges = lock_ranges(&common, &[0x10_0000]);
        let summary: Vec<_> = ranges.iter().map(|r| (r.lock_type, r.end - r.start)).collect();
        assert_eq!(
            summary,
            vec![(LockType::HashBucket, 64), (LockType::LruGlobalList, 128), (LockType::LruPcpuList, 40)]
        );
        let percpu = MapLayout { lru_global: 0, lru_percpu: true, ..common };
        let sizes: Vec<_> = lock_ranges(&percpu, &[0x10_0000]).iter().map(|r| r.end - r.start).collect();
        assert_eq!(sizes, vec![64, 128]);
    }

    #[test]
    fn ring_buffers_have_spinlock_and_waitq() {
        let rb = MapLayout {
            rb_waitq: 0x9000,
            waitq_size: 24,
            rb_spinlock: 0x9100,
            rb_spinlock_size: 4,
            ..MapLayout::default()
        };
        let types: Vec<_> = lock_ranges(&rb, &[]).iter().map(|r| r.lock_type).collect();
        assert_eq!(types, vec![LockType::RingbufSpinlock, LockType::RingbufWaitq]);
    }

    #[test]
    fn empty_and_wrapping_ranges_are_dropped() {
        assert!(lock_ranges(&hash_map(1, 0x1000, 0), &[]).is_empty());
        assert!(lock_ranges(&hash_map(1, u64::MAX - 8, 16), &[]).is_empty());
    }

    #[test]
    fn table_is_sorted_and_searchable() {
        let maps = vec![lock_ranges(&hash_map(1, 0x9000, 4), &[]), lock_ranges(&hash_map(2, 0x1000, 4), &[])];
        let (table, left_out) = RangeTable::build(&maps, 16);
        assert!(left_out.is_empty());
        assert_eq!(table.ranges.iter().map(|r| r.map_id).collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!(table.find(0x1000), Some(0));
        assert_eq!(table.find(0x103f), Some(0));
        assert_eq!(table.find(0x1040), None);
        assert_eq!(table.find(0x9010), Some(1));
        assert_eq!(table.find(0xfff), None);
    }

    #[test]
    fn maps_beyond_the_bound_are_left_out_whole_in_priority_order() {
        let with_freelists = |id, base| MapLayout {
            freelist_pcpu: base + 0x100,
            freelist_head_size: 8,
            ..hash_map(id, base, 1)
        };
        let offsets = [0, 0x1000];
        let maps: Vec<_> =
            (1..=3).map(|id| lock_ranges(&with_freelists(id, u64::from(id) * 0x10_0000), &offsets)).collect();
        let (table, left_out) = RangeTable::build(&maps, 7);
        assert_eq!(table.ranges.len(), 6, "two maps of three ranges fit in seven");
        assert_eq!(left_out.len(), 1);
        assert_eq!(left_out[0].map_id, 3);
        assert!(left_out[0].reason.contains("max_ranges=7"), "{}", left_out[0].reason);
    }

    #[test]
    fn overlapping_maps_are_left_out() {
        let maps = vec![lock_ranges(&hash_map(1, 0x1000, 4), &[]), lock_ranges(&hash_map(2, 0x1020, 4), &[])];
        let (table, left_out) = RangeTable::build(&maps, 16);
        assert_eq!(table.ranges.len(), 1);
        assert_eq!(
            left_out,
            vec![LeftOut { map_id: 2, reason: "its lock ranges overlap those of map 1".into() }]
        );
    }
}
