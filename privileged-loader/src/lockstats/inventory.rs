//! Every BPF map on the system with the kernel addresses of its locks, from the
//! `iter/bpf_map` program (`bpf/lockstat_maps.bpf.c`).
//!
//! Why an iterator: this kernel has no kprobes to catch `struct bpf_map` pointers at map
//! creation, and user space cannot read kernel memory. The iterator is handed each live
//! map's pointer by the kernel and reads the fields behind it with CO-RE.
use aya::Ebpf;
use aya::programs::Iter;

use super::error::LockStatsError;
use super::ksym::run_iterator;
use super::layout::{self, MapsSnapshot};
use crate::asset::{self, AssetError, AssetLoader};

pub const MAPS_ASSET: &str = "lockstat_maps";
const MAPS_PROGRAM: &str = "lockstat_maps";
/// Mirrors LOCKSTAT_MAX_CPUS in the object.
const MAX_CPUS: u32 = 512;

/// Runs the map iterator once. `per_cpu_offset_addr` is the address of `__per_cpu_offset`,
/// or 0 when the kernel does not expose it: then the per-CPU offsets are measured on the
/// object's own per-CPU probe map (see `bpf/lockstat_maps.bpf.c`). Runs the object
/// `preloaded` holds when it was loaded for the same constants; otherwise (or without
/// one) loads its own, and the preloaded one is unloaded.
pub fn snapshot(
    assets: &AssetLoader,
    per_cpu_offset_addr: u64,
    preloaded: Option<Preloaded>,
) -> Result<MapsSnapshot, LockStatsError> {
    let settings = Settings { per_cpu_offset_addr, nr_cpus: possible_cpus()? };
    let mut ebpf = match preloaded {
        Some(preloaded) if preloaded.settings == settings => preloaded.loaded?,
        _ => load(assets, &settings)?,
    };
    let program: &mut Iter = asset::program_mut(&mut ebpf, MAPS_ASSET, MAPS_PROGRAM)?;
    let output = run_iterator(program, MAPS_ASSET, MAPS_PROGRAM)?;
    layout::decode(&output, probe_map_id(&ebpf))
        .map_err(|e| LockStatsError::Decode { iterator: MAPS_PROGRAM.into(), reason: e.to_string() })
}

/// The map iterator loaded ahead of [`snapshot`], which runs it: at start-up its CO-RE
/// relocation and verification (the costliest load of the lock statistics) then happen
/// on a thread while the conntracker loads, and the walk itself still comes after every
/// module has loaded. Handed by the caller from [`preload`] to [`snapshot`]; its load
/// outcome is recorded at the load, once, as a load in `snapshot` would be.
pub struct Preloaded {
    settings: Settings,
    loaded: Loaded,
}

/// Loads the map iterator for `per_cpu_offset_addr` (see [`Preloaded`]); `None` when the
/// number of CPUs cannot be read (then [`snapshot`] says why).
pub fn preload(assets: &AssetLoader, per_cpu_offset_addr: u64) -> Option<Preloaded> {
    let settings = Settings { per_cpu_offset_addr, nr_cpus: possible_cpus().ok()? };
    Some(Preloaded { settings, loaded: load(assets, &settings) })
}

/// The object's two constants: a preloaded object serves only a walk with the same ones.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Settings {
    per_cpu_offset_addr: u64,
    nr_cpus: u32,
}

type Loaded = Result<Ebpf, LockStatsError>;

/// Loads the object with `settings` and verifies its iterator program.
fn load(assets: &AssetLoader, settings: &Settings) -> Loaded {
    let ebpf = assets.load_core_asset(MAPS_ASSET, |bytes, loader| {
        // Checked by load_core_asset before calling us (and recorded if missing).
        let btf = assets.btf().map_err(|e| AssetError::BtfNotFound(e.to_string()))?;
        loader.global("per_cpu_offset_addr", &settings.per_cpu_offset_addr.to_ne_bytes());
        loader.global("nr_cpus", &settings.nr_cpus.to_ne_bytes());
        let mut ebpf = loader.load(bytes).map_err(|e| AssetError::from_ebpf(MAPS_ASSET, e))?;
        let program: &mut Iter = asset::program_mut(&mut ebpf, MAPS_ASSET, MAPS_PROGRAM)?;
        program
            .load("bpf_map", &btf.btf)
            .map_err(|e| AssetError::from_program_load(MAPS_ASSET, MAPS_PROGRAM, e))?;
        Ok(ebpf)
    })?;
    Ok(ebpf)
}

/// Number of possible CPUs (ids 0..n), bounded by what the object can read.
fn possible_cpus() -> Result<u32, LockStatsError> {
    let n = aya::util::nr_cpus().map_err(|(path, e)| LockStatsError::Iterator {
        iterator: MAPS_PROGRAM.into(),
        reason: format!("reading {path}: {e}"),
    })?;
    Ok(u32::try_from(n).unwrap_or(MAX_CPUS).min(MAX_CPUS))
}

/// The kernel id of the object's `pcpu_probe` map, if it can be read.
fn probe_map_id(ebpf: &Ebpf) -> Option<u32> {
    match ebpf.map("pcpu_probe")? {
        aya::maps::Map::PerCpuArray(data) => data.info().ok().map(|info| info.id()),
        _ => None,
    }
}
