//! Benchmark: reloading the CO-RE conntracker on a load-time constant change
//! (`max_entries`, alternating 131,072 ↔ 196,608) with 20,000 NAT'd connections known.
//! Run as root:
//!   cargo run --release -p privileged-loader --example bench_reload [ROUNDS]
//! Prints per round and as medians: the reload's wall time, lookups that missed while a
//! thread looked every known translation up during the swap (target 0), translations
//! lost (known before, not answered after; target 0), the peak extra resident memory of
//! the process during the swap, and the new map's kernel memory (`bytes_memlock`: the old
//! and the new map both exist until the old instance is stopped).
//!
//! Everything runs inside a network namespace this program creates and deletes. The
//! modules follow that namespace (ctnetlink), so its connections are also in their dump;
//! the handover is what carries other namespaces' translations (tests/modules_lifecycle.rs).
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use e2e_tests::nat::{FRONT_V4, nft_ruleset};
use e2e_tests::{Dnat, L4, Netns, oracle, procfs, workload};
use privileged_loader::asset::AssetLoader;
use privileged_loader::btf::{self, BtfConfig};
use privileged_loader::conntrack::chain::{Strategies, Strategy};
use privileged_loader::conntrack::{ConntrackConfig, Protocol, Tuple};
use privileged_loader::modules::Modules;
use privileged_loader::status::Registry;
use tokio_util::sync::CancellationToken;

const CONNECTIONS: usize = 20_000;
const SIZES: [u32; 2] = [131_072, 196_608];

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let ns = enter_namespace()?;
    workload::start_sink(backend())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let registry = Registry::default();
    let assets = Arc::new(AssetLoader::new(btf::discover(&BtfConfig::default()), None, registry.clone()));
    let modules = Modules::new(assets, registry, CancellationToken::new());
    runtime.block_on(modules.start_conntrack(config(SIZES[0])))?;

    for _ in 0..CONNECTIONS {
        drop(TcpStream::connect(front())?);
    }
    let known = translations(&ns)?;
    let inode = ns.inode()?;
    anyhow::ensure!(known.len() >= CONNECTIONS * 9 / 10, "only {} NAT'd entries listed", known.len());
    println!("{} translations known (conntrack -L) before the reloads", known.len());
    let lost_before = unanswered(&modules, &known, inode);
    anyhow::ensure!(lost_before == 0, "{lost_before} translations unanswered before any reload");

    let mut walls = Vec::new();
    for round in 0..rounds {
        let size = SIZES[(round + 1) % 2];
        let baseline_kb = procfs::status_kb(std::process::id(), "VmRSS")?;
        let watch = Watch::start(modules.clone(), known.clone(), inode);
        std::thread::sleep(Duration::from_millis(50));
        let report = runtime.block_on(modules.reload_conntrack(config(size)))?;
        std::thread::sleep(Duration::from_millis(50));
        let (lookups, missed, peak_kb) = watch.finish();
        let lost = unanswered(&modules, &known, inode);
        let memlock = modules.conntracker().map_or(Ok(0), |c| map_memlock(&c.bpf_map_ids()))?;
        let wall_ms = report.took.as_secs_f64() * 1000.0;
        walls.push(wall_ms);
        println!(
            "round {round}: max_entries -> {size}: {wall_ms:.1} ms wall; {missed} of {lookups} lookups missed; \
             {lost} translations lost; peak extra RSS {:.1} MB; new map {:.1} MB in the kernel; {:?}",
            peak_kb.saturating_sub(baseline_kb) as f64 / 1024.0,
            memlock as f64 / 1_048_576.0,
            report.handed_over
        );
    }
    walls.sort_by(f64::total_cmp);
    println!(
        "reload wall time: median {:.1} ms (min {:.1}, max {:.1})",
        walls[walls.len() / 2],
        walls[0],
        walls[walls.len() - 1]
    );
    runtime.block_on(modules.stop_all());
    Ok(())
}

fn config(max_entries: u32) -> ConntrackConfig {
    ConntrackConfig {
        max_entries,
        strategies: Strategies::pinned(Strategy::Core),
        ..ConntrackConfig::default()
    }
}

/// A namespace with one DNAT rule, entered by this process (threads started later too).
fn enter_namespace() -> anyhow::Result<Netns> {
    let ns = Netns::new("bench-reload")?;
    ns.add_address(&format!("{FRONT_V4}/32"))?;
    ns.apply_nft(&nft_ruleset(&[Dnat { protocol: L4::Tcp, from: front(), to: backend() }]))?;
    let file = std::fs::File::open(ns.path())?;
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
    std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "10000 65000")?;
    Ok(ns)
}

fn front() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(FRONT_V4), 80)
}

fn backend() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080)
}

fn translations(ns: &Netns) -> anyhow::Result<Vec<(Tuple, Tuple)>> {
    let tuple = |t: &oracle::Tuple| Tuple {
        src: t.src,
        src_port: t.sport,
        dst: t.dst,
        dst_port: t.dport,
        protocol: Protocol::Tcp,
    };
    Ok(oracle::nat_entries(ns)?.iter().map(|e| (tuple(&e.original), tuple(&e.reply))).collect())
}

fn answered(modules: &Modules, original: &Tuple, reply: &Tuple, netns: u32) -> bool {
    let found = modules.conntracker().and_then(|c| c.lookup(original, netns).ok().flatten());
    found.is_some_and(|(t, _)| t == *reply)
}

fn unanswered(modules: &Modules, known: &[(Tuple, Tuple)], netns: u32) -> usize {
    known.iter().filter(|(o, r)| !answered(modules, o, r, netns)).count()
}

/// Kernel memory of the maps `ids` (`bpftool map show`'s `bytes_memlock`).
fn map_memlock(ids: &[u32]) -> anyhow::Result<u64> {
    let mut total = 0;
    for id in ids {
        let out = std::process::Command::new("bpftool")
            .args(["-j", "map", "show", "id", &id.to_string()])
            .output()?;
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool map show")?;
        total += info["bytes_memlock"].as_u64().unwrap_or(0);
    }
    Ok(total)
}

/// During a reload: one thread looks every known translation up, round after round;
/// another samples the process's resident memory every millisecond.
struct Watch {
    stop: Arc<AtomicBool>,
    lookups: std::thread::JoinHandle<(u64, u64)>,
    memory: std::thread::JoinHandle<u64>,
}

impl Watch {
    fn start(modules: Modules, known: Vec<(Tuple, Tuple)>, netns: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let lookups = std::thread::spawn(move || {
            let (count, missed) = (AtomicU64::new(0), AtomicU64::new(0));
            while !flag.load(Ordering::Relaxed) {
                for (original, reply) in &known {
                    count.fetch_add(1, Ordering::Relaxed);
                    if !answered(&modules, original, reply, netns) {
                        missed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            (count.into_inner(), missed.into_inner())
        });
        let flag = stop.clone();
        let memory = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(procfs::status_kb(std::process::id(), "VmRSS").unwrap_or(0));
                std::thread::sleep(Duration::from_millis(1));
            }
            peak
        });
        Self { stop, lookups, memory }
    }

    /// (lookups, missed, peak VmRSS in kB)
    fn finish(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let (lookups, missed) = self.lookups.join().unwrap_or((0, u64::MAX));
        let peak = self.memory.join().unwrap_or(0);
        (lookups, missed, peak)
    }
}
