//! The lock-contention collector against the real kernel (root, Linux with lock
//! tracepoints and BPF iterators; CI runs these as root).
//!
//! Maps are created with raw bpf(2) calls, the workload is real map updates from several
//! threads, and the expected figures come from outside the collector: the kernel's own
//! rule for n_buckets and `sizeof(struct bucket)` read from the kernel BTF by bpftool.
#[path = "lockstats_support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use privileged_loader::asset::AssetLoader;
use privileged_loader::btf::{BtfConfig, discover};
use privileged_loader::lockstats::{
    self, CollectorState, LockStatsConfig, LockStatsReport, LockType, MapLockStats, OwnedMap, inventory,
    ksym, ranges,
};
use privileged_loader::status::{ModuleState, Registry};
use support::{
    BPF_F_NO_COMMON_LRU, BPF_F_ZERO_SEED, BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH,
    BPF_MAP_TYPE_RINGBUF, ChainHammer, RawMap, colliding_keys, unique_name,
};

fn assets(registry: &Registry) -> AssetLoader {
    AssetLoader::new(discover(&BtfConfig::default()), None, registry.clone())
}

fn config(track_all_maps: bool, max_ranges: u32) -> LockStatsConfig {
    LockStatsConfig { enabled: true, track_all_maps, max_ranges }
}

fn map_in(report: &LockStatsReport, id: u32) -> &MapLockStats {
    report.maps.iter().find(|m| m.id == id).unwrap_or_else(|| panic!("map {id} not tracked: {report:#?}"))
}

fn lock_count(map: &MapLockStats, lock_type: LockType) -> (u64, u64) {
    map.locks
        .iter()
        .find(|l| l.lock_type == lock_type)
        .map_or((0, 0), |l| (l.contended_count, l.total_wait_ns))
}

fn total_count(map: &MapLockStats) -> u64 {
    map.locks.iter().map(|l| l.contended_count).sum()
}

/// Number of buckets (and entries) of the hammered maps: long chains in one bucket.
const CHAIN: u32 = 2048;
/// Threads per hammered map: a holder, a pending spinner and a queued waiter (see below).
const HAMMER_THREADS: usize = 3;

#[test]
fn hammered_maps_show_bucket_contention_and_an_idle_map_none() {
    let registry = Registry::default();
    let assets = assets(&registry);
    // Zero-seed maps whose every key lands in bucket 0: the update path walks a chain of
    // CHAIN elements under that bucket's lock, so the lock is held most of the time.
    let keys = colliding_keys(CHAIN, CHAIN as usize + 64);
    let hot_hash = Arc::new(
        RawMap::create(BPF_MAP_TYPE_HASH, CHAIN, BPF_F_ZERO_SEED, &unique_name("ls_hh"))
            .expect("create hash"),
    );
    let hot_lru = Arc::new(
        RawMap::create(BPF_MAP_TYPE_LRU_HASH, CHAIN, BPF_F_ZERO_SEED, &unique_name("ls_hl"))
            .expect("create lru"),
    );
    for key in &keys[..CHAIN as usize] {
        hot_hash.update(*key, &[0u8; 8]).expect("fill the hash map");
        hot_lru.update(*key, &[0u8; 8]).expect("fill the LRU map");
    }
    let idle = RawMap::create(BPF_MAP_TYPE_HASH, 16, 0, &unique_name("ls_id")).expect("create idle hash");
    let owned = [
        OwnedMap::by_id(hot_hash.id, "test-hot"),
        OwnedMap::by_id(hot_lru.id, "test-hot"),
        OwnedMap::by_id(idle.id, "test-idle"),
    ];
    let collector = lockstats::start(&config(false, 1024), &assets, &registry, &owned);
    let status = collector.snapshot().status;
    assert_eq!(status.state, CollectorState::Running, "{status:#?}");
    assert_eq!(status.tracked_maps, 3, "{status:#?}");

    // The lock tracepoints report only waiters that reach the queue of the spinlock's
    // slow path: under a paravirt hypervisor (this host) every waiter does; on bare metal
    // (and the qemu matrix's guests) the first waiter spins on the pending bit unseen and
    // only a third CPU on the same lock queues. So HAMMER_THREADS per map, and hammer
    // until both hot maps show contention (typically seconds), at most 40 s. The hash map
    // is full, so updating an absent key walks the chain and fails; the LRU map cycles
    // through more keys than it holds.
    let absent = keys[CHAIN as usize];
    let hash_hammer = ChainHammer::start(hot_hash.clone(), vec![absent], HAMMER_THREADS);
    let lru_hammer = ChainHammer::start(hot_lru.clone(), keys.clone(), HAMMER_THREADS);
    let deadline = Instant::now() + Duration::from_secs(40);
    let report = loop {
        std::thread::sleep(Duration::from_millis(500));
        let report = collector.snapshot();
        let hash_seen = lock_count(map_in(&report, hot_hash.id), LockType::HashBucket).0 > 0;
        let lru_seen = lock_count(map_in(&report, hot_lru.id), LockType::HashBucket).0 > 0;
        if (hash_seen && lru_seen) || Instant::now() > deadline {
            break report;
        }
    };
    let calls = hash_hammer.stop() + lru_hammer.stop();
    eprintln!("status after {calls} updates: {:#?}", report.status);

    let hash = map_in(&report, hot_hash.id);
    let (count, total) = lock_count(hash, LockType::HashBucket);
    assert!(count > 0 && total > 0, "no bucket contention on the hammered hash map: {hash:#?}");
    assert_eq!(hash.owner, "test-hot");
    assert_eq!(hash.map_type, "hash");
    let lru = map_in(&report, hot_lru.id);
    let (count, total) = lock_count(lru, LockType::HashBucket);
    assert!(count > 0 && total > 0, "no bucket contention on the hammered LRU map: {lru:#?}");
    assert_eq!(lru.map_type, "lru_hash");
    let bucket = hash.locks.iter().find(|l| l.lock_type == LockType::HashBucket).expect("bucket stats");
    assert!(
        bucket.min_wait_ns <= bucket.avg_wait_ns && bucket.avg_wait_ns <= bucket.max_wait_ns,
        "{bucket:#?}"
    );
    assert_eq!(
        total_count(map_in(&report, idle.id)),
        0,
        "contention attributed to the idle map: {report:#?}"
    );
}

/// `sizeof(struct bucket)` from the kernel's BTF, as bpftool reads it.
fn bucket_size_from_btf() -> u64 {
    struct_size_from_btf("bucket")
}

/// `sizeof(struct <name>)` from the kernel's BTF, as bpftool reads it (the test oracle).
fn struct_size_from_btf(name: &str) -> u64 {
    let out = std::process::Command::new("bpftool")
        .args(["btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "raw"])
        .output()
        .expect("bpftool installed (apt-get install bpftool)");
    let text = String::from_utf8_lossy(&out.stdout);
    let pattern = format!("STRUCT '{name}' ");
    let line =
        text.lines().find(|l| l.contains(&pattern)).unwrap_or_else(|| panic!("struct {name} in vmlinux BTF"));
    let size = line.split_whitespace().find_map(|w| w.strip_prefix("size=")).expect("size= in bpftool line");
    size.parse().expect("numeric size")
}

#[test]
fn hash_map_bucket_range_matches_the_kernel() {
    let registry = Registry::default();
    let assets = assets(&registry);
    // htab_map_alloc: n_buckets = roundup_pow_of_two(max_entries).
    let map = RawMap::create(BPF_MAP_TYPE_HASH, 1000, 0, &unique_name("ls_rg")).expect("create hash");
    let (symbols, _) = ksym::resolve(&assets, &[ksym::PER_CPU_OFFSET]);
    // 0 when the kernel hides the symbol (no CONFIG_KALLSYMS_ALL, as here): the iterator
    // then measures the offsets itself.
    let per_cpu_offset = symbols.address(ksym::PER_CPU_OFFSET).unwrap_or(0);
    let snapshot = inventory::snapshot(&assets, per_cpu_offset, None).expect("map iterator runs");
    let layout = snapshot.maps.iter().find(|m| m.id == map.id).expect("iterator sees the new map");

    let cpus = aya::util::nr_cpus().expect("possible CPUs");
    assert_eq!(snapshot.per_cpu_offsets.len(), cpus, "one offset per possible CPU");
    assert_eq!(layout.name, map.name);
    assert_eq!(layout.n_buckets, 1024);
    let expected_bytes = 1024 * bucket_size_from_btf();
    let ranges = ranges::lock_ranges(layout, &snapshot.per_cpu_offsets);
    let bucket = ranges.iter().find(|r| r.lock_type == LockType::HashBucket).expect("bucket range");
    assert_eq!(bucket.start, layout.buckets);
    assert_eq!(bucket.end - bucket.start, expected_bytes);
    // The kernel half starts at 0xffff800000000000 with 4-level paging and at
    // 0xff00000000000000 with 5-level paging (the qemu matrix's la57 guest).
    assert!(bucket.start >= 0xff00_0000_0000_0000, "not a kernel address: {:#x}", bucket.start);
    // A preallocated hash map has one freelist head per possible CPU, each its own range.
    let freelists = ranges.iter().filter(|r| r.lock_type == LockType::HashFreelistPcpu).count();
    assert_eq!(freelists, cpus);
}

#[test]
fn percpu_lru_and_ring_buffer_ranges_have_kernel_sizes() {
    let registry = Registry::default();
    let assets = assets(&registry);
    let lru = RawMap::create(BPF_MAP_TYPE_LRU_HASH, 64, BPF_F_NO_COMMON_LRU, &unique_name("ls_pl"))
        .expect("create lru");
    let ringbuf = RawMap::create_raw(BPF_MAP_TYPE_RINGBUF, 0, 0, 4096, 0, &unique_name("ls_rb"))
        .expect("create ringbuf");
    let (symbols, _) = ksym::resolve(&assets, &[ksym::PER_CPU_OFFSET]);
    let snapshot = inventory::snapshot(&assets, symbols.address(ksym::PER_CPU_OFFSET).unwrap_or(0), None)
        .expect("map iterator");
    let layout_of = |id| snapshot.maps.iter().find(|m| m.id == id).expect("iterator sees the map");

    // BPF_F_NO_COMMON_LRU: one whole bpf_lru_list per CPU, no global list.
    let lru_ranges = ranges::lock_ranges(layout_of(lru.id), &snapshot.per_cpu_offsets);
    let lists: Vec<_> = lru_ranges.iter().filter(|r| r.lock_type == LockType::LruPcpuList).collect();
    assert_eq!(lists.len(), aya::util::nr_cpus().expect("possible CPUs"));
    assert!(lists.iter().all(|r| r.end - r.start == struct_size_from_btf("bpf_lru_list")));
    assert!(lru_ranges.iter().all(|r| r.lock_type != LockType::LruGlobalList));

    let rb_ranges = ranges::lock_ranges(layout_of(ringbuf.id), &snapshot.per_cpu_offsets);
    let size_of = |t| rb_ranges.iter().find(|r| r.lock_type == t).map(|r| r.end - r.start);
    assert_eq!(size_of(LockType::RingbufWaitq), Some(struct_size_from_btf("wait_queue_head")));
    // rqspinlock_t (6.18) is a struct qspinlock.
    assert_eq!(size_of(LockType::RingbufSpinlock), Some(struct_size_from_btf("qspinlock")));
}

/// Kernel ids of the programs currently loaded.
fn loaded_program_ids() -> Vec<u32> {
    aya::programs::loaded_programs().filter_map(Result::ok).map(|p| p.id()).collect()
}

#[test]
fn collector_off_attaches_nothing_and_disabling_detaches() {
    let registry = Registry::default();
    let assets = assets(&registry);
    let off = LockStatsConfig { enabled: false, ..LockStatsConfig::default() };
    let disabled = lockstats::start(&off, &assets, &registry, &[]);
    let report = disabled.snapshot();
    assert_eq!(report.status.state, CollectorState::Disabled);
    assert!(report.status.programs.is_empty());
    assert!(report.status.reasons.iter().any(|r| r.contains("disabled")), "{:?}", report.status.reasons);
    let module =
        registry.modules().into_iter().find(|m| m.name == lockstats::MODULE).expect("module recorded");
    assert_eq!(module.state, ModuleState::Disabled);

    let map = RawMap::create(BPF_MAP_TYPE_HASH, 8, 0, &unique_name("ls_on")).expect("create hash");
    let on = lockstats::start(&config(false, 64), &assets, &registry, &[OwnedMap::by_id(map.id, "t")]);
    let programs = on.snapshot().status.programs;
    assert_eq!(programs.len(), 2, "contention_begin and contention_end attached");
    let loaded = loaded_program_ids();
    assert!(programs.iter().all(|p| loaded.contains(&p.id)), "{programs:?} not loaded");

    on.disable("turned off by configuration");
    let report = on.snapshot();
    assert_eq!(report.status.state, CollectorState::Disabled);
    assert!(report.status.programs.is_empty());
    // Programs are freed once their last reference goes: allow the kernel a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while programs.iter().any(|p| loaded_program_ids().contains(&p.id)) {
        assert!(Instant::now() < deadline, "programs {programs:?} still loaded after disable");
        std::thread::sleep(Duration::from_millis(50));
    }
    let module =
        registry.modules().into_iter().find(|m| m.name == lockstats::MODULE).expect("module recorded");
    assert_eq!(module.state, ModuleState::Disabled);
}

#[test]
fn track_all_maps_watches_external_maps_and_reports_those_over_the_bound() {
    let registry = Registry::default();
    let assets = assets(&registry);
    let mine = RawMap::create(BPF_MAP_TYPE_HASH, 8, 0, &unique_name("ls_mi")).expect("create hash");
    let others: Vec<RawMap> = (0..3)
        .map(|_| RawMap::create(BPF_MAP_TYPE_LRU_HASH, 8, 0, &unique_name("ls_ex")).expect("create lru"))
        .collect();
    let array = RawMap::create(BPF_MAP_TYPE_ARRAY, 8, 0, &unique_name("ls_ar")).expect("create array");

    let everything =
        lockstats::start(&config(true, 1_000_000), &assets, &registry, &[OwnedMap::by_id(mine.id, "mine")]);
    let report = everything.snapshot();
    assert_eq!(report.status.state, CollectorState::Running, "{:#?}", report.status);
    assert_eq!(map_in(&report, mine.id).owner, "mine");
    for other in &others {
        let tracked = map_in(&report, other.id);
        assert_eq!(tracked.owner, "external");
        let types: Vec<LockType> = tracked.locks.iter().map(|l| l.lock_type).collect();
        assert!(
            types.contains(&LockType::LruGlobalList) && types.contains(&LockType::LruPcpuList),
            "{types:?}"
        );
    }
    assert!(report.maps.iter().all(|m| m.id != array.id), "array maps have no map lock to track");
    // The owned map's own range count: buckets + one freelist head per CPU, plus a global
    // freelist on kernels that still have one (6.1).
    let mine_ranges: u32 = report
        .maps
        .iter()
        .find(|m| m.id == mine.id)
        .map(|m| m.locks.iter().map(|l| l.ranges).sum())
        .expect("the owned map is tracked");
    let cpus = u32::try_from(aya::util::nr_cpus().expect("possible CPUs")).expect("few CPUs");
    assert!(mine_ranges == 1 + cpus || mine_ranges == 2 + cpus, "{mine_ranges} ranges for {cpus} CPUs");
    drop(everything);

    // A bound that fits exactly the owned map.
    let bounded =
        lockstats::start(&config(true, mine_ranges), &assets, &registry, &[OwnedMap::by_id(mine.id, "mine")]);
    let status = bounded.snapshot().status;
    assert_eq!(status.state, CollectorState::Running);
    assert_eq!(status.tracked_ranges, mine_ranges, "{status:#?}");
    let left_out: BTreeMap<u32, &str> =
        status.maps_left_out.iter().map(|m| (m.id, m.reason.as_str())).collect();
    assert!(!left_out.contains_key(&mine.id), "owned maps get the budget first");
    for other in &others {
        let reason =
            left_out.get(&other.id).unwrap_or_else(|| panic!("map {} not listed: {status:#?}", other.id));
        assert!(reason.contains("max_ranges"), "{reason}");
    }
    assert!(status.reasons.iter().any(|r| r.contains("left out")), "{:?}", status.reasons);
}

#[test]
fn without_kernel_btf_initialize_fails_as_a_status_line() {
    let registry = Registry::default();
    // No sysfs BTF and no other source: every CO-RE load must fail cleanly.
    let no_btf = BtfConfig { no_sysfs: true, ..BtfConfig::default() };
    let assets = AssetLoader::new(discover(&no_btf), None, registry.clone());
    let collector = lockstats::start(&config(true, 64), &assets, &registry, &[]);
    let report = collector.snapshot();
    assert_eq!(report.status.state, CollectorState::Failed);
    assert!(report.status.programs.is_empty() && report.maps.is_empty());
    assert!(report.status.reasons[0].contains("BTF"), "{:?}", report.status.reasons);
    let module =
        registry.modules().into_iter().find(|m| m.name == lockstats::MODULE).expect("module recorded");
    assert_eq!(module.state, ModuleState::Failed);
    assert!(module.last_error.is_some());
    let outcomes: Vec<_> = registry.assets().into_iter().map(|a| (a.asset, a.outcome)).collect();
    assert!(
        outcomes
            .iter()
            .any(|(a, o)| a == "lockstat_maps" && *o == privileged_loader::status::AssetOutcome::BtfNotFound),
        "{outcomes:?}"
    );
}

/// Without `CONFIG_KALLSYMS_ALL` (this project's VMs) the kernel's symbol table lists
/// functions only: Initialize must not walk it for `__per_cpu_offset` (no ksym object
/// loaded), say why, and measure the per-CPU offsets itself. Where the configuration
/// lists data symbols (or cannot be read), the walk goes ahead as before.
#[test]
fn a_symbol_table_of_functions_only_is_not_walked_for_per_cpu_offset() {
    let registry = Registry::default();
    let assets = assets(&registry);
    let map = RawMap::create(BPF_MAP_TYPE_HASH, 64, 0, &unique_name("ls_ko")).expect("create hash");
    let owned = [OwnedMap::by_id(map.id, "test-config")];
    let collector = lockstats::start(&config(false, 1024), &assets, &registry, &owned);
    let status = collector.snapshot().status;
    assert_eq!(status.state, CollectorState::Running, "{status:#?}");
    let ksym_loads = registry.assets().into_iter().filter(|a| a.asset == ksym::KSYM_ASSET).count();
    let not_searched =
        status.reasons.iter().find(|r| r.contains("CONFIG_KALLSYMS_ALL") && r.contains("not searched"));
    match lockstats::functions_only_config() {
        Some(config) => {
            assert_eq!(
                ksym_loads, 0,
                "the symbol table was walked although {config} says it lists functions only"
            );
            assert_eq!(status.symbols_source, "pcpu_probe map");
            let reason =
                not_searched.unwrap_or_else(|| panic!("no reason names the configuration: {status:#?}"));
            assert!(reason.contains(&config) && reason.contains(ksym::PER_CPU_OFFSET), "{reason}");
        }
        None => assert!(not_searched.is_none(), "skipped without a configuration saying so: {status:#?}"),
    }
    // Either way the per-CPU freelists are tracked, one range per CPU: the offsets were
    // found (an unusable offset would leave them out).
    let report = collector.snapshot();
    let freelists = map_in(&report, map.id).locks.iter().find(|l| l.lock_type == LockType::HashFreelistPcpu);
    let cpus = aya::util::nr_cpus().expect("possible CPUs");
    assert_eq!(freelists.map(|l| l.ranges as usize), Some(cpus), "{report:#?}");
}

/// Start-up loads the map iterator ahead, beside the conntracker (`prefetch_kernel_symbols`):
/// the walk must still happen at Initialize and see the maps made in between, and the
/// object must load once, recorded once, as without the prefetch.
#[test]
fn a_map_iterator_loaded_ahead_walks_the_maps_made_after_it_and_loads_once() {
    let registry = Registry::default();
    let assets = assets(&registry);
    let prefetched = lockstats::prefetch_kernel_symbols(&assets);
    let late = RawMap::create(BPF_MAP_TYPE_HASH, 64, 0, &unique_name("ls_lt")).expect("create hash");
    let owned = [OwnedMap::by_id(late.id, "test-late")];
    let collector =
        lockstats::start_prefetched(&config(false, 1024), &assets, &registry, &owned, Some(prefetched));
    let report = collector.snapshot();
    assert_eq!(report.status.state, CollectorState::Running, "{:#?}", report.status);
    assert!(map_in(&report, late.id).locks.iter().any(|l| l.lock_type == LockType::HashBucket));
    let loads: u64 =
        registry.assets().into_iter().filter(|a| a.asset == inventory::MAPS_ASSET).map(|a| a.count).sum();
    assert_eq!(loads, 1, "{:#?}", registry.assets());
}
