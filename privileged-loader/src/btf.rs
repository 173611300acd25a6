//! Kernel BTF discovery: where the type information for CO-RE relocations comes from.
//!
//! CO-RE objects carry relocations against kernel type names; the loader resolves them
//! against the running kernel's BTF. Places are tried in a fixed order, and every place
//! that did not work is kept with its reason, so "BTF not found" says exactly where the
//! loader looked:
//!
//! 1. a file the user names (`btf.file`);
//! 2. `/sys/kernel/btf/vmlinux` (skipped with `btf.no_sysfs`);
//! 3. a directory in BTFHub layout (`btf.hub_dir`):
//!    `<os-id>/<os-version>/<arch>/<uname -r>.btf`, then the same name with `.tar.xz`;
//! 4. the BTF a `BTF` remote config delivered, kept in `btf.cache_dir` (skipped with
//!    `btf.remote_config = false`; `remote_config::btf`).
//!
//! A `.btf.tar.xz` is decompressed in memory, never onto disk: no temp file a local user
//! could race or replace between extraction and parsing.
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use aya::{Btf, Endianness};
use serde::{Deserialize, Serialize};

use crate::status::BtfSource;

pub mod relocation;
pub use relocation::RelocationBtf;

/// Where the kernel publishes its own BTF when built with `CONFIG_DEBUG_INFO_BTF=y`.
pub const SYSFS_VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Refuse to decompress more than this from a BTFHub tarball: a vmlinux BTF is a few
/// MiB; anything far larger is a broken or hostile archive, not kernel types.
const MAX_EXTRACTED_BTF: u64 = 256 * 1024 * 1024;

/// Section `[btf]` of the loader configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BtfConfig {
    /// A BTF file the user names: tried first.
    pub file: Option<PathBuf>,
    /// Skip `/sys/kernel/btf/vmlinux` (tests use it to force the external paths).
    pub no_sysfs: bool,
    /// A directory in BTFHub layout:
    /// `<os-id>/<os-version>/<arch>/<uname -r>.btf[.tar.xz]`.
    pub hub_dir: Option<PathBuf>,
    /// Use BTF delivered by a `BTF` remote config when no place above has any.
    pub remote_config: bool,
    /// Where the loader keeps the remote BTF in use (one kernel's; created 0700).
    pub cache_dir: PathBuf,
    /// The largest remote BTF accepted, decompressed (a full vmlinux BTF is ~6 MiB).
    pub max_remote_bytes: u64,
}

impl Default for BtfConfig {
    fn default() -> Self {
        Self {
            file: None,
            no_sysfs: false,
            hub_dir: None,
            remote_config: true,
            cache_dir: PathBuf::from("/var/lib/ebpf-loader/btf"),
            max_remote_bytes: 16 * 1024 * 1024,
        }
    }
}

/// The BTF the loader will relocate CO-RE objects against, and where it came from.
#[derive(Debug)]
pub struct FoundBtf {
    pub source: BtfSource,
    /// The file parsed (for BTFHub tarballs: the tarball).
    pub path: PathBuf,
    pub btf: Btf,
    /// The part of `btf` CO-RE relocation of the built-in objects reads (`None` when it
    /// could not be built: relocation then scans `btf`).
    pub relocation: Option<RelocationBtf>,
    /// For BTF from remote config: "remote config `<path>` v<version>".
    pub origin: Option<String>,
}

impl FoundBtf {
    /// Where the BTF came from, as every asset outcome records it.
    pub fn describe(&self) -> String {
        match &self.origin {
            Some(origin) => format!("BTF from {origin} ({})", self.path.display()),
            None => format!("BTF from {} ({})", self.source.as_str(), self.path.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// No place held usable BTF; `tried` says, for every place, why not.
    #[error(
        "no kernel BTF found (tried: {}); enable CONFIG_DEBUG_INFO_BTF, set btf.file or btf.hub_dir, or publish this kernel's BTF (config-service publish-btf)",
        tried.join("; ")
    )]
    NotFound { tried: Vec<String> },
    /// `/etc/os-release` or the kernel release could not be read, so the BTFHub path
    /// cannot be computed.
    #[error("cannot identify this host for the BTFHub layout: {0}")]
    HostIdentity(String),
}

/// What the BTFHub layout is keyed on: distribution, its version, CPU arch, kernel release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostIdentity {
    pub os_id: String,
    pub os_version: String,
    pub arch: String,
    pub release: String,
}

impl HostIdentity {
    /// Reads the identity of the running host (`/etc/os-release`, the kernel release).
    pub fn current() -> Result<Self, BtfError> {
        let os_release = fs::read_to_string("/etc/os-release")
            .or_else(|_| fs::read_to_string("/usr/lib/os-release"))
            .map_err(|e| BtfError::HostIdentity(format!("reading /etc/os-release: {e}")))?;
        let (os_id, os_version) = parse_os_release(&os_release)
            .ok_or_else(|| BtfError::HostIdentity("/etc/os-release has no ID or VERSION_ID".into()))?;
        Ok(Self {
            os_id,
            os_version,
            arch: btfhub_arch(std::env::consts::ARCH).to_string(),
            release: kernel_release()?,
        })
    }

    /// The two files the BTFHub layout would hold for this host, in the order tried.
    pub fn hub_candidates(&self, hub_dir: &Path) -> [PathBuf; 2] {
        let dir = hub_dir.join(&self.os_id).join(&self.os_version).join(&self.arch);
        [dir.join(format!("{}.btf", self.release)), dir.join(format!("{}.btf.tar.xz", self.release))]
    }
}

/// The running kernel's release, as `uname -r` prints it.
pub fn kernel_release() -> Result<String, BtfError> {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .map_err(|e| BtfError::HostIdentity(format!("reading /proc/sys/kernel/osrelease: {e}")))
}

/// BTFHub names architectures like the kernel's `ARCH`, not like Rust/uname.
pub fn btfhub_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "aarch64" => "arm64",
        other => other,
    }
}

/// `ID` and `VERSION_ID` from the text of an os-release file (quotes removed).
pub fn parse_os_release(text: &str) -> Option<(String, String)> {
    let value = |key: &str| {
        text.lines().find_map(|line| {
            let (k, v) = line.trim().split_once('=')?;
            (k == key).then(|| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
        })
    };
    let id = value("ID").filter(|v| !v.is_empty())?;
    let version = value("VERSION_ID").filter(|v| !v.is_empty())?;
    Some((id, version))
}

/// Finds kernel BTF in the configured order; see the module documentation.
pub fn discover(cfg: &BtfConfig) -> Result<FoundBtf, BtfError> {
    let mut tried = Vec::new();
    if let Some(file) = &cfg.file {
        match parse_plain(file) {
            Ok(btf) => return Ok(found(BtfSource::UserFile, file, btf)),
            Err(reason) => {
                tracing::warn!(path = %file.display(), %reason, "configured btf.file is unusable, trying the next place");
                tried.push(format!("btf.file {}: {reason}", file.display()));
            }
        }
    }
    if cfg.no_sysfs {
        tried.push(format!("{SYSFS_VMLINUX}: skipped (btf.no_sysfs)"));
    } else {
        match parse_plain(Path::new(SYSFS_VMLINUX)) {
            Ok(btf) => return Ok(found(BtfSource::Sysfs, Path::new(SYSFS_VMLINUX), btf)),
            Err(reason) => tried.push(format!("{SYSFS_VMLINUX}: {reason}")),
        }
    }
    match &cfg.hub_dir {
        None => tried.push("btf.hub_dir: not set".to_string()),
        Some(hub_dir) => match HostIdentity::current() {
            Err(e) => tried.push(format!("btf.hub_dir {}: {e}", hub_dir.display())),
            Ok(host) => {
                if let Some(found) = discover_in_hub(hub_dir, &host, &mut tried) {
                    return Ok(found);
                }
            }
        },
    }
    match discover_remote(cfg) {
        Ok(found) => return Ok(found),
        Err(reason) => tried.push(reason),
    }
    Err(BtfError::NotFound { tried })
}

/// The BTF a remote config left in the cache for this kernel.
fn discover_remote(cfg: &BtfConfig) -> Result<FoundBtf, String> {
    if !cfg.remote_config {
        return Err("remote config: skipped (btf.remote_config = false)".into());
    }
    let key = crate::remote_config::btf::KernelIdentity::current().map(|k| k.key())?;
    let cache = crate::remote_config::btf::BtfCache::new(&cfg.cache_dir);
    match cache.load(&key) {
        Ok(Some(found)) => {
            tracing::info!(path = %found.path.display(), "kernel BTF found in the remote-config cache");
            Ok(found)
        }
        Ok(None) => Err(format!("remote config: no BTF for {key} received yet")),
        Err(reason) => Err(format!("remote config: {reason}")),
    }
}

/// Tries the BTFHub candidates of `host` under `hub_dir`, noting each failure in `tried`.
pub fn discover_in_hub(hub_dir: &Path, host: &HostIdentity, tried: &mut Vec<String>) -> Option<FoundBtf> {
    let [plain, tarball] = host.hub_candidates(hub_dir);
    match parse_plain(&plain) {
        Ok(btf) => return Some(found(BtfSource::Btfhub, &plain, btf)),
        Err(reason) => tried.push(format!("{}: {reason}", plain.display())),
    }
    match parse_tarball(&tarball, &host.release) {
        Ok(btf) => Some(found(BtfSource::Btfhub, &tarball, btf)),
        Err(reason) => {
            tried.push(format!("{}: {reason}", tarball.display()));
            None
        }
    }
}

fn found(source: BtfSource, path: &Path, (btf, relocation): Parsed) -> FoundBtf {
    tracing::info!(source = source.as_str(), path = %path.display(), "kernel BTF found");
    FoundBtf { source, path: path.to_path_buf(), btf, relocation, origin: None }
}

/// A BTF blob parsed, and the relocation BTF built from it.
pub type Parsed = (Btf, Option<RelocationBtf>);

/// Parses BTF `bytes` and builds its relocation BTF (`relocation.rs`); a relocation BTF
/// that cannot be built is logged and left out, never an error.
///
/// One after the other, not side by side: at start-up the shared aya loader's constructor
/// parses the same BTF on a second thread already, and a third thread made the start
/// slower on two cores (median 57.7–60.4 ms against 55.0–55.4 ms, `docs/benchmarks.md`).
pub fn parse_bytes(bytes: &[u8]) -> Result<Parsed, String> {
    let btf = Btf::parse(bytes, Endianness::default()).map_err(|e| format!("not valid BTF ({e})"))?;
    let relocation = match RelocationBtf::for_embedded_objects(bytes) {
        Ok(relocation) => {
            tracing::debug!(types = relocation.types, of = relocation.kernel_types, "relocation BTF built");
            Some(relocation)
        }
        Err(error) => {
            tracing::warn!(%error, "no relocation BTF: CO-RE relocation scans the whole kernel BTF (slower start)");
            None
        }
    };
    Ok((btf, relocation))
}

fn parse_plain(path: &Path) -> Result<Parsed, String> {
    parse_bytes(&fs::read(path).map_err(|e| describe_io(&e))?)
}

fn describe_io(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".to_string(),
        _ => e.to_string(),
    }
}

/// Decompresses `path` (tar + xz) in memory and parses its `<release>.btf` member (or
/// its only `.btf` member: BTFHub tarballs hold exactly one).
fn parse_tarball(path: &Path, release: &str) -> Result<Parsed, String> {
    let file = fs::File::open(path).map_err(|e| describe_io(&e))?;
    let mut archive = tar::Archive::new(xz2::read::XzDecoder::new(file));
    let wanted = format!("{release}.btf");
    let mut fallback: Option<Vec<u8>> = None;
    let entries = archive.entries().map_err(|e| format!("not a tar.xz archive ({e})"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("corrupt tar.xz archive ({e})"))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        let Some(name) = name.filter(|n| n.ends_with(".btf")) else { continue };
        let bytes = read_bounded(&mut entry).map_err(|e| format!("member {name}: {e}"))?;
        if name == wanted {
            return parse_bytes(&bytes).map_err(|e| format!("member {name}: {e}"));
        }
        fallback.get_or_insert(bytes);
    }
    let bytes = fallback.ok_or_else(|| format!("archive holds no {wanted} (nor any .btf member)"))?;
    parse_bytes(&bytes)
}

fn read_bounded(reader: &mut impl Read) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    reader.take(MAX_EXTRACTED_BTF + 1).read_to_end(&mut bytes).map_err(|e| format!("decompressing: {e}"))?;
    if bytes.len() as u64 > MAX_EXTRACTED_BTF {
        return Err(format!("larger than {MAX_EXTRACTED_BTF} bytes decompressed, refusing it"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostIdentity {
        HostIdentity {
            os_id: "ubuntu".into(),
            os_version: "20.04".into(),
            arch: "x86_64".into(),
            release: "5.4.0-1010-aws".into(),
        }
    }

    #[test]
    fn hub_candidates_follow_btfhub_layout_plain_first() {
        let [plain, tarball] = host().hub_candidates(Path::new("/hub"));
        assert_eq!(plain, Path::new("/hub/ubuntu/20.04/x86_64/5.4.0-1010-aws.btf"));
        assert_eq!(tarball, Path::new("/hub/ubuntu/20.04/x86_64/5.4.0-1010-aws.btf.tar.xz"));
    }

    #[test]
    fn os_release_values_are_unquoted() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\nID=debian\n";
        assert_eq!(parse_os_release(text), Some(("debian".into(), "12".into())));
        assert_eq!(parse_os_release("ID='centos'\nVERSION_ID='7'"), Some(("centos".into(), "7".into())));
    }

    #[test]
    fn os_release_without_version_is_not_a_hub_key() {
        // Debian testing/sid ship no VERSION_ID: BTFHub has no directory for them.
        assert_eq!(parse_os_release("ID=debian\nPRETTY_NAME=\"Debian trixie/sid\""), None);
        assert_eq!(parse_os_release("ID=\nVERSION_ID=1"), None);
    }

    #[test]
    fn os_release_keys_match_exactly() {
        // ID_LIKE and VERSION_CODENAME must not be mistaken for ID / VERSION_ID.
        let text = "ID_LIKE=rhel\nVERSION_CODENAME=x\nID=rocky\nVERSION_ID=9.3";
        assert_eq!(parse_os_release(text), Some(("rocky".into(), "9.3".into())));
    }

    #[test]
    fn config_section_defaults_and_rejects_typos() {
        let cfg: BtfConfig =
            serde_json::from_str(r#"{"hub_dir": "/var/lib/btfhub"}"#).expect("valid section");
        assert_eq!(cfg.hub_dir.as_deref(), Some(Path::new("/var/lib/btfhub")));
        assert!(!cfg.no_sysfs && cfg.file.is_none() && cfg.remote_config);
        let typo = serde_json::from_str::<BtfConfig>(r#"{"no_sysfs_btf": true}"#);
        assert!(typo.is_err(), "an unknown key must not be silently ignored");
    }

    #[test]
    fn arch_names_are_btfhub_names() {
        assert_eq!(btfhub_arch("x86_64"), "x86_64");
        assert_eq!(btfhub_arch("aarch64"), "arm64");
    }

    #[test]
    fn not_found_lists_every_place_tried() {
        let err = BtfError::NotFound { tried: vec!["a: does not exist".into(), "b: skipped".into()] };
        let text = err.to_string();
        assert!(text.contains("a: does not exist; b: skipped"), "{text}");
    }

    #[test]
    fn oversized_member_is_refused() {
        let mut big = std::io::repeat(0).take(MAX_EXTRACTED_BTF + 10);
        assert!(read_bounded(&mut big).is_err());
    }
}
