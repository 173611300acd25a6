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

fn replace(path: &Path, bytes: &[u8], durable: bool) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(StoreError::io("create", &tmp))?;
    file.write_all(bytes).map_err(StoreError::io("write", &tmp))?;
    if durable {
        file.sync_all().map_err(StoreError::io("fsync", &tmp))?;
    }
    drop(file);
    std::fs::rename(&tmp, path).map_err(StoreError::io("rename into place", path))?;
    if !durable {
        return Ok(());
    }
    File::open(dir).and_then(|d| d.sync_all()).map_err(StoreError::io("fsync the directory", dir))
}
