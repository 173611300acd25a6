//! Benchmarks of offset guessing, the prebuilt conntracker and the netlink conntracker.
//! Run as root: `cargo run --release -p privileged-loader --example bench_offsetguess`
//!
//! Prints, for docs/benchmarks.md:
//! - offset-guessing wall time, one attempt per run (median/min/max of 20 runs)
//! - data-path cost of the prebuilt hook (raw_tracepoint/net_dev_queue): loopback TCP
//!   throughput and connection rate through a DNAT rule with and without it, interleaved
//! - completeness of the prebuilt conntracker under 2,000 new NAT'd connections/s for
//!   10 s versus `conntrack -L`
//! - netlink conntracker: completeness at rising connection rates (events/s), and a
//!   DESTROY burst (`conntrack -F` of the whole table) to show ENOBUFS counted and the
//!   table resynced
//!
//! Everything runs inside a private network namespace this program creates and deletes.
//!
//! Other kernels: the qemu matrix (`tests/qemu/run-matrix.sh`, docs/testing.md) runs the
//! offset-guessing and chain tests inside Debian's 6.1 kernels.
#![allow(clippy::unwrap_used, reason = "a benchmark: a panic is the report")]
use std::collections::HashSet;

use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use e2e_tests::workload;
use privileged_loader::asset::AssetLoader;
use privileged_loader::btf::BtfError;
use privileged_loader::conntrack::chain::{self, Strategies, Strategy};
use privileged_loader::conntrack::netlink_tracker::{self, NetlinkConntracker};
use privileged_loader::conntrack::prebuilt::{self, PrebuiltSettings};
use privileged_loader::conntrack::{ConntrackConfig, Conntracker};
use privileged_loader::offsetguess::{self, OffsetGuessConfig};
use privileged_loader::status::Registry;
use tokio_util::sync::CancellationToken;

const NS: &str = "bench-offsetguess";
const VIP: &str = "10.99.0.1";
const BACKEND_PORT: u16 = 8080;

fn main() -> anyhow::Result<()> {
    let _ns = Netns::create()?;
    let registry = Registry::default();
    let assets =
        AssetLoader::new(Err(BtfError::NotFound { tried: vec!["not used".into()] }), None, registry.clone());

    guessing_time(&assets)?;
    workload::start_sink(SocketAddr::from(([127, 0, 0, 1], BACKEND_PORT)))?;
    data_path(&assets)?;
    prebuilt_completeness(&assets, &registry)?;
    core_completeness(&registry)?;
    netlink_events(&registry)?;
    netlink_stalled(&registry)?;
    Ok(())
}

fn guessing_time(assets: &AssetLoader) -> anyhow::Result<()> {
    let mut times = Vec::new();
    let mut checks = 0;
    for _ in 0..20 {
        let report = offsetguess::guess(&OffsetGuessConfig::default(), assets)?;
        times.push(report.elapsed.as_secs_f64() * 1e3);
        checks = report.checks;
    }
    times.sort_by(f64::total_cmp);
    println!(
        "offset guessing (one attempt each, 20 runs): median {:.1} ms, min {:.1} ms, max {:.1} ms; {checks} checks per run",
        times[10], times[0], times[19]
    );
    Ok(())
}

fn settings() -> PrebuiltSettings {
    PrebuiltSettings {
        max_entries: 131_072,
        tcpv6_enabled: true,
        udpv6_enabled: true,
        offsetguess: OffsetGuessConfig::default(),
    }
}

fn data_path(assets: &AssetLoader) -> anyhow::Result<()> {
    let (mut off, mut on) = ((0.0, 0.0), (0.0, 0.0));
    for _ in 0..3 {
        let sample = |acc: &mut (f64, f64)| -> anyhow::Result<()> {
            flush(); // TIME_WAIT entries of earlier samples must not slow this one
            acc.0 += throughput(2.0)? / 3.0;
            acc.1 += connection_rate(2.0)? / 3.0;
            Ok(())
        };
        sample(&mut off)?;
        let loaded = prebuilt::load(&settings(), assets, &mut Vec::new())?;
        sample(&mut on)?;
        drop(loaded);
    }
    println!(
        "prebuilt data path: TCP throughput without {:.0} MB/s, with {:.0} MB/s ({:+.1} %); connections/s without {:.0}, with {:.0} ({:+.1} %)",
        off.0,
        on.0,
        (on.0 / off.0 - 1.0) * 100.0,
        off.1,
        on.1,
        (on.1 / off.1 - 1.0) * 100.0
    );
    Ok(())
}

fn prebuilt_completeness(assets: &AssetLoader, registry: &Registry) -> anyhow::Result<()> {
    flush();
    let cfg = ConntrackConfig { strategies: Strategies::pinned(Strategy::Prebuilt), ..Default::default() };
    let runtime = runtime()?;
    let shutdown = CancellationToken::new();
    let running = runtime.block_on(chain::start(&cfg, assets, registry, shutdown.clone()))?;
    let (opened, rate) = open_connections(2000.0, Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(500));
    report("prebuilt", opened, rate, &*running.tracker)?;
    shutdown.cancel();
    Ok(())
}

/// The CO-RE conntracker through the same method, same run: the reference for the above.
fn core_completeness(registry: &Registry) -> anyhow::Result<()> {
    flush();
    let btf = privileged_loader::btf::discover(&Default::default());
    let assets = AssetLoader::new(btf, None, registry.clone());
    let runtime = runtime()?;
    let shutdown = CancellationToken::new();
    let running = runtime.block_on(privileged_loader::conntrack::start(
        &ConntrackConfig::default(),
        &assets,
        registry,
        shutdown.clone(),
    ))?;
    let (opened, rate) = open_connections(2000.0, Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(500));
    report(&format!("core ({}) reference", running.tracker.strategy()), opened, rate, &*running.tracker)?;
    shutdown.cancel();
    Ok(())
}

fn netlink_events(registry: &Registry) -> anyhow::Result<()> {
    flush();
    let runtime = runtime()?;
    let shutdown = CancellationToken::new();
    let cfg = ConntrackConfig { sweep_interval_secs: 0, ..Default::default() };
    let (tracker, _tasks) = runtime.block_on(netlink_tracker::start_tracker(
        &cfg,
        &chain::RunningStatus::new(registry),
        shutdown.clone(),
    ))?;
    for target in [2000.0, 5000.0, 10_000.0, f64::INFINITY] {
        flush_and_settle(&tracker);
        let before = tracker.stats().events.load(Ordering::Relaxed);
        let (opened, rate) = open_connections(target, Duration::from_secs(3))?;
        std::thread::sleep(Duration::from_millis(300));
        let events = tracker.stats().events.load(Ordering::Relaxed) - before;
        print!("netlink at {rate:.0} new connections/s ({events} events applied): ");
        report("", opened, rate, &*tracker)?;
    }
    // Bursts: UDP entries are cheap to make (one datagram each, to distinct ports), so
    // NEW events arrive faster than TCP allows; flushing the table then emits one DESTROY
    // per entry at once.
    flush_and_settle(&tracker);
    let stats = tracker.stats();
    let (enobufs0, resyncs0, events0) = (
        stats.enobufs.load(Ordering::Relaxed),
        stats.resyncs.load(Ordering::Relaxed),
        stats.events.load(Ordering::Relaxed),
    );
    let (sent, rate) = udp_burst(60_000)?;
    std::thread::sleep(Duration::from_millis(1500));
    println!(
        "netlink NEW burst: {sent} UDP entries at {rate:.0}/s; events applied {}, ENOBUFS counted {}, resyncs {}; table {} NAT'd entries, conntrack -L {}",
        stats.events.load(Ordering::Relaxed) - events0,
        stats.enobufs.load(Ordering::Relaxed) - enobufs0,
        stats.resyncs.load(Ordering::Relaxed) - resyncs0,
        tracker.entries()?.len(),
        conntrack_count("udp")
    );
    let (enobufs0, resyncs0) = (stats.enobufs.load(Ordering::Relaxed), stats.resyncs.load(Ordering::Relaxed));
    let t0 = Instant::now();
    flush();
    let flushed_ms = t0.elapsed().as_secs_f64() * 1e3;
    std::thread::sleep(Duration::from_millis(1500));
    println!(
        "netlink DESTROY burst: flushed in {flushed_ms:.0} ms; ENOBUFS counted {} time(s), resyncs {}; table now {} entries (conntrack -L: {})",
        stats.enobufs.load(Ordering::Relaxed) - enobufs0,
        stats.resyncs.load(Ordering::Relaxed) - resyncs0,
        tracker.entries()?.len(),
        conntrack_count("udp")
    );
    shutdown.cancel();
    Ok(())
}

/// How much the event queue absorbs: the tracker's runtime is not polled while 60,000
/// entries appear; when it runs again it drains the queue, meets ENOBUFS, and resyncs.
fn netlink_stalled(registry: &Registry) -> anyhow::Result<()> {
    flush();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let shutdown = CancellationToken::new();
    let cfg = ConntrackConfig { sweep_interval_secs: 0, ..Default::default() };
    let (tracker, _tasks) = runtime.block_on(netlink_tracker::start_tracker(
        &cfg,
        &chain::RunningStatus::new(registry),
        shutdown.clone(),
    ))?;
    let (sent, _) = udp_burst(60_000)?;
    let t0 = Instant::now();
    runtime.block_on(async {
        while tracker.stats().resyncs.load(Ordering::Relaxed) == 0 && t0.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let stats = tracker.stats();
    println!(
        "netlink stalled consumer: {sent} entries made; {} events were queued, then ENOBUFS counted {} time(s); resynced in {:.0} ms to {} entries (conntrack -L {})",
        stats.events.load(Ordering::Relaxed),
        stats.enobufs.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64() * 1e3,
        tracker.entries()?.len(),
        conntrack_count("udp")
    );
    shutdown.cancel();
    Ok(())
}

/// Flushes the table and waits until the tracker agrees (events or a resync).
fn flush_and_settle(tracker: &NetlinkConntracker) {
    flush();
    let deadline = Instant::now() + Duration::from_secs(5);
    while tracker.entries().map(|e| !e.is_empty()).unwrap_or(false) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn report(label: &str, opened: u64, rate: f64, tracker: &dyn Conntracker) -> anyhow::Result<()> {
    let oracle = conntrack_nat_sources()?;
    let listed: HashSet<u16> = tracker
        .entries()?
        .into_iter()
        .filter(|e| e.original.dst.to_string() == VIP)
        .map(|e| e.original.src_port)
        .collect();
    let found = oracle.iter().filter(|p| listed.contains(p)).count();
    let false_entries = listed.iter().filter(|p| !oracle.contains(p)).count();
    let prefix = if label.is_empty() { String::new() } else { format!("{label} completeness: ") };
    println!(
        "{prefix}{opened} connections at {rate:.0}/s; conntrack -L shows {}; tracker has {found} ({:.2} %); false entries: {false_entries}",
        oracle.len(),
        found as f64 * 100.0 / oracle.len().max(1) as f64
    );
    Ok(())
}

/// Opens DNAT'd connections at `per_sec` (infinite: as fast as possible) for `span`.
fn open_connections(per_sec: f64, span: Duration) -> anyhow::Result<(u64, f64)> {
    let (t0, mut opened) = (Instant::now(), 0u64);
    while t0.elapsed() < span {
        let due =
            if per_sec.is_finite() { (t0.elapsed().as_secs_f64() * per_sec) as u64 } else { opened + 64 };
        while opened < due {
            drop(TcpStream::connect(vip())?);
            opened += 1;
        }
        if per_sec.is_finite() {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    Ok((opened, opened as f64 / t0.elapsed().as_secs_f64()))
}

/// `count` UDP datagrams to distinct destination ports of the VIP (each its own NAT'd
/// entry), as fast as one thread can send them.
fn udp_burst(count: u16) -> anyhow::Result<(u64, f64)> {
    let socket = std::net::UdpSocket::bind(("0.0.0.0", 0))?;
    let t0 = Instant::now();
    for port in 1..=count {
        let _ = socket.send_to(b"x", (VIP, port));
    }
    Ok((u64::from(count), f64::from(count) / t0.elapsed().as_secs_f64()))
}

fn conntrack_count(proto: &str) -> usize {
    Command::new("conntrack")
        .args(["-L", "-p", proto])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0)
}

fn flush() {
    let _ = Command::new("conntrack").arg("-F").stdout(Stdio::null()).stderr(Stdio::null()).status();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?)
}

/// A private network namespace entered by this process (threads started later inherit it).
struct Netns;

impl Netns {
    fn create() -> anyhow::Result<Self> {
        let _ = Command::new("ip").args(["netns", "del", NS]).stderr(Stdio::null()).status();
        run("ip", &["netns", "add", NS])?;
        let file = std::fs::File::open(format!("/run/netns/{NS}"))?;
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
        run("ip", &["link", "set", "lo", "up"])?;
        run("ip", &["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
        let rules = format!(
            "table ip nat {{ chain output {{ type nat hook output priority -100; ip daddr {VIP} tcp dport 80 dnat to 127.0.0.1:{BACKEND_PORT}; ip daddr {VIP} meta l4proto udp dnat to 127.0.0.1:5353; }}; }}"
        );
        run("nft", &[&rules])?;
        std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1")?;
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "10000 65000")?;
        Ok(Netns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", NS]).status();
    }
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(program).args(args).status()?;
    anyhow::ensure!(status.success(), "{program} {args:?} failed");
    Ok(())
}

fn vip() -> SocketAddr {
    SocketAddr::from(([10, 99, 0, 1], 80))
}

fn throughput(secs: f64) -> anyhow::Result<f64> {
    Ok(workload::throughput(vip(), secs)?)
}

fn connection_rate(secs: f64) -> anyhow::Result<f64> {
    Ok(workload::connection_rate(vip(), secs)?)
}

/// Source ports of the NAT'd TCP entries to the VIP, from the kernel's own table.
fn conntrack_nat_sources() -> anyhow::Result<HashSet<u16>> {
    let out = Command::new("conntrack")
        .args(["-L", "-p", "tcp", "--orig-dst", VIP])
        .stderr(Stdio::null())
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace().find_map(|f| f.strip_prefix("sport=")).and_then(|p| p.parse().ok())
        })
        .collect())
}
