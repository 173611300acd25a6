//! The on-disk trusted state, written transactionally.
//!
//! A commit writes the whole state to a temporary file, fsyncs it, renames it over
//! `state.json` and fsyncs the directory, all under an exclusive `flock` on `state.lock`
//! taken with a timeout, so a crash leaves either the old or the new state, never a mix.
//! At start the file is re-verified from the pinned root exactly like a response; a file
//! that fails (unreadable, not a file, tampered, truncated, configs missing) is renamed
//! aside with a timestamp and the controller starts from the pinned root: it is never
//! used. Temporary files of commits a crash interrupted are removed at load.

mod atomic;
mod lock;
mod persisted;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use atomic::{overwrite_in_place, replace_file, write_atomic};
use lock::StoreLock;

use trust::{TrustedState, VerifyError};

const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "state.lock";
const CLIENT_ID_FILE: &str = "client_id";

/// A failure of the store, naming the file involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error(
        "timed out after {timeout:?} waiting for the lock {path}: another controller may be using this state_dir"
    )]
    LockTimeout { path: PathBuf, timeout: Duration },
    #[error("cannot encode the state: {0}")]
    Encode(#[from] serde_json::Error),
}

impl StoreError {
    pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self + use<> {
        let path = path.to_owned();
        move |source| Self::Io { action, path, source }
    }
}

/// Why a state file on disk was refused at load.
#[derive(Debug, thiserror::Error)]
pub enum CorruptState {
    #[error("it cannot be read: {0}")]
    Unreadable(String),
    #[error("it is not a state file this controller wrote: {0}")]
    Format(String),
    #[error("it does not verify from the pinned root: {0}")]
    Verify(#[from] VerifyError),
}

/// What loading found.
#[derive(Debug)]
pub struct Loaded {
    pub state: TrustedState,
    /// Set when a state file was refused: where it was moved, and why.
    pub quarantined: Option<(PathBuf, CorruptState)>,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    lock_timeout: Duration,
}

impl Store {
    /// Creates the directory if needed (mode 0700: it holds the service's configs).
    pub fn open(dir: &Path, lock_timeout: Duration) -> Result<Self, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(StoreError::io("create the state directory", dir))?;
        Ok(Self { dir: dir.to_owned(), lock_timeout })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads and re-verifies the stored state on top of `pinned`; see the module docs.
    pub fn load(&self, pinned: &TrustedState) -> Result<Loaded, StoreError> {
        let path = self.dir.join(STATE_FILE);
        let _lock = StoreLock::acquire(&self.dir.join(LOCK_FILE), self.lock_timeout)?;
        atomic::remove_leftover_temps(&self.dir);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Loaded { state: pinned.clone(), quarantined: None });
            }
            // A directory, a file the controller may not read, a bad disk block: not a
            // state this controller can use, and no reason to stop polling for a new one.
            Err(e) => {
                let aside = self.quarantine(&path)?;
                let reason = CorruptState::Unreadable(e.to_string());
                return Ok(Loaded { state: pinned.clone(), quarantined: Some((aside, reason)) });
            }
        };
        match persisted::decode(&bytes, pinned) {
            Ok(state) => Ok(Loaded { state, quarantined: None }),
            Err(reason) => {
                let aside = self.quarantine(&path)?;
                Ok(Loaded { state: pinned.clone(), quarantined: Some((aside, reason)) })
            }
        }
    }

    /// Encodes `state` for [`Store::write`]; CPU only, so callers may run it anywhere.
    pub fn encode(state: &TrustedState) -> Result<Vec<u8>, StoreError> {
        Ok(persisted::encode(state)?)
    }

    /// Atomically replaces the stored state with `encoded` (blocking I/O).
    pub fn write(&self, encoded: &[u8]) -> Result<(), StoreError> {
        let _lock = StoreLock::acquire(&self.dir.join(LOCK_FILE), self.lock_timeout)?;
        write_atomic(&self.dir.join(STATE_FILE), encoded)
    }

    /// The persisted client id, created (random) on first use.
    pub fn client_id(&self) -> Result<String, StoreError> {
        let path = self.dir.join(CLIENT_ID_FILE);
        match std::fs::read_to_string(&path) {
            Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("read", &path)(e)),
        }
        let id = hex::encode(rand::random::<[u8; 16]>());
        write_atomic(&path, id.as_bytes())?;
        Ok(id)
    }

    /// Renames a refused state file to `state.json.corrupt-<unix_ms>`.
    fn quarantine(&self, path: &Path) -> Result<PathBuf, StoreError> {
        let ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let aside = self.dir.join(format!("{STATE_FILE}.corrupt-{ms}"));
        std::fs::rename(path, &aside).map_err(StoreError::io("quarantine", path))?;
        Ok(aside)
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
