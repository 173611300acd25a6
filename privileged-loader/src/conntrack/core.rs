//! The CO-RE conntracker's loading: `bpf/conntrack.bpf.c` loaded through the CO-RE asset
//! loader and attached with the first hook that works here.
//!
//! It loads and attaches only: [`load`] returns the object, the hook used and every hook
//! it tried; the chain (`chain.rs`) records them in the module's status and hands the
//! object to `serve.rs`, which serves its map.
use aya::programs::{BtfTracePoint, FEntry, KProbe, ProgramError, RawTracePoint};
use aya::{Btf, Ebpf};

use super::MODULE;
use super::config::ConntrackConfig;
use super::hook::Strategy;
use super::map;
use crate::asset::{self, AssetError, AssetLoader};
use crate::status::HookAttempt;

/// Name of the asset (`bpf/conntrack.bpf.c`).
pub const ASSET: &str = "conntrack";

/// Loads the object with the configured constants and map size, and attaches the first
/// allowed hook that works (fentry → kprobe → tp_btf). Every hook tried is appended to
/// `hooks`, whatever the result.
pub fn load(
    cfg: &ConntrackConfig,
    assets: &AssetLoader,
    hooks: &mut Vec<HookAttempt>,
) -> Result<(Ebpf, Strategy), AssetError> {
    assets.load_core_asset(ASSET, |bytes, loader| {
        loader.max_entries(map::MAP_NAME, cfg.max_entries);
        loader.global("tcpv6_enabled", &[u8::from(cfg.tcpv6_enabled)]);
        loader.global("udpv6_enabled", &[u8::from(cfg.udpv6_enabled)]);
        let mut ebpf = loader.load(bytes).map_err(|e| AssetError::from_ebpf(ASSET, e))?;
        let btf = assets.btf().map_err(|e| AssetError::BtfNotFound(e.to_string()))?;
        let strategy = attach_first(&mut ebpf, &btf.btf, hooks, &cfg.attach_strategies)?;
        Ok((ebpf, strategy))
    })
}

/// Tries each allowed [`Strategy`] in the fixed order; appends every attempt to `hooks`;
/// returns the first that attached, or the last failure.
fn attach_first(
    ebpf: &mut Ebpf,
    btf: &Btf,
    hooks: &mut Vec<HookAttempt>,
    allowed: &[Strategy],
) -> Result<Strategy, AssetError> {
    let mut last_error = None;
    for strategy in Strategy::ORDER.into_iter().filter(|s| allowed.contains(s)) {
        match attach(ebpf, btf, strategy) {
            Ok(()) => {
                tracing::info!(module = MODULE, hook = strategy.hook(), "conntracker attached");
                hooks.push(HookAttempt::ok(strategy.hook()));
                return Ok(strategy);
            }
            Err(e) => {
                let reason = attempt_reason(&e);
                tracing::info!(module = MODULE, hook = strategy.hook(), %reason, "attach strategy unavailable");
                hooks.push(HookAttempt::failed(strategy.hook(), reason));
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
            let prog: &mut FEntry = asset::program_mut(ebpf, ASSET, "ct_fentry_hash_insert")?;
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
                if let Ok(prog) = asset::program_mut::<KProbe>(ebpf, ASSET, "ct_kprobe_confirm") {
                    let _ = prog.unload();
                }
            }
            ret
        }
        Strategy::TpBtf => {
            let prog: &mut BtfTracePoint = asset::program_mut(ebpf, ASSET, "ct_net_dev_queue")?;
            prog.load("net_dev_queue", btf).map_err(|e| load_error("ct_net_dev_queue", e))?;
            prog.attach().map(drop).map_err(|e| attach_error("ct_net_dev_queue", e))
        }
        Strategy::RawTracepoint => {
            let prog: &mut RawTracePoint = asset::program_mut(ebpf, ASSET, "ct_raw_net_dev_queue")?;
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
    let prog: &mut KProbe = asset::program_mut(ebpf, ASSET, name)?;
    prog.load().map_err(|e| load_error(name, e))?;
    if let Err(e) = prog.attach(symbol, 0) {
        let _ = prog.unload();
        return Err(attach_error(name, e));
    }
    Ok(())
}

fn load_error(program: &str, err: ProgramError) -> AssetError {
    AssetError::from_program_load(ASSET, program, err)
}

fn attach_error(program: &str, err: ProgramError) -> AssetError {
    AssetError::from_program_attach(ASSET, program, err)
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
