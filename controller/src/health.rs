//! `controller health`: the liveness probe. The poll loop rewrites `status.json` after
//! every poll, successful or not, so an old file means the loop is stuck.
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::status::STATUS_FILE;

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("{path} cannot be read: {source} (has the controller started with this state directory?)")]
    Missing { path: String, source: std::io::Error },
    #[error("the poll loop looks stuck: {path} was last written {age:?} ago (limit {limit:?})")]
    Stale { path: String, age: Duration, limit: Duration },
}

/// How long ago the status was written, if within `limit`.
pub fn check(state_dir: &Path, limit: Duration) -> Result<Duration, HealthError> {
    let path = state_dir.join(STATUS_FILE);
    let shown = path.display().to_string();
    let modified = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .map_err(|source| HealthError::Missing { path: shown.clone(), source })?;
    // A clock step backwards makes the age negative: count it as fresh.
    let age = SystemTime::now().duration_since(modified).unwrap_or_default();
    if age > limit {
        return Err(HealthError::Stale { path: shown, age, limit });
    }
    Ok(age)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_is_healthy_and_missing_or_old_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(check(dir.path(), Duration::from_secs(60)), Err(HealthError::Missing { .. })));
        std::fs::write(dir.path().join(STATUS_FILE), "{}").expect("write");
        assert!(check(dir.path(), Duration::from_secs(60)).is_ok());
        std::thread::sleep(Duration::from_millis(20));
        assert!(matches!(check(dir.path(), Duration::from_millis(1)), Err(HealthError::Stale { .. })));
    }
}
