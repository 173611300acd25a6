//! The contention object (`bpf/lockstat.bpf.c`): `tp_btf/contention_begin` and
//! `contention_end` over the sorted range table, with per-range wait statistics.
use aya::Ebpf;
use aya::maps::{Array, MapError, PerCpuArray, PerCpuHashMap};
use aya::programs::BtfTracePoint;

use super::error::LockStatsError;
use super::ksym::missing_in_object;
use super::ranges::RangeTable;
use crate::asset::{self, AssetError, AssetLoader};

pub const CONTENTION_ASSET: &str = "lockstat";
const PROGRAMS: [&str; 2] = ["contention_begin", "contention_end"];

/// `struct lock_range` of the object.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct RawRange {
    start: u64,
    end: u64,
}
// SAFETY: two u64s, no padding, every bit pattern valid.
unsafe impl aya::Pod for RawRange {}

/// `struct range_stats` of the object (one per CPU per range).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RangeStats {
    pub count: u64,
    pub total_ns: u64,
    pub min_ns: u64,
    pub max_ns: u64,
}
// SAFETY: four u64s, no padding, every bit pattern valid.
unsafe impl aya::Pod for RangeStats {}

impl RangeStats {
    /// Folds another CPU's (or range's) figures in: sums and extremes.
    pub fn merge(&mut self, other: &RangeStats) {
        if other.count == 0 {
            return;
        }
        self.min_ns = if self.count == 0 { other.min_ns } else { self.min_ns.min(other.min_ns) };
        self.max_ns = self.max_ns.max(other.max_ns);
        self.count += other.count;
        self.total_ns += other.total_ns;
    }
}

/// Counters the object keeps of what it could not record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounters {
    /// Contention events of a range whose first event found the stats map full.
    pub stats_full: u64,
    /// Sleeping waits not timed: the per-task table was full.
    pub waiters_full: u64,
    /// Ends whose begin was not seen (nested contention on one CPU, or attached mid-wait).
    pub unmatched: u64,
    /// Every contention_begin on the system, tracked or not.
    pub seen: u64,
    /// contention_begin events on a tracked range.
    pub tracked: u64,
}

/// The loaded, attached contention object. Dropping it detaches the programs.
pub struct ContentionProbe {
    ebpf: Ebpf,
    pub program_ids: Vec<(String, u32)>,
}

impl ContentionProbe {
    /// Loads the object sized for `table`, fills the range table, then attaches (so no
    /// event is looked up in a half-filled table).
    pub fn load(assets: &AssetLoader, table: &RangeTable) -> Result<Self, LockStatsError> {
        let nr_ranges = u32::try_from(table.ranges.len()).unwrap_or(u32::MAX);
        let capacity = nr_ranges.max(1);
        let probe = assets.load_core_asset(CONTENTION_ASSET, |bytes, loader| {
            // Checked by load_core_asset before calling us (and recorded if missing).
            let btf = assets.btf().map_err(|e| AssetError::BtfNotFound(e.to_string()))?;
            loader.global("nr_ranges", &nr_ranges.to_ne_bytes());
            loader.max_entries("ranges", capacity).max_entries("stats", capacity);
            let started = std::time::Instant::now();
            let mut ebpf = loader.load(bytes).map_err(|e| AssetError::from_ebpf(CONTENTION_ASSET, e))?;
            let loaded = started.elapsed();
            fill_ranges(&mut ebpf, table)?;
            tracing::debug!(?loaded, filled = ?started.elapsed() - loaded, "lockstats: contention object maps");
            let mut program_ids = Vec::new();
            for name in PROGRAMS {
                program_ids.push((name.to_string(), attach(&mut ebpf, name, &btf.btf)?));
            }
            Ok(ContentionProbe { ebpf, program_ids })
        })?;
        Ok(probe)
    }

    /// Per-range statistics summed over CPUs, for ranges that saw contention.
    pub fn stats(&self) -> Result<Vec<(u32, RangeStats)>, LockStatsError> {
        let map = self.ebpf.map("stats").ok_or_else(|| map_error("stats", "not in the object"))?;
        let stats: PerCpuHashMap<_, u32, RangeStats> =
            PerCpuHashMap::try_from(map).map_err(|e| map_error("stats", &e.to_string()))?;
        let mut out = Vec::new();
        for entry in stats.iter() {
            let (range, per_cpu) = entry.map_err(|e| map_error("stats", &e.to_string()))?;
            let mut total = RangeStats::default();
            per_cpu.iter().for_each(|cpu| total.merge(cpu));
            out.push((range, total));
        }
        Ok(out)
    }

    /// The drop counters summed over CPUs.
    pub fn drops(&self) -> Result<DropCounters, LockStatsError> {
        let map = self.ebpf.map("counters").ok_or_else(|| map_error("counters", "not in the object"))?;
        let counters: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|e| map_error("counters", &e.to_string()))?;
        let sum = |i: u32| -> Result<u64, LockStatsError> {
            let values = counters.get(&i, 0).map_err(|e| map_error("counters", &e.to_string()))?;
            Ok(values.iter().sum())
        };
        Ok(DropCounters {
            stats_full: sum(0)?,
            waiters_full: sum(1)?,
            unmatched: sum(2)?,
            seen: sum(3)?,
            tracked: sum(4)?,
        })
    }
}

fn fill_ranges(ebpf: &mut Ebpf, table: &RangeTable) -> Result<(), AssetError> {
    let fill_error = |e: MapError| AssetError::Verifier {
        asset: CONTENTION_ASSET.into(),
        program: "(map ranges)".into(),
        log_tail: format!("filling the range table: {e}"),
    };
    let map = ebpf.map_mut("ranges").ok_or_else(|| missing_in_object(CONTENTION_ASSET, "map ranges"))?;
    let mut ranges: Array<_, RawRange> = Array::try_from(map).map_err(fill_error)?;
    for (i, r) in table.ranges.iter().enumerate() {
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        ranges.set(index, RawRange { start: r.start, end: r.end }, 0).map_err(fill_error)?;
    }
    Ok(())
}

fn attach(ebpf: &mut Ebpf, name: &str, btf: &aya::Btf) -> Result<u32, AssetError> {
    let program: &mut BtfTracePoint = asset::program_mut(ebpf, CONTENTION_ASSET, name)?;
    program.load(name, btf).map_err(|e| AssetError::from_program_load(CONTENTION_ASSET, name, e))?;
    program.attach().map_err(|e| AssetError::from_program_attach(CONTENTION_ASSET, name, e))?;
    let info = program.info().map_err(|e| AssetError::from_program_attach(CONTENTION_ASSET, name, e))?;
    Ok(info.id())
}

fn map_error(map: &str, reason: &str) -> LockStatsError {
    LockStatsError::Map { map: map.into(), reason: reason.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_sums_counts_and_keeps_extremes_ignoring_idle_cpus() {
        let mut total = RangeStats::default();
        total.merge(&RangeStats { count: 2, total_ns: 300, min_ns: 100, max_ns: 200 });
        total.merge(&RangeStats::default());
        total.merge(&RangeStats { count: 1, total_ns: 50, min_ns: 50, max_ns: 50 });
        assert_eq!(total, RangeStats { count: 3, total_ns: 350, min_ns: 50, max_ns: 200 });
    }
}
