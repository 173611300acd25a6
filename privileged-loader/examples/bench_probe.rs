//! Prints how long BTF discovery and the kernel probe take on this machine.
//!
//! `cargo run --release -p privileged-loader --example bench_probe [-- RUNS]` (root).
//! The probe's target is well under 100 ms in total; it runs once at loader start.
use std::time::{Duration, Instant};

use privileged_loader::asset::AssetLoader;
use privileged_loader::btf::{self, BtfConfig};
use privileged_loader::probe::probe;
use privileged_loader::status::Registry;

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let mut discover_times = Vec::with_capacity(runs);
    let mut probe_times = Vec::with_capacity(runs);
    let mut total_times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let found = btf::discover(&BtfConfig::default());
        let discovered = started.elapsed();
        let assets = AssetLoader::new(found, None, Registry::default());
        let probe_started = Instant::now();
        let report = probe(&assets);
        probe_times.push(probe_started.elapsed());
        discover_times.push(discovered);
        total_times.push(started.elapsed());
        anyhow::ensure!(report.attach_kinds.iter().any(|k| k.available), "nothing attaches: {report}");
    }
    println!("runs: {runs}");
    print_stats("btf::discover (sysfs)", &mut discover_times);
    print_stats("probe (load object + all trials)", &mut probe_times);
    print_stats("discover + probe", &mut total_times);
    Ok(())
}

fn print_stats(what: &str, times: &mut [Duration]) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p50 = times[times.len() / 2];
    let max = times[times.len() - 1];
    println!("{what:<36} min {:>7.2} ms  p50 {:>7.2} ms  max {:>7.2} ms", ms(times[0]), ms(p50), ms(max));
}
