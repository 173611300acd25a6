//! Real-kernel tests of the kernel probe, BTF discovery and the CO-RE asset loader.
//!
//! They run as root against this machine's kernel (6.18: no kprobes, fentry EPERM,
//! tp_btf / raw tracepoints / iterators work, BTF in sysfs). Nothing is mocked: BTFHub
//! directories are real directories holding a copy of this kernel's BTF, corrupt objects
//! are real files, the verifier rejection comes from the real verifier.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use aya::maps::Map;
use aya::programs::RawTracePoint;
use privileged_loader::asset::{AssetError, AssetLoader};
use privileged_loader::btf::{self, BtfConfig, BtfError, HostIdentity, SYSFS_VMLINUX};
use privileged_loader::conntrack::core::ASSET as CONNTRACK_ASSET;
use privileged_loader::objects;
use privileged_loader::probe::{PROBE_ASSET, probe};
use privileged_loader::status::{AssetOutcome, AssetRecord, BtfSource, Registry};
use tempfile::TempDir;

fn sysfs_assets(registry: &Registry, bpf_dir: Option<PathBuf>) -> AssetLoader {
    AssetLoader::new(btf::discover(&BtfConfig::default()), bpf_dir, registry.clone())
}

fn record(registry: &Registry, asset: &str) -> AssetRecord {
    registry
        .assets()
        .into_iter()
        .find(|r| r.asset == asset)
        .unwrap_or_else(|| panic!("no record for {asset}"))
}

/// Loads an object's maps (no program): the smallest successful CO-RE load.
fn load_object(assets: &AssetLoader, name: &str) -> Result<aya::Ebpf, AssetError> {
    let name_owned = name.to_string();
    assets.load_core_asset(name, move |object, loader| {
        loader.load(object).map_err(|e| AssetError::from_ebpf(&name_owned, e))
    })
}

/// Lays out a BTFHub directory for this host; returns (hub dir, directory of the files).
fn hub_layout() -> (TempDir, PathBuf, HostIdentity) {
    let hub = tempfile::tempdir().expect("temp dir");
    let host = HostIdentity::current().expect("this host has /etc/os-release with ID and VERSION_ID");
    let [plain, _] = host.hub_candidates(hub.path());
    let dir = plain.parent().expect("candidate has a parent").to_path_buf();
    fs::create_dir_all(&dir).expect("create hub dirs");
    (hub, dir, host)
}

#[test]
fn probe_reports_this_kernel_with_a_reason_for_every_no() {
    let _serial = PROGRAMS.lock().unwrap_or_else(|p| p.into_inner());
    let registry = Registry::default();
    let assets = sysfs_assets(&registry, None);
    let report = probe(&assets);
    println!("{report}");

    let kind = |name: &str| report.attach_kind(name).unwrap_or_else(|| panic!("{name} not probed")).clone();
    let fentry = kind("fentry");
    assert!(!fentry.available);
    assert!(fentry.reason.contains("EPERM on load"), "fentry reason: {}", fentry.reason);
    let kprobe = kind("kprobe");
    assert!(!kprobe.available);
    assert!(kprobe.reason.contains("CONFIG_KPROBES not set"), "kprobe reason: {}", kprobe.reason);
    for available in ["tp_btf", "raw_tracepoint", "iter"] {
        let feature = kind(available);
        assert!(feature.available, "{available} should work here: {}", feature.reason);
    }
    assert!(report.conntrack.available, "conntrack: {}", report.conntrack.reason);
    assert!(
        report.lock_contention_tracepoints.available,
        "lock: {}",
        report.lock_contention_tracepoints.reason
    );
    assert_eq!(report.btf.source, Some(BtfSource::Sysfs));
    assert_eq!(
        record(&registry, PROBE_ASSET).outcome,
        AssetOutcome::Loaded { btf_source: Some(BtfSource::Sysfs) }
    );

    let json = serde_json::to_value(&report).expect("report serializes");
    assert_eq!(json["attach_kinds"][0]["name"], "fentry");
    assert_eq!(json["btf"]["source"], "sysfs");
}

#[test]
fn probe_leaves_nothing_loaded_or_attached() {
    let _serial = PROGRAMS.lock().unwrap_or_else(|p| p.into_inner());
    let before = bpf_program_and_link_fds();
    let registry = Registry::default();
    let assets = sysfs_assets(&registry, None);
    let report = probe(&assets);
    assert!(report.attach_kind("tp_btf").is_some_and(|f| f.available), "{report}");
    assert!(report.attach_kind("iter").is_some_and(|f| f.available), "{report}");
    // Programs and links live as long as a file descriptor holds them: none may remain.
    assert_eq!(bpf_program_and_link_fds(), before, "probe left BPF programs or links open");
}

/// An object whose CO-RE roots the relocation BTF was not built for (a `--bpf-dir` object
/// with other types) is relocated against the whole BTF, and loads. Here the relocation BTF
/// is built for the map iterator's object alone, and the conntracker's object (`nf_conn`,
/// `sk_buff`, ...) is loaded: against that BTF its relocations would find no candidate.
#[test]
fn an_object_the_relocation_btf_does_not_cover_is_relocated_against_the_whole_btf() {
    let raw = fs::read(btf::SYSFS_VMLINUX).expect("this kernel's BTF");
    let mut found = btf::discover(&BtfConfig::default()).expect("sysfs BTF");
    let maps_only = privileged_loader::objects::embedded("lockstat_maps").expect("embedded");
    found.relocation = Some(btf::RelocationBtf::build(&raw, [maps_only]).expect("relocation BTF"));
    let registry = Registry::default();
    let assets = AssetLoader::new(Ok(found), None, registry.clone());
    load_object(&assets, "conntrack").expect("the conntracker's object loads against the whole BTF");
    assert!(matches!(record(&registry, "conntrack").outcome, AssetOutcome::Loaded { .. }));
    // And the one it was built for still loads (against the relocation BTF).
    load_object(&assets, "lockstat_maps").expect("the map iterator's object loads");
}

/// Start-up's variant keeps the probe's tp_btf program attached — one link, nothing
/// else of the probe object (its maps would be found by the lock statistics' map walk) —
/// until it is dropped, then leaves nothing either.
#[test]
fn a_held_probe_keeps_only_its_tracepoint_link_until_dropped() {
    let _serial = PROGRAMS.lock().unwrap_or_else(|p| p.into_inner());
    let before = bpf_program_and_link_fds();
    let registry = Registry::default();
    let assets = sysfs_assets(&registry, None);
    let (report, held) = privileged_loader::probe::probe_holding(&assets);
    assert!(report.attach_kind("tp_btf").is_some_and(|f| f.available), "{report}");
    let during = bpf_program_and_link_fds();
    let added: Vec<_> = during.iter().filter(|fd| !before.contains(fd)).collect();
    assert_eq!(added.len(), 1, "one descriptor more while held, the link: {added:?}");
    assert!(added[0].contains("bpf_link"), "{added:?}");
    drop(held);
    assert_eq!(bpf_program_and_link_fds(), before, "the held link outlived its drop");
}

/// Tests that load BPF programs run one at a time, so that counting this process's
/// program and link descriptors is exact.
static PROGRAMS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// This process's open BPF program and link descriptors (`anon_inode:bpf-prog`, `bpf_link`).
fn bpf_program_and_link_fds() -> Vec<String> {
    let mut fds: Vec<String> = fs::read_dir("/proc/self/fd")
        .expect("procfs")
        .flatten()
        .filter_map(|entry| fs::read_link(entry.path()).ok())
        .map(|target| target.display().to_string())
        .filter(|target| target.contains("bpf-prog") || target.contains("bpf_link"))
        .collect();
    fds.sort();
    fds
}

#[test]
fn btf_is_found_in_a_btfhub_directory_when_sysfs_is_disabled() {
    let (hub, dir, host) = hub_layout();
    let plain = dir.join(format!("{}.btf", host.release));
    fs::copy(SYSFS_VMLINUX, &plain).expect("copy kernel BTF");
    let cfg = BtfConfig {
        no_sysfs: true,
        hub_dir: Some(hub.path().to_path_buf()),
        remote_config: false,
        ..BtfConfig::default()
    };

    let found = btf::discover(&cfg).expect("BTF in the hub directory");
    assert_eq!(found.source, BtfSource::Btfhub);
    assert_eq!(found.path, plain);

    let registry = Registry::default();
    let assets = AssetLoader::new(Ok(found), None, registry.clone());
    load_object(&assets, PROBE_ASSET).expect("probe object loads against BTFHub BTF");
    assert_eq!(
        record(&registry, PROBE_ASSET).outcome,
        AssetOutcome::Loaded { btf_source: Some(BtfSource::Btfhub) }
    );
}

#[test]
fn btf_is_extracted_from_a_btfhub_tarball() {
    let (hub, dir, host) = hub_layout();
    let member = format!("{}.btf", host.release);
    let staging = tempfile::tempdir().expect("temp dir");
    fs::copy(SYSFS_VMLINUX, staging.path().join(&member)).expect("copy kernel BTF");
    let tarball = dir.join(format!("{member}.tar.xz"));
    // Made by the real tar and xz, as BTFHub makes its archives.
    let status = Command::new("tar")
        .arg("-C")
        .arg(staging.path())
        .arg("-cJf")
        .arg(&tarball)
        .arg(&member)
        .env("XZ_OPT", "-0")
        .status()
        .expect("tar runs");
    assert!(status.success());
    let cfg = BtfConfig {
        no_sysfs: true,
        hub_dir: Some(hub.path().to_path_buf()),
        remote_config: false,
        ..BtfConfig::default()
    };

    let found = btf::discover(&cfg).expect("BTF in the hub tarball");
    assert_eq!(found.source, BtfSource::Btfhub);
    assert_eq!(found.path, tarball);
    let registry = Registry::default();
    let assets = AssetLoader::new(Ok(found), None, registry.clone());
    load_object(&assets, PROBE_ASSET).expect("probe object loads against BTF from the tarball");
}

#[test]
fn a_corrupt_hub_tarball_is_reported_not_fatal() {
    let (hub, dir, host) = hub_layout();
    fs::write(dir.join(format!("{}.btf.tar.xz", host.release)), b"not xz at all").expect("write");
    let cfg = BtfConfig {
        no_sysfs: true,
        hub_dir: Some(hub.path().to_path_buf()),
        remote_config: false,
        ..BtfConfig::default()
    };
    let Err(BtfError::NotFound { tried }) = btf::discover(&cfg) else {
        panic!("corrupt tarball must not be used")
    };
    assert!(tried.iter().any(|t| t.contains(".btf.tar.xz") && t.contains("archive")), "{tried:?}");
}

#[test]
fn without_btf_anywhere_discovery_says_where_it_looked_and_loads_record_btf_not_found() {
    let empty_hub = tempfile::tempdir().expect("temp dir");
    let missing_file = empty_hub.path().join("no-such.btf");
    let cfg = BtfConfig {
        file: Some(missing_file.clone()),
        no_sysfs: true,
        hub_dir: Some(empty_hub.path().into()),
        cache_dir: empty_hub.path().join("remote-btf"),
        ..BtfConfig::default()
    };

    let result = btf::discover(&cfg);
    let Err(BtfError::NotFound { tried }) = &result else { panic!("expected NotFound") };
    assert_eq!(tried.len(), 5, "user file, sysfs, hub .btf, hub .btf.tar.xz, remote config: {tried:?}");
    assert!(tried[4].starts_with("remote config: no BTF for"), "{tried:?}");
    assert!(tried[0].contains(&missing_file.display().to_string()), "{tried:?}");
    assert!(tried[1].contains("skipped"), "{tried:?}");

    let registry = Registry::default();
    let assets = AssetLoader::new(result, None, registry.clone());
    let err = load_object(&assets, PROBE_ASSET).expect_err("no BTF, no CO-RE load");
    assert!(matches!(err, AssetError::BtfNotFound(_)), "{err}");
    let rec = record(&registry, PROBE_ASSET);
    assert_eq!(rec.outcome, AssetOutcome::BtfNotFound);
    assert_eq!(rec.count, 1);
    assert!(rec.detail.contains("no-such.btf"), "{}", rec.detail);

    // The probe still answers, and says why the BTF kinds are "no".
    let _serial = PROGRAMS.lock().unwrap_or_else(|p| p.into_inner());
    let report = probe(&assets);
    assert!(!report.btf.found);
    assert!(
        report.attach_kind("tp_btf").is_some_and(|f| !f.available && f.reason.contains("BTF")),
        "{report}"
    );
    assert!(report.attach_kind("raw_tracepoint").is_some_and(|f| f.available), "{report}");
}

#[test]
fn a_user_btf_file_comes_first() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("vmlinux.btf");
    fs::copy(SYSFS_VMLINUX, &file).expect("copy kernel BTF");
    let found =
        btf::discover(&BtfConfig { file: Some(file.clone()), ..BtfConfig::default() }).expect("user BTF");
    assert_eq!(found.source, BtfSource::UserFile);
    assert_eq!(found.path, file);
}

#[test]
fn a_corrupt_or_missing_object_in_bpf_dir_is_a_read_error_not_a_panic() {
    let bpf_dir = tempfile::tempdir().expect("temp dir");
    let real = objects::embedded(PROBE_ASSET).expect("probe asset embedded");
    fs::write(bpf_dir.path().join("garbage.bpf.o"), b"this is not an ELF object").expect("write");
    fs::write(bpf_dir.path().join("truncated.bpf.o"), &real[..real.len().min(256)]).expect("write");
    let registry = Registry::default();
    let assets = sysfs_assets(&registry, Some(bpf_dir.path().to_path_buf()));

    for name in ["garbage", "truncated", "missing"] {
        let err = load_object(&assets, name).expect_err("a broken object must not load");
        let AssetError::Read { asset, path, .. } = &err else {
            panic!("{name}: expected a read error, got {err}")
        };
        assert_eq!(asset, name);
        assert_eq!(Path::new(path), bpf_dir.path().join(format!("{name}.bpf.o")), "{err}");
        let rec = record(&registry, name);
        assert_eq!(rec.outcome, AssetOutcome::AssetReadError, "{name}: {}", rec.detail);
        assert_eq!(rec.count, 1);
    }
}

#[test]
fn a_valid_object_in_bpf_dir_loads_with_its_btf_source() {
    let bpf_dir = tempfile::tempdir().expect("temp dir");
    let real = objects::embedded(PROBE_ASSET).expect("probe asset embedded");
    fs::write(bpf_dir.path().join("probe.bpf.o"), real).expect("write");
    let registry = Registry::default();
    let assets = sysfs_assets(&registry, Some(bpf_dir.path().to_path_buf()));
    let ebpf = load_object(&assets, PROBE_ASSET).expect("object from bpf_dir loads");
    assert!(ebpf.program("probe_tp_btf").is_some());
    let rec = record(&registry, PROBE_ASSET);
    assert_eq!(rec.outcome, AssetOutcome::Loaded { btf_source: Some(BtfSource::Sysfs) });
    assert!(!rec.load_time.is_zero());
    assert!(rec.detail.contains(SYSFS_VMLINUX), "the status names the BTF used: {}", rec.detail);
}

/// A program the verifier must reject: it dereferences a scalar (the raw tracepoint's
/// first argument) without bpf_probe_read.
const REJECTED_PROGRAM: &str = r#"
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
struct bpf_raw_tracepoint_args { __u64 args[0]; };
SEC("raw_tracepoint/net_dev_queue")
int rejected(struct bpf_raw_tracepoint_args *ctx)
{
	return *(int *)(long)ctx->args[0];
}
"#;

#[test]
fn a_verifier_rejection_is_recorded_with_the_log_tail() {
    let _serial = PROGRAMS.lock().unwrap_or_else(|p| p.into_inner());
    let bpf_dir = tempfile::tempdir().expect("temp dir");
    let source = bpf_dir.path().join("rejected.bpf.c");
    fs::write(&source, REJECTED_PROGRAM).expect("write");
    let status = Command::new(std::env::var("CLANG").unwrap_or_else(|_| "clang".into()))
        .args(["-g", "-O2", "-target", "bpf", "-idirafter", "/usr/include/x86_64-linux-gnu", "-c"])
        .arg(&source)
        .arg("-o")
        .arg(bpf_dir.path().join("rejected.bpf.o"))
        .status()
        .expect("clang runs");
    assert!(status.success());
    let registry = Registry::default();
    let assets = sysfs_assets(&registry, Some(bpf_dir.path().to_path_buf()));

    let err = assets
        .load_core_asset("rejected", |object, loader| {
            let mut ebpf = loader.load(object).map_err(|e| AssetError::from_ebpf("rejected", e))?;
            let program: &mut RawTracePoint =
                ebpf.program_mut("rejected").expect("program in object").try_into().expect("raw tracepoint");
            program.load().map_err(|e| AssetError::from_program_load("rejected", "rejected", e))?;
            Ok(())
        })
        .expect_err("the verifier rejects it");
    let AssetError::Verifier { program, log_tail, .. } = &err else {
        panic!("expected a verifier error: {err}")
    };
    assert_eq!(program, "rejected");
    assert!(log_tail.contains("invalid mem access"), "log tail: {log_tail}");
    let rec = record(&registry, "rejected");
    assert_eq!(rec.outcome, AssetOutcome::VerifierError);
    assert!(rec.detail.contains("invalid mem access"), "{}", rec.detail);
}

#[test]
fn a_constant_the_object_lacks_is_refused_by_name() {
    let registry = Registry::default();
    let assets = sysfs_assets(&registry, None);
    // Computed at run time: the loader keeps its own copy of every value.
    let enabled = u8::from(std::env::var_os("NO_SUCH_VAR").is_none());
    let err = assets
        .load_core_asset(PROBE_ASSET, |object, loader| {
            loader.global("no_such_constant", &[enabled]);
            loader.load(object).map_err(|e| AssetError::from_ebpf(PROBE_ASSET, e))
        })
        .expect_err("the probe object has no such constant");
    assert!(err.to_string().contains("no_such_constant"), "{err}");
    assert_eq!(record(&registry, PROBE_ASSET).outcome, AssetOutcome::AssetReadError);
}

/// Every object of one asset loader goes through one aya loader, so the kernel BTF is
/// parsed once, not once per object; and a setting made for one object never reaches
/// another (aya keeps every setting by name until the loader goes).
#[test]
fn one_aya_loader_serves_every_object_and_no_setting_reaches_another() {
    let registry = Registry::default();
    let assets = sysfs_assets(&registry, None);
    let conntrack = |entries: Option<u32>| {
        let mut ebpf = assets
            .load_core_asset(CONNTRACK_ASSET, |object, loader| {
                if let Some(entries) = entries {
                    loader.max_entries("conntrack", entries);
                }
                loader.load(object).map_err(|e| AssetError::from_ebpf(CONNTRACK_ASSET, e))
            })
            .expect("the conntrack object loads");
        match ebpf.take_map("conntrack").expect("its map") {
            Map::LruHashMap(map) | Map::HashMap(map) => map.info().expect("map info").max_entries(),
            other => panic!("unexpected map kind {other:?}"),
        }
    };
    let own = conntrack(None);
    assert_ne!(own, 2048);
    assert_eq!(conntrack(Some(4096)), 4096);
    assets
        .load_core_asset(PROBE_ASSET, |object, loader| {
            loader.load(object).map_err(|e| AssetError::from_ebpf(PROBE_ASSET, e))
        })
        .expect("the probe object loads");
    assert_eq!(conntrack(Some(2048)), 2048);
    assert_eq!(assets.aya_loaders_created(), 1, "four objects, one aya loader (one BTF parse)");

    assert_eq!(conntrack(None), own, "the object's own size, not the 2048 set for the load before");
    assert_eq!(assets.aya_loaders_created(), 2, "an object that would inherit a setting gets its own loader");
    assert_eq!(conntrack(Some(512)), 512, "and the shared one serves again after it");
    assert_eq!(assets.aya_loaders_created(), 2);
}

/// A Debian 6.1 kernel package unpacked with `dpkg -x` (linux-image-6.1.0-*-cloud-amd64-
/// unsigned): its `boot/vmlinuz-*` and `lib/modules/*` are used by the qemu test.
const GUEST_KERNEL_ROOT: &str = "PROBE_GUEST_KERNEL_ROOT";
/// Set inside the guest, to label the guest-side report.
const GUEST_LABEL: &str = "PROBE_GUEST_LABEL";
/// Modules the guest loads between its two probes, in dependency order.
const GUEST_CONNTRACK_MODULES: [&str; 6] = [
    "kernel/lib/libcrc32c.ko",
    "kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko",
    "kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko",
    "kernel/net/netfilter/nf_conntrack.ko",
    "kernel/net/netfilter/nfnetlink.ko",
    "kernel/net/netfilter/nf_conntrack_netlink.ko",
];

/// The guest half of the test below: prints the report as one JSON line.
#[test]
#[ignore = "runs inside the qemu guest of probe_on_a_kernel_with_kprobes_and_fentry_says_yes"]
fn guest_side_probe_report() {
    let Ok(label) = std::env::var(GUEST_LABEL) else {
        eprintln!("{GUEST_LABEL} unset: this is the guest half of a qemu test, nothing to do on the host");
        return;
    };
    let report = probe(&sysfs_assets(&Registry::default(), None));
    println!("PROBE-JSON-{label} {}", serde_json::to_string(&report).expect("report serializes"));
}

/// The same probe on another kernel, where kprobes and fentry exist: it must say "yes"
/// to both, because it tries rather than reading a table. Boots Debian's 6.1 kernel
/// under qemu (TCG) with this test binary as the payload, probes, loads the conntrack
/// modules, probes again.
#[test]
#[ignore = "needs qemu-system-x86 and a Debian 6.1 kernel unpacked at $PROBE_GUEST_KERNEL_ROOT (docs/bpf.md)"]
fn probe_on_a_kernel_with_kprobes_and_fentry_says_yes() {
    let root = PathBuf::from(std::env::var(GUEST_KERNEL_ROOT).expect("PROBE_GUEST_KERNEL_ROOT is set"));
    let vmlinuz = fs::read_dir(root.join("boot"))
        .expect("boot/ in the kernel root")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .expect("a vmlinuz in boot/");
    let modules = fs::read_dir(root.join("lib/modules"))
        .expect("lib/modules in the kernel root")
        .flatten()
        .next()
        .expect("one module tree")
        .path();
    let work = tempfile::tempdir().expect("temp dir");
    let initrd = build_guest_initramfs(work.path(), &modules);

    let output = Command::new("timeout")
        .args([
            "--kill-after=5",
            "120",
            "qemu-system-x86_64",
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-cpu",
            "max",
        ])
        .args(["-m", "1024", "-smp", "1", "-nographic", "-no-reboot", "-kernel"])
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .output()
        .expect("qemu-system-x86_64 runs");
    let console = String::from_utf8_lossy(&output.stdout);
    let report = |label: &str| -> serde_json::Value {
        let prefix = format!("PROBE-JSON-{label} ");
        let line = console
            .lines()
            .find_map(|l| l.find(&prefix).map(|at| &l[at + prefix.len()..]))
            .unwrap_or_else(|| panic!("no {label} report on the guest console:\n{console}"));
        serde_json::from_str(line).expect("guest report is JSON")
    };
    let available = |report: &serde_json::Value, kind: &str| -> bool {
        report["attach_kinds"]
            .as_array()
            .expect("attach kinds")
            .iter()
            .find(|k| k["name"] == kind)
            .and_then(|k| k["available"].as_bool())
            .unwrap_or_else(|| panic!("{kind} not in {report}"))
    };

    let before = report("before");
    assert!(before["release"].as_str().is_some_and(|r| r.starts_with("6.1.")), "{before}");
    for kind in ["fentry", "kprobe", "tp_btf", "raw_tracepoint", "iter"] {
        assert!(available(&before, kind), "{kind} must work on Debian 6.1: {before}");
    }
    assert_eq!(before["lock_contention_tracepoints"]["available"], true, "{before}");
    assert_eq!(before["conntrack"]["available"], false, "nf_conntrack is a module, not loaded yet: {before}");
    assert!(
        before["conntrack"]["reason"].as_str().is_some_and(|r| r.contains("nf_conntrack not loaded")),
        "{before}"
    );
    let after = report("after");
    assert_eq!(after["conntrack"]["available"], true, "{after}");
}

/// busybox, this test binary and the libraries it links, the conntrack modules, and an
/// /init that probes, loads the modules, probes again and powers off.
fn build_guest_initramfs(work: &Path, modules: &Path) -> PathBuf {
    let tree = work.join("initramfs");
    for dir in ["bin", "proc", "sys", "dev", "tmp", "modules"] {
        fs::create_dir_all(tree.join(dir)).expect("mkdir");
    }
    fs::copy("/bin/busybox", tree.join("bin/busybox")).expect("busybox-static is installed");
    let me = std::env::current_exe().expect("test binary path");
    fs::copy(&me, tree.join("probe-tests")).expect("copy test binary");
    let ldd = Command::new("ldd").arg(&me).output().expect("ldd runs");
    for lib in String::from_utf8_lossy(&ldd.stdout).split_whitespace().filter(|t| t.starts_with('/')) {
        let target = tree.join(lib.trim_start_matches('/'));
        fs::create_dir_all(target.parent().expect("library dir")).expect("mkdir");
        fs::copy(lib, &target).expect("copy library");
    }
    let mut insmods = String::new();
    for (i, module) in GUEST_CONNTRACK_MODULES.iter().enumerate() {
        fs::copy(modules.join(module), tree.join(format!("modules/{i}.ko"))).expect("copy module");
        insmods.push_str(&format!("insmod /modules/{i}.ko\n"));
    }
    let run = |label: &str| {
        format!(
            "{GUEST_LABEL}={label} /probe-tests --exact guest_side_probe_report --ignored --nocapture --test-threads=1\n"
        )
    };
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nmount -t proc proc /proc\nmount -t sysfs sysfs /sys\n\
         mount -t devtmpfs dev /dev\n{}{insmods}{}poweroff -f\n",
        run("before"),
        run("after")
    );
    fs::write(tree.join("init"), init).expect("write init");
    let status = Command::new("chmod").arg("+x").arg(tree.join("init")).status().expect("chmod");
    assert!(status.success());
    let initrd = work.join("initrd.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet | gzip -1 > \"$0\"")
        .arg(&initrd)
        .current_dir(&tree)
        .status()
        .expect("cpio and gzip run");
    assert!(status.success(), "building the initramfs failed");
    initrd
}
