//! Crash-safe file replacement: temp file, fsync, rename, fsync of the directory (and
//! the same without the fsyncs, for reports rewritten on every poll).

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::StoreError;

/// Replaces `path` with `bytes` so that readers (and a crash) see the old or the new
/// content, never a partial one. The file is created with mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    replace(path, bytes, true)
}

/// Like [`write_atomic`] for a report rewritten on every poll (`status.json`): readers
/// see the old or the new content, but nothing is forced to disk — after a crash the
/// next poll writes it again — so the poll loop pays no fsync for it.
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    replace(path, bytes, false)
}

/// Temporary files are `.<name>.tmp-<pid>` beside their target.
const TEMP_MARK: &str = ".tmp-";

/// Removes the temporary files of replacements a crash (or kill -9) interrupted. Called
/// with the store's lock held, so no live writer's file is among them.
pub(super) fn remove_leftover_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(TEMP_MARK) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(file = %entry.path().display(), "removed the temporary file of an interrupted write")
                }
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove the temporary file of an interrupted write")
                }
            }
        }
    }
}

fn replace(path: &Path, bytes: &[u8], durable: bool) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}{TEMP_MARK}{}", std::process::id()));
    let written = write_temp(&tmp, bytes, durable)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(StoreError::io("rename into place", path)));
    if written.is_err() {
        // A full disk must not also leave a partial temporary file behind.
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if !durable {
        return Ok(());
    }
    File::open(dir).and_then(|d| d.sync_all()).map_err(StoreError::io("fsync the directory", dir))
}

fn write_temp(tmp: &Path, bytes: &[u8], durable: bool) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)
        .map_err(StoreError::io("create", tmp))?;
    file.write_all(bytes).map_err(StoreError::io("write", tmp))?;
    if durable {
        file.sync_all().map_err(StoreError::io("fsync", tmp))?;
    }
    Ok(())
}

/// Overwrites `path` where it stands, without a new file: on a full disk the blocks it
/// already has still take a report no longer than it was (truncated to the new length).
pub fn overwrite_in_place(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut file =
        std::fs::OpenOptions::new().write(true).open(path).map_err(StoreError::io("open", path))?;
    file.write_all(bytes).map_err(StoreError::io("overwrite", path))?;
    file.set_len(bytes.len() as u64).map_err(StoreError::io("truncate", path))
}
