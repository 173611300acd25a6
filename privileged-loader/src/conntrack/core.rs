//! The CO-RE conntracker: `bpf/conntrack.bpf.c` loaded through the CO-RE asset loader,
//! attached with the first strategy that works here, read through [`Conntracker`].
//!
//! [`start`] also seeds the map with the entries that existed before the program was
//! attached (a ctnetlink dump), and starts the tasks that keep it clean: the DESTROY
//! event listener and the sweep (`serve.rs`). `docs/conntrack.md` states the policy.
use std::sync::Arc;
use std::time::Instant;

use aya::programs::{BtfTracePoint, FEntry, KProbe, ProgramError, RawTracePoint};
use aya::{Btf, Ebpf};
use tokio_util::sync::CancellationToken;

use super::config::ConntrackConfig;
use super::hook::Strategy;
use super::map;
use super::map_tracker::CoreConntracker;
use super::serve::{RunningConntracker, serve};
use super::{ConntrackError, MODULE};
use crate::asset::{AssetError, AssetLoader, error_chain};
use crate::status::{HookAttempt, ModuleState, Registry};

/// Name of the asset (`bpf/conntrack.bpf.c`).
pub const ASSET: &str = "conntrack";
/// The implementation name its hook attempts are recorded under (`conntrack::chain`).
const IMPLEMENTATION: &str = "core";

/// Loads the CO-RE conntracker, trying fentry → kprobe → tp_btf and recording each
/// attempt in the Registry module "conntrack"; loads existing entries with a ctnetlink
/// dump (bounded by `initial_dump_timeout_secs`); starts the destroy-event listener and
/// the sweep, which stop when `shutdown` is cancelled.
///
/// The netlink sockets belong to the network namespace of the *calling thread*: that is
/// the namespace whose existing entries are loaded and whose destroy events are seen.
pub async fn start(
    cfg: &ConntrackConfig,
    assets: &AssetLoader,
    registry: &Registry,
    shutdown: CancellationToken,
) -> Result<RunningConntracker, ConntrackError> {
    let started = Instant::now();
    if !cfg.enabled {
        registry.update_module(MODULE, |m| m.state = ModuleState::Disabled);
        return Err(ConntrackError::Disabled);
    }
    let result = start_enabled(cfg, assets, registry, shutdown).await;
    registry.update_module(MODULE, |m| {
        m.load_time = started.elapsed();
        match &result {
            Ok((_, strategy)) => {
                m.state = ModuleState::Running;
                m.strategy = strategy.name().to_string();
            }
            Err(e) => {
                m.state = ModuleState::Failed;
                m.last_error = Some(e.to_string());
            }
        }
    });
    result.map(|(running, _)| running)
}

async fn start_enabled(
    cfg: &ConntrackConfig,
    assets: &AssetLoader,
    registry: &Registry,
    shutdown: CancellationToken,
) -> Result<(RunningConntracker, Strategy), ConntrackError> {
    cfg.validate()?;
    let (ebpf, strategy) = load(cfg, assets, registry)?;
    let tracker = Arc::new(CoreConntracker::from_loaded(ebpf, strategy, cfg.max_entries)?);
    let strategy = tracker.strategy;
    Ok((serve(tracker, cfg, registry, shutdown).await, strategy))
}

/// Loads the object with the configured constants and map size, and attaches the
/// first strategy that works.
fn load(
    cfg: &ConntrackConfig,
    assets: &AssetLoader,
    registry: &Registry,
) -> Result<(Ebpf, Strategy), ConntrackError> {
    let (ebpf, strategy) = assets.load_core_asset(ASSET, |bytes, loader| {
        loader.map_max_entries(map::MAP_NAME, cfg.max_entries);
        loader.override_global("tcpv6_enabled", flag(cfg.tcpv6_enabled), true);
        loader.override_global("udpv6_enabled", flag(cfg.udpv6_enabled), true);
        let mut ebpf = loader.load(bytes).map_err(|e| AssetError::from_ebpf(ASSET, e))?;
        let btf = assets.btf().map_err(|e| AssetError::BtfNotFound(e.to_string()))?;
        let strategy = attach_first(&mut ebpf, &btf.btf, registry, &cfg.attach_strategies)?;
        Ok((ebpf, strategy))
    })?;
    Ok((ebpf, strategy))
}

/// Tries each allowed [`Strategy`] in the fixed order; records every attempt; returns
/// the first that attached, or the last failure.
fn attach_first(
    ebpf: &mut Ebpf,
    btf: &Btf,
    registry: &Registry,
    allowed: &[Strategy],
) -> Result<Strategy, AssetError> {
    let mut last_error = None;
    for strategy in Strategy::ORDER.into_iter().filter(|s| allowed.contains(s)) {
        match attach(ebpf, btf, strategy) {
            Ok(()) => {
                tracing::info!(module = MODULE, hook = strategy.hook(), "conntracker attached");
                registry.update_module(MODULE, |m| {
                    m.record_hook(IMPLEMENTATION, HookAttempt::ok(strategy.hook()))
                });
                return Ok(strategy);
            }
            Err(e) => {
                let reason = attempt_reason(&e);
                tracing::info!(module = MODULE, hook = strategy.hook(), %reason, "attach strategy unavailable");
                registry.update_module(MODULE, |m| {
                    m.record_hook(IMPLEMENTATION, HookAttempt::failed(strategy.hook(), reason))
                });
                last_error = Some(e);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| AssetError::Attach {
        asset: ASSET.into(),
        program: "(none)".into(),
        reason: "no attach strategy allowed: conntrack.attach_strategies is empty".into(),
    }))
}

fn attempt_reason(err: &AssetError) -> String {
    let raw = match err {
        AssetError::Verifier { log_tail, .. } => format!("load failed: {log_tail}"),
        AssetError::Attach { reason, .. } => format!("attach failed: {reason}"),
        other => other.to_string(),
    };
    match likely_cause(&raw) {
        Some(cause) => format!("{cause} ({raw})"),
        None => raw,
    }
}

/// The usual cause behind a raw attach/load error, in words an operator can act on.
fn likely_cause(raw: &str) -> Option<&'static str> {
    if raw.contains("devices/kprobe/type") {
        Some("kprobes unavailable: the kernel has no kprobe PMU (CONFIG_KPROBES not set)")
    } else if raw.contains("load failed") && raw.contains("Operation not permitted") {
        Some("EPERM on load: tracing trampolines are blocked here (lockdown or ftrace disabled)")
    } else {
        None
    }
}

fn attach(ebpf: &mut Ebpf, btf: &Btf, strategy: Strategy) -> Result<(), AssetError> {
    match strategy {
        Strategy::FEntry => {
            let prog: &mut FEntry = program(ebpf, "ct_fentry_hash_insert")?;
            prog.load("__nf_conntrack_hash_insert", btf)
                .map_err(|e| load_error("ct_fentry_hash_insert", e))?;
            prog.attach().map(drop).map_err(|e| attach_error("ct_fentry_hash_insert", e))
        }
        Strategy::KProbeHashInsert => kprobe(ebpf, "ct_kprobe_hash_insert", "__nf_conntrack_hash_insert"),
        Strategy::KProbeConfirm => {
            kprobe(ebpf, "ct_kprobe_confirm", "__nf_conntrack_confirm")?;
            let ret = kprobe(ebpf, "ct_kretprobe_confirm", "__nf_conntrack_confirm");
            if ret.is_err() {
                // Without the return probe the entry probe only fills confirm_args.
                if let Ok(prog) = program::<KProbe>(ebpf, "ct_kprobe_confirm") {
                    let _ = prog.unload();
                }
            }
            ret
        }
        Strategy::TpBtf => {
            let prog: &mut BtfTracePoint = program(ebpf, "ct_net_dev_queue")?;
            prog.load("net_dev_queue", btf).map_err(|e| load_error("ct_net_dev_queue", e))?;
            prog.attach().map(drop).map_err(|e| attach_error("ct_net_dev_queue", e))
        }
        Strategy::RawTracepoint => {
            let prog: &mut RawTracePoint = program(ebpf, "ct_raw_net_dev_queue")?;
            prog.load().map_err(|e| load_error("ct_raw_net_dev_queue", e))?;
            prog.attach("net_dev_queue").map(drop).map_err(|e| attach_error("ct_raw_net_dev_queue", e))
        }
        Strategy::PrebuiltKprobe | Strategy::PrebuiltRawTracepoint => Err(AssetError::Attach {
            asset: ASSET.into(),
            program: strategy.hook().into(),
            reason: "a prebuilt hook: attached by conntrack::prebuilt, not the CO-RE object".into(),
        }),
    }
}

fn kprobe(ebpf: &mut Ebpf, name: &str, symbol: &str) -> Result<(), AssetError> {
    let prog: &mut KProbe = program(ebpf, name)?;
    prog.load().map_err(|e| load_error(name, e))?;
    if let Err(e) = prog.attach(symbol, 0) {
        let _ = prog.unload();
        return Err(attach_error(name, e));
    }
    Ok(())
}

fn program<'e, P>(ebpf: &'e mut Ebpf, name: &str) -> Result<&'e mut P, AssetError>
where
    &'e mut P: TryFrom<&'e mut aya::programs::Program, Error = ProgramError>,
{
    let missing = |reason: String| AssetError::Read {
        asset: ASSET.into(),
        path: String::new(),
        reason: format!("program {name}: {reason}"),
    };
    let prog = ebpf.program_mut(name).ok_or_else(|| missing("not in the object".into()))?;
    prog.try_into().map_err(|e: ProgramError| missing(error_chain(&e)))
}

fn load_error(program: &str, err: ProgramError) -> AssetError {
    AssetError::from_program_load(ASSET, program, err)
}

fn attach_error(program: &str, err: ProgramError) -> AssetError {
    AssetError::from_program_attach(ASSET, program, err)
}

/// `set_global` wants a reference that outlives the loader: promote to 'static.
fn flag(on: bool) -> &'static u8 {
    if on { &1 } else { &0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_reasons_name_the_likely_cause_and_keep_the_raw_error() {
        let no_pmu = AssetError::Attach {
            asset: ASSET.into(),
            program: "p".into(),
            reason: "`/sys/bus/event_source/devices/kprobe/type`: No such file or directory (os error 2)"
                .into(),
        };
        let reason = attempt_reason(&no_pmu);
        assert!(reason.starts_with("kprobes unavailable"), "{reason}");
        assert!(reason.contains("os error 2"), "{reason}");
        let eperm = AssetError::Verifier {
            asset: ASSET.into(),
            program: "p".into(),
            log_tail: "Operation not permitted (os error 1)".into(),
        };
        assert!(attempt_reason(&eperm).starts_with("EPERM on load"));
    }
}
