//! Lock-contention statistics for BPF maps (the post-register flow).
//!
//! Once every module is loaded, [`start`] runs Initialize: it picks the maps to watch
//! (the loader's own, plus every map on the system with `track_all_maps`), resolves
//! `__per_cpu_offset` (iter/ksym, else /proc/kallsyms), reads where each map's locks live
//! (iter/bpf_map with CO-RE), turns that into a bounded, sorted table of address ranges,
//! and attaches `tp_btf/contention_begin`/`contention_end`, which time every contended
//! lock whose address falls in a tracked range. [`LockStatsCollector::snapshot`] folds the
//! per-range figures into a per-map, per-lock-type [`LockStatsReport`].
//!
//! Initialize never fails the loader: every problem becomes a status reason and the
//! module state in the [`Registry`]. It must run before capabilities are dropped (opening
//! other programs' maps by id needs CAP_SYS_ADMIN). See docs/lockstats.md.
pub mod api;
mod config;
mod contention;
mod error;
pub mod inventory;
mod kernel_config;
pub mod ksym;
pub mod layout;
pub mod ranges;
mod report;
mod targets;

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

pub use config::{DEFAULT_MAX_RANGES, LockStatsConfig};
pub use contention::{CONTENTION_ASSET, DropCounters, RangeStats};
pub use error::LockStatsError;
pub use kernel_config::functions_only_config;
pub use ranges::{LockRange, LockType, RangeTable};
pub use report::{
    CollectorState, LockStatsReport, LockStatsStatus, LockTypeStats, MapLeftOut, MapLockStats, ProgramRef,
};
pub use targets::{EXTERNAL, MapSelector, OwnedMap};

use contention::ContentionProbe;
use layout::MapsSnapshot;
use report::MapMeta;
use targets::{HeldMap, Target};

use crate::asset::AssetLoader;
use crate::status::{HookAttempt, ModuleState, Registry};

/// The module name in the status registry.
pub const MODULE: &str = "lockstats";
/// The hooks of the contention object, as its status attempt names them.
const CONTENTION_HOOKS: &str = "tp_btf/contention_begin+contention_end";

/// The running (or disabled, or failed) collector. Cheap to share behind an `Arc`.
pub struct LockStatsCollector {
    inner: Mutex<Inner>,
    registry: Registry,
}

struct Inner {
    status: LockStatsStatus,
    probe: Option<ContentionProbe>,
    table: RangeTable,
    meta: BTreeMap<u32, MapMeta>,
    /// Keeps watched maps alive while their ranges are tracked.
    _held: Vec<HeldMap>,
}

/// Initialize. Never blocks start-up for long and never fails: read the returned
/// collector's status (also recorded as module "lockstats" in `registry`).
pub fn start(
    cfg: &LockStatsConfig,
    assets: &AssetLoader,
    registry: &Registry,
    owned_maps: &[OwnedMap],
) -> LockStatsCollector {
    start_prefetched(cfg, assets, registry, owned_maps, None)
}

/// [`start`], with what [`prefetch_kernel_symbols`] loaded ahead (at the loader's start).
pub fn start_prefetched(
    cfg: &LockStatsConfig,
    assets: &AssetLoader,
    registry: &Registry,
    owned_maps: &[OwnedMap],
    prefetched: Option<Prefetched>,
) -> LockStatsCollector {
    let started = Instant::now();
    let mut inner = if cfg.enabled {
        initialize(cfg, assets, owned_maps, prefetched)
    } else {
        let mut status = LockStatsStatus::new(CollectorState::Disabled, cfg.max_ranges);
        status.reasons.push("disabled by configuration (lockstats.enabled = false)".into());
        Inner::empty(status)
    };
    inner.status.initialize_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    record_module(registry, &inner.status, started.elapsed());
    match inner.status.state {
        CollectorState::Running => tracing::info!(
            maps = inner.status.tracked_maps,
            ranges = inner.status.tracked_ranges,
            left_out = inner.status.maps_left_out.len(),
            us = inner.status.initialize_us,
            "lock contention collector running"
        ),
        state => {
            tracing::warn!(?state, reasons = ?inner.status.reasons, "lock contention collector not running")
        }
    }
    LockStatsCollector { inner: Mutex::new(inner), registry: registry.clone() }
}

impl Inner {
    fn empty(status: LockStatsStatus) -> Self {
        Self { status, probe: None, table: RangeTable::default(), meta: BTreeMap::new(), _held: Vec::new() }
    }
}

fn initialize(
    cfg: &LockStatsConfig,
    assets: &AssetLoader,
    owned_maps: &[OwnedMap],
    prefetched: Option<Prefetched>,
) -> Inner {
    let mut status = LockStatsStatus::new(CollectorState::Running, cfg.max_ranges);
    let step = Instant::now();
    let per_cpu_offset = resolve_per_cpu_offset(assets, &mut status);
    tracing::debug!(elapsed = ?step.elapsed(), "lockstats: kernel symbols resolved");
    let step = Instant::now();
    let snapshot = match inventory::snapshot(assets, per_cpu_offset, prefetched.and_then(|p| p.maps)) {
        Ok(snapshot) => snapshot,
        Err(e) => return failed(status, format!("walking BPF maps: {e}")),
    };
    tracing::debug!(elapsed = ?step.elapsed(), maps = snapshot.maps.len(), "lockstats: maps walked");
    let step = Instant::now();
    let (targets, unmatched) = targets::select(&snapshot.maps, owned_maps, cfg.track_all_maps);
    for owned in unmatched {
        status.reasons.push(format!(
            "owned map {:?} of module {} not found on the system",
            owned.selector, owned.owner
        ));
    }
    let (held, table, meta) = plan(&targets, &snapshot, cfg.max_ranges, &mut status);
    tracing::debug!(elapsed = ?step.elapsed(), ranges = table.ranges.len(), "lockstats: maps opened, ranges planned");
    let step = Instant::now();
    let probe = ContentionProbe::load(assets, &table);
    tracing::debug!(elapsed = ?step.elapsed(), "lockstats: contention object loaded");
    match probe {
        Ok(probe) => {
            status.programs = probe
                .program_ids
                .iter()
                .map(|(name, id)| ProgramRef { name: name.clone(), id: *id })
                .collect();
            Inner { status, probe: Some(probe), table, meta, _held: held }
        }
        Err(e) => failed(status, format!("loading the contention object: {e}")),
    }
}

/// `__per_cpu_offset`, or 0 with a reason: the map iterator then measures the per-CPU
/// offsets on a per-CPU array of its own instead.
fn resolve_per_cpu_offset(assets: &AssetLoader, status: &mut LockStatsStatus) -> u64 {
    match per_cpu_offset(assets) {
        Ok((addr, source)) => {
            status.symbols_source = source.to_string();
            addr
        }
        Err(e) => {
            status.symbols_source = "pcpu_probe map".into();
            status.reasons.push(format!("{e}; per-CPU offsets measured on a per-CPU array map instead"));
            0
        }
    }
}

/// What the kernel's symbol table says about `__per_cpu_offset`: its address and where it
/// was found, or why it is not usable (the error's text).
type PerCpuOffset = Result<(u64, &'static str), String>;

/// The answer of the ksym iterator, once it ran: the symbol table does not change while
/// the kernel runs, and walking it (every kernel symbol) is the costliest step of
/// Initialize. Likewise "not listed", when the kernel's configuration says the table has
/// functions only: then it is not walked at all. A `/proc/kallsyms` fallback's answer is
/// not kept: the next start tries the iterator again.
static PER_CPU_OFFSET: OnceLock<PerCpuOffset> = OnceLock::new();

fn per_cpu_offset(assets: &AssetLoader) -> PerCpuOffset {
    if let Some(known) = PER_CPU_OFFSET.get() {
        return known.clone();
    }
    if let Some(config) = kernel_config::functions_only_config() {
        let unlisted = LockStatsError::SymbolUnlisted { symbol: ksym::PER_CPU_OFFSET.into(), config };
        return PER_CPU_OFFSET.get_or_init(|| Err(unlisted.to_string())).clone();
    }
    let (symbols, iter_error) = ksym::resolve(assets, &[ksym::PER_CPU_OFFSET]);
    let answer =
        symbols.address(ksym::PER_CPU_OFFSET).map(|addr| (addr, symbols.source)).map_err(|e| e.to_string());
    match iter_error {
        None => PER_CPU_OFFSET.get_or_init(|| answer).clone(),
        Some(reason) => {
            tracing::debug!(%reason, "iter/ksym did not give every symbol; /proc/kallsyms tried");
            answer
        }
    }
}

/// What [`prefetch_kernel_symbols`] loaded ahead, for [`start_prefetched`].
pub struct Prefetched {
    maps: Option<inventory::Preloaded>,
}

/// Finds `__per_cpu_offset` and loads the map iterator for it ahead of
/// [`start_prefetched`], so that start-up can do both on a thread while other modules
/// load; the caller hands what it returns to [`start_prefetched`]. Records nothing itself
/// but the assets' loads; the start reports the rest.
pub fn prefetch_kernel_symbols(assets: &AssetLoader) -> Prefetched {
    let addr = per_cpu_offset(assets).map_or_else(
        |reason| {
            tracing::debug!(%reason, "lockstats: __per_cpu_offset not usable; Initialize will say why");
            0
        },
        |(addr, _source)| addr,
    );
    Prefetched { maps: inventory::preload(assets, addr) }
}

/// Opens the targets, computes their ranges and fits them in the bound.
fn plan(
    targets: &[Target],
    snapshot: &MapsSnapshot,
    max_ranges: u32,
    status: &mut LockStatsStatus,
) -> (Vec<HeldMap>, RangeTable, BTreeMap<u32, MapMeta>) {
    let mut held = Vec::new();
    let mut candidates = Vec::new();
    let fd_budget = usize::try_from(targets::fd_budget()).unwrap_or(usize::MAX);
    for target in targets {
        let ranges = ranges::lock_ranges(&target.layout, &snapshot.per_cpu_offsets);
        if ranges.is_empty() {
            continue; // arrays, queues, ...: no lock of their own that we track
        }
        if held.len() >= fd_budget {
            let reason = format!(
                "holding its fd would leave too few under RLIMIT_NOFILE ({fd_budget} map fds available); raise the loader's open-file limit"
            );
            status.maps_left_out.push(left_out(target, reason));
            continue;
        }
        match targets::hold(target) {
            Ok(h) => {
                held.push(h);
                candidates.push(ranges);
            }
            Err(reason) => {
                status.maps_left_out.push(left_out(target, format!("could not be opened: {reason}")))
            }
        }
    }
    let (table, dropped) = RangeTable::build(&candidates, usize::try_from(max_ranges).unwrap_or(usize::MAX));
    let by_id: BTreeMap<u32, &Target> = targets.iter().map(|t| (t.layout.id, t)).collect();
    for d in dropped {
        if let Some(target) = by_id.get(&d.map_id) {
            status.maps_left_out.push(left_out(target, d.reason));
        }
    }
    if !status.maps_left_out.is_empty() {
        status
            .reasons
            .push(format!("{} map(s) with locks left out: see maps_left_out", status.maps_left_out.len()));
    }
    let tracked: std::collections::BTreeSet<u32> = table.ranges.iter().map(|r| r.map_id).collect();
    held.retain(|h| tracked.contains(&h.id));
    let meta = tracked
        .iter()
        .filter_map(|id| by_id.get(id))
        .map(|t| {
            (
                t.layout.id,
                MapMeta { name: t.layout.name.clone(), map_type: t.layout.map_type, owner: t.owner.clone() },
            )
        })
        .collect();
    status.tracked_maps = u32::try_from(tracked.len()).unwrap_or(u32::MAX);
    status.tracked_ranges = u32::try_from(table.ranges.len()).unwrap_or(u32::MAX);
    (held, table, meta)
}

fn left_out(target: &Target, reason: String) -> MapLeftOut {
    MapLeftOut { id: target.layout.id, name: target.layout.name.clone(), owner: target.owner.clone(), reason }
}

fn failed(mut status: LockStatsStatus, reason: String) -> Inner {
    status.state = CollectorState::Failed;
    status.reasons.insert(0, reason);
    Inner::empty(status)
}

fn record_module(registry: &Registry, status: &LockStatsStatus, took: std::time::Duration) {
    registry.update_module(MODULE, |m| {
        m.load_time = took;
        m.strategy = match status.state {
            CollectorState::Running => "core/tp_btf".into(),
            _ => String::new(),
        };
        m.state = match status.state {
            CollectorState::Running => ModuleState::Running,
            CollectorState::Disabled => ModuleState::Disabled,
            CollectorState::Failed => ModuleState::Failed,
        };
        let verdict = match status.state {
            CollectorState::Running => Ok(()),
            _ => Err(status.reasons.join("; ")),
        };
        let hook = match &verdict {
            Ok(()) => HookAttempt::ok(CONTENTION_HOOKS),
            Err(reason) => HookAttempt::failed(CONTENTION_HOOKS, reason.clone()),
        };
        m.record_hook("core", hook);
        m.finish_attempt("core", verdict);
        m.last_error = (status.state == CollectorState::Failed).then(|| status.reasons.join("; "));
    });
}

impl LockStatsCollector {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent across a panic elsewhere: keep serving it.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current figures and status. Reading the kernel maps can fail (it should not);
    /// then the status carries the reason and the maps are listed without figures.
    pub fn snapshot(&self) -> LockStatsReport {
        let inner = self.lock();
        let mut status = inner.status.clone();
        let stats = match &inner.probe {
            Some(probe) => {
                match probe.drops() {
                    Ok(d) => {
                        status.dropped_ranges = d.stats_full;
                        status.dropped_waiters = d.waiters_full;
                        status.unmatched_events = d.unmatched;
                        status.events_seen = d.seen;
                        status.events_tracked = d.tracked;
                    }
                    Err(e) => status.reasons.push(e.to_string()),
                }
                probe.stats().unwrap_or_else(|e| {
                    status.reasons.push(e.to_string());
                    Vec::new()
                })
            }
            None => Vec::new(),
        };
        let maps = report::aggregate(&inner.table, &inner.meta, &stats);
        LockStatsReport { status, maps }
    }

    /// Detaches the programs and releases the watched maps; the status then says
    /// Disabled with `reason`. Used when configuration turns the collector off.
    pub fn disable(&self, reason: &str) {
        let mut inner = self.lock();
        let max_ranges = inner.status.max_ranges;
        let mut status = LockStatsStatus::new(CollectorState::Disabled, max_ranges);
        status.reasons.push(reason.to_string());
        *inner = Inner::empty(status);
        record_module(&self.registry, &inner.status, std::time::Duration::ZERO);
        tracing::info!(reason, "lock contention collector disabled: programs detached");
    }

    /// Detaches the programs and releases the watched maps, recording nothing: the
    /// lifecycle (`crate::modules`) that replaced or stopped it writes the module's status.
    pub fn detach(&self) {
        let mut inner = self.lock();
        let mut status = LockStatsStatus::new(CollectorState::Disabled, inner.status.max_ranges);
        status.reasons.push("stopped".into());
        *inner = Inner::empty(status);
    }

    pub fn state(&self) -> CollectorState {
        self.lock().status.state
    }
}

#[cfg(test)]
mod tests {
    /// The lead shares the collector between gRPC handlers behind an `Arc`.
    #[test]
    fn collector_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<super::LockStatsCollector>();
    }
}
