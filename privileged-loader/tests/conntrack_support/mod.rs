//! Shared by the conntracker tests and `examples/bench_namespaces.rs`: `conntrack -L`
//! entries in the loader's representation, polling for a condition with a deadline, and a
//! conntracker with one pinned strategy running inside a namespace.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use e2e_tests::{L4, NatLab, Netns, oracle};
use privileged_loader::asset::AssetLoader;
use privileged_loader::btf::{self, BtfConfig, BtfError};
use privileged_loader::conntrack::chain::{self, Strategies};
use privileged_loader::conntrack::{
    ConntrackConfig, ConntrackStats, Conntracker, Entry, Protocol, RunningConntracker, Tuple,
};
use privileged_loader::status::Registry;
use tokio_util::sync::CancellationToken;

pub fn tuple(t: &oracle::Tuple) -> Tuple {
    let protocol = match t.protocol {
        L4::Tcp => Protocol::Tcp,
        L4::Udp => Protocol::Udp,
    };
    Tuple { src: t.src, src_port: t.sport, dst: t.dst, dst_port: t.dport, protocol }
}

/// The oracle's NAT'd entries of `lab`'s namespace, keyed by its inode.
#[allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]
pub fn expected(lab: &NatLab) -> BTreeSet<Entry> {
    let netns = lab.netns.inode().unwrap();
    oracle::nat_entries(&lab.netns)
        .unwrap()
        .iter()
        .map(|e| Entry { original: tuple(&e.original), reply: tuple(&e.reply), netns })
        .collect()
}

/// Polls `check` until it holds or `within` passes; returns whether it held.
pub fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A conntracker chain (one pinned strategy, or a list), started on a thread inside a
/// namespace; stopped on drop.
pub struct Pinned {
    pub tracker: Arc<dyn Conntracker>,
    /// The netlink side's counters (DESTROY events, GETs, sweeps).
    pub stats: Arc<ConntrackStats>,
    registry: Registry,
    shutdown: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

#[allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]
impl Pinned {
    pub fn start(host: &Netns, strategy: &str) -> Self {
        Self::start_with(host, strategy, |_| {})
    }

    /// [`Pinned::start`] with `tune` applied to the configuration first.
    pub fn start_with(host: &Netns, strategy: &str, tune: impl FnOnce(&mut ConntrackConfig)) -> Self {
        let mut cfg = ConntrackConfig {
            strategies: strategy.parse::<Strategies>().unwrap(),
            // Other tests' NAT traffic (the eBPF map sees every namespace) must not
            // make the LRU evict this test's entries.
            max_entries: 65_536,
            ..ConntrackConfig::default()
        };
        tune(&mut cfg);
        Self::start_chain(|run| host.spawn(run).unwrap(), cfg, false)
            .unwrap_or_else(|e| panic!("{strategy} did not start: {e}"))
    }

    /// The conntracker chain with `cfg`, with its own runtime on the thread `enter`
    /// starts (inside a namespace). With `hide_btf` it runs as on a kernel without BTF:
    /// the CO-RE implementation cannot load, whatever the list says.
    pub fn start_chain(
        enter: impl FnOnce(Box<dyn FnOnce() + Send>) -> JoinHandle<()>,
        cfg: ConntrackConfig,
        hide_btf: bool,
    ) -> Result<Self, String> {
        let registry = Registry::default();
        let shutdown = CancellationToken::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let (reg, stop) = (registry.clone(), shutdown.clone());
        let thread = enter(Box::new(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let btf = if hide_btf {
                    Err(BtfError::NotFound { tried: vec!["hidden by the test".into()] })
                } else {
                    btf::discover(&BtfConfig::default())
                };
                let assets = AssetLoader::new(btf, None, reg.clone());
                match chain::start(&cfg, &assets, &reg, stop.clone()).await {
                    Ok(RunningConntracker { tracker, mut tasks, stats, .. }) => {
                        tx.send(Ok((tracker, stats))).unwrap();
                        stop.cancelled().await;
                        while tasks.join_next().await.is_some() {}
                    }
                    Err(e) => tx.send(Err(e.to_string())).unwrap(),
                }
            });
        }));
        let (tracker, stats) = rx.recv().unwrap()?;
        Ok(Pinned { tracker, stats, registry, shutdown, thread: Some(thread) })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn entries_in(&self, netns: u32) -> BTreeSet<Entry> {
        self.tracker.entries().unwrap().into_iter().filter(|e| e.netns == netns).collect()
    }

    pub fn notes(&self) -> Vec<String> {
        self.registry.module(chain::MODULE).map(|m| m.notes).unwrap_or_default()
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Joins `lab`'s namespace to `host` with a veth pair: the kernel gives it an id in `host`.
#[allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]
pub fn join_by_veth(host: &Netns, lab: &NatLab) {
    // Unique names: a deleted namespace's veth end can linger in `host` for a moment.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (here, there) = (format!("vhost{n}"), format!("vpod{n}"));
    host.ip(&["link", "add", &here, "type", "veth", "peer", "name", &there, "netns", lab.netns.name()])
        .unwrap();
}

/// New UDP flows to `to` (one datagram from a fresh socket, so a new source port, each)
/// inside `netns`, at `per_sec` for `secs`; returns how many were sent.
#[allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]
pub fn udp_flows(netns: &Netns, to: std::net::SocketAddr, per_sec: u32, secs: u32) -> u32 {
    netns
        .run(move || {
            let t0 = Instant::now();
            let total = per_sec * secs;
            for i in 0..total {
                let due = Duration::from_secs_f64(f64::from(i) / f64::from(per_sec));
                if let Some(wait) = due.checked_sub(t0.elapsed()) {
                    std::thread::sleep(wait);
                }
                let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                socket.send_to(b"x", to).unwrap();
            }
            total
        })
        .unwrap()
}

/// One ctnetlink dump of `netns`'s table from inside it: how many TCP/UDP entries it gave,
/// and how long it took (request to the end of the dump). For the benchmark examples.
#[allow(clippy::unwrap_used, reason = "benchmarks: a panic is the report")]
pub fn timed_dump(netns: &Netns) -> (usize, Duration) {
    netns
        .run(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let mut socket = privileged_loader::conntrack::ctnetlink::CtNetlink::dump_socket().unwrap();
                let t0 = Instant::now();
                let entries = socket.dump().await.unwrap();
                (entries.len(), t0.elapsed())
            })
        })
        .unwrap()
}
