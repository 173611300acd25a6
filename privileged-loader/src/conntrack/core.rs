//! The CO-RE conntracker: `bpf/conntrack.bpf.c` loaded through the CO-RE asset loader,
//! attached with the first strategy that works here, read through [`Conntracker`].
//!
//! [`start`] also seeds the map with the entries that existed before the program was
//! attached (a ctnetlink dump), and starts the tasks that keep it clean: the DESTROY
//! event listener and the sweep (`sweep.rs`). `docs/conntrack.md` states the policy.
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use aya::maps::{HashMap, MapData, MapError};
use aya::programs::{BtfTracePoint, FEntry, KProbe, ProgramError, RawTracePoint};
use aya::{Btf, Ebpf};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::config::ConntrackConfig;
use super::ctnetlink::{CtNetlink, Event, Groups, NetlinkError};
use super::map::{self, CtKey, CtValue};
use super::sweep::{self, SweepPolicy};
use super::{ConntrackError, Conntracker, Entry, TableFill, Tuple};
use crate::asset::{AssetError, AssetLoader, error_chain};
use crate::status::{HookAttempt, ModuleState, Registry};

/// Name of the asset (`bpf/conntrack.bpf.c`) and of the module in the status registry.
pub const ASSET: &str = "conntrack";
pub const MODULE: &str = "conntrack";
/// The implementation name its hook attempts are recorded under (`conntrack::chain`).
const IMPLEMENTATION: &str = "core";
/// Bound on one sweep's conntrack dump.
const SWEEP_DUMP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after an unexpected netlink error, so a broken socket cannot spin a core.
const NETLINK_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// How the eBPF program is hooked into the kernel, in the order they are tried. The
/// serde names are those of `[conntrack] attach_strategies`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum Strategy {
    /// fentry on `__nf_conntrack_hash_insert`: once per new entry.
    #[serde(rename = "fentry")]
    FEntry,
    /// kprobe on `__nf_conntrack_hash_insert`.
    #[serde(rename = "kprobe")]
    KProbeHashInsert,
    /// kprobe + kretprobe on `__nf_conntrack_confirm`.
    #[serde(rename = "kprobe_confirm")]
    KProbeConfirm,
    /// `tp_btf/net_dev_queue`: every transmitted packet's `skb->_nfct`.
    #[serde(rename = "tp_btf")]
    TpBtf,
    /// `raw_tracepoint/net_dev_queue` with CO-RE reads: the per-packet hook for BTF the
    /// kernel does not publish itself (remote config, `btf.file`, BTFHub), where `tp_btf`
    /// cannot resolve its target.
    #[serde(rename = "raw_tracepoint")]
    RawTracepoint,
    /// The prebuilt object's kprobe (attached by `prebuilt.rs`, never in [`Self::ORDER`]).
    #[serde(skip)]
    PrebuiltKprobe,
    /// The prebuilt object's `raw_tracepoint/net_dev_queue` (attached by `prebuilt.rs`).
    #[serde(skip)]
    PrebuiltRawTracepoint,
}

impl Strategy {
    pub const ORDER: [Strategy; 5] = [
        Strategy::FEntry,
        Strategy::KProbeHashInsert,
        Strategy::KProbeConfirm,
        Strategy::TpBtf,
        Strategy::RawTracepoint,
    ];

    /// The hook, as recorded in the status attempts.
    pub fn hook(self) -> &'static str {
        match self {
            Strategy::FEntry => "fentry/__nf_conntrack_hash_insert",
            Strategy::KProbeHashInsert => "kprobe/__nf_conntrack_hash_insert",
            Strategy::KProbeConfirm => "kprobe+kretprobe/__nf_conntrack_confirm",
            Strategy::TpBtf => "tp_btf/net_dev_queue",
            Strategy::RawTracepoint => "raw_tracepoint/net_dev_queue (CO-RE)",
            Strategy::PrebuiltKprobe => "kprobe/__nf_conntrack_hash_insert",
            Strategy::PrebuiltRawTracepoint => "raw_tracepoint/net_dev_queue",
        }
    }

    /// The implementation name reported by [`Conntracker::strategy`].
    pub fn name(self) -> &'static str {
        match self {
            Strategy::FEntry => "core/fentry",
            Strategy::KProbeHashInsert | Strategy::KProbeConfirm => "core/kprobe",
            Strategy::TpBtf => "core/tp_btf",
            Strategy::RawTracepoint => "core/raw_tracepoint",
            Strategy::PrebuiltKprobe => "prebuilt/kprobe",
            Strategy::PrebuiltRawTracepoint => "prebuilt/raw_tracepoint",
        }
    }

    /// Whether the program refreshes `last_seen_ns` while a connection is active (only
    /// the per-packet hook does); the sweep's age rule is meaningless otherwise.
    pub fn refreshes_last_seen(self) -> bool {
        matches!(self, Strategy::TpBtf | Strategy::RawTracepoint | Strategy::PrebuiltRawTracepoint)
    }
}

/// Counters of the netlink side, for status and tests.
#[derive(Debug, Default)]
pub struct ConntrackStats {
    /// NAT'd entries inserted from the initial dump.
    pub initial_entries: AtomicU64,
    /// DESTROY events received.
    pub destroy_events: AtomicU64,
    /// Times the kernel dropped events (ENOBUFS) on the event socket.
    pub enobufs: AtomicU64,
    /// Sweeps run (periodic and after an overrun).
    pub sweeps: AtomicU64,
    /// Map slots the sweeps deleted.
    pub swept_slots: AtomicU64,
}

/// A started conntracker: its read side and the tasks keeping it up to date.
pub struct RunningConntracker {
    pub tracker: Arc<dyn Conntracker>,
    /// The destroy-event listener and the sweep; they end when `shutdown` is cancelled.
    pub tasks: JoinSet<()>,
    pub stats: Arc<ConntrackStats>,
    /// The eBPF map behind `tracker` (CO-RE and prebuilt), for handing its translations
    /// to a successor at a reload; `None` for a userspace table.
    pub map: Option<Arc<CoreConntracker>>,
}

/// The loaded object and its map.
pub struct CoreConntracker {
    map: RwLock<HashMap<MapData, CtKey, CtValue>>,
    /// Owns the programs and their links: dropping it detaches them.
    _ebpf: Mutex<Ebpf>,
    strategy: Strategy,
    root_netns: u32,
    /// Why the root namespace could not be read, shown in the module's status.
    root_netns_note: Option<String>,
    max_entries: u32,
}

/// Loads the CO-RE conntracker, trying fentry → kprobe → tp_btf and recording each
/// attempt in the Registry module "conntrack"; loads existing entries with a ctnetlink
/// dump (bounded by `initial_dump_timeout_secs`); starts the destroy-event listener and
/// the sweep, which stop when `shutdown` is cancelled.
///
/// The netlink sockets belong to the network namespace of the *calling thread*: that is
/// the namespace whose existing entries are loaded and whose destroy events are seen.
pub async fn start(
    cfg: &ConntrackConfig,
    assets: &AssetLoader,
    registry: &Registry,
    shutdown: CancellationToken,
) -> Result<RunningConntracker, ConntrackError> {
    let started = Instant::now();
    if !cfg.enabled {
        registry.update_module(MODULE, |m| m.state = ModuleState::Disabled);
        return Err(ConntrackError::Disabled);
    }
    let result = start_enabled(cfg, assets, registry, shutdown).await;
    registry.update_module(MODULE, |m| {
        m.load_time = started.elapsed();
        match &result {
            Ok((_, strategy)) => {
                m.state = ModuleState::Running;
                m.strategy = strategy.name().to_string();
            }
            Err(e) => {
                m.state = ModuleState::Failed;
                m.last_error = Some(e.to_string());
            }
        }
    });
    result.map(|(running, _)| running)
}

async fn start_enabled(
    cfg: &ConntrackConfig,
    assets: &AssetLoader,
    registry: &Registry,
    shutdown: CancellationToken,
) -> Result<(RunningConntracker, Strategy), ConntrackError> {
    cfg.validate()?;
    let tracker = Arc::new(CoreConntracker::load(cfg, assets, registry)?);
    let strategy = tracker.strategy;
    Ok((serve(tracker, cfg, registry, shutdown).await, strategy))
}

/// Serves the map of an object loaded and attached elsewhere (the prebuilt conntracker,
/// whose map has this same layout): the same seeding, destroy events and sweep as
/// [`start`]. Records nothing in the module's attempts; the caller does.
pub async fn serve_loaded(
    ebpf: Ebpf,
    strategy: Strategy,
    cfg: &ConntrackConfig,
    registry: &Registry,
    shutdown: CancellationToken,
) -> Result<RunningConntracker, ConntrackError> {
    cfg.validate()?;
    let tracker = Arc::new(CoreConntracker::from_loaded(ebpf, strategy, cfg.max_entries)?);
    Ok(serve(tracker, cfg, registry, shutdown).await)
}

/// Starts the map runtime (seeding, destroy listener, sweep) for a loaded object. A
/// reload that changes only runtime settings calls it again on the same object.
pub(crate) async fn serve(
    tracker: Arc<CoreConntracker>,
    cfg: &ConntrackConfig,
    registry: &Registry,
    shutdown: CancellationToken,
) -> RunningConntracker {
    let strategy = tracker.strategy;
    if let Some(note) = &tracker.root_netns_note {
        registry.update_module(MODULE, |m| m.notes.push(note.clone()));
    }
    let stats = Arc::new(ConntrackStats::default());
    let mut tasks = JoinSet::new();
    match open_netlink(cfg.destroy_events) {
        Ok((events, query, mut dump)) => {
            let seeded = seed(&tracker, &mut dump, cfg).await;
            stats.initial_entries.store(seeded as u64, Ordering::Relaxed);
            let resync = Arc::new(Notify::new());
            let policy = SweepPolicy {
                own_netns: dump.netns(),
                stale_after_ns: cfg
                    .stale_after()
                    .filter(|_| strategy.refreshes_last_seen())
                    .map(|d| d.as_nanos() as u64),
            };
            if let Some(events) = events {
                let listener = DestroyListener {
                    tracker: tracker.clone(),
                    stats: stats.clone(),
                    resync: resync.clone(),
                    query,
                    cfg: cfg.clone(),
                };
                tasks.spawn(listener.run(events, shutdown.clone()));
            } else {
                tracing::info!(
                    module = MODULE,
                    "conntrack.destroy_events is off: destroyed entries leave by the sweep and the LRU"
                );
            }
            let sweeper = Sweeper {
                tracker: tracker.clone(),
                stats: stats.clone(),
                policy,
                resync,
                cfg: cfg.clone(),
                suspects: HashSet::new(),
            };
            tasks.spawn(sweeper.run(dump, cfg.sweep_interval(), shutdown));
        }
        Err(e) => {
            // The map still fills from the kernel; only the cleanup and the seeding are lost.
            let message = format!(
                "{e}: entries that existed before start are not loaded and destroyed entries \
                 leave only by LRU eviction"
            );
            tracing::warn!(module = MODULE, "{message}");
            registry.update_module(MODULE, |m| m.last_error = Some(message));
        }
    }
    let map = Some(tracker.clone());
    let tracker: Arc<dyn Conntracker> = tracker;
    RunningConntracker { tracker, tasks, stats, map }
}

/// The DESTROY event socket first, then the query and dump sockets: an entry destroyed
/// between the dump and the subscription would otherwise stay in the map until the next
/// sweep. The query socket asks the kernel, for each DESTROY, whether a newer entry with
/// the same tuple exists (it must not be on the event socket, whose events it would eat).
/// No event socket when `conntrack.destroy_events` is off.
fn open_netlink(destroy_events: bool) -> Result<(Option<CtNetlink>, CtNetlink, CtNetlink), NetlinkError> {
    let events = if destroy_events { Some(CtNetlink::event_socket(Groups::Destroy)?) } else { None };
    let query = CtNetlink::dump_socket()?;
    let dump = CtNetlink::dump_socket()?;
    Ok((events, query, dump))
}

/// Inserts the entries of a dump of the own namespace that the configuration records
/// (NAT'd, enabled families); returns how many.
async fn seed(tracker: &CoreConntracker, dump: &mut CtNetlink, cfg: &ConntrackConfig) -> usize {
    let timeout = cfg.initial_dump_timeout();
    match tokio::time::timeout(timeout, dump.dump()).await {
        Ok(Ok(entries)) => {
            let now = monotonic_ns();
            entries.iter().filter(|e| cfg.records(e)).filter(|e| tracker.insert(e, now)).count()
        }
        Ok(Err(e)) => {
            tracing::warn!(module = MODULE, error = %e, "initial conntrack dump failed; continuing without it");
            0
        }
        Err(_) => {
            tracing::warn!(
                module = MODULE,
                ?timeout,
                "initial conntrack dump timed out; continuing without it"
            );
            0
        }
    }
}

impl CoreConntracker {
    /// Loads the object with the configured constants and map size, and attaches the
    /// first strategy that works.
    fn load(
        cfg: &ConntrackConfig,
        assets: &AssetLoader,
        registry: &Registry,
    ) -> Result<Self, ConntrackError> {
        let (ebpf, strategy) = assets.load_core_asset(ASSET, |bytes, loader| {
            loader.map_max_entries(map::MAP_NAME, cfg.max_entries);
            loader.override_global("tcpv6_enabled", flag(cfg.tcpv6_enabled), true);
            loader.override_global("udpv6_enabled", flag(cfg.udpv6_enabled), true);
            let mut ebpf = loader.load(bytes).map_err(|e| AssetError::from_ebpf(ASSET, e))?;
            let btf = assets.btf().map_err(|e| AssetError::BtfNotFound(e.to_string()))?;
            let strategy = attach_first(&mut ebpf, &btf.btf, registry, &cfg.attach_strategies)?;
            Ok((ebpf, strategy))
        })?;
        Self::from_loaded(ebpf, strategy, cfg.max_entries)
    }

    /// Takes the `conntrack` map of a loaded object (CO-RE or prebuilt).
    fn from_loaded(mut ebpf: Ebpf, strategy: Strategy, max_entries: u32) -> Result<Self, ConntrackError> {
        let missing =
            || ConntrackError::MapRead { map: map::MAP_NAME.into(), reason: "not in the object".into() };
        let map = ebpf.take_map(map::MAP_NAME).ok_or_else(missing)?;
        let map = HashMap::try_from(map).map_err(|e| map_error(&e))?;
        let (root_netns, root_netns_note) = root_netns();
        Ok(Self {
            map: RwLock::new(map),
            _ebpf: Mutex::new(ebpf),
            strategy,
            root_netns,
            root_netns_note,
            max_entries,
        })
    }

    /// Writes both slots of `entry`; false (and a log line) if the kernel refused.
    pub fn insert(&self, entry: &Entry, now_ns: u64) -> bool {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let result =
            map::slots_of(entry, now_ns).iter().try_for_each(|(key, value)| map.insert(key, value, 0));
        if let Err(e) = &result {
            tracing::warn!(module = MODULE, ?entry, error = %e, "cannot insert conntrack entry");
        }
        result.is_ok()
    }

    /// Writes `key → value` unless the map already holds `key` (`BPF_NOEXIST`): a
    /// successor's own, newer record of a slot wins over the one handed to it. Returns
    /// whether it was written.
    pub fn insert_absent(&self, key: &CtKey, value: &CtValue) -> bool {
        const BPF_NOEXIST: u64 = 1;
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        map.insert(key, value, BPF_NOEXIST).is_ok()
    }

    /// The slots of `entry` that still describe it (their value names `entry`'s other
    /// direction): a slot rewritten since, for another connection, is not among them.
    pub fn slots_describing(&self, entry: &Entry) -> Vec<CtKey> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map::slots_of(entry, 0)
            .into_iter()
            .filter(|(key, expected)| {
                map.get(key, 0).is_ok_and(|v| v.other == expected.other && v.dir == expected.dir)
            })
            .map(|(key, _)| key)
            .collect()
    }

    /// Deletes `keys`; returns how many were present.
    pub fn remove_keys(&self, keys: &[CtKey]) -> usize {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        keys.iter().filter(|key| map.remove(key).is_ok()).count()
    }

    /// Every slot of the map. Slots deleted while iterating are skipped.
    pub fn snapshot(&self) -> Result<Vec<(CtKey, CtValue)>, ConntrackError> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let mut slots = Vec::new();
        for item in map.iter() {
            match item {
                Ok(slot) => slots.push(slot),
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_error(&e)),
            }
        }
        Ok(slots)
    }
}

impl Conntracker for CoreConntracker {
    fn strategy(&self) -> String {
        self.strategy.name().to_string()
    }

    fn entries(&self) -> Result<Vec<Entry>, ConntrackError> {
        let slots = self.snapshot()?;
        let mut entries = Vec::with_capacity(slots.len() / 2);
        for (key, value) in &slots {
            match map::entry_of(key, value) {
                Ok(Some(entry)) => entries.push(entry),
                Ok(None) => {}
                Err(e) => tracing::debug!(module = MODULE, error = %e, "skipping malformed map slot"),
            }
        }
        Ok(entries)
    }

    fn lookup(&self, tuple: &Tuple, netns: u32) -> Result<Option<(Tuple, u32)>, ConntrackError> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let namespaces = if netns == self.root_netns { vec![netns] } else { vec![self.root_netns, netns] };
        for ns in namespaces {
            match map.get(&CtKey::from_tuple(tuple, ns), 0) {
                Ok(value) => {
                    let other = value.other.to_tuple().map_err(|e| ConntrackError::MapRead {
                        map: map::MAP_NAME.into(),
                        reason: e.to_string(),
                    })?;
                    return Ok(Some((other, ns)));
                }
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_error(&e)),
            }
        }
        Ok(None)
    }

    fn tables(&self) -> Vec<TableFill> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let entries = map.keys().filter(Result::is_ok).count() as u64;
        vec![TableFill { name: map::MAP_NAME.into(), entries, max_entries: u64::from(self.max_entries) }]
    }

    fn bpf_map_ids(&self) -> Vec<u32> {
        use aya::maps::IterableMap;
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.map().info().map(|info| vec![info.id()]).unwrap_or_default()
    }
}

/// Tries each allowed [`Strategy`] in the fixed order; records every attempt; returns
/// the first that attached, or the last failure.
fn attach_first(
    ebpf: &mut Ebpf,
    btf: &Btf,
    registry: &Registry,
    allowed: &[Strategy],
) -> Result<Strategy, AssetError> {
    let mut last_error = None;
    for strategy in Strategy::ORDER.into_iter().filter(|s| allowed.contains(s)) {
        match attach(ebpf, btf, strategy) {
            Ok(()) => {
                tracing::info!(module = MODULE, hook = strategy.hook(), "conntracker attached");
                registry.update_module(MODULE, |m| {
                    m.record_hook(IMPLEMENTATION, HookAttempt::ok(strategy.hook()))
                });
                return Ok(strategy);
            }
            Err(e) => {
                let reason = attempt_reason(&e);
                tracing::info!(module = MODULE, hook = strategy.hook(), %reason, "attach strategy unavailable");
                registry.update_module(MODULE, |m| {
                    m.record_hook(IMPLEMENTATION, HookAttempt::failed(strategy.hook(), reason))
                });
                last_error = Some(e);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| AssetError::Attach {
        asset: ASSET.into(),
        program: "(none)".into(),
        reason: "no attach strategy allowed: conntrack.attach_strategies is empty".into(),
    }))
}

fn attempt_reason(err: &AssetError) -> String {
    let raw = match err {
        AssetError::Verifier { log_tail, .. } => format!("load failed: {log_tail}"),
        AssetError::Attach { reason, .. } => format!("attach failed: {reason}"),
        other => other.to_string(),
    };
    match likely_cause(&raw) {
        Some(cause) => format!("{cause} ({raw})"),
        None => raw,
    }
}

/// The usual cause behind a raw attach/load error, in words an operator can act on.
fn likely_cause(raw: &str) -> Option<&'static str> {
    if raw.contains("devices/kprobe/type") {
        Some("kprobes unavailable: the kernel has no kprobe PMU (CONFIG_KPROBES not set)")
    } else if raw.contains("load failed") && raw.contains("Operation not permitted") {
        Some("EPERM on load: tracing trampolines are blocked here (lockdown or ftrace disabled)")
    } else {
        None
    }
}

fn attach(ebpf: &mut Ebpf, btf: &Btf, strategy: Strategy) -> Result<(), AssetError> {
    match strategy {
        Strategy::FEntry => {
            let prog: &mut FEntry = program(ebpf, "ct_fentry_hash_insert")?;
            prog.load("__nf_conntrack_hash_insert", btf)
                .map_err(|e| load_error("ct_fentry_hash_insert", e))?;
            prog.attach().map(drop).map_err(|e| attach_error("ct_fentry_hash_insert", e))
        }
        Strategy::KProbeHashInsert => kprobe(ebpf, "ct_kprobe_hash_insert", "__nf_conntrack_hash_insert"),
        Strategy::KProbeConfirm => {
            kprobe(ebpf, "ct_kprobe_confirm", "__nf_conntrack_confirm")?;
            let ret = kprobe(ebpf, "ct_kretprobe_confirm", "__nf_conntrack_confirm");
            if ret.is_err() {
                // Without the return probe the entry probe only fills confirm_args.
                if let Ok(prog) = program::<KProbe>(ebpf, "ct_kprobe_confirm") {
                    let _ = prog.unload();
                }
            }
            ret
        }
        Strategy::TpBtf => {
            let prog: &mut BtfTracePoint = program(ebpf, "ct_net_dev_queue")?;
            prog.load("net_dev_queue", btf).map_err(|e| load_error("ct_net_dev_queue", e))?;
            prog.attach().map(drop).map_err(|e| attach_error("ct_net_dev_queue", e))
        }
        Strategy::RawTracepoint => {
            let prog: &mut RawTracePoint = program(ebpf, "ct_raw_net_dev_queue")?;
            prog.load().map_err(|e| load_error("ct_raw_net_dev_queue", e))?;
            prog.attach("net_dev_queue").map(drop).map_err(|e| attach_error("ct_raw_net_dev_queue", e))
        }
        Strategy::PrebuiltKprobe | Strategy::PrebuiltRawTracepoint => Err(AssetError::Attach {
            asset: ASSET.into(),
            program: strategy.hook().into(),
            reason: "a prebuilt hook: attached by conntrack::prebuilt, not the CO-RE object".into(),
        }),
    }
}

fn kprobe(ebpf: &mut Ebpf, name: &str, symbol: &str) -> Result<(), AssetError> {
    let prog: &mut KProbe = program(ebpf, name)?;
    prog.load().map_err(|e| load_error(name, e))?;
    if let Err(e) = prog.attach(symbol, 0) {
        let _ = prog.unload();
        return Err(attach_error(name, e));
    }
    Ok(())
}

fn program<'e, P>(ebpf: &'e mut Ebpf, name: &str) -> Result<&'e mut P, AssetError>
where
    &'e mut P: TryFrom<&'e mut aya::programs::Program, Error = ProgramError>,
{
    let missing = |reason: String| AssetError::Read {
        asset: ASSET.into(),
        path: String::new(),
        reason: format!("program {name}: {reason}"),
    };
    let prog = ebpf.program_mut(name).ok_or_else(|| missing("not in the object".into()))?;
    prog.try_into().map_err(|e: ProgramError| missing(error_chain(&e)))
}

fn load_error(program: &str, err: ProgramError) -> AssetError {
    AssetError::from_program_load(ASSET, program, err)
}

fn attach_error(program: &str, err: ProgramError) -> AssetError {
    AssetError::from_program_attach(ASSET, program, err)
}

fn map_error(err: &MapError) -> ConntrackError {
    ConntrackError::MapRead { map: map::MAP_NAME.into(), reason: error_chain(err) }
}

/// `set_global` wants a reference that outlives the loader: promote to 'static.
fn flag(on: bool) -> &'static u8 {
    if on { &1 } else { &0 }
}

/// Inode of the root network namespace (that of pid 1), where the original system looks
/// first; when /proc/1 is not readable, the calling thread's namespace, and a note saying
/// so (lookups of the real root namespace's entries then miss).
fn root_netns() -> (u32, Option<String>) {
    // readlink, not stat: stat of another process's namespace file needs ptrace access,
    // which sandboxes deny even to root; the link text `net:[<inode>]` does not — unless
    // the loader lacks one of PID 1's capabilities, which a root shell in a container may.
    let link = std::fs::read_link("/proc/1/ns/net").map(|l| l.to_string_lossy().into_owned());
    let why = match link.as_deref().map(parse_ns_link) {
        Ok(Some(inode)) => return (inode, None),
        Ok(None) => format!("unexpected link text {link:?}"),
        Err(e) => e.to_string(),
    };
    let own = super::ctnetlink::current_netns().unwrap_or(0);
    let note = format!(
        "cannot read /proc/1/ns/net ({why}): the loader's own network namespace ({own}) stands in for the root one; give the loader CAP_SYS_PTRACE or every capability PID 1 has to fix it"
    );
    tracing::warn!(module = MODULE, %note, "root network namespace unknown");
    (own, Some(note))
}

/// The inode in a namespace link's text, `net:[4026531840]`.
fn parse_ns_link(text: &str) -> Option<u32> {
    text.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// How long the destroy listener lets events queue after handling a batch. Deletions are
/// at most this much later; the 8 MiB event queue holds ~25,000 events, far more than
/// arrive in this time even in the benchmark's connection storm.
const EVENT_COALESCE: Duration = Duration::from_millis(10);

/// Drops the map slots of destroyed entries of the own namespace.
struct DestroyListener {
    tracker: Arc<CoreConntracker>,
    stats: Arc<ConntrackStats>,
    resync: Arc<Notify>,
    /// Asks the kernel whether a destroyed tuple already belongs to a newer entry.
    query: CtNetlink,
    /// Decides whether such a newer entry belongs in the map.
    cfg: ConntrackConfig,
}

impl DestroyListener {
    async fn run(mut self, mut socket: CtNetlink, shutdown: CancellationToken) {
        loop {
            let batch = tokio::select! {
                () = shutdown.cancelled() => return,
                batch = socket.next_events() => batch,
            };
            match batch {
                Ok(events) => {
                    self.apply(&events).await;
                    // Let the next events queue up for a moment: under a connection storm
                    // one wake-up then takes hundreds of them instead of one each.
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(EVENT_COALESCE) => {}
                    }
                }
                Err(NetlinkError::Overrun) => {
                    self.stats.enobufs.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        module = MODULE,
                        "conntrack destroy events were lost (ENOBUFS); resynchronising"
                    );
                    self.resync.notify_one();
                }
                Err(e) => {
                    tracing::warn!(module = MODULE, error = %e, "conntrack event socket error");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(NETLINK_RETRY_PAUSE) => {}
                    }
                }
            }
        }
    }

    async fn apply(&mut self, events: &[Event]) {
        for event in events {
            if let Event::Destroy(entry) = event {
                self.stats.destroy_events.fetch_add(1, Ordering::Relaxed);
                if entry.is_nat() {
                    self.forget(entry).await;
                }
            }
        }
    }

    /// Deletes the slots of the destroyed `entry`, unless they now belong to a newer
    /// entry with the same original tuple.
    ///
    /// The event is read after the fact. When a port is reused (a SYN on a TIME_WAIT or
    /// closed entry, `tcp_tw_reuse`), the kernel destroys the old entry and creates a new
    /// one with the very same tuples in the same instant; the eBPF program has usually
    /// recorded the new one (the same slots) before this event is read, and deleting them
    /// would lose a live connection — for good with fentry/kprobe, until its next packet
    /// with tp_btf. So the kernel is asked what it holds now (`CtNetlink::get`, which
    /// ignores the dying entry itself); a live entry under the tuple keeps the slots,
    /// rewritten to it.
    async fn forget(&mut self, entry: &Entry) {
        let stale = self.tracker.slots_describing(entry);
        if stale.is_empty() {
            return;
        }
        match self.query.get(&entry.original).await {
            Ok(Some(next)) if next.is_nat() && self.cfg.records(&next) => {
                if next.original == entry.original && next.reply == entry.reply && stale.len() == 2 {
                    // The newer entry has the same tuples both ways (a reused port,
                    // the same NAT mapping): both slots already describe it.
                    return;
                }
                let kept = map::slots_of(&next, 0).map(|(key, _)| key);
                let gone: Vec<CtKey> = stale.into_iter().filter(|k| !kept.contains(k)).collect();
                self.tracker.remove_keys(&gone);
                self.tracker.insert(&next, monotonic_ns());
            }
            Ok(_) => {
                self.tracker.remove_keys(&stale);
            }
            Err(e) => {
                // Unknown: keeping a dead entry until the sweep is better than deleting
                // a live one that nothing would re-record.
                tracing::warn!(module = MODULE, error = %e, ?entry, "cannot ask the kernel about a destroyed entry; resynchronising");
                self.resync.notify_one();
            }
        }
    }
}

/// Periodically (and after an event overrun) reconciles the map with a fresh dump.
struct Sweeper {
    tracker: Arc<CoreConntracker>,
    stats: Arc<ConntrackStats>,
    policy: SweepPolicy,
    resync: Arc<Notify>,
    /// Decides which dumped entries belong in the map (the families the program records).
    cfg: ConntrackConfig,
    /// Own-namespace connections the last dump did not list (see `sweep.rs`).
    suspects: HashSet<CtKey>,
}

impl Sweeper {
    async fn run(mut self, mut dump: CtNetlink, interval: Option<Duration>, shutdown: CancellationToken) {
        let mut ticker = interval.map(|every| {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker
        });
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.resync.notified() => {}
                () = next_tick(&mut ticker) => {}
            }
            self.sweep_once(&mut dump).await;
        }
    }

    async fn sweep_once(&mut self, dump: &mut CtNetlink) {
        let started_ns = monotonic_ns();
        let entries = match tokio::time::timeout(SWEEP_DUMP_TIMEOUT, dump.dump()).await {
            Ok(Ok(entries)) => Some(entries.into_iter().filter(|e| self.cfg.records(e)).collect::<Vec<_>>()),
            Ok(Err(e)) => {
                tracing::warn!(module = MODULE, error = %e, "sweep: conntrack dump failed; own namespace not checked");
                None
            }
            Err(_) => {
                tracing::warn!(module = MODULE, "sweep: conntrack dump timed out; own namespace not checked");
                None
            }
        };
        let slots = match self.tracker.snapshot() {
            Ok(slots) => slots,
            Err(e) => {
                tracing::warn!(module = MODULE, error = %e, "sweep: cannot read the map");
                return;
            }
        };
        let mut plan = sweep::plan(&slots, entries.as_deref(), &self.policy, started_ns, &self.suspects);
        let held = self.held_by_kernel(dump, &sweep::own_deletions(&plan, &slots, &self.policy)).await;
        sweep::spare(&mut plan, &slots, &held);
        self.suspects = std::mem::take(&mut plan.suspects);
        let deleted = self.tracker.remove_keys(&plan.delete);
        let now = monotonic_ns();
        let inserted = plan.insert.iter().filter(|e| self.tracker.insert(e, now)).count();
        self.stats.sweeps.fetch_add(1, Ordering::Relaxed);
        self.stats.swept_slots.fetch_add(deleted as u64, Ordering::Relaxed);
        tracing::debug!(module = MODULE, deleted, inserted, slots = slots.len(), "conntrack sweep done");
    }

    /// Which of the own-namespace `originals` the kernel still holds, asked one by one:
    /// the dumps that missed them can skip entries. An entry that cannot be asked about
    /// counts as held (deleting a live entry is the worse error).
    async fn held_by_kernel(&self, dump: &mut CtNetlink, originals: &[CtKey]) -> HashSet<CtKey> {
        let mut held = HashSet::new();
        for key in originals {
            let Ok(tuple) = key.to_tuple() else { continue };
            match dump.get(&tuple).await {
                Ok(None) => {}
                Ok(Some(_)) => {
                    held.insert(*key);
                }
                Err(e) => {
                    tracing::debug!(module = MODULE, error = %e, ?tuple, "sweep: cannot ask the kernel; keeping");
                    held.insert(*key);
                }
            }
        }
        held
    }
}

async fn next_tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_reasons_name_the_likely_cause_and_keep_the_raw_error() {
        let no_pmu = AssetError::Attach {
            asset: ASSET.into(),
            program: "p".into(),
            reason: "`/sys/bus/event_source/devices/kprobe/type`: No such file or directory (os error 2)"
                .into(),
        };
        let reason = attempt_reason(&no_pmu);
        assert!(reason.starts_with("kprobes unavailable"), "{reason}");
        assert!(reason.contains("os error 2"), "{reason}");
        let eperm = AssetError::Verifier {
            asset: ASSET.into(),
            program: "p".into(),
            log_tail: "Operation not permitted (os error 1)".into(),
        };
        assert!(attempt_reason(&eperm).starts_with("EPERM on load"));
    }

    #[test]
    fn namespace_links_give_their_inode() {
        assert_eq!(parse_ns_link("net:[4026531833]"), Some(4026531833));
        assert_eq!(parse_ns_link("mnt:[1]"), None);
        assert_eq!(parse_ns_link("net:[x]"), None);
    }

    #[test]
    fn only_the_per_packet_hook_refreshes_last_seen() {
        let refreshing: Vec<_> = Strategy::ORDER.into_iter().filter(|s| s.refreshes_last_seen()).collect();
        assert_eq!(refreshing, vec![Strategy::TpBtf, Strategy::RawTracepoint]);
        assert_eq!(Strategy::TpBtf.name(), "core/tp_btf");
    }
}
