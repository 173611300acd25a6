//! The conntracker's lifecycle: start, in-place change, make-before-break replacement, stop.
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::change::{all_in_place, changed_keys};
use super::{Modules, ReloadAction, ReloadError, ReloadReport, Saved, require_capability};
use crate::asset::AssetLoader;
use crate::conntrack::chain::Strategies;
use crate::conntrack::chain::{self, Strategy};
use crate::conntrack::handover::{HandedOver, hand_over};
use crate::conntrack::{ConntrackConfig, RunningConntracker};
use crate::conntrack::{MODULE, serve};
use crate::status::{ModuleState, ReloadRecord, now_unix_ms};

/// Keys applied to a running eBPF conntracker without a new object: they tune the
/// userspace tasks (seeding, destroy listener, sweep), not the program or its map.
const IN_PLACE: &[&str] = &[
    "sweep_interval_secs",
    "destroy_events",
    "stale_after_secs",
    "initial_dump_timeout_secs",
    "storm_shed_above_per_sec",
    "storm_sustain_secs",
];

/// A running conntracker and the token that stops its tasks.
pub(super) struct Instance {
    running: RunningConntracker,
    token: CancellationToken,
}

impl Instance {
    /// Cancels the tasks and waits for them; the object goes when its last `Arc` does.
    async fn stop(self) {
        self.token.cancel();
        let mut tasks = self.running.tasks;
        while tasks.join_next().await.is_some() {}
    }
}

pub(super) async fn apply(
    modules: &Modules,
    slot: &mut Option<Instance>,
    cfg: ConntrackConfig,
) -> Result<ReloadReport, ReloadError> {
    let started = Instant::now();
    let registry = modules.registry().clone();
    let changed = changed_keys(modules.conntrack_config().as_ref(), &cfg);
    if let Err(e) = cfg.validate() {
        let reason = e.to_string();
        Saved::take(&registry, MODULE).restore_with_failure(&registry, MODULE, &changed, reason.clone());
        return Err(ReloadError::InvalidConfig { module: MODULE, reason });
    }
    if !cfg.enabled {
        let mut report = stop(modules, slot).await;
        modules.write().conntrack_config = Some(cfg);
        report.changed = changed;
        return Ok(report);
    }
    let action = match slot.as_ref() {
        Some(_) if changed.is_empty() => ReloadAction::Unchanged,
        Some(running) if running.running.map.is_some() && all_in_place(&changed, IN_PLACE) => {
            ReloadAction::InPlace
        }
        Some(_) => ReloadAction::Replaced,
        None => ReloadAction::Started,
    };
    let handed_over = match action {
        ReloadAction::Unchanged => None,
        ReloadAction::InPlace => {
            change_in_place(modules, slot, &cfg).await;
            None
        }
        _ => replace(modules, slot, &cfg, &changed, &modules.assets()).await?,
    };
    let how =
        matches!(action, ReloadAction::InPlace | ReloadAction::Replaced).then(|| action.as_str().to_string());
    modules.write().conntrack_config = Some(cfg);
    Ok(reported(modules, action, how, changed, handed_over, started))
}

/// Records in status what a reload changed and how (`how`: `None` when nothing was
/// reloaded), and the report of it with the instance now serving.
fn reported(
    modules: &Modules,
    action: ReloadAction,
    how: Option<String>,
    changed: Vec<String>,
    handed_over: Option<HandedOver>,
    started: Instant,
) -> ReloadReport {
    let registry = modules.registry();
    if let Some(how) = how {
        let last = ReloadRecord { at_unix_ms: now_unix_ms(), changed: changed.clone(), how };
        registry.update_module(MODULE, |m| m.last_reload = Some(last));
    }
    let record = registry.module(MODULE).unwrap_or_else(|| crate::status::ModuleRecord::new(MODULE));
    ReloadReport {
        module: MODULE,
        action,
        changed,
        generation: record.generation,
        implementation: record.strategy,
        handed_over,
        took: started.elapsed(),
        notes: Vec::new(),
    }
}

/// Restarts the tasks of the running object with the new settings: the new destroy
/// listener subscribes before the old one stops, so no DESTROY event falls between them.
async fn change_in_place(modules: &Modules, slot: &mut Option<Instance>, cfg: &ConntrackConfig) {
    let Some(old) = slot.take() else { return };
    let Some(map) = old.running.map.clone() else {
        *slot = Some(old);
        return;
    };
    let token = modules.inner.shutdown.child_token();
    // The same object serves the API before and after: only its tasks change.
    let status = chain::RunningStatus::new(modules.registry());
    let running = serve::serve(map, cfg, &status, token.clone()).await;
    chain::record_serving(modules.registry(), &running);
    old.stop().await;
    *slot = Some(Instance { running, token });
}

/// Replaces a running fallback conntracker (prebuilt, netlink) by the CO-RE one loaded
/// with `assets`, when the configuration lists `core`: BTF that was missing has arrived.
/// `None` when there is nothing to replace. The configuration in force is unchanged (its
/// chain is only narrowed to `core` for this one start, so a CO-RE failure is an error
/// here instead of another fallback).
pub(super) async fn onto_core(
    modules: &Modules,
    slot: &mut Option<Instance>,
    assets: &AssetLoader,
) -> Result<Option<ReloadReport>, ReloadError> {
    let Some(cfg) = modules.conntrack_config().filter(|c| c.enabled) else { return Ok(None) };
    let running_core = slot.as_ref().is_some_and(|i| i.running.tracker.strategy().starts_with("core/"));
    if running_core || !cfg.strategies.iter().any(|s| s == Strategy::Core) {
        return Ok(None);
    }
    let started = Instant::now();
    let core_only = ConntrackConfig {
        strategies: Strategies::new(vec![Strategy::Core])
            .map_err(|e| ReloadError::InvalidConfig { module: MODULE, reason: e.to_string() })?,
        ..cfg.clone()
    };
    let changed = vec!["btf".to_string()];
    let handed_over = replace(modules, slot, &core_only, &changed, assets).await?;
    let how = "replaced: kernel BTF arrived (remote config), the fallback gave way to CO-RE".to_string();
    Ok(Some(reported(modules, ReloadAction::Replaced, Some(how), changed, handed_over, started)))
}

/// Make-before-break: the new conntracker is started (loaded, attached, serving its own
/// map) while the old one runs; the old one's translations are handed to it; the API is
/// switched; only then is the old one stopped.
async fn replace(
    modules: &Modules,
    slot: &mut Option<Instance>,
    cfg: &ConntrackConfig,
    changed: &[String],
    assets: &AssetLoader,
) -> Result<Option<HandedOver>, ReloadError> {
    let registry = modules.registry();
    let saved = Saved::take(registry, MODULE);
    if let Err(e) = check_capabilities(cfg, slot.is_some()) {
        saved.restore_with_failure(registry, MODULE, changed, e.to_string());
        return Err(e);
    }
    let token = modules.inner.shutdown.child_token();
    let loaded = Instant::now();
    let new = match chain::start(cfg, assets, registry, token.clone()).await {
        Ok(new) => new,
        Err(e) => {
            token.cancel();
            saved.restore_with_failure(registry, MODULE, changed, e.to_string());
            return Err(e.into());
        }
    };
    let handed = match slot.as_ref() {
        Some(old) => match hand_over(&old.running, &new) {
            Ok(handed) => Some(handed),
            Err(e) => {
                // The old one still serves: a copy that cannot be made must not cost
                // the translations it holds.
                token.cancel();
                let mut tasks = new.tasks;
                while tasks.join_next().await.is_some() {}
                let reason = format!("handing the translations over: {e}");
                saved.restore_with_failure(registry, MODULE, changed, reason.clone());
                return Err(ReloadError::Handover { reason });
            }
        },
        None => None,
    };
    modules.write().conntrack = Some(Arc::clone(&new.tracker));
    if let Some(old) = slot.take() {
        old.stop().await;
    }
    let generation = saved.0.as_ref().map_or(0, |r| r.generation) + 1;
    let load_time = loaded.elapsed();
    registry.update_module(MODULE, |m| {
        m.generation = generation;
        m.loaded_at_unix_ms = now_unix_ms();
        m.load_time = load_time;
    });
    *slot = Some(Instance { running: new, token });
    Ok(handed)
}

/// A new eBPF object needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN). The ctnetlink
/// sockets need CAP_NET_ADMIN: without it a first start runs degraded (no seeding, no
/// destroy events; status says so), as it always did, but a reload must not silently
/// replace a complete instance with a degraded one.
fn check_capabilities(cfg: &ConntrackConfig, replacing: bool) -> Result<(), ReloadError> {
    use caps::Capability as C;
    if replacing {
        require_capability(MODULE, C::CAP_NET_ADMIN, "CAP_NET_ADMIN", "following conntrack over ctnetlink")?;
    }
    let needs_ebpf = cfg.strategies.iter().any(|s| s != Strategy::Netlink);
    let admin = caps::has_cap(None, caps::CapSet::Effective, C::CAP_SYS_ADMIN).unwrap_or(false);
    if needs_ebpf && !admin {
        require_capability(MODULE, C::CAP_BPF, "CAP_BPF", "loading a new conntrack eBPF object")?;
        require_capability(MODULE, C::CAP_PERFMON, "CAP_PERFMON", "attaching a conntrack tracing program")?;
    }
    Ok(())
}

pub(super) async fn stop(modules: &Modules, slot: &mut Option<Instance>) -> ReloadReport {
    let started = Instant::now();
    modules.write().conntrack = None;
    let was_running = slot.is_some();
    if let Some(old) = slot.take() {
        old.stop().await;
    }
    modules.registry().update_module(MODULE, |m| {
        m.state = if was_running { ModuleState::Stopped } else { ModuleState::Disabled };
        m.strategy.clear();
    });
    ReloadReport {
        module: MODULE,
        action: ReloadAction::Stopped,
        changed: Vec::new(),
        generation: 0,
        implementation: String::new(),
        handed_over: None,
        took: started.elapsed(),
        notes: Vec::new(),
    }
}
