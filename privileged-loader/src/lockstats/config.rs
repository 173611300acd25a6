//! The `[lockstats]` configuration section.
use serde::{Deserialize, Serialize};

/// Default bound on tracked lock ranges: a 2-CPU hash map costs 3 ranges (buckets and
/// two per-CPU freelist heads), so this covers thousands of maps while keeping the
/// in-kernel table (16 bytes a range) and the stats map small.
pub const DEFAULT_MAX_RANGES: u32 = 16_384;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockStatsConfig {
    /// Load and attach the collector. Off: nothing is loaded and the status says so.
    pub enabled: bool,
    /// Watch every BPF map on the system, not only the loader's own.
    pub track_all_maps: bool,
    /// Most lock ranges tracked in the kernel; maps beyond it are left out (and listed).
    pub max_ranges: u32,
}

impl Default for LockStatsConfig {
    fn default() -> Self {
        Self { enabled: true, track_all_maps: false, max_ranges: DEFAULT_MAX_RANGES }
    }
}
