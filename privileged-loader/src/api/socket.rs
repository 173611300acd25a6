//! The unix socket the API is served on: created with a private directory (0750) and a
//! socket file (0660) so that only the owner and the configured group can even connect;
//! SO_PEERCRED then checks every call.
use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt, chown};
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
    #[error(
        "{path} exists and is not a socket ({kind}): the loader only replaces a stale socket; move the file away or choose another api.socket"
    )]
    NotASocket { path: PathBuf, kind: &'static str },
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
    remove_stale_socket(path)?;
    // The socket is created with mode 0600 (umask 0177) and only then opened to the group:
    // it never exists, even for a moment, with whatever the inherited umask allows.
    let previous = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(previous);
    let listener = listener.map_err(|source| SocketError::Bind { path: path.to_path_buf(), source })?;
    set_mode(path, 0o660, group)?;
    Ok(listener)
}

/// Removes a socket file left by a loader that died, refusing a live socket and any file
/// that is not a socket (an operator's file at a mistyped path is not ours to delete).
fn remove_stale_socket(path: &Path) -> Result<(), SocketError> {
    let Ok(meta) = fs::symlink_metadata(path) else { return Ok(()) };
    let kind = meta.file_type();
    if !kind.is_socket() {
        let kind = if kind.is_dir() {
            "a directory"
        } else if kind.is_symlink() {
            "a symbolic link"
        } else if kind.is_file() {
            "a regular file"
        } else {
            "a special file"
        };
        return Err(SocketError::NotASocket { path: path.to_path_buf(), kind });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(SocketError::InUse { path: path.to_path_buf() });
    }
    fs::remove_file(path).map_err(|source| SocketError::Stale { path: path.to_path_buf(), source })
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
    async fn a_file_that_is_not_a_socket_is_refused_and_left_in_place() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("loader.sock");
        fs::write(&path, b"an operator's notes").expect("file");
        let err = bind(&path, None).expect_err("a regular file is not a stale socket");
        assert!(matches!(err, SocketError::NotASocket { kind: "a regular file", .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        assert_eq!(fs::read(&path).expect("still there"), b"an operator's notes");
        fs::remove_file(&path).expect("rm");
        fs::create_dir(&path).expect("dir");
        assert!(matches!(bind(&path, None), Err(SocketError::NotASocket { kind: "a directory", .. })));
    }

    /// Binding under a permissive umask: no other thread ever sees the socket with more
    /// than 0600 (checked from a watcher thread across many binds).
    #[tokio::test]
    async fn the_socket_is_never_visible_with_the_umasks_mode() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("loader.sock");
        let previous = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut widest = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(meta) = fs::symlink_metadata(&path) {
                        widest |= meta.permissions().mode() & 0o007;
                    }
                }
                widest
            })
        };
        for _ in 0..300 {
            drop(bind(&path, None).expect("bind"));
            fs::remove_file(&path).expect("rm");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        nix::sys::stat::umask(previous);
        assert_eq!(watcher.join().expect("watcher"), 0, "the socket was seen open to others");
    }

    #[tokio::test]
    async fn replaces_a_stale_socket_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("loader.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("stale socket"));
        assert!(bind(&path, None).is_ok());
    }
}
