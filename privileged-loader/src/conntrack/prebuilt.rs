//! The prebuilt conntracker: `bpf/conntrack_prebuilt.bpf.c` with the offsets found by
//! [`crate::offsetguess`], for kernels without BTF.
//!
//! It fills the same `conntrack` map, with the same layout, as the CO-RE conntracker, so
//! what reads that map (the entries/lookup answers, the initial dump, destroy events, the
//! sweep) is the CO-RE conntracker's code, not a copy. Only loading differs: no BTF at
//! all, guessed offsets as load-time constants, and two hooks that need no BTF, tried in
//! order — kprobe on `__nf_conntrack_hash_insert`, else `raw_tracepoint/net_dev_queue`.
use std::time::Instant;

use aya::programs::{KProbe, RawTracePoint};

use tokio_util::sync::CancellationToken;

use super::hook::Strategy;
use super::{ConntrackConfig, ConntrackError, RunningConntracker};
use crate::asset::{AssetError, AssetLoader};
use crate::offsetguess::{self, GuessError, GuessReport, OffsetGuessConfig};
use crate::status::{AssetOutcome, HookAttempt, Registry};

pub const ASSET: &str = "conntrack_prebuilt";
/// The implementation name its hook attempts are recorded under (`conntrack::chain`).
const IMPLEMENTATION: &str = "prebuilt";
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

/// Guesses the offsets (cached per process), loads the object with them, attaches the
/// first hook that works. Records the asset outcome and every hook attempt in `registry`
/// (module `module`).
pub fn load(
    settings: &PrebuiltSettings,
    assets: &AssetLoader,
    registry: &Registry,
    module: &str,
) -> Result<LoadedPrebuilt, PrebuiltError> {
    let guess = offsetguess::guess_cached(&settings.offsetguess, assets)?;
    registry.update_module(module, |m| {
        m.record_hook(
            IMPLEMENTATION,
            HookAttempt { hook: "offsetguess".into(), ok: true, reason: guess.to_string() },
        )
    });
    let started = Instant::now();
    let result = assets.read_asset(ASSET).and_then(|object| load_object(&object, settings, &guess));
    let elapsed = started.elapsed();
    let mut ebpf = match result {
        Ok(ebpf) => ebpf,
        Err(e) => {
            registry.record_asset(ASSET, e.outcome(), e.to_string(), elapsed);
            return Err(e.into());
        }
    };
    match attach(&mut ebpf, registry, module) {
        Ok(hook) => {
            registry.record_asset(
                ASSET,
                AssetOutcome::Loaded { btf_source: None },
                guess.to_string(),
                elapsed,
            );
            Ok(LoadedPrebuilt { ebpf, hook, guess })
        }
        Err(e) => {
            registry.record_asset(ASSET, e.outcome(), e.to_string(), elapsed);
            Err(e.into())
        }
    }
}

/// Loads without kernel BTF: the object has no CO-RE relocation to resolve.
fn load_object(
    object: &[u8],
    settings: &PrebuiltSettings,
    guess: &GuessReport,
) -> Result<aya::Ebpf, AssetError> {
    let o = guess.offsets;
    let offsets = [
        ("off_nfct", u64::from(o.skb_nfct)),
        ("off_origin", u64::from(o.origin)),
        ("off_reply", u64::from(o.reply)),
        ("off_status", u64::from(o.status)),
        ("off_netns", u64::from(o.netns)),
        ("off_ino", u64::from(o.netns_inum)),
    ];
    let (tcpv6, udpv6) = (u8::from(settings.tcpv6_enabled), u8::from(settings.udpv6_enabled));
    let mut loader = aya::EbpfLoader::new();
    loader.btf(None).map_max_entries("conntrack", settings.max_entries);
    for (name, value) in &offsets {
        loader.override_global(name, value, true);
    }
    loader.override_global("tcpv6_enabled", &tcpv6, true).override_global("udpv6_enabled", &udpv6, true);
    loader.load(object).map_err(|e| AssetError::from_ebpf(ASSET, e))
}

/// Tries the kprobe, then the raw tracepoint; records each attempt.
fn attach(ebpf: &mut aya::Ebpf, registry: &Registry, module: &str) -> Result<Strategy, AssetError> {
    let record = |hook: Strategy, result: &Result<(), AssetError>| {
        let attempt = match result {
            Ok(()) => HookAttempt::ok(hook.hook()),
            Err(e) => HookAttempt::failed(hook.hook(), e.to_string()),
        };
        registry.update_module(module, |m| m.record_hook(IMPLEMENTATION, attempt));
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
    let program: &mut KProbe = program(ebpf, KPROBE)?;
    program.load().map_err(|e| AssetError::from_program_load(ASSET, KPROBE, e))?;
    program.attach(KPROBE_TARGET, 0).map_err(|e| AssetError::from_program_attach(ASSET, KPROBE, e))?;
    Ok(())
}

fn attach_raw_tracepoint(ebpf: &mut aya::Ebpf) -> Result<(), AssetError> {
    let program: &mut RawTracePoint = program(ebpf, RAW_TP)?;
    program.load().map_err(|e| AssetError::from_program_load(ASSET, RAW_TP, e))?;
    program.attach(RAW_TP_TARGET).map_err(|e| AssetError::from_program_attach(ASSET, RAW_TP, e))?;
    Ok(())
}

fn program<'a, T>(ebpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut T, AssetError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or_else(|| AssetError::Read {
        asset: ASSET.into(),
        path: String::new(),
        reason: format!("program {name} not found in the object"),
    })?;
    program.try_into().map_err(|e| AssetError::from_program_load(ASSET, name, e))
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

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Load(#[from] PrebuiltError),
    #[error(transparent)]
    Serve(#[from] ConntrackError),
}

/// Loads the prebuilt conntracker and hands its map to the same machinery that serves
/// the CO-RE conntracker's map (initial dump, destroy events, sweep, answers).
pub async fn start(
    cfg: &ConntrackConfig,
    assets: &AssetLoader,
    registry: &Registry,
    shutdown: CancellationToken,
) -> Result<RunningConntracker, StartError> {
    // Blocks for the guessing run (about 0.1 s here, bounded by offsetguess.timeout_ms),
    // once, at start, before the API serves: not worth a blocking-pool hop.
    let loaded = load(&PrebuiltSettings::from(cfg), assets, registry, super::MODULE)?;
    Ok(super::serve::serve_loaded(loaded.ebpf, loaded.hook, cfg, registry, shutdown).await?)
}
