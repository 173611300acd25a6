//! The CO-RE asset loader: find BTF, read the object, hand both to the module that owns
//! the asset, and record how it ended.
//!
//! This is the original system's `LoadCOREAsset(name, callback)`: the callback receives
//! the object bytes and an [`ObjectLoader`] whose BTF is already set, sets its constants,
//! loads and attaches. Every object loads through one aya loader (`session.rs`), so the
//! kernel BTF is parsed once per asset loader, not once per object. Every call records exactly one [`AssetOutcome`] in the status
//! [`Registry`], with the time it took, whatever happened — so `GetStatus` shows, per
//! asset, whether it loaded (and against which BTF), or why not.
use std::borrow::Cow;
use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use aya::Ebpf;
use aya::programs::{Program, ProgramError};

use crate::btf::{BtfError, FoundBtf};
use crate::status::{AssetOutcome, Registry};

mod session;
pub use session::{ObjectLoader, construct_ahead, settle_constructed_ahead};

/// How many verifier log lines an error keeps: the verdict is at the end of the log.
const VERIFIER_TAIL_LINES: usize = 20;
/// And at most this many bytes of them, so one bad program cannot flood the status.
const VERIFIER_TAIL_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// No kernel BTF: CO-RE relocations cannot be resolved.
    #[error("kernel BTF not found: {0}")]
    BtfNotFound(String),
    /// The object is missing, unreadable or not a valid eBPF ELF object.
    #[error("reading eBPF asset {asset} from {path}: {reason}; rebuild it or fix --bpf-dir")]
    Read { asset: String, path: String, reason: String },
    /// The kernel (verifier) or the CO-RE relocation rejected a program or map.
    #[error("eBPF asset {asset}: program {program} rejected at load: {log_tail}")]
    Verifier { asset: String, program: String, log_tail: String },
    /// The program loaded but could not be attached to its hook.
    #[error("eBPF asset {asset}: attaching program {program} failed: {reason}")]
    Attach { asset: String, program: String, reason: String },
    /// The object has no program of that name and kind: built for another loader.
    #[error("eBPF asset {asset}: program {program} {reason}; rebuild the eBPF objects with this loader")]
    Program { asset: String, program: String, reason: String },
}

impl AssetError {
    /// The status outcome this error is counted as.
    pub fn outcome(&self) -> AssetOutcome {
        match self {
            AssetError::BtfNotFound(_) => AssetOutcome::BtfNotFound,
            AssetError::Read { .. } | AssetError::Program { .. } => AssetOutcome::AssetReadError,
            AssetError::Verifier { .. } => AssetOutcome::VerifierError,
            AssetError::Attach { .. } => AssetOutcome::AttachError,
        }
    }

    /// Classifies an error of [`ObjectLoader::load`]: a broken object (ELF, its BTF) is a
    /// read error; relocation, BTF upload, map creation or program rejection by the
    /// kernel is a verifier error. The path of a read error is filled in by
    /// [`AssetLoader::load_core_asset`], which knows where the object came from.
    pub fn from_ebpf(asset: &str, err: aya::EbpfError) -> Self {
        use aya::EbpfError as E;
        let read = |reason: String| AssetError::Read { asset: asset.into(), path: String::new(), reason };
        let verifier = |program: &str, log_tail: String| AssetError::Verifier {
            asset: asset.into(),
            program: program.into(),
            log_tail,
        };
        match err {
            E::ProgramError(e) => Self::from_program_load(asset, "(at object load)", e),
            E::BtfError(aya::BtfError::LoadError { io_error, verifier_log }) => {
                verifier("(object BTF)", format_rejection(&io_error, &verifier_log.to_string()))
            }
            E::BtfRelocationError(ref e) => verifier(&e.section, error_chain(&err)),
            E::RelocationError(_) => verifier("(relocation)", error_chain(&err)),
            E::MapError(_) => verifier("(maps)", error_chain(&err)),
            E::FileError { .. }
            | E::ParseError(_)
            | E::BtfError(_)
            | E::NoBTF
            | E::UnexpectedPinningType { .. } => read(error_chain(&err)),
        }
    }

    /// Classifies an error of a program's `load()`: the verifier log's tail is kept.
    pub fn from_program_load(asset: &str, program: &str, err: ProgramError) -> Self {
        let log_tail = match &err {
            ProgramError::LoadError { io_error, verifier_log } => {
                format_rejection(io_error, &verifier_log.to_string())
            }
            other => error_chain(other),
        };
        AssetError::Verifier { asset: asset.into(), program: program.into(), log_tail }
    }

    /// An error of a program's `attach()`.
    pub fn from_program_attach(asset: &str, program: &str, err: ProgramError) -> Self {
        AssetError::Attach { asset: asset.into(), program: program.into(), reason: error_chain(&err) }
    }

    /// The text recorded in the status: for verifier errors, the log tail.
    fn detail(&self) -> String {
        match self {
            AssetError::Verifier { program, log_tail, .. } => format!("program {program}: {log_tail}"),
            other => other.to_string(),
        }
    }
}

/// The program `name` of a loaded object of `asset`, as the kind `P` its caller loads and
/// attaches. Every module looks its programs up here, so a missing program or one of
/// another kind is always the same error, counted as an asset read error.
pub fn program_mut<'e, P>(ebpf: &'e mut Ebpf, asset: &str, name: &str) -> Result<&'e mut P, AssetError>
where
    &'e mut P: TryFrom<&'e mut Program, Error = ProgramError>,
{
    let error = |reason: String| AssetError::Program { asset: asset.into(), program: name.into(), reason };
    let program = ebpf.program_mut(name).ok_or_else(|| error("is not in the object".into()))?;
    program.try_into().map_err(|e: ProgramError| error(format!("is not of the expected kind ({e})")))
}

/// An error and all its sources, `a: b: c`, so nothing useful is lost in the status.
pub fn error_chain(err: &dyn StdError) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

/// `<errno text>` followed by the last lines of the verifier log, if there is one.
fn format_rejection(io_error: &std::io::Error, verifier_log: &str) -> String {
    let tail = verifier_log_tail(verifier_log);
    if tail.is_empty() { io_error.to_string() } else { format!("{io_error}; verifier log tail:\n{tail}") }
}

/// The last [`VERIFIER_TAIL_LINES`] non-empty lines of a verifier log, at most
/// [`VERIFIER_TAIL_BYTES`] bytes (cut at a line start, never inside a character).
pub fn verifier_log_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
    let start = lines.len().saturating_sub(VERIFIER_TAIL_LINES);
    let mut tail = lines[start..].join("\n");
    while tail.len() > VERIFIER_TAIL_BYTES {
        match tail.find('\n') {
            Some(newline) => tail.drain(..=newline),
            None => {
                let mut cut = tail.len() - VERIFIER_TAIL_BYTES;
                while !tail.is_char_boundary(cut) {
                    cut += 1;
                }
                tail.drain(..cut)
            }
        };
    }
    tail
}

/// What `object` is relocated against: the relocation BTF when it answers every
/// relocation of the object as the full BTF would (`btf/relocation.rs`), else the full BTF.
fn relocation_target<'b>(found: &'b FoundBtf, asset: &str, object: &[u8]) -> &'b aya::Btf {
    match &found.relocation {
        Some(relocation) => match relocation.covers(object) {
            Ok(()) => &relocation.btf,
            Err(why) => {
                tracing::info!(asset, %why, "relocating against the full kernel BTF");
                &found.btf
            }
        },
        None => &found.btf,
    }
}

/// Loads CO-RE assets against one BTF discovery result, from `bpf_dir` or the binary.
pub struct AssetLoader {
    kernel: session::Kernel,
    bpf_dir: Option<PathBuf>,
    registry: Registry,
    /// aya loaders created so far: each one parsed the kernel's BTF.
    aya_loaders: AtomicUsize,
}

impl AssetLoader {
    /// `btf` is the result of [`crate::btf::discover`], kept as is: a missing BTF is not
    /// fatal here, it is recorded as the outcome of every CO-RE load that needs it.
    pub fn new(btf: Result<FoundBtf, BtfError>, bpf_dir: Option<PathBuf>, registry: Registry) -> Self {
        Self { kernel: session::Kernel::with_btf(btf), bpf_dir, registry, aya_loaders: AtomicUsize::new(0) }
    }

    /// The same loader, with `btf` in place of what discovery found: a remote BTF
    /// adopted while the loader runs.
    pub fn with_btf(&self, btf: FoundBtf) -> Self {
        Self::new(Ok(btf), self.bpf_dir.clone(), self.registry.clone())
    }

    pub fn btf(&self) -> Result<&FoundBtf, &BtfError> {
        self.kernel.borrow_owner().as_ref()
    }

    /// How many aya loaders this asset loader created: each parsed the kernel's BTF
    /// (one for all its objects, plus one per object that could not share it).
    pub fn aya_loaders_created(&self) -> usize {
        self.aya_loaders.load(Ordering::Relaxed)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Where asset `name` is read from: `<bpf_dir>/<name>.bpf.o`, or the binary.
    pub fn asset_origin(&self, name: &str) -> String {
        match &self.bpf_dir {
            Some(dir) => object_path(dir, name).display().to_string(),
            None => format!("(embedded in the binary: {name})"),
        }
    }

    /// Reads `<bpf_dir>/<name>.bpf.o` when a bpf_dir is set, else the embedded object.
    /// Only checks that it is an ELF file; a deeper corruption is found when it is parsed.
    pub fn read_asset(&self, name: &str) -> Result<Cow<'static, [u8]>, AssetError> {
        let read_error =
            |reason: String| AssetError::Read { asset: name.into(), path: self.asset_origin(name), reason };
        let bytes = match &self.bpf_dir {
            Some(dir) => {
                Cow::Owned(std::fs::read(object_path(dir, name)).map_err(|e| read_error(e.to_string()))?)
            }
            None => Cow::Borrowed(
                crate::objects::embedded(name)
                    .ok_or_else(|| read_error("no such asset is built into this binary".into()))?,
            ),
        };
        if !bytes.starts_with(b"\x7fELF") {
            return Err(read_error("not an ELF object (bad magic): corrupt or not an eBPF object".into()));
        }
        Ok(bytes)
    }

    /// Finds BTF, reads the object, calls `f` with the object bytes and an
    /// [`ObjectLoader`] with the BTF already set; `f` sets constants and map sizes, loads
    /// and attaches. Records exactly one outcome per call in the registry, with the
    /// load time.
    pub fn load_core_asset<T>(
        &self,
        name: &str,
        f: impl FnOnce(&[u8], &mut ObjectLoader<'_, '_>) -> Result<T, AssetError>,
    ) -> Result<T, AssetError> {
        self.load_recorded(name, Relocation::KernelBtf, f)
    }

    /// The same for an object with no CO-RE relocation (the prebuilt conntracker, the
    /// offset guesser, the probe on a kernel without BTF): `f` gets a loader that
    /// relocates nothing, so no kernel BTF is needed. One outcome per call, as above.
    pub fn load_btf_free_asset<T>(
        &self,
        name: &str,
        f: impl FnOnce(&[u8], &mut ObjectLoader<'_, '_>) -> Result<T, AssetError>,
    ) -> Result<T, AssetError> {
        self.load_recorded(name, Relocation::None, f)
    }

    /// The one loading path: reads the object, prepares the loader, runs `f`, and
    /// records the outcome.
    fn load_recorded<T>(
        &self,
        name: &str,
        relocation: Relocation,
        f: impl FnOnce(&[u8], &mut ObjectLoader<'_, '_>) -> Result<T, AssetError>,
    ) -> Result<T, AssetError> {
        let _span = tracing::info_span!("load_asset", asset = name).entered();
        let started = Instant::now();
        let result = self.run_load(name, relocation, f).map_err(|e| self.with_origin(name, e));
        let elapsed = started.elapsed();
        let (outcome, detail) = match (&result, relocation, self.btf()) {
            (Ok(_), Relocation::KernelBtf, Ok(found)) => {
                (AssetOutcome::Loaded { btf_source: Some(found.source) }, found.describe())
            }
            (Ok(_), _, _) => {
                (AssetOutcome::Loaded { btf_source: None }, "no CO-RE relocation: loaded without BTF".into())
            }
            (Err(e), _, _) => (e.outcome(), e.detail()),
        };
        match &result {
            Ok(_) => tracing::info!(?outcome, ?elapsed, "eBPF asset loaded"),
            Err(e) => tracing::warn!(?outcome, ?elapsed, error = %e, "eBPF asset not loaded"),
        }
        self.registry.record_asset(name, outcome, detail, elapsed);
        result
    }

    fn run_load<T>(
        &self,
        name: &str,
        relocation: Relocation,
        f: impl FnOnce(&[u8], &mut ObjectLoader<'_, '_>) -> Result<T, AssetError>,
    ) -> Result<T, AssetError> {
        if relocation == Relocation::KernelBtf {
            self.btf().map_err(|e| AssetError::BtfNotFound(e.to_string()))?;
        }
        let bytes = self.read_asset(name)?;
        self.kernel.with_dependent(|found, shared| {
            let btf = match relocation {
                Relocation::KernelBtf => found.as_ref().ok().map(|f| relocation_target(f, name, &bytes)),
                Relocation::None => None,
            };
            f(&bytes, &mut ObjectLoader::new(btf, shared, &self.aya_loaders))
        })
    }

    /// Fills in where the object came from when a parse error did not know it.
    fn with_origin(&self, name: &str, err: AssetError) -> AssetError {
        match err {
            AssetError::Read { asset, path, reason } if path.is_empty() => {
                AssetError::Read { asset, path: self.asset_origin(name), reason }
            }
            other => other,
        }
    }
}

/// What an object's relocations are resolved against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Relocation {
    /// The kernel BTF found at start (CO-RE objects).
    KernelBtf,
    /// Nothing: the object has no CO-RE relocation.
    None,
}

fn object_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.bpf.o"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loader_can_be_shared_across_tasks() {
        // Modules hold `&AssetLoader` across awaits in tokio tasks.
        fn shareable<T: Send + Sync>() {}
        shareable::<AssetLoader>();
    }

    #[test]
    fn verifier_tail_keeps_the_last_lines() {
        let log: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let tail = verifier_log_tail(&log);
        assert_eq!(tail.lines().count(), VERIFIER_TAIL_LINES);
        assert!(tail.starts_with("line 80"), "{tail}");
        assert!(tail.ends_with("line 99"), "{tail}");
    }

    #[test]
    fn verifier_tail_is_bounded_in_bytes() {
        let long_line = "é".repeat(VERIFIER_TAIL_BYTES);
        let log = format!("first\n{long_line}\nlast");
        let tail = verifier_log_tail(&log);
        assert!(tail.len() <= VERIFIER_TAIL_BYTES);
        assert!(tail.ends_with("last"));
    }

    #[test]
    fn each_error_counts_as_its_outcome() {
        let read = AssetError::Read { asset: "a".into(), path: "p".into(), reason: "r".into() };
        assert_eq!(read.outcome(), AssetOutcome::AssetReadError);
        assert_eq!(AssetError::BtfNotFound("x".into()).outcome(), AssetOutcome::BtfNotFound);
        let verifier = AssetError::Verifier { asset: "a".into(), program: "p".into(), log_tail: "t".into() };
        assert_eq!(verifier.outcome(), AssetOutcome::VerifierError);
        let attach = AssetError::Attach { asset: "a".into(), program: "p".into(), reason: "r".into() };
        assert_eq!(attach.outcome(), AssetOutcome::AttachError);
    }

    #[test]
    fn a_truncated_object_is_a_read_error() {
        let err = aya::EbpfLoader::new()
            .btf(None)
            .load(b"\x7fELF\x02\x01\x01")
            .map(|_| ())
            .expect_err("a truncated ELF must not parse");
        let err = AssetError::from_ebpf("x", err);
        assert_eq!(err.outcome(), AssetOutcome::AssetReadError, "{err}");
    }

    #[test]
    fn a_program_rejection_keeps_errno_and_log_tail() {
        let err = ProgramError::LoadError {
            io_error: std::io::Error::from_raw_os_error(libc::EACCES),
            verifier_log: aya_obj::VerifierLog::new("0: r0 = 0\ninvalid mem access 'scalar'\n".into()),
        };
        let err = AssetError::from_program_load("x", "prog", err);
        let AssetError::Verifier { log_tail, .. } = &err else { panic!("{err:?}") };
        assert!(log_tail.contains("Permission denied"), "{log_tail}");
        assert!(log_tail.ends_with("invalid mem access 'scalar'"), "{log_tail}");
    }

    #[test]
    fn missing_btf_is_recorded_once_as_btf_not_found() {
        let registry = Registry::default();
        let loader =
            AssetLoader::new(Err(BtfError::NotFound { tried: vec!["x".into()] }), None, registry.clone());
        let result = loader.load_core_asset("anything", |_, _| Ok(()));
        assert!(matches!(result, Err(AssetError::BtfNotFound(_))));
        let assets = registry.assets();
        assert_eq!(assets.len(), 1);
        assert_eq!(assets[0].outcome, AssetOutcome::BtfNotFound);
        assert_eq!(assets[0].count, 1);
    }
}
