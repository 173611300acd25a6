//! Benchmarks of the loader (issue: the loader spine). Run as root:
//!   cargo build --release --bins && cargo run --release -p e2e-tests --example bench_loader
//! Prints, for docs/benchmarks.md:
//! - exec → all modules attached and the socket serving (median of 10 starts)
//! - loader RSS after start
//! - LookupTranslation latency (p50/p99) and throughput over the socket
//! - data-path cost: loopback TCP throughput and connection rate through a DNAT rule with
//!   and without the conntracker attached, interleaved in one run
//! - completeness under 2,000 new NAT'd connections/s for 10 s versus `conntrack -L`
//!
//! Everything runs inside a private network namespace this program creates and deletes.
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::workload;
use hyper_util::rt::TokioIo;
use shared_proto::loader::v1 as pb;
use tonic::transport::Endpoint;

const VIP: &str = "10.99.0.1";
const BACKEND_PORT: u16 = 8080;

fn main() -> anyhow::Result<()> {
    let release = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release");
    let loader_bin = release.join("privileged-loader");
    anyhow::ensure!(
        loader_bin.exists(),
        "{} missing: cargo build --release --bins first",
        loader_bin.display()
    );
    let _ns = Netns::create()?;
    let work = tempfile::tempdir()?;

    // BENCH_ONLY=lookups skips the start-up, data-path and completeness phases.
    let only_lookups = std::env::var("BENCH_ONLY").is_ok_and(|v| v == "lookups");
    if only_lookups {
        workload::start_sink(backend())?;
        let loader = Loader::start(&loader_bin, work.path())?;
        for _ in 0..20 {
            drop(TcpStream::connect(vip())?);
        }
        return lookups(&loader);
    }
    let startup = measure_startup(&loader_bin, work.path())?;
    println!(
        "startup exec->serving: median {:.1} ms, min {:.1} ms, max {:.1} ms (10 starts)",
        startup.0, startup.1, startup.2
    );

    workload::start_sink(backend())?;
    let d = data_path(&loader_bin, work.path())?;
    println!(
        "data path A/B: TCP throughput without {:.0} MB/s, with {:.0} MB/s ({:+.1} %); connections/s without {:.0}, with {:.0} ({:+.1} %)",
        d.off.0,
        d.on.0,
        (d.on.0 / d.off.0 - 1.0) * 100.0,
        d.off.1,
        d.on.1,
        (d.on.1 / d.off.1 - 1.0) * 100.0
    );
    println!(
        "data path cost: the hook ran {:.0} ns per packet and took {:.2} % of the data path's CPU time in the throughput phases, {:.2} % in the connection-rate phases",
        d.hook_ns_per_run, d.hook_share_tput, d.hook_share_conn
    );

    let loader = Loader::start(&loader_bin, work.path())?;
    println!("loader RSS after start: {:.1} MB", rss_mb(loader.pid)?);
    completeness(&loader)?;
    lookups(&loader)?;
    println!("loader RSS after the runs: {:.1} MB", rss_mb(loader.pid)?);
    Ok(())
}

/// A private network namespace (the e2e harness's guard, held to delete it on drop)
/// entered by this process, so the
/// loader it starts and every connection it makes live there.
struct Netns(#[allow(dead_code)] e2e_tests::Netns);

impl Netns {
    fn create() -> anyhow::Result<Self> {
        let ns = e2e_tests::Netns::new("bench-loader")?;
        ns.add_address(&format!("{VIP}/32"))?;
        let rule = e2e_tests::Dnat { protocol: e2e_tests::L4::Tcp, from: vip(), to: backend() };
        ns.apply_nft(&e2e_tests::nat::nft_ruleset(&[rule]))?;
        let file = std::fs::File::open(ns.path())?;
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
        // Many short connections: let the client reuse TIME_WAIT ports.
        std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1")?;
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "10000 65000")?;
        Ok(Netns(ns))
    }
}

struct Loader {
    child: std::process::Child,
    pid: u32,
    socket: PathBuf,
}

impl Loader {
    fn start(bin: &Path, dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(bin, dir, "")
    }

    /// Starts a loader with `extra` TOML appended to its config.
    fn start_with(bin: &Path, dir: &Path, extra: &str) -> anyhow::Result<Self> {
        let socket = dir.join(format!("loader-{}.sock", std::process::id()));
        let config = dir.join("bench-loader.toml");
        std::fs::write(&config, format!("[api]\nsocket = {:?}\n{extra}", socket.display().to_string()))?;
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let pid = child.id();
        let loader = Loader { child, pid, socket };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&loader.socket).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "the loader did not start serving");
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(loader)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn measure_startup(bin: &Path, dir: &Path) -> anyhow::Result<(f64, f64, f64)> {
    let mut times = Vec::new();
    for _ in 0..10 {
        let t0 = Instant::now();
        let loader = Loader::start(bin, dir)?;
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        drop(loader);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[0], times[times.len() - 1]))
}

fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for pid {pid}"))?;
    Ok(kb / 1024.0)
}

fn backend() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], BACKEND_PORT))
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

/// Throughput and connection rate without and with the loader, interleaved, plus the
/// load-independent figure: the share of the data path's CPU time (this process's user +
/// system time: sender, backend and the loopback softirq work done in their context)
/// that the conntracker's hook itself ran, from the kernel's own program statistics.
struct DataPath {
    off: (f64, f64),
    on: (f64, f64),
    hook_share_tput: f64,
    hook_share_conn: f64,
    hook_ns_per_run: f64,
}

fn data_path(bin: &Path, dir: &Path) -> anyhow::Result<DataPath> {
    const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(BPF_STATS).unwrap_or_else(|_| "0".into());
    std::fs::write(BPF_STATS, "1")?;
    let mut d = DataPath {
        off: (0.0, 0.0),
        on: (0.0, 0.0),
        hook_share_tput: 0.0,
        hook_share_conn: 0.0,
        hook_ns_per_run: 0.0,
    };
    let (mut hook_runs, mut hook_ns) = (0u64, 0u64);
    let rounds = 3.0;
    for _ in 0..3 {
        d.off.0 += throughput(2.0)? / rounds;
        d.off.1 += connection_rate(2.0)? / rounds;
        // The conntracker alone: the lock-statistics tracepoints (measured by their own
        // benchmark) would otherwise add their cost to every contended kernel lock.
        let loader = Loader::start_with(bin, dir, "[lockstats]\nenabled = false\n")?;
        for (phase, share) in [(0, &mut d.hook_share_tput), (1, &mut d.hook_share_conn)] {
            let (cpu0, hook0) =
                (process_cpu_ns(), workload::program_stats("ct_net_dev_queue").unwrap_or((0, 0)));
            let figure = if phase == 0 { throughput(2.0)? } else { connection_rate(2.0)? };
            let (cpu1, hook1) =
                (process_cpu_ns(), workload::program_stats("ct_net_dev_queue").unwrap_or((0, 0)));
            if phase == 0 {
                d.on.0 += figure / rounds
            } else {
                d.on.1 += figure / rounds
            }
            let (runs, ns) = (hook1.0.saturating_sub(hook0.0), hook1.1.saturating_sub(hook0.1));
            *share += ns as f64 * 100.0 / (cpu1 - cpu0).max(1) as f64 / rounds;
            hook_runs += runs;
            hook_ns += ns;
        }
        drop(loader);
    }
    d.hook_ns_per_run = hook_ns as f64 / hook_runs.max(1) as f64;
    std::fs::write(BPF_STATS, before.trim())?;
    Ok(d)
}

/// User + system CPU time of this process so far, in ns.
fn process_cpu_ns() -> u64 {
    // SAFETY: getrusage fills the struct we pass; no other memory is touched.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    ns(usage.ru_utime) + ns(usage.ru_stime)
}

/// The client side runs on one thread, as `loaderctl` does: on 2 cores a second client
/// worker only competes with the loader for the CPU.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

async fn client(socket: &Path) -> anyhow::Result<pb::loader_client::LoaderClient<tonic::transport::Channel>> {
    let path = socket.to_path_buf();
    let channel = Endpoint::from_static("http://loader.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await?;
    Ok(pb::loader_client::LoaderClient::new(channel))
}

/// Opens 2,000 new DNAT'd connections per second for 10 s, then compares the loader's
/// list with `conntrack -L`.
fn completeness(loader: &Loader) -> anyhow::Result<()> {
    let _ = Command::new("conntrack").arg("-F").stderr(Stdio::null()).status();
    let (t0, mut opened) = (Instant::now(), 0u64);
    // Source ports used, and how often: a port used twice reuses a 5-tuple (tcp_tw_reuse),
    // which makes conntrack destroy the old entry and create a new one with the same tuples.
    let mut uses = std::collections::HashMap::<u16, u32>::new();
    while t0.elapsed() < Duration::from_secs(10) {
        let due = (t0.elapsed().as_secs_f64() * 2000.0) as u64;
        while opened < due {
            let stream = TcpStream::connect(vip())?;
            *uses.entry(stream.local_addr()?.port()).or_default() += 1;
            drop(stream);
            opened += 1;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let achieved = opened as f64 / t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let oracle = conntrack_nat_sources()?;
    let listed = runtime()?.block_on(async {
        let mut c = client(&loader.socket).await?;
        let mut stream = c.list_conntrack(pb::ListConntrackRequest { netns: 0 }).await?.into_inner();
        let mut sources = std::collections::HashSet::new();
        while let Some(e) = stream.message().await? {
            if let Some(o) = e.original.filter(|o| o.dst_addr == VIP) {
                sources.insert(o.src_port as u16);
            }
        }
        anyhow::Ok(sources)
    })?;
    let found = oracle.iter().filter(|p| listed.contains(p)).count();
    let false_entries = listed.iter().filter(|p| !oracle.contains(p)).count();
    println!(
        "completeness: {opened} connections at {achieved:.0}/s; conntrack -L shows {}; loader has {found} of them ({:.2} %); false entries: {false_entries}",
        oracle.len(),
        found as f64 * 100.0 / oracle.len().max(1) as f64
    );
    let missing: Vec<u16> = oracle.iter().filter(|p| !listed.contains(p)).copied().collect();
    let reused = |p: &u16| uses.get(p).is_some_and(|n| *n > 1);
    println!(
        "completeness: 5-tuples reused during the run: {}; missing entries: {}, of which on a reused 5-tuple: {}",
        uses.values().filter(|n| **n > 1).count(),
        missing.len(),
        missing.iter().filter(|p| reused(p)).count()
    );
    Ok(())
}

/// Source ports of the NAT'd TCP entries to the VIP, from the kernel's own table.
fn conntrack_nat_sources() -> anyhow::Result<std::collections::HashSet<u16>> {
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

fn lookups(loader: &Loader) -> anyhow::Result<()> {
    let out = Command::new("conntrack")
        .args(["-L", "-p", "tcp", "--orig-dst", VIP])
        .stderr(Stdio::null())
        .output()?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let line = listing.lines().next().ok_or_else(|| anyhow::anyhow!("no NAT'd entry to look up"))?;
    let field = |name: &str| line.split_whitespace().find_map(|f| f.strip_prefix(name)).map(str::to_string);
    let (src, sport) = (field("src="), field("sport=").and_then(|p| p.parse::<u32>().ok()));
    let (Some(src), Some(sport)) = (src, sport) else { anyhow::bail!("cannot parse {line}") };
    let request = pb::LookupTranslationRequest {
        tuple: Some(pb::Tuple {
            src_addr: src,
            src_port: sport,
            dst_addr: VIP.into(),
            dst_port: 80,
            protocol: pb::Protocol::Tcp.into(),
        }),
        netns: 0,
    };
    runtime()?.block_on(async {
        let mut c = client(&loader.socket).await?;
        let found = c.lookup_translation(request.clone()).await?.into_inner().found;
        let mut latencies = Vec::with_capacity(20_000);
        for _ in 0..20_000 {
            let t = Instant::now();
            c.lookup_translation(request.clone()).await?;
            latencies.push(t.elapsed().as_secs_f64() * 1e6);
        }
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
        println!(
            "LookupTranslation (found={found}): p50 {:.0} us, p99 {:.0} us (20,000 sequential calls)",
            pct(0.5),
            pct(0.99)
        );
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let mut c = c.clone();
            let request = request.clone();
            tasks.spawn(async move {
                let mut n = 0u64;
                while t0.elapsed() < Duration::from_secs(3) {
                    if c.lookup_translation(request.clone()).await.is_ok() {
                        n += 1;
                    }
                }
                n
            });
        }
        let mut total = 0;
        while let Some(n) = tasks.join_next().await {
            total += n?;
        }
        println!(
            "LookupTranslation throughput: {:.0}/s (8 concurrent callers, 3 s)",
            total as f64 / t0.elapsed().as_secs_f64()
        );
        anyhow::Ok(())
    })
}
