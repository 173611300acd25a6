//! Figures for the CO-RE conntracker, measured on the real kernel (run as root):
//!
//! ```text
//! cargo run --release -p privileged-loader --example bench_conntrack
//! ```
//!
//! Everything happens in a throwaway network namespace (`e2e_tests::NatLab`):
//! - start time: `conntrack::start` (BTF, load, attach, initial dump);
//! - data-path cost: TCP connection rate and loopback TCP throughput through the DNAT
//!   rule, without and with the conntracker attached, interleaved (off, on, off, on);
//! - completeness: 2,000 new NAT'd UDP flows per second for 10 s, then the map versus
//!   `conntrack -L` (missing and false entries);
//! - in-process `lookup()` latency (p50/p99) and rate over those entries;
//! - sweep inputs: time to read the whole map and to dump the namespace's table.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark program: a panic is its report

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use e2e_tests::{L4, NatLab, Netns, oracle};
use nix::sys::socket::{setsockopt, sockopt};
use privileged_loader::asset::AssetLoader;
use privileged_loader::btf::{self, BtfConfig};
use privileged_loader::conntrack::{ConntrackConfig, Conntracker, Entry, Protocol, start};
use privileged_loader::status::Registry;
use tokio_util::sync::CancellationToken;

#[path = "../tests/conntrack_support/mod.rs"]
mod conntrack_support;
use conntrack_support::udp_flows;

const PHASE: Duration = Duration::from_secs(3);
const FLOWS_PER_SEC: u32 = 2000;
const FLOW_SECS: u32 = 10;

fn main() {
    let lab = NatLab::new("bench").expect("create the bench namespace (run as root)");
    let netns = lab.netns.inode().unwrap();
    let tcp_front = lab.front(L4::Tcp, false);

    // Per-run cost of the eBPF program itself, from the kernel's own accounting.
    const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let stats_before = std::fs::read_to_string(BPF_STATS).unwrap_or_else(|_| "0".into());
    std::fs::write(BPF_STATS, "1").expect("enable kernel.bpf_stats_enabled");
    let mut rates = [Vec::new(), Vec::new()];
    let mut tputs = [Vec::new(), Vec::new()];
    let mut start_times = Vec::new();
    for round in 0..2 {
        rates[0].push(conn_rate(&lab.netns, tcp_front));
        tputs[0].push(throughput(&lab.netns, tcp_front));
        let t0 = Instant::now();
        let ct = Running::start(&lab.netns);
        start_times.push(t0.elapsed());
        rates[1].push(conn_rate(&lab.netns, tcp_front));
        tputs[1].push(throughput(&lab.netns, tcp_front));
        if let Some((runs, ns)) = e2e_tests::workload::program_stats("ct_net_dev_queue") {
            println!(
                "round {round}: tp_btf program ran {runs} times, {:.0} ns per run",
                ns as f64 / runs as f64
            );
        }
        drop(ct);
        eprintln!("round {round} done");
    }
    let _ = std::fs::write(BPF_STATS, stats_before.trim());
    let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (rate_off, rate_on) = (avg(&rates[0]), avg(&rates[1]));
    let (tput_off, tput_on) = (avg(&tputs[0]), avg(&tputs[1]));
    println!("start (load+attach+initial dump): {:?}", start_times);
    println!(
        "TCP connections/s through DNAT: off {rate_off:.0}, on {rate_on:.0} ({:+.2} %)",
        (rate_on - rate_off) / rate_off * 100.0
    );
    println!(
        "TCP throughput through DNAT (MiB/s): off {tput_off:.0}, on {tput_on:.0} ({:+.2} %)",
        (tput_on - tput_off) / tput_off * 100.0
    );

    let ct = Running::start(&lab.netns);
    let udp_front = lab.front(L4::Udp, false);
    let made = udp_flows(&lab.netns, udp_front, FLOWS_PER_SEC, FLOW_SECS);
    std::thread::sleep(Duration::from_millis(500));
    let want: std::collections::BTreeSet<(Protocol, u16)> = oracle::nat_entries(&lab.netns)
        .unwrap()
        .iter()
        .filter(|e| e.original.protocol == L4::Udp && e.original.dst == udp_front.ip())
        .map(|e| (Protocol::Udp, e.original.sport))
        .collect();
    let t0 = Instant::now();
    let entries: Vec<Entry> =
        ct.tracker.entries().unwrap().into_iter().filter(|e| e.netns == netns).collect();
    let read_map = t0.elapsed();
    let have: std::collections::BTreeSet<(Protocol, u16)> = entries
        .iter()
        .filter(|e| e.original.protocol == Protocol::Udp && e.original.dst == udp_front.ip())
        .map(|e| (Protocol::Udp, e.original.src_port))
        .collect();
    let missing = want.difference(&have).count();
    let false_entries = have.difference(&want).count();
    println!(
        "completeness: {made} UDP flows at {FLOWS_PER_SEC}/s for {FLOW_SECS} s; conntrack -L shows {}; \
         map has {} of them ({:.2} %), {missing} missing, {false_entries} false",
        want.len(),
        want.len() - missing,
        (want.len() - missing) as f64 / want.len().max(1) as f64 * 100.0
    );

    let mut latencies = Vec::with_capacity(entries.len() * 4);
    let t0 = Instant::now();
    for _ in 0..4 {
        for e in &entries {
            let t = Instant::now();
            let found = ct.tracker.lookup(&e.original, netns).unwrap();
            latencies.push(t.elapsed());
            assert!(found.is_some());
        }
    }
    let total = t0.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "lookup() in process: {} lookups, p50 {:?}, p99 {:?}, {:.0}/s (one thread)",
        latencies.len(),
        pct(0.50),
        pct(0.99),
        latencies.len() as f64 / total.as_secs_f64()
    );

    let slots = ct.tracker.tables()[0].entries;
    let dump_time = dump_duration(&lab.netns);
    println!(
        "sweep inputs: reading the map ({slots} slots) {read_map:?}; ctnetlink dump of the namespace ({} entries) {dump_time:?}",
        oracle::entries(&lab.netns).map(|e| e.len()).unwrap_or(0)
    );
}

/// TCP connections per second (connect, one write, RST close) for [`PHASE`].
fn conn_rate(netns: &Netns, to: SocketAddr) -> f64 {
    netns
        .run(move || {
            let t0 = Instant::now();
            let mut n = 0u64;
            while t0.elapsed() < PHASE {
                let mut s = TcpStream::connect(to).unwrap();
                // RST on close: no TIME_WAIT, so the ephemeral ports do not run out.
                setsockopt(&s, sockopt::Linger, &libc::linger { l_onoff: 1, l_linger: 0 }).unwrap();
                s.write_all(b"x").unwrap();
                n += 1;
            }
            n as f64 / t0.elapsed().as_secs_f64()
        })
        .unwrap()
}

/// MiB/s written through one DNAT'd TCP connection for [`PHASE`].
fn throughput(netns: &Netns, to: SocketAddr) -> f64 {
    netns
        .run(move || {
            let mut s = TcpStream::connect(to).unwrap();
            let chunk = vec![0u8; 64 * 1024];
            let t0 = Instant::now();
            let mut bytes = 0u64;
            while t0.elapsed() < PHASE {
                s.write_all(&chunk).unwrap();
                bytes += chunk.len() as u64;
            }
            bytes as f64 / (1024.0 * 1024.0) / t0.elapsed().as_secs_f64()
        })
        .unwrap()
}

fn dump_duration(netns: &Netns) -> Duration {
    conntrack_support::timed_dump(netns).1
}

/// A conntracker running on a thread inside the namespace, stopped on drop.
struct Running {
    tracker: Arc<dyn Conntracker>,
    shutdown: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    fn start(netns: &Netns) -> Self {
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = netns
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    let registry = Registry::default();
                    let assets =
                        AssetLoader::new(btf::discover(&BtfConfig::default()), None, registry.clone());
                    let running = start(&ConntrackConfig::default(), &assets, &registry, token.clone())
                        .await
                        .expect("conntracker starts");
                    let mut tasks = running.tasks;
                    tx.send(running.tracker).unwrap();
                    token.cancelled().await;
                    while tasks.join_next().await.is_some() {}
                });
            })
            .unwrap();
        let tracker = rx.recv().unwrap();
        Self { tracker, shutdown, thread: Some(thread) }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
