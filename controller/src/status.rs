//! `status.json`: the controller's state as data, rewritten atomically after every poll,
//! and the `controller status` printer that reads it. Tests and operators read this
//! instead of scraping logs.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::{StoreError, overwrite_in_place, replace_file};
use trust::{ConfigEntry, TrustedState};

pub const STATUS_FILE: &str = "status.json";

/// How many retry delays `recent_retry_delays_ms` keeps.
pub const RECENT_DELAYS: usize = 16;

/// The document, field for field as in the controller contract.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub client_id: String,
    pub disabled: bool,
    pub disabled_reason: String,
    pub root_version: u64,
    pub targets_version: u64,
    pub polls_ok: u64,
    pub polls_failed: u64,
    pub consecutive_errors: u64,
    pub last_error: Option<String>,
    pub last_success_unix_ms: u64,
    pub next_poll_delay_ms: u64,
    pub recent_retry_delays_ms: VecDeque<u64>,
    pub configs: Vec<ConfigStatus>,
    /// The last failure writing to the state directory (a full disk, a read-only mount),
    /// until a poll succeeds again; set too when this document itself could not be
    /// replaced and was overwritten in place instead.
    #[serde(default)]
    pub state_dir_error: Option<String>,
}

/// One config a product listener holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigStatus {
    pub path: String,
    pub product: String,
    pub id: String,
    pub version: u64,
    pub sha256: String,
    pub length: u64,
    pub apply_state: u64,
    pub apply_error: String,
}

impl From<&ConfigEntry> for ConfigStatus {
    fn from(c: &ConfigEntry) -> Self {
        Self {
            path: c.path.clone(),
            product: c.parsed.product.clone(),
            id: c.parsed.config_id.clone(),
            version: c.version,
            sha256: c.sha256().to_owned(),
            length: c.length,
            apply_state: c.apply_state.into(),
            apply_error: c.apply_error.clone(),
        }
    }
}

/// A status read back from disk failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot read {path}: {source} (has the controller run with this --state-dir?)")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a controller status document: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error(transparent)]
    Write(#[from] StoreError),
}

impl Status {
    /// Refreshes the versions and held configs from `state` (only listened products).
    pub fn observe(&mut self, state: &TrustedState, products: &[String]) {
        self.root_version = state.root_version();
        self.targets_version = state.targets_version();
        self.configs = state
            .configs()
            .values()
            .filter(|c| products.contains(&c.parsed.product))
            .map(ConfigStatus::from)
            .collect();
    }

    /// Remembers a delay chosen after a failed poll, keeping the last [`RECENT_DELAYS`].
    pub fn record_retry_delay(&mut self, ms: u64) {
        if self.recent_retry_delays_ms.len() == RECENT_DELAYS {
            self.recent_retry_delays_ms.pop_front();
        }
        self.recent_retry_delays_ms.push_back(ms);
    }

    /// Replaces `status.json`; when that fails (no room for a new file), overwrites it in
    /// place with `state_dir_error` saying why, so a full disk shows in the status instead
    /// of the last healthy one. Returns the replacement's error either way.
    pub fn write(&self, state_dir: &Path) -> Result<(), StatusError> {
        let path = state_dir.join(STATUS_FILE);
        let bytes = serde_json::to_vec_pretty(self).map_err(StoreError::from)?;
        let Err(failed) = replace_file(&path, &bytes) else { return Ok(()) };
        let mut report = self.clone();
        report.state_dir_error = Some(failed.to_string());
        let mut bytes = serde_json::to_vec(&report).map_err(StoreError::from)?;
        if bytes.len() as u64 > allocated_bytes(&path) {
            // Only the blocks the file already has are sure to be writable: the short form.
            report.configs.clear();
            report.recent_retry_delays_ms.clear();
            bytes = serde_json::to_vec(&report).map_err(StoreError::from)?;
        }
        if let Err(e) = overwrite_in_place(&path, &bytes) {
            tracing::debug!(error = %e, "status.json could not be overwritten in place either");
        }
        Err(failed.into())
    }

    pub fn read(state_dir: &Path) -> Result<Self, StatusError> {
        let path = state_dir.join(STATUS_FILE);
        let bytes =
            std::fs::read(&path).map_err(|source| StatusError::Read { path: path.clone(), source })?;
        serde_json::from_slice(&bytes).map_err(|source| StatusError::Parse { path, source })
    }

    /// The human-readable form printed by `controller status`.
    ///
    /// (`state_dir_error`, when set, is the first line: nothing else is true for long.)
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(e) = &self.state_dir_error {
            out += &format!("STATE DIR:        cannot write: {e}\n");
        }
        out += &format!("client id:        {}\n", self.client_id);
        if self.disabled {
            out += &format!("remote config:    DISABLED ({})\n", self.disabled_reason);
        }
        out +=
            &format!("root version:     {}\ntargets version:  {}\n", self.root_version, self.targets_version);
        out += &format!(
            "polls:            {} ok, {} failed, {} consecutive errors\n",
            self.polls_ok, self.polls_failed, self.consecutive_errors
        );
        out += &format!("last error:       {}\n", self.last_error.as_deref().unwrap_or("none"));
        out += &format!("next poll in:     {} ms\n", self.next_poll_delay_ms);
        out += &format!("configs:          {}\n", self.configs.len());
        for c in &self.configs {
            let verdict = match c.apply_state {
                2 => "acknowledged".to_owned(),
                3 => format!("error: {}", c.apply_error),
                1 => "unacknowledged".to_owned(),
                _ => "unknown".to_owned(),
            };
            out += &format!("  {} v{} ({} bytes) {}\n", c.path, c.version, c.length, verdict);
        }
        out
    }
}

/// Bytes of disk the file holds (its blocks, not its length).
fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn writes_atomically_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut status = Status { client_id: "c1".into(), polls_ok: 3, ..Default::default() };
        for ms in 0..20 {
            status.record_retry_delay(ms);
        }
        status.write(dir.path()).unwrap();
        let back = Status::read(dir.path()).unwrap();
        assert_eq!(back, status);
        assert_eq!(back.recent_retry_delays_ms.len(), RECENT_DELAYS);
        assert_eq!(back.recent_retry_delays_ms.front(), Some(&4), "oldest kept first");
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(STATUS_FILE)).unwrap()).unwrap();
        for key in
            ["client_id", "disabled", "last_error", "next_poll_delay_ms", "recent_retry_delays_ms", "configs"]
        {
            assert!(json.get(key).is_some(), "{key} missing");
        }
    }

    #[test]
    fn missing_status_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = Status::read(dir.path()).unwrap_err();
        assert!(err.to_string().contains("status.json"));
    }

    /// A real full filesystem (a 64 KiB tmpfs; the tests run as root): the status says so
    /// while it is full, and is replaced normally once there is room again.
    #[test]
    fn a_full_state_dir_shows_in_the_status_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(mounted.success(), "mounting a tmpfs (needs root)");
        let unmount = Unmount(dir.path().to_owned());
        let mut status = Status { client_id: "c1".into(), polls_ok: 1, ..Default::default() };
        status.write(dir.path()).unwrap();
        let filler = dir.path().join("filler");
        let _ = std::fs::write(&filler, vec![1u8; 128 * 1024]);
        status.polls_failed = 1;
        status.last_error = Some("poll failed".into());
        assert!(status.write(dir.path()).is_err(), "the disk is full");
        let seen = Status::read(dir.path()).unwrap();
        assert_eq!(seen.polls_failed, 1, "the failure is visible");
        assert!(seen.state_dir_error.as_deref().unwrap_or("").contains("No space left"), "{seen:?}");
        assert!(seen.render().starts_with("STATE DIR:"), "{}", seen.render());
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 2, "no temporary file left behind: {left:?}");
        std::fs::remove_file(&filler).unwrap();
        status.write(dir.path()).unwrap();
        assert_eq!(Status::read(dir.path()).unwrap().state_dir_error, None);
        drop(unmount);
    }

    struct Unmount(std::path::PathBuf);

    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
}
