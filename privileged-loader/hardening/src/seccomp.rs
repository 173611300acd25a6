//! Seccomp allow-lists, installed by the process on every thread once start-up is done
//! (`seccompiler`, with `SECCOMP_FILTER_FLAG_TSYNC`), and the matching OCI profile the
//! container runtime applies from exec on (`deploy/seccomp/`).
//!
//! A [`Policy`] is the one list both come from: the process's filter allows `allowed`;
//! the container's profile also allows `startup_only` (calls made before the process's
//! own filter is in place) and [`RUNTIME_EXEC`] (what runc's init calls after applying
//! the profile, before exec). A call outside the list fails with `EPERM`.
use std::collections::BTreeMap;

use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};
use serde_json::{Value, json};

/// One system call, by name (for profiles and messages) and number (for the filter).
#[derive(Clone, Copy, Debug)]
pub struct Syscall {
    pub name: &'static str,
    pub nr: i64,
}

/// A list of [`Syscall`]s from `libc::SYS_*` names: `syscalls![SYS_read, SYS_write]`.
#[macro_export]
macro_rules! syscalls {
    ($($sys:ident),* $(,)?) => {
        &[$($crate::seccomp::Syscall { name: stringify!($sys), nr: $crate::seccomp::libc::$sys }),*]
    };
}
pub use libc;

/// What one process may call.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Allowed for the process's whole life.
    pub allowed: &'static [Syscall],
    /// `socket(2)` is allowed only for these address families (`libc::AF_*`).
    pub socket_families: &'static [i32],
    /// Allowed by the container profile only: calls made before the process installs
    /// its own filter, and by the tools run beside it in the container (probes, audits).
    pub startup_only: &'static [Syscall],
}

/// What runc's init calls between applying the container's profile and exec'ing the
/// process (found by running the pod under podman with runc).
#[rustfmt::skip]
pub const RUNTIME_EXEC: &[Syscall] = syscalls![
    SYS_execve, SYS_fstatfs, SYS_statfs, SYS_close_range, SYS_getppid, SYS_fchdir, SYS_chdir, SYS_setgroups,
    SYS_setresuid, SYS_setresgid, SYS_setuid, SYS_setgid, SYS_getuid, SYS_getgid, SYS_geteuid, SYS_getegid,
    SYS_epoll_pwait, SYS_nanosleep, SYS_sched_yield, SYS_newfstatat, SYS_arch_prctl, SYS_set_tid_address,
    SYS_access,
];

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the seccomp filter: {0}")]
    Build(seccompiler::BackendError),
    #[error("installing the seccomp filter on every thread: {0}")]
    Install(seccompiler::Error),
    #[error("no seccomp filter for architecture {0}: the allow-lists are written for x86_64")]
    Arch(&'static str),
}

impl Policy {
    /// Installs the filter on every thread of this process (threads started later
    /// inherit it). Sets `no_new_privs` first, as the kernel requires without CAP_SYS_ADMIN.
    pub fn install(&self) -> Result<(), SeccompError> {
        let arch = std::env::consts::ARCH;
        let target = TargetArch::try_from(arch).map_err(|_| SeccompError::Arch(arch))?;
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
            self.allowed.iter().map(|s| (s.nr, Vec::new())).collect();
        rules.insert(libc::SYS_socket, self.socket_rules().map_err(SeccompError::Build)?);
        let filter =
            SeccompFilter::new(rules, SeccompAction::Errno(libc::EPERM as u32), SeccompAction::Allow, target)
                .map_err(SeccompError::Build)?;
        let program: seccompiler::BpfProgram = filter.try_into().map_err(SeccompError::Build)?;
        seccompiler::apply_filter_all_threads(&program).map_err(SeccompError::Install)
    }

    fn socket_rules(&self) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
        self.socket_families
            .iter()
            .map(|family| {
                let family =
                    SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *family as u64)?;
                SeccompRule::new(vec![family])
            })
            .collect()
    }

    /// The OCI seccomp profile for the process's container (`deploy/seccomp/*.json`).
    pub fn container_profile(&self) -> Value {
        let mut names: Vec<&str> = self
            .allowed
            .iter()
            .chain(self.startup_only)
            .chain(RUNTIME_EXEC)
            .map(|s| s.name.trim_start_matches("SYS_"))
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut syscalls = vec![json!({"names": names, "action": "SCMP_ACT_ALLOW"})];
        for family in self.socket_families {
            syscalls.push(json!({
                "names": ["socket"], "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": family, "op": "SCMP_CMP_EQ"}],
            }));
        }
        json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": libc::EPERM,
            "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": []}],
            "syscalls": syscalls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forbidden_call_is_refused_and_an_allowed_one_works() {
        // In a forked child: the filter covers the whole process (TSYNC), and the test
        // harness itself must stay unfiltered. The child makes only raw system calls.
        // SAFETY: fork(2); the child calls only async-signal-safe functions, then _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let policy = Policy {
                allowed: syscalls![
                    SYS_write,
                    SYS_exit_group,
                    SYS_exit,
                    SYS_close,
                    SYS_prctl,
                    SYS_seccomp,
                    SYS_getpid
                ],
                socket_families: &[libc::AF_UNIX],
                startup_only: &[],
            };
            let code = match policy.install() {
                Err(_) => 10,
                Ok(()) => {
                    // SAFETY: plain syscalls with integer arguments.
                    let unix = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
                    let inet = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
                    let errno = std::io::Error::last_os_error().raw_os_error();
                    let ok_getpid = unsafe { libc::getpid() } > 0;
                    if unix >= 0 && inet == -1 && errno == Some(libc::EPERM) && ok_getpid { 0 } else { 11 }
                }
            };
            // SAFETY: ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "child died: {status}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "10: install failed, 11: the filter did not act as listed");
    }

    #[test]
    fn the_profile_lists_the_calls_once_and_restricts_socket() {
        let policy = Policy {
            allowed: syscalls![SYS_read, SYS_write],
            socket_families: &[libc::AF_NETLINK],
            startup_only: syscalls![SYS_read, SYS_bind],
        };
        let profile = policy.container_profile();
        let names = profile["syscalls"][0]["names"].as_array().expect("names");
        assert_eq!(names.iter().filter(|n| *n == "read").count(), 1);
        assert!(names.iter().any(|n| n == "bind") && names.iter().any(|n| n == "execve"));
        assert!(!names.iter().any(|n| n == "socket"), "socket only with its family condition");
        assert_eq!(profile["syscalls"][1]["args"][0]["value"], libc::AF_NETLINK);
    }
}
