//! The prebuilt conntracker: `bpf/conntrack_prebuilt.bpf.c` with the offsets found by
//! [`crate::offsetguess`], for kernels without BTF.
//!
//! It fills the same `conntrack` map, with the same layout, as the CO-RE conntracker, so
//! what reads that map (the entries/lookup answers, the initial dump, destroy events, the
//! sweep) is the same code (`serve.rs`, `map_tracker.rs`), not a copy. Only loading
//! differs: no BTF at all, guessed offsets as load-time constants, and two hooks that need
//! no BTF, tried in order — kprobe on `__nf_conntrack_hash_insert`, else
//! `raw_tracepoint/net_dev_queue`. This file loads and attaches only; the chain records.
use aya::programs::{KProbe, RawTracePoint};

use super::ConntrackConfig;
use super::hook::Strategy;
use crate::asset::{self, AssetError, AssetLoader, ObjectLoader};
use crate::offsetguess::{self, GuessError, GuessReport, OffsetGuessConfig};
use crate::status::HookAttempt;

pub const ASSET: &str = "conntrack_prebuilt";
const KPROBE: &str = "prebuilt_kprobe_hash_insert";
const KPROBE_TARGET: &str = "__nf_conntrack_hash_insert";
const RAW_TP: &str = "prebuilt_net_dev_queue";
const RAW_TP_TARGET: &str = "net_dev_queue";

#[derive(Debug, thiserror::Error)]
pub enum PrebuiltError {
    #[error(transparent)]
    Guess(#[from] GuessError),
    #[error(transparent)]
    Asset(#[from] AssetError),
}

/// What the prebuilt object needs besides the offsets.
#[derive(Clone, Debug)]
pub struct PrebuiltSettings {
    pub max_entries: u32,
    pub tcpv6_enabled: bool,
    pub udpv6_enabled: bool,
    pub offsetguess: OffsetGuessConfig,
}

/// A loaded and attached prebuilt object; its map `conntrack` is filled from now on.
pub struct LoadedPrebuilt {
    pub ebpf: aya::Ebpf,
    /// [`Strategy::PrebuiltKprobe`] or [`Strategy::PrebuiltRawTracepoint`].
    pub hook: Strategy,
    pub guess: GuessReport,
}

/// Guesses the offsets (cached per process), loads the object with them (without BTF:
/// it has no CO-RE relocation), attaches the first hook that works. The guess and every
/// hook tried are appended to `hooks`; the asset loader records the load's outcome.
pub fn load(
    settings: &PrebuiltSettings,
    assets: &AssetLoader,
    hooks: &mut Vec<HookAttempt>,
) -> Result<LoadedPrebuilt, PrebuiltError> {
    // Blocks for the guessing run (about 0.1 s here, bounded by offsetguess.timeout_ms),
    // once per process: later calls use the cached offsets.
    let guess = offsetguess::guess_cached(&settings.offsetguess, assets)?;
    hooks.push(HookAttempt { hook: "offsetguess".into(), ok: true, reason: guess.to_string() });
    let globals = Globals::new(settings, &guess);
    let (ebpf, hook) = assets.load_btf_free_asset(ASSET, |object, loader| {
        globals.set(loader, settings.max_entries);
        let mut ebpf = loader.load(object).map_err(|e| AssetError::from_ebpf(ASSET, e))?;
        let hook = attach(&mut ebpf, hooks)?;
        Ok((ebpf, hook))
    })?;
    Ok(LoadedPrebuilt { ebpf, hook, guess })
}

/// The object's load-time constants: the guessed offsets and the enabled families.
struct Globals {
    offsets: [(&'static str, u64); 6],
    tcpv6: u8,
    udpv6: u8,
}

impl Globals {
    fn new(settings: &PrebuiltSettings, guess: &GuessReport) -> Self {
        let o = guess.offsets;
        let offsets = [
            ("off_nfct", u64::from(o.skb_nfct)),
            ("off_origin", u64::from(o.origin)),
            ("off_reply", u64::from(o.reply)),
            ("off_status", u64::from(o.status)),
            ("off_netns", u64::from(o.netns)),
            ("off_ino", u64::from(o.netns_inum)),
        ];
        Self { offsets, tcpv6: u8::from(settings.tcpv6_enabled), udpv6: u8::from(settings.udpv6_enabled) }
    }

    fn set(&self, loader: &mut ObjectLoader<'_, '_>, max_entries: u32) {
        loader.max_entries("conntrack", max_entries);
        for (name, value) in self.offsets {
            loader.global(name, &value.to_ne_bytes());
        }
        loader.global("tcpv6_enabled", &[self.tcpv6]);
        loader.global("udpv6_enabled", &[self.udpv6]);
    }
}

/// Tries the kprobe, then the raw tracepoint; appends each attempt to `hooks`.
fn attach(ebpf: &mut aya::Ebpf, hooks: &mut Vec<HookAttempt>) -> Result<Strategy, AssetError> {
    let mut record = |hook: Strategy, result: &Result<(), AssetError>| {
        hooks.push(match result {
            Ok(()) => HookAttempt::ok(hook.hook()),
            Err(e) => HookAttempt::failed(hook.hook(), e.to_string()),
        });
    };
    let kprobe = attach_kprobe(ebpf);
    record(Strategy::PrebuiltKprobe, &kprobe);
    if kprobe.is_ok() {
        return Ok(Strategy::PrebuiltKprobe);
    }
    let raw = attach_raw_tracepoint(ebpf);
    record(Strategy::PrebuiltRawTracepoint, &raw);
    raw.map(|()| Strategy::PrebuiltRawTracepoint)
}

fn attach_kprobe(ebpf: &mut aya::Ebpf) -> Result<(), AssetError> {
    let program: &mut KProbe = asset::program_mut(ebpf, ASSET, KPROBE)?;
    program.load().map_err(|e| AssetError::from_program_load(ASSET, KPROBE, e))?;
    program.attach(KPROBE_TARGET, 0).map_err(|e| AssetError::from_program_attach(ASSET, KPROBE, e))?;
    Ok(())
}

fn attach_raw_tracepoint(ebpf: &mut aya::Ebpf) -> Result<(), AssetError> {
    let program: &mut RawTracePoint = asset::program_mut(ebpf, ASSET, RAW_TP)?;
    program.load().map_err(|e| AssetError::from_program_load(ASSET, RAW_TP, e))?;
    program.attach(RAW_TP_TARGET).map_err(|e| AssetError::from_program_attach(ASSET, RAW_TP, e))?;
    Ok(())
}

/// Settings of the prebuilt object, from the `[conntrack]` section.
impl From<&ConntrackConfig> for PrebuiltSettings {
    fn from(cfg: &ConntrackConfig) -> Self {
        PrebuiltSettings {
            max_entries: cfg.max_entries,
            tcpv6_enabled: cfg.tcpv6_enabled,
            udpv6_enabled: cfg.udpv6_enabled,
            offsetguess: cfg.offsetguess.clone(),
        }
    }
}
