//! One process's privileges as `/proc` shows them: ids, every thread's capability sets,
//! `no_new_privs` and seccomp mode, and the network sockets it listens on.
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::capsets::CapSets;
use crate::sockets::listening_sockets;

/// One thread: capabilities are per thread on Linux, so a drop that missed one shows here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadPrivileges {
    pub tid: u32,
    pub name: String,
    pub caps: CapSets,
    pub no_new_privs: bool,
    /// 0 none, 1 strict, 2 filter (`Seccomp:` in status).
    pub seccomp_mode: u32,
}

/// Owner and mode of a file (the API socket).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOwner {
    pub path: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessAudit {
    pub pid: u32,
    /// Real, effective, saved and filesystem ids (`Uid:`/`Gid:` in status).
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
    pub threads: Vec<ThreadPrivileges>,
    /// Listening TCP and bound UDP sockets, e.g. `tcp 127.0.0.1:9090`.
    pub listening: Vec<String>,
    /// The API socket (the loader's), when the audit is about one.
    pub socket: Option<FileOwner>,
    pub socket_dir: Option<FileOwner>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(
        "cannot read {path}: {source} (does the process exist, and may this user read its /proc entries?)"
    )]
    Read { path: PathBuf, source: std::io::Error },
}

impl ProcessAudit {
    /// Reads process `pid` (`None`: this process).
    pub fn read(pid: Option<u32>) -> Result<Self, AuditError> {
        let proc_dir =
            pid.map_or_else(|| PathBuf::from("/proc/self"), |p| PathBuf::from(format!("/proc/{p}")));
        let status = read(&proc_dir.join("status"))?;
        let ids = |key: &str| -> Vec<u32> {
            field(&status, key)
                .map(|v| v.split_whitespace().filter_map(|n| n.parse().ok()).collect())
                .unwrap_or_default()
        };
        Ok(Self {
            pid: field(&status, "Pid:").and_then(|v| v.trim().parse().ok()).unwrap_or(0),
            uids: ids("Uid:"),
            gids: ids("Gid:"),
            threads: threads(&proc_dir)?,
            listening: listening_sockets(&proc_dir)?,
            socket: None,
            socket_dir: None,
        })
    }

    /// Adds the owner and mode of `socket` and of its directory.
    pub fn with_socket(mut self, socket: &Path) -> Self {
        self.socket = owner(socket);
        self.socket_dir = socket.parent().and_then(owner);
        self
    }
}

fn threads(proc_dir: &Path) -> Result<Vec<ThreadPrivileges>, AuditError> {
    let task_dir = proc_dir.join("task");
    let entries =
        std::fs::read_dir(&task_dir).map_err(|source| AuditError::Read { path: task_dir.clone(), source })?;
    let mut threads = Vec::new();
    for entry in entries.flatten() {
        // A thread may exit between listing and reading: skip it rather than fail.
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else { continue };
        threads.push(thread(&status));
    }
    threads.sort_by_key(|t| t.tid);
    Ok(threads)
}

/// One thread's privileges from its status document.
pub(crate) fn thread(status: &str) -> ThreadPrivileges {
    let number = |key: &str| field(status, key).and_then(|v| v.trim().parse::<u32>().ok()).unwrap_or(0);
    ThreadPrivileges {
        tid: number("Pid:"),
        name: field(status, "Name:").unwrap_or_default().trim().to_string(),
        caps: CapSets::parse(status),
        no_new_privs: number("NoNewPrivs:") == 1,
        seccomp_mode: number("Seccomp:"),
    }
}

fn field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(key))
}

fn owner(path: &Path) -> Option<FileOwner> {
    let meta = std::fs::metadata(path).ok()?;
    Some(FileOwner { path: path.to_path_buf(), uid: meta.uid(), gid: meta.gid(), mode: meta.mode() & 0o7777 })
}

fn read(path: &Path) -> Result<String, AuditError> {
    std::fs::read_to_string(path).map_err(|source| AuditError::Read { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_thread_status_document() {
        let status =
            "Name:\ttokio-runtime-w\nPid:\t42\nNoNewPrivs:\t1\nSeccomp:\t2\nCapEff:\t0000000000001000\n";
        let t = thread(status);
        assert_eq!(
            (t.tid, t.name.as_str(), t.no_new_privs, t.seccomp_mode),
            (42, "tokio-runtime-w", true, 2)
        );
        assert_eq!(t.caps.effective, 1 << 12);
    }

    #[test]
    fn reads_this_process() {
        let me = ProcessAudit::read(None).expect("/proc/self");
        assert_eq!(me.pid, std::process::id());
        assert_eq!(me.uids.len(), 4);
        assert!(me.threads.iter().any(|t| t.tid == me.pid), "the main thread is listed");
    }
}
