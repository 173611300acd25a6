//! The `BTF` product on the loader's side: checking that a published BTF belongs to the
//! running kernel, and the cache directory that keeps the one in use across restarts.
//!
//! The cache holds at most one kernel's BTF (this node runs one kernel): `<key>.btf` and
//! `<key>.origin` (the config's path and version, for the status, and the build — `uname
//! -v` — of the kernel it was adopted on: the key names only the release, and a node
//! rebooted into another build of it must not start on the old build's offsets). Writing a new one
//! removes everything else in the directory. Files are written in place (no rename: the
//! seccomp filter allows none after start-up); a torn file fails to parse at the next
//! start and is reported, never used.
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use trust::products::{BtfPayload, kernel_key};

use crate::btf::{FoundBtf, kernel_release};
use crate::status::BtfSource;

/// A remote `BTF` config, as remote configuration resolves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteBtf {
    pub path: String,
    pub version: u64,
    pub payload: BtfPayload,
}

/// What remote configuration does with BTF on this node: use the config in force, or
/// ignore the product, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BtfSetting {
    /// Why a remote BTF is not used here (the kernel's own BTF was found, or
    /// `btf.remote_config = false`); `None`: it is used.
    pub ignored_because: Option<String>,
    /// `btf.remote_config = false`: a `BTF` config is refused (an error the service
    /// hears, so whoever published it learns this node turned the source off), where a
    /// node with its own BTF merely ignores it.
    pub source_off: bool,
    pub remote: Option<RemoteBtf>,
}

/// Why a node with `btf.remote_config = false` does not use published BTF.
pub const SOURCE_OFF: &str =
    "the remote BTF source is off (btf.remote_config = false in the loader's configuration)";

/// The refusal of a `BTF` config at `path` on a node whose remote BTF source is off.
pub fn refused_source_off(path: &str) -> String {
    format!(
        "{path} is refused: {SOURCE_OFF}; set btf.remote_config = true there to use published BTF, \
         or do not publish BTF for this node's kernel"
    )
}

/// The running kernel, as a `BTF` config must name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelIdentity {
    pub release: String,
    pub arch: String,
    /// `uname -v`.
    pub version: String,
}

impl KernelIdentity {
    pub fn current() -> Result<Self, String> {
        let version = fs::read_to_string("/proc/sys/kernel/version")
            .map_err(|e| format!("reading /proc/sys/kernel/version: {e}"))?;
        Ok(Self {
            release: kernel_release().map_err(|e| e.to_string())?,
            arch: std::env::consts::ARCH.to_string(),
            version: version.trim().to_string(),
        })
    }

    pub fn key(&self) -> String {
        kernel_key(&self.arch, &self.release)
    }

    /// Whether `remote` was published for this kernel: under this node's key, and made
    /// from a kernel of this release, arch and (when the payload says) build.
    pub fn check(&self, remote: &RemoteBtf) -> Result<(), String> {
        let p = &remote.payload;
        let config_id = trust::ConfigPath::parse(&remote.path).map(|c| c.config_id).unwrap_or_default();
        let mine = self.key();
        if config_id != mine {
            return Err(format!(
                "{} is published for kernel {config_id:?}, this node runs {mine:?}: publish it under {mine}",
                remote.path
            ));
        }
        if p.release != self.release || p.arch != self.arch {
            return Err(format!(
                "the BTF in {} was taken from kernel {} ({}), this node runs {} ({}): publish this kernel's BTF",
                remote.path, p.release, p.arch, self.release, self.arch
            ));
        }
        match &p.kernel_version {
            Some(v) if *v != self.version => Err(format!(
                "the BTF in {} is of build {v:?} of {}, this node runs build {:?}: publish this build's BTF",
                remote.path, p.release, self.version
            )),
            _ => Ok(()),
        }
    }
}

/// Decodes `remote` within `limit` bytes and parses it as BTF.
pub fn parse(remote: &RemoteBtf, limit: u64) -> Result<(Vec<u8>, crate::btf::Parsed), String> {
    let bytes = remote.payload.decode(limit).map_err(|e| format!("{}: {e}", remote.path))?;
    let parsed = crate::btf::parse_bytes(&bytes).map_err(|e| format!("{}: {e}", remote.path))?;
    Ok((bytes, parsed))
}

/// How a remote BTF is labelled in the status: "remote config `<path>` v<version>".
pub fn origin(path: &str, version: u64) -> String {
    format!("remote config `{path}` v{version}")
}

/// The cache directory the loader owns, for the running kernel's build.
pub struct BtfCache {
    dir: PathBuf,
    build: String,
}

impl BtfCache {
    pub fn new(dir: &Path) -> Self {
        let build = fs::read_to_string("/proc/sys/kernel/version").unwrap_or_default();
        Self::for_build(dir, build.trim())
    }

    /// The cache of a kernel of build `build` (`uname -v`).
    fn for_build(dir: &Path, build: &str) -> Self {
        Self { dir: dir.to_path_buf(), build: build.to_string() }
    }

    /// Creates the directory (mode 0700) if needed; done at start-up, while `mkdir` is allowed.
    pub fn prepare(&self) -> Result<(), String> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| format!("creating the BTF cache directory {}: {e}", self.dir.display()))
    }

    /// Where the BTF of kernel `key` is kept.
    pub fn path_of(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.btf"))
    }

    fn origin_file(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.origin"))
    }

    /// Stores `bytes` as the BTF of kernel `key` from config `path` v`version`, and
    /// removes everything else the directory held. Returns the BTF file.
    pub fn store(&self, key: &str, path: &str, version: u64, bytes: &[u8]) -> Result<PathBuf, String> {
        self.clear();
        let file = self.path_of(key);
        write_private(&file, bytes)?;
        let origin = format!("{path}\n{version}\n{}\n", self.build);
        write_private(&self.origin_file(key), origin.as_bytes())?;
        Ok(file)
    }

    /// Removes every file of the directory (a config removed at the service).
    pub fn clear(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            if let Err(e) = fs::remove_file(entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %e, "cannot clean the BTF cache");
            }
        }
    }

    /// The cached BTF of kernel `key`, if any; `Err` says why a cached file is unusable.
    pub fn load(&self, key: &str) -> Result<Option<FoundBtf>, String> {
        let file = self.path_of(key);
        let bytes = match fs::read(&file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        let origin = fs::read_to_string(self.origin_file(key)).unwrap_or_default();
        let mut lines = origin.lines();
        let (path, version) = (lines.next().unwrap_or("?"), lines.next().and_then(|v| v.parse().ok()));
        let adopted_on = lines.next().unwrap_or_default();
        if adopted_on != self.build {
            return Err(format!(
                "{}: adopted on kernel build {adopted_on:?}, this node now runs build {:?}: not used \
                 (the controller pushes this build's BTF once it is published)",
                file.display(),
                self.build
            ));
        }
        let (btf, relocation) =
            crate::btf::parse_bytes(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
        Ok(Some(FoundBtf {
            source: BtfSource::RemoteConfig,
            path: file,
            btf,
            relocation,
            origin: Some(self::origin(path, version.unwrap_or(0))),
        }))
    }
}

/// Writes `bytes` to a new file readable by the owner only (the directory is the
/// loader's; nothing else should read or replace what it will load).
fn write_private(file: &Path, bytes: &[u8]) -> Result<(), String> {
    let _ = fs::remove_file(file);
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| format!("writing {}: {e}", file.display()))?;
    out.write_all(bytes).map_err(|e| format!("writing {}: {e}", file.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn kernel() -> KernelIdentity {
        KernelIdentity { release: "6.18.0".into(), arch: "x86_64".into(), version: "#1 SMP".into() }
    }

    fn remote(path: &str, release: &str, build: Option<&str>) -> RemoteBtf {
        let payload =
            BtfPayload::encode(release, "x86_64", build.map(String::from), b"\x9f\xeb", false).unwrap();
        RemoteBtf { path: path.into(), version: 1, payload }
    }

    #[test]
    fn a_btf_belongs_to_the_kernel_by_key_release_arch_and_build() {
        let k = kernel();
        assert_eq!(k.check(&remote("2/BTF/x86_64-6.18.0/btf.json", "6.18.0", Some("#1 SMP"))), Ok(()));
        assert_eq!(k.check(&remote("2/BTF/x86_64-6.18.0/btf.json", "6.18.0", None)), Ok(()));
        let other_key = k.check(&remote("2/BTF/x86_64-6.1.0/btf.json", "6.1.0", None)).unwrap_err();
        assert!(
            other_key.contains("\"x86_64-6.1.0\"") && other_key.contains("publish it under"),
            "{other_key}"
        );
        let other_kernel = k.check(&remote("2/BTF/x86_64-6.18.0/btf.json", "6.1.0", None)).unwrap_err();
        assert!(other_kernel.contains("taken from kernel 6.1.0"), "{other_kernel}");
        let other_build = k.check(&remote("2/BTF/x86_64-6.18.0/btf.json", "6.18.0", Some("#2"))).unwrap_err();
        assert!(other_build.contains("build \"#2\""), "{other_build}");
    }

    #[test]
    fn the_cache_keeps_one_kernel_private_and_says_where_it_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BtfCache::new(&dir.path().join("btf"));
        cache.prepare().unwrap();
        let btf = std::fs::read(crate::btf::SYSFS_VMLINUX).unwrap();
        cache.store("old-key", "2/BTF/old-key/btf.json", 1, b"stale").unwrap();
        let file = cache.store("x86_64-6.18.0", "2/BTF/x86_64-6.18.0/btf.json", 3, &btf).unwrap();
        let names: Vec<_> =
            std::fs::read_dir(dir.path().join("btf")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names.len(), 2, "only the new kernel's two files: {names:?}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        let found = cache.load("x86_64-6.18.0").unwrap().unwrap();
        assert_eq!(found.source, BtfSource::RemoteConfig);
        assert_eq!(found.origin.as_deref(), Some("remote config `2/BTF/x86_64-6.18.0/btf.json` v3"));
        assert!(cache.load("old-key").unwrap().is_none());
        std::fs::write(&file, b"torn").unwrap();
        assert!(cache.load("x86_64-6.18.0").unwrap_err().contains("not valid BTF"));
    }

    #[test]
    fn a_cached_btf_is_not_used_after_a_reboot_into_another_build_of_the_release() {
        let dir = tempfile::tempdir().unwrap();
        let btf = std::fs::read(crate::btf::SYSFS_VMLINUX).unwrap();
        let before = BtfCache::for_build(dir.path(), "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3");
        before.prepare().unwrap();
        before
            .store("x86_64-6.1.0-57-cloud-amd64", "2/BTF/x86_64-6.1.0-57-cloud-amd64/btf.json", 1, &btf)
            .unwrap();
        assert!(before.load("x86_64-6.1.0-57-cloud-amd64").unwrap().is_some(), "same build: used");

        let after = BtfCache::for_build(dir.path(), "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-4");
        let refused = after.load("x86_64-6.1.0-57-cloud-amd64").unwrap_err();
        assert!(refused.contains("6.1.192-3") && refused.contains("6.1.192-4"), "{refused}");
    }
}
