//! An exclusive `flock` on the store's lock file, acquired with a timeout so that a second
//! controller on the same state_dir fails with a clear error instead of hanging.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::StoreError;

/// Held while reading or replacing the state; released on drop.
pub(super) struct StoreLock {
    _flock: Flock<File>,
}

const RETRY_EVERY: Duration = Duration::from_millis(20);

impl StoreLock {
    pub(super) fn acquire(path: &Path, timeout: Duration) -> Result<Self, StoreError> {
        let deadline = Instant::now() + timeout;
        loop {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .map_err(StoreError::io("open the lock file", path))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(flock) => return Ok(Self { _flock: flock }),
                Err((_, Errno::EWOULDBLOCK)) if Instant::now() < deadline => std::thread::sleep(RETRY_EVERY),
                Err((_, Errno::EWOULDBLOCK)) => {
                    return Err(StoreError::LockTimeout { path: path.to_owned(), timeout });
                }
                Err((_, errno)) => return Err(StoreError::io("lock", path)(errno.into())),
            }
        }
    }
}
