//! The conntracker chain on the real kernel: which strategy is chosen, why the others were
//! skipped, and that the chosen one answers exactly what `conntrack -L` shows.
//!
//! In-process: the test drives `conntrack::chain::start` on a thread inside a throwaway
//! network namespace (ctnetlink sockets belong to the namespace of the thread that opens
//! them), and compares `Conntracker::entries()` with `conntrack -L` run in that namespace.
//! Needs root.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

#[path = "conntrack_support/mod.rs"]
mod conntrack_support;

use conntrack_support::Pinned;
use privileged_loader::conntrack::chain::{self, Strategies};
use privileged_loader::conntrack::{ConntrackConfig, Conntracker, Entry};
use privileged_loader::status::Registry;
use tokio_util::sync::CancellationToken;

/// A named network namespace with loopback up, 10.99.0.1 on lo and DNAT rules for TCP 80
/// → 8080 and UDP 53 → 5353; deleted on drop, even when the test fails.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("chain-{tag}-{}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns.exec(&["ip", "addr", "add", "10.99.0.1/32", "dev", "lo"]);
        let rules = "table ip nat {\n chain output {\n  type nat hook output priority -100;\n  \
                     ip daddr 10.99.0.1 tcp dport 80 dnat to 127.0.0.1:8080\n  \
                     ip daddr 10.99.0.1 udp dport 53 dnat to 127.0.0.1:5353\n }\n}\n";
        let path = std::env::temp_dir().join(format!("{}.nft", ns.0));
        std::fs::write(&path, rules).unwrap();
        ns.exec(&["nft", "-f", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(path);
        ns
    }

    fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs `f` on a thread inside this namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = std::fs::File::open(format!("/run/netns/{}", self.0)).unwrap();
        thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }

    fn inode(&self) -> u32 {
        std::fs::metadata(format!("/run/netns/{}", self.0)).unwrap().ino() as u32
    }

    /// `count` TCP and `count` UDP connections through the DNAT rules.
    fn make_connections(&self, count: usize) {
        self.run(|| {
            let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 8080)).unwrap();
            let _udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 5353)).unwrap();
            for _ in 0..count {
                let _client = TcpStream::connect((Ipv4Addr::new(10, 99, 0, 1), 80)).unwrap();
                let _ = tcp.accept().unwrap();
                let u = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
                u.send_to(b"x", (Ipv4Addr::new(10, 99, 0, 1), 53)).unwrap();
            }
        });
    }

    /// NAT'd entries of `conntrack -L` in this namespace (the oracle).
    fn conntrack_nat_entries(&self) -> BTreeSet<String> {
        let text = self.exec(&["conntrack", "-L"]);
        let mut out = BTreeSet::new();
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some(&proto) = words.first().filter(|p| ["tcp", "udp"].contains(p)) else { continue };
            let all = |key: &str| -> Vec<&str> { words.iter().filter_map(|w| w.strip_prefix(key)).collect() };
            let (src, dst, sport, dport) = (all("src="), all("dst="), all("sport="), all("dport="));
            let tuple = |i: usize| format!("{}:{}>{}:{}", src[i], sport[i], dst[i], dport[i]);
            let inverse =
                src[1] == dst[0] && dst[1] == src[0] && sport[1] == dport[0] && dport[1] == sport[0];
            if !inverse {
                out.insert(format!("{proto} {} reply {}", tuple(0), tuple(1)));
            }
        }
        out
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn render(entries: &[Entry], netns: u32) -> BTreeSet<String> {
    let t = |t: &privileged_loader::conntrack::Tuple| {
        format!("{}:{}>{}:{}", t.src, t.src_port, t.dst, t.dst_port)
    };
    entries
        .iter()
        .filter(|e| e.netns == netns)
        .map(|e| format!("{:?} {} reply {}", e.original.protocol, t(&e.original), t(&e.reply)).to_lowercase())
        .collect()
}

/// A chain started on a thread inside `ns` with the BTF hidden; stopped on drop.
struct RunningChain(Pinned);

impl RunningChain {
    fn start(ns: &Netns, cfg: ConntrackConfig) -> Result<Self, String> {
        let file = std::fs::File::open(format!("/run/netns/{}", ns.0)).unwrap();
        let enter = move |run: Box<dyn FnOnce() + Send>| {
            thread::spawn(move || {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                run()
            })
        };
        Pinned::start_chain(enter, cfg, true).map(RunningChain)
    }

    /// The verdict on `implementation` (`core`, `prebuilt`, `netlink`).
    fn attempt(&self, implementation: &str) -> Option<(bool, String)> {
        let module = self.0.registry().module(chain::MODULE)?;
        module.attempts.into_iter().find(|a| a.implementation == implementation).map(|a| (a.ok, a.reason))
    }

    /// The verdict on `hook` as tried by `implementation`.
    fn hook(&self, implementation: &str, hook: &str) -> Option<(bool, String)> {
        let module = self.0.registry().module(chain::MODULE)?;
        let attempt = module.attempts.into_iter().find(|a| a.implementation == implementation)?;
        attempt.hooks.into_iter().find(|h| h.hook == hook).map(|h| (h.ok, h.reason))
    }

    /// Waits (up to 3 s: one sweep period plus margin) until the tracker's entries in `netns` equal `want`.
    fn assert_matches(&self, netns: u32, want: &BTreeSet<String>) {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let seen = render(&self.0.tracker.entries().unwrap(), netns);
            if &seen == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tracker {} has\n{seen:#?}\nconntrack -L has\n{want:#?}",
                self.0.tracker.strategy()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

fn config(strategies: &str) -> ConntrackConfig {
    ConntrackConfig { strategies: strategies.parse::<Strategies>().unwrap(), ..Default::default() }
}

#[test]
fn without_btf_the_prebuilt_conntracker_is_chosen_and_matches_conntrack() {
    let ns = Netns::new("pre");
    ns.make_connections(2); // before start: found by the initial dump
    let running = RunningChain::start(&ns, config("core,prebuilt,netlink")).expect("a strategy starts");
    // The kprobe hook where the kernel has kprobes (Debian 6.1 in the qemu matrix), the
    // raw tracepoint where it does not (this machine's 6.18).
    let has_kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    let hook = if has_kprobes { "prebuilt/kprobe" } else { "prebuilt/raw_tracepoint" };
    assert_eq!(running.0.tracker.strategy(), hook);
    let (ok, reason) = running.attempt("core").expect("core was tried first");
    assert!(!ok && reason.contains("BTF"), "core skipped because BTF is hidden: {reason}");
    let (ok, guess) = running.hook("prebuilt", "offsetguess").expect("guessing recorded");
    assert!(ok && guess.contains("sk_buff._nfct=") && guess.contains("offsets guessed in"), "{guess}");
    ns.make_connections(5);
    let want = ns.conntrack_nat_entries();
    assert_eq!(want.len(), 14, "7 TCP + 7 UDP NAT entries in conntrack -L: {want:#?}");
    running.assert_matches(ns.inode(), &want);
}

#[test]
fn with_ebpf_disabled_the_netlink_conntracker_matches_conntrack() {
    let ns = Netns::new("nl");
    ns.make_connections(2);
    // A 1 s sweep: entries made before the subscription get no DESTROY event (the kernel
    // gives them no event extension), the periodic resync removes them.
    let cfg = ConntrackConfig { sweep_interval_secs: 1, ..config("netlink") };
    let running = RunningChain::start(&ns, cfg).expect("netlink starts");
    assert_eq!(running.0.tracker.strategy(), "netlink");
    ns.make_connections(5);
    let want = ns.conntrack_nat_entries();
    assert_eq!(want.len(), 14, "{want:#?}");
    running.assert_matches(ns.inode(), &want);
    // Deleted entries go: by DESTROY events (entries made after start), by the sweep
    // (the two made before).
    ns.exec(&["conntrack", "-D", "-p", "udp"]);
    let want = ns.conntrack_nat_entries();
    assert_eq!(want.len(), 7, "only TCP left: {want:#?}");
    running.assert_matches(ns.inode(), &want);
}

#[test]
fn a_guessing_overflow_moves_the_chain_to_netlink_with_the_reason() {
    let ns = Netns::new("ovf");
    let mut cfg = config("prebuilt,netlink");
    cfg.offsetguess.threshold = 8;
    let running = RunningChain::start(&ns, cfg).expect("netlink starts");
    assert_eq!(running.0.tracker.strategy(), "netlink");
    let (ok, reason) = running.attempt("prebuilt").expect("prebuilt was tried");
    assert!(!ok, "prebuilt must have failed");
    assert!(reason.contains("offset guessing overflow on sk_buff._nfct at 8"), "{reason}");
    let skipped = chain::skipped_reasons(running.0.registry());
    assert!(
        skipped.iter().any(|s| s.starts_with("prebuilt: offset guessing overflow on sk_buff._nfct at 8")),
        "{skipped:?}"
    );
    ns.make_connections(3);
    running.assert_matches(ns.inode(), &ns.conntrack_nat_entries());
}

#[test]
fn a_pinned_strategy_that_cannot_start_is_not_replaced() {
    let ns = Netns::new("pin");
    let mut cfg = config("prebuilt");
    cfg.offsetguess.threshold = 8;
    let err = RunningChain::start(&ns, cfg).err().expect("pinned prebuilt fails, no fallback");
    assert!(err.contains("prebuilt: offset guessing overflow on sk_buff._nfct at 8"), "{err}");
}

/// Events the kernel could not queue are not silently lost: with the tracker stalled
/// while 40,000 entries appear, its event queue overflows; when it runs again it reads
/// ENOBUFS, counts it, says so in the status, and resyncs to exactly `conntrack -L`.
#[test]
fn lost_netlink_events_are_counted_reported_and_resynced() {
    use privileged_loader::conntrack::netlink_tracker;
    use std::sync::atomic::Ordering;

    let ns = Netns::new("enobufs");
    // A slow guest (qemu without acceleration) takes longer than the 30 s UDP timeout to
    // send 40,000 datagrams: the first entries would expire between the resync and the
    // oracle. The timeout is per namespace.
    ns.run(|| std::fs::write("/proc/sys/net/netfilter/nf_conntrack_udp_timeout", "600").unwrap());
    ns.exec(&[
        "nft",
        "add",
        "rule",
        "ip",
        "nat",
        "output",
        "ip",
        "daddr",
        "10.99.0.1",
        "meta",
        "l4proto",
        "udp",
        "dnat",
        "to",
        "127.0.0.1:5353",
    ]);
    let registry = Registry::default();
    let file = std::fs::File::open(format!("/run/netns/{}", ns.0)).unwrap();
    let (tracker_tx, tracker_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let reg = registry.clone();
    let worker = thread::spawn(move || {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let shutdown = CancellationToken::new();
        let cfg = ConntrackConfig { sweep_interval_secs: 0, ..Default::default() };
        let (tracker, _tasks) = runtime
            .block_on(netlink_tracker::start_tracker(
                &cfg,
                &chain::RunningStatus::new(&reg),
                shutdown.clone(),
            ))
            .unwrap();
        tracker_tx.send(tracker).unwrap();
        // Stalled: nothing polls the event socket until the test says go.
        go_rx.recv().unwrap();
        runtime.block_on(async { tokio::time::sleep(Duration::from_secs(3)).await });
        shutdown.cancel();
    });
    let tracker = tracker_rx.recv().unwrap();
    ns.run(|| {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        for port in 1..=40_000u16 {
            let _ = socket.send_to(b"x", (Ipv4Addr::new(10, 99, 0, 1), port));
        }
    });
    go_tx.send(()).unwrap();
    worker.join().unwrap();

    assert!(tracker.stats().enobufs.load(Ordering::Relaxed) >= 1, "the overflow must be counted");
    assert!(tracker.stats().resyncs.load(Ordering::Relaxed) >= 1, "and followed by a resync");
    let module = registry.modules().into_iter().find(|m| m.name == chain::MODULE).expect("module recorded");
    let said = module.last_error.unwrap_or_default();
    assert!(said.contains("ENOBUFS") && said.contains("resynced"), "surfaced in status: {said}");
    // The tracker also dumps every other namespace it could enter (other tests' UDP
    // entries): compare this namespace's.
    let entries = tracker.entries().unwrap();
    let netns = ns.inode();
    let udp = entries
        .iter()
        .filter(|e| e.netns == netns && e.original.protocol == privileged_loader::conntrack::Protocol::Udp)
        .count();
    let oracle = ns.exec(&["conntrack", "-L", "-p", "udp"]).lines().count();
    assert_eq!(udp, oracle, "after the resync the table holds exactly what conntrack -L shows");
}
