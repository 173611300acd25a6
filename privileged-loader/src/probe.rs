//! The kernel support check: what this kernel lets the loader do, decided by trying.
//!
//! Version tables lie both ways: distributions backport features to old kernels, and a
//! new kernel can block one (ftrace locked down makes fentry EPERM). So each attach kind
//! is probed by loading and attaching a tiny program of the `probe` asset
//! (`bpf/probe.bpf.c`); every "no" carries the reason the kernel gave. A program that
//! attached is unloaded at once, and the whole object is dropped before `probe` returns:
//! nothing stays attached.
use std::fmt;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::Instant;

use aya::programs::tp_btf::BtfTracePointLink;
use aya::programs::{BtfTracePoint, FEntry, Iter, KProbe, Program, ProgramError, RawTracePoint};
use aya::{Btf, Ebpf};
use aya_obj::btf::BtfKind;
use serde::Serialize;

use crate::asset::{AssetError, AssetLoader, ObjectLoader, error_chain};
use crate::status::BtfSource;

/// The probe's asset name (`bpf/probe.bpf.c`).
pub const PROBE_ASSET: &str = "probe";
/// Function the fentry and kprobe probes hook: present in every kernel, BTF and kallsyms.
const PROBE_FUNCTION: &str = "vfs_read";
/// Tracepoint of the tp_btf and raw tracepoint probes: the CO-RE conntracker's fallback.
const PROBE_TRACEPOINT: &str = "net_dev_queue";
/// Where the kernel exposes its kprobe PMU when kprobe events are built in.
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";
/// Per-netns conntrack sysctl: present once nf_conntrack is loaded.
const CONNTRACK_COUNT: &str = "/proc/sys/net/netfilter/nf_conntrack_count";

/// One capability, and why it is or is not there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Feature {
    pub name: String,
    pub available: bool,
    pub reason: String,
}

impl Feature {
    pub fn yes(name: &str, reason: impl Into<String>) -> Self {
        Self { name: name.into(), available: true, reason: reason.into() }
    }
    pub fn no(name: &str, reason: impl Into<String>) -> Self {
        Self { name: name.into(), available: false, reason: reason.into() }
    }
    fn from_trial(name: &str, trial: Result<String, String>) -> Self {
        match trial {
            Ok(reason) => Self::yes(name, reason),
            Err(reason) => Self::no(name, reason),
        }
    }
}

/// Which BTF the loader found, or why none.
#[derive(Clone, Debug, Serialize)]
pub struct BtfReport {
    pub found: bool,
    pub source: Option<BtfSource>,
    pub path: String,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct KernelReport {
    pub release: String,
    pub arch: String,
    pub btf: BtfReport,
    /// `fentry`, `kprobe`, `tp_btf`, `raw_tracepoint`, `iter`, in that order: by trying.
    pub attach_kinds: Vec<Feature>,
    pub conntrack: Feature,
    pub lock_contention_tracepoints: Feature,
    /// How long the whole probe took, in microseconds.
    pub took_us: u64,
}

impl KernelReport {
    /// The attach kind named `name`, if probed.
    pub fn attach_kind(&self, name: &str) -> Option<&Feature> {
        self.attach_kinds.iter().find(|f| f.name == name)
    }
}

/// Probes this kernel with the `probe` asset; never fails: what cannot be checked is a
/// "no" with its reason. The asset load is recorded in the registry like any other.
/// Nothing of it stays loaded or attached.
pub fn probe(assets: &AssetLoader) -> KernelReport {
    probe_holding(assets).0
}

/// The probe's `tp_btf` program, still attached to `net_dev_queue`.
///
/// A tracepoint's last user leaving makes the next first user of *any* tracepoint wait
/// for an RCU grace period (the kernel's 1→0→1 transition guard, `tracepoint.c`): the
/// probe detaching right before the conntracker attaches cost start-up 5–9 ms. So
/// start-up keeps this until its own attaches are done, then drops it (off the main
/// thread: the drop is what waits).
///
/// Only the link is kept: the object (its `.rodata` map, its other programs) is gone when
/// [`probe_holding`] returns, so the lock statistics' map walk never finds it.
pub struct Held {
    /// Detaches the program when dropped.
    _link: Option<BtfTracePointLink>,
}

/// [`probe`], with the probe's tracepoint left attached until [`Held`] is dropped.
pub fn probe_holding(assets: &AssetLoader) -> (KernelReport, Held) {
    let started = Instant::now();
    let btf = assets.btf().ok().map(|found| &found.btf);
    let (attach_kinds, lock_contention_tracepoints, held) = match load_probe_object(assets) {
        Ok(mut ebpf) => {
            // The tp_btf program stays attached while the raw tracepoint one attaches to
            // the same tracepoint: enabling a tracepoint from nothing patches kernel text
            // (10-20 ms here), re-enabling it right after its last user left also waits
            // for an RCU grace period; adding a second user costs neither.
            let (tp_btf, held) = probe_tp_btf(&mut ebpf, btf);
            let raw_tracepoint = probe_raw_tracepoint(&mut ebpf);
            let lock = probe_lock_contention(btf, &tp_btf);
            let kinds = vec![
                probe_fentry(&mut ebpf, btf),
                probe_kprobe(&mut ebpf, btf),
                tp_btf,
                raw_tracepoint,
                probe_iter(&mut ebpf, btf),
            ];
            (kinds, lock, held)
        }
        Err(e) => {
            let reason = format!("probe object not loaded: {e}");
            let kinds = ["fentry", "kprobe", "tp_btf", "raw_tracepoint", "iter"];
            let lock = Feature::no("lock_contention_tracepoints", reason.clone());
            (kinds.iter().map(|k| Feature::no(k, reason.clone())).collect(), lock, None)
        }
    };
    let report = KernelReport {
        release: crate::btf::kernel_release().unwrap_or_else(|e| format!("unknown ({e})")),
        arch: std::env::consts::ARCH.to_string(),
        btf: btf_report(assets),
        attach_kinds,
        conntrack: probe_conntrack(),
        lock_contention_tracepoints,
        took_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
    };
    (report, Held { _link: held })
}

/// With BTF, a regular CO-RE asset load. Without, the object is still loaded without
/// relocations so the BTF-free kinds (kprobe, raw tracepoint) can be tried. Either way
/// the load's outcome is recorded.
fn load_probe_object(assets: &AssetLoader) -> Result<Ebpf, AssetError> {
    let load = |object: &[u8], loader: &mut ObjectLoader<'_, '_>| {
        loader.load(object).map_err(|e| AssetError::from_ebpf(PROBE_ASSET, e))
    };
    if assets.btf().is_ok() {
        assets.load_core_asset(PROBE_ASSET, load)
    } else {
        assets.load_btf_free_asset(PROBE_ASSET, load)
    }
}

fn btf_report(assets: &AssetLoader) -> BtfReport {
    match assets.btf() {
        Ok(found) => BtfReport {
            found: true,
            source: Some(found.source),
            path: found.path.display().to_string(),
            reason: String::new(),
        },
        Err(e) => BtfReport { found: false, source: None, path: String::new(), reason: e.to_string() },
    }
}

const NEEDS_BTF: &str = "needs kernel BTF, none found";

fn program<'e, P>(ebpf: &'e mut Ebpf, name: &str) -> Result<&'e mut P, String>
where
    &'e mut P: TryFrom<&'e mut Program, Error = ProgramError>,
{
    crate::asset::program_mut(ebpf, PROBE_ASSET, name).map_err(|e| e.to_string())
}

/// Unloading detaches every link of the program; a failure here is logged, not fatal:
/// the object is dropped before `probe` returns, which closes the links anyway.
fn unload(name: &str, result: Result<(), ProgramError>) {
    if let Err(e) = result {
        tracing::warn!(program = name, error = %error_chain(&e), "unloading a probe program failed");
    }
}

/// Detaches the tp_btf probe, left attached for the raw tracepoint probe's sake.
fn probe_fentry(ebpf: &mut Ebpf, btf: Option<&Btf>) -> Feature {
    let trial = btf.ok_or_else(|| NEEDS_BTF.to_string()).and_then(|btf| {
        let p: &mut FEntry = program(ebpf, "probe_fentry")?;
        p.load(PROBE_FUNCTION, btf).map_err(|e| rejection(Step::Load, &e))?;
        p.attach().map_err(|e| rejection(Step::Attach, &e))?;
        unload("probe_fentry", p.unload());
        Ok(format!("loaded and attached to fentry/{PROBE_FUNCTION}"))
    });
    Feature::from_trial("fentry", trial)
}

fn probe_kprobe(ebpf: &mut Ebpf, btf: Option<&Btf>) -> Feature {
    let trial = (|| {
        let p: &mut KProbe = program(ebpf, "probe_kprobe")?;
        p.load().map_err(|e| rejection(Step::Load, &e))?;
        if let Err(e) = p.attach(PROBE_FUNCTION, 0) {
            return Err(kprobe_reason(btf, &e));
        }
        unload("probe_kprobe", p.unload());
        Ok(format!("loaded and attached to kprobe/{PROBE_FUNCTION}"))
    })();
    Feature::from_trial("kprobe", trial)
}

/// Why a kprobe attach failed: the kernel's own tell-tales first (its BTF knows
/// `register_kprobe` only with CONFIG_KPROBES; the kprobe PMU needs kprobe events), then
/// the raw error.
fn kprobe_reason(btf: Option<&Btf>, err: &ProgramError) -> String {
    let has_kprobes = btf.map(|btf| btf.id_by_type_name_kind("register_kprobe", BtfKind::Func).is_ok());
    let has_pmu = Path::new(KPROBE_PMU).exists();
    kprobe_explanation(has_kprobes, has_pmu, &rejection(Step::Attach, err))
}

/// Pure part of [`kprobe_reason`]: `has_kprobes` is None when there is no BTF to ask.
pub fn kprobe_explanation(has_kprobes: Option<bool>, has_pmu: bool, attach_error: &str) -> String {
    match (has_kprobes, has_pmu) {
        (Some(false), _) => {
            format!("CONFIG_KPROBES not set (kernel BTF has no register_kprobe; {attach_error})")
        }
        (None, false) => format!("CONFIG_KPROBES not set (no kprobe PMU at {KPROBE_PMU}; {attach_error})"),
        (Some(true), false) => {
            format!("CONFIG_KPROBE_EVENTS not set (no kprobe PMU at {KPROBE_PMU}; {attach_error})")
        }
        (_, true) => attach_error.to_string(),
    }
}

/// Leaves the program attached, by a link of its own that outlives the object ([`Held`]):
/// the raw tracepoint probe then adds a second user to the tracepoint, which neither
/// patches kernel text nor waits for a grace period the way enabling it from nothing, or
/// right after its last user left, does.
fn probe_tp_btf(ebpf: &mut Ebpf, btf: Option<&Btf>) -> (Feature, Option<BtfTracePointLink>) {
    let mut link = None;
    let trial = btf.ok_or_else(|| NEEDS_BTF.to_string()).and_then(|btf| {
        let p: &mut BtfTracePoint = program(ebpf, "probe_tp_btf")?;
        p.load(PROBE_TRACEPOINT, btf).map_err(|e| rejection(Step::Load, &e))?;
        let id = p.attach().map_err(|e| rejection(Step::Attach, &e))?;
        link = Some(p.take_link(id).map_err(|e| rejection(Step::Attach, &e))?);
        Ok(format!("loaded and attached to tp_btf/{PROBE_TRACEPOINT}"))
    });
    (Feature::from_trial("tp_btf", trial), link)
}

fn probe_raw_tracepoint(ebpf: &mut Ebpf) -> Feature {
    let trial = (|| {
        let p: &mut RawTracePoint = program(ebpf, "probe_raw_tracepoint")?;
        p.load().map_err(|e| rejection(Step::Load, &e))?;
        p.attach(PROBE_TRACEPOINT).map_err(|e| rejection(Step::Attach, &e))?;
        unload("probe_raw_tracepoint", p.unload());
        Ok(format!("loaded and attached to raw_tracepoint/{PROBE_TRACEPOINT}"))
    })();
    Feature::from_trial("raw_tracepoint", trial)
}

/// An iterator only counts if it can be created *and read*: the read runs the program.
fn probe_iter(ebpf: &mut Ebpf, btf: Option<&Btf>) -> Feature {
    let trial = btf.ok_or_else(|| NEEDS_BTF.to_string()).and_then(|btf| {
        let p: &mut Iter = program(ebpf, "probe_iter")?;
        p.load("bpf_map", btf).map_err(|e| rejection(Step::Load, &e))?;
        let link_id = p.attach().map_err(|e| rejection(Step::Attach, &e))?;
        let link = p.take_link(link_id).map_err(|e| rejection(Step::Attach, &e))?;
        let mut output = String::new();
        let read = link
            .into_file()
            .map_err(|e| format!("creating the iterator failed: {}", error_chain(&e)))
            .and_then(|file| {
                file.take(1 << 20)
                    .read_to_string(&mut output)
                    .map_err(|e| format!("reading the iterator failed: {e}"))
            });
        unload("probe_iter", p.unload());
        read?;
        Ok(format!("iter/bpf_map created and read ({} maps listed)", output.lines().count()))
    });
    Feature::from_trial("iter", trial)
}

/// `lock:contention_begin/end` exist when the kernel BTF has their `btf_trace_*`
/// typedefs (what a tp_btf attach resolves), and are usable when tp_btf attaches here.
/// They are not attached by the probe itself: enabling these tracepoints patches every
/// lock slow path (7-20 ms each here), a cost the lock-statistics collector pays once.
fn probe_lock_contention(btf: Option<&Btf>, tp_btf: &Feature) -> Feature {
    let has = |name: &str| btf.map(|btf| btf.id_by_type_name_kind(name, BtfKind::Typedef).is_ok());
    lock_contention_verdict(has("btf_trace_contention_begin"), has("btf_trace_contention_end"), tp_btf)
}

/// Pure part of [`probe_lock_contention`]: `None` when there is no BTF to ask.
pub fn lock_contention_verdict(begin: Option<bool>, end: Option<bool>, tp_btf: &Feature) -> Feature {
    const NAME: &str = "lock_contention_tracepoints";
    match (begin, end) {
        (None, _) | (_, None) => Feature::no(NAME, NEEDS_BTF),
        (Some(false), _) => {
            Feature::no(NAME, "kernel has no lock:contention_begin tracepoint (not in its BTF)")
        }
        (_, Some(false)) => {
            Feature::no(NAME, "kernel has no lock:contention_end tracepoint (not in its BTF)")
        }
        (Some(true), Some(true)) if !tp_btf.available => Feature::no(
            NAME,
            format!("lock:contention_begin/end exist but tp_btf does not attach here: {}", tp_btf.reason),
        ),
        (Some(true), Some(true)) => {
            Feature::yes(NAME, "lock:contention_begin/end in kernel BTF; tp_btf attaches")
        }
    }
}

/// Conntrack is usable when nf_conntrack is loaded (its per-netns sysctls exist) and
/// ctnetlink answers a request: the conntracker's initial dump and destroy events need it.
fn probe_conntrack() -> Feature {
    let entries = match fs::read_to_string(CONNTRACK_COUNT) {
        Ok(count) => count.trim().to_string(),
        Err(e) => {
            return Feature::no(
                "conntrack",
                format!("nf_conntrack not loaded ({CONNTRACK_COUNT}: {e}); modprobe nf_conntrack"),
            );
        }
    };
    // A kernel that never answers must not stall the probe.
    match crate::conntrack::ctnetlink::ask_stats(std::time::Duration::from_millis(200)) {
        Ok(()) => Feature::yes(
            "conntrack",
            format!("nf_conntrack loaded ({entries} entries here), ctnetlink answers"),
        ),
        Err(reason) => Feature::no(
            "conntrack",
            format!("ctnetlink unreachable: {reason}; modprobe nf_conntrack_netlink"),
        ),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Load,
    Attach,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Load => "load",
            Step::Attach => "attach",
        })
    }
}

/// A short reason for a program the kernel refused: `EPERM on load`, then details.
fn rejection(step: Step, err: &ProgramError) -> String {
    match err {
        ProgramError::LoadError { io_error, verifier_log } => {
            let last =
                verifier_log.to_string().lines().rev().find(|l| !l.trim().is_empty()).map(str::to_string);
            errno_reason(step, io_error, last.as_deref())
        }
        ProgramError::SyscallError(e) => errno_reason(step, &e.io_error, Some(e.call)),
        ProgramError::Btf(e) => format!("{step} failed: kernel BTF lacks what it needs ({e})"),
        other => format!("{step} failed: {}", error_chain(other)),
    }
}

fn errno_reason(step: Step, io_error: &std::io::Error, detail: Option<&str>) -> String {
    let head = match io_error.raw_os_error() {
        Some(errno) => format!("{} on {step}", errno_name(errno)),
        None => format!("{step} failed: {io_error}"),
    };
    match detail {
        Some(detail) if !detail.is_empty() => format!("{head} ({detail})"),
        _ => head,
    }
}

/// The symbolic name of the errnos the BPF syscalls return, as kernel people say them.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EINVAL => "EINVAL",
        libc::E2BIG => "E2BIG",
        libc::ENOSPC => "ENOSPC",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EFAULT => "EFAULT",
        524 => "ENOTSUPP",
        other => return format!("errno {other}"),
    };
    name.to_string()
}

impl fmt::Display for KernelReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel   {} ({})", self.release, self.arch)?;
        match (&self.btf.found, self.btf.source) {
            (true, Some(source)) => writeln!(f, "BTF      {} ({})", source.as_str(), self.btf.path)?,
            _ => writeln!(f, "BTF      not found: {}", self.btf.reason)?,
        }
        writeln!(f, "attach kinds (tried, not looked up):")?;
        for feature in &self.attach_kinds {
            write_feature(f, feature)?;
        }
        writeln!(f, "features:")?;
        write_feature(f, &self.conntrack)?;
        write_feature(f, &self.lock_contention_tracepoints)?;
        write!(f, "probe took {:.1} ms", self.took_us as f64 / 1000.0)
    }
}

fn write_feature(f: &mut fmt::Formatter<'_>, feature: &Feature) -> fmt::Result {
    let verdict = if feature.available { "yes" } else { "no " };
    writeln!(f, "  {:<28} {verdict}  {}", feature.name, feature.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eperm_on_load_is_said_plainly() {
        let err = ProgramError::LoadError {
            io_error: std::io::Error::from_raw_os_error(libc::EPERM),
            verifier_log: aya_obj::VerifierLog::new(String::new()),
        };
        assert_eq!(rejection(Step::Load, &err), "EPERM on load");
    }

    #[test]
    fn load_rejection_names_the_verifiers_last_line() {
        let err = ProgramError::LoadError {
            io_error: std::io::Error::from_raw_os_error(libc::EINVAL),
            verifier_log: aya_obj::VerifierLog::new("0: r0 = 0\nR0 !read_ok\n\n".into()),
        };
        assert_eq!(rejection(Step::Load, &err), "EINVAL on load (R0 !read_ok)");
    }

    #[test]
    fn kprobe_without_config_kprobes_says_so() {
        let reason = kprobe_explanation(Some(false), false, "ENOENT on attach");
        assert!(reason.starts_with("CONFIG_KPROBES not set"), "{reason}");
        let reason = kprobe_explanation(None, false, "ENOENT on attach");
        assert!(reason.starts_with("CONFIG_KPROBES not set"), "{reason}");
    }

    #[test]
    fn kprobe_with_kprobes_but_no_pmu_blames_kprobe_events() {
        let reason = kprobe_explanation(Some(true), false, "x");
        assert!(reason.starts_with("CONFIG_KPROBE_EVENTS not set"), "{reason}");
    }

    #[test]
    fn kprobe_failure_with_everything_built_in_is_the_raw_error() {
        assert_eq!(kprobe_explanation(Some(true), true, "EBUSY on attach"), "EBUSY on attach");
    }

    #[test]
    fn lock_contention_needs_both_tracepoints_and_tp_btf() {
        let works = Feature::yes("tp_btf", "attached");
        let broken = Feature::no("tp_btf", "EPERM on attach");
        assert!(lock_contention_verdict(Some(true), Some(true), &works).available);
        let no_end = lock_contention_verdict(Some(true), Some(false), &works);
        assert!(!no_end.available && no_end.reason.contains("contention_end"), "{no_end:?}");
        let blocked = lock_contention_verdict(Some(true), Some(true), &broken);
        assert!(!blocked.available && blocked.reason.contains("EPERM on attach"), "{blocked:?}");
        assert_eq!(lock_contention_verdict(None, None, &works).reason, NEEDS_BTF);
    }

    #[test]
    fn errnos_have_their_names() {
        assert_eq!(errno_name(libc::EPERM), "EPERM");
        assert_eq!(errno_name(524), "ENOTSUPP");
        assert_eq!(errno_name(9999), "errno 9999");
    }

    #[test]
    fn human_report_shows_every_no_with_its_reason() {
        let report = KernelReport {
            release: "6.18.0".into(),
            arch: "x86_64".into(),
            btf: BtfReport {
                found: true,
                source: Some(BtfSource::Sysfs),
                path: "/sys/kernel/btf/vmlinux".into(),
                reason: String::new(),
            },
            attach_kinds: vec![Feature::no("fentry", "EPERM on load"), Feature::yes("tp_btf", "attached")],
            conntrack: Feature::yes("conntrack", "ok"),
            lock_contention_tracepoints: Feature::no("lock_contention_tracepoints", "missing"),
            took_us: 12_345,
        };
        let text = report.to_string();
        assert!(text.contains("fentry") && text.contains("no   EPERM on load"), "{text}");
        assert!(text.contains("BTF      sysfs (/sys/kernel/btf/vmlinux)"), "{text}");
        assert!(text.ends_with("probe took 12.3 ms"), "{text}");
    }
}
