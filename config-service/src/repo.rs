//! The repository on disk and the publisher's operations on it.
//!
//! Layout (shared with the tests, which may drop python-tuf-made metadata into it):
//! `keys/*.pem` (0600), `metadata/<N>.root.json`, `metadata/targets.json`,
//! `targets/<org_id>/<product>/<config_id>/<name>`. Every write is atomic (temp file,
//! fsync, rename), and a config file is written before the targets that name it, so a
//! running `serve` never sees targets whose files are missing.

use std::fs;
use std::io::Write;
use std::num::NonZeroU64;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;

use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{RoleType, Root, Signed, Targets};

use crate::keys::{self, KeyError, SigningKey};
use crate::metadata::{self, MetadataError};

/// Errors from the publisher's operations, naming the file that failed.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{path} already exists: `init` never overwrites a repository")]
    Exists { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid signed TUF document: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("no <N>.root.json in {dir}: run `config-service init --repo ...` first")]
    NoRoot { dir: PathBuf },
    #[error(
        "the {role} role needs {threshold} signing key(s) but only {found} of its keys are in \
         {dir}"
    )]
    MissingKeys { role: RoleType, threshold: u64, found: usize, dir: PathBuf },
    #[error("config {path} is not in the repository's targets")]
    NotPublished { path: String },
    #[error("{part:?} is not allowed in a config path: use plain names without '/' or '..'")]
    BadPathPart { part: String },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
}

/// Paths of one repository.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_owned() }
    }
    pub fn keys(&self) -> PathBuf {
        self.dir.join("keys")
    }
    pub fn metadata(&self) -> PathBuf {
        self.dir.join("metadata")
    }
    pub fn root(&self, version: u64) -> PathBuf {
        self.metadata().join(format!("{version}.root.json"))
    }
    pub fn targets_meta(&self) -> PathBuf {
        self.metadata().join("targets.json")
    }
    /// The file for a target path; `None` for paths that would escape `targets/`.
    pub fn target_file(&self, target_path: &str) -> Option<PathBuf> {
        let relative = Path::new(target_path);
        let plain = relative.components().all(|c| matches!(c, Component::Normal(_)));
        (plain && !target_path.is_empty()).then(|| self.dir.join("targets").join(relative))
    }
}

/// What identifies a config: `<org_id>/<product>/<config_id>/<name>`.
pub struct ConfigRef<'a> {
    pub org_id: &'a str,
    pub product: &'a str,
    pub config_id: &'a str,
    pub name: &'a str,
}

impl ConfigRef<'_> {
    /// The target path, refusing parts that would add or escape a directory level.
    pub fn path(&self) -> Result<String, RepoError> {
        for part in [self.org_id, self.product, self.config_id, self.name] {
            if part.is_empty() || part.contains('/') || part == "." || part == ".." {
                return Err(RepoError::BadPathPart { part: part.to_owned() });
            }
        }
        Ok(format!("{}/{}/{}/{}", self.org_id, self.product, self.config_id, self.name))
    }
}

/// Creates keys, `1.root.json` and an empty `targets.json` (version 1).
pub async fn init(layout: &Layout, expires_days: u32) -> Result<(), RepoError> {
    if layout.metadata().exists() || layout.keys().exists() {
        return Err(RepoError::Exists { path: layout.dir.clone() });
    }
    for dir in [layout.keys(), layout.metadata(), layout.dir.join("targets")] {
        fs::create_dir_all(&dir).map_err(|source| RepoError::Write { path: dir.clone(), source })?;
    }
    let root_key = keys::generate(&layout.keys().join("root-v1.pem"))?;
    let targets_key = keys::generate(&layout.keys().join("targets-v1.pem"))?;
    let expires = metadata::expiry_in_days(expires_days);
    let root = metadata::new_root(NonZeroU64::MIN, expires, &[&root_key], &[&targets_key]);
    write_json(&layout.root(1), &metadata::sign(root, &[&root_key]).await?)?;
    let mut targets = metadata::empty_targets(NonZeroU64::MIN, expires);
    metadata::set_targets_custom(&mut targets, None);
    write_json(&layout.targets_meta(), &metadata::sign(targets, &[&targets_key]).await?)?;
    Ok(())
}

/// Adds or replaces a config: writes its file, bumps its `custom.v`, re-signs targets.
/// Returns the new config version.
pub async fn publish(
    layout: &Layout,
    config: &ConfigRef<'_>,
    content: &[u8],
    expires_days: u32,
    refresh_interval_secs: Option<u64>,
) -> Result<u64, RepoError> {
    let path = config.path()?;
    let name = metadata::target_name(&path)?;
    let (root, _) = latest_root(layout)?;
    let mut targets: Signed<Targets> = read_json(&layout.targets_meta())?;
    let previous = targets.signed.targets.get(&name).and_then(metadata::config_version);
    let config_version = previous.unwrap_or(0).saturating_add(1);
    let file = layout.target_file(&path).ok_or(RepoError::BadPathPart { part: path.clone() })?;
    if let Some(parent) = file.parent() {
        fs::create_dir_all(parent).map_err(|source| RepoError::Write { path: parent.to_owned(), source })?;
    }
    write_atomic(&file, content)?;
    targets.signed.add_target(name, metadata::target_for(content, config_version));
    // A suggested interval stays until a publish sets another one.
    let interval = refresh_interval_secs.or_else(|| metadata::refresh_interval(&targets.signed));
    resign_targets(layout, &root, targets.signed, expires_days, interval).await?;
    Ok(config_version)
}

/// Removes every config `<org>/<product>/<config_id>/*` from targets and deletes its files.
pub async fn remove(
    layout: &Layout,
    org_id: &str,
    product: &str,
    config_id: &str,
    expires_days: u32,
) -> Result<Vec<String>, RepoError> {
    let prefix = ConfigRef { org_id, product, config_id, name: "x" }.path()?;
    let prefix = prefix.trim_end_matches('x');
    let (root, _) = latest_root(layout)?;
    let mut targets: Signed<Targets> = read_json(&layout.targets_meta())?;
    let removed: Vec<_> =
        targets.signed.targets.keys().filter(|name| name.raw().starts_with(prefix)).cloned().collect();
    if removed.is_empty() {
        return Err(RepoError::NotPublished { path: format!("{prefix}*") });
    }
    for name in &removed {
        targets.signed.remove_target(name);
    }
    let interval = metadata::refresh_interval(&targets.signed);
    resign_targets(layout, &root, targets.signed, expires_days, interval).await?;
    for name in &removed {
        if let Some(file) = layout.target_file(name.raw()) {
            // The targets no longer name the file, so a leftover is harmless; still say so.
            if let Err(e) = fs::remove_file(&file) {
                tracing::warn!(path = %file.display(), error = %e, "cannot delete removed config file");
            }
        }
    }
    Ok(removed.iter().map(|n| n.raw().to_owned()).collect())
}

/// Writes `<N+1>.root.json` with a new root key, signed by the old and the new root keys.
/// Returns the new root version.
pub async fn rotate_root(layout: &Layout, expires_days: u32) -> Result<u64, RepoError> {
    let (old, _) = latest_root(layout)?;
    let version = metadata::next_version(old.version, RoleType::Root)?;
    let new_key = keys::generate(&layout.keys().join(format!("root-v{version}.pem")))?;
    let expires = metadata::expiry_in_days(expires_days);
    let new = metadata::rotate_root_key(&old, version, expires, &new_key);
    let all_keys = keys::load_dir(&layout.keys())?;
    let mut signers = signers_for(layout, &old, RoleType::Root, &all_keys)?;
    signers.push(&new_key);
    let signed = metadata::sign(new, &signers).await?;
    // A root must verify under both its predecessor and itself before it is published.
    for trusted in [&old, &signed.signed] {
        trusted.verify_role(&signed).map_err(|e| MetadataError::Sign {
            role: RoleType::Root,
            key: layout.keys().display().to_string(),
            reason: e.to_string(),
        })?;
    }
    write_json(&layout.root(version.get()), &signed)?;
    Ok(version.get())
}

/// The newest root in `metadata/` and its version.
pub fn latest_root(layout: &Layout) -> Result<(Root, u64), RepoError> {
    let dir = layout.metadata();
    let version =
        root_versions(&dir)?.into_iter().max().ok_or_else(|| RepoError::NoRoot { dir: dir.clone() })?;
    let signed: Signed<Root> = read_json(&layout.root(version))?;
    Ok((signed.signed, version))
}

/// Versions of every `<N>.root.json` in `dir`.
pub fn root_versions(dir: &Path) -> Result<Vec<u64>, RepoError> {
    let read_err = |source| RepoError::Read { path: dir.to_owned(), source };
    let mut versions = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let name = entry.map_err(read_err)?.file_name();
        if let Some(v) = name.to_str().and_then(parse_root_file_name) {
            versions.push(v);
        }
    }
    versions.sort_unstable();
    Ok(versions)
}

/// `"7.root.json"` → 7.
pub fn parse_root_file_name(name: &str) -> Option<u64> {
    name.strip_suffix(".root.json")?.parse().ok().filter(|v| *v > 0)
}

async fn resign_targets(
    layout: &Layout,
    root: &Root,
    mut targets: Targets,
    expires_days: u32,
    refresh_interval_secs: Option<u64>,
) -> Result<(), RepoError> {
    targets.version = metadata::next_version(targets.version, RoleType::Targets)?;
    targets.expires = metadata::expiry_in_days(expires_days);
    metadata::set_targets_custom(&mut targets, refresh_interval_secs);
    let all_keys = keys::load_dir(&layout.keys())?;
    let signers = signers_for(layout, root, RoleType::Targets, &all_keys)?;
    write_json(&layout.targets_meta(), &metadata::sign(targets, &signers).await?)
}

/// The local keys the root lists for `role`, at least `threshold` of them.
fn signers_for<'k>(
    layout: &Layout,
    root: &Root,
    role: RoleType,
    all_keys: &'k HashMap<Decoded<Hex>, SigningKey>,
) -> Result<Vec<&'k SigningKey>, RepoError> {
    let role_keys = root.roles.get(&role);
    let threshold = role_keys.map_or(1, |r| r.threshold.get());
    let signers: Vec<_> =
        role_keys.into_iter().flat_map(|r| r.keyids.iter()).filter_map(|id| all_keys.get(id)).collect();
    if (signers.len() as u64) < threshold || signers.is_empty() {
        return Err(RepoError::MissingKeys { role, threshold, found: signers.len(), dir: layout.keys() });
    }
    Ok(signers)
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, RepoError> {
    let bytes = fs::read(path).map_err(|source| RepoError::Read { path: path.to_owned(), source })?;
    serde_json::from_slice(&bytes).map_err(|source| RepoError::Parse { path: path.to_owned(), source })
}

fn write_json<T: Serialize>(path: &Path, doc: &T) -> Result<(), RepoError> {
    let mut bytes = serde_json::to_vec_pretty(doc)
        .map_err(|source| RepoError::Parse { path: path.to_owned(), source })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Writes `bytes` to a temp file beside `path`, fsyncs it, renames it over `path`, and
/// fsyncs the directory: readers see the old or the new file, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RepoError> {
    let write_err = |source| RepoError::Write { path: path.to_owned(), source };
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    let mut file = fs::File::create(&tmp).map_err(write_err)?;
    file.write_all(bytes).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    fs::rename(&tmp, path).map_err(write_err)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_file_names_parse_to_versions() {
        assert_eq!(parse_root_file_name("1.root.json"), Some(1));
        assert_eq!(parse_root_file_name("12.root.json"), Some(12));
        assert_eq!(parse_root_file_name("0.root.json"), None);
        assert_eq!(parse_root_file_name("root.json"), None);
        assert_eq!(parse_root_file_name("targets.json"), None);
    }

    #[test]
    fn target_files_never_escape_the_targets_dir() {
        let layout = Layout::new(Path::new("/repo"));
        assert_eq!(
            layout.target_file("2/P/c/config.json"),
            Some(PathBuf::from("/repo/targets/2/P/c/config.json"))
        );
        assert_eq!(layout.target_file("../keys/root-v1.pem"), None);
        assert_eq!(layout.target_file("/etc/passwd"), None);
        assert_eq!(layout.target_file("2/./x"), Some(PathBuf::from("/repo/targets/2/x")));
        assert_eq!(layout.target_file(""), None);
    }

    #[test]
    fn config_path_parts_are_plain_names() {
        let ok = ConfigRef { org_id: "2", product: "P", config_id: "c", name: "config.json" };
        assert_eq!(ok.path().unwrap(), "2/P/c/config.json");
        let bad = ConfigRef { org_id: "2", product: "P", config_id: "../c", name: "config.json" };
        assert!(bad.path().is_err());
        let dots = ConfigRef { org_id: "2", product: "..", config_id: "c", name: "config.json" };
        assert!(dots.path().is_err());
    }

    #[tokio::test]
    async fn publish_bumps_config_and_targets_versions_and_rotation_chains() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        init(&layout, 30).await.unwrap();
        assert!(init(&layout, 30).await.is_err(), "init must not overwrite");
        let cfg = ConfigRef { org_id: "2", product: "P", config_id: "c", name: "config.json" };
        assert_eq!(publish(&layout, &cfg, b"{}", 30, None).await.unwrap(), 1);
        assert_eq!(publish(&layout, &cfg, b"{\"a\":1}", 30, Some(3)).await.unwrap(), 2);
        let (root, _) = latest_root(&layout).unwrap();
        let targets: Signed<Targets> = read_json(&layout.targets_meta()).unwrap();
        root.verify_role(&targets).unwrap();
        assert_eq!(targets.signed.version.get(), 3);
        assert_eq!(metadata::refresh_interval(&targets.signed), Some(3));

        assert_eq!(rotate_root(&layout, 30).await.unwrap(), 2);
        let signed2: Signed<Root> = read_json(&layout.root(2)).unwrap();
        root.verify_role(&signed2).unwrap();
        // Targets are still signed by a key the new root trusts, so publishing goes on.
        publish(&layout, &cfg, b"[]", 30, None).await.unwrap();
        let targets: Signed<Targets> = read_json(&layout.targets_meta()).unwrap();
        signed2.signed.verify_role(&targets).unwrap();
        assert_eq!(metadata::refresh_interval(&targets.signed), Some(3), "interval is kept");

        assert_eq!(remove(&layout, "2", "P", "c", 30).await.unwrap(), vec!["2/P/c/config.json"]);
        assert!(!dir.path().join("targets/2/P/c/config.json").exists());
        assert!(remove(&layout, "2", "P", "c", 30).await.is_err());
    }
}
