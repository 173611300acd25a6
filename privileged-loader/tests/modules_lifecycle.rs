//! The module lifecycle on the real kernel: reloading the conntracker while NAT'd
//! connections run, a reload that fails, stopping and starting the lock statistics.
//!
//! The modules run on a thread inside a throwaway network namespace (ctnetlink sockets
//! belong to the namespace of the thread that opens them), with their own runtime; the
//! test drives them through the same `Modules` handle the gRPC service holds, and asks
//! the kernel (`conntrack -L`, `bpftool`) what really happened. Needs root. The tests of
//! this file are serialised: they count programs by name in the kernel's list.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]
#[path = "lockstats_support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use e2e_tests::nat::{FRONT_V4, nft_ruleset};
use e2e_tests::process::wait_until;
use e2e_tests::{Dnat, L4, Netns, oracle, workload};
use privileged_loader::asset::AssetLoader;
use privileged_loader::btf::{self, BtfConfig};
use privileged_loader::conntrack::chain::{Strategies, Strategy};
use privileged_loader::conntrack::hook::Strategy as Hook;
use privileged_loader::conntrack::{ConntrackConfig, Protocol, Tuple};
use privileged_loader::lockstats::{CollectorState, LockStatsConfig};
use privileged_loader::modules::{Modules, ReloadAction, ReloadError, ReloadReport};
use privileged_loader::status::{AssetOutcome, ModuleRecord, ModuleState, Registry};
use tokio_util::sync::CancellationToken;

/// One test at a time: they count the kernel's programs by name.
static SERIAL: Mutex<()> = Mutex::new(());

type Job = Box<dyn FnOnce(Modules) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// `Modules` running on a thread inside a namespace; stopped (every module) on drop.
struct NsModules {
    modules: Modules,
    jobs: Option<tokio::sync::mpsc::UnboundedSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl NsModules {
    fn new(netns: &Netns, bpf_dir: Option<PathBuf>) -> Self {
        let registry = Registry::default();
        let assets =
            Arc::new(AssetLoader::new(btf::discover(&BtfConfig::default()), bpf_dir, registry.clone()));
        let modules = Modules::new(assets, registry, CancellationToken::new());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let handle = modules.clone();
        let thread = netns
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    while let Some(job) = rx.recv().await {
                        job(handle.clone()).await;
                    }
                    handle.stop_all().await;
                });
            })
            .unwrap();
        Self { modules, jobs: Some(tx), thread: Some(thread) }
    }

    /// Runs `f` on the namespace's thread and waits for its result.
    fn run<T, F>(&self, f: impl FnOnce(Modules) -> F + Send + 'static) -> T
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        let job: Job = Box::new(move |modules| {
            Box::pin(async move {
                let _ = tx.send(f(modules).await);
            })
        });
        self.jobs.as_ref().unwrap().send(job).unwrap();
        rx.recv().unwrap()
    }

    /// Starts the conntracker with `cfg`; panics if it does not start.
    fn start(&self, cfg: ConntrackConfig) -> ReloadReport {
        self.run(move |m| async move { m.start_conntrack(cfg).await }).unwrap()
    }

    fn reload(&self, cfg: ConntrackConfig) -> Result<ReloadReport, ReloadError> {
        self.run(move |m| async move { m.reload_conntrack(cfg).await })
    }

    fn record(&self, module: &str) -> ModuleRecord {
        self.modules.registry().module(module).unwrap()
    }

    /// The translation of `original` as the API's LookupTranslation answers it now.
    fn lookup(&self, original: &Tuple, netns: u32) -> Option<Tuple> {
        let tracker = self.modules.conntracker()?;
        tracker.lookup(original, netns).unwrap().map(|(t, _)| t)
    }
}

impl Drop for NsModules {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A namespace with one DNAT rule (10.99.0.1:80 → 127.0.0.1:8080) and a sink behind it.
fn nat_namespace(tag: &str) -> Netns {
    let netns = Netns::new(tag).unwrap();
    netns.add_address(&format!("{FRONT_V4}/32")).unwrap();
    let rule = Dnat { protocol: L4::Tcp, from: front(), to: backend() };
    netns.apply_nft(&nft_ruleset(&[rule])).unwrap();
    netns.run(|| workload::start_sink(backend())).unwrap().unwrap();
    netns
}

fn front() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(FRONT_V4), 80)
}

fn backend() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080)
}

/// New NAT'd TCP connections (connect, close) at `per_sec` from inside `netns` until dropped.
struct Traffic {
    stop: Arc<AtomicBool>,
    made: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Traffic {
    fn start(netns: &Netns, per_sec: u64) -> Self {
        let (stop, made) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (flag, count) = (stop.clone(), made.clone());
        let thread = netns
            .spawn(move || {
                let started = Instant::now();
                while !flag.load(Ordering::Relaxed) {
                    let due =
                        started + Duration::from_micros(count.load(Ordering::Relaxed) * 1_000_000 / per_sec);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    if TcpStream::connect_timeout(&front(), Duration::from_secs(1)).is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .unwrap();
        Self { stop, made, thread: Some(thread) }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The NAT'd TCP originals and replies `conntrack -L` lists in `netns` now.
fn listed(netns: &Netns) -> BTreeSet<(Tuple, Tuple)> {
    let tuple = |t: &oracle::Tuple| Tuple {
        src: t.src,
        src_port: t.sport,
        dst: t.dst,
        dst_port: t.dport,
        protocol: Protocol::Tcp,
    };
    oracle::nat_entries(netns)
        .unwrap()
        .iter()
        .filter(|e| e.original.protocol == L4::Tcp)
        .map(|e| (tuple(&e.original), tuple(&e.reply)))
        .collect()
}

/// Translations of `want` the conntracker does not answer (or answers wrongly).
fn unanswered(ns: &NsModules, want: &BTreeSet<(Tuple, Tuple)>, netns: u32) -> Vec<Tuple> {
    want.iter().filter(|(o, r)| ns.lookup(o, netns) != Some(*r)).map(|(o, _)| *o).collect()
}

/// Looks every translation of `want` up, round after round, until stopped; counts misses.
struct Poller {
    stop: Arc<AtomicBool>,
    lookups: Arc<AtomicU64>,
    thread: Option<JoinHandle<Vec<Tuple>>>,
}

impl Poller {
    fn start(modules: Modules, want: Vec<(Tuple, Tuple)>, netns: u32) -> Self {
        let (stop, lookups) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (flag, count) = (stop.clone(), lookups.clone());
        let thread = std::thread::spawn(move || {
            let mut missed = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                for (original, reply) in &want {
                    // Exactly what the LookupTranslation handler does: the current
                    // instance, asked afresh for every call.
                    let answer = modules.conntracker().and_then(|t| t.lookup(original, netns).ok().flatten());
                    if answer.map(|(t, _)| t) != Some(*reply) {
                        missed.push(*original);
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
            missed
        });
        Self { stop, lookups, thread: Some(thread) }
    }

    fn finish(mut self) -> Vec<Tuple> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

fn base_config(strategies: &str) -> ConntrackConfig {
    ConntrackConfig {
        max_entries: 65_536,
        strategies: strategies.parse::<Strategies>().unwrap(),
        ..ConntrackConfig::default()
    }
}

/// Names of the programs in the kernel's list (`bpftool prog show`) that use one of the
/// maps `maps`: the programs of an instance, told apart from those of other loaders on
/// the machine by the maps they use. (The kernel keeps 15 characters of a name.)
fn programs_using(maps: &[u32]) -> Vec<String> {
    let out = std::process::Command::new("bpftool").args(["-j", "prog", "show"]).output().unwrap();
    assert!(out.status.success(), "bpftool prog show: {}", String::from_utf8_lossy(&out.stderr));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let uses = |p: &serde_json::Value| {
        p["map_ids"]
            .as_array()
            .is_some_and(|ids| ids.iter().any(|id| id.as_u64().is_some_and(|id| maps.contains(&(id as u32)))))
    };
    list.iter().filter(|p| uses(p)).filter_map(|p| p["name"].as_str().map(String::from)).collect()
}

/// Whether the kernel still lists program `id` (`bpftool prog show id`).
fn kernel_has_program(id: u32) -> bool {
    let out =
        std::process::Command::new("bpftool").args(["prog", "show", "id", &id.to_string()]).output().unwrap();
    out.status.success()
}

/// Whether `names` is exactly the CO-RE conntracker's per-packet program.
fn only_the_tp_btf_program(names: &[String]) -> bool {
    names.len() == 1 && "ct_net_dev_queue".starts_with(names[0].as_str())
}

/// Whether the kernel still lists map `id` (`bpftool map show id`).
fn kernel_has_map(id: u32) -> bool {
    let out =
        std::process::Command::new("bpftool").args(["map", "show", "id", &id.to_string()]).output().unwrap();
    out.status.success()
}

/// Reloads the conntracker with `new` while connections are made at 2,000/s and every
/// translation `conntrack -L` held before is looked up continuously: no lookup misses,
/// and the connections made during the swap are known afterwards. Returns the report.
///
/// The modules run in a namespace of their own: the new instance's ctnetlink dump (its
/// seeding) cannot see the traffic's namespace, so only the handover can give it the
/// translations made before it was attached.
fn reload_under_traffic(
    tag: &str,
    first: ConntrackConfig,
    new: ConntrackConfig,
) -> (ReloadReport, NsModules) {
    let netns = nat_namespace(tag);
    let inode = netns.inode().unwrap();
    let own = Netns::new(&format!("{tag}-own")).unwrap();
    let ns = NsModules::new(&own, None);
    let started = ns.start(first);
    assert_eq!(started.action, ReloadAction::Started);
    let old_maps = ns.modules.conntracker().unwrap().bpf_map_ids();

    let traffic = Traffic::start(&netns, 2_000);
    std::thread::sleep(Duration::from_millis(1000));
    let before = listed(&netns);
    assert!(before.len() >= 500, "{} NAT'd connections listed after 1 s at 2,000/s", before.len());
    assert!(
        wait_until(Duration::from_secs(3), || unanswered(&ns, &before, inode).is_empty()),
        "before the reload, {} of {} listed translations are not answered",
        unanswered(&ns, &before, inode).len(),
        before.len()
    );

    let poller = Poller::start(ns.modules.clone(), before.iter().copied().collect(), inode);
    std::thread::sleep(Duration::from_millis(100));
    let lookups_at_start = poller.lookups.load(Ordering::Relaxed);
    let report = ns.reload(new).unwrap();
    let lookups_during = poller.lookups.load(Ordering::Relaxed) - lookups_at_start;
    std::thread::sleep(Duration::from_millis(300));
    let missed = poller.finish();
    let made = traffic.made.load(Ordering::Relaxed);
    drop(traffic);
    eprintln!("{report:?}; {lookups_during} lookups during the swap; {made} connections made");
    assert_eq!(report.action, ReloadAction::Replaced);
    assert!(lookups_during > 0, "no lookup ran during the swap ({:?})", report.took);
    assert!(
        missed.is_empty(),
        "{} lookups missed during or after the reload: {:?}",
        missed.len(),
        &missed[..missed.len().min(5)]
    );

    // Connections made during the swap (and after it) are answered too.
    let after = listed(&netns);
    assert!(after.len() > before.len());
    assert!(
        wait_until(Duration::from_secs(3), || unanswered(&ns, &after, inode).is_empty()),
        "after the reload, {} of {} listed translations are not answered",
        unanswered(&ns, &after, inode).len(),
        after.len()
    );
    // The replaced object's programs and map are gone from the kernel.
    assert!(
        wait_until(Duration::from_secs(2), || programs_using(&old_maps).is_empty()),
        "programs of the replaced instance remain: {:?}",
        programs_using(&old_maps)
    );
    for id in old_maps {
        assert!(
            wait_until(Duration::from_secs(2), || !kernel_has_map(id)),
            "map {id} of the replaced instance remains"
        );
    }
    drop(netns);
    (report, ns)
}

#[test]
fn reloading_the_core_conntracker_with_a_new_map_size_loses_no_translation() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let first = base_config("core");
    let new = ConntrackConfig { max_entries: 98_304, ..first.clone() };
    let (report, ns) = reload_under_traffic("mod-core", first, new);
    assert_eq!(report.changed, vec!["max_entries"]);
    assert_eq!(report.implementation, "core/tp_btf");
    assert_eq!(report.generation, 2);
    // Every slot of the traffic's connections came by the handover (see above).
    assert!(report.handed_over.unwrap().copied >= 1_000, "{report:?}");
    let tables = ns.modules.conntracker().unwrap().tables();
    assert_eq!(tables[0].max_entries, 98_304);
    let attached = programs_using(&ns.modules.conntracker().unwrap().bpf_map_ids());
    assert!(only_the_tp_btf_program(&attached), "the new instance's programs: {attached:?}");

    let record = ns.record("conntrack");
    assert_eq!(record.state, ModuleState::Running);
    assert_eq!(record.generation, 2);
    let last = record.last_reload.unwrap();
    assert_eq!((last.how.as_str(), last.changed), ("replaced", vec!["max_entries".to_string()]));
}

#[test]
fn reloading_the_prebuilt_conntracker_and_switching_to_core_lose_no_translation() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let first = base_config("prebuilt");
    let resized = ConntrackConfig { max_entries: 98_304, ..first.clone() };
    let (report, ns) = reload_under_traffic("mod-pre", first, resized);
    assert!(report.implementation.starts_with("prebuilt/"), "{report:?}");
    assert_eq!(report.generation, 2);
    drop(ns);

    let first = base_config("prebuilt");
    let to_core = ConntrackConfig { strategies: Strategies::pinned(Strategy::Core), ..first.clone() };
    let (report, ns) = reload_under_traffic("mod-p2c", first, to_core);
    assert_eq!(report.changed, vec!["strategies"]);
    assert_eq!(report.implementation, "core/tp_btf");
    let attached = programs_using(&ns.modules.conntracker().unwrap().bpf_map_ids());
    assert!(only_the_tp_btf_program(&attached), "the CO-RE program replaced the prebuilt one: {attached:?}");
}

#[test]
fn a_settings_change_is_applied_in_place_on_the_same_object() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let netns = nat_namespace("mod-inpl");
    let ns = NsModules::new(&netns, None);
    let first = base_config("core");
    ns.start(first.clone());
    let maps = ns.modules.conntracker().unwrap().bpf_map_ids();
    let report =
        ns.reload(ConntrackConfig { sweep_interval_secs: 1, destroy_events: false, ..first }).unwrap();
    assert_eq!(report.action, ReloadAction::InPlace);
    assert_eq!(report.changed, vec!["destroy_events", "sweep_interval_secs"]);
    assert_eq!(ns.modules.conntracker().unwrap().bpf_map_ids(), maps, "the same map serves");
    let record = ns.record("conntrack");
    assert_eq!(record.generation, 1);
    assert_eq!(record.last_reload.unwrap().how, "in place");
    assert_eq!(ns.modules.conntrack_config().unwrap().sweep_interval_secs, 1);
}

/// A conntrack object whose tp_btf program the verifier rejects (it dereferences a
/// scalar), with the map and constants the loader sets, so that only the program fails.
const REJECTED_CONNTRACK: &str = r#"
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
volatile const __u8 tcpv6_enabled = 1;
volatile const __u8 udpv6_enabled = 1;
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__uint(key_size, 44);
	__uint(value_size, 56);
} conntrack SEC(".maps");
SEC("tp_btf/net_dev_queue")
int ct_net_dev_queue(__u64 *ctx)
{
	long scalar = bpf_ktime_get_ns();
	return *(int *)scalar;
}
"#;

#[test]
fn a_reload_whose_object_the_verifier_rejects_leaves_the_old_one_serving() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let bpf_dir = tempfile::tempdir().unwrap();
    let object = bpf_dir.path().join("conntrack.bpf.o");
    std::fs::write(&object, privileged_loader::objects::embedded("conntrack").unwrap()).unwrap();
    let netns = nat_namespace("mod-rej");
    let inode = netns.inode().unwrap();
    let ns = NsModules::new(&netns, Some(bpf_dir.path().to_path_buf()));
    let first = ConntrackConfig { attach_strategies: vec![Hook::TpBtf], ..base_config("core") };
    ns.start(first.clone());
    let traffic = Traffic::start(&netns, 200);
    std::thread::sleep(Duration::from_millis(500));
    drop(traffic);
    let before = listed(&netns);
    assert!(wait_until(Duration::from_secs(3), || unanswered(&ns, &before, inode).is_empty()));

    let source = bpf_dir.path().join("rejected.bpf.c");
    std::fs::write(&source, REJECTED_CONNTRACK).unwrap();
    let clang = std::process::Command::new(std::env::var("CLANG").unwrap_or_else(|_| "clang".into()))
        .args(["-g", "-O2", "-target", "bpf", "-idirafter", "/usr/include/x86_64-linux-gnu", "-c"])
        .arg(&source)
        .arg("-o")
        .arg(&object)
        .status()
        .unwrap();
    assert!(clang.success());

    let err = ns.reload(ConntrackConfig { max_entries: 32_768, ..first }).unwrap_err();
    assert!(matches!(err, ReloadError::Conntrack(_)), "{err}");
    assert!(err.to_string().contains("previous one keeps serving"), "{err}");
    assert!(unanswered(&ns, &before, inode).is_empty(), "the old conntracker still answers");
    assert_eq!(ns.modules.conntracker().unwrap().tables()[0].max_entries, 65_536);
    assert_eq!(
        ns.modules.conntrack_config().unwrap().max_entries,
        65_536,
        "the effective config is the old one"
    );

    let record = ns.record("conntrack");
    assert_eq!(record.state, ModuleState::Running);
    assert_eq!(record.strategy, "core/tp_btf");
    assert_eq!(record.generation, 1);
    assert_eq!(record.failed_reloads.len(), 1, "{record:#?}");
    let failed = &record.failed_reloads[0];
    assert_eq!(failed.changed, vec!["max_entries"]);
    assert!(failed.reason.contains("rejected at load"), "{}", failed.reason);
    let asset = ns.modules.registry().assets().into_iter().find(|a| a.asset == "conntrack").unwrap();
    assert_eq!(asset.outcome, AssetOutcome::VerifierError);
    let attached = programs_using(&ns.modules.conntracker().unwrap().bpf_map_ids());
    assert!(only_the_tp_btf_program(&attached), "the old program still attached: {attached:?}");
}

#[test]
fn an_invalid_config_is_refused_by_name_and_changes_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let netns = Netns::new("mod-bad").unwrap();
    let ns = NsModules::new(&netns, None);
    let first = base_config("core");
    ns.start(first.clone());
    let err = ns.reload(ConntrackConfig { max_entries: 1, ..first }).unwrap_err();
    assert!(err.to_string().contains("conntrack.max_entries = 1"), "{err}");
    let record = ns.record("conntrack");
    assert_eq!((record.state, record.generation), (ModuleState::Running, 1));
    assert_eq!(record.failed_reloads.len(), 1);
    assert_eq!(ns.modules.conntrack_config().unwrap().max_entries, 65_536);
}

#[test]
fn stopping_the_conntracker_leaves_no_program_or_map_in_the_kernel() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let netns = Netns::new("mod-stop").unwrap();
    let ns = NsModules::new(&netns, None);
    ns.start(base_config("core"));
    let maps = ns.modules.conntracker().unwrap().bpf_map_ids();
    assert!(!maps.is_empty());
    assert!(only_the_tp_btf_program(&programs_using(&maps)));

    let report = ns.run(|m| async move { m.stop_conntrack().await });
    assert_eq!(report.action, ReloadAction::Stopped);
    assert!(ns.modules.conntracker().is_none());
    assert!(wait_until(Duration::from_secs(2), || programs_using(&maps).is_empty()));
    for id in maps {
        assert!(wait_until(Duration::from_secs(2), || !kernel_has_map(id)), "map {id} remains");
    }
    assert_eq!(ns.record("conntrack").state, ModuleState::Stopped);
}

#[test]
fn stopping_the_lock_statistics_detaches_them_and_starting_again_resumes_counting() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let netns = Netns::new("mod-ls").unwrap();
    let ns = NsModules::new(&netns, None);
    ns.start(base_config("core"));
    let cfg = LockStatsConfig { track_all_maps: true, ..LockStatsConfig::default() };
    let started = ns.run({
        let cfg = cfg.clone();
        move |m| async move { m.start_lockstats(cfg).await }
    });
    assert_eq!(started.unwrap().action, ReloadAction::Started);
    let programs = ns.modules.lockstats().unwrap().snapshot().status.programs;
    assert!(!programs.is_empty());
    for p in &programs {
        assert!(kernel_has_program(p.id), "{} ({}) attached", p.name, p.id);
    }

    ns.run(|m| async move { m.stop_lockstats().await });
    assert!(ns.modules.lockstats().is_none());
    for p in &programs {
        assert!(
            wait_until(Duration::from_secs(2), || !kernel_has_program(p.id)),
            "{} still in the kernel after stop",
            p.name
        );
    }
    assert_eq!(ns.record("lockstats").state, ModuleState::Stopped);

    // A hash map whose every key lands in one bucket, hammered from several threads (as
    // in tests/lockstats.rs): its bucket lock is contended, the collector must count it.
    let keys = support::colliding_keys(CHAIN, CHAIN as usize + 1);
    let hot = Arc::new(
        support::RawMap::create(
            support::BPF_MAP_TYPE_HASH,
            CHAIN,
            support::BPF_F_ZERO_SEED,
            &support::unique_name("mod_hot"),
        )
        .unwrap(),
    );
    for key in &keys[..CHAIN as usize] {
        hot.update(*key, &[0u8; 8]).unwrap();
    }
    let restarted = ns.run(move |m| async move { m.start_lockstats(cfg).await }).unwrap();
    assert_eq!(restarted.generation, 2);
    let collector = ns.modules.lockstats().unwrap();
    assert_eq!(collector.state(), CollectorState::Running);
    let own = ns.modules.conntracker().unwrap().bpf_map_ids();
    assert!(
        collector.snapshot().maps.iter().any(|m| own.contains(&m.id)),
        "the conntracker's map is watched again"
    );
    let hammer = support::ChainHammer::start(hot.clone(), vec![keys[CHAIN as usize]], 3);
    let counted = wait_until(Duration::from_secs(40), || {
        collector
            .snapshot()
            .maps
            .iter()
            .any(|m| m.id == hot.id && m.locks.iter().any(|l| l.contended_count > 0))
    });
    hammer.stop();
    assert!(
        counted,
        "no contention counted on the hammered map after the restart: {:#?}",
        collector.snapshot().status
    );
}

/// Buckets (and entries) of the hammered map: a long chain in one bucket.
const CHAIN: u32 = 2048;

/// The steady state keeps CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN and drops CAP_SYS_ADMIN.
/// A reload that needs what was dropped is refused by name; the running instances stay.
#[test]
fn a_reload_needing_a_dropped_capability_is_a_named_failure() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let netns = Netns::new("mod-caps").unwrap();
    let ns = NsModules::new(&netns, None);
    let first = base_config("core");
    ns.start(first.clone());
    let lockstats = LockStatsConfig::default();
    ns.run({
        let cfg = lockstats.clone();
        move |m| async move { m.start_lockstats(cfg).await }
    })
    .unwrap();
    // Capabilities are per thread: this drops them on the modules' thread only.
    ns.run(|_| async {
        for cap in [caps::Capability::CAP_SYS_ADMIN, caps::Capability::CAP_BPF] {
            caps::drop(None, caps::CapSet::Effective, cap).unwrap();
        }
    });

    let err = ns.reload(ConntrackConfig { max_entries: 32_768, ..first }).unwrap_err();
    assert!(matches!(err, ReloadError::MissingCapability { capability: "CAP_BPF", .. }), "{err}");
    assert!(err.to_string().contains("privileges.keep"), "the error says what to do: {err}");
    let record = ns.record("conntrack");
    assert_eq!((record.state, record.generation), (ModuleState::Running, 1));
    assert!(record.failed_reloads[0].reason.contains("CAP_BPF"), "{record:#?}");
    assert_eq!(ns.modules.conntracker().unwrap().tables()[0].max_entries, 65_536);

    let cfg = LockStatsConfig { max_ranges: 64, ..lockstats };
    let err = ns.run(move |m| async move { m.reload_lockstats(cfg).await }).unwrap_err();
    assert!(matches!(err, ReloadError::MissingCapability { capability: "CAP_SYS_ADMIN", .. }), "{err}");
    assert_eq!(ns.modules.lockstats().unwrap().state(), CollectorState::Running);
    let record = ns.record("lockstats");
    assert_eq!((record.state, record.failed_reloads.len()), (ModuleState::Running, 1));
}
