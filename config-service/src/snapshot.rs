//! The repository as `serve` sees it: raw documents read from disk, reloaded when the
//! `metadata/` directory changes.
//!
//! `serve` never verifies or re-signs what it serves: verification is the client's job,
//! and the tests rely on serving deliberately broken (python-tuf-made) metadata unchanged.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tough::schema::{Signed, Targets};

use crate::answer::{Served, ServedTarget};
use crate::repo::{self, Layout};

/// Errors from reading the repository; `serve` answers UNAVAILABLE with them.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a TUF targets document: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("no <N>.root.json in {path}")]
    NoRoot { path: PathBuf },
    #[error(transparent)]
    Listing(#[from] repo::RepoError),
}

/// One consistent view of the served repository.
pub struct Snapshot {
    /// `(version, raw document)`, ascending.
    pub roots: Vec<(u64, Vec<u8>)>,
    pub targets_raw: Vec<u8>,
    pub targets: Targets,
    pub served: Served,
}

impl Snapshot {
    /// Reads every root and the targets document.
    fn load(layout: &Layout) -> Result<Self, SnapshotError> {
        let dir = layout.metadata();
        let versions = repo::root_versions(&dir)?;
        if versions.is_empty() {
            return Err(SnapshotError::NoRoot { path: dir });
        }
        let mut roots = Vec::with_capacity(versions.len());
        for version in versions {
            let path = layout.root(version);
            let raw = fs::read(&path).map_err(|source| SnapshotError::Read { path, source })?;
            roots.push((version, raw));
        }
        let path = layout.targets_meta();
        let targets_raw =
            fs::read(&path).map_err(|source| SnapshotError::Read { path: path.clone(), source })?;
        let signed: Signed<Targets> =
            serde_json::from_slice(&targets_raw).map_err(|source| SnapshotError::Parse { path, source })?;
        let targets = signed.signed;
        let mut served_targets: Vec<ServedTarget> = targets
            .targets
            .iter()
            .map(|(name, t)| ServedTarget {
                path: name.raw().to_owned(),
                sha256: hex::encode(&t.hashes.sha256),
            })
            .collect();
        served_targets.sort_by(|a, b| a.path.cmp(&b.path));
        let served = Served {
            root_versions: roots.iter().map(|(v, _)| *v).collect(),
            targets_version: targets.version.get(),
            targets: served_targets,
        };
        Ok(Self { roots, targets_raw, targets, served })
    }

    /// Whether the served targets have expired at `now`.
    pub fn expired_at(&self, now: jiff::Timestamp) -> bool {
        self.targets.expires <= now
    }
}

/// Identity of the `metadata/` directory's contents: names, sizes, inodes, mtimes.
type Fingerprint = Vec<(String, u64, u64, i64, i64)>;

fn fingerprint(layout: &Layout) -> Result<Fingerprint, SnapshotError> {
    let dir = layout.metadata();
    let read_err = |source| SnapshotError::Read { path: dir.clone(), source };
    let mut print = Vec::new();
    for entry in fs::read_dir(&dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue; // temp files of an atomic write in progress
        }
        let meta = entry.metadata().map_err(read_err)?;
        print.push((name, meta.len(), meta.ino(), meta.mtime(), meta.mtime_nsec()));
    }
    print.sort();
    Ok(print)
}

/// The current snapshot, reloaded when `metadata/` changes. A publish is therefore
/// visible at the next request; a steady-state request costs one `readdir` + `stat`s.
pub struct SnapshotCache {
    layout: Layout,
    current: Mutex<Option<(Fingerprint, Arc<Snapshot>)>>,
}

impl SnapshotCache {
    pub fn new(layout: Layout) -> Self {
        Self { layout, current: Mutex::new(None) }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The snapshot matching what is on disk now.
    pub fn get(&self) -> Result<Arc<Snapshot>, SnapshotError> {
        let print = fingerprint(&self.layout)?;
        let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((cached, snapshot)) = current.as_ref()
            && *cached == print
        {
            return Ok(Arc::clone(snapshot));
        }
        let snapshot = Arc::new(Snapshot::load(&self.layout)?);
        tracing::info!(
            roots = snapshot.roots.len(),
            targets_version = snapshot.served.targets_version,
            targets = snapshot.served.targets.len(),
            "repository loaded"
        );
        *current = Some((print, Arc::clone(&snapshot)));
        Ok(snapshot)
    }
}
