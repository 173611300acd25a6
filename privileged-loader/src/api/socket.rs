//! The unix socket the API is served on: created with a private directory (0750) and a
//! socket file (0660) so that only the owner and the configured group can even connect;
//! SO_PEERCRED then checks every call.
use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot create socket directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error(
        "socket {path} is in use by a running loader (a connection to it succeeded): stop it or choose another api.socket"
    )]
    InUse { path: PathBuf },
    #[error("cannot remove stale socket {path}: {source}")]
    Stale { path: PathBuf, source: std::io::Error },
    #[error("cannot listen on {path}: {source}")]
    Bind { path: PathBuf, source: std::io::Error },
    #[error("cannot set owner/permissions of {path}: {source}")]
    Permissions { path: PathBuf, source: std::io::Error },
}

/// Binds the API socket at `path`, replacing a stale socket file left by a crashed loader
/// but never one a live loader is serving on.
pub fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener, SocketError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        make_private_dir(dir, group)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(SocketError::InUse { path: path.to_path_buf() });
        }
        fs::remove_file(path).map_err(|source| SocketError::Stale { path: path.to_path_buf(), source })?;
    }
    let listener =
        UnixListener::bind(path).map_err(|source| SocketError::Bind { path: path.to_path_buf(), source })?;
    set_mode(path, 0o660, group)?;
    Ok(listener)
}

fn make_private_dir(dir: &Path, group: Option<u32>) -> Result<(), SocketError> {
    let existed = dir.exists();
    fs::create_dir_all(dir).map_err(|source| SocketError::Dir { path: dir.to_path_buf(), source })?;
    // Only tighten a directory we created: an operator's existing directory (e.g. a shared
    // pod volume) keeps the permissions they chose.
    if !existed {
        set_mode(dir, 0o750, group)?;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32, group: Option<u32>) -> Result<(), SocketError> {
    let err = |source| SocketError::Permissions { path: path.to_path_buf(), source };
    if group.is_some() {
        chown(path, None, group).map_err(err)?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn creates_private_dir_and_socket_and_refuses_a_live_one() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("run/loader.sock");
        let _listener = bind(&path, None).expect("first bind");
        let dir_mode = fs::metadata(path.parent().expect("parent")).expect("dir").permissions().mode();
        let sock_mode = fs::metadata(&path).expect("socket").permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o750);
        assert_eq!(sock_mode & 0o777, 0o660);
        assert!(matches!(bind(&path, None), Err(SocketError::InUse { .. })));
    }

    #[tokio::test]
    async fn replaces_a_stale_socket_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("loader.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("stale socket"));
        assert!(bind(&path, None).is_ok());
    }
}
