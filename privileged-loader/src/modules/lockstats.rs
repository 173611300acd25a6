//! The lock-statistics collector's lifecycle: start, make-before-break replacement, stop.
//!
//! Every change replans the tracked ranges (the range table is sized and filled at load),
//! so a reload attaches a new collector and then detaches the old one; both count while
//! they overlap, and the report comes from the new one only.
use std::sync::Arc;
use std::time::Instant;

use super::change::changed_keys;
use super::{Modules, ReloadAction, ReloadError, ReloadReport, Saved, require_capability};
use crate::conntrack::MODULE as CONNTRACK;
use crate::lockstats::{self, CollectorState, LockStatsConfig, MODULE, OwnedMap, Prefetched};
use crate::status::{ModuleRecord, ModuleState, ReloadRecord, now_unix_ms};

/// Applies `cfg`; `prefetched` is what start-up loaded ahead (see
/// [`lockstats::prefetch_kernel_symbols`]), used when a collector is started.
pub(super) fn apply(
    modules: &Modules,
    cfg: LockStatsConfig,
    prefetched: Option<Prefetched>,
) -> Result<ReloadReport, ReloadError> {
    let started = Instant::now();
    let registry = modules.registry().clone();
    let changed = changed_keys(modules.lockstats_config().as_ref(), &cfg);
    if !cfg.enabled {
        let mut report = stop(modules);
        // GetLockStats keeps answering: the state disabled, and why. Nothing is loaded.
        let disabled = lockstats::start(&cfg, &modules.assets(), &registry, &[]);
        modules.write().lockstats = Some(Arc::new(disabled));
        modules.write().lockstats_config = Some(cfg);
        report.changed = changed;
        return Ok(report);
    }
    let running = is_running(modules);
    if running && changed.is_empty() {
        let record = registry.module(MODULE).unwrap_or_else(|| ModuleRecord::new(MODULE));
        return Ok(report(ReloadAction::Unchanged, changed, &record, started));
    }
    start_new(modules, cfg, changed, started, prefetched)
}

/// Replans a running collector after the conntracker was replaced: the maps it watches
/// (and holds open) are those of the old conntracker. `None` when none runs.
pub(super) fn replan(modules: &Modules) -> Option<Result<ReloadReport, ReloadError>> {
    if !is_running(modules) {
        return None;
    }
    let cfg = modules.lockstats_config()?;
    Some(start_new(modules, cfg, vec!["(the conntracker's maps)".into()], Instant::now(), None))
}

/// Starts a collector with `cfg`; once it runs, detaches the one it replaces.
fn start_new(
    modules: &Modules,
    cfg: LockStatsConfig,
    changed: Vec<String>,
    started: Instant,
    prefetched: Option<Prefetched>,
) -> Result<ReloadReport, ReloadError> {
    let registry = modules.registry().clone();
    let running = is_running(modules);
    let saved = Saved::take(&registry, MODULE);
    // Opening the watched maps by id needs CAP_SYS_ADMIN, which the steady state drops.
    if let Err(e) = require_capability(
        MODULE,
        caps::Capability::CAP_SYS_ADMIN,
        "CAP_SYS_ADMIN",
        "opening the watched BPF maps by id",
    ) {
        saved.restore_with_failure(&registry, MODULE, &changed, e.to_string());
        return Err(e);
    }
    let owned: Vec<OwnedMap> = modules
        .conntracker()
        .iter()
        .flat_map(|c| c.bpf_map_ids())
        .map(|id| OwnedMap::by_id(id, CONNTRACK))
        .collect();
    registry.update_module(MODULE, ModuleRecord::begin_attempt);
    let collector = lockstats::start_prefetched(&cfg, &modules.assets(), &registry, &owned, prefetched);
    if collector.state() != CollectorState::Running {
        let reason = collector.snapshot().status.reasons.join("; ");
        drop(collector);
        saved.restore_with_failure(&registry, MODULE, &changed, reason.clone());
        return Err(ReloadError::LockStats { reason });
    }
    let old = modules.write().lockstats.replace(Arc::new(collector));
    if let Some(old) = old {
        // Detach now, not when the last API call holding it ends.
        old.detach();
    }
    let generation = saved.0.as_ref().map_or(0, |r| r.generation) + 1;
    let action = if running { ReloadAction::Replaced } else { ReloadAction::Started };
    registry.update_module(MODULE, |m| {
        m.generation = generation;
        m.loaded_at_unix_ms = now_unix_ms();
        if running {
            let how = action.as_str().to_string();
            m.last_reload = Some(ReloadRecord { at_unix_ms: now_unix_ms(), changed: changed.clone(), how });
        }
    });
    modules.write().lockstats_config = Some(cfg);
    let record = registry.module(MODULE).unwrap_or_else(|| ModuleRecord::new(MODULE));
    Ok(report(action, changed, &record, started))
}

fn is_running(modules: &Modules) -> bool {
    modules.lockstats().is_some_and(|c| c.state() == CollectorState::Running)
}

pub(super) fn stop(modules: &Modules) -> ReloadReport {
    let started = Instant::now();
    let was_running = is_running(modules);
    let old = modules.write().lockstats.take();
    if let Some(old) = old {
        old.detach();
    }
    let registry = modules.registry();
    registry.update_module(MODULE, |m| {
        m.state = if was_running { ModuleState::Stopped } else { ModuleState::Disabled };
        m.strategy.clear();
    });
    let record = registry.module(MODULE).unwrap_or_else(|| ModuleRecord::new(MODULE));
    let mut report = report(ReloadAction::Stopped, Vec::new(), &record, started);
    report.generation = 0;
    report
}

fn report(
    action: ReloadAction,
    changed: Vec<String>,
    record: &ModuleRecord,
    started: Instant,
) -> ReloadReport {
    ReloadReport {
        module: MODULE,
        action,
        changed,
        generation: record.generation,
        implementation: record.strategy.clone(),
        handed_over: None,
        took: started.elapsed(),
        notes: Vec::new(),
    }
}
