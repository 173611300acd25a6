//! Benchmarks of the lock-contention collector (root, real kernel). Prints figures.
//!
//!   cargo run --release -p privileged-loader --example bench_lockstats [-- <seconds per phase>]
//!
//! 1. Overhead: map-update throughput of the hammer workload (4 threads, batched
//!    updates of one key of a 16-bucket hash map) with and without the collector attached,
//!    alternating phases in the same run so machine noise hits both alike.
//! 2. Initialize time with 1,000 extra hash maps on the system (track_all_maps = true),
//!    and with only the loader's own map watched.
#[path = "../tests/lockstats_support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use privileged_loader::asset::AssetLoader;
use privileged_loader::btf::{BtfConfig, discover};
use privileged_loader::lockstats::{self, LockStatsConfig, OwnedMap};
use privileged_loader::status::Registry;
use support::{BPF_MAP_TYPE_HASH, Hammer, RawMap, unique_name};

const PHASES: usize = 6;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let secs: u64 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(4);
    let registry = Registry::default();
    let assets = AssetLoader::new(discover(&BtfConfig::default()), None, registry.clone());
    overhead(&assets, &registry, Duration::from_secs(secs))?;
    initialize_time(&assets, &registry)?;
    Ok(())
}

/// Updates per second of the hammer over `phase`.
fn throughput(map: &Arc<RawMap>, phase: Duration) -> f64 {
    let hammer = Hammer::start(vec![map.clone()], 4);
    std::thread::sleep(phase);
    let updates = hammer.stop();
    updates as f64 / phase.as_secs_f64()
}

fn overhead(assets: &AssetLoader, registry: &Registry, phase: Duration) -> anyhow::Result<()> {
    let hot = Arc::new(RawMap::create_sized(BPF_MAP_TYPE_HASH, 16, 0, &unique_name("lb_hot"), 1024)?);
    let cfg = LockStatsConfig { track_all_maps: true, ..LockStatsConfig::default() };
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let mut last_report = None;
    for _ in 0..PHASES {
        off.push(throughput(&hot, phase));
        let collector = lockstats::start(&cfg, assets, registry, &[OwnedMap::by_id(hot.id, "bench")]);
        on.push(throughput(&hot, phase));
        last_report = Some(collector.snapshot());
    }
    // Medians: the machine is shared, single phases swing by 10-20 %.
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    let (off_median, on_median) = (median(&off), median(&on));
    println!("== overhead: hammer throughput, {PHASES} alternating phases of {phase:?} each (medians) ==");
    println!("without collector: {off_median:>12.0} updates/s  (phases: {off:.0?})");
    println!("with collector:    {on_median:>12.0} updates/s  (phases: {on:.0?})");
    println!("loss:              {:>11.2} %", (off_median - on_median) / off_median * 100.0);
    if let Some(report) = last_report {
        let s = &report.status;
        println!(
            "last 'on' phase: {} maps / {} ranges tracked, {} contention events seen system-wide, {} on tracked ranges",
            s.tracked_maps, s.tracked_ranges, s.events_seen, s.events_tracked
        );
    }
    Ok(())
}

fn initialize_time(assets: &AssetLoader, registry: &Registry) -> anyhow::Result<()> {
    let own = RawMap::create(BPF_MAP_TYPE_HASH, 64, 0, &unique_name("lb_own"))?;
    let before = Instant::now();
    let extra: Vec<RawMap> = (0..1000)
        .map(|_| RawMap::create(BPF_MAP_TYPE_HASH, 64, 0, &unique_name("lb_x")))
        .collect::<Result<_, _>>()
        .context("creating 1,000 hash maps")?;
    println!("\n== Initialize with {} extra hash maps (created in {:?}) ==", extra.len(), before.elapsed());
    let owned = [OwnedMap::by_id(own.id, "bench")];
    for track_all_maps in [true, false] {
        let cfg = LockStatsConfig { track_all_maps, ..LockStatsConfig::default() };
        let mut times = Vec::new();
        let mut status = None;
        for _ in 0..3 {
            let collector = lockstats::start(&cfg, assets, registry, &owned);
            let s = collector.snapshot().status;
            times.push(Duration::from_micros(s.initialize_us));
            status = Some(s);
        }
        let s = status.context("three runs")?;
        println!(
            "track_all_maps={track_all_maps:<5}: initialize {:?} (runs: {times:?}); {} maps, {} ranges tracked, {} left out, state {:?}",
            times.iter().min().copied().unwrap_or_default(),
            s.tracked_maps,
            s.tracked_ranges,
            s.maps_left_out.len(),
            s.state
        );
    }
    Ok(())
}
